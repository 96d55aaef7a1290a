"""Wall time of the library's AIS at its default schedule on the 500 test digits, measured, not extrapolated.

``python -m benchmarks.ais_default_schedule --run runs/default [--precision auto] [--num-data 500]``

One call of :func:`pyro_vae.evaluation.ais` with its defaults (sigmoid schedule, 1000
temperatures, 16 chains, one HMC step of 5 leapfrog steps per temperature, a pilot run of 100
temperatures that tunes the step sizes, then frozen) on the run's test digits, timed with
the pilot run included, on ``--threads`` torch threads (default 1). Beside it: importance sampling
with K = 5000 on the same digits (``pyro_vae.log_likelihood``), so the table also says what the
time buys. Writes ``docs/ais_default_schedule.md`` and ``.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:  # noqa: D103
    p = argparse.ArgumentParser(prog="python -m benchmarks.ais_default_schedule", description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a trained run directory (e.g. runs/default)")
    p.add_argument("--num-data", type=int, default=500, help="test digits (default: 500, the whole test split)")
    p.add_argument("--precision", choices=("auto", "full", "bfloat16"), default="auto",
                   help="gradient_precision of the call (default: auto, the library's default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "ais_default_schedule",
                   help="output stem: writes STEM.md and STEM.json (default: docs/ais_default_schedule)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:  # noqa: D103
    import pyro

    import pyro_vae as pv
    from pyro_vae.evaluation import ais
    from pyro_vae.runs import Run, eval_data

    args = build_parser().parse_args(argv)
    if args.num_data < 1 or args.threads < 1:
        raise SystemExit("--num-data and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    config, data, vae = Run.load(args.run)
    x = eval_data(data, config)[: args.num_data]
    n = x.shape[0]
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"importance sampling, K = 5000, on {n} digits")
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    imp = pv.log_likelihood(vae.model, vae.guide, x, num_samples=5000)
    t_is = time.perf_counter() - t0
    log(f"AIS at the default schedule on {n} digits ({args.precision} gradients)")
    t0 = time.perf_counter()
    res = ais(vae.model, vae.guide, x, gradient_precision=args.precision, progress=True, seed=args.seed)
    t_ais = time.perf_counter() - t0
    gap = res.per_datapoint.double() - imp.per_datapoint.double()
    out = {
        "meta": {
            "command": "python -m benchmarks.ais_default_schedule "
                       + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
                       f"torch {torch.__version__}, pyro {pyro.__version__}",
            "threads": torch.get_num_threads(), "run": str(args.run),
        },
        "result": {
            "num_data": n, "num_steps": res.num_steps, "num_chains": res.num_chains, "num_leapfrog": res.num_leapfrog,
            "requested_precision": args.precision, "gradient_precision": res.gradient_precision,
            "seconds_with_pilot": t_ais, "is_seconds": t_is, "ais_mean": res.mean, "ais_se": res.stderr,
            "is_mean": float(imp.per_datapoint.double().mean()),
            "ais_minus_is": float(gap.mean()), "ais_minus_is_se": float(gap.std() / math.sqrt(n)) if n > 1 else math.nan,
            "accept_rate": float(res.accept_rate.double().mean()),
            "chain_stderr_mean": float(res.chain_stderr.double().mean()),
        },
    }
    r, m = out["result"], out["meta"]
    md = "\n".join([
        "# AIS at its default schedule on the whole test split: measured wall time",
        "",
        f"Command: `{m['command']}` ({m['date']}; {m['machine']}; torch threads {m['threads']}). Run: `{m['run']}`.",
        "",
        f"One call of `pyro_vae.evaluation.ais` with its defaults: {r['num_steps']} sigmoid temperatures, "
        f"{r['num_chains']} chains, one HMC step of {r['num_leapfrog']} leapfrog steps per temperature, step sizes "
        f"tuned by a pilot run of 100 temperatures and frozen; leapfrog gradients in {r['gradient_precision']} "
        f"(requested: `{r['requested_precision']}`), densities, weights and Metropolis test in full precision.",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| digits | {r['num_data']} |",
        f"| wall time, pilot run + scored run | **{r['seconds_with_pilot']:.0f} s ({r['seconds_with_pilot'] / 60:.1f} min)** |",
        f"| log p(x), AIS (mean ± SE over digits) | {r['ais_mean']:.3f} ± {r['ais_se']:.3f} |",
        f"| log p(x), importance sampling, K = 5000 ({r['is_seconds']:.1f} s) | {r['is_mean']:.3f} |",
        f"| AIS − IS, paired over digits | {r['ais_minus_is']:+.3f} ± {r['ais_minus_is_se']:.3f} |",
        f"| HMC acceptance rate | {r['accept_rate']:.3f} |",
        f"| mean chain standard error of log p̂(x) | {r['chain_stderr_mean']:.3f} |",
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(args.out) + ".json").write_text(json.dumps(out, indent=2) + "\n")
    Path(str(args.out) + ".md").write_text(md)
    log(f"wrote {args.out}.md and {args.out}.json")
    print(md)
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
