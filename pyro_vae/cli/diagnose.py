"""``pyro-vae diagnose RUN_DIR``: per-datapoint diagnostics of a trained run, written as a report.

Writes ``RUN_DIR/diagnostics/report.md`` with PNG figures beside it (k̂ per datapoint, KL per
latent dimension, SBC rank histograms, posterior predictive check) and ``summary.json``, and
prints the headline numbers: k̂ band shares, mean amortization and approximation gaps, active
units, I(x; z), the SBC p-value. ``docs/diagnostics.md`` explains how to read them.

Wiring: ``add_parser(subparsers)`` adds the sub-command to an ``argparse`` sub-parser set and
``run(namespace) -> int`` executes it (exit code 0; bad flags raise
:class:`~pyro_vae.config.ConfigError`, which the ``pyro-vae`` entry point reports with code 2).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ConfigError

OUT_DIR = "diagnostics"
REPORT = "report.md"
SUMMARY = "summary.json"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``diagnose`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``); return its parser."""
    p = subparsers.add_parser(
        "diagnose",
        help="per-datapoint diagnostics of a trained run (k̂, inference gaps, latents, SBC, PPC) into a report",
        description=_DESCRIPTION,
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


_DESCRIPTION = "Diagnose a trained run on its test split and write RUN_DIR/diagnostics/report.md."


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory written by `pyro-vae train`")
    p.add_argument("--samples", type=int, default=1000,
                   help="importance samples per datapoint for k̂, ESS and the bounds (default: 1000; "
                        "2154+ makes the 0.7 threshold fully reliable)")
    p.add_argument("--num-points", type=int, default=100, help="test datapoints to diagnose (default: 100)")
    p.add_argument("--gap-steps", type=int, default=100,
                   help="Adam steps refining q per datapoint for the inference gaps; 0 skips them (default: 100)")
    p.add_argument("--sbc-simulations", type=int, default=200,
                   help="simulations for simulation-based calibration; 0 skips it (default: 200)")
    p.add_argument("--ais-subset", type=int, default=0, metavar="N",
                   help="also score the first N diagnosed digits by AIS and show importance sampling's bias there "
                        "(AIS − IS) beside k̂; 0 skips it (default: 0, AIS costs ~1000 decoder passes per digit "
                        "and chain)")
    p.add_argument("--ais-steps", type=int, default=1000, metavar="T", help="AIS temperatures (default: 1000)")
    p.add_argument("--ais-chains", type=int, default=16, metavar="C", help="AIS chains per digit (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="seeds every draw (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


@dataclass
class DiagnoseSummary:
    """Headline numbers of ``pyro-vae diagnose`` (nats where applicable); ``None`` = not computed."""

    run_dir: str
    num_points: int
    samples: int
    khat_good: float
    khat_ok: float
    khat_bad: float
    khat_threshold: float
    median_ess: float
    amortization_gap: float | None
    amortization_gap_se: float | None
    approximation_gap: float | None
    approximation_gap_se: float | None
    active_units: int
    latent_dim: int
    mutual_information: float
    collapsed: bool
    sbc_pvalue: float | None
    ppc_pvalues: dict[str, float]
    figures: list[str]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ais_num_points: int = 0
    ais_minus_is: float | None = None
    ais_minus_is_se: float | None = None

    def to_dict(self) -> dict[str, Any]:  # noqa: D102
        return asdict(self)


def run(ns: argparse.Namespace) -> int:
    """Execute ``pyro-vae diagnose`` for parsed arguments ``ns``; returns the exit code."""
    for flag, value, low in (("--samples", ns.samples, 25), ("--num-points", ns.num_points, 1),
                             ("--gap-steps", ns.gap_steps, 0), ("--sbc-simulations", ns.sbc_simulations, 0)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    ais_subset = getattr(ns, "ais_subset", 0)
    if ais_subset < 0:
        raise ConfigError(f"--ais-subset must be >= 0 (0 skips AIS), got {ais_subset}")
    if ais_subset:
        from .ais import check_ais_options

        check_ais_options(ns.ais_steps, ns.ais_chains, 5)
    summary = diagnose_run(
        ns.run_dir,
        samples=ns.samples,
        num_points=ns.num_points,
        gap_steps=ns.gap_steps,
        sbc_simulations=ns.sbc_simulations,
        seed=ns.seed,
        progress=not getattr(ns, "no_progress", False),
        ais_subset=ais_subset,
        ais_steps=getattr(ns, "ais_steps", 1000),
        ais_chains=getattr(ns, "ais_chains", 16),
    )
    print(format_headline(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m pyro_vae.cli.diagnose RUN_DIR ...``."""
    parser = argparse.ArgumentParser(prog="pyro-vae diagnose", description=_DESCRIPTION)
    _add_arguments(parser)
    ns = parser.parse_args(argv)
    return run(ns)


def diagnose_run(
    run_dir: str | Path,
    *,
    samples: int = 1000,
    num_points: int = 100,
    gap_steps: int = 100,
    sbc_simulations: int = 200,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], Any] = lambda *_: None,
    ais_subset: int = 0,
    ais_steps: int = 1000,
    ais_chains: int = 16,
) -> DiagnoseSummary:
    """Run every diagnostic on a trained run's test split and write the report; return the headline.

    Holds the run directory's lock while it runs (it writes ``RUN/diagnostics/``): a run another
    process trains in or writes into is refused with :class:`~pyro_vae.train.state.RunInUseError`.

    ``ais_subset > 0`` also scores the first ``ais_subset`` diagnosed datapoints by AIS
    (:func:`pyro_vae.evaluation.ais`, ``ais_steps`` temperatures, ``ais_chains`` chains) and
    reports importance sampling's bias there, AIS − IS per datapoint, beside its k̂.
    """
    from . import writing_into

    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must lie in [0, 2**32), got {seed}")
    if ais_subset < 0:
        raise ConfigError(f"--ais-subset must be >= 0 (0 skips AIS), got {ais_subset}")
    with writing_into(run_dir):
        return _diagnose_run(Path(run_dir), samples=samples, num_points=num_points, gap_steps=gap_steps,
                             sbc_simulations=sbc_simulations, seed=seed, progress=progress, log=log,
                             ais_subset=ais_subset, ais_steps=ais_steps, ais_chains=ais_chains)


def _ais_bias(vae: Any, x: Any, imp: Any, num: int, steps: int, chains: int, budget: float, seed: int,
              progress: bool) -> dict[str, Any]:
    """AIS on the first ``num`` rows of ``x`` against the importance-sampled estimates of ``imp`` on them."""
    from ..evaluation.annealing import ais
    from .ais import _library_call

    t0 = time.perf_counter()
    res = _library_call(ais, vae.model, vae.guide, x[:num], num_steps=steps, num_chains=chains,
                        memory_budget=budget, progress=progress, seed=seed)
    a = res.per_datapoint.double().cpu()
    i = imp.log_likelihood[:num].double().cpu()
    gap = a - i
    n = int(gap.numel())
    rows = [{"digit": j, "is": float(i[j]), "is_khat": float(imp.khat[j]), "is_ess": float(imp.ess[j]),
             "ais": float(a[j]), "ais_chain_se": float(res.chain_stderr[j]), "accept_rate": float(res.accept_rate[j]),
             "ais_minus_is": float(gap[j])} for j in range(n)]
    return {"rows": rows, "mean": float(gap.mean()), "se": float(gap.std() / math.sqrt(n)) if n > 1 else math.nan,
            "steps": res.num_steps, "chains": res.num_chains, "leapfrog": res.num_leapfrog,
            "seconds": time.perf_counter() - t0}


def _diagnose_run(run_dir: Path, *, samples: int, num_points: int, gap_steps: int, sbc_simulations: int, seed: int,
                  progress: bool, log: Callable[[str], Any], ais_subset: int = 0, ais_steps: int = 1000,
                  ais_chains: int = 16) -> DiagnoseSummary:
    import pyro
    import torch

    from .. import diagnostics as D
    from .. import plots
    from ..train import atomic_write_text
    from ..runs import Run, eval_data

    from .run import set_threads

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    config, data, vae = Run.load(run_dir)
    set_threads(config.threads)
    out = run_dir / OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    x = eval_data(data, config)[:num_points].to(config.device)
    budget = config.eval_memory_mb * 2**20
    pyro.set_rng_seed(seed)
    caught: list[str] = []
    figures: list[str] = []
    sections: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        log("importance diagnostics")
        imp = D.importance_diagnostics(vae, x, num_samples=samples, memory_budget=budget, progress=progress)
        plots.khat_plot(imp.khat, out / "khat.png", title=f"Pareto k̂ per test datapoint (K={samples})")
        figures.append("khat.png")
        if ais_subset > 0:
            log("AIS against importance sampling")
            sections["ais_bias"] = _ais_bias(vae, x, imp, ais_subset, ais_steps, ais_chains, budget, seed, progress)
            from .ais import gap_vs_khat_plot

            gap_vs_khat_plot(sections["ais_bias"]["rows"], out / "ais_vs_is.png")
            figures.append("ais_vs_is.png")
        gaps = None
        if gap_steps > 0:
            log("inference gaps")
            try:
                gaps = D.inference_gaps(vae, x, num_steps=gap_steps, num_samples=samples, memory_budget=budget,
                                        progress=progress)
            except TypeError as e:  # not a Gaussian encoder
                sections["gaps_skipped"] = str(e)
        log("latent diagnostics")
        latent = D.latent_diagnostics(vae, x, memory_budget=budget)
        D.kl_per_dim_plot(latent, out / "kl_per_dim.png")
        figures.append("kl_per_dim.png")
        sbc_result = None
        if sbc_simulations > 0:
            log("simulation-based calibration")
            sbc_result = D.sbc(vae, x, num_simulations=sbc_simulations, memory_budget=budget)
            D.sbc_plot(sbc_result, out / "sbc.png")
            figures.append("sbc.png")
        log("predictive checks")
        num_rep = min(samples, 100)
        ppc = D.predictive_check(vae, x, num_samples=num_rep, memory_budget=budget)
        prior_pc = D.predictive_check(vae, x, kind="prior", num_samples=num_rep, memory_budget=budget)
        D.ppc_plot(ppc, out / "ppc.png")
        figures.append("ppc.png")
        if data.image_shape is not None and ppc.replicated_examples.numel():
            value_range = (0.0, 255.0) if data.pixel_scale == "uint8" else (0.0, 1.0)
            e = ppc.replicated_examples.shape[0]
            plots.image_grid(torch.cat([ppc.observed_examples, ppc.replicated_examples]).float(), data.image_shape,
                             nrow=e, title="Test data (upper row) and one posterior predictive replicate (lower row)",
                             path=out / "ppc_examples.png", value_range=value_range)
            figures.append("ppc_examples.png")
    for w in record:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            continue  # library churn, not a finding about this run
        msg = f"{w.category.__name__}: {w.message}"
        if msg not in caught:
            caught.append(msg)
    s = imp.shares
    am = gaps.mean_amortization_gap if gaps is not None else (None, None)
    ap = gaps.mean_approximation_gap if gaps is not None else (None, None)
    summary = DiagnoseSummary(
        run_dir=str(run_dir),
        num_points=int(x.shape[0]),
        samples=samples,
        khat_good=s["good"],
        khat_ok=s["ok"],
        khat_bad=s["bad"],
        khat_threshold=imp.threshold,
        median_ess=float(imp.ess.median()),
        amortization_gap=am[0],
        amortization_gap_se=am[1],
        approximation_gap=ap[0],
        approximation_gap_se=ap[1],
        active_units=latent.num_active,
        latent_dim=latent.latent_dim,
        mutual_information=latent.mutual_information,
        collapsed=latent.collapsed,
        sbc_pvalue=sbc_result.pvalue if sbc_result is not None else None,
        ppc_pvalues={k: v.ppp_total for k, v in ppc.statistics.items()},
        figures=figures,
        warnings=caught,
        seconds=round(time.perf_counter() - t0, 2),
        ais_num_points=len(sections["ais_bias"]["rows"]) if "ais_bias" in sections else 0,
        ais_minus_is=sections["ais_bias"]["mean"] if "ais_bias" in sections else None,
        ais_minus_is_se=sections["ais_bias"]["se"] if "ais_bias" in sections else None,
    )
    settings = {"gap_steps": gap_steps, "sbc_simulations": sbc_simulations, "seed": seed, "ppc_replicates": num_rep}
    report = render_report(summary, config, data, imp, gaps, latent, sbc_result, ppc, prior_pc, settings, sections)
    atomic_write_text(out / REPORT, report)
    atomic_write_text(out / SUMMARY, json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def _pm(value: float | None, se: float | None) -> str:
    if value is None:
        return "not computed"
    return f"{value:.3f} ± {se:.3f}" if se is not None and math.isfinite(se) else f"{value:.3f}"


def format_headline(s: DiagnoseSummary) -> str:
    """The lines ``pyro-vae diagnose`` prints."""
    lines = [
        f"\n== pyro-vae diagnose {s.run_dir} ({s.num_points} test datapoints, K={s.samples}) ==",
        f"Pareto k̂: {100 * s.khat_good:.1f}% good (≤0.5), {100 * s.khat_ok:.1f}% ok (0.5-0.7), "
        f"{100 * s.khat_bad:.1f}% bad (>0.7); median ESS {s.median_ess:.1f}",
        f"mean amortization gap   {_pm(s.amortization_gap, s.amortization_gap_se)} nats",
        f"mean approximation gap  {_pm(s.approximation_gap, s.approximation_gap_se)} nats",
        f"active units {s.active_units}/{s.latent_dim}; I(x; z) ≈ {s.mutual_information:.3f} nats"
        + ("; POSTERIOR COLLAPSE" if s.collapsed else ""),
        f"IS bias (AIS − IS) on {s.ais_num_points} digits  {_pm(s.ais_minus_is, s.ais_minus_is_se)} nats"
        if s.ais_num_points else "IS bias (AIS − IS) not computed (--ais-subset N)",
        "SBC p-value " + (f"{s.sbc_pvalue:.3g}" if s.sbc_pvalue is not None else "not computed"),
        "PPC p-values " + ", ".join(f"{k} {v:.2f}" for k, v in s.ppc_pvalues.items()),
    ]
    if s.warnings:
        lines.append(f"{len(s.warnings)} warning(s): see the report")
    lines.append(f"report: {Path(s.run_dir) / OUT_DIR / REPORT}")
    return "\n".join(lines)


def render_report(s: DiagnoseSummary, config: Any, data: Any, imp: Any, gaps: Any, latent: Any, sbc_result: Any,
                  ppc: Any, prior_pc: Any, settings: dict[str, Any], sections: dict[str, Any]) -> str:
    """``report.md``: headline table, one section per diagnostic, figures and warnings."""
    from ..diagnostics import markdown_table

    out = [
        "# pyro-vae diagnostics report",
        "",
        f"Run `{s.run_dir}`: {data.describe()}; {config.encoder} encoder, {config.decoder} decoder, "
        f"{config.prior} prior, latent_dim {config.latent_dim}.",
        f"Diagnosed the first {s.num_points} test datapoints with K={s.samples} importance samples "
        f"(refinement steps {settings['gap_steps']}, SBC simulations {settings['sbc_simulations']}, "
        f"{settings['ppc_replicates']} predictive replicates, seed {settings['seed']}; {s.seconds:.1f} s).",
        "How to read every number: `docs/diagnostics.md`.",
        "",
        "## Headline",
        "",
        "| quantity | value | reading |",
        "|---|---:|---|",
        f"| k̂ ≤ 0.5 (good) | {100 * s.khat_good:.1f}% | q(z\\|x) is a reliable proposal for these datapoints |",
        f"| 0.5 < k̂ ≤ 0.7 (ok) | {100 * s.khat_ok:.1f}% | usable, slower Monte Carlo convergence |",
        f"| k̂ > 0.7 (bad) | {100 * s.khat_bad:.1f}% | q misses posterior mass: bounds and log p(x) unreliable |",
        f"| mean amortization gap | {_pm(s.amortization_gap, s.amortization_gap_se)} | nats lost because the encoder is shared |",
        f"| mean approximation gap | {_pm(s.approximation_gap, s.approximation_gap_se)} | nats lost to the guide's family |",
        f"| active units | {s.active_units} / {s.latent_dim} | dims whose posterior mean moves with x |",
        f"| I(x; z) | {latent.mutual_information:.3f} nats (≤ log N = {latent.mi_upper_bound:.2f}) | information the code carries |",
        f"| posterior collapse | {'**yes**' if s.collapsed else 'no'} | |",
        "| SBC p-value | " + (f"{s.sbc_pvalue:.3g}" if s.sbc_pvalue is not None else "not computed")
        + " | small (< 0.01): q(z\\|x) is miscalibrated |",
        "| PPC p-values | " + ", ".join(f"{k} {v:.2f}" for k, v in s.ppc_pvalues.items())
        + " | near 0 or 1: the model misses that feature of the data |",
        "",
        "## 1. Importance diagnostics: can q(z|x) be trusted per datapoint?",
        "",
        "```",
        imp.summary(),
        "```",
        "",
        f"The reliability threshold at K={imp.num_samples} is {imp.threshold:.2f} "
        "(min(1 − 1/log10 K, 0.7); Vehtari et al. 2024).",
        "",
        "![khat.png](khat.png)",
        "",
        "Worst datapoints (index into the test split):",
        "",
        markdown_table(imp.table(10), floatfmt=".3f"),
        "",
    ]
    bias = sections.get("ais_bias")
    if bias is not None:
        out += [
            "### Importance sampling's bias per datapoint (AIS − IS)",
            "",
            f"The first {len(bias['rows'])} datapoints scored by AIS (encoder-started, sigmoid schedule, "
            f"{bias['steps']} temperatures, {bias['chains']} chains, {bias['leapfrog']} leapfrog steps; "
            f"{bias['seconds']:.1f} s) beside importance sampling with K={s.samples}: mean AIS − IS "
            f"{_pm(bias['mean'], bias['se'])} nats. Both are stochastic lower bounds; a positive AIS − IS is how far "
            "importance sampling is below the truth at least, and it grows with k̂.",
            "",
            "![ais_vs_is.png](ais_vs_is.png)",
            "",
            "| datapoint | k̂ | IS ESS | log p(x), IS | log p(x), AIS | AIS chain SE | acceptance | AIS − IS |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            *[f"| {r['digit']} | {r['is_khat']:.2f} | {r['is_ess']:.1f} | {r['is']:.2f} | {r['ais']:.2f} | "
              f"{r['ais_chain_se']:.3f} | {r['accept_rate']:.2f} | {r['ais_minus_is']:+.2f} |"
              for r in sorted(bias["rows"], key=lambda r: -r["is_khat"])],
            "",
        ]
    out += [
        "## 2. Inference gaps",
        "",
    ]
    if gaps is not None:
        fam = ", ".join(f"{k}: {v}" for k, v in gaps.families.items())
        rows = [
            ("log p(x) (importance sampled, refined q as proposal)", gaps.log_likelihood),
            ("ELBO of the refined q*", gaps.refined_elbo),
            ("ELBO of the amortized q", gaps.amortized_elbo),
            ("approximation gap  log p(x) − ELBO[q*]", gaps.approximation_gap),
            ("amortization gap  ELBO[q*] − ELBO[q]", gaps.amortization_gap),
        ]
        out += [f"Per-datapoint refinement of the guide's Gaussian parameters ({fam}), "
                f"{gaps.num_steps} Adam steps; means over datapoints ± standard error.", "",
                "| quantity | mean (nats) |", "|---|---:|"]
        for label, t in rows:
            n = t.numel()
            se = float(t.std() / math.sqrt(n)) if n > 1 else float("nan")
            out.append(f"| {label} | {float(t.mean()):.3f} ± {se:.3f} |")
        out.append("")
    else:
        out += [sections.get("gaps_skipped", "Skipped (--gap-steps 0)."), ""]
    out += [
        "## 3. Latent space",
        "",
        latent.explanation,
        "",
        f"KL per dimension: {latent.kl_method}; total KL(q‖p) {latent.total_kl:.3f} nats ({latent.total_kl_method}).",
        "",
        "![kl_per_dim.png](kl_per_dim.png)",
        "",
        markdown_table(latent.table().head(64), floatfmt=".4f"),
        "",
        "## 4. Simulation-based calibration of q(z|x)",
        "",
    ]
    if sbc_result is not None:
        order = sbc_result.pvalues.argsort()[:10].tolist()
        out += [
            sbc_result.summary(),
            "",
            "![sbc.png](sbc.png)",
            "",
            "| dimension | p-value | mean rank − ½ |",
            "|---|---:|---:|",
            *[f"| {sbc_result.labels[i]} | {float(sbc_result.pvalues[i]):.3g} | {float(sbc_result.mean_rank[i]):+.3f} |"
              for i in order],
            "",
        ]
    else:
        out += ["Skipped (--sbc-simulations 0).", ""]
    out += [
        "## 5. Predictive checks",
        "",
        "Posterior predictive (x_rep ~ p(x|z), z ~ q(z|x)):",
        "",
        markdown_table(ppc.table(), floatfmt=".4g"),
        "",
        f"Per-pixel calibration: {100 * ppc.pixel_outside:.1f}% of features have a data-set mean outside the "
        f"central 95% of its replicates; reliability error {ppc.calibration_error:.4g}.",
        "",
        "![ppc.png](ppc.png)",
        "",
        "Prior predictive (z ~ p(z)):",
        "",
        markdown_table(prior_pc.table(), floatfmt=".4g"),
        "",
    ]
    if "ppc_examples.png" in s.figures:
        out += ["![ppc_examples.png](ppc_examples.png)", ""]
    out += ["## Warnings", ""]
    out += [f"- {w}" for w in s.warnings] if s.warnings else ["None."]
    out.append("")
    return "\n".join(out)


__all__ = ["add_parser", "run", "main", "diagnose_run", "DiagnoseSummary", "format_headline", "render_report"]


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
