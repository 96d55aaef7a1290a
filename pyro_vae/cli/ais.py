"""``pyro-vae bdmc RUN_DIR`` and ``pyro-vae evaluate RUN_DIR --method ais``: log-likelihoods with a certificate.

``evaluate --method ais`` scores the first ``--ais-subset`` test digits by annealed importance
sampling (:func:`pyro_vae.evaluation.ais`) beside importance sampling from the encoder on the
same digits, and writes per digit log p̂(x) by both, AIS − IS, the PSIS k̂ and ESS of the
importance weights, and AIS's chain standard error, chain ESS and k̂ and HMC acceptance into
``evaluation.json``, a section of the run's ``report.md`` and ``ais_vs_is.png``.

``bdmc`` simulates digits from the run's model (z ~ p(z), x ~ p(x|z)), runs bidirectional Monte
Carlo (:func:`pyro_vae.evaluation.bdmc`: forward AIS, a stochastic lower bound; reverse AIS
from the exact z, a stochastic upper bound) at every number of temperatures of ``--steps``, and
AIS and IS on ``--test-digits`` test digits; it writes ``RUN_DIR/bdmc/report.md``,
``summary.json``, ``sandwich.png`` (both bounds against the number of temperatures) and
``ais_vs_is.png`` (per test digit AIS − IS against k̂). The BDMC gap certifies the schedule for
this model: on data from the model, the true log p(x) lies between the bounds (in expectation),
so a gap of g nats says AIS with that schedule is at most about g nats low on such data
(Grosse, Ghahramani, Adams 2015; Wu, Burda, Salakhutdinov, Grosse 2017).

Both take the leapfrog's gradient precision (``evaluate --ais-precision``, ``bdmc
--gradient-precision``: ``auto``, ``full`` or ``bfloat16``; the library's ``gradient_precision``)
and record the one used; the densities of the weights and of the Metropolis test are always in
full precision, so the estimates stay unbiased either way.

Wiring: ``add_parser(subparsers)`` adds ``bdmc``; ``run(ns) -> int`` executes it. Every argument
is checked before anything is loaded or written (:class:`~pyro_vae.config.ConfigError`, exit
code 2), and the run directory's lock is held while writing into it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ConfigError

#: values of ``evaluate --ais-precision`` and ``bdmc --gradient-precision`` (the library's ``PRECISIONS``)
PRECISION_CHOICES = ("auto", "full", "bfloat16")

OUT_DIR = "bdmc"
REPORT = "report.md"
SUMMARY = "summary.json"
#: heading of the section ``evaluate --method ais`` writes into the run's report.md (replaced on rerun)
AIS_SECTION = "## Log-likelihood by annealed importance sampling"

_DESCRIPTION = ("Bidirectional Monte Carlo on digits simulated from a trained run's model: the AIS lower and upper "
                "bounds on log p(x) against the number of temperatures, and AIS − IS against k̂ on test digits; "
                "writes RUN_DIR/bdmc/report.md.")


# ---------------------------------------------------------------------------------------------
# argument checks shared by evaluate --method ais and bdmc
# ---------------------------------------------------------------------------------------------
def parse_steps(text: str) -> list[int]:
    """``"100,300,1000"`` -> ``[100, 300, 1000]`` (sorted, unique; each >= 2)."""
    try:
        steps = sorted({int(s) for s in str(text).split(",") if s.strip()})
    except ValueError:
        raise ConfigError(f"--steps must be comma-separated integers such as 100,300,1000, got {text!r}") from None
    if not steps:
        raise ConfigError("--steps is empty; give e.g. --steps 100,300,1000")
    if steps[0] < 2:
        raise ConfigError(f"--steps: every number of temperatures must be >= 2 (β = 0 and β = 1), got {steps[0]}")
    return steps


def check_ais_options(steps: int, chains: int, leapfrog: int, prefix: str = "--ais-") -> None:
    """Refuse impossible AIS settings with the flag's name (ConfigError)."""
    if steps < 2:
        raise ConfigError(f"{prefix}steps must be >= 2 (the schedule runs from β = 0 to β = 1), got {steps}")
    if chains < 1:
        raise ConfigError(f"{prefix}chains must be >= 1, got {chains}")
    if leapfrog < 1:
        raise ConfigError(f"{prefix}leapfrog must be >= 1 (leapfrog steps per HMC transition), got {leapfrog}")


def _library_call(fn: Callable[..., Any], *args: Any, precision_flag: str = "--ais-precision", **kwargs: Any) -> Any:
    """Call the library's ais / bdmc; its refusals of this run's model (ValueError, TypeError,
    NotImplementedError: a discrete latent, no data plate, a model it cannot simulate from; and
    the RuntimeError of a program that fails under the bfloat16 gradients asked for) become
    one-line errors with exit code 2, naming the command's flag (``precision_flag``) instead of
    the library's ``gradient_precision`` argument."""
    name = getattr(fn, "__name__", "ais")
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError, NotImplementedError) as e:
        raise ConfigError(f"{name} refused this run's model: {_flag_hint(e, precision_flag)}") from e
    except RuntimeError as e:
        if "bfloat16" not in str(e):
            raise
        raise ConfigError(f"{name} refused this run's model: {_flag_hint(e, precision_flag)}") from e


def _flag_hint(e: BaseException, flag: str) -> str:
    """The library's message with its ``gradient_precision='full'`` fix spelled as the command's flag."""
    return str(e).replace("gradient_precision='full'", f"{flag} full").replace(
        "gradient_precision='bfloat16'", f"{flag} bfloat16")


def precision_phrase(precision: str) -> str:
    """How a report says which gradients the leapfrog used (``"full"`` or ``"bfloat16"``)."""
    if precision == "bfloat16":
        return "leapfrog gradients in bfloat16 (densities, weights and Metropolis test in full precision)"
    return "full-precision gradients"


# ---------------------------------------------------------------------------------------------
# evaluate --method ais
# ---------------------------------------------------------------------------------------------
def ais_against_is(vae: Any, x: Any, *, num_samples: int, num_steps: int, num_chains: int, num_leapfrog: int,
                   memory_budget: float, seed: int = 0, progress: bool = False, gradient_precision: str = "auto",
                   precision_flag: str = "--ais-precision") -> dict[str, Any]:
    """AIS and IS on the same digits ``x``: per-digit estimates, their difference and diagnostics.

    ``gradient_precision`` (``"auto"``, ``"full"`` or ``"bfloat16"``) is passed to
    :func:`~pyro_vae.evaluation.ais`; the summary records the one used. ``precision_flag`` names
    the command's flag in an error about it.

    Returns a JSON-ready dict: ``summary`` (means, paired standard error of AIS − IS, k̂ shares,
    settings, seconds) and ``per_datapoint`` (one dict per digit)."""
    import warnings

    import torch

    from ..diagnostics import importance_diagnostics
    from ..evaluation.annealing import ais

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sample-size notices: the k̂ values and the table say it
        torch.manual_seed(seed)
        imp = importance_diagnostics(vae, x, num_samples=num_samples, memory_budget=memory_budget, progress=progress)
    t_is = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = _library_call(ais, vae.model, vae.guide, x, num_steps=num_steps, num_chains=num_chains,
                        num_leapfrog=num_leapfrog, memory_budget=memory_budget, progress=progress, seed=seed,
                        gradient_precision=gradient_precision, precision_flag=precision_flag)
    t_ais = time.perf_counter() - t0
    a = res.per_datapoint.double().cpu()
    i = imp.log_likelihood.double().cpu()
    gap = a - i
    n = int(gap.numel())
    gap_se = float(gap.std() / math.sqrt(n)) if n > 1 else math.nan
    step = res.step_size.detach().double().cpu().reshape(-1)
    steps_per_digit = step if step.numel() == n else step.median().expand(n)
    rows = []
    for j in range(n):
        rows.append({
            "digit": j,
            "is": float(i[j]), "is_khat": float(imp.khat[j]), "is_ess": float(imp.ess[j]),
            "ais": float(a[j]), "ais_chain_se": float(res.chain_stderr[j]), "ais_ess": float(res.ess[j]),
            "ais_khat": float(res.khat[j]), "accept_rate": float(res.accept_rate[j]),
            "ais_minus_is": float(gap[j]), "step_size": float(steps_per_digit[j]),
        })
    khat = imp.khat.double()
    summary = {
        "num_data": n, "num_samples": num_samples, "num_steps": res.num_steps, "num_chains": res.num_chains,
        "num_leapfrog": res.num_leapfrog, "schedule": res.schedule, "init": res.init, "seed": seed,
        "gradient_precision": res.gradient_precision,
        "ais_mean": float(a.mean()), "ais_se": float(a.std() / math.sqrt(n)) if n > 1 else math.nan,
        "is_mean": float(i.mean()), "is_se": float(i.std() / math.sqrt(n)) if n > 1 else math.nan,
        "ais_minus_is": float(gap.mean()), "ais_minus_is_se": gap_se, "ais_minus_is_max": float(gap.max()),
        "khat_bad_share": float((khat > 0.7).double().mean()), "khat_median": float(khat.median()),
        "accept_rate_mean": float(res.accept_rate.double().mean()),
        "ais_chain_se_mean": float(res.chain_stderr.double().mean()),
        "step_size_median": float(res.step_size.double().median()),
        "ais_seconds": round(t_ais, 2), "is_seconds": round(t_is, 2),
    }
    return {"summary": summary, "per_datapoint": rows}


def ais_section(block: dict[str, Any], max_rows: int = 20) -> str:
    """The markdown section ``evaluate --method ais`` writes into ``report.md``."""
    s, rows = block["summary"], block["per_datapoint"]
    lines = [
        AIS_SECTION,
        "",
        f"The first {s['num_data']} test digits, scored by AIS (encoder-started, {s['schedule']} schedule, "
        f"{s['num_steps']} temperatures, {s['num_chains']} chains, one HMC step of {s['num_leapfrog']} leapfrog steps per "
        f"temperature, step sizes tuned in a pilot run and frozen, {precision_phrase(s.get('gradient_precision', 'full'))}; "
        f"{s['ais_seconds']:.1f} s) and by importance sampling "
        f"from the encoder (K = {s['num_samples']}, {s['is_seconds']:.1f} s). Both are stochastic lower bounds on log p(x); "
        "AIS's bias does not depend on the encoder being a good proposal. Written by `pyro-vae evaluate --method ais`.",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| log p(x), AIS | {s['ais_mean']:.3f} ± {s['ais_se']:.3f} |",
        f"| log p(x), IS (K = {s['num_samples']}) | {s['is_mean']:.3f} ± {s['is_se']:.3f} |",
        f"| AIS − IS, paired over digits | {s['ais_minus_is']:+.3f} ± {s['ais_minus_is_se']:.3f} (max {s['ais_minus_is_max']:+.2f}) |",
        f"| share of digits with IS k̂ > 0.7 | {100 * s['khat_bad_share']:.0f}% (median k̂ {s['khat_median']:.2f}) |",
        f"| mean AIS chain standard error | {s['ais_chain_se_mean']:.3f} |",
        f"| mean HMC acceptance rate | {s['accept_rate_mean']:.2f} (median step size {s['step_size_median']:.3g}) |",
        "",
        "![ais_vs_is.png](ais_vs_is.png)",
        "",
        f"Per digit (the {min(max_rows, len(rows))} largest AIS − IS; every digit in `evaluation.json`):",
        "",
        "| digit | IS | IS k̂ | IS ESS | AIS | AIS chain SE | AIS ESS | AIS k̂ | acceptance | AIS − IS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: -r["ais_minus_is"])[:max_rows]:
        lines.append(f"| {r['digit']} | {r['is']:.2f} | {r['is_khat']:.2f} | {r['is_ess']:.1f} | {r['ais']:.2f} | "
                     f"{r['ais_chain_se']:.3f} | {r['ais_ess']:.1f} | {r['ais_khat']:.2f} | {r['accept_rate']:.2f} | "
                     f"{r['ais_minus_is']:+.2f} |")
    lines.append("")
    return "\n".join(lines)


def replace_section(report: str, section: str, heading: str = AIS_SECTION) -> str:
    """``report`` with the section under ``heading`` (up to the next ``## `` heading) replaced by
    ``section``, or ``section`` appended."""
    lines = report.split("\n")
    if heading in lines:
        start = lines.index(heading)
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        lines[start:end] = section.rstrip("\n").split("\n") + ([""] if end < len(lines) else [])
        return "\n".join(lines)
    return report.rstrip("\n") + "\n\n" + section


def gap_vs_khat_plot(rows: Sequence[dict[str, Any]], path: Any, title: str | None = None) -> Any:
    """Per digit AIS − IS (nats) against the IS Pareto k̂, with AIS's chain standard error as error bars."""
    from matplotlib.figure import Figure

    from ..plots import _save

    fig = Figure(figsize=(6.2, 3.8), layout="constrained")
    ax = fig.add_subplot()
    k = [r["is_khat"] for r in rows]
    g = [r["ais_minus_is"] for r in rows]
    e = [r["ais_chain_se"] for r in rows]
    ax.errorbar(k, g, yerr=e, fmt="o", markersize=4, color="tab:blue", ecolor="tab:gray", alpha=0.85, capsize=2)
    for level, color in ((0.5, "tab:orange"), (0.7, "tab:red")):
        ax.axvline(level, color=color, linestyle="--", linewidth=1)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(r"Pareto $\hat{k}$ of the encoder as importance proposal")
    ax.set_ylabel("AIS − IS (nats per digit)")
    ax.set_title(title or "per test digit: how far importance sampling is below AIS", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# bdmc
# ---------------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bdmc`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``); return its parser."""
    p = subparsers.add_parser("bdmc", help="BDMC sandwich on digits simulated from a trained run (certifies AIS)",
                              description=_DESCRIPTION)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory written by `pyro-vae train`")
    p.add_argument("--steps", default="100,300,1000", metavar="LIST",
                   help="numbers of temperatures, comma-separated (default: 100,300,1000)")
    p.add_argument("--chains", type=int, default=16, help="AIS chains per datapoint (default: 16)")
    p.add_argument("--leapfrog", type=int, default=5, help="leapfrog steps per HMC transition (default: 5)")
    p.add_argument("--num-data", type=int, default=10, help="digits simulated from the model (default: 10)")
    p.add_argument("--test-digits", type=int, default=20,
                   help="test digits for AIS − IS against k̂, at the largest --steps; 0 skips (default: 20)")
    p.add_argument("--samples", type=int, default=5000,
                   help="importance samples per test digit for IS and its k̂ (default: 5000)")
    p.add_argument("--seed", type=int, default=0, help="seeds every draw (default: 0)")
    p.add_argument("--gradient-precision", choices=PRECISION_CHOICES, default="auto",
                   help="the leapfrog's gradients: full, bfloat16 (densities, weights and Metropolis test stay in "
                        "full precision) or auto (bfloat16 where the hardware multiplies bfloat16 fast and the "
                        "gradients agree within 5%%; default: auto)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/bdmc)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the run's threads)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def check_arguments(ns: argparse.Namespace) -> list[int]:
    """Every check of ``bdmc``'s arguments (ConfigError naming the flag); returns the parsed ``--steps``."""
    steps = parse_steps(ns.steps)
    check_ais_options(steps[-1], ns.chains, ns.leapfrog, prefix="--")
    for flag, value, low in (("--num-data", ns.num_data, 1), ("--test-digits", ns.test_digits, 0),
                             ("--samples", ns.samples, 25)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if not 0 <= ns.seed < 2**32:
        raise ConfigError(f"--seed must lie in [0, 2**32), got {ns.seed}")
    if ns.threads is not None and ns.threads < 0:
        raise ConfigError(f"--threads must be >= 1 (or 0 for torch's default), got {ns.threads}")
    return steps


def run(ns: argparse.Namespace) -> int:
    """Execute ``pyro-vae bdmc`` for parsed arguments ``ns``; returns the exit code."""
    from . import writing_into

    steps = check_arguments(ns)
    out = Path(ns.out) if ns.out is not None else Path(ns.run_dir) / OUT_DIR
    with writing_into(ns.run_dir, out):
        summary = bdmc_run(ns.run_dir, steps=steps, num_chains=ns.chains, num_leapfrog=ns.leapfrog,
                           num_data=ns.num_data, test_digits=ns.test_digits, num_samples=ns.samples, seed=ns.seed,
                           out=out, threads=ns.threads, progress=not ns.no_progress,
                           gradient_precision=ns.gradient_precision)
    print(format_headline(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m pyro_vae.cli.ais RUN_DIR ...``."""
    parser = argparse.ArgumentParser(prog="pyro-vae bdmc", description=_DESCRIPTION)
    _add_arguments(parser)
    return run(parser.parse_args(argv))


def bdmc_run(run_dir: str | Path, *, steps: Sequence[int], num_chains: int = 16, num_leapfrog: int = 5,
             num_data: int = 10, test_digits: int = 20, num_samples: int = 5000, seed: int = 0,
             out: str | Path | None = None, threads: int | None = None, progress: bool = False,
             gradient_precision: str = "auto") -> dict[str, Any]:
    """BDMC at every number of temperatures in ``steps`` and AIS vs IS on test digits; writes the report.

    ``gradient_precision`` (``"auto"``, ``"full"`` or ``"bfloat16"``) goes to every
    :func:`~pyro_vae.evaluation.bdmc` and :func:`~pyro_vae.evaluation.ais` call; the summary records
    the precision each used (``gradient_precision``: the one they all used, or ``"mixed"``).

    The caller holds the run's lock (``run`` does). Returns the JSON summary it wrote."""
    import torch

    from ..evaluation.bidirectional import bdmc
    from ..runs import Run, eval_data
    from ..train import atomic_write_text
    from .run import set_threads

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    config, data, vae = Run.load(run_dir)
    set_threads(threads if threads is not None else config.threads)
    out = Path(out) if out is not None else run_dir / OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    budget = config.eval_memory_mb * 2**20
    test = eval_data(data, config).to(config.device)
    template = test[:num_data]
    sandwich = []
    for s in steps:
        t0 = time.perf_counter()
        r = _library_call(bdmc, vae.model, vae.guide, template, num_steps=s, num_chains=num_chains,
                          num_leapfrog=num_leapfrog, memory_budget=budget, progress=progress, seed=seed,
                          gradient_precision=gradient_precision, precision_flag="--gradient-precision")
        n = int(r.lower.numel())
        sandwich.append({
            "num_steps": s,
            "lower": float(r.lower.double().mean()), "upper": float(r.upper.double().mean()),
            "lower_se": float(r.lower.double().std() / math.sqrt(n)) if n > 1 else math.nan,
            "upper_se": float(r.upper.double().std() / math.sqrt(n)) if n > 1 else math.nan,
            "gap": float(r.mean_gap), "gap_max": float(r.gap.double().max()),
            "gap_se": float(r.gap.double().std() / math.sqrt(n)) if n > 1 else math.nan,
            "forward_accept_rate": float(r.forward.accept_rate.double().mean()),
            "reverse_accept_rate": float(r.reverse.accept_rate.double().mean()),
            "gradient_precision": r.forward.gradient_precision,
            "seconds": round(time.perf_counter() - t0, 2),
        })
    sandwich_plot(sandwich, out / "sandwich.png", num_data=num_data)
    figures = ["sandwich.png"]
    test_block = None
    if test_digits > 0:
        test_block = ais_against_is(vae, test[:test_digits], num_samples=num_samples, num_steps=steps[-1],
                                    num_chains=num_chains, num_leapfrog=num_leapfrog, memory_budget=budget, seed=seed,
                                    progress=progress, gradient_precision=gradient_precision,
                                    precision_flag="--gradient-precision")
        gap_vs_khat_plot(test_block["per_datapoint"], out / "ais_vs_is.png")
        figures.append("ais_vs_is.png")
    used = {r["gradient_precision"] for r in sandwich}
    if test_block is not None:
        used.add(test_block["summary"]["gradient_precision"])
    summary = {
        "run_dir": str(run_dir), "num_data": num_data, "num_chains": num_chains, "num_leapfrog": num_leapfrog,
        "seed": seed, "steps": list(steps), "sandwich": sandwich,
        "gradient_precision_requested": gradient_precision,
        "gradient_precision": used.pop() if len(used) == 1 else "mixed",
        "test": test_block["summary"] if test_block is not None else None,
        "test_per_datapoint": test_block["per_datapoint"] if test_block is not None else None,
        "figures": figures, "torch_threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    atomic_write_text(out / REPORT, render_report(summary, config, data))
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    summary["report"] = str(out / REPORT)
    return summary


def sandwich_plot(rows: Sequence[dict[str, Any]], path: Any, num_data: int | None = None) -> Any:
    """Mean BDMC lower and upper bounds (± SE over datapoints) against the number of temperatures."""
    from matplotlib.figure import Figure

    from ..plots import _save

    fig = Figure(figsize=(6.2, 3.8), layout="constrained")
    ax = fig.add_subplot()
    t = [r["num_steps"] for r in rows]
    ax.errorbar(t, [r["upper"] for r in rows], yerr=[r["upper_se"] for r in rows], marker="v", color="tab:red",
                capsize=3, label="upper bound (reverse AIS from the exact z)")
    ax.errorbar(t, [r["lower"] for r in rows], yerr=[r["lower_se"] for r in rows], marker="^", color="tab:blue",
                capsize=3, label="lower bound (forward AIS)")
    if len(t) > 1:
        ax.set_xscale("log")
    ax.set_xlabel("number of temperatures")
    ax.set_ylabel("mean log p(x) (nats per simulated digit)")
    n = f"{num_data} " if num_data else ""
    ax.set_title(f"BDMC sandwich on {n}digits simulated from the model", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def format_headline(s: dict[str, Any]) -> str:
    """The lines ``pyro-vae bdmc`` prints."""
    lines = [f"\n== pyro-vae bdmc {s['run_dir']} ({s['num_data']} simulated digits, {s['num_chains']} chains, "
             f"{s.get('gradient_precision', 'full')} gradients) =="]
    for r in s["sandwich"]:
        lines.append(f"{r['num_steps']:>6} temperatures: lower {r['lower']:.2f}, upper {r['upper']:.2f}, "
                     f"gap {r['gap']:.3f} ± {r['gap_se']:.3f} nats ({r['seconds']:.1f} s)")
    t = s.get("test")
    if t:
        lines.append(f"test digits ({t['num_data']}): AIS − IS {t['ais_minus_is']:+.3f} ± {t['ais_minus_is_se']:.3f} "
                     f"nats; k̂ > 0.7 on {100 * t['khat_bad_share']:.0f}%")
    lines.append(f"report: {s.get('report', '')}")
    return "\n".join(lines)


def _bdmc_precision(s: dict[str, Any]) -> str:
    """The report's words for the gradients the BDMC and AIS runs of summary ``s`` used."""
    used = s.get("gradient_precision", "full")
    if used != "mixed":
        return precision_phrase(used)
    low = [str(r["num_steps"]) for r in s["sandwich"] if r.get("gradient_precision") == "bfloat16"]
    t = s.get("test") or {}
    where = ", ".join(f"{n} temperatures" for n in low)
    if t.get("gradient_precision") == "bfloat16":
        where = (where + " and " if where else "") + "the test digits"
    return (f"leapfrog gradients in bfloat16 for {where or 'some runs'} (where they agreed with the full-precision "
            "ones within 5%; densities, weights and Metropolis test always in full precision), full-precision "
            "gradients elsewhere")


def render_report(s: dict[str, Any], config: Any, data: Any) -> str:
    """``bdmc/report.md``."""
    last = s["sandwich"][-1]
    out = [
        "# pyro-vae BDMC report",
        "",
        f"Run `{s['run_dir']}`: {data.describe()}; {config.encoder} encoder, {config.decoder} decoder, "
        f"{config.prior} prior, latent_dim {config.latent_dim}.",
        f"{s['num_data']} digits simulated from the model (z ~ p(z), x ~ p(x|z)); AIS from the encoder, sigmoid "
        f"schedule, {s['num_chains']} chains, one HMC step of {s['num_leapfrog']} leapfrog steps per temperature with "
        f"step sizes tuned in a pilot run and frozen, {_bdmc_precision(s)}; seed {s['seed']}; {s['seconds']:.1f} s "
        f"with {s['torch_threads']} torch thread(s).",
        "",
        "## What this certifies",
        "",
        "On data simulated from the model, forward AIS is a stochastic lower bound and reverse AIS started from "
        "the exact latent a stochastic upper bound on log p(x). Their gap bounds the error of AIS with this "
        "schedule on such data: a gap below about 0.5 nats means the schedule is long enough to trust AIS on this "
        "model (Grosse et al. 2015; Wu et al. 2017). It certifies the schedule for this model, not for every "
        "real digit; real test digits may be harder than simulated ones.",
        "",
        "## The sandwich against the number of temperatures",
        "",
        "| temperatures | lower (forward AIS) | upper (reverse AIS) | gap (mean ± SE) | largest gap | acceptance fwd / rev | s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["sandwich"]:
        out.append(f"| {r['num_steps']} | {r['lower']:.3f} ± {r['lower_se']:.3f} | {r['upper']:.3f} ± {r['upper_se']:.3f} | "
                   f"{r['gap']:.3f} ± {r['gap_se']:.3f} | {r['gap_max']:.3f} | {r['forward_accept_rate']:.2f} / "
                   f"{r['reverse_accept_rate']:.2f} | {r['seconds']:.1f} |")
    verdict = ("below 0.5 nats: the schedule is certified for this model" if last["gap"] < 0.5
               else "0.5 nats or more: use more temperatures (or more leapfrog steps) before trusting AIS")
    out += ["", f"At {last['num_steps']} temperatures the mean gap is {last['gap']:.3f} nats — {verdict}.", "",
            "![sandwich.png](sandwich.png)", ""]
    t = s.get("test")
    out += ["## AIS against importance sampling on test digits", ""]
    if t:
        out += [
            f"The first {t['num_data']} test digits at {t['num_steps']} temperatures: AIS {t['ais_mean']:.3f}, IS "
            f"(K = {t['num_samples']}) {t['is_mean']:.3f}; AIS − IS {t['ais_minus_is']:+.3f} ± {t['ais_minus_is_se']:.3f} "
            f"nats (paired; largest {t['ais_minus_is_max']:+.2f}); IS k̂ > 0.7 on {100 * t['khat_bad_share']:.0f}% of them. "
            "A positive AIS − IS is importance sampling's bias on that digit.",
            "",
            "![ais_vs_is.png](ais_vs_is.png)",
            "",
        ]
    else:
        out += ["Skipped (--test-digits 0).", ""]
    return "\n".join(out)


__all__ = ["add_parser", "run", "main", "bdmc_run", "ais_against_is", "ais_section", "replace_section",
           "gap_vs_khat_plot", "sandwich_plot", "parse_steps", "check_ais_options", "format_headline", "render_report",
           "precision_phrase", "PRECISION_CHOICES"]


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
