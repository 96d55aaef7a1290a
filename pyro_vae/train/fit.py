"""Training: a functional step and a thin ``fit`` loop around it.

``train_step`` does one optimizer update of any objective on one minibatch and returns a
:class:`StepInfo`; ``fit`` only loops over it. What the loop keeps between epochs (history,
early stopping, checkpoints, metrics) is :class:`~pyro_vae.train.state.RunState`, shared with
the Lightning loop (:mod:`pyro_vae.train.lightning`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import pyro
import pyro.poutine as poutine
import torch
from torch import nn
from tqdm import tqdm  # plain tqdm: tqdm.auto warns in notebooks without ipywidgets

from .._typing import DeviceLike
from ..data import Batches, DataError, as_data, model_dtype, validate_array
from ..objectives import ELBO, Objective
from ..program import DataArgs, data_args
from ..vae import VAE
from .state import (BEST, CHECKPOINT, METRICS, VAL, EpochMeter, History, RunState, all_finite, clean_temp_files, open_run,
                    restore_rng, restore_training, rng_state, run_lock)

class StepInfo(NamedTuple):
    """What one training step measured (floats, per datapoint unless noted)."""

    loss: float  # the objective's loss divided by the number of datapoints it covers (negative bound per datapoint)
    reconstruction: float  # E_q log p(x|z) per datapoint (nan if the objective does not report it)
    kl: float  # KL(q || p) per datapoint (nan if not reported)
    grad_norm: float  # total gradient 2-norm before clipping (nan unless clipping or asked: gradient_norm)


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


def gradient_norm(params: Sequence[torch.Tensor], grad_clip: float | None = None, wanted: bool = False) -> float:
    """Clip the gradients to total norm ``grad_clip`` and return the norm before clipping.

    Computed only when clipping or ``wanted``: otherwise nothing is done and the result is
    ``nan`` (a norm per parameter and a host sync every step cost 3–7% of a small model's step:
    ``docs/benchmarks.md``). Both training loops, ``fit`` and the Lightning module, call this.
    """
    if grad_clip is None and not wanted:
        return math.nan
    max_norm = grad_clip if grad_clip is not None else math.inf
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def non_finite(what: str, value: float) -> FloatingPointError:
    """The error both loops raise when the training loss or gradient is not finite."""
    return FloatingPointError(
        f"training {what} became {value}; lower the learning rate (--lr), enable gradient clipping "
        "(--grad-clip 10), or check the data for extreme values. The last checkpoint is intact."
    )


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

    ``num_data`` is the number of datapoints the loss covers: the data set size when the program
    scales its minibatch bound to the data set (it takes ``num_data``), else the batch size (the
    loss is then the minibatch bound). ``StepInfo.loss`` is the loss divided by it.

    The total gradient norm (``StepInfo.grad_norm``) is computed when clipping or when
    ``grad_norm=True``; otherwise it is ``nan`` (:func:`gradient_norm`).
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(*args, **kwargs)
    if not torch.isfinite(loss):
        raise non_finite("loss", float(loss.detach()))
    loss.backward()
    norm = gradient_norm(params, grad_clip, grad_norm)
    if (grad_clip is not None or grad_norm) and not math.isfinite(norm):
        raise non_finite("gradient", norm)  # before the step: the weights stay finite
    optimizer.step()
    if not all_finite(params):  # caught at the source: a step that leaves non-finite weights stops here
        raise non_finite("weights", math.nan)
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
    extra: DataArgs | None = None,
) -> float:
    """The objective's bound per datapoint on ``x`` (default: the ELBO with one particle).

    ``extra`` holds the program's arguments after x; its per-datapoint ones are sliced with x."""
    objective = objective if objective is not None else ELBO()
    extra = extra if extra is not None else DataArgs((), {}, frozenset(), frozenset())
    total = 0.0
    for lo in range(0, x.shape[0], batch_size):
        xb = x[lo : lo + batch_size]
        a, k = extra.chunk(lo, lo + xb.shape[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the MC-KL notice was given in training
            if pass_num_data:
                total += -float(objective.loss(model, guide, xb, *a, num_data=None, **k))
            else:
                total += -float(objective.loss(model, guide, xb, *a, **k))
    return total / x.shape[0]


def _on(extra: DataArgs, device: torch.device) -> DataArgs:
    """The per-datapoint tensors moved to ``device`` (the others as they are)."""
    if not (extra.positions or extra.names):
        return extra
    args = tuple(a.to(device) if i in extra.positions and isinstance(a, torch.Tensor) else a
                 for i, a in enumerate(extra.args))
    kwargs = {k: (v.to(device) if k in extra.names and isinstance(v, torch.Tensor) else v)
              for k, v in extra.kwargs.items()}
    return DataArgs(args, kwargs, extra.positions, extra.names)


def program_args(
    train: torch.Tensor, val: torch.Tensor | None, model_args: Sequence, model_kwargs: dict | None,
    val_args: Sequence | None, val_kwargs: dict | None, per_datapoint: Sequence | None,
) -> tuple[DataArgs, DataArgs | None]:
    """The program's arguments after x for training and validation, per-datapoint ones marked
    (tensors with one row per datapoint, or named in ``per_datapoint``), checked before any work:
    a validation argument must be per-datapoint (``len(val)`` rows) exactly where its training
    counterpart is (``len(train)`` rows), and otherwise the same object."""
    model_kwargs = dict(model_kwargs or {})
    if "num_data" in model_kwargs:
        raise ValueError("num_data is passed by fit itself (the size of the training data); remove it from model_kwargs")
    tr = data_args(train.shape[0], tuple(model_args), model_kwargs, per_datapoint)
    if val is None:
        return tr, None
    if val_args is None and val_kwargs is None:
        if tr.positions or tr.names:
            raise ValueError(
                "the training arguments after x include per-datapoint ones "
                f"({_describe_marks(tr)}); pass the validation data's own as val_args= / val_kwargs="
            )
        return tr, DataArgs(tr.args, tr.kwargs, frozenset(), frozenset())
    v_args, v_kwargs = tuple(val_args or ()), dict(val_kwargs or {})
    if len(v_args) != len(tr.args) or set(v_kwargs) != set(tr.kwargs):
        raise ValueError(
            f"val_args/val_kwargs must mirror model_args/model_kwargs (got {len(v_args)} positional and keywords "
            f"{sorted(v_kwargs)} for validation, {len(tr.args)} and {sorted(tr.kwargs)} for training)"
        )
    n = val.shape[0]
    for i, (a, b) in enumerate(zip(tr.args, v_args)):
        _check_mirror(i in tr.positions, b, n, f"val_args[{i}]")
    for key in tr.kwargs:
        _check_mirror(key in tr.names, v_kwargs[key], n, f"val_kwargs[{key!r}]")
    return tr, DataArgs(v_args, v_kwargs, tr.positions, tr.names)


def _describe_marks(d: DataArgs) -> str:
    return ", ".join([f"model_args[{i}]" for i in sorted(d.positions)] + [f"model_kwargs[{k!r}]" for k in sorted(d.names)])


def _check_mirror(per_datapoint: bool, value: Any, n: int, where: str) -> None:
    if not per_datapoint:
        return
    length = value.shape[0] if isinstance(value, torch.Tensor) and value.dim() >= 1 else (
        len(value) if hasattr(value, "__len__") else None)
    if length != n:
        raise ValueError(
            f"{where} has {length} rows but the validation data have {n}; its training counterpart is "
            "per-datapoint, so it needs one row per validation datapoint"
        )


def validation_objective(objective: Any, val_objective: Any = None) -> Any:
    """The objective validation evaluates: ``val_objective`` when given; else the training objective
    itself when it is not a pyro_vae objective (any other :class:`pyro.infer.ELBO`, e.g.
    ``TraceGraph_ELBO``, which may train sampled discrete sites the ELBO refuses) or when it takes
    non-reparameterized sites (VIMCO); else ``None`` (:func:`evaluate_bound`'s default, the ELBO with one particle)."""
    if val_objective is not None:
        return val_objective
    if isinstance(objective, pyro.infer.ELBO) and not isinstance(objective, Objective):
        return objective
    if isinstance(objective, Objective) and not objective.requires_rsample:
        return objective  # a score-function objective (VIMCO) takes the discrete guide sites the ELBO refuses
    return None


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
    val_batch_size: int | None = None,
    weight_decay: float = 0.0,
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
    if not (0 < lr <= torch.finfo(torch.float32).max):
        raise ValueError(f"lr must be a positive finite number (at most the float32 maximum), got {lr}")
    if grad_clip is not None and not (grad_clip > 0 and math.isfinite(grad_clip)):
        raise ValueError(f"grad_clip must be a positive finite number or None, got {grad_clip}")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 or None, got {patience}")
    if patience is not None and val is None:
        raise ValueError("early stopping (patience) needs validation data: pass val=")
    if val_batch_size is not None and (isinstance(val_batch_size, bool) or not isinstance(val_batch_size, int)
                                       or val_batch_size < 1):
        raise ValueError(f"val_batch_size must be an integer >= 1 or None, got {val_batch_size!r}")
    vae = model if isinstance(model, VAE) else None
    if vae is None and guide is None:
        raise TypeError(f"{where}(model, ...) with a model function needs guide=; or pass a pyro_vae.VAE")
    x_dim = vae.x_dim if vae is not None else None
    validate_array(train, name="training data", x_dim=x_dim, any_shape=vae is None)  # a program's own data: (N, ...)
    if val is not None:
        validate_array(val, name="validation data", x_dim=x_dim, any_shape=vae is None)
        if vae is None and tuple(val.shape[1:]) != tuple(train.shape[1:]):
            raise DataError(f"validation data have rows of shape {tuple(val.shape[1:])} but the training data "
                            f"{tuple(train.shape[1:])}; pass validation data shaped like the training data")
    if dynamic_binarization and bool(((train < 0) | (train > 1)).any()):
        raise DataError("dynamic binarization needs intensities in [0, 1]; scale the data (pixel_scale='unit')")
    if vae is not None:
        # dynamic binarization samples binary pixels from intensities: check the sampled support
        vae.decoder.check_data((train > 0.5).float() if dynamic_binarization else train, "training data")
        if val is not None:
            vae.decoder.check_data((val > 0.5).float() if dynamic_binarization else val, "validation data")
    return vae


def scales_to_data(model_fn: Callable, guide_fn: Callable, stacklevel: int = 3) -> bool:
    """Whether model and guide take ``num_data`` (minibatch bounds scaled to the data set); warns if not."""
    if _accepts_num_data(model_fn) and _accepts_num_data(guide_fn):
        return True
    warnings.warn(
        "model/guide do not take a num_data keyword, so minibatch bounds are not scaled to the data set; "
        "declare `pyro.plate('data', size=num_data, subsample=...)` and accept num_data",
        UserWarning,
        stacklevel=stacklevel,
    )
    return False


def fixed_data(
    train: torch.Tensor, val: torch.Tensor | None, batch_size: int, dynamic_binarization: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first minibatch (traced once to find the parameters) and the validation data.

    Under dynamic binarization the first batch is thresholded and the validation data are
    binarized once, with a generator seeded ``seed + 1``: the same in every loop and process.
    """
    first = train[: min(batch_size, train.shape[0])]
    if dynamic_binarization:
        first = (first > 0.5).to(first.dtype)
        if val is not None:
            val = torch.bernoulli(val.cpu(), generator=torch.Generator().manual_seed(seed + 1))
    return first, val


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
    on_step: Callable[[StepInfo, float], None] | None = None,
    val_objective: pyro.infer.ELBO | None = None,
    val_batch_size: int | None = None,
    model_args: Sequence = (),
    model_kwargs: dict[str, Any] | None = None,
    val_args: Sequence | None = None,
    val_kwargs: dict[str, Any] | None = None,
    per_datapoint: Sequence[int | str] | None = None,
) -> History:
    """Train a model/guide pair by maximizing ``objective`` on minibatches of ``train``.

    Args:
        model: a :class:`~pyro_vae.VAE`, or a Pyro model callable (then pass ``guide``). Any pair
            called as ``model(x_batch, num_data=N)`` with a ``"data"`` plate works; a pair
            without a ``num_data`` keyword trains on unscaled minibatch bounds (a warning says so),
            and its per-datapoint History numbers divide by the batch size instead of N.
        objective: any :class:`pyro.infer.ELBO` with ``differentiable_loss``; default
            :class:`pyro_vae.objectives.ELBO` (closed-form KL where registered; which sites fell
            back to Monte Carlo is in ``History.kl_sites``).
        train, val: ``(N, D)`` tensors or numpy arrays of any real dtype (bool, integer or floating),
            converted to the model's parameter dtype (:func:`pyro_vae.data.as_data`); validation runs every epoch (``val_elbo``: the bound per
            datapoint, see ``val_objective``).
        epochs, batch_size, optimizer (``adam``/``adamw``/``sgd``), lr, weight_decay: as usual.
        lr_schedule: ``None``/``"cosine"``/``"step"``/``"plateau"`` (stepped once per epoch).
        grad_clip: clip the total gradient norm to this value.
        patience: stop when the validation bound has not improved for this many epochs; with
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
        callbacks: ``f(epoch, metrics)`` called after each epoch (after its checkpoint is written).
        on_step: ``f(info, seconds)`` called after every optimizer step with its
            :class:`StepInfo` and the wall-clock seconds of :func:`train_step` alone
            (``time.perf_counter`` around the call: no data loading, logging or callbacks).
        val_objective: the bound validation reports as ``val_elbo`` (and early stopping and
            ``best.pt`` follow), e.g. ``IWAE(num_particles=1000)``; default the ELBO with one
            particle, or, when ``objective`` is a Pyro ELBO that is not a pyro_vae objective (e.g.
            ``TraceEnum_ELBO`` on a program with enumerated discrete sites) or a score-function
            objective such as :class:`~pyro_vae.objectives.VIMCO`, that objective itself.
            Evaluated with its ``loss`` on the evaluation-mode model, drawing from torch's global
            generator as training does (so resumed runs reproduce it). Ignored without ``val``.
        val_batch_size: rows per validation call (default 500); lower it for many particles.
        model_args, model_kwargs: the program's arguments after x, ``model(x_batch, *model_args,
            **model_kwargs)`` (a conditional VAE's labels ``ys``). Tensors with one row per training
            datapoint, and those named in ``per_datapoint`` (position in ``model_args`` or keyword),
            are per-datapoint: every minibatch gets their rows with the rows of x (same shuffle).
        val_args, val_kwargs: the same for ``val`` (required when some training argument is
            per-datapoint; each per-datapoint one must have ``len(val)`` rows).
        per_datapoint: more per-datapoint arguments, by position or name (each must have
            ``len(train)`` rows, else ``ValueError`` before training).

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
    dtype = model_dtype(model)
    train = as_data(train, dtype, name="training data") if train is not None else None
    val = as_data(val, dtype, name="validation data") if val is not None else None
    vae = check_fit_inputs("fit", model, guide, train, val, epochs=epochs, batch_size=batch_size, lr=lr,
                           grad_clip=grad_clip, patience=patience, dynamic_binarization=dynamic_binarization,
                           val_batch_size=val_batch_size, weight_decay=weight_decay)
    extra, val_extra = program_args(train, val, model_args, model_kwargs, val_args, val_kwargs, per_datapoint)
    if vae is not None and (extra.args or extra.kwargs):
        raise TypeError("a pyro_vae.VAE's model takes only x (and num_data); model_args/model_kwargs are for your "
                        "own programs (pass model= and guide=)")
    if resume and overwrite:
        open_run(run_dir, resume, overwrite)  # refuses the contradiction before anything is read or written
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but CUDA is not available; use device='cpu'")
    if objective is not None and not hasattr(objective, "differentiable_loss"):
        raise TypeError(f"{type(objective).__name__} has no differentiable_loss; use a pyro_vae objective")
    with run_lock(run_dir) if run_dir is not None else contextlib.nullcontext():
        if run_dir is not None:
            clean_temp_files(run_dir)
        return _fit(vae, model, guide, objective, train, val, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                    lr=lr, weight_decay=weight_decay, lr_schedule=lr_schedule, grad_clip=grad_clip, patience=patience,
                    restore_best=restore_best, dynamic_binarization=dynamic_binarization, seed=seed, device=device,
                    run_dir=run_dir, resume=resume, overwrite=overwrite, config=config, progress=progress,
                    tensorboard=tensorboard, log_grad_norm=log_grad_norm, callbacks=callbacks, on_step=on_step,
                    val_objective=val_objective, val_batch_size=val_batch_size, extra=extra, val_extra=val_extra)


def _fit(vae, model, guide, objective, train, val, *, epochs, batch_size, optimizer, lr, weight_decay, lr_schedule,
         grad_clip, patience, restore_best, dynamic_binarization, seed, device, run_dir, resume, overwrite, config,
         progress, tensorboard, log_grad_norm, callbacks, on_step, val_objective, val_batch_size, extra,
         val_extra) -> History:
    """The body of :func:`fit`, after its checks, under the run directory's lock."""
    model_fn, guide_fn = (vae.model, vae.guide) if vae is not None else (model, guide)
    run_path, ckpt_path, state = open_run(run_dir, resume, overwrite)
    objective = objective if objective is not None else ELBO()
    device = torch.device(device)

    # ---- set up --------------------------------------------------------------------------------
    pyro.set_rng_seed(seed)
    if vae is not None:
        vae.to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    batches = Batches(train, batch_size, shuffle=True, dynamic_binarization=dynamic_binarization, generator=gen, device=device)
    num_data = batches.num_data
    first, val = fixed_data(train, val, batch_size, dynamic_binarization, seed)
    val = val.to(device) if val is not None else None
    pass_num_data = scales_to_data(model_fn, guide_fn)
    kw = {"num_data": num_data} if pass_num_data else {}
    extra, val_extra = _on(extra, device), (_on(val_extra, device) if val_extra is not None else None)
    a1, k1 = extra.chunk(0, first.shape[0])
    params = collect_parameters(model_fn, guide_fn, (first.to(device), *a1), {**kw, **k1})
    if not params:
        raise ValueError("the model and guide have no trainable parameters")
    opt = make_optimizer(optimizer, params, lr, weight_decay)
    sched = make_scheduler(lr_schedule, opt, epochs)
    loss_fn: Callable[..., torch.Tensor] = lambda *a, **k: objective.differentiable_loss(model_fn, guide_fn, *a, **k)  # noqa: E731
    terms = (lambda: objective.last_terms) if hasattr(objective, "last_terms") else None
    val_kw = {"objective": validation_objective(objective, val_objective), "batch_size": val_batch_size or 500,
              "pass_num_data": pass_num_data, "extra": val_extra}

    run = RunState(objective, patience=patience, restore_best=restore_best, run_dir=run_path, config=config,
                   callbacks=callbacks)
    if state is not None:
        restore_training(state, ckpt_path, vae, opt, sched)
        restore_rng(state, gen)
        run.resume(state, epochs)
    run.open(tensorboard)
    bar = tqdm(total=max(0, epochs - run.start_epoch) * len(batches), desc="training", unit="step",
               disable=not progress, dynamic_ncols=True)
    meter = EpochMeter()
    try:
        for epoch in range(run.start_epoch, epochs):
            if vae is not None:
                vae.train()
            meter.start()
            for idx, xb in batches:
                t0 = time.perf_counter()
                # the loss is scaled to the data set only when the program takes num_data; otherwise it
                # is the minibatch bound, and its per-datapoint value divides by the batch size
                scale = num_data if pass_num_data else xb.shape[0]
                a, k = extra.take(idx) if extra.positions or extra.names else (extra.args, extra.kwargs)
                info = train_step(loss_fn, params, opt, (xb, *a), {**kw, **k}, scale, grad_clip, terms, log_grad_norm)
                seconds = time.perf_counter() - t0
                meter.add(info, xb.shape[0])
                bar.update()
                if on_step is not None:
                    on_step(info, seconds)
            row = meter.row(epoch + 1, opt.param_groups[0]["lr"])
            if val is not None:
                if vae is not None:
                    vae.eval()
                row[VAL] = evaluate_bound(model_fn, guide_fn, val, **val_kw)
            stop = run.end_epoch(row, vae, sched)
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{row['train_loss']:.2f}",
                            val_elbo=f"{row.get(VAL, math.nan):.2f}", items_s=f"{row['items_per_s']:.0f}")
            run.write(vae, opt, sched, rng_state(gen))
            run.publish(row)
            if stop:
                break
    finally:
        bar.close()
        run.close()
    run.finish(vae, device)
    if vae is not None:
        vae.eval()
    return run.history


__all__ = ["fit", "program_args", "train_step", "gradient_norm", "check_fit_inputs", "open_run", "evaluate_bound", "collect_parameters",
           "make_optimizer", "make_scheduler", "StepInfo", "History", "CHECKPOINT", "BEST", "METRICS"]
