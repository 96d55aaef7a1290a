"""Training on many devices and nodes with Lightning, the way Pyro recommends.

Pyro's answer to distributed variational inference is Lightning with an ``ELBOModule`` (its
``examples/svi_lightning.py``); ``pyro.plate`` under ``nn.DataParallel`` is a known failure
(pyro-ppl/pyro#2354). This module puts pyro_vae on that engine without changing anything in the
model, the guide or the objective:

* :class:`VAELightningModule` wraps any model/guide pair and any objective with
  ``differentiable_loss`` (every :mod:`pyro_vae.objectives` class, Pyro's ``Trace_ELBO``, ...)
  through ``objective(model, guide)``, Pyro's ``ELBOModule``.
* :func:`fit_distributed` is :func:`~pyro_vae.fit` on Lightning: the same arguments, run
  directory, ``metrics.csv`` columns, checkpoint dictionary and :class:`~pyro_vae.train.History`,
  plus ``accelerator`` / ``devices`` / ``strategy`` / ``num_nodes`` / ``precision``. A checkpoint
  written by one resumes in the other.
* :class:`ShardedData` splits every global minibatch between the processes.

**The data plate's scale under sharding.** Each of the P processes sees its own B rows of a
global batch of P·B and calls ``model(x_local, num_data=N)`` with N the size of the *whole*
training set, so its loss is −(N/B)·Σ_local bound. DDP averages gradients over the processes:
(1/P)·Σ_p (N/B)·∇Σ_p = (N/(P·B))·∇Σ_global — exactly the gradient of one process on the combined
batch of P·B rows. ``batch_size`` is therefore *per process* (Lightning's convention): the
effective batch is ``batch_size · devices · num_nodes``.

**Random numbers.** All processes draw the same data order and the same binarization (one
generator seeded with ``seed``, consumed exactly as :class:`~pyro_vae.data.Batches` consumes it
for the global batch), so P processes with batch B see the data one process with batch P·B sees.
Process r draws its z-noise from torch's generator seeded with ``seed + r`` (rank 0 therefore
draws what :func:`~pyro_vae.fit` draws: one process reproduces ``fit`` exactly).

Requires ``pip install "pyro_vae[scale]"`` (Lightning 2.4 or newer).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

try:
    import lightning as L
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "pyro_vae.train.lightning needs Lightning: pip install 'pyro_vae[scale]' (or 'lightning>=2.4,<3')"
    ) from e

import pyro
import torch
from torch import nn

from ..config import SCALING_STRATEGIES
from ..data import Batches, DataError
from ..objectives import ELBO, find_warmup
from ..vae import VAE
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .fit import (
    BEST,
    CHECKPOINT,
    History,
    _accepts_num_data,
    make_optimizer,
    make_scheduler,
    _tensorboard,
    _write_metrics,
    check_fit_inputs,
    collect_parameters,
    evaluate_bound,
    open_run,
)

#: precisions offered: full, and automatic mixed precision (bf16 on CPUs and recent GPUs, fp16 on GPUs)
PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed")
#: strategies offered: data parallel ones (each process holds all parameters, as checkpoints expect)
STRATEGIES = SCALING_STRATEGIES
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def rank_seed(seed: int, rank: int, start_epoch: int = 0) -> int:
    """The torch seed of process ``rank`` in a run starting at ``start_epoch`` (0: a fresh run).

    A fresh run gives process r the seed ``seed + r``. A resumed run restores each process's saved
    generator when the checkpoint came from as many processes; otherwise rank 0 continues the
    checkpoint's generator and every other rank gets this seed, distinct per epoch and rank.
    """
    return seed + rank if start_epoch == 0 else seed + rank + 1_000_003 * start_epoch


def process_rank(devices: int = 1) -> int:
    """This process's global rank as the launcher announced it, before any process group exists.

    ``torchrun`` sets ``RANK``; Lightning's own launcher sets ``LOCAL_RANK`` (and ``NODE_RANK``);
    ``srun`` sets ``SLURM_PROCID``. A process nobody launched is rank 0.
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "LOCAL_RANK" in env:
        return int(env.get("NODE_RANK", 0)) * devices + int(env["LOCAL_RANK"])
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        return int(env["SLURM_PROCID"])
    return 0


def full_precision(device_type: str = "cpu") -> torch.autocast:
    """A context that turns automatic mixed precision off (evaluation runs in float32)."""
    return torch.autocast(device_type=device_type, enabled=False)


# -- data -------------------------------------------------------------------------------------------
class ShardedBatches:
    """Process ``rank``'s share of every global minibatch of ``batch_size * world_size`` rows.

    The global batches are those of ``Batches(x, batch_size * world_size, ...)`` with the same
    generator (same order, same dynamic binarization); each is cut into ``world_size`` near-equal
    contiguous pieces with ``torch.tensor_split`` and piece ``rank`` is yielded. A final global
    batch with fewer rows than processes is skipped (every process must take every step). With
    ``world_size=1`` this is exactly :class:`~pyro_vae.data.Batches` (yielding ``x_batch`` only).
    """

    def __init__(
        self,
        x: torch.Tensor,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        shuffle: bool = True,
        dynamic_binarization: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size
        self.batches = Batches(x, batch_size * world_size, shuffle=shuffle, dynamic_binarization=dynamic_binarization,
                               generator=generator, device=device)
        if self.batches.num_data < world_size:
            raise DataError(f"{self.batches.num_data} training rows cannot be shared by {world_size} processes")

    @property
    def num_data(self) -> int:
        """N, the size of the whole training set (what every process passes as ``num_data``)."""
        return self.batches.num_data

    def __len__(self) -> int:
        n, g = self.batches.num_data, self.batches.batch_size
        last = n - (len(self.batches) - 1) * g
        return len(self.batches) - (1 if last < self.world_size else 0)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _, xb in self.batches:
            if xb.shape[0] < self.world_size:
                continue
            yield torch.tensor_split(xb, self.world_size)[self.rank]


class ShardedData(L.LightningDataModule):
    """A Lightning data module serving :class:`ShardedBatches` of an in-memory ``(N, D)`` tensor.

    The process's rank, the number of processes and the device come from the trainer. The data
    order and binarization come from :attr:`generator` (seeded with ``seed`` in :meth:`setup`,
    i.e. in each process: generators do not survive a spawn); checkpoint its state to resume the
    data stream exactly.
    """

    def __init__(self, train: torch.Tensor, batch_size: int, seed: int = 0, dynamic_binarization: bool = False) -> None:
        super().__init__()
        self.train = train
        self.batch_size = batch_size
        self.seed = seed
        self.dynamic_binarization = dynamic_binarization
        self.generator: torch.Generator | None = None
        self._batches: ShardedBatches | None = None

    def setup(self, stage: str) -> None:  # noqa: D102
        trainer = self.trainer
        self.generator = torch.Generator().manual_seed(self.seed)
        self._batches = ShardedBatches(
            self.train, self.batch_size, trainer.global_rank, trainer.world_size, shuffle=True,
            dynamic_binarization=self.dynamic_binarization, generator=self.generator,
            device=trainer.strategy.root_device,
        )

    def train_dataloader(self) -> ShardedBatches:  # noqa: D102
        assert self._batches is not None, "ShardedData.setup has not run"
        return self._batches


# -- the module -----------------------------------------------------------------------------------
class VAELightningModule(L.LightningModule):
    """Any pyro_vae model/guide pair and objective as a ``LightningModule``.

    ``training_step`` evaluates ``objective(model, guide)`` — Pyro's ``ELBOModule``, i.e. the
    objective's ``differentiable_loss`` — on the process's minibatch with ``num_data`` the size of
    the whole training set, so under DDP each process's bound is scaled by N/B and the averaged
    gradient is the gradient on the combined batch (module docstring). Parameters must live in
    ``nn.Module`` s (a :class:`~pyro_vae.VAE`, or ``PyroModule`` s with
    ``pyro.settings.set(module_local_params=True)``): DDP synchronizes module parameters only.

    Per epoch the module reduces the training metrics over all processes and appends one row to
    :attr:`history` — the same keys as :func:`~pyro_vae.fit`: ``train_loss``, ``train_elbo``,
    ``reconstruction``, ``kl``, ``grad_norm``, ``lr``, ``seconds``, ``items_per_s`` and, with
    ``val``, ``val_elbo`` (evaluated in float32 even under mixed precision, sharded over the
    processes). It also steps the learning-rate schedule and stops early after ``patience``
    epochs without validation gain. :func:`fit_distributed` adds run directories and resuming.

    Works with your own ``Trainer`` and data: :class:`ShardedData`, or a ``DataLoader`` (with
    Lightning's ``DistributedSampler``) whose batches are tensors ``x`` or tuples whose first item
    is ``x``; pass ``num_data=len(dataset)``, the size of the whole training set.

    Example:
        >>> import lightning as L, pyro_vae as pv
        >>> from pyro_vae.train.lightning import ShardedData, VAELightningModule
        >>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)),
        ...              pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
        >>> x = torch.randn(64, 4)
        >>> module = VAELightningModule(vae, pv.objectives.IWAE(num_particles=4), num_data=64, epochs=2)
        >>> trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
        ...                     enable_checkpointing=False, enable_model_summary=False)
        >>> trainer.fit(module, datamodule=ShardedData(x, batch_size=16))
        >>> len(module.history.epochs)
        2
    """

    #: report the mean gradient norm per epoch even without clipping (as ``fit(log_grad_norm=)``)
    log_grad_norm: bool = False

    def __init__(
        self,
        model: VAE | Callable,
        objective: pyro.infer.ELBO | None = None,
        *,
        guide: Callable | None = None,
        num_data: int,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str | None = None,
        epochs: int = 1,
        grad_clip: float | None = None,
        val: torch.Tensor | None = None,
        patience: int | None = None,
        restore_best: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(model, VAE):
            model_fn, guide_fn = model.model, model.guide
        else:
            if guide is None:
                raise TypeError("VAELightningModule(model, ...) with a model function needs guide=; or pass a pyro_vae.VAE")
            model_fn, guide_fn = model, guide
        owners: list[nn.Module] = []
        for fn in (model_fn, guide_fn):
            owner = getattr(fn, "__self__", fn)
            if isinstance(owner, nn.Module) and all(owner is not o for o in owners):
                owners.append(owner)
        self.programs = nn.ModuleList(owners)  # registers every parameter with Lightning and DDP
        self._is_vae = isinstance(model, VAE)
        objective = objective if objective is not None else ELBO()
        if not hasattr(objective, "differentiable_loss"):
            raise TypeError(f"{type(objective).__name__} has no differentiable_loss; use a pyro_vae objective")
        self.objective = objective
        self.elbo = objective(model_fn, guide_fn)  # pyro.infer.ELBOModule: forward = differentiable_loss
        self.model_fn, self.guide_fn = model_fn, guide_fn
        self.num_data = int(num_data)
        self.pass_num_data = _accepts_num_data(model_fn) and _accepts_num_data(guide_fn)
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.lr_schedule, self.epochs, self.grad_clip = lr_schedule, epochs, grad_clip
        self.val, self.patience, self.restore_best = val, patience, restore_best
        self.history = History()
        self.epoch_offset = 0  # epochs completed before this fit (resuming)
        self.epochs_since_best = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.improved = False
        self.check_finite = True
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self._sums = torch.zeros(4, dtype=torch.float64)  # Σ loss·b, Σ rec·b, Σ kl·b, Σ b
        self._grad_norm_sum = 0.0
        self._steps = 0
        self._t0 = 0.0
        self._warnings: Any = None

    @property
    def vae(self) -> VAE | None:
        """The :class:`~pyro_vae.VAE` trained, if one was given (its ``state_dict`` is what checkpoints hold)."""
        return self.programs[0] if self._is_vae else None  # type: ignore[return-value]

    # -- set-up in each process ----------------------------------------------------------------
    def setup(self, stage: str) -> None:  # noqa: D102
        # quiet Lightning's known internal noise for this fit only (spawned processes start with the
        # interpreter's filters, so this is done here, in each process, rather than around trainer.fit)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        _ignore_known_lightning_warnings()

    def teardown(self, stage: str) -> None:  # noqa: D102
        if self._warnings is not None:
            self._warnings.__exit__(None, None, None)
            self._warnings = None

    # -- parameters and optimizer -------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.Tensor]:
        """The parameters in :func:`~pyro_vae.train.collect_parameters` order (optimizer states match ``fit``'s)."""
        return [p for p in self.programs.parameters() if p.requires_grad]

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        params = self.trainable_parameters()
        if not params:
            raise ValueError("the model and guide have no trainable parameters in nn.Modules")
        self.optimizer = make_optimizer(self.optimizer_name, params, self.lr, self.weight_decay)
        self.scheduler = make_scheduler(self.lr_schedule, self.optimizer, self.epochs)
        return self.optimizer  # the schedule is stepped per epoch by this module, as in fit

    # -- one step -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The objective's loss on a minibatch ``x`` (scaled to ``num_data``)."""
        kw = {"num_data": self.num_data} if self.pass_num_data else {}
        return self.elbo(x, **kw)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:  # noqa: D102
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        loss = self(x)
        b = x.shape[0]
        t = getattr(self.objective, "last_terms", None)
        nan = torch.tensor(math.nan, dtype=torch.float64)
        rec = t.reconstruction.detach().double().cpu() if t is not None else nan
        kl = t.kl.detach().double().cpu() if t is not None else nan
        step = torch.stack([loss.detach().double().cpu() / self.num_data, rec, kl, torch.tensor(1.0, dtype=torch.float64)])
        self._sums += step * b
        if batch_idx % 10 == 0:  # the running epoch mean in the progress bar (self.log costs ~1 ms a call)
            self.log("loss", float(self._sums[0] / self._sums[3]), prog_bar=True, on_step=True, on_epoch=False,
                     batch_size=b)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:  # noqa: D102
        # gradients are already averaged over the processes (and unscaled under 16-mixed)
        max_norm = self.grad_clip if self.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), max_norm))
        if self.check_finite and not math.isfinite(grad_norm):
            # the same on every process (gradients are synchronized), so every process stops together
            raise FloatingPointError(
                f"training gradient became {grad_norm}; lower the learning rate (--lr), enable gradient clipping "
                "(--grad-clip 10), or check the data for extreme values. The last checkpoint is intact."
            )
        if math.isfinite(grad_norm):  # (under 16-mixed a non-finite step is skipped by the loss scaler)
            self._grad_norm_sum += grad_norm
            self._steps += 1

    # -- one epoch ----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:  # noqa: D102
        self._sums.zero_()
        self._grad_norm_sum, self._steps = 0.0, 0
        self._t0 = time.perf_counter()

    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size == 1:
            return t
        return self.trainer.strategy.reduce(t.to(self.device), reduce_op="sum").to("cpu", torch.float64)

    @torch.no_grad()
    def validation_elbo(self, val: torch.Tensor) -> float:
        """The ELBO per datapoint on ``val``, in float32, shared over the processes."""
        world, rank = self.trainer.world_size if self._trainer is not None else 1, self.global_rank
        shard = torch.tensor_split(val, world)[rank] if world > 1 else val
        total = torch.zeros(2, dtype=torch.float64)
        if shard.shape[0] > 0:
            with full_precision(self.device.type):
                bound = evaluate_bound(self.model_fn, self.guide_fn, shard.to(self.device), pass_num_data=self.pass_num_data)
            total += torch.tensor([bound * shard.shape[0], float(shard.shape[0])], dtype=torch.float64)
        if self._trainer is not None:
            total = self._reduce_sum(total)
        return float(total[0] / total[1])

    def on_train_epoch_end(self) -> None:  # noqa: D102
        seconds = time.perf_counter() - self._t0
        sums = self._reduce_sum(self._sums.clone())
        seen = float(sums[3])
        steps = max(self._steps, 1)
        row: dict[str, float] = {
            "epoch": self.epoch_offset + self.current_epoch + 1,
            "train_loss": float(sums[0]) / seen,
            "train_elbo": -float(sums[0]) / seen,
            "reconstruction": float(sums[1]) / seen,
            "kl": float(sums[2]) / seen,
            # like fit: reported when clipping or asked for (log_grad_norm), else nan
            "grad_norm": self._grad_norm_sum / steps if (self.grad_clip is not None or self.log_grad_norm) else math.nan,
            "lr": self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else math.nan,
            "seconds": seconds,
            "items_per_s": seen / seconds if seconds > 0 else math.nan,
        }
        history = self.history
        if not history.kl_sites and getattr(self.objective, "kl_sites", None):
            history.kl_sites = dict(self.objective.kl_sites)
        self.improved = False
        if self.val is not None:
            was_training = self.training
            self.eval()
            row["val_elbo"] = self.validation_elbo(self.val)
            self.train(was_training)
            if row["val_elbo"] > history.best_val:
                history.best_val, history.best_epoch, self.improved = row["val_elbo"], int(row["epoch"]), True
                self.epochs_since_best = 0
                if self.vae is not None and self.restore_best:
                    self.best_state = {k: v.detach().clone() for k, v in self.vae.state_dict().items()}
            else:
                self.epochs_since_best += 1
        if self.scheduler is not None:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(row.get("val_elbo", row["train_elbo"]))
            else:
                self.scheduler.step()
        history.epochs.append(row)
        stop = self.patience is not None and self.epochs_since_best >= self.patience
        history.stopped_early = stop
        if stop:
            self.trainer.should_stop = True
        bar = {"val_elbo": row.get("val_elbo", math.nan), "items_s": row["items_per_s"]}
        for k, v in bar.items():
            self.log(k, float(v), prog_bar=True, on_step=False, on_epoch=True, sync_dist=self.trainer.world_size > 1)

    def on_train_end(self) -> None:  # noqa: D102
        if self.history.stopped_early and self.restore_best and self.vae is not None and self.best_state is not None:
            self.vae.load_state_dict(self.best_state)

    # -- what travels back from spawned processes with the weights ----------------------------
    def get_extra_state(self) -> dict[str, Any]:  # noqa: D102
        h = self.history
        return {"history": [dict(r) for r in h.epochs], "best_epoch": h.best_epoch, "best_val": h.best_val,
                "stopped_early": h.stopped_early, "kl_sites": dict(h.kl_sites)}

    def set_extra_state(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.history = History(
            epochs=[dict(r) for r in state["history"]], best_epoch=state["best_epoch"],
            best_val=float(state["best_val"]), stopped_early=bool(state["stopped_early"]),
            kl_sites=dict(state["kl_sites"]),
        )


# -- run bookkeeping ------------------------------------------------------------------------------
class _RunCallback(L.Callback):
    """Seeds each process, resumes, and writes the run directory exactly as ``fit`` does (rank 0)."""

    def __init__(
        self,
        *,
        seed: int,
        first: torch.Tensor,
        state: dict[str, Any] | None,
        run_dir: Path | None,
        config: dict[str, Any] | None,
        tensorboard: bool,
        callbacks: Iterable[Callable[[int, dict[str, float]], None]],
    ) -> None:
        self.seed, self.first, self.state = seed, first, state
        self.run_dir, self.config, self.tensorboard = run_dir, config, tensorboard
        self.callbacks = list(callbacks)
        self.writer: Any = None

    def setup(self, trainer: L.Trainer, pl_module: VAELightningModule, stage: str) -> None:  # noqa: D102
        # what fit does before training: seed, then trace the program once to find its parameters
        # (which draws random numbers: rank 0 of a fresh run thus draws what fit draws)
        pyro.set_rng_seed(self.seed + trainer.global_rank)
        kw = {"num_data": pl_module.num_data} if pl_module.pass_num_data else {}
        collect_parameters(pl_module.model_fn, pl_module.guide_fn, (self.first,), kw)

    def on_fit_start(self, trainer: L.Trainer, pl_module: VAELightningModule) -> None:  # noqa: D102
        state = self.state
        rank, world = trainer.global_rank, trainer.world_size
        if state is not None:
            assert pl_module.optimizer is not None
            pl_module.optimizer.load_state_dict(state["optimizer"])
            if pl_module.scheduler is not None and state.get("scheduler") is not None:
                pl_module.scheduler.load_state_dict(state["scheduler"])
            start = int(state["epoch"])
            ranks = state["rng"].get("torch_ranks")
            if ranks is not None and len(ranks) == world:
                torch.set_rng_state(ranks[rank])
            elif rank == 0:
                torch.set_rng_state(state["rng"]["torch"])
            else:
                torch.manual_seed(rank_seed(self.seed, rank, start))
            trainer.datamodule.generator.set_state(state["rng"]["data"])
            h = pl_module.history
            h.epochs = [dict(r) for r in state["history"]]
            h.best_epoch = state.get("best_epoch")
            h.best_val = float(state.get("best_val", -math.inf))
            h.kl_sites = dict(state.get("kl_sites", {}))
            pl_module.epochs_since_best = int(state.get("epochs_since_best", 0))
            pl_module.epoch_offset = start
            warmup = find_warmup(pl_module.objective)
            if warmup is not None and "objective_step" in state:
                warmup.set_step(int(state["objective_step"]))
        if trainer.is_global_zero and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.writer = _tensorboard(self.run_dir, self.tensorboard)

    def after_epoch(self, trainer: L.Trainer, pl_module: VAELightningModule) -> None:
        """Checkpoint, metrics, TensorBoard and user callbacks for the row the module just appended."""
        h = pl_module.history
        row = h.epochs[-1]
        epoch = int(row["epoch"])
        if self.run_dir is not None:
            rng_states = self._gather_rng_states(trainer, pl_module)
            if trainer.is_global_zero:
                vae = pl_module.vae
                ckpt = {
                    "epoch": epoch,
                    "model": vae.state_dict() if vae is not None else {},
                    "optimizer": pl_module.optimizer.state_dict(),
                    "scheduler": pl_module.scheduler.state_dict() if pl_module.scheduler is not None else None,
                    "rng": {"torch": torch.get_rng_state(), "data": trainer.datamodule.generator.get_state(),
                            "torch_ranks": rng_states},
                    "history": h.epochs,
                    "best_epoch": h.best_epoch,
                    "best_val": h.best_val,
                    "epochs_since_best": pl_module.epochs_since_best,
                    "stopped_early": h.stopped_early,
                    "kl_sites": h.kl_sites,
                    "config": self.config or {},
                }
                warmup = find_warmup(pl_module.objective)
                if warmup is not None:
                    ckpt["objective_step"] = int(warmup.step)
                if pl_module.improved and vae is not None:
                    save_checkpoint(self.run_dir / BEST, {"epoch": epoch, "model": vae.state_dict(), "config": self.config or {}})
                save_checkpoint(self.run_dir / CHECKPOINT, ckpt)
                _write_metrics(self.run_dir, h.epochs)
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch":
                    self.writer.add_scalar(k, v, epoch)
        for cb in self.callbacks:
            cb(epoch, row)

    @staticmethod
    def _gather_rng_states(trainer: L.Trainer, pl_module: VAELightningModule) -> list[torch.Tensor]:
        mine = torch.get_rng_state()
        if trainer.world_size == 1:
            return [mine]
        mine = mine.to(pl_module.device)  # NCCL gathers device tensors
        gathered = [torch.empty_like(mine) for _ in range(trainer.world_size)]
        torch.distributed.all_gather(gathered, mine)
        return [g.cpu() for g in gathered]

    def on_train_end(self, trainer: L.Trainer, pl_module: VAELightningModule) -> None:  # noqa: D102
        # early stopping restores the best weights; when they are not in memory (the best epoch came
        # before a resume) they come from best.pt, as in fit (the module's own hook runs after this one)
        h, vae = pl_module.history, pl_module.vae
        if (h.stopped_early and pl_module.restore_best and vae is not None and pl_module.best_state is None
                and self.run_dir is not None and (self.run_dir / BEST).exists()):
            pl_module.best_state = load_checkpoint(self.run_dir / BEST, map_location=pl_module.device)["model"]

    def teardown(self, trainer: L.Trainer, pl_module: VAELightningModule, stage: str) -> None:  # noqa: D102
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _FitModule(VAELightningModule):
    """The module :func:`fit_distributed` trains: hands each epoch's row to the run callback.

    (A callback's ``on_train_epoch_end`` runs before the module's, which computes the row.)
    """

    def on_train_epoch_end(self) -> None:  # noqa: D102
        super().on_train_epoch_end()
        for cb in self.trainer.callbacks:
            if isinstance(cb, _RunCallback):
                cb.after_epoch(self.trainer, self)


def _process_group_exists() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextlib.contextmanager
def _known_lightning_warnings() -> Iterator[None]:
    """Silence the warnings Lightning raises about our own, deliberate choices (and nothing else)."""
    with warnings.catch_warnings():
        _ignore_known_lightning_warnings()
        yield


def _ignore_known_lightning_warnings() -> None:
    # Lightning 2.6 on torch >= 2.9 uses a deprecated pytree spelling internally
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


def _check_precision(precision: str, accelerator: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if precision == "16-mixed" and not gpu:
        raise ValueError("precision='16-mixed' (float16 AMP) needs a CUDA GPU; on a CPU use precision='bf16-mixed'")
    if precision == "bf16-mixed" and gpu and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bfloat16; use precision='16-mixed'")
    return "32-true" if precision == "32" else precision


def fit_distributed(
    model: VAE | Callable,
    objective: pyro.infer.ELBO | None = None,
    train: torch.Tensor | None = None,
    val: torch.Tensor | None = None,
    *,
    guide: Callable | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    lr_schedule: str | None = None,
    grad_clip: float | None = None,
    patience: int | None = None,
    restore_best: bool = True,
    dynamic_binarization: bool = False,
    seed: int = 0,
    accelerator: str = "auto",
    devices: int = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str = "32",
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    tensorboard: bool = True,
    log_grad_norm: bool = False,
    callbacks: Iterable[Callable[[int, dict[str, float]], None]] = (),
    trainer_options: dict[str, Any] | None = None,
) -> History:
    """:func:`~pyro_vae.fit` on Lightning: one process, several devices, several nodes.

    Takes :func:`~pyro_vae.fit`'s arguments (``device`` aside) and writes the same run directory:
    ``checkpoint.pt`` (the same dictionary; rank 0 writes it), ``best.pt``, ``metrics.csv`` (the
    same columns) and TensorBoard logs. A checkpoint from ``fit`` resumes here and the reverse.

    Args:
        batch_size: rows per process and step; the effective batch is
            ``batch_size * devices * num_nodes`` (to reproduce a one-process run with batch 128 on
            4 devices, pass 32).
        accelerator: ``"auto"``, ``"cpu"``, ``"gpu"`` (``"cuda"``), ``"mps"``.
        devices: processes (devices) per node.
        strategy: ``"auto"``, ``"ddp"`` (scripts, ``torchrun``, SLURM), ``"ddp_spawn"`` /
            ``"ddp_fork"`` / ``"ddp_notebook"`` (interactive sessions and tests), or
            ``"ddp_find_unused_parameters_true"``.
        num_nodes: machines; launch one process per device with ``torchrun`` or ``srun``.
        precision: ``"32"``, ``"bf16-mixed"`` or ``"16-mixed"`` (CUDA only). Mixed precision
            applies to training steps; the validation ELBO is computed in float32.
        callbacks: ``f(epoch, metrics)``, called in every process after each epoch (with a spawn
            strategy they must be picklable: module-level functions, not lambdas).
        trainer_options: more ``lightning.Trainer`` arguments (plugins, callbacks, profiler, ...);
            they override the ones set here.

    What a resumed run guarantees: weights, optimizer moments, schedule, epoch count, history,
    best/early-stopping state, KL warm-up step and the data generator continue from the
    checkpoint, whichever mode wrote it. The data stream continues exactly when the global batch
    (``batch_size`` × processes) is the same; each process's z-noise generator continues exactly
    when the number of processes is the same (rank 0 continues ``fit``'s). Across modes the
    trajectory is a statistically equivalent one, not the same bits: the z-noise differs.

    Returns:
        :class:`~pyro_vae.train.History` (in every process; with a spawn strategy, in the caller).
    """
    # ---- validate everything before anything is trained or written ---------------------------
    for name, v in (("devices", devices), ("num_nodes", num_nodes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {list(ACCELERATORS)}, got {accelerator!r}")
    precision = _check_precision(precision, accelerator)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"accelerator={accelerator!r} requested but CUDA is not available; use accelerator='cpu'")
    vae = check_fit_inputs("fit_distributed", model, guide, train, val, epochs=epochs, batch_size=batch_size, lr=lr,
                           grad_clip=grad_clip, patience=patience, dynamic_binarization=dynamic_binarization)
    run_path, ckpt_path, state = open_run(run_dir, resume, overwrite)
    num_data = int(train.shape[0])
    processes = devices * num_nodes
    if num_data < processes:
        raise DataError(f"{num_data} training rows cannot be shared by {processes} processes")

    module_kw = dict(
        guide=guide, num_data=num_data, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
        lr_schedule=lr_schedule, epochs=epochs, grad_clip=grad_clip, patience=patience, restore_best=restore_best,
    )
    first = train[: min(batch_size, num_data)]
    if dynamic_binarization:
        first = (first > 0.5).to(first.dtype)
    if val is not None and dynamic_binarization:  # binarized once, as fit does
        val = torch.bernoulli(val.cpu(), generator=torch.Generator().manual_seed(seed + 1))
    run = _RunCallback(seed=seed, first=first, state=state, run_dir=run_path, config=config,
                       tensorboard=tensorboard, callbacks=callbacks)
    module = _FitModule(model, objective, val=val, **module_kw)
    module.log_grad_norm = log_grad_norm
    if not module.pass_num_data:
        warnings.warn(
            "model/guide do not take a num_data keyword, so minibatch bounds are not scaled to the data set; "
            "declare `pyro.plate('data', size=num_data, subsample=...)` and accept num_data",
            UserWarning,
            stacklevel=2,
        )
    with torch.random.fork_rng():  # find every trainable tensor, without touching the caller's generator
        kw = {"num_data": num_data} if module.pass_num_data else {}
        traced = collect_parameters(module.model_fn, module.guide_fn, (first,), kw)
    in_modules = {id(p) for p in module.trainable_parameters()}
    outside = [p for p in traced if id(p) not in in_modules]
    if outside or not traced:
        raise ValueError(
            f"{len(outside)} trainable tensor(s) of the model/guide live outside nn.Modules (Pyro's global param "
            "store), which DDP cannot synchronize. Keep parameters in modules: a pyro_vae.VAE, or PyroModules with "
            "pyro.settings.set(module_local_params=True)" if outside else "the model and guide have no trainable parameters"
        )
    start_epoch = 0
    if state is not None:
        # check the checkpoint against this model before any process starts
        try:
            if vae is not None:
                vae.load_state_dict(state["model"])
            with torch.random.fork_rng():
                probe_opt = make_optimizer(optimizer, module.trainable_parameters(), lr, weight_decay)
                probe_opt.load_state_dict(state["optimizer"])
                probe_sched = make_scheduler(lr_schedule, probe_opt, epochs)
                if probe_sched is not None and state.get("scheduler") is not None:
                    probe_sched.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"{ckpt_path} does not match this model/optimizer ({str(e).splitlines()[0][:200]}); resume with the "
                "config the run was started with (its run_dir/config.toml)"
            ) from e
        start_epoch = epochs if state.get("stopped_early") else int(state["epoch"])

    if start_epoch >= epochs:  # nothing left to train: report the stored run, as fit does
        assert state is not None
        history = History(
            epochs=[dict(r) for r in state["history"]], best_epoch=state.get("best_epoch"),
            best_val=float(state.get("best_val", -math.inf)), stopped_early=bool(state.get("stopped_early")),
            kl_sites=dict(state.get("kl_sites", {})),
        )
        if history.stopped_early and restore_best and vae is not None and run_path is not None and (run_path / BEST).exists():
            vae.load_state_dict(load_checkpoint(run_path / BEST)["model"])
    else:
        data = ShardedData(train, batch_size, seed=seed, dynamic_binarization=dynamic_binarization)
        steps = math.ceil(num_data / (batch_size * processes))
        options: dict[str, Any] = dict(
            accelerator="gpu" if accelerator == "cuda" else accelerator, devices=devices, strategy=strategy,
            num_nodes=num_nodes, precision=precision, max_epochs=epochs - start_epoch, logger=False,
            enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
            num_sanity_val_steps=0, log_every_n_steps=max(1, min(50, steps)), use_distributed_sampler=False,
            callbacks=[run], default_root_dir=str(run_path) if run_path is not None else None,
        )
        extra = dict(trainer_options or {})
        options["callbacks"] = [*extra.pop("callbacks", []), run]
        options.update(extra)
        module.check_finite = precision != "16-mixed"  # under fp16 AMP an overflow only skips the step
        if vae is not None:
            vae.train()
        had_group = _process_group_exists()
        with _known_lightning_warnings():
            trainer = L.Trainer(**options)
            trainer.fit(module, datamodule=data)
        if not had_group and _process_group_exists():
            # the group this run created ends with it: a process that exits with a live gloo/NCCL group can
            # abort ("terminate called without an active exception") while the others still evaluate
            torch.distributed.destroy_process_group()
        history = module.history
    if vae is not None:
        vae.eval()
    return history


__all__ = [
    "VAELightningModule",
    "ShardedData",
    "ShardedBatches",
    "fit_distributed",
    "rank_seed",
    "process_rank",
    "full_precision",
    "PRECISIONS",
    "STRATEGIES",
    "ACCELERATORS",
]
