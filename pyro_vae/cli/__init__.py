"""The ``pyro-vae`` command: ``train``, ``evaluate``, ``sample``, ``reconstruct``, ``diagnose``,
``compare``, ``bdmc``.

Every config key is also a flag (``latent_dim`` -> ``--latent-dim``); flags override the
``--config`` TOML file, which overrides the defaults. With ``--resume`` the run's stored
``config.toml`` is the truth and only the keys named on the command line change (and only the
safe ones, :data:`pyro_vae.config.RESUMABLE_KEYS`).

Errors are reported in one line, with the fix: exit code 2 for a mistake in the command or its
input (refused before anything is trained or written, the run directory untouched), 1 for a
failure while running (disk full, divergence), 130 for Ctrl-C and 143 for SIGTERM during
``train`` (both with the command that continues the run). ``--debug`` or ``PYRO_VAE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from ..config import SCALING_KEYS, Config, ConfigError, load_config, read_toml

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
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: environment variable PYRO_VAE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a VAE (default: the embedded MNIST digits) and write a run directory")
    t.add_argument("--config", type=Path, help="TOML file of config overrides")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last checkpoint, with its stored config.toml; only "
                        "keys named here change, and only epochs, patience, eval_samples, eval_memory_mb, threads, "
                        "device, data_root, download and the scaling keys may")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing run in --run-dir (all of it), once every check has passed")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    _add_config_flags(t)

    e = sub.add_parser("evaluate", help="score a trained run on its test split")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--samples", type=int, default=None, help="importance samples per datapoint (default: the run's)")
    e.add_argument("--threads", type=int, default=None, help="CPU threads (default: the run's threads)")
    e.add_argument("--method", choices=("is", "ais"), default="is",
                   help="is: importance sampling on the test split (default); ais: also annealed importance sampling "
                        "on the first --ais-subset test digits, beside IS on the same digits, into report.md")
    e.add_argument("--ais-steps", type=int, default=None, metavar="T", help="AIS temperatures (default: 1000)")
    e.add_argument("--ais-chains", type=int, default=None, metavar="C", help="AIS chains per digit (default: 16)")
    e.add_argument("--ais-leapfrog", type=int, default=None, metavar="L",
                   help="leapfrog steps per HMC transition (default: 5)")
    e.add_argument("--ais-subset", type=int, default=None, metavar="N",
                   help="test digits scored by AIS (default: 50; AIS costs ~1000 decoder passes per digit and chain)")
    from .ais import PRECISION_CHOICES

    e.add_argument("--ais-precision", choices=PRECISION_CHOICES, default=None,
                   help="the leapfrog's gradients: full, bfloat16 (densities, weights and Metropolis test stay in full "
                        "precision) or auto (bfloat16 where the hardware multiplies bfloat16 fast and the gradients "
                        "agree within 5%%; default: auto)")
    e.add_argument("--seed", type=int, default=None, help="seed of the AIS draws (default: the run's seed)")
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

    from . import ais, compare, diagnose

    diagnose.add_parser(sub)
    compare.add_parser(sub)
    ais.add_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM during ``pyro-vae train``: handled like Ctrl-C (the last complete checkpoint kept), exit code 143."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _cmd_train(ns: argparse.Namespace) -> int:
    """``pyro-vae train``, with SIGTERM turned into :class:`Terminated` for its duration (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _train_command(ns)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _train_command(ns)
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _train_command(ns: argparse.Namespace) -> int:
    from ..runs import CONFIG
    from .run import RESUME_OVERWRITE, train_run

    if ns.resume and ns.overwrite:
        raise ConfigError(RESUME_OVERWRITE)
    named = _overrides(ns)
    config = load_config(ns.config, named)  # every value checked, also those a resumed run will not use
    ns.run_dir = config.run_dir
    stored = Path(config.run_dir) / CONFIG
    if ns.resume and stored.is_file():
        # the stored config is the truth; the keys named here (flags, --config) are the changes asked for, and how
        # to launch (the scaling keys) comes from this command (docs/scaling.md)
        named = {**(read_toml(ns.config) if ns.config else {}), **named}
        launch = {k: getattr(config, k) for k in SCALING_KEYS}
        config = load_config(stored, {**named, **launch, "run_dir": config.run_dir})
    train_run(config, resume=ns.resume, overwrite=ns.overwrite, progress=not ns.no_progress, figures=not ns.no_figures)
    return 0


def writing_into(run_dir: str | Path, out: str | Path | None = None) -> Any:
    """The run directory's lock (:func:`pyro_vae.train.state.run_lock`) for a command that writes into it.

    Nothing is locked when ``out`` (the file the command writes) lies outside ``run_dir``, or when
    ``run_dir`` is no run directory (no ``config.toml``: loading it then fails with the fix, and no
    directory is created).
    """
    import contextlib

    from ..runs import CONFIG
    from ..train.state import run_lock

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        return contextlib.nullcontext()
    if out is not None and not Path(out).resolve().is_relative_to(run_dir.resolve()):
        return contextlib.nullcontext()
    return run_lock(run_dir)


def _cmd_evaluate(ns: argparse.Namespace) -> int:
    if ns.samples is not None and ns.samples < 1:
        raise ConfigError(f"--samples must be >= 1 (importance samples per datapoint), got {ns.samples}")
    if ns.threads is not None and ns.threads < 0:
        raise ConfigError(f"--threads must be >= 1 (or 0 for torch's default), got {ns.threads}")
    _check_ais_flags(ns)
    with writing_into(ns.run_dir):  # writes evaluation.json: not while another process trains or writes there
        return _evaluate(ns)


#: defaults of ``evaluate --method ais`` (flag -> value)
AIS_DEFAULTS = {"ais_steps": 1000, "ais_chains": 16, "ais_leapfrog": 5, "ais_subset": 50, "ais_precision": "auto"}


def _check_ais_flags(ns: argparse.Namespace) -> None:
    """``evaluate``'s AIS flags: only with ``--method ais``, each in range; defaults filled in."""
    method = getattr(ns, "method", "is")
    given = [k for k in AIS_DEFAULTS if getattr(ns, k, None) is not None]
    if method != "ais":
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} applies to AIS only; add --method ais")
        return
    for key, default in AIS_DEFAULTS.items():
        if getattr(ns, key, None) is None:
            setattr(ns, key, default)
    from .ais import check_ais_options

    check_ais_options(ns.ais_steps, ns.ais_chains, ns.ais_leapfrog)
    if ns.ais_subset < 1:
        raise ConfigError(f"--ais-subset must be >= 1 (test digits scored by AIS), got {ns.ais_subset}")
    if ns.seed is not None and not 0 <= ns.seed < 2**32:
        raise ConfigError(f"--seed must lie in [0, 2**32), got {ns.seed}")


def _evaluate(ns: argparse.Namespace) -> int:
    import torch

    from ..evaluation import bits_per_dim, log_likelihood
    from ..train import atomic_write_text
    from ..train.fit import evaluate_bound
    from ..runs import Run, eval_data

    from .run import set_threads

    config, data, vae = Run.load(ns.run_dir)
    set_threads(ns.threads if ns.threads is not None else config.threads)
    k = ns.samples if ns.samples is not None else config.eval_samples
    test = eval_data(data, config)
    torch.manual_seed(config.seed + 7)
    elbo = evaluate_bound(vae.model, vae.guide, test)
    ll = log_likelihood(vae.model, vae.guide, test, num_samples=k, memory_budget=config.eval_memory_mb * 2**20,
                        progress=not ns.no_progress)
    result = {"test_elbo": elbo, "test_log_likelihood": ll.mean, "test_log_likelihood_se": ll.stderr,
              "eval_samples": k, "bits_per_dim": bits_per_dim(ll.mean, data.x_dim), "num_test": len(test)}
    if getattr(ns, "method", "is") == "ais":
        from .ais import ais_against_is, ais_section, gap_vs_khat_plot, replace_section

        # IS on the same digits with at least 100 samples: k̂ needs a tail of weights
        block = ais_against_is(vae, test[: ns.ais_subset], num_samples=max(k, 100), num_steps=ns.ais_steps,
                               num_chains=ns.ais_chains, num_leapfrog=ns.ais_leapfrog,
                               memory_budget=config.eval_memory_mb * 2**20,
                               seed=ns.seed if ns.seed is not None else config.seed, progress=not ns.no_progress,
                               gradient_precision=ns.ais_precision)
        result["ais"] = block
        gap_vs_khat_plot(block["per_datapoint"], Path(ns.run_dir) / "ais_vs_is.png")
        report = Path(ns.run_dir) / "report.md"
        old = report.read_text(encoding="utf-8") if report.is_file() else "# pyro-vae run report\n"
        atomic_write_text(report, replace_section(old, ais_section(block)))
    atomic_write_text(Path(ns.run_dir) / "evaluation.json", json.dumps(result, indent=2) + "\n")
    print(f"test ELBO {elbo:.2f} nats; test log p(x) {ll.mean:.2f} ± {ll.stderr:.2f} nats (K={k}, N={len(test)})")
    if "ais" in result:
        s = result["ais"]["summary"]
        print(f"AIS on the first {s['num_data']} test digits ({s['num_steps']} temperatures, {s['num_chains']} chains): "
              f"log p(x) {s['ais_mean']:.2f}; IS on the same digits {s['is_mean']:.2f}; AIS − IS "
              f"{s['ais_minus_is']:+.3f} ± {s['ais_minus_is_se']:.3f} nats; IS k̂ > 0.7 on "
              f"{100 * s['khat_bad_share']:.0f}% (report.md, ais_vs_is.png)")
    return 0


def _cmd_sample(ns: argparse.Namespace) -> int:
    import torch

    from .. import plots
    from ..runs import Run

    if ns.num < 1:
        raise ConfigError(f"--num must be >= 1, got {ns.num}")
    if not 0 <= ns.seed < 2**32:
        raise ConfigError(f"--seed must lie in [0, 2**32), got {ns.seed}")
    out = ns.out or Path(ns.run_dir) / f"samples_{ns.seed}.png"
    with writing_into(ns.run_dir, out):
        config, data, vae = Run.load(ns.run_dir)
        if data.image_shape is None:
            raise ConfigError("sample draws image grids; this run's data are not images")
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
    out = ns.out or Path(ns.run_dir) / "reconstructions_test.png"
    with writing_into(ns.run_dir, out):
        config, data, vae = Run.load(ns.run_dir)
        if data.image_shape is None:
            raise ConfigError("reconstruct draws image grids; this run's data are not images")
        value_range = (0.0, 255.0) if data.pixel_scale == "uint8" else (0.0, 1.0)
        plots.reconstructions(vae, eval_data(data, config)[: ns.num], data.image_shape, n=ns.num, path=out,
                              value_range=value_range)
    print(f"wrote {out}")
    return 0


_COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "sample": _cmd_sample, "reconstruct": _cmd_reconstruct}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-vae`` console script (exit codes: module docstring)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    debug = ns.debug or os.environ.get("PYRO_VAE_DEBUG", "") not in ("", "0")
    try:
        command = _COMMANDS.get(ns.command) or ns.func
        return command(ns)
    except BaseException as e:
        if debug or isinstance(e, SystemExit):
            raise
        code, message = _explain(e, ns)
        if code is None:
            raise
        print(f"pyro-vae {ns.command}: {message}", file=sys.stderr)
        return code


#: errnos that mean the command cannot write where it was pointed (exit code 2: fix the command)
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


def _resume_hint(ns: argparse.Namespace) -> str:
    run_dir = getattr(ns, "run_dir", None)
    if ns.command != "train" or run_dir is None:
        return ""
    from ..train.fit import CHECKPOINT

    if not (Path(run_dir) / CHECKPOINT).exists():
        return ""
    return f"; the last checkpoint is intact: continue with `pyro-vae train --resume --run-dir {run_dir}`"


def _explain(e: BaseException, ns: argparse.Namespace) -> tuple[int | None, str]:
    """``(exit code, one-line message)`` for an error a user can act on; ``(None, "")`` for a bug (traceback)."""
    from ..data import DataError
    from ..train import CheckpointError
    from ..train.state import RunInUseError

    def line(text: object) -> str:
        return " ".join(str(text).split())

    if isinstance(e, Terminated):
        return 143, "terminated (SIGTERM)" + (_resume_hint(ns) or "")
    if isinstance(e, KeyboardInterrupt):
        return 130, "interrupted" + (_resume_hint(ns) or "")
    if isinstance(e, (ConfigError, DataError, CheckpointError, RunInUseError, FileExistsError, NotADirectoryError)):
        return 2, f"error: {line(e)}"
    if isinstance(e, FloatingPointError):
        return 1, f"error: {line(e)}"
    if isinstance(e, OSError) and e.errno is not None:
        where = f"{e.filename}: " if e.filename else ""
        what = f"error: cannot write or read {where}{e.strerror or line(e)}"
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return 1, what + "; free some space" + (_resume_hint(ns) or "")
        if e.errno in _USER_ERRNOS:
            return 2, what + "; check the path and its permissions (the run directory must be writable)"
        return 1, what + (_resume_hint(ns) or "")
    if isinstance(e, FileNotFoundError):
        return 2, f"error: {line(e)}"
    return None, ""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
