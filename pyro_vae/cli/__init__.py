"""The ``pyro-vae`` command: ``train``, ``evaluate``, ``sample``, ``reconstruct``, ``diagnose``,
``compare``.

Every config key is also a flag (``latent_dim`` -> ``--latent-dim``); flags override the
``--config`` TOML file, which overrides the defaults. Errors in input are reported in one line
with the fix and exit code 2, before anything is trained or written.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from ..config import Config, ConfigError, load_config

_TYPES = typing.get_type_hints(Config)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (each overrides --config and the default)")
    for f in fields(Config):
        t = _TYPES[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not f.default_factory else None  # type: ignore[comparison-overlap]
        if t is bool:
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"(default: {f.default})")
        elif typing.get_origin(t) is list:
            g.add_argument(flag, dest=f.name, type=int, nargs="+", default=None, metavar="N",
                           help=f"(default: {f.default_factory()})")  # type: ignore[misc]
        else:
            g.add_argument(flag, dest=f.name, type=t, default=None, metavar=t.__name__.upper(),
                           help=f"(default: {default!r})")


def _overrides(ns: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(ns, f.name) for f in fields(Config) if getattr(ns, f.name, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="pyro-vae",
        description="Variational autoencoders as Pyro programs: train, evaluate, sample, reconstruct.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a VAE (default: the embedded MNIST digits) and write a run directory")
    t.add_argument("--config", type=Path, help="TOML file of config overrides")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --run-dir")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    _add_config_flags(t)

    e = sub.add_parser("evaluate", help="score a trained run on its test split")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--samples", type=int, default=None, help="importance samples per datapoint (default: the run's)")
    e.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("sample", help="draw samples from a trained run's prior and decoder into a PNG grid")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--num", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=None, help="PNG path (default: RUN_DIR/samples_SEED.png)")

    r = sub.add_parser("reconstruct", help="reconstruct test digits of a trained run into a PNG")
    r.add_argument("run_dir", type=Path)
    r.add_argument("--num", type=int, default=10)
    r.add_argument("--out", type=Path, default=None, help="PNG path (default: RUN_DIR/reconstructions_test.png)")

    from . import compare, diagnose

    diagnose.add_parser(sub)
    compare.add_parser(sub)
    return parser


def _cmd_train(ns: argparse.Namespace) -> int:
    from .run import train_run

    config = load_config(ns.config, _overrides(ns))
    train_run(config, resume=ns.resume, overwrite=ns.overwrite, progress=not ns.no_progress, figures=not ns.no_figures)
    return 0


def _cmd_evaluate(ns: argparse.Namespace) -> int:
    import torch

    from ..evaluation import bits_per_dim, log_likelihood
    from ..train import atomic_write_text
    from ..train.fit import evaluate_bound
    from ..runs import Run, eval_data

    config, data, vae = Run.load(ns.run_dir)
    k = ns.samples or config.eval_samples
    if k < 1:
        raise ConfigError(f"--samples must be >= 1, got {k}")
    test = eval_data(data, config)
    torch.manual_seed(config.seed + 7)
    elbo = evaluate_bound(vae.model, vae.guide, test)
    ll = log_likelihood(vae.model, vae.guide, test, num_samples=k, memory_budget=config.eval_memory_mb * 2**20,
                        progress=not ns.no_progress)
    result = {"test_elbo": elbo, "test_log_likelihood": ll.mean, "test_log_likelihood_se": ll.stderr,
              "eval_samples": k, "bits_per_dim": bits_per_dim(ll.mean, data.x_dim), "num_test": len(test)}
    atomic_write_text(Path(ns.run_dir) / "evaluation.json", json.dumps(result, indent=2) + "\n")
    print(f"test ELBO {elbo:.2f} nats; test log p(x) {ll.mean:.2f} ± {ll.stderr:.2f} nats (K={k}, N={len(test)})")
    return 0


def _cmd_sample(ns: argparse.Namespace) -> int:
    import torch

    from .. import plots
    from ..runs import Run

    if ns.num < 1:
        raise ConfigError(f"--num must be >= 1, got {ns.num}")
    config, data, vae = Run.load(ns.run_dir)
    if data.image_shape is None:
        raise ConfigError("sample draws image grids; this run's data are not images")
    out = ns.out or Path(ns.run_dir) / f"samples_{ns.seed}.png"
    torch.manual_seed(ns.seed)
    value_range = (0.0, 255.0) if data.pixel_scale == "uint8" else (0.0, 1.0)
    plots.image_grid(vae.sample(ns.num), data.image_shape, nrow=min(ns.num, 10), title="prior samples", path=out,
                     value_range=value_range)
    print(f"wrote {out}")
    return 0


def _cmd_reconstruct(ns: argparse.Namespace) -> int:
    from .. import plots
    from ..runs import Run, eval_data

    if ns.num < 1:
        raise ConfigError(f"--num must be >= 1, got {ns.num}")
    config, data, vae = Run.load(ns.run_dir)
    if data.image_shape is None:
        raise ConfigError("reconstruct draws image grids; this run's data are not images")
    out = ns.out or Path(ns.run_dir) / "reconstructions_test.png"
    value_range = (0.0, 255.0) if data.pixel_scale == "uint8" else (0.0, 1.0)
    plots.reconstructions(vae, eval_data(data, config)[: ns.num], data.image_shape, n=ns.num, path=out,
                          value_range=value_range)
    print(f"wrote {out}")
    return 0


_COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "sample": _cmd_sample, "reconstruct": _cmd_reconstruct}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-vae`` console script."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    from ..data import DataError
    from ..train import CheckpointError

    try:
        command = _COMMANDS.get(ns.command) or ns.func
        return command(ns)
    except (ConfigError, DataError, CheckpointError, FileExistsError, FileNotFoundError, NotADirectoryError) as e:
        print(f"pyro-vae {ns.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
