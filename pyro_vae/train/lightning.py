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
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

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
from ..objectives import ELBO
from ..vae import VAE
from ..program import data_args
from .fit import (
    StepInfo,
    _on,
    check_fit_inputs,
    collect_parameters,
    evaluate_bound,
    fixed_data,
    gradient_norm,
    make_optimizer,
    make_scheduler,
    non_finite,
    scales_to_data,
    validation_objective,
)
from .state import (VAL, EpochMeter, History, RunState, clean_temp_files, open_run, rank_seed, restore_rng, restore_training,
                    rng_state, run_lock)

#: precisions offered: full, and automatic mixed precision (bf16 on CPUs and recent GPUs, fp16 on GPUs)
PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed")
#: strategies offered: data parallel ones (each process holds all parameters, as checkpoints expect)
STRATEGIES = SCALING_STRATEGIES
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


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

    The bookkeeping is :func:`~pyro_vae.fit`'s own (:class:`~pyro_vae.train.state.RunState`,
    :attr:`run`): per epoch the module reduces the training metrics over all processes and
    appends one row to :attr:`history` — ``train_loss``, ``train_elbo``, ``reconstruction``,
    ``kl``, ``grad_norm`` (when clipping or ``log_grad_norm``), ``lr``, ``seconds``,
    ``items_per_s`` and, with ``val``, ``val_elbo`` (the ELBO, or ``val_objective``; evaluated in
    float32 even under mixed precision, sharded over the processes). It also steps the
    learning-rate schedule and stops early after ``patience`` epochs without validation gain.
    :func:`fit_distributed` adds run directories and resuming.

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
        log_grad_norm: bool = False,
        val_objective: pyro.infer.ELBO | None = None,
        val_batch_size: int | None = None,
        val_args: Sequence = (),
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
        self.pass_num_data = scales_to_data(model_fn, guide_fn, stacklevel=4)
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.lr_schedule, self.epochs, self.grad_clip = lr_schedule, epochs, grad_clip
        #: report the mean gradient norm per epoch even without clipping (as ``fit(log_grad_norm=)``)
        self.log_grad_norm = log_grad_norm
        # the bound validation reports: val_objective, else a Pyro ELBO itself, else the ELBO (as fit)
        self.val, self.val_batch_size = val, val_batch_size or 500
        #: the program's arguments after x for ``val`` (per-datapoint ones: ``len(val)`` rows, sliced with it)
        self.val_extra = data_args(val.shape[0], tuple(val_args), {}) if val is not None else None
        self.val_objective = validation_objective(objective, val_objective)
        #: history, early stopping and (under :func:`fit_distributed`) the run directory
        self.run = RunState(objective, patience=patience, restore_best=restore_best)
        self.meter = EpochMeter()
        self.check_finite = True
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self._warnings: Any = None

    @property
    def vae(self) -> VAE | None:
        """The :class:`~pyro_vae.VAE` trained, if one was given (its ``state_dict`` is what checkpoints hold)."""
        return self.programs[0] if self._is_vae else None  # type: ignore[return-value]

    @property
    def history(self) -> History:
        """The run's :class:`~pyro_vae.train.History` (``self.run.history``)."""
        return self.run.history

    # -- set-up in each process ----------------------------------------------------------------
    def setup(self, stage: str) -> None:  # noqa: D102
        # quiet Lightning's known internal noise for this fit only (spawned processes start with the
        # interpreter's filters, so this is done here, in each process, rather than around trainer.fit)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        _ignore_known_lightning_warnings()

    def teardown(self, stage: str) -> None:  # noqa: D102
        self.run.close()
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
        return self.optimizer  # the schedule is stepped per epoch by the run state, as in fit

    # -- one step -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        """The objective's loss on a minibatch ``x`` (scaled to ``num_data``); ``args`` are the
        program's per-datapoint arguments after x for the same rows (a conditional VAE's labels)."""
        kw = {"num_data": self.num_data} if self.pass_num_data else {}
        return self.elbo(x, *args, **kw)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One step on ``x`` or on ``(x, *per_datapoint_args)`` (a ``TensorDataset(x, ys)``
        batch: every element after x goes to the program with the same rows)."""
        x, args = (batch[0], tuple(batch[1:])) if isinstance(batch, (tuple, list)) else (batch, ())
        loss = self(x, *args)
        value = float(loss.detach())
        if self.check_finite and not math.isfinite(value):  # (under 16-mixed the loss scaler skips the step)
            raise non_finite("loss", value)
        t = getattr(self.objective, "last_terms", None)
        rec, kl = (float(t.reconstruction), float(t.kl)) if t is not None else (math.nan, math.nan)
        # the gradient norm is counted in on_before_optimizer_step, once gradients are synchronized
        # a program without a num_data keyword trains on the minibatch bound: per datapoint is / B, not / N
        per = self.num_data if self.pass_num_data else x.shape[0]
        self.meter.add(StepInfo(value / per, rec, kl, math.nan), x.shape[0])
        if batch_idx % 10 == 0:  # the running epoch mean in the progress bar (self.log costs ~1 ms a call)
            self.log("loss", self.meter.mean_loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=x.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:  # noqa: D102
        # gradients are already averaged over the processes (and unscaled under 16-mixed)
        if self.grad_clip is None and not self.log_grad_norm:
            return  # no norm: it costs a few % per step (gradient_norm)
        norm = gradient_norm(self.trainable_parameters(), self.grad_clip, self.log_grad_norm)
        if self.check_finite and not math.isfinite(norm):
            # the same on every process (gradients are synchronized), so every process stops together
            raise non_finite("gradient", norm)
        if math.isfinite(norm):  # (under 16-mixed a non-finite step is skipped by the loss scaler)
            self.meter.add_grad_norm(norm)

    # -- one epoch ----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:  # noqa: D102
        self.meter.start()

    def _reduce_sum(self, sums: list[float]) -> list[float]:
        if self.trainer.world_size == 1:
            return sums
        t = torch.tensor(sums, dtype=torch.float64, device=self.device)
        return self.trainer.strategy.reduce(t, reduce_op="sum").cpu().tolist()

    @torch.no_grad()
    def validation_elbo(self, val: torch.Tensor) -> float:
        """The validation bound per datapoint on ``val``, in float32, shared over the processes."""
        world, rank = self.trainer.world_size if self._trainer is not None else 1, self.global_rank
        rows = torch.tensor_split(torch.arange(val.shape[0]), world)[rank] if world > 1 else None
        shard = val[rows] if rows is not None else val
        extra = self.val_extra if val is self.val and self.val_extra is not None else data_args(val.shape[0], (), {})
        extra = extra.rebased(rows) if rows is not None else extra
        total = [0.0, 0.0]
        if shard.shape[0] > 0:
            with full_precision(self.device.type):
                bound = evaluate_bound(self.model_fn, self.guide_fn, shard.to(self.device), objective=self.val_objective,
                                       batch_size=self.val_batch_size, pass_num_data=self.pass_num_data,
                                       extra=_on(extra, self.device))
            total = [bound * shard.shape[0], float(shard.shape[0])]
        if self._trainer is not None:
            total = self._reduce_sum(total)
        return total[0] / total[1]

    def on_train_epoch_end(self) -> None:  # noqa: D102
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else math.nan
        row = self.meter.row(self.run.start_epoch + self.current_epoch + 1, lr, reduce=self._reduce_sum)
        if self.val is not None:
            was_training = self.training
            self.eval()
            row[VAL] = self.validation_elbo(self.val)
            self.train(was_training)
        if self.run.end_epoch(row, self.vae, self.scheduler):
            self.trainer.should_stop = True
        if self.run.run_dir is not None:  # (fit_distributed) every process's generator, then rank 0 writes
            ranks = self._gather_rng_states()
            if self.trainer.is_global_zero:
                self.run.write(self.vae, self.optimizer, self.scheduler, rng_state(self.trainer.datamodule.generator, ranks))
        self.run.publish(row)
        bar = {"val_elbo": row.get(VAL, math.nan), "items_s": row["items_per_s"]}
        for k, v in bar.items():
            self.log(k, float(v), prog_bar=True, on_step=False, on_epoch=True, sync_dist=self.trainer.world_size > 1)

    def _gather_rng_states(self) -> list[torch.Tensor]:
        mine = torch.get_rng_state()
        if self.trainer.world_size == 1:
            return [mine]
        mine = mine.to(self.device)  # NCCL gathers device tensors
        gathered = [torch.empty_like(mine) for _ in range(self.trainer.world_size)]
        torch.distributed.all_gather(gathered, mine)
        return [g.cpu() for g in gathered]

    def on_train_end(self) -> None:  # noqa: D102
        self.run.finish(self.vae, self.device)

    # -- what travels back from spawned processes with the weights ----------------------------
    def get_extra_state(self) -> dict[str, Any]:  # noqa: D102
        h = self.history
        return {"history": [dict(r) for r in h.epochs], "best_epoch": h.best_epoch, "best_val": h.best_val,
                "stopped_early": h.stopped_early, "kl_sites": dict(h.kl_sites)}

    def set_extra_state(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.run.history = History(
            epochs=[dict(r) for r in state["history"]], best_epoch=state["best_epoch"],
            best_val=float(state["best_val"]), stopped_early=bool(state["stopped_early"]),
            kl_sites=dict(state["kl_sites"]),
        )


class _RunCallback(L.Callback):
    """What ``fit`` does before its first step, in each process: seed, find the parameters, resume."""

    def __init__(self, *, seed: int, first: torch.Tensor, state: dict[str, Any] | None, tensorboard: bool) -> None:
        self.seed, self.first, self.state, self.tensorboard = seed, first, state, tensorboard

    def setup(self, trainer: L.Trainer, pl_module: VAELightningModule, stage: str) -> None:  # noqa: D102
        # tracing the program once draws random numbers: rank 0 of a fresh run thus draws what fit draws
        pyro.set_rng_seed(self.seed + trainer.global_rank)
        kw = {"num_data": pl_module.num_data} if pl_module.pass_num_data else {}
        collect_parameters(pl_module.model_fn, pl_module.guide_fn, (self.first,), kw)

    def on_fit_start(self, trainer: L.Trainer, pl_module: VAELightningModule) -> None:  # noqa: D102
        if self.state is not None:  # (the weights were loaded, and the checkpoint checked, before launching)
            restore_training(self.state, None, None, pl_module.optimizer, pl_module.scheduler)
            restore_rng(self.state, trainer.datamodule.generator, seed=self.seed, rank=trainer.global_rank,
                        world=trainer.world_size)
            pl_module.run.resume(self.state, pl_module.epochs)
        if trainer.is_global_zero:
            pl_module.run.open(self.tensorboard)


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
    val_objective: pyro.infer.ELBO | None = None,
    val_batch_size: int | None = None,
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
        val_objective: the validation bound, as in :func:`~pyro_vae.fit`.
        val_batch_size: the validation minibatch size, as in :func:`~pyro_vae.fit`.

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
                           grad_clip=grad_clip, patience=patience, dynamic_binarization=dynamic_binarization,
                           val_batch_size=val_batch_size)
    if resume and overwrite:
        open_run(run_dir, resume, overwrite)  # refuses the contradiction before anything is read or written
    # rank 0 (the process that writes) holds the run directory's lock for the whole run and removes the temp
    # files of an interrupted write; processes the launcher forks inherit it, and the other ranks never write
    writer = run_dir is not None and process_rank(devices) == 0
    with run_lock(run_dir) if writer else contextlib.nullcontext():
        if writer:
            clean_temp_files(run_dir)
        run_path, ckpt_path, state = open_run(run_dir, resume, overwrite)
        num_data = int(train.shape[0])
        processes = devices * num_nodes
        if num_data < processes:
            raise DataError(f"{num_data} training rows cannot be shared by {processes} processes")

        first, val = fixed_data(train, val, batch_size, dynamic_binarization, seed)
        module = VAELightningModule(
            model, objective, guide=guide, num_data=num_data, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
            lr_schedule=lr_schedule, epochs=epochs, grad_clip=grad_clip, val=val, patience=patience,
            restore_best=restore_best, log_grad_norm=log_grad_norm, val_objective=val_objective,
            val_batch_size=val_batch_size,
        )
        run = module.run
        run.run_dir, run.config, run.callbacks = run_path, config or {}, list(callbacks)
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
            # load the weights and check the checkpoint against this model before any process starts
            with torch.random.fork_rng():
                probe_opt = make_optimizer(optimizer, module.trainable_parameters(), lr, weight_decay)
                restore_training(state, ckpt_path, vae, probe_opt, make_scheduler(lr_schedule, probe_opt, epochs))
            start_epoch = epochs if state.get("stopped_early") else int(state["epoch"])

        if start_epoch >= epochs:  # nothing left to train: report the stored run, as fit does
            assert state is not None
            run.resume(state, epochs)
            run.finish(vae)
        else:
            data = ShardedData(train, batch_size, seed=seed, dynamic_binarization=dynamic_binarization)
            prepare = _RunCallback(seed=seed, first=first, state=state, tensorboard=tensorboard)
            steps = math.ceil(num_data / (batch_size * processes))
            options: dict[str, Any] = dict(
                accelerator="gpu" if accelerator == "cuda" else accelerator, devices=devices, strategy=strategy,
                num_nodes=num_nodes, precision=precision, max_epochs=epochs - start_epoch, logger=False,
                enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
                num_sanity_val_steps=0, log_every_n_steps=max(1, min(50, steps)), use_distributed_sampler=False,
                default_root_dir=str(run_path) if run_path is not None else None,
            )
            extra = dict(trainer_options or {})
            options["callbacks"] = [*extra.pop("callbacks", []), prepare]
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
        if vae is not None:
            vae.eval()
        return module.history


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
