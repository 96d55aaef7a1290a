"""Run state: what a training run keeps between steps, one implementation for every loop.

:func:`~pyro_vae.fit` and the Lightning module (:mod:`pyro_vae.train.lightning`) are thin loops
over one step; everything they keep from epoch to epoch lives here:

* :class:`EpochMeter` sums the steps of an epoch into its metrics row (``train_loss``,
  ``train_elbo``, ``reconstruction``, ``kl``, ``grad_norm``, ``lr``, ``seconds``, ``items_per_s``);
* :class:`RunState` keeps the :class:`History`, early stopping (patience on the validation
  bound, best epoch, best weights), builds the checkpoint dictionary, writes the run directory
  (``checkpoint.pt``, ``best.pt``, ``metrics.csv``, TensorBoard) and restores a checkpoint's
  bookkeeping (history, early-stopping counter, KL warm-up step);
* :func:`restore_training` and :func:`restore_rng` put weights, optimizer, schedule and random
  generators back.

The checkpoint dictionary (``save_checkpoint`` adds ``format`` and ``version``)::

    epoch, model (the VAE's state_dict, {} for other programs), optimizer, scheduler (or None),
    rng {torch, data[, torch_ranks]}, history, best_epoch, best_val, epochs_since_best,
    stopped_early, kl_sites, config[, objective_step (a KLWarmup's step)]

``torch_ranks`` (every process's generator) is written by the Lightning loop only. A checkpoint
written by either loop resumes in the other.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..objectives import find_warmup
from .checkpoint import TEMP_SUFFIX, CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint

if TYPE_CHECKING:  # (fit.py imports this module)
    from .fit import StepInfo

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.csv"
#: the lock file of a run directory (``fcntl.flock``; holds the PID of the process training in it)
LOCK = ".lock"
#: the metrics column of the validation bound (the ELBO unless ``fit(val_objective=)`` says otherwise)
VAL = "val_elbo"


@dataclass
class History:
    """Per-epoch metrics of a run (one dict per epoch) and the run's bookkeeping."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val: float = -math.inf
    stopped_early: bool = False
    kl_sites: dict[str, str] = field(default_factory=dict)

    def column(self, key: str) -> list[float]:
        """One metric over epochs."""
        return [row[key] for row in self.epochs if key in row]


class EpochMeter:
    """Sums one epoch's steps: ``add`` after each step, ``row`` at the end of the epoch.

    Per-datapoint metrics are weighted by the batch size; the gradient norm is averaged over the
    steps that computed one (none: ``nan``).
    """

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        """Zero the sums and start the epoch's clock."""
        self.sums = [0.0, 0.0, 0.0, 0.0]  # Σ loss·b, Σ reconstruction·b, Σ kl·b, Σ b
        self.norm_sum, self.norms = 0.0, 0
        self.t0 = time.perf_counter()

    def add(self, info: StepInfo, batch: int) -> None:
        """Count one step of ``batch`` rows (a ``nan`` gradient norm means: not computed)."""
        s = self.sums
        s[0] += info.loss * batch
        s[1] += info.reconstruction * batch
        s[2] += info.kl * batch
        s[3] += batch
        if not math.isnan(info.grad_norm):
            self.add_grad_norm(info.grad_norm)

    def add_grad_norm(self, norm: float) -> None:
        self.norm_sum += norm
        self.norms += 1

    @property
    def mean_loss(self) -> float:
        """The running mean loss per datapoint of this epoch."""
        return self.sums[0] / self.sums[3] if self.sums[3] else math.nan

    def row(self, epoch: int, lr: float, reduce: Callable[[list[float]], Sequence[float]] | None = None) -> dict[str, float]:
        """The epoch's metrics; ``reduce`` sums the four sums over processes (data parallel runs)."""
        seconds = time.perf_counter() - self.t0
        loss, rec, kl, seen = reduce(self.sums) if reduce is not None else self.sums
        return {
            "epoch": epoch,
            "train_loss": loss / seen,
            "train_elbo": -loss / seen,
            "reconstruction": rec / seen,
            "kl": kl / seen,
            "grad_norm": self.norm_sum / self.norms if self.norms else math.nan,
            "lr": lr,
            "seconds": seconds,
            "items_per_s": seen / seconds if seconds > 0 else math.nan,
        }


def step_schedule(scheduler: Any, row: dict[str, float]) -> None:
    """Step a learning-rate schedule once per epoch (``plateau`` watches the validation bound)."""
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(row.get(VAL, row["train_elbo"]))
    else:
        scheduler.step()


def rank_seed(seed: int, rank: int, start_epoch: int = 0) -> int:
    """The torch seed of process ``rank`` in a run starting at ``start_epoch`` (0: a fresh run).

    A fresh run gives process r the seed ``seed + r``. A resumed run restores each process's saved
    generator when the checkpoint came from as many processes; otherwise rank 0 continues the
    checkpoint's generator and every other rank gets this seed, distinct per epoch and rank.
    """
    return seed + rank if start_epoch == 0 else seed + rank + 1_000_003 * start_epoch


def rng_state(data: torch.Generator, ranks: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """The checkpoint's ``rng`` entry: torch's generator, the data generator (and every process's)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "data": data.get_state()}
    if ranks is not None:
        state["torch_ranks"] = ranks
    return state


def restore_rng(state: dict[str, Any], data: torch.Generator, *, seed: int = 0, rank: int = 0, world: int = 1) -> None:
    """Continue the checkpoint's generators in process ``rank`` of ``world`` (see :func:`rank_seed`)."""
    ranks = state["rng"].get("torch_ranks")
    if ranks is not None and len(ranks) == world:
        torch.set_rng_state(ranks[rank])
    elif rank == 0:
        torch.set_rng_state(state["rng"]["torch"])
    else:
        torch.manual_seed(rank_seed(seed, rank, int(state["epoch"])))
    data.set_state(state["rng"]["data"])


def restore_training(
    state: dict[str, Any], path: Path | None, model: nn.Module | None, optimizer: torch.optim.Optimizer | None,
    scheduler: Any = None,
) -> None:
    """Load the checkpoint's weights (into ``model``, when given), optimizer and schedule.

    Raises:
        CheckpointError: they do not fit this model/optimizer (the run was started with another config).
    """
    try:
        if model is not None:
            model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path} does not match this model/optimizer ({str(e).splitlines()[0][:200]}); resume with the "
            "config the run was started with (its run_dir/config.toml)"
        ) from e


class RunInUseError(RuntimeError):
    """Another process is training in (or writing into) this run directory (it holds ``RUN/.lock``)."""


_HELD: dict[str, list[int]] = {}  # real path of a run directory -> [lock fd, depth] (re-entrant per process)


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run directory's OS-level lock (``fcntl.flock`` on ``RUN/.lock``) for the ``with`` block.

    Creates the directory. The kernel releases the lock when the process exits in any way
    (kill -9 included), so a lock is never stale; re-entrant within one process (``train_run``
    holds it around ``fit``, which takes it too). Where ``fcntl`` does not exist (Windows) nothing is locked.

    Raises:
        RunInUseError: another process holds it (the message names its PID).
        OSError: the directory cannot be created or written (read-only, permissions).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    run_dir = Path(run_dir)
    key = os.path.realpath(run_dir)
    held = _HELD.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        try:
            pid = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise RunInUseError(
            f"another pyro-vae process (PID {pid}) is using {run_dir}; wait for it to finish (or stop it), "
            "or choose another --run-dir"
        ) from e
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = [fd, 1]
    try:
        yield
    except BaseException:
        if created and [p.name for p in run_dir.iterdir()] == [LOCK]:
            # refused before anything was written: leave no trace of a run directory
            with contextlib.suppress(OSError):
                (run_dir / LOCK).unlink()
                run_dir.rmdir()
        raise
    finally:
        _HELD.pop(key, None)
        os.close(fd)  # releases the lock


def clean_temp_files(run_dir: str | Path) -> list[str]:
    """Remove the temporary files an interrupted atomic write left in ``run_dir`` (call under :func:`run_lock`)."""
    removed = []
    for p in Path(run_dir).glob(".*" + TEMP_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p.name)
    return removed


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite (one fused norm per tensor, one host sync)."""
    ts = [t.detach() for t in tensors]
    if not ts:
        return True
    # the max-norm per tensor: NaN and inf propagate, and large finite weights cannot overflow
    return bool(torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(ts, ord=math.inf)])).all())


def open_run(
    run_dir: str | Path | None, resume: bool, overwrite: bool
) -> tuple[Path | None, Path | None, dict[str, Any] | None]:
    """``(run_path, checkpoint_path, state to resume or None)``; refuses to overwrite a run unasked."""
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other (continue the run, or replace it); "
                         "pass one of them")
    run_path = Path(run_dir) if run_dir is not None else None
    ckpt_path = run_path / CHECKPOINT if run_path is not None else None
    state: dict[str, Any] | None = None
    if resume:
        if ckpt_path is None:
            raise ValueError("resume=True needs run_dir= pointing at a previous run")
        state = load_checkpoint(ckpt_path)
    elif ckpt_path is not None and ckpt_path.exists() and not overwrite:
        raise FileExistsError(
            f"{run_path} already holds a run ({CHECKPOINT}); pass resume=True (CLI --resume) to continue it, "
            "overwrite=True (--overwrite) to replace it, or choose another run_dir (--run-dir)"
        )
    return run_path, ckpt_path, state


def write_metrics(run_dir: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite ``run_dir/metrics.csv`` atomically: one row per epoch, the union of the keys as columns."""
    if not rows:
        return
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in keys})
    atomic_write_text(run_dir / METRICS, buf.getvalue())


class RunState:
    """History, early stopping and the run directory of one training run.

    A loop calls :meth:`resume` (when continuing a checkpoint) and :meth:`open` once, then per
    epoch :meth:`end_epoch` with the epoch's row (with ``val_elbo`` when it validated),
    :meth:`write` (the process that writes) and :meth:`publish`; at the end :meth:`finish`
    (restores the best weights after early stopping) and :meth:`close`.

    Args:
        objective: the training objective (its ``kl_sites`` and KL warm-up step are recorded).
        patience: stop when the validation bound has not improved for this many epochs.
        restore_best: keep the best weights in memory and restore them after early stopping.
        run_dir: where ``checkpoint.pt``, ``best.pt``, ``metrics.csv`` and TensorBoard logs go.
        config: a plain dict stored in every checkpoint.
        callbacks: ``f(epoch, row)`` called by :meth:`publish`.

    Example:
        >>> from pyro_vae.train.state import RunState
        >>> run = RunState(patience=2)
        >>> stop = [run.end_epoch({"epoch": e, "train_elbo": 0.0, "val_elbo": v})
        ...         for e, v in enumerate([-3, -2, -2.5, -2.1], 1)]
        >>> stop.index(True) + 1  # the epoch after which it stops
        4
        >>> run.history.best_epoch, run.history.best_val, run.epochs_since_best
        (2, -2, 2)
    """

    def __init__(
        self,
        objective: Any = None,
        *,
        patience: int | None = None,
        restore_best: bool = True,
        run_dir: str | Path | None = None,
        config: dict[str, Any] | None = None,
        callbacks: Iterable[Callable[[int, dict[str, float]], None]] = (),
    ) -> None:
        self.objective = objective
        self.patience, self.restore_best = patience, restore_best
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = config or {}
        self.callbacks = list(callbacks)
        self.history = History()
        self.epochs_since_best = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.improved = False  # the last epoch set a new best validation bound
        self.start_epoch = 0  # epochs completed before this session (resuming)
        self.writer: Any = None

    # -- resuming ---------------------------------------------------------------------------------
    def resume(self, state: dict[str, Any], epochs: int) -> int:
        """Take the checkpoint's history, early-stopping state and KL warm-up step.

        Returns the first epoch (0-based) left to train: ``epochs`` when the run had stopped early.
        """
        h = self.history
        h.epochs = [dict(r) for r in state["history"]]
        h.best_epoch = state.get("best_epoch")
        h.best_val = float(state.get("best_val", -math.inf))
        h.kl_sites = dict(state.get("kl_sites", {}))
        h.stopped_early = bool(state.get("stopped_early"))
        self.epochs_since_best = int(state.get("epochs_since_best", 0))
        warmup = find_warmup(self.objective)
        if warmup is not None and "objective_step" in state:
            warmup.set_step(int(state["objective_step"]))
        self.start_epoch = epochs if h.stopped_early else int(state["epoch"])
        return self.start_epoch

    # -- one epoch ----------------------------------------------------------------------------------
    def end_epoch(self, row: dict[str, float], model: nn.Module | None = None, scheduler: Any = None) -> bool:
        """Record the epoch's row, track the best validation bound, step the schedule.

        Returns whether to stop early (``patience`` epochs without a better validation bound).
        """
        h = self.history
        if not h.kl_sites and getattr(self.objective, "kl_sites", None):
            h.kl_sites = dict(self.objective.kl_sites)
        self.improved = False
        if VAL in row:
            if row[VAL] > h.best_val:
                h.best_val, h.best_epoch, self.improved = row[VAL], int(row["epoch"]), True
                self.epochs_since_best = 0
                if model is not None and self.restore_best:
                    self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                self.epochs_since_best += 1
        step_schedule(scheduler, row)
        h.epochs.append(row)
        h.stopped_early = self.patience is not None and self.epochs_since_best >= self.patience
        return h.stopped_early

    def checkpoint(
        self, model: nn.Module | None, optimizer: torch.optim.Optimizer, scheduler: Any, rng: dict[str, Any]
    ) -> dict[str, Any]:
        """The checkpoint dictionary after the last epoch (module docstring)."""
        h = self.history
        ckpt: dict[str, Any] = {
            "epoch": int(h.epochs[-1]["epoch"]),
            "model": model.state_dict() if model is not None else {},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng,
            "history": h.epochs,
            "best_epoch": h.best_epoch,
            "best_val": h.best_val,
            "epochs_since_best": self.epochs_since_best,
            "stopped_early": h.stopped_early,
            "kl_sites": h.kl_sites,
            "config": self.config,
        }
        warmup = find_warmup(self.objective)
        if warmup is not None:
            ckpt["objective_step"] = int(warmup.step)
        return ckpt

    def write(self, model: nn.Module | None, optimizer: torch.optim.Optimizer, scheduler: Any, rng: dict[str, Any]) -> None:
        """Write ``best.pt`` (after a better epoch), ``checkpoint.pt`` and ``metrics.csv`` (without a run_dir: nothing)."""
        if self.run_dir is None:
            return
        weights = [p for g in optimizer.param_groups for p in g["params"]]
        if model is not None:
            weights += list(model.state_dict().values())
        if not all_finite(w for w in weights if w.is_floating_point()):
            from .fit import non_finite

            raise non_finite("weights", math.nan)  # never checkpoint them
        ckpt = self.checkpoint(model, optimizer, scheduler, rng)
        if self.improved and model is not None:
            save_checkpoint(self.run_dir / BEST, {"epoch": ckpt["epoch"], "model": ckpt["model"], "config": self.config})
        save_checkpoint(self.run_dir / CHECKPOINT, ckpt)
        write_metrics(self.run_dir, self.history.epochs)

    def publish(self, row: dict[str, float]) -> None:
        """Hand the epoch's row to TensorBoard (when open) and the callbacks."""
        epoch = int(row["epoch"])
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch":
                    self.writer.add_scalar(k, v, epoch)
        for cb in self.callbacks:
            cb(epoch, row)

    # -- start and end ------------------------------------------------------------------------------
    def open(self, tensorboard: bool = True) -> None:
        """Create the run directory and, with ``tensorboard`` (and TensorBoard installed), its writer."""
        if self.run_dir is None:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: CSV only
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self, model: nn.Module | None, device: torch.device | str = "cpu") -> None:
        """After early stopping with ``restore_best``: put the best weights back (from ``best.pt``
        when they are not in memory, i.e. the best epoch came before a resume)."""
        if not (self.history.stopped_early and self.restore_best and model is not None):
            return
        best = self.best_state
        if best is None and self.run_dir is not None and (self.run_dir / BEST).exists():
            best = load_checkpoint(self.run_dir / BEST, map_location=device)["model"]
        if best is not None:
            model.load_state_dict(best)

    # -- pickling (spawned processes) -------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "writer": None}


__all__ = [
    "History",
    "EpochMeter",
    "RunState",
    "open_run",
    "run_lock",
    "clean_temp_files",
    "all_finite",
    "RunInUseError",
    "LOCK",
    "restore_training",
    "restore_rng",
    "rng_state",
    "rank_seed",
    "step_schedule",
    "write_metrics",
    "CHECKPOINT",
    "BEST",
    "METRICS",
    "VAL",
]
