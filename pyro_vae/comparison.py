"""Compare objectives: the same model, data and seed trained once per objective, then measured.

:func:`compare` trains one VAE per objective (identical initial weights, data order and
binarization stream: everything but the objective is shared) and reports, per objective, the
test log-likelihood, the test ELBO, active units, the gradient signal-to-noise ratio of the
encoder and decoder, seconds per step and peak memory; then the encoder/decoder SNR against K
for the standard IWAE gradient and DReG at one trained model. ``pyro-vae compare`` is the CLI.

Example:
    >>> import pyro_vae as pv
    >>> from pyro_vae.comparison import compare
    >>> res = compare(["elbo", "iwae"], {"hidden": [8], "latent_dim": 2, "epochs": 1},
    ...               train_limit=64, eval_samples=4, snr_repeats=3, snr_ks=(1, 2),
    ...               memory=False, val_samples=None, progress=False)   # doctest: +SKIP
    >>> [row["objective"] for row in res.table]                          # doctest: +SKIP
    ['elbo', 'iwae']

References:
    Burda, Grosse, Salakhutdinov (2016). Importance weighted autoencoders. ICLR. (active units)
    Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh (2018). Tighter variational bounds are not
    necessarily better. ICML. (gradient SNR)
    Tucker, Lawson, Gu, Maddison (2019). Doubly reparameterized gradient estimators for Monte
    Carlo objectives. ICLR.
"""

from __future__ import annotations

import copy
import csv
import gc
import io
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pyro
import torch

from .build import OBJECTIVES, build_objective, build_vae
from .config import Config, ConfigError, load_config
from .data import Batches, DataSplits
from .evaluation import log_likelihood
from .objectives import IWAE
from .train.fit import make_optimizer, make_scheduler, collect_parameters, evaluate_bound, train_step
from .vae import VAE

#: Burda et al.'s threshold on Cov_x(E_q[z_u | x]) for a latent unit to count as active
ACTIVE_UNIT_THRESHOLD = 0.01

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
}

#: config keys compare's training loop does not implement: they must keep their defaults
#: (early stopping; multi-device / mixed-precision training with Lightning)
UNSUPPORTED_KEYS = ("patience", "accelerator", "devices", "num_nodes", "strategy", "precision")

_NUMERIC = ("num_particles", "num_outer", "epochs", "steps", "test_log_likelihood", "test_log_likelihood_se",
            "delta_log_likelihood", "delta_log_likelihood_se", "eval_samples", "test_elbo", "val_bound",
            "khat_median", "khat_over_0_7", "active_units", "latent_dim", "snr_encoder", "snr_decoder",
            "seconds_per_step", "train_seconds", "peak_memory_mb")


def _khat(vae: VAE, x: torch.Tensor, num_samples: int | None, memory_budget: float) -> torch.Tensor | None:
    """Per-datapoint PSIS k̂ of ``vae``'s encoder as proposal on ``x`` (``None`` when skipped)."""
    if num_samples is None:
        return None
    from .diagnostics import importance_diagnostics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sample-size / non-finite notices: the k̂ values say it
        return importance_diagnostics(vae, x, num_samples=num_samples, memory_budget=memory_budget).khat


def _paired_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean of ``a − b`` over paired datapoints and its standard error (std with n − 1, / √n).

    Every objective is scored on the same test digits, so the spread in digit difficulty that
    dominates each run's own standard error cancels in the difference."""
    d = a - b
    n = d.numel()
    se = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    return float(d.mean()), se


# -- gradient signal-to-noise ratio -------------------------------------------------------------
class GradientMoments:
    """Streaming per-element mean and variance of repeated gradients (float64 sums).

    ``add(grads)`` takes one gradient sample (a list of tensors, one per parameter); :meth:`snr`
    returns |mean| / std per element (unbiased std, n − 1), flattened over the parameters.
    """

    def __init__(self) -> None:
        self.n = 0
        self._sum: list[torch.Tensor] = []
        self._sumsq: list[torch.Tensor] = []

    def add(self, grads: Sequence[torch.Tensor]) -> None:
        """Accumulate one gradient sample."""
        g64 = [g.detach().double().reshape(-1) for g in grads]
        if not self._sum:
            self._sum = [torch.zeros_like(g) for g in g64]
            self._sumsq = [torch.zeros_like(g) for g in g64]
        for s, s2, g in zip(self._sum, self._sumsq, g64):
            s.add_(g)
            s2.add_(g * g)
        self.n += 1

    def mean(self) -> torch.Tensor:
        """Per-element mean of the gradient samples (flattened)."""
        return torch.cat(self._sum) / self.n if self.n else torch.zeros(0, dtype=torch.float64)

    def std(self) -> torch.Tensor:
        """Per-element unbiased standard deviation (flattened)."""
        if self.n < 2:
            raise ValueError(f"a standard deviation needs at least 2 gradient samples, got {self.n}")
        s, s2 = torch.cat(self._sum), torch.cat(self._sumsq)
        var = (s2 - s * s / self.n) / (self.n - 1)
        return var.clamp_min(0.0).sqrt()

    def snr(self) -> torch.Tensor:
        """Per-element |mean| / std; elements whose gradient never varies (std = 0) are NaN."""
        m, sd = self.mean().abs(), self.std()
        out = m / sd
        return torch.where(sd > 0, out, torch.full_like(out, math.nan))


def summarize_snr(snr: torch.Tensor) -> float:
    """Mean over elements of a per-element SNR, ignoring NaN (zero-variance) elements."""
    ok = torch.isfinite(snr)
    return float(snr[ok].mean()) if bool(ok.any()) else math.nan


def gradient_snr(
    loss_fn: Callable[[], torch.Tensor],
    groups: Mapping[str, Sequence[torch.Tensor]],
    repeats: int,
) -> dict[str, float]:
    """Signal-to-noise ratio of a stochastic gradient, per parameter group (Rainforth et al. 2018).

    Calls ``loss_fn()`` ``repeats`` times at fixed parameters, differentiates each result with
    respect to every tensor of ``groups``, and returns per group the mean over parameter elements
    of SNR_i = |mean_r g_ri| / std_r g_ri (std with n − 1). Elements whose gradient has zero
    variance (std exactly 0) are left out of the mean. Nothing is updated.

    The estimate is itself noisy: an element whose true SNR is 0 contributes about
    √(2 / (π · repeats)) (the mean absolute value of the noise of the sample mean), so small
    SNRs read high when ``repeats`` is small.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> theta = torch.zeros(3, requires_grad=True)
        >>> loss = lambda: ((theta - 1.0) ** 2).sum() / 2 + (torch.randn(3) * theta).sum()
        >>> round(gradient_snr(loss, {"theta": [theta]}, repeats=4000)["theta"], 1)
        1.0
    """
    return {k: summarize_snr(m.snr()) for k, m in gradient_moments(loss_fn, groups, repeats).items()}


def gradient_moments(
    loss_fn: Callable[[], torch.Tensor],
    groups: Mapping[str, Sequence[torch.Tensor]],
    repeats: int,
) -> dict[str, GradientMoments]:
    """The repeated gradients behind :func:`gradient_snr`, per non-empty group, as
    :class:`GradientMoments` (for other summaries than its mean per-element SNR)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats must be an integer >= 2 (a standard deviation needs two samples), got {repeats!r}")
    names = [k for k, v in groups.items() if len(v) > 0]
    flat = [p for k in names for p in groups[k]]
    sizes = [len(groups[k]) for k in names]
    moments = {k: GradientMoments() for k in names}
    for _ in range(repeats):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, flat)]
        i = 0
        for k, n in zip(names, sizes):
            moments[k].add(grads[i : i + n])
            i += n
    return moments


def _groups(vae: VAE) -> dict[str, list[torch.Tensor]]:
    out: dict[str, list[torch.Tensor]] = {"encoder": [], "decoder": [], "prior": []}
    for family, p in vae.component_parameters():
        if p.requires_grad:
            out[family].append(p)
    return out


def vae_gradient_snr(
    vae: VAE,
    objective: Any,
    x: torch.Tensor,
    repeats: int,
    num_data: int | None = None,
    seed: int = 0,
    batch_source: Callable[[], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Gradient SNR of ``objective`` for a VAE's encoder, decoder (and prior, if it has parameters).

    Each repeat evaluates ``objective.differentiable_loss(vae.model, vae.guide, xb, num_data=...)``
    on ``xb = x`` (the same minibatch every time: only the objective's Monte Carlo noise varies)
    or, with ``batch_source``, on a fresh minibatch ``batch_source()`` per repeat (data noise too).
    Pyro's RNG is seeded with ``seed`` first, so two estimators that draw their particles the same
    way see the same particles (common random numbers).
    """
    objective = copy.deepcopy(objective)  # e.g. a KL warm-up's step counter must not advance
    was_training = vae.training
    vae.eval()
    num_data = num_data if num_data is not None else x.shape[0]
    pyro.set_rng_seed(seed)

    def loss() -> torch.Tensor:
        xb = batch_source() if batch_source is not None else x
        return objective.differentiable_loss(vae.model, vae.guide, xb, num_data=max(num_data, xb.shape[0]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Monte Carlo KL notice: irrelevant here
        out = gradient_snr(loss, _groups(vae), repeats)
    vae.train(was_training)
    return out


# -- active units ------------------------------------------------------------------------------
def active_units(vae: VAE, x: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[int, str]:
    """Number of latent dims u with Cov_x(E_q[z_u|x]) > ``threshold`` over the rows of ``x``, and how
    it was computed: :func:`pyro_vae.diagnostics.latent_diagnostics` (its ``num_active``) when the
    diagnostics package imports, else the same formula on the encoder means here."""
    try:
        from .diagnostics import latent_diagnostics
    except ImportError:  # pragma: no cover - the diagnostics package is optional here
        return _active_units(vae, x, threshold), "pyro_vae.comparison._active_units"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sample-size notices concern its KL / I(x; z) estimates, not the count
        d = latent_diagnostics(vae, x, active_threshold=threshold, num_mi_samples=1)
    return d.num_active, "pyro_vae.diagnostics.latent_diagnostics"


@torch.no_grad()
def _active_units(vae: VAE, x: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Cov_x(E_q[z_u|x]) > threshold, counted directly on ``vae.encode`` (the fallback)."""
    means = torch.cat([vae.encode(x[i : i + 500]) for i in range(0, x.shape[0], 500)])
    var = means.reshape(means.shape[0], -1).double().var(dim=0, unbiased=True)
    return int((var > threshold).sum())


# -- peak memory -------------------------------------------------------------------------------
def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_kib() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r  # bytes on macOS, KiB on Linux


def _memory_probe(spec_path: str) -> None:
    """Entry point of the memory subprocess: a few training steps, peak resident-set increase as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec["threads"]))
    config = load_config(None, spec["config"])
    batch = torch.load(spec["batch"], weights_only=True)
    vae = build_vae(config, batch.shape[1], tuple(spec["image_shape"]) if spec["image_shape"] else None, batch)
    objective = build_objective(config)
    pyro.set_rng_seed(config.seed)
    kw = {"num_data": int(spec["num_data"])}
    params = collect_parameters(vae.model, vae.guide, (batch,), kw)
    opt = make_optimizer(config.optimizer, params, config.lr, config.weight_decay)
    loss_fn = lambda *a, **k: objective.differentiable_loss(vae.model, vae.guide, *a, **k)  # noqa: E731
    gc.collect()
    method = "cpu: peak resident set (VmHWM) during the steps minus resident set (VmRSS) before them, fresh process"
    base = _proc_status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:  # reset the high-water mark (Linux >= 4.0)
            fh.write("5")
    except OSError:
        base = None
    if base is None:  # no /proc: the lifetime peak before and after
        method = "cpu: increase of ru_maxrss (lifetime peak resident set) over the steps, fresh process"
        base = _maxrss_kib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(int(spec["steps"])):
            train_step(loss_fn, params, opt, (batch,), kw, int(spec["num_data"]))
    peak = _proc_status_kib("VmHWM") if method.startswith("cpu: peak resident") else _maxrss_kib()
    print(json.dumps({"peak_memory_mb": max(0, peak - base) / 1024.0, "memory_method": method}))


def _memory_subprocesses(
    configs: Mapping[str, Config], batch: torch.Tensor, num_data: int, image_shape: tuple[int, ...] | None,
    steps: int, tmp: Path,
) -> dict[str, subprocess.Popen]:
    """Start one fresh Python process per objective (they run concurrently; memory is per process)."""
    torch.save(batch.cpu().contiguous(), tmp / "batch.pt")
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = {}
    for i, (label, cfg) in enumerate(configs.items()):
        spec = {"config": {**cfg.to_dict(), "device": "cpu"}, "batch": str(tmp / "batch.pt"), "num_data": num_data,
                "image_shape": list(image_shape) if image_shape else None, "steps": steps,
                "threads": torch.get_num_threads()}
        path = tmp / f"spec_{i}.json"
        path.write_text(json.dumps(spec))
        procs[label] = subprocess.Popen(
            [sys.executable, "-c", f"from pyro_vae.comparison import _memory_probe; _memory_probe({str(path)!r})"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        )
    return procs


def _collect_memory(procs: Mapping[str, subprocess.Popen]) -> dict[str, dict[str, Any]]:
    out = {}
    for label, proc in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            tail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {proc.returncode}"
            raise RuntimeError(f"the memory measurement of {label!r} failed in its subprocess: {tail}")
        out[label] = json.loads(stdout.strip().splitlines()[-1])
    return out


# -- the result ----------------------------------------------------------------------------------
@dataclass
class ComparisonResult:
    """What :func:`compare` measured.

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
                "log_likelihoods": self.log_likelihoods}

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> "ComparisonResult":
        """Read a ``result.json`` written by :meth:`write` (to redraw figures or tables; no models)."""
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(d["table"], d.get("snr_curve", []), d.get("curves", {}), d.get("settings", {}),
                   log_likelihoods=d.get("log_likelihoods", {}))

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
            raise ValueError("no SNR-against-K measurements: run compare with snr_ks=(1, 10, 100) (non-empty)")
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
        from .plots import _save  # lazy: pyro_vae.plots imports matplotlib

        _save(fig, path)
    return fig


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


# -- input checks ----------------------------------------------------------------------------------
def _resolve(
    objectives: Sequence[str] | Mapping[str, Mapping[str, Any]],
    base: Config | Mapping[str, Any],
    num_particles: int | None,
) -> dict[str, Config]:
    valid = ", ".join(OBJECTIVES)
    if isinstance(objectives, str):
        raise ConfigError(f"objectives must be a list of names, e.g. ['elbo', 'iwae'], not the string {objectives!r}")
    if isinstance(base, Config):
        base_dict = base.to_dict()
    elif isinstance(base, Mapping):
        base_dict = dict(base)
    else:
        raise ConfigError(f"base must be a Config or a dict of config overrides, got {type(base).__name__}")
    if isinstance(objectives, Mapping):
        items = [(str(k), dict(v)) for k, v in objectives.items()]
    else:
        items = []
        for name in objectives:
            if not isinstance(name, str):
                raise ConfigError(f"objective names must be strings, got {name!r}; valid objectives: {valid}")
            items.append((name, {}))
    if not items:
        raise ConfigError(f"no objectives to compare; give one or more of: {valid}")
    labels = [k for k, _ in items]
    dup = sorted({k for k in labels if labels.count(k) > 1})
    if dup:
        raise ConfigError(f"objective labels must be unique, got {dup} more than once")
    configs = {}
    for label, over in items:
        name = over.get("objective", label)
        if name not in OBJECTIVES:
            raise ConfigError(f"unknown objective {name!r}; valid objectives: {valid}")
        values = {**base_dict, **over, "objective": name}
        if num_particles is not None and name != "elbo" and "num_particles" not in over:
            values["num_particles"] = num_particles
        try:
            configs[label] = load_config(None, values)
        except ConfigError as e:
            raise ConfigError(f"objective {label!r}: {e}") from e
    return configs


def _check_int(name: str, value: Any, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}{why}, got {value!r}")
    return value


# -- the comparison ------------------------------------------------------------------------------
def compare(
    objectives: Sequence[str] | Mapping[str, Mapping[str, Any]],
    base: Config | Mapping[str, Any] | None = None,
    *,
    num_particles: int | None = None,
    data: DataSplits | None = None,
    train_limit: int | None = None,
    eval_samples: int = 5000,
    khat_samples: int | None = 1000,
    val_samples: int | None = 50,
    snr_repeats: int = 100,
    snr_data: str = "fixed",
    snr_ks: Sequence[int] = (1, 10, 100),
    snr_at: str | None = None,
    memory: bool = True,
    memory_steps: int = 5,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Callable[[str], Any] | None = None,
) -> ComparisonResult:
    """Train the same model once per objective and measure each (see :data:`COLUMNS`).

    Every run shares the base configuration, the initial weights (``build_vae`` seeds them with
    ``seed``), the data order and the dynamic-binarization stream; only the objective differs.
    The training loop is :func:`pyro_vae.train.train_step` over the same minibatches
    :func:`pyro_vae.fit` draws (so the trained weights equal ``fit(..., val=None)``'s), timed step
    by step with ``time.perf_counter``.

    Args:
        objectives: config names (``["elbo", "iwae", "dreg"]``; valid names are the keys of
            :data:`pyro_vae.build.OBJECTIVES`), or a mapping ``label -> config overrides``, e.g.
            ``{"iwae-5": {"objective": "iwae", "num_particles": 5}}`` (``objective`` defaults to
            the label).
        base: a :class:`~pyro_vae.config.Config` or a dict of overrides of the defaults, shared by
            every run (model, data, epochs, batch size, optimizer, seed, ...).
        num_particles: K for every objective except ``"elbo"`` (which keeps ``base``'s, by default
            1) and except where a mapping sets it; ``None`` keeps ``base``'s.
        data: the splits to use (default: the data set ``base`` names, via
            :func:`pyro_vae.cli.run.load_data`).
        train_limit: train on the first ``train_limit`` training rows only.
        eval_samples: importance samples per test datapoint for the test log-likelihood.
        khat_samples: importance samples per test datapoint for the Pareto k̂ of each trained
            encoder (:func:`pyro_vae.diagnostics.importance_diagnostics`; at least 25);
            ``None`` skips it.
        val_samples: K of the IWAE bound evaluated on the validation split after every epoch (the
            learning curves); ``None`` skips it.
        snr_repeats: gradients per SNR estimate (≥ 2).
        snr_data: ``"fixed"`` — every repeat uses the same training minibatch (binarized once),
            so the SNR measures the estimator's Monte Carlo noise, as in Rainforth et al. and
            Tucker et al.; ``"resample"`` — a fresh random minibatch (and binarization) per
            repeat, so data subsampling noise is included.
        snr_ks: the K values of the SNR-against-K curve (IWAE standard vs DReG); ``()`` skips it.
        snr_at: label of the run whose trained model the SNR-against-K curve uses (default: the
            first objective).
        memory: measure peak memory. On CUDA ``torch.cuda.max_memory_allocated`` over training;
            on CPU the peak resident-set increase during ``memory_steps`` training steps in a
            fresh subprocess per objective (started before training, concurrently).
        out_dir: if given, :meth:`ComparisonResult.write` writes the tables and figures there.
        progress: print one line per epoch and per phase.
        log: where progress lines go (default: ``print`` to stderr).

    Raises:
        ConfigError: bad input (unknown objective, invalid config, ``snr_repeats < 2``, ...),
            raised before anything is trained.
    """
    # ---- validate everything first ---------------------------------------------------------------
    configs = _resolve(objectives, base if base is not None else {}, num_particles)
    _check_int("eval_samples", eval_samples, 1)
    if khat_samples is not None:
        _check_int("khat_samples", khat_samples, 25, " (a Pareto tail needs 5 weights)")
    _check_int("snr_repeats", snr_repeats, 2, " (a standard deviation needs two gradients)")
    _check_int("memory_steps", memory_steps, 1)
    if val_samples is not None:
        _check_int("val_samples", val_samples, 1)
    if num_particles is not None:
        _check_int("num_particles", num_particles, 1)
    if train_limit is not None:
        _check_int("train_limit", train_limit, 1)
    if snr_data not in ("fixed", "resample"):
        raise ConfigError(f"snr_data must be 'fixed' or 'resample', got {snr_data!r}")
    snr_ks = tuple(snr_ks)
    for k in snr_ks:
        _check_int("every snr_ks value", k, 1)
    labels = list(configs)
    snr_at = labels[0] if snr_at is None else snr_at
    if snr_at not in configs:
        raise ConfigError(f"snr_at = {snr_at!r} is not one of the compared objectives {labels}")
    first = next(iter(configs.values()))
    shared = {k: v for k, v in first.to_dict().items() if k not in ("objective", "num_particles", "num_outer")}
    for label, cfg in configs.items():
        for key in ("dataset", "seed", "binarize", "pixel_scale", "device", "batch_size"):
            if getattr(cfg, key) != shared[key]:
                raise ConfigError(f"objective {label!r} sets {key} = {getattr(cfg, key)!r} but the comparison shares "
                                  f"{key} = {shared[key]!r}: every run must see the same data, seed and device")
    for key in UNSUPPORTED_KEYS:
        f = Config.__dataclass_fields__.get(key)
        if f is not None and shared[key] != f.default:
            raise ConfigError(f"compare trains every objective for a fixed number of epochs in one process with its own "
                              f"timed loop; {key} = {shared[key]!r} is not supported there (leave it at {f.default!r})")
    if log is None:
        log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    say = log if progress else (lambda msg: None)

    # ---- data -------------------------------------------------------------------------------------
    from .cli.run import _eval_data, load_data

    if data is None:
        data = load_data(first)
    train = data.train if train_limit is None else data.train[:train_limit]
    if train.shape[0] == 0:
        raise ConfigError("the training split is empty")
    device = torch.device(first.device)
    dynamic = first.binarize == "dynamic"
    test = _eval_data(data, first).to(device)
    val = data.val.to(device) if data.val.shape[0] else None
    if val is not None and dynamic:  # as fit() does: binarized once, generator seed + 1
        val = torch.bernoulli(data.val, generator=torch.Generator().manual_seed(first.seed + 1)).to(device)
    num_data = train.shape[0]
    bs = min(first.batch_size, num_data)
    g = torch.Generator().manual_seed(first.seed + 2)
    snr_batch = train[torch.randperm(num_data, generator=g)[:bs]]
    if dynamic:
        snr_batch = torch.bernoulli(snr_batch, generator=g)
    snr_batch = snr_batch.to(device)

    def fresh_batch() -> torch.Tensor:
        xb = train[torch.randperm(num_data, generator=g)[:bs]]
        return (torch.bernoulli(xb, generator=g) if dynamic else xb).to(device)

    batch_source = fresh_batch if snr_data == "resample" else None
    say(f"compare: {', '.join(f'{k} ({c.objective}, K={c.num_particles})' for k, c in configs.items())} on "
        f"{data.name}: {num_data} training rows, {test.shape[0]} test rows, {first.epochs} epochs, "
        f"batch {first.batch_size}, {torch.get_num_threads()} torch threads")

    # ---- memory (CPU: fresh subprocesses, started before training so timings are not disturbed) ----
    mem: dict[str, dict[str, Any]] = {}
    tmpdir = None
    procs: dict[str, subprocess.Popen] = {}
    if memory and device.type == "cpu":
        say(f"memory: {len(configs)} subprocess(es), {memory_steps} training steps each")
        tmpdir = tempfile.TemporaryDirectory(prefix="pyro_vae_compare_")
        first_batch = train[:bs]
        if dynamic:
            first_batch = torch.bernoulli(first_batch, generator=torch.Generator().manual_seed(first.seed))
        procs = _memory_subprocesses(configs, first_batch, num_data, data.image_shape, memory_steps, Path(tmpdir.name))
        mem = _collect_memory(procs)
        tmpdir.cleanup()

    # ---- train and measure, one objective at a time -----------------------------------------------
    rows: list[dict[str, Any]] = []
    au_method = "not computed"
    curves: dict[str, list[dict[str, float]]] = {}
    models: dict[str, VAE] = {}
    lls: dict[str, torch.Tensor] = {}
    for label, cfg in configs.items():
        vae = build_vae(cfg, data.x_dim, data.image_shape, train)
        objective = build_objective(cfg)
        if memory and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # Monte Carlo KL notice
            step_times, curve = _train(vae, objective, cfg, train, val, device, dynamic, val_samples, label, say)
        if memory and device.type == "cuda":
            mem[label] = {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                          "memory_method": "cuda: torch.cuda.max_memory_allocated over training"}
        vae.eval()
        say(f"[{label}] evaluating: test ELBO, log p(x) with K={eval_samples}, active units, gradient SNR")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(cfg.seed + 7)
                test_elbo = evaluate_bound(vae.model, vae.guide, test)
                ll = log_likelihood(vae.model, vae.guide, test, num_samples=eval_samples,
                                    memory_budget=cfg.eval_memory_mb * 2**20)
                snr = vae_gradient_snr(vae, objective, snr_batch, snr_repeats, num_data=num_data, seed=cfg.seed + 3,
                                       batch_source=batch_source)
                n_active, au_method = active_units(vae, test)
                khat = _khat(vae, test, khat_samples, cfg.eval_memory_mb * 2**20)
        m = mem.get(label, {"peak_memory_mb": math.nan, "memory_method": "not measured"})
        lls[label] = ll.per_datapoint.detach().double().cpu()
        delta, delta_se = _paired_difference(lls[label], lls[labels[0]])
        row = {
            "objective": label,
            "config_objective": cfg.objective,
            "num_particles": cfg.num_particles,
            "num_outer": cfg.num_outer,
            "epochs": cfg.epochs,
            "steps": len(step_times),
            "test_log_likelihood": ll.mean,
            "test_log_likelihood_se": ll.stderr,
            "delta_log_likelihood": delta,
            "delta_log_likelihood_se": delta_se,
            "eval_samples": eval_samples,
            "test_elbo": test_elbo,
            "val_bound": curve[-1]["val_bound"] if curve else math.nan,
            "khat_median": float(khat.median()) if khat is not None else math.nan,
            "khat_over_0_7": float((khat > 0.7).double().mean()) if khat is not None else math.nan,
            "active_units": n_active,
            "latent_dim": cfg.latent_dim,
            "snr_encoder": snr.get("encoder", math.nan),
            "snr_decoder": snr.get("decoder", math.nan),
            "seconds_per_step": statistics.median(step_times),
            "train_seconds": sum(step_times),
            "peak_memory_mb": float(m["peak_memory_mb"]),
            "memory_method": m["memory_method"],
        }
        say(f"[{label}] log p(x) {ll.mean:.2f} ± {ll.stderr:.2f}, test ELBO {test_elbo:.2f}, active units "
            f"{row['active_units']}/{cfg.latent_dim}, SNR enc {row['snr_encoder']:.3f} dec {row['snr_decoder']:.3f}, "
            f"{row['seconds_per_step']:.4f} s/step, peak {row['peak_memory_mb']:.1f} MiB")
        rows.append(row)
        curves[label] = curve
        models[label] = vae

    # ---- SNR against K: standard IWAE gradient vs DReG at one trained model -------------------------
    snr_curve: list[dict[str, Any]] = []
    if snr_ks:
        vae = models[snr_at]
        cfg = configs[snr_at]
        for k in snr_ks:
            for est in ("standard", "dreg"):
                say(f"SNR at the {snr_at} model: IWAE-{k} {est}, {snr_repeats} gradients")
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    s = vae_gradient_snr(vae, IWAE(num_particles=k, gradient=est), snr_batch, snr_repeats,
                                         num_data=num_data, seed=cfg.seed + 4, batch_source=batch_source)
                snr_curve.append({"estimator": est, "K": k, "snr_encoder": s.get("encoder", math.nan),
                                  "snr_decoder": s.get("decoder", math.nan)})
    settings = {
        "base": {k: v for k, v in shared.items()},
        "objectives": {k: {"objective": c.objective, "num_particles": c.num_particles, "num_outer": c.num_outer}
                       for k, c in configs.items()},
        "dataset": data.name,
        "num_train": num_data,
        "num_val": 0 if val is None else int(val.shape[0]),
        "num_test": int(test.shape[0]),
        "eval_samples": eval_samples,
        "khat_samples": khat_samples,
        "val_samples": val_samples,
        "snr_repeats": snr_repeats,
        "snr_data": snr_data,
        "snr_ks": list(snr_ks),
        "snr_at": snr_at,
        "snr_batch_size": bs,
        "memory_steps": memory_steps if memory else None,
        "active_units": f"{au_method} (Burda et al.: Cov_x(E_q[z_u|x]) > {ACTIVE_UNIT_THRESHOLD}, test split)",
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
                   f"torch {torch.__version__}, pyro {pyro.__version__}",
    }
    result = ComparisonResult(rows, snr_curve, curves, settings, models,
                              {k: [float(v) for v in t] for k, t in lls.items()})
    if out_dir is not None:
        for p in result.write(out_dir):
            say(f"wrote {p}")
    return result


def _warm_up(vae: VAE, objective: Any, x: torch.Tensor, kw: dict[str, Any], cfg: Config) -> None:
    """Two untimed steps on throwaway copies, so one-off start-up costs (lazy kernel set-up on the
    first backward pass of a process) do not land in the first objective's step times."""
    v, o = copy.deepcopy(vae), copy.deepcopy(objective)
    params = [p for p in v.parameters() if p.requires_grad]
    opt = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay)
    for _ in range(2):
        train_step(lambda *a, **k: o.differentiable_loss(v.model, v.guide, *a, **k), params, opt, (x,), kw,
                   kw["num_data"])


def _train(
    vae: VAE, objective: Any, cfg: Config, train: torch.Tensor, val: torch.Tensor | None, device: torch.device,
    dynamic: bool, val_samples: int | None, label: str, say: Callable[[str], Any],
) -> tuple[list[float], list[dict[str, float]]]:
    """fit()'s loop without its extras, each step timed; returns step times and per-epoch rows."""
    pyro.set_rng_seed(cfg.seed)
    vae.to(device)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    batches = Batches(train, cfg.batch_size, shuffle=True, dynamic_binarization=dynamic, generator=gen, device=device)
    num_data = batches.num_data
    first = train[: min(cfg.batch_size, num_data)].to(device)
    if dynamic:
        first = (first > 0.5).to(first.dtype)
    kw = {"num_data": num_data}
    _warm_up(vae, objective, first, kw, cfg)
    pyro.set_rng_seed(cfg.seed)
    params = collect_parameters(vae.model, vae.guide, (first,), kw)
    opt = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay)
    sched = make_scheduler(None if cfg.lr_schedule == "none" else cfg.lr_schedule, opt, cfg.epochs)
    loss_fn = lambda *a, **k: objective.differentiable_loss(vae.model, vae.guide, *a, **k)  # noqa: E731
    terms = (lambda: objective.last_terms) if hasattr(objective, "last_terms") else None
    val_obj = IWAE(num_particles=val_samples) if val_samples is not None else None
    times: list[float] = []
    curve: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        vae.train()
        total, seen = 0.0, 0
        for _, xb in batches:
            t0 = time.perf_counter()
            info = train_step(loss_fn, params, opt, (xb,), kw, num_data, cfg.grad_clip or None, terms)
            times.append(time.perf_counter() - t0)
            total += info.loss * xb.shape[0]
            seen += xb.shape[0]
        row = {"epoch": epoch + 1, "seconds": sum(times), "train_bound": -total / seen, "val_bound": math.nan}
        if val_obj is not None and val is not None:
            vae.eval()
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(cfg.seed + 1000 + epoch)
                row["val_bound"] = evaluate_bound(vae.model, vae.guide, val, objective=val_obj,
                                                  batch_size=max(1, 6400 // val_samples))
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(row["val_bound"] if math.isfinite(row["val_bound"]) else row["train_bound"])
            else:
                sched.step()
        curve.append(row)
        val_text = f", validation IWAE-{val_samples} {row['val_bound']:.2f}" if math.isfinite(row["val_bound"]) else ""
        say(f"[{label}] epoch {epoch + 1}/{cfg.epochs}: train bound {row['train_bound']:.2f}{val_text}, "
            f"{statistics.median(times):.4f} s/step")
    return times, curve


__all__ = ["compare", "ComparisonResult", "COLUMNS", "gradient_snr", "gradient_moments", "vae_gradient_snr",
           "GradientMoments",
           "summarize_snr", "active_units", "ACTIVE_UNIT_THRESHOLD"]
