"""The result of :func:`pyro_vae.compare_objectives`: its table, curves and settings, rendered as
markdown, CSV, JSON and figures (and read back from ``result.json``)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..vae import VAE

#: the columns of :attr:`ComparisonResult.table`, in order, with what each one means
COLUMNS: dict[str, str] = {
    "objective": "label of the run (the objective's config name unless a mapping gave another)",
    "config_objective": "the `objective` config key the run was trained with",
    "num_particles": "K: particles per datapoint (per inner bound for miwae/piwae)",
    "num_outer": "M: outer averages (miwae/piwae; 1 otherwise)",
    "epochs": "training epochs",
    "steps": "optimizer steps taken",
    "test_log_likelihood": "mean over test digits of log p(x) ≈ log (1/K_eval) Σ_k w_k (nats)",
    "test_log_likelihood_se": "its standard error across test digits (std / √N; nats)",
    "delta_log_likelihood": "mean over test digits of this run's log p(x) minus the first run's (nats; 0 for the first)",
    "delta_log_likelihood_se": "paired standard error of that difference: std of the per-digit differences / √N (nats)",
    "eval_samples": "K_eval: importance samples per test digit",
    "test_elbo": "single-particle ELBO per test digit, closed-form KL (nats)",
    "val_bound": "IWAE bound with val_samples particles on the validation split after the last epoch (nats)",
    "khat_median": "median over test digits of the PSIS Pareto k̂ of the encoder as importance proposal (khat_samples draws)",
    "khat_over_0_7": "fraction of test digits with k̂ > 0.7: their log p(x) estimate is unreliable (Vehtari et al.)",
    "active_units": "latent dims u with Cov_x(E_q[z_u|x]) > 0.01 over the test digits (Burda et al. 2016)",
    "latent_dim": "latent dimensions",
    "snr_encoder": "mean over encoder weight elements of |E g| / std g of the objective's own gradient",
    "snr_decoder": "the same for decoder weights",
    "seconds_per_step": "median wall seconds of one training step (train_step: forward, backward, update)",
    "train_seconds": "sum of the step times: training compute, no validation or evaluation",
    "peak_memory_mb": "peak memory of training in MiB (see memory_method)",
    "memory_method": "how peak_memory_mb was measured",
    "rank": "1 = best, by settings['rank_by']: the AIS log p(x) ('ais') or the importance-sampled one ('is')",
    "ais_log_likelihood": "rank_by='ais' (else None): mean over the first ais_num_data test digits of the AIS estimate of log p(x) (nats)",
    "ais_log_likelihood_se": "its standard error across those digits (std / √n; nats)",
    "ais_delta": "mean per-digit AIS log p(x) minus the first run's, on the AIS digits (nats)",
    "ais_delta_se": "paired standard error of that difference (nats)",
    "ais_minus_is": "mean per-digit AIS − IS log p(x) on the AIS digits: importance sampling's bias there (nats)",
    "ais_minus_is_se": "paired standard error of AIS − IS (nats)",
    "ais_num_data": "test digits scored by AIS (0: rank_by='is', AIS not run)",
}

_NUMERIC = ("num_particles", "num_outer", "epochs", "steps", "test_log_likelihood", "test_log_likelihood_se",
            "delta_log_likelihood", "delta_log_likelihood_se", "eval_samples", "test_elbo", "val_bound",
            "khat_median", "khat_over_0_7", "active_units", "latent_dim", "snr_encoder", "snr_decoder",
            "seconds_per_step", "train_seconds", "peak_memory_mb")


@dataclass
class ComparisonResult:
    """What :func:`~pyro_vae.compare_objectives` measured.

    Attributes:
        table: one dict per objective; keys and meanings in :data:`COLUMNS`.
        snr_curve: rows ``{"estimator", "K", "snr_encoder", "snr_decoder"}`` — the gradient SNR of
            IWAE-K with the standard gradient and with DReG, at the trained model of
            ``settings["snr_at"]``.
        curves: per objective label, per-epoch rows ``{"epoch", "seconds", "train_bound",
            "val_bound"}``; ``seconds`` is cumulative training step time.
        settings: the resolved base config and every option of the comparison.
        models: the trained :class:`~pyro_vae.VAE` per objective label (in eval mode; not
            part of :meth:`to_dict`), for further diagnostics.
        log_likelihoods: per objective label, the per-test-digit log p(x) estimates (the same
            digits, in the same order, for every label), from which the paired differences of
            the table come.
    """

    table: list[dict[str, Any]]
    snr_curve: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    models: dict[str, VAE] = field(default_factory=dict, repr=False)
    log_likelihoods: dict[str, list[float]] = field(default_factory=dict, repr=False)
    ais_log_likelihoods: dict[str, list[float]] = field(default_factory=dict, repr=False)

    # -- ranking ---------------------------------------------------------------------------------
    @property
    def ranking(self) -> list[str]:
        """Labels best first, by ``settings["rank_by"]`` (AIS or IS log p(x))."""
        key = "ais_log_likelihood" if self.settings.get("rank_by") == "ais" else "test_log_likelihood"
        return [r["objective"] for r in sorted(self.table, key=lambda r: -float(r.get(key, math.nan)))]

    @property
    def certified(self) -> bool:
        """Whether the IS diagnostics pass (no test digit with k̂ > 0.7 in any run) or the ranking is by AIS.

        ``False`` when ranking by importance sampling while some encoder has k̂ > 0.7 (or k̂ was
        not measured): its log p(x) is biased low by an unknown amount that can differ from
        model to model; :meth:`certification` says how to certify it."""
        if self.settings.get("rank_by") == "ais":
            return True
        fr = [r.get("khat_over_0_7", math.nan) for r in self.table]
        return all(f is not None and math.isfinite(float(f)) and float(f) == 0.0 for f in fr)

    def certification(self) -> str:
        """One paragraph: is the ranking certified, and if not, the exact call that certifies it."""
        s = self.settings
        order = " > ".join(self.ranking)
        if s.get("rank_by") == "ais":
            opts = s.get("ais_options") or {}
            same = self.ranking == [r["objective"] for r in sorted(self.table, key=lambda r: -r["test_log_likelihood"])]
            return (f"Ranking by AIS on the first {s.get('ais_subset')} test digits "
                    f"({opts.get('num_steps', 1000)} sigmoid temperatures, {opts.get('num_chains', 16)} chains; "
                    f"Δ AIS: paired over digits ± SE): {order}. The IS ranking "
                    f"{'agrees' if same else 'differs'}. AIS does not rely on the encoder as an importance proposal; "
                    "check its schedule with `pyro-vae bdmc RUN` (BDMC gap below 0.5 nats certifies it).")
        if self.certified:
            return f"Ranking by importance sampling: {order}; every test digit has k̂ ≤ 0.7, so the IS estimates are reliable."
        bad = [f"{r['objective']} ({_pct(r.get('khat_over_0_7'))})" for r in self.table
               if not (math.isfinite(float(r.get("khat_over_0_7", math.nan))) and float(r["khat_over_0_7"]) == 0.0)]
        call = s.get("certify_call") or 'pv.compare_objectives(..., rank_by="ais", ais_subset=50)'
        return (f"**Ranking uncertified** ({order}, by importance sampling): the IS diagnostics fail — k̂ > 0.7 "
                f"(or not measured) on test digits of {', '.join(bad)} — so each log p(x) is biased low by an unknown "
                f"amount that can differ between objectives. Certify it by ranking with AIS: `{call}` (CLI: "
                "`pyro-vae compare ... --rank-by ais --ais-subset 50`), then check the AIS schedule with "
                "`pyro-vae bdmc RUN`.")

    # -- text ----------------------------------------------------------------------------------
    def to_markdown(self) -> str:
        """The table (and the SNR-against-K table, if measured) as GitHub markdown."""
        s = self.settings
        ev = s.get("eval_samples", "?")
        first = self.table[0]["objective"] if self.table else "?"
        head = ["objective", "K", "test log p(x)", f"Δ vs {first}", "test ELBO", "k̂ median (> 0.7)", "active units",
                "SNR enc", "SNR dec", "s/step", "train s", "peak MiB"]
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for r in self.table:
            k = f"{r['num_outer']}×{r['num_particles']}" if r["num_outer"] > 1 else str(r["num_particles"])
            lines.append("| " + " | ".join([
                str(r["objective"]), k,
                f"{r['test_log_likelihood']:.2f} ± {r['test_log_likelihood_se']:.2f}",
                _fmt_delta(r) if r is not self.table[0] else "—",
                f"{r['test_elbo']:.2f}",
                _fmt_khat(r),
                f"{r['active_units']} / {r['latent_dim']}",
                _fmt(r["snr_encoder"], 3), _fmt(r["snr_decoder"], 3),
                _fmt(r["seconds_per_step"], 4), _fmt(r["train_seconds"], 1), _fmt(r["peak_memory_mb"], 1),
            ]) + " |")
        out = "\n".join(lines) + "\n"
        methods = sorted({str(r["memory_method"]) for r in self.table})
        out += (
            f"\nlog p(x): importance sampling with K = {ev} per test digit, mean ± standard error over "
            f"{s.get('num_test', '?')} test digits; Δ: mean per-digit difference from {first}'s log p(x) ± its "
            f"paired standard error (same digits, so the digits' spread in difficulty cancels); k̂: median PSIS Pareto k̂ of the "
            f"encoder as importance proposal over the test digits with {s.get('khat_samples', '?')} draws each, and the share "
            f"above 0.7, where importance sampling (and so the log p(x) column) is unreliable; test ELBO: one particle, closed-form KL (nats). "
            f"SNR: mean over weight elements of |E g| / std g over {s.get('snr_repeats', '?')} gradients at the "
            f"trained parameters ({_snr_data_text(s.get('snr_data'))}), each objective's own estimator and K. "
            f"s/step: median over {self.table[0]['steps'] if self.table else '?'} steps. "
            f"Peak memory: {'; '.join(methods)}.\n"
        )
        if self.settings.get("rank_by") == "ais":
            m = self.settings.get("ais_subset")
            out += (f"\n| objective | rank | AIS log p(x) ({m} digits) | Δ AIS vs {first} | AIS − IS (same digits) |\n"
                    "|---|---:|---:|---:|---:|\n")
            for r in self.table:
                out += (f"| {r['objective']} | {r.get('rank', '—')} | {_fmt(r.get('ais_log_likelihood'), 2)} ± "
                        f"{_fmt(r.get('ais_log_likelihood_se'), 2)} | "
                        + ("—" if r is self.table[0] else f"{float(r['ais_delta']):+.2f} ± {float(r['ais_delta_se']):.2f}")
                        + f" | {float(r['ais_minus_is']):+.2f} ± {float(r['ais_minus_is_se']):.2f} |\n")
        if self.table:
            out += "\n" + self.certification() + "\n"
        if self.snr_curve:
            out += (f"\nGradient SNR against K at the model trained with `{s.get('snr_at')}` "
                    "(IWAE-K objective; standard gradient vs DReG):\n\n")
            out += "| K | estimator | SNR encoder | SNR decoder |\n|---:|---|---:|---:|\n"
            for r in self.snr_curve:
                out += f"| {r['K']} | {r['estimator']} | {_fmt(r['snr_encoder'], 3)} | {_fmt(r['snr_decoder'], 3)} |\n"
        return out

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """The table as CSV (every column of :data:`COLUMNS`); written to ``path`` when given."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        for r in self.table:
            writer.writerow({k: r.get(k, "") for k in COLUMNS})
        text = buf.getvalue()
        if path is not None:
            _write(Path(path), text)
        return text

    def to_dict(self) -> dict[str, Any]:
        """Everything but the models, JSON-serializable."""
        return {"table": self.table, "snr_curve": self.snr_curve, "curves": self.curves, "settings": self.settings,
                "log_likelihoods": self.log_likelihoods, "ais_log_likelihoods": self.ais_log_likelihoods}

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> "ComparisonResult":
        """Read a ``result.json`` written by :meth:`write` (to redraw figures or tables; no models)."""
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(d["table"], d.get("snr_curve", []), d.get("curves", {}), d.get("settings", {}),
                   log_likelihoods=d.get("log_likelihoods", {}), ais_log_likelihoods=d.get("ais_log_likelihoods", {}))

    # -- figures ---------------------------------------------------------------------------------
    def plot_loglik_vs_time(self, path: str | os.PathLike[str] | None = None):
        """Log-likelihood against training time: per objective, the validation IWAE bound after
        each epoch (line) and the final test log p(x) ± 1 SE (marker) at the total step time.

        The SE is across test digits, mostly their spread in difficulty, which every objective
        shares: differences between objectives are far more precise than the bars suggest."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7.4, 4.2), layout="constrained")
        ax = fig.subplots()
        colors = _colors(len(self.table))
        for color, r in zip(colors, self.table):  # one legend entry per objective: line and marker share its colour
            curve = self.curves.get(r["objective"], [])
            pts = [(c["seconds"], c["val_bound"]) for c in curve if math.isfinite(c.get("val_bound", math.nan))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, linewidth=1.3, alpha=0.8)
            ax.errorbar([r["train_seconds"]], [r["test_log_likelihood"]], yerr=[r["test_log_likelihood_se"]],
                        color=color, marker="o", markersize=6, capsize=3, linestyle="-" if pts else "none",
                        linewidth=1.3, label=str(r["objective"]))
        finals = [r["test_log_likelihood"] for r in self.table if math.isfinite(r["test_log_likelihood"])]
        if finals:  # keep the informative end of the curves in view, not the first epoch's -200 nats
            lows = [c["val_bound"] for r in self.table for c in self.curves.get(r["objective"], [])[-1:]
                    if math.isfinite(c.get("val_bound", math.nan))]
            ax.set_ylim(bottom=min(finals + lows) - 25.0, top=max(finals) + 0.15 * (max(finals) - min(finals + lows)) + 3)
        ax.set_xscale("log")
        firsts = [c[0]["seconds"] for c in self.curves.values() if c and c[0].get("seconds", 0) > 0]
        if firsts:
            ax.set_xlim(left=0.5 * min(firsts))
        ax.set_xlabel("training time (s, sum of step times; log scale)")
        ax.set_ylabel("nats per digit (higher is better)")
        ax.set_title(f"lines: validation IWAE-{self.settings.get('val_samples')} bound after each epoch; "
                     f"markers: test log p(x) (K = {self.settings.get('eval_samples')}) ± 1 SE", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return _save_fig(fig, path)

    def plot_snr_vs_k(self, path: str | os.PathLike[str] | None = None):
        """Gradient SNR against K (log-log) for the encoder and the decoder, standard vs DReG."""
        from matplotlib.figure import Figure

        if not self.snr_curve:
            raise ValueError("no SNR-against-K measurements: run compare_objectives with snr_ks=(1, 10, 100) (non-empty)")
        fig = Figure(figsize=(8.4, 3.6), layout="constrained")
        axes = fig.subplots(1, 2, sharey=False)
        styles = {"standard": ("tab:red", "o", "-"), "dreg": ("tab:blue", "s", "--")}
        for ax, part in zip(axes, ("encoder", "decoder")):
            for est in dict.fromkeys(r["estimator"] for r in self.snr_curve):
                rows = [r for r in self.snr_curve if r["estimator"] == est]
                color, marker, ls = styles.get(est, ("black", "^", ":"))
                ax.plot([r["K"] for r in rows], [r[f"snr_{part}"] for r in rows], color=color, marker=marker,
                        linestyle=ls, label={"standard": "IWAE, standard gradient", "dreg": "IWAE, DReG"}.get(est, est))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("K (particles)")
            ax.set_ylabel("mean |E g| / std g")
            ax.set_title(f"{part} gradient SNR", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        fig.suptitle(f"at the model trained with {self.settings.get('snr_at')}", fontsize=9)
        return _save_fig(fig, path)

    def write(self, out_dir: str | os.PathLike[str], prefix: str = "") -> list[Path]:
        """Write ``table.md``, ``table.csv``, ``result.json``, ``loglik_vs_time.png`` and (when
        measured) ``snr_vs_k.png`` into ``out_dir``, each name preceded by ``prefix``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{prefix}table.md", out / f"{prefix}table.csv", out / f"{prefix}result.json",
                 out / f"{prefix}loglik_vs_time.png"]
        _write(paths[0], self.to_markdown())
        self.to_csv(paths[1])
        _write(paths[2], json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        self.plot_loglik_vs_time(paths[3])
        if self.snr_curve:
            paths.append(out / f"{prefix}snr_vs_k.png")
            self.plot_snr_vs_k(paths[-1])
        return paths


def _fmt(v: Any, digits: int) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "n/a" if not math.isfinite(f) else f"{f:.{digits}f}"


def _pct(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "k̂ not measured"
    return f"{100 * f:.0f}%" if math.isfinite(f) else "k̂ not measured"


def _fmt_khat(r: Mapping[str, Any]) -> str:
    k, frac = r.get("khat_median", math.nan), r.get("khat_over_0_7", math.nan)
    if k is None or not math.isfinite(float(frac)):
        return "—"
    return f"{float(k):.2f} ({100 * float(frac):.0f}%)"


def _fmt_delta(r: Mapping[str, Any]) -> str:
    d, se = r.get("delta_log_likelihood", math.nan), r.get("delta_log_likelihood_se", math.nan)
    if d is None or not math.isfinite(float(d)):  # a result.json written before the column existed
        return "—"
    return f"{float(d):+.2f} ± {float(se):.2f}"


def _snr_data_text(mode: Any) -> str:
    return "a fresh minibatch per gradient" if mode == "resample" else "one fixed minibatch, particles redrawn"


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialize {type(o).__name__}")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _save_fig(fig: Any, path: str | os.PathLike[str] | None) -> Any:
    if path is not None:
        from ..plots import _save  # lazy: pyro_vae.plots imports matplotlib

        _save(fig, path)
    return fig


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


__all__ = ["ComparisonResult", "COLUMNS"]
