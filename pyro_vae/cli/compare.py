"""``pyro-vae compare``: train the same model once per objective and tabulate the results.

Example::

    pyro-vae compare --objectives elbo,iwae,dreg --num-particles 50 --epochs 40 \\
        --eval-samples 1000 --out runs/compare

writes ``table.md``, ``table.csv``, ``result.json``, ``loglik_vs_time.png`` and ``snr_vs_k.png``
to ``--out`` and prints the table. Every config key except ``objective`` and ``run_dir`` is also
a flag (``--latent-dim 20``), shared by all runs; ``--num-particles K`` sets K for every
objective except ``elbo`` (which keeps one particle unless ``elbo:K`` is written). An entry of
``--objectives`` is ``NAME`` or ``NAME:K`` (e.g. ``iwae:5,iwae:50``).

Wiring (done in ``pyro_vae/cli/__init__.py``): ``add_parser(subparsers)`` adds the subcommand and
``run(ns)`` executes it, returning the exit code (2 for bad input, reported in one line).
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, load_config

_TYPES = typing.get_type_hints(Config)
#: config keys that are not flags of ``compare``: set per run, or meaningless here
_EXCLUDED = ("objective", "run_dir", "num_particles", "patience", "accelerator", "devices", "num_nodes", "strategy",
             "precision", "threads")  # threads: compare's own --threads


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand to an ``argparse`` subparsers object; return its parser."""
    p = subparsers.add_parser(
        "compare",
        help="train the same model once per objective; tabulate log-likelihood, SNR, speed and memory",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--objectives", required=True, metavar="LIST",
                   help="comma-separated objectives, each NAME or NAME:K, e.g. elbo,iwae,dreg or iwae:5,iwae:50")
    p.add_argument("--num-particles", type=int, default=None, metavar="K",
                   help="K for every objective except elbo (default: the config's, 1)")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default: runs/compare)")
    p.add_argument("--config", type=Path, default=None, help="TOML file of shared config overrides")
    p.add_argument("--train-limit", type=int, default=None, metavar="N", help="train on the first N training rows")
    p.add_argument("--val-samples", type=int, default=50, metavar="K",
                   help="K of the per-epoch validation IWAE bound (learning curves); 0 = off (default: 50)")
    p.add_argument("--khat-samples", type=int, default=1000, metavar="K",
                   help="importance samples per test digit for each encoder's Pareto k-hat (default: 1000; 0 skips)")
    p.add_argument("--snr-repeats", type=int, default=100, metavar="R", help="gradients per SNR estimate (default: 100)")
    p.add_argument("--snr-ks", default="1,10,100", metavar="LIST",
                   help="K values of the SNR-against-K curve, comma-separated; 'none' skips it (default: 1,10,100)")
    p.add_argument("--snr-at", default=None, metavar="LABEL",
                   help="objective whose trained model the SNR-against-K curve uses (default: the first)")
    p.add_argument("--snr-data", choices=("fixed", "resample"), default="fixed",
                   help="fixed: one minibatch, Monte Carlo noise only; resample: a fresh minibatch per gradient")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--memory-steps", type=int, default=5, metavar="N",
                   help="training steps of the CPU memory measurement (default: 5)")
    p.add_argument("--rank-by", choices=("is", "ais"), default="is",
                   help="rank by the importance-sampled log p(x) (is, default) or by AIS on --ais-subset test digits "
                        "(ais: certifies a ranking the k̂ diagnostics do not)")
    p.add_argument("--ais-subset", type=int, default=None, metavar="N", help="test digits scored by AIS (default: 50)")
    p.add_argument("--ais-steps", type=int, default=None, metavar="T", help="AIS temperatures (default: 1000)")
    p.add_argument("--ais-chains", type=int, default=None, metavar="C", help="AIS chains per digit (default: 16)")
    p.add_argument("--ais-leapfrog", type=int, default=None, metavar="L",
                   help="leapfrog steps per HMC transition (default: 5)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="do not print progress lines")
    g = p.add_argument_group("configuration shared by every run (each overrides --config and the default)")
    for f in fields(Config):
        if f.name in _EXCLUDED:
            continue
        t = _TYPES[f.name]
        flag = "--" + f.name.replace("_", "-")
        if t is bool:
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif typing.get_origin(t) is list:
            g.add_argument(flag, dest=f.name, type=int, nargs="+", default=None, metavar="N")
        else:
            g.add_argument(flag, dest=f.name, type=t, default=None, metavar=t.__name__.upper())
    p.set_defaults(func=run)
    return p


def parse_objectives(text: str) -> dict[str, dict[str, Any]]:
    """``"elbo,iwae:5"`` -> ``{"elbo": {"objective": "elbo"}, "iwae-5": {"objective": "iwae", "num_particles": 5}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, _, k = item.partition(":")
        over: dict[str, Any] = {"objective": name.strip()}
        label = name.strip()
        if k:
            try:
                over["num_particles"] = int(k)
            except ValueError:
                raise ConfigError(f"--objectives entry {item!r}: K must be an integer, as in iwae:50") from None
            label = f"{label}-{over['num_particles']}"
        if label in out:
            raise ConfigError(f"--objectives lists {label!r} twice")
        out[label] = over
    if not out:
        raise ConfigError("--objectives is empty; give e.g. --objectives elbo,iwae,dreg")
    return out


def _snr_ks(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none", "0"):
        return ()
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--snr-ks must be comma-separated integers such as 1,10,100, got {text!r}") from None


def run(ns: argparse.Namespace) -> int:
    """Execute ``pyro-vae compare``; 0 on success, 2 on bad input (message on stderr)."""
    from ..data import DataError

    try:
        import torch

        from ..experiments import compare_objectives

        if ns.threads is not None:
            if ns.threads < 1:
                raise ConfigError(f"--threads must be >= 1, got {ns.threads}")
            torch.set_num_threads(ns.threads)
        overrides = {f.name: getattr(ns, f.name) for f in fields(Config)
                     if f.name not in _EXCLUDED and getattr(ns, f.name, None) is not None}
        base = load_config(ns.config, overrides)
        if ns.val_samples < 0:
            raise ConfigError(f"--val-samples must be >= 0, got {ns.val_samples}")
        ais_flags = {"num_steps": ns.ais_steps, "num_chains": ns.ais_chains, "num_leapfrog": ns.ais_leapfrog}
        ais_options = {k: v for k, v in ais_flags.items() if v is not None}
        if ns.rank_by != "ais" and (ais_options or ns.ais_subset is not None):
            raise ConfigError("--ais-subset, --ais-steps, --ais-chains and --ais-leapfrog apply to --rank-by ais only")
        if ais_options:
            from .ais import check_ais_options

            check_ais_options(*(d if v is None else v for v, d in ((ns.ais_steps, 1000), (ns.ais_chains, 16),
                                                                    (ns.ais_leapfrog, 5))))
        result = compare_objectives(
            parse_objectives(ns.objectives),
            base,
            num_particles=ns.num_particles,
            train_limit=ns.train_limit,
            eval_samples=base.eval_samples,
            khat_samples=ns.khat_samples or None,
            val_samples=ns.val_samples or None,
            snr_repeats=ns.snr_repeats,
            snr_data=ns.snr_data,
            snr_ks=_snr_ks(ns.snr_ks),
            snr_at=ns.snr_at,
            memory=not ns.no_memory,
            memory_steps=ns.memory_steps,
            out_dir=ns.out,
            progress=not ns.no_progress,
            rank_by=ns.rank_by,
            ais_subset=ns.ais_subset if ns.ais_subset is not None else 50,
            ais_options=ais_options or None,
        )
    except (ConfigError, DataError) as e:
        print(f"pyro-vae compare: error: {e}", file=sys.stderr)
        return 2
    print(result.to_markdown())
    return 0


def main(argv: typing.Sequence[str] | None = None) -> int:
    """Run ``compare`` alone (``python -m pyro_vae.cli.compare ...``) until the main CLI wires it in."""
    parser = argparse.ArgumentParser(prog="pyro-vae")
    add_parser(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return run(parser.parse_args(["compare", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
