"""Training: a functional step and a thin ``fit`` loop around it.

``train_step`` does one optimizer update of any objective on one minibatch and returns a
:class:`StepInfo`; ``fit`` only loops over it, validates, checkpoints and logs.
"""

from __future__ import annotations

import csv
import inspect
import io
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import pyro
import pyro.poutine as poutine
import torch
from torch import nn
from tqdm import tqdm  # plain tqdm: tqdm.auto warns in notebooks without ipywidgets

from .._typing import DeviceLike
from ..data import Batches, DataError, validate_array
from ..objectives import ELBO, find_warmup
from ..vae import VAE
from .checkpoint import CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.csv"


class StepInfo(NamedTuple):
    """What one training step measured (floats, per datapoint unless noted)."""

    loss: float  # the objective's loss divided by the data set size (negative bound per datapoint)
    reconstruction: float  # E_q log p(x|z) per datapoint (nan if the objective does not report it)
    kl: float  # KL(q || p) per datapoint (nan if not reported)
    grad_norm: float  # total gradient 2-norm before clipping


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


def _accepts_num_data(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "num_data" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def collect_parameters(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """Every trainable tensor of a model/guide pair: module parameters and Pyro ``param`` sites."""
    params: dict[int, torch.Tensor] = {}
    for fn in (model, guide):
        owner = getattr(fn, "__self__", fn)
        if isinstance(owner, nn.Module):
            for p in owner.parameters():
                if p.requires_grad:
                    params[id(p)] = p
    with poutine.block(), poutine.trace(param_only=True) as capture:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        poutine.replay(model, trace=guide_trace)(*args, **kwargs)
    for site in capture.trace.nodes.values():
        value = site["value"]
        unconstrained = getattr(value, "unconstrained", None)
        p = unconstrained() if callable(unconstrained) else value
        if isinstance(p, torch.Tensor) and p.requires_grad:
            params[id(p)] = p
    return list(params.values())


def train_step(
    loss_fn: Callable[..., torch.Tensor],
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    args: tuple,
    kwargs: dict,
    num_data: int,
    grad_clip: float | None = None,
    terms: Callable[[], Any] | None = None,
    grad_norm: bool = False,
) -> StepInfo:
    """One update: ``loss = loss_fn(*args, **kwargs)``, backward, optional clipping, optimizer step.

    The total gradient norm (``StepInfo.grad_norm``) is computed when clipping or when
    ``grad_norm=True``; otherwise it is ``nan`` (a norm per parameter and a host sync every
    step cost 3–7% of a small model's step: ``docs/benchmarks.md``).
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(*args, **kwargs)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"training loss became {float(loss.detach())}; lower the learning rate (--lr), enable gradient clipping "
            "(--grad-clip 10), or check the data for extreme values. The last checkpoint is intact."
        )
    loss.backward()
    norm = math.nan
    if grad_clip is not None or grad_norm:
        max_norm = grad_clip if grad_clip is not None else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    optimizer.step()
    t = terms() if terms is not None else None
    rec = float(t.reconstruction) if t is not None else math.nan
    kl = float(t.kl) if t is not None else math.nan
    return StepInfo(float(loss.detach()) / num_data, rec, kl, norm)


@torch.no_grad()
def evaluate_bound(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    objective: pyro.infer.ELBO | None = None,
    batch_size: int = 500,
    pass_num_data: bool = True,
) -> float:
    """The objective's bound per datapoint on ``x`` (default: the ELBO with one particle)."""
    objective = objective if objective is not None else ELBO()
    total = 0.0
    for lo in range(0, x.shape[0], batch_size):
        xb = x[lo : lo + batch_size]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the MC-KL notice was given in training
            if pass_num_data:
                total += -float(objective.loss(model, guide, xb, num_data=None))
            else:
                total += -float(objective.loss(model, guide, xb))
    return total / x.shape[0]


def make_optimizer(name: str, params: Sequence[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adam', 'adamw' or 'sgd'")


def make_scheduler(name: str | None, optimizer: torch.optim.Optimizer, epochs: int):
    if name in (None, "none"):
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.3)
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
    raise ValueError(f"unknown lr_schedule {name!r}; choose 'none', 'cosine', 'step' or 'plateau'")


def _write_metrics(run_dir: Path, rows: list[dict[str, float]]) -> None:
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


def _tensorboard(run_dir: Path | None, enabled: bool):
    if run_dir is None or not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: CSV only
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def check_fit_inputs(
    where: str,
    model: Any,
    guide: Callable | None,
    train: torch.Tensor | None,
    val: torch.Tensor | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    grad_clip: float | None,
    patience: int | None,
    dynamic_binarization: bool,
) -> VAE | None:
    """The checks ``fit`` and ``fit_distributed`` run before anything is trained or written.

    Returns the :class:`~pyro_vae.VAE` when ``model`` is one, else ``None``.
    """
    if train is None:
        raise DataError(f"{where} needs training data: pass train=tensor of shape (N, D)")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 or None, got {patience}")
    if patience is not None and val is None:
        raise ValueError("early stopping (patience) needs validation data: pass val=")
    vae = model if isinstance(model, VAE) else None
    if vae is None and guide is None:
        raise TypeError(f"{where}(model, ...) with a model function needs guide=; or pass a pyro_vae.VAE")
    x_dim = vae.x_dim if vae is not None else None
    validate_array(train, name="training data", x_dim=x_dim)
    if val is not None:
        validate_array(val, name="validation data", x_dim=x_dim)
    if dynamic_binarization and bool(((train < 0) | (train > 1)).any()):
        raise DataError("dynamic binarization needs intensities in [0, 1]; scale the data (pixel_scale='unit')")
    if vae is not None:
        # dynamic binarization samples binary pixels from intensities: check the sampled support
        vae.decoder.check_data((train > 0.5).float() if dynamic_binarization else train, "training data")
        if val is not None:
            vae.decoder.check_data((val > 0.5).float() if dynamic_binarization else val, "validation data")
    return vae


def open_run(
    run_dir: str | Path | None, resume: bool, overwrite: bool
) -> tuple[Path | None, Path | None, dict[str, Any] | None]:
    """``(run_path, checkpoint_path, state to resume or None)``; refuses to overwrite a run unasked."""
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


def fit(
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
    device: DeviceLike = "cpu",
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    tensorboard: bool = True,
    log_grad_norm: bool = False,
    callbacks: Iterable[Callable[[int, dict[str, float]], None]] = (),
) -> History:
    """Train a model/guide pair by maximizing ``objective`` on minibatches of ``train``.

    Args:
        model: a :class:`~pyro_vae.VAE`, or a Pyro model callable (then pass ``guide``). Any pair
            called as ``model(x_batch, num_data=N)`` with a ``"data"`` plate works; a pair
            without a ``num_data`` keyword trains on unscaled minibatch bounds (a warning says so).
        objective: any :class:`pyro.infer.ELBO` with ``differentiable_loss``; default
            :class:`pyro_vae.objectives.ELBO` (closed-form KL where registered; which sites fell
            back to Monte Carlo is in ``History.kl_sites``).
        train, val: tensors ``(N, D)``; validation runs every epoch (the ELBO per datapoint).
        epochs, batch_size, optimizer (``adam``/``adamw``/``sgd``), lr, weight_decay: as usual.
        lr_schedule: ``None``/``"cosine"``/``"step"``/``"plateau"`` (stepped once per epoch).
        grad_clip: clip the total gradient norm to this value.
        patience: stop when the validation ELBO has not improved for this many epochs; with
            ``restore_best`` the best weights are restored at the end.
        dynamic_binarization: resample binary pixels x ~ Bernoulli(intensity) every minibatch
            (validation data are binarized once, with a fixed generator).
        seed: seeds Pyro/torch and the data order; the same seed gives the same numbers.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        run_dir: where ``checkpoint.pt`` (every epoch, written atomically), ``best.pt``,
            ``metrics.csv`` and TensorBoard logs (when installed) go. ``None``: nothing is written.
        resume: continue exactly from ``run_dir/checkpoint.pt`` (weights, optimizer, schedule,
            RNG and data-order state): the final numbers equal those of an uninterrupted run.
        overwrite: allow starting a new run in a ``run_dir`` that already holds one.
        config: a plain dict stored in the checkpoint (the CLI stores its resolved config).
        log_grad_norm: record the mean total gradient norm per epoch (``grad_norm``; always
            recorded when ``grad_clip`` is set). Off by default: it costs a few % per step.
        callbacks: ``f(epoch, metrics)`` called after each epoch.

    Returns:
        :class:`History` of per-epoch metrics (``train_loss``, ``train_elbo``, ``val_elbo``,
        ``reconstruction``, ``kl``, ``grad_norm``, ``lr``, ``items_per_s``, ``seconds``).

    Example:
        >>> import pyro_vae as pv
        >>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)),
        ...              pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
        >>> h = pv.fit(vae, train=torch.randn(64, 4), epochs=2, progress=False)
        >>> len(h.epochs)
        2
    """
    # ---- validate everything before anything is trained or written ---------------------------
    vae = check_fit_inputs("fit", model, guide, train, val, epochs=epochs, batch_size=batch_size, lr=lr,
                           grad_clip=grad_clip, patience=patience, dynamic_binarization=dynamic_binarization)
    model_fn, guide_fn = (vae.model, vae.guide) if vae is not None else (model, guide)
    run_path, ckpt_path, state = open_run(run_dir, resume, overwrite)
    objective = objective if objective is not None else ELBO()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but CUDA is not available; use device='cpu'")

    # ---- set up --------------------------------------------------------------------------------
    pyro.set_rng_seed(seed)
    if vae is not None:
        vae.to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    batches = Batches(train, batch_size, shuffle=True, dynamic_binarization=dynamic_binarization, generator=gen, device=device)
    num_data = batches.num_data
    if val is not None:
        val = val.to(device)
        if dynamic_binarization:
            val = torch.bernoulli(val.cpu(), generator=torch.Generator().manual_seed(seed + 1)).to(device)
    pass_num_data = _accepts_num_data(model_fn) and _accepts_num_data(guide_fn)
    if not pass_num_data:
        warnings.warn(
            "model/guide do not take a num_data keyword, so minibatch bounds are not scaled to the data set; "
            "declare `pyro.plate('data', size=num_data, subsample=...)` and accept num_data",
            UserWarning,
            stacklevel=2,
        )
    first = train[: min(batch_size, num_data)].to(device)
    if dynamic_binarization:
        first = (first > 0.5).to(first.dtype)
    kw = {"num_data": num_data} if pass_num_data else {}
    params = collect_parameters(model_fn, guide_fn, (first,), kw)
    if not params:
        raise ValueError("the model and guide have no trainable parameters")
    opt = make_optimizer(optimizer, params, lr, weight_decay)
    sched = make_scheduler(lr_schedule, opt, epochs)
    if hasattr(objective, "differentiable_loss"):
        loss_fn: Callable[..., torch.Tensor] = lambda *a, **k: objective.differentiable_loss(model_fn, guide_fn, *a, **k)  # noqa: E731
    else:
        raise TypeError(f"{type(objective).__name__} has no differentiable_loss; use a pyro_vae objective")
    terms = (lambda: objective.last_terms) if hasattr(objective, "last_terms") else None

    history = History()
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch = 0
    epochs_since_best = 0
    if state is not None:
        try:
            if vae is not None:
                vae.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if sched is not None and state.get("scheduler") is not None:
                sched.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"{ckpt_path} does not match this model/optimizer ({str(e).splitlines()[0][:200]}); resume with the "
                "config the run was started with (its run_dir/config.toml)"
            ) from e
        torch.set_rng_state(state["rng"]["torch"])
        gen.set_state(state["rng"]["data"])
        history.epochs = [dict(r) for r in state["history"]]
        history.best_epoch = state.get("best_epoch")
        history.best_val = float(state.get("best_val", -math.inf))
        history.kl_sites = dict(state.get("kl_sites", {}))
        epochs_since_best = int(state.get("epochs_since_best", 0))
        warmup = find_warmup(objective)
        if warmup is not None and "objective_step" in state:
            warmup.set_step(int(state["objective_step"]))
        start_epoch = int(state["epoch"])
        if state.get("stopped_early"):
            history.stopped_early = True
            start_epoch = epochs

    writer = _tensorboard(run_path, tensorboard)
    if run_path is not None:
        run_path.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = len(batches)
    bar = tqdm(
        total=(epochs - start_epoch) * steps_per_epoch,
        desc="training",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    kw_step = {"num_data": num_data} if pass_num_data else {}
    try:
        for epoch in range(start_epoch, epochs):
            if vae is not None:
                vae.train()
            t0 = time.perf_counter()
            sums = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0, "grad_norm": 0.0}
            seen = 0
            for _, xb in batches:
                info = train_step(loss_fn, params, opt, (xb,), kw_step, num_data, grad_clip, terms, log_grad_norm)
                b = xb.shape[0]
                seen += b
                for k in sums:
                    sums[k] += getattr(info, k) * (b if k != "grad_norm" else 1)
                bar.update()
            seconds = time.perf_counter() - t0
            row: dict[str, float] = {
                "epoch": epoch + 1,
                "train_loss": sums["loss"] / seen,
                "train_elbo": -sums["loss"] / seen,
                "reconstruction": sums["reconstruction"] / seen,
                "kl": sums["kl"] / seen,
                "grad_norm": sums["grad_norm"] / steps_per_epoch,
                "lr": opt.param_groups[0]["lr"],
                "seconds": seconds,
                "items_per_s": seen / seconds if seconds > 0 else math.nan,
            }
            if not history.kl_sites and getattr(objective, "kl_sites", None):
                history.kl_sites = dict(objective.kl_sites)
            improved = False
            if val is not None:
                if vae is not None:
                    vae.eval()
                row["val_elbo"] = evaluate_bound(model_fn, guide_fn, val, pass_num_data=pass_num_data)
                if row["val_elbo"] > history.best_val:
                    history.best_val, history.best_epoch, improved = row["val_elbo"], epoch + 1, True
                    epochs_since_best = 0
                    if vae is not None and restore_best:
                        best_state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
                else:
                    epochs_since_best += 1
            if sched is not None:
                if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    sched.step(row.get("val_elbo", row["train_elbo"]))
                else:
                    sched.step()
            history.epochs.append(row)
            stop = patience is not None and epochs_since_best >= patience
            history.stopped_early = stop
            bar.set_postfix(
                epoch=f"{epoch + 1}/{epochs}",
                loss=f"{row['train_loss']:.2f}",
                val_elbo=f"{row.get('val_elbo', math.nan):.2f}",
                items_s=f"{row['items_per_s']:.0f}",
            )
            if run_path is not None:
                ckpt = {
                    "epoch": epoch + 1,
                    "model": vae.state_dict() if vae is not None else {},
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "rng": {"torch": torch.get_rng_state(), "data": gen.get_state()},
                    "history": history.epochs,
                    "best_epoch": history.best_epoch,
                    "best_val": history.best_val,
                    "epochs_since_best": epochs_since_best,
                    "stopped_early": stop,
                    "kl_sites": history.kl_sites,
                    "config": config or {},
                }
                warmup = find_warmup(objective)
                if warmup is not None:
                    ckpt["objective_step"] = int(warmup.step)
                if improved and vae is not None:
                    save_checkpoint(run_path / BEST, {"epoch": epoch + 1, "model": vae.state_dict(), "config": config or {}})
                save_checkpoint(ckpt_path, ckpt)  # type: ignore[arg-type]
                _write_metrics(run_path, history.epochs)
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
            for cb in callbacks:
                cb(epoch + 1, row)
            if stop:
                break
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if history.stopped_early and restore_best and vae is not None:
        if best_state is None and run_path is not None and (run_path / BEST).exists():
            best_state = load_checkpoint(run_path / BEST, map_location=device)["model"]
        if best_state is not None:
            vae.load_state_dict(best_state)
    if vae is not None:
        vae.eval()
    return history


__all__ = ["fit", "train_step", "check_fit_inputs", "open_run", "evaluate_bound", "collect_parameters", "make_optimizer", "make_scheduler", "StepInfo", "History"]
