"""One record per call, two producers: the per-datapoint terms every objective consumes.

Everything that needs per-datapoint quantities of a model/guide pair — the objectives, the
log-likelihood estimator, the diagnostics that need weights — reads one :class:`Particles`
record of ``K`` vectorized particles for a minibatch of ``B`` datapoints:

=====================  =================================================================
``log_lik``            ``(K, B)``: Σ of the observed sites' log-densities in the data plate
``log_prior``          ``(K, B)``: Σ of the model's latent sites' log-densities in the plate
``log_q``              ``(K, B)``: Σ of the guide's latent sites' log-densities in the plate
``latents``            per latent site: q, p, the sample, scales, whether a closed-form
                       KL(q ‖ p) is valid there, and how to reduce a per-site tensor to (K, B)
``stopped_log_q()``    ``(K, B)``: log q with the guide's parameters stopped (STL, DReG)
``global_*``           already-scaled sums of the sites outside the data plate
``data_scale``         N / B from the data plate's subsampling
``row_wise``           may gradient routing rescale ∂/∂z per (particle, datapoint) with a hook?
=====================  =================================================================

Two producers build it and draw the same random numbers in the same order:

* :func:`from_traces` — any Pyro program: the guide is traced under a ``K``-particle plate and
  the model replayed on it (the general path);
* :func:`from_vae` — a plain :class:`~pyro_vae.VAE`'s components called directly, no tracing
  (``q = encoder(x)``, ``z = q.rsample((K,))``, ``decoder(z).log_prob(x)``, ``prior().log_prob(z)``).

Speed lives in the components (:mod:`pyro_vae._kernels`), not here and not in the objectives.

Conventions: the particles sit in an outer plate at ``dim = -(max_plate_nesting + 1)``; the
data plate is the plate named ``"data"`` (:data:`pyro_vae.vae.DATA_PLATE`). A site's
log-density is summed over every other plate it sits in, giving a ``(K, B)`` tensor; a site's
*relative* scale is its scale divided by the data scale (1 unless a handler such as
:func:`~pyro_vae.objectives.scale_latents` or ``poutine.scale`` changed it).

A closed-form KL(q(z_i|·) ‖ p(z_i|pa)) equals the Monte Carlo term log q − log p in
expectation only if p's parents were drawn by the guide *before* z_i. :func:`from_traces` marks
a latent site ``closed_form_ok`` when every latent the model draws before it is also drawn
before it by the guide (hierarchical VAEs with bottom-up guides break this; the ELBO then uses
the Monte Carlo term for that site and says so).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import weakref
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterator

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.util import is_validation_enabled
from pyro.poutine.runtime import am_i_wrapped
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_model_guide_match
from torch import nn
from torch.distributions import Bernoulli, Distribution, Independent, Transform, kl_divergence

from . import _kernels
from .vae import DATA_PLATE

PARTICLE_PLATE = "num_particles_vectorized"


class PlateError(ValueError):
    """A model or guide lacks the data plate, or has a site outside it where one is required."""


# -- site predicates (the one spelling) ----------------------------------------------------------
def is_sample(site: dict) -> bool:
    """A sample site that is not a plate's subsample index."""
    return site["type"] == "sample" and not site_is_subsample(site)


def is_latent(site: dict) -> bool:
    """A sample site that is neither observed nor a plate's subsample index."""
    return is_sample(site) and not site["is_observed"]


def is_observed(site: dict) -> bool:
    """An observed sample site."""
    return is_sample(site) and site["is_observed"]


# -- tracing ------------------------------------------------------------------------------------------
def guess_max_plate_nesting(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
    """Run the pair once (no particles) and return the deepest plate nesting seen.

    The run happens on a forked random stream, so guessing never shifts the caller's draws
    (a resumed run that guesses again reproduces an uninterrupted one exactly).
    """
    with torch.random.fork_rng(devices=[]), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [
        -f.dim
        for tr in (model_trace, guide_trace)
        for site in prune_subsample_sites(tr).nodes.values()
        if site["type"] == "sample"
        for f in site["cond_indep_stack"]
        if f.vectorized
    ]
    return max(dims, default=0)


def vectorize(fn: Callable, num_particles: int, max_plate_nesting: int) -> Callable:
    """``fn`` run inside the outer ``num_particles`` plate at ``dim = -(max_plate_nesting + 1)``."""
    dim = -(max_plate_nesting + 1)

    def wrapped(*a: Any, **k: Any) -> Any:
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=dim):
            return fn(*a, **k)

    return wrapped


@dataclass
class ParticleTraces:
    """Traces of ``K`` vectorized particles and where the particle and data dims are."""

    model_trace: poutine.Trace
    guide_trace: poutine.Trace
    num_particles: int
    max_plate_nesting: int
    batch_size: int
    data_scale: float  # num_data / batch_size, from the data plate's subsampling
    #: whether the program has the data plate (else it is one datapoint: batch_size 1)
    data_plate: bool = True
    #: replays the model (as traced: with or without the particle plate) on a guide trace
    replay_model: Callable[[poutine.Trace], poutine.Trace] | None = field(default=None, repr=False)

    @property
    def num_dims(self) -> int:
        """Number of batch dims every site's log-density is padded to (particles + plates)."""
        return self.max_plate_nesting + 1


def _find_data_frame(trace: poutine.Trace, plate_name: str):
    for site in trace.nodes.values():
        if site["type"] == "sample":
            for f in site["cond_indep_stack"]:
                if f.name == plate_name:
                    return f
    return None


def _inferred_batch_size(traces: tuple[poutine.Trace, ...], plate_name: str, plate_dim: int) -> int:
    """The data plate's size read off the sites' values (a plate declared without a size)."""
    sizes = set()
    for tr in traces:
        for site in tr.nodes.values():
            if is_sample(site) and any(f.name == plate_name for f in site["cond_indep_stack"]):
                v = site["value"]
                shape = tuple(getattr(v, "shape", ()))
                dim = plate_dim - len(site["fn"].event_shape)
                if len(shape) >= -dim and shape[dim] > 1:
                    sizes.add(shape[dim])
    return max(sizes, default=1)


class BroadcastError(ValueError):
    """The program failed under a leading particle dimension (it is not broadcast-safe)."""


def particle_traces(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    max_plate_nesting: int,
    plate_name: str = DATA_PLATE,
    *,
    particle_plate: bool = True,
    require_plate: bool = True,
    check: bool = True,
    guide_trace: poutine.Trace | None = None,
) -> ParticleTraces:
    """Trace the guide with ``num_particles`` vectorized particles and replay the model on it.

    ``particle_plate=False`` (one particle only) runs the program as written, without the outer
    particle plate: its sites then have no particle dim (a ``pyro.param`` declared inside a plate,
    or a program that is not broadcast-safe, needs this). ``require_plate=False`` accepts a program
    without the data plate: the whole program is then one datapoint (``batch_size`` 1), which is
    what an objective needs and what per-datapoint functions must refuse.

    A program that fails under the particle plate (``K > 1``) raises :class:`BroadcastError`
    naming the requirement and the fix, chained to the program's own error.

    ``guide_trace``: replay the model on this trace of the guide (already run the same way, e.g.
    a :func:`slice_particles` block) instead of tracing the guide.
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if not particle_plate and num_particles != 1:
        raise ValueError("particle_plate=False runs one particle; trace K particles one at a time instead")
    if particle_plate:
        run_model, run_guide = vectorize(model, num_particles, max_plate_nesting), vectorize(guide, num_particles, max_plate_nesting)
    else:
        run_model, run_guide = model, guide
    with blame_broadcasting(model, guide, args, kwargs, num_particles if particle_plate else None, max_plate_nesting,
                            "or run particles one at a time: vectorize_particles=False for the objectives"):
        if guide_trace is None:
            guide_trace = poutine.trace(run_guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(run_model, trace=guide_trace)).get_trace(*args, **kwargs)
    frame = _find_data_frame(guide_trace, plate_name) or _find_data_frame(model_trace, plate_name)
    unsized = frame is not None and (frame.size is None or frame.size < 1)
    if check and is_validation_enabled() and not unsized:  # an unsized plate broadcasts the model's sites: no check
        check_model_guide_match(model_trace, guide_trace, max_plate_nesting)
    if frame is None:
        if require_plate:
            raise PlateError(
                f"no sample site sits in a plate named {plate_name!r}; per-datapoint quantities need the "
                f"model and guide to declare their datapoints with `with pyro.plate({plate_name!r}, N):` "
                "(or pass plate_name= naming your data plate)"
            )
        return ParticleTraces(model_trace, guide_trace, num_particles, max_plate_nesting, 1, 1.0, data_plate=False,
                              replay_model=_replayer(run_model, args, kwargs))
    if frame.dim is None:
        raise PlateError(f"the {plate_name!r} plate must be vectorized (give it a dim), not a sequential plate")
    size = frame.size
    if size is None or size < 1:  # `pyro.plate("data")` without a size: the values say how many
        size = _inferred_batch_size((guide_trace, model_trace), plate_name, frame.dim)
        full = size
    else:
        full = frame.full_size if frame.full_size is not None and frame.full_size > 0 else size
    return ParticleTraces(
        model_trace=model_trace,
        guide_trace=guide_trace,
        num_particles=num_particles,
        max_plate_nesting=max_plate_nesting,
        batch_size=int(size),
        data_scale=float(full) / float(size),
        replay_model=_replayer(run_model, args, kwargs),
    )


def _replayer(model: Callable, args: tuple, kwargs: dict) -> Callable[[poutine.Trace], poutine.Trace]:
    def replay(guide_trace: poutine.Trace) -> poutine.Trace:
        with poutine.block():
            return poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)

    return replay


def prior_depends_on(traces: ParticleTraces, name: str, others: list[str]) -> bool:
    """Does the model's distribution of site ``name`` change when the guide's samples of ``others``
    change? Replays the model on a copy of the guide trace with those samples redrawn (on a forked
    random stream) and compares the two log-densities at the same value."""
    if traces.replay_model is None or not others:
        return bool(others)
    gt = traces.guide_trace.copy()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(2**31 - 29)
        for o in others:
            site = gt.nodes[o] = dict(gt.nodes[o])
            site["value"] = site["fn"].sample()
        try:
            mt = traces.replay_model(gt)
        except Exception:  # noqa: BLE001 - a redraw the program cannot take: assume it depends
            return True
    return density_changed(traces.model_trace.nodes[name], mt.nodes[name])


def density_changed(site: dict, other: dict) -> bool:
    """Do two traced copies of one site, from runs with different draws elsewhere, give different
    log-densities at ``site``'s value? A distribution built from the data and parameters alone gives
    the same numbers; one that depends on another site's draw does not."""
    z = site["value"].detach()
    a, b = site["fn"].log_prob(z).detach(), other["fn"].log_prob(z).detach()
    return a.shape != b.shape or not torch.allclose(a, b, rtol=1e-6, atol=1e-6, equal_nan=True)


@contextlib.contextmanager
def blame_broadcasting(model: Callable, guide: Callable, args: tuple, kwargs: dict, num_particles: int | None,
                       max_plate_nesting: int, fix: str) -> Iterator[None]:
    """Re-raise an error of the program run under the ``num_particles`` particle plate as a
    :class:`BroadcastError` naming the requirement and the fix (``fix`` ends the message) — when the
    pair runs as written; a program's own bug, or ``num_particles=None``, is re-raised unchanged."""
    try:
        yield
    except (RuntimeError, IndexError, ValueError, TypeError) as e:
        if num_particles is None or isinstance(e, (PlateError, BroadcastError)) or not runs_as_written(
                model, guide, args, kwargs):
            raise
        raise BroadcastError(
            f"the model/guide failed when run with {num_particles} vectorized particles (an outer "
            f"pyro.plate of size {num_particles} at dim {-(max_plate_nesting + 1)}, so every sample gains a "
            f"leading particle dimension): {type(e).__name__}: {e}. The program is not broadcast-safe (e.g. it "
            "indexes with a boolean mask, reshapes with fixed sizes, or reads z.shape[0] as the batch size). Fix: "
            "write it for any leading batch dims (index with `...`, use `x.shape[-1]`, poutine.mask instead of "
            f"boolean indexing), {fix}"
        ) from e


def runs_as_written(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> bool:
    """Does the pair run as written (no particle plate)? On a forked random stream, hidden."""
    try:
        with torch.random.fork_rng(devices=[]), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the program's own bug: the caller re-raises the original error
        return False
    return True


def reduce_site(
    value: torch.Tensor, site: dict, traces: ParticleTraces, plate_name: str = DATA_PLATE, event_dims: int = 0
) -> tuple[torch.Tensor, bool]:
    """Reduce a tensor with the site's batch shape (a log-density, a KL; plus ``event_dims``
    trailing group dims) to ``(K|1, B|1, *groups)``, summed over every other plate; masks applied.

    Returns the tensor and whether the site sits in the data plate (else the data dim is 1).
    """
    n = traces.num_dims
    nb = value.dim() - event_dims
    if nb > n:
        raise ValueError(
            f"site {site['name']!r} has log_prob shape {tuple(value.shape)} with more batch dims than its plates "
            f"allow (max_plate_nesting={traces.max_plate_nesting}); declare the missing plate or use .to_event()"
        )
    value = value.reshape((1,) * (n - nb) + tuple(value.shape))
    _check_batch_shape(value, site, traces, event_dims)
    mask = site["mask"]
    if mask is not None and mask is not True:
        # poutine.mask accepts a Python bool as well as a bool tensor
        m = torch.as_tensor(mask, device=value.device)
        m = m.reshape(m.shape + (1,) * event_dims) if m.dim() else m
        value = torch.where(m, value, value.new_zeros(()))
    data_dim = None
    for f in site["cond_indep_stack"]:
        if f.name == plate_name:
            data_dim = n + f.dim
    if data_dim is None:  # a global site; in a program without the data plate, the one datapoint
        rest = tuple(range(1, n))
        return (value.sum(dim=rest) if rest else value).reshape(value.shape[0], 1), not traces.data_plate
    others = tuple(d for d in range(1, n) if d != data_dim)
    if others:
        value = value.sum(dim=others)
    return value, True


def _check_batch_shape(value: torch.Tensor, site: dict, traces: ParticleTraces, event_dims: int) -> None:
    """Pyro's log_prob shape rule (``pyro.util.check_site_shape``): a batch dim is the particle dim
    (size 1 or K), a plate's dim (1 or its size), or a dim inside the plates' span; left of the
    outermost plate it must be 1. Else the program has undeclared batch dims: an error naming the site."""
    n = traces.num_dims
    shape = tuple(value.shape[:n])
    sizes = {f.dim: f.size for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE}
    outer = min(sizes, default=0)
    bad = shape[0] not in (1, traces.num_particles)
    for d in range(1, n):
        pd, size = d - n, shape[d]
        if pd in sizes:
            known = sizes[pd] is not None and sizes[pd] > 0  # a plate declared without a size takes any
            bad |= known and size not in (1, sizes[pd])
        elif pd < outer:
            bad |= size != 1
    if bad:
        expected = ["K" if d == 0 else sizes.get(d - n, "1" if d - n < outer else "any") for d in range(n)]
        raise ValueError(
            f"at site {site['name']!r}, invalid log_prob shape {tuple(value.shape[:n])}: with max_plate_nesting="
            f"{traces.max_plate_nesting} and the particle dim (K={traces.num_particles}) the batch dims must be "
            f"{tuple(expected)}. Fix: enclose the batched tensor in a `with pyro.plate(...)` context, or "
            ".to_event(...) the distribution being sampled"
        )


def site_log_prob(site: dict, traces: ParticleTraces, plate_name: str = DATA_PLATE) -> tuple[torch.Tensor, bool]:
    """Unscaled log-density of a site as a ``(K or 1, B or 1)`` tensor, summed over other plates.

    Returns the tensor and whether the site sits in the data plate. Masks are applied; the
    site's scale is not (callers apply it).
    """
    return reduce_site(log_prob(site["fn"], site["value"]), site, traces, plate_name)


def log_prob(fn: Distribution, value: torch.Tensor) -> torch.Tensor:
    """``fn.log_prob(value)``, through a fused kernel of :mod:`pyro_vae._kernels` where one
    computes the same density to float rounding; otherwise ``fn.log_prob`` itself.

    The traced producer scores the user's own distribution objects, which cannot carry our
    kernels. One case dominates a traced VAE: pixels ``Bernoulli(...).to_event(n)`` (torch's and
    Pyro's, with ``log_prob`` not overridden, built from logits or probs): torch's
    ``Bernoulli.log_prob`` broadcasts ``x`` to the logits' shape and runs the
    binary-cross-entropy chain with several full-size temporaries, which on a ``(K, B, 784)``
    decoder output costs more than the decoder's matmuls. It is computed here as
    Σ_d x_d·l_d − softplus(l_d) (:func:`pyro_vae._kernels.bernoulli_log_prob`, one autograd
    node), after the argument check ``Bernoulli.log_prob`` would make. The dispatch reads what
    the ``log_prob`` methods *are*, not the classes: a subclass that overrides either method
    (a mask, a user's own density) keeps its own.
    """
    n, base = 0, fn
    while type(base).log_prob is Independent.log_prob:
        n += base.reinterpreted_batch_ndims
        base = base.base_dist
    if (
        n >= 1
        and type(base).log_prob is Bernoulli.log_prob
        and isinstance(value, torch.Tensor)
        and value.dtype == base.logits.dtype
        and value.dim() >= 1
    ):
        if base._validate_args:
            base._validate_sample(value)
        lp = _kernels.bernoulli_log_prob(base.logits, value)  # summed over the last dim
        return lp.sum(tuple(range(-(n - 1), 0))) if n > 1 else lp
    return fn.log_prob(value)


# -- stopped parameters --------------------------------------------------------------------------
def stop_parameters(
    fn: Distribution, value: torch.Tensor | None = None, site: str = "?", who: str = "this estimator"
) -> Distribution:
    """A copy of distribution ``fn`` with every tensor it holds detached (nested base
    distributions and parameter-free transforms included; transform caches cleared).

    If ``value`` is given and gradients are on, checks that ``log_prob(value.detach())`` no
    longer depends on any parameter; it still does when parameters live in ``nn.Module`` s
    (normalizing flows), which raises ``NotImplementedError``.
    """
    new = _detached(fn)
    if value is not None and torch.is_grad_enabled() and new.log_prob(value.detach()).requires_grad:
        raise NotImplementedError(
            f"{who} needs log q(z) with the guide's parameters stopped, but the distribution of guide site "
            f"{site!r} ({_describe(fn)}) keeps parameters inside nn.Modules (e.g. normalizing-flow transforms) "
            "that detaching its tensors cannot reach. Fix: use gradient='standard' for this guide, or a guide "
            "family whose parameters are tensors (Normal, MultivariateNormal, LowRankMultivariateNormal)"
        )
    return new


def _describe(fn: Any) -> str:
    names = [type(fn).__name__]
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
        names.append(type(fn).__name__)
    return " of ".join(names)


def _detached(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, weakref.ref):  # Transform._inv: recreated lazily for the copy
        return None
    if isinstance(obj, nn.Module):  # parameters we cannot reach: stop_parameters' probe reports it
        return obj
    if isinstance(obj, (Distribution, Transform)):
        new = copy.copy(obj)
        for key, val in vars(obj).items():
            new.__dict__[key] = _detached(val)
        if isinstance(obj, Transform) and "_cached_x_y" in vars(obj):
            new._cached_x_y = (None, None)  # the cached x keeps the parameter path; recompute x = f⁻¹(z)
        return new
    if type(obj) in (list, tuple):
        return type(obj)(_detached(v) for v in obj)
    return obj


# -- row-wise components ---------------------------------------------------------------------------
#: torch layers that act on each row (particle, datapoint) of their input separately
_TORCH_ROW_WISE: tuple[type, ...] = (
    nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.Upsample, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.LayerNorm, nn.GroupNorm, nn.Dropout,
    nn.Softplus, nn.ReLU, nn.Tanh, nn.ELU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Sigmoid, nn.Softsign,
    nn.Hardtanh, nn.Mish, nn.SELU, nn.CELU, nn.PReLU,
)


def _declares_row_wise(m: nn.Module) -> bool:
    """``row_wise = True`` declared by the class that defines ``m.forward`` (or a subclass of it):
    a subclass that overrides ``forward`` must declare it again."""
    if type(m) in _TORCH_ROW_WISE:
        return True
    mro = type(m).__mro__
    fwd = next((c for c in mro if "forward" in vars(c)), None)
    decl = next((c for c in mro if "row_wise" in vars(c)), None)
    return bool(decl is not None and vars(decl)["row_wise"] and fwd is not None and issubclass(decl, fwd))


def rows_independent(module: nn.Module) -> bool:
    """True if ``module`` and every submodule act on each row of their input separately
    (then ∂ out_(k,b) / ∂ in_(k',b') = 0 for (k', b') ≠ (k, b)): torch's row-wise layers, and
    pyro_vae modules whose ``forward`` is declared ``row_wise``."""
    return all(_declares_row_wise(m) for m in module.modules())


# -- the record --------------------------------------------------------------------------------------
@dataclass
class LatentSite:
    """One latent site of a :class:`Particles` record.

    ``q`` is the guide's distribution and ``value`` its sample; ``p`` the model's distribution
    (``None`` for an auxiliary guide site the model lacks) evaluated at ``model_value`` (the same
    tensor, or a view of it on which a routing hook may act). ``q_scale`` / ``p_scale`` are the
    sites' relative scales. ``reduce(t, event_dims)`` turns a tensor with the site's batch shape
    (plus ``event_dims`` trailing group dims) into ``(K|1, B|1, *groups)`` with the guide
    site's mask; ``reduce_p`` does the same with the model site's mask.
    """

    name: str
    q: Distribution
    p: Distribution | None
    value: torch.Tensor
    model_value: torch.Tensor
    in_plate: bool
    q_scale: Any
    p_scale: Any
    closed_form_ok: bool
    reduce: Callable[..., torch.Tensor]
    #: the model site's reduction (its own mask); ``None``: the same as ``reduce``
    reduce_p: Callable[..., torch.Tensor] | None = None
    #: where the draw order alone forbids the closed form: does p really depend on the guide's later
    #: draws? (a replay with those draws changed; ``None``: not needed or not available)
    order_probe: Callable[[], bool] | None = None


@dataclass
class ObservedSite:
    """One observed site: its per-datapoint ``(K|1, B|1)`` log-density and relative scale."""

    name: str
    log_prob: torch.Tensor
    in_plate: bool
    scale: Any


def _scaled(scale: Any, t: torch.Tensor) -> torch.Tensor:
    return t if (isinstance(scale, float) and scale == 1.0) else scale * t


@dataclass
class Particles:
    """The per-call record of ``K`` particles for ``B`` datapoints (see the module docstring).

    ``log_lik``, ``log_prior``, ``log_q`` and ``log_weights`` are computed on first access, so an
    objective pays only for what it reads. :meth:`scale_latents` returns the record with every
    latent site's density multiplied by β (the β-ELBO, KL warm-up).
    """

    num_particles: int
    batch_size: int
    data_scale: float
    latents: list[LatentSite]
    observed: list[ObservedSite]
    #: whether routing may use the per-row gradient hook (a callable is evaluated on first use)
    row_wise_check: bool | Callable[[], bool] = False
    #: the traces it was built from (``None`` for :func:`from_vae`)
    traces: ParticleTraces | None = None
    beta: float = 1.0
    plate_name: str = DATA_PLATE
    #: model sites of summed-out (enumerated) latents, fixed to one value in this record: their
    #: log p enters ``log_prior`` (see :class:`EnumeratedParticles`)
    fixed: list[ObservedSite] = field(default_factory=list)
    _stopped: dict = field(default_factory=dict, repr=False)

    @cached_property
    def row_wise(self) -> bool:
        """May gradient routing rescale ∂/∂z per (particle, datapoint) with a hook on the model's
        copy of the samples? (Only the component producer makes such a copy.)"""
        check = self.row_wise_check
        return bool(check() if callable(check) else check)

    # -- per-datapoint sums ------------------------------------------------------------------------
    def _full(self, t: torch.Tensor | None) -> torch.Tensor:
        K, B = self.num_particles, self.batch_size
        if t is None:  # no such site: zeros on the program's device and dtype
            ref = next((s.log_prob for s in self.observed), None)
            ref = ref if ref is not None else next((s.value for s in self.latents), torch.zeros(()))
            dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
            return ref.new_zeros((K, B), dtype=dtype)
        return t.expand(K, B) if t.dim() == 2 else t.reshape(1, 1).expand(K, B)

    @cached_property
    def log_lik(self) -> torch.Tensor:
        """Σ over observed sites in the data plate of their relative-scaled log-densities, (K, B)."""
        total = None
        for s in self.observed:
            if s.in_plate:
                t = _scaled(s.scale, s.log_prob)
                total = t if total is None else total + t
        return self._full(total)

    def _latent_sum(self, which: str, stopped_who: str | None = None) -> torch.Tensor:
        total = None
        if which == "p":
            for f in self.fixed:
                t = _scaled(self.beta * f.scale, f.log_prob)
                total = t if total is None else total + t
        for s in self.latents:
            if not s.in_plate:
                continue
            if which == "p":
                if s.p is None:
                    continue
                t = _scaled(self.beta * s.p_scale, (s.reduce_p or s.reduce)(s.p.log_prob(s.model_value)))
            else:
                fn = s.q if stopped_who is None else stop_parameters(s.q, s.value, s.name, stopped_who)
                t = _scaled(self.beta * s.q_scale, s.reduce(fn.log_prob(s.value)))
            total = t if total is None else total + t
        return self._full(total)

    @cached_property
    def log_prior(self) -> torch.Tensor:
        """Σ over the model's latent sites in the data plate of log p(z | parents), (K, B)."""
        return self._latent_sum("p")

    @cached_property
    def log_q(self) -> torch.Tensor:
        """Σ over the guide's latent sites in the data plate of log q(z | x, parents), (K, B)."""
        return self._latent_sum("q")

    def stopped_log_q(self, who: str) -> torch.Tensor:
        """log q_φ̄(z), ``(K, B)``: the guide's density with its parameters stopped, differentiable
        along the sample path z only (STL, DReG). ``who`` names the caller in errors."""
        if "value" not in self._stopped:
            self._stopped["value"] = self._latent_sum("q", stopped_who=who)
        return self._stopped["value"]

    def global_sites(self) -> list[str]:
        """Names of the sample sites outside the data plate."""
        return [s.name for s in self.observed if not s.in_plate] + [s.name for s in self.latents if not s.in_plate]

    def require_local(self) -> None:
        """Raise :class:`PlateError` naming the first site outside the data plate, if any."""
        bad = self.global_sites()
        if bad:
            p = self.plate_name
            raise PlateError(
                f"sample site {bad[0]!r} sits outside the {p!r} plate, so its weight is "
                "shared by the whole minibatch and per-datapoint weights are undefined. Fix: move it inside "
                f"`pyro.plate({p!r}, ...)` (a local latent), or use an objective that does not "
                "combine weights per datapoint (pyro_vae.objectives.ELBO or pyro.infer.Trace_ELBO)"
            )

    @property
    def log_weights(self) -> torch.Tensor:
        """log p(x_b, z_kb) − log q(z_kb | x_b), ``(K, B)``; every site must be in the data plate."""
        self.require_local()
        return self.log_lik + self.log_prior - self.log_q

    def global_log_lik(self) -> torch.Tensor:
        """Σ over observed sites outside the data plate of scale · log p, averaged over particles."""
        total = self.log_lik.new_zeros(())
        for s in self.observed:
            if not s.in_plate:
                total = total + (self.data_scale * s.scale * s.log_prob).sum() / self.num_particles
        return total

    # -- the samples -------------------------------------------------------------------------------
    @property
    def samples(self) -> list[torch.Tensor]:
        """The guide's latent samples that carry a gradient (the sample paths)."""
        return [s.value for s in self.latents if s.value.requires_grad]

    @property
    def model_samples(self) -> list[torch.Tensor]:
        """The tensors the model's densities read the samples from (routing hooks go here)."""
        return [s.model_value for s in self.latents if s.value.requires_grad]

    def check_single_level(self, who: str) -> None:
        """Raise if a guide latent's sample depends on another guide latent's sample (a
        hierarchical guide), where stopping q's parameters would cut an upstream sample path."""
        values = [(s.name, s.value) for s in self.latents if s.value.requires_grad]
        if len(values) < 2:
            return
        nodes = {v.grad_fn: name for name, v in values if v.grad_fn is not None}
        for name, v in values:
            if v.grad_fn is None:
                continue
            seen: set = set()
            stack = [n for n, _ in v.grad_fn.next_functions]
            while stack:
                node = stack.pop()
                if node is None or node in seen:
                    continue
                seen.add(node)
                if node in nodes:
                    raise NotImplementedError(
                        f"{who}: guide site {name!r} is drawn from a distribution that depends on the sample of "
                        f"{nodes[node]!r} (a hierarchical guide). This estimator stops q's parameters and routes "
                        "gradients along each sample's own path, which is only exact when every latent's "
                        "distribution depends on the data and parameters alone. Fix: use gradient='standard'"
                    )
                stack.extend(n for n, _ in node.next_functions)

    # -- transformations -----------------------------------------------------------------------------
    def scale_latents(self, beta: float) -> "Particles":
        """The record with every latent site's log-density (model and guide) multiplied by β."""
        return Particles(
            self.num_particles, self.batch_size, self.data_scale, self.latents, self.observed,
            self.row_wise_check, self.traces, self.beta * float(beta), self.plate_name, self.fixed,
        )

    #: a record of one assignment of the enumerated sites has none of its own branches
    enumerated = False


# -- KL of one latent site ----------------------------------------------------------------------------
def _factorized(d: Any) -> tuple[Any, int] | None:
    n = 0
    while isinstance(d, Independent):
        n += d.reinterpreted_batch_ndims
        d = d.base_dist
    if tuple(d.event_shape) != ():
        return None
    return d, n


def latent_kl(site: LatentSite, analytic: bool = True, per_dim: bool = False) -> tuple[torch.Tensor, str]:
    """KL(q ‖ p) of one latent site, unscaled, reduced like its log-density: ``(K|1, B|1)``, or
    ``(K|1, B|1, G)`` per latent dimension with ``per_dim=True`` (then q and p must factorize:
    ``Independent`` of a univariate family; else ``NotImplementedError``).

    The closed form is used when ``analytic``, registered with ``kl_divergence`` and valid at this
    site (``site.closed_form_ok``); otherwise the Monte Carlo estimate log q − log p at the
    particles. Returns the KL and ``"analytic"``, ``"monte carlo"`` or ``"monte carlo (order)"``
    (a closed form exists but p's parents are drawn after the site by the guide).
    """
    q, p, z = site.q, site.p, site.value
    if p is None:
        raise ValueError(f"guide site {site.name!r} has no model counterpart: no KL(q ‖ p) there")
    if per_dim:
        fq, fp = _factorized(q), _factorized(p)
        if fq is None or fp is None or fq[1] != fp[1]:
            raise NotImplementedError(
                f"free bits per latent dimension needs a guide and prior that factorize over the dimensions "
                f"of site {site.name!r} (Independent of a univariate family, e.g. Normal(...).to_event(1)), got "
                f"{type(q).__name__} (guide) and {type(p).__name__} (prior). Fix: groups='site' clamps the "
                "KL of the whole site instead"
            )
        (q, event), (p, _) = fq, fp
    kl, method = None, "monte carlo"
    if analytic:
        try:
            kl = kl_divergence(q, p)
            method = "analytic"
            if not isinstance(kl, torch.Tensor):  # a masked-out pair's registered KL is the number 0
                kl = torch.as_tensor(kl, dtype=z.dtype, device=z.device).expand(q.batch_shape)
        except NotImplementedError:
            kl = None
        if kl is not None and not site.closed_form_ok:
            kl, method = None, "monte carlo (order)"
    if kl is None and site.reduce_p is not None and not per_dim:  # each density with its own site's mask
        return site.reduce(q.log_prob(z)) - site.reduce_p(p.log_prob(site.model_value)), method
    if kl is None:
        kl = q.log_prob(z) - p.log_prob(site.model_value)
    if per_dim:
        kl = kl.reshape(*kl.shape[: kl.dim() - event], -1) if event else kl.unsqueeze(-1)
        return site.reduce(kl, 1), method
    return site.reduce(kl), method


# -- producer 1: any Pyro program ----------------------------------------------------------------------
def _closed_form_ok(name: str, model_order: list[str], guide_order: dict[str, int]) -> bool:
    """Every latent the model draws before ``name`` is drawn before it by the guide too."""
    here = guide_order.get(name)
    if here is None:
        return False
    for other in model_order:
        if other == name:
            return True
        if guide_order.get(other, -1) > here:
            return False
    return True


def _drawn_later(name: str, model_order: list[str], guide_order: dict[str, int]) -> list[str]:
    """The latents the model draws before ``name`` but the guide draws after it."""
    here = guide_order[name]
    out = []
    for other in model_order:
        if other == name:
            break
        if guide_order.get(other, -1) > here:
            out.append(other)
    return out


def from_traces(traces: ParticleTraces, plate_name: str = DATA_PLATE, enumerated: frozenset = frozenset()) -> Particles:
    """The :class:`Particles` record of traced particles (any model/guide pair).

    ``enumerated`` names sites that both programs were conditioned on (one assignment of the
    summed-out discrete latents): the model's log p of them goes to ``fixed``, not ``observed``.
    """
    mt, gt = traces.model_trace, traces.guide_trace
    ds = traces.data_scale
    model_latents = [n for n, s in mt.nodes.items() if is_latent(s)]
    guide_order = {n: i for i, n in enumerate(n for n, s in gt.nodes.items() if is_latent(s))}
    observed, latents, fixed = [], [], []
    for name, msite in mt.nodes.items():
        if not is_sample(msite):
            continue
        if name in enumerated:
            lp, in_plate = site_log_prob(msite, traces, plate_name)
            fixed.append(ObservedSite(name, lp, in_plate, msite["scale"] / ds))
            continue
        if msite["is_observed"]:
            lp, in_plate = site_log_prob(msite, traces, plate_name)
            observed.append(ObservedSite(name, lp, in_plate, msite["scale"] / ds))
            continue
        gsite = gt.nodes.get(name)
        if gsite is None:
            raise ValueError(f"latent site {name!r} of the model has no matching site in the guide")
        ok = _closed_form_ok(name, model_latents, guide_order)
        site = _latent(name, gsite, msite, traces, plate_name, ok)
        if not ok and name in guide_order:
            later = _drawn_later(name, model_latents, guide_order)
            site.order_probe = functools.partial(prior_depends_on, traces, name, later)
        latents.append(site)
    for name, gsite in gt.nodes.items():  # auxiliary guide sites (no model counterpart) enter as −log q
        if is_latent(gsite) and name not in mt.nodes:
            latents.append(_latent(name, gsite, None, traces, plate_name, False))
    return Particles(traces.num_particles, traces.batch_size, ds, latents, observed, row_wise_check=False, traces=traces,
                     plate_name=plate_name, fixed=fixed)


def _latent(name: str, gsite: dict, msite: dict | None, traces: ParticleTraces, plate_name: str, ok: bool) -> LatentSite:
    _, in_plate = reduce_site(torch.zeros(()), gsite, traces, plate_name)

    def reduce(t: torch.Tensor, event_dims: int = 0) -> torch.Tensor:
        return reduce_site(t, gsite, traces, plate_name, event_dims)[0]

    def reduce_p(t: torch.Tensor, event_dims: int = 0) -> torch.Tensor:
        return reduce_site(t, msite, traces, plate_name, event_dims)[0]

    ds = traces.data_scale
    return LatentSite(
        name=name,
        q=gsite["fn"],
        p=None if msite is None else msite["fn"],
        value=gsite["value"],
        model_value=gsite["value"] if msite is None else msite["value"],
        in_plate=in_plate,
        q_scale=gsite["scale"] / ds,
        p_scale=(gsite["scale"] if msite is None else msite["scale"]) / ds,
        closed_form_ok=ok,
        reduce=reduce,
        reduce_p=None if msite is None else reduce_p,
    )


def traced_particles(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, num_particles: int, max_plate_nesting: int,
    plate_name: str = DATA_PLATE, *, vectorized: bool = True, require_plate: bool = True,
) -> "Particles | EnumeratedParticles":
    """The record of ``num_particles`` traced particles of any model/guide pair.

    * ``K = 1`` runs the program as written (no particle plate); ``K > 1`` under one vectorized
      particle plate, or, with ``vectorized=False``, one particle at a time (the records are
      stacked: :func:`stack_particles`), as ``vectorize_particles=False`` does in Pyro.
    * Guide sites marked for enumeration (``infer={"enumerate": ...}``, e.g. by
      :func:`pyro.infer.config_enumerate`) are summed out exactly: the pair is run once per
      assignment of their values and an :class:`EnumeratedParticles` is returned.
    * ``require_plate=False`` accepts a program without the data plate (then one datapoint).
    """
    if num_particles > 1 and not vectorized:
        return stack_particles([
            traced_particles(model, guide, args, kwargs, 1, max_plate_nesting, plate_name, require_plate=require_plate)
            for _ in range(num_particles)
        ])
    plate = num_particles > 1
    traces = particle_traces(model, guide, args, kwargs, num_particles, max_plate_nesting, plate_name,
                             particle_plate=plate, require_plate=require_plate)
    enum = enumerated_sites(traces.guide_trace)
    if not enum:
        return from_traces(traces, plate_name)
    return _enumerate(model, guide, args, kwargs, traces, enum, plate_name, plate, require_plate)


# -- particles run one at a time -----------------------------------------------------------------------
def _embed(t: torch.Tensor, k: int, K: int) -> torch.Tensor:
    """A one-particle ``(1, B|1, ...)`` tensor as row ``k`` of a ``(K, B|1, ...)`` tensor of zeros."""
    if t.dim() == 0:
        t = t.reshape(1, 1)
    rest = tuple(t.shape[1:])
    parts = [t.new_zeros((k,) + rest), t, t.new_zeros((K - k - 1,) + rest)]
    return torch.cat([q for q in parts if q.shape[0]], 0)


def _embedded(fn: Callable | None, k: int, K: int) -> Callable | None:
    if fn is None:
        return None

    def reduce(t: torch.Tensor, event_dims: int = 0) -> torch.Tensor:
        return _embed(fn(t, event_dims), k, K)

    return reduce


def stack_particles(records: list) -> "Particles | EnumeratedParticles":
    """One record of ``K`` particles from ``K`` one-particle records (particles run one at a time).

    Every per-site tensor of record ``k`` becomes row ``k`` of a ``(K, ...)`` tensor that is zero
    elsewhere, so sums over sites are the ``(K, B)`` terms and means over particles are exact.
    """
    K = len(records)
    if any(isinstance(r, EnumeratedParticles) for r in records):
        first = records[0]
        branches = [stack_particles([r.branches[c] for r in records]) for c in range(len(first.branches))]
        log_q = [torch.cat([r.log_q_enum[c].expand(1, r.batch_size) for r in records], 0)
                 for c in range(len(first.branches))]
        return EnumeratedParticles(branches, log_q, first.names)
    if K == 1:
        return records[0]
    first = records[0]
    if len({r.batch_size for r in records}) != 1:
        raise ValueError(f"the particles saw different batch sizes {sorted({r.batch_size for r in records})}")
    latents, observed, fixed = [], [], []
    for k, r in enumerate(records):
        for site in r.latents:
            latents.append(LatentSite(
                site.name, site.q, site.p, site.value, site.model_value, site.in_plate, site.q_scale, site.p_scale,
                site.closed_form_ok, _embedded(site.reduce, k, K), _embedded(site.reduce_p, k, K), site.order_probe))
        for o in r.observed:
            observed.append(ObservedSite(o.name, _embed(o.log_prob, k, K), o.in_plate, o.scale))
        for f in r.fixed:
            fixed.append(ObservedSite(f.name, _embed(f.log_prob, k, K), f.in_plate, f.scale))
    return Particles(K, first.batch_size, first.data_scale, latents, observed, row_wise_check=False, traces=None,
                     beta=first.beta, plate_name=first.plate_name, fixed=fixed)


# -- discrete latents summed out exactly ---------------------------------------------------------------
#: the most assignments of the enumerated sites one call may run
MAX_ASSIGNMENTS = 4096


def enumerated_sites(guide_trace: poutine.Trace) -> list[str]:
    """The guide's latent sites marked for enumeration (``infer={"enumerate": ...}``), in order."""
    return [
        name for name, site in guide_trace.nodes.items()
        if is_latent(site) and (site.get("infer") or {}).get("enumerate") in ("parallel", "sequential")
    ]


def enumerated_assignments(guide_trace: poutine.Trace, names: list[str]) -> list[dict]:
    """Every joint value of the enumerated sites ``names`` as condition data (``[{}]`` for none),
    each value with the site's batch shape; at most :data:`MAX_ASSIGNMENTS` (else ``ValueError``)."""
    if not names:
        return [{}]
    supports = [guide_trace.nodes[n]["fn"].enumerate_support(expand=True) for n in names]
    sizes = [int(sup.shape[0]) for sup in supports]
    if math.prod(sizes) > MAX_ASSIGNMENTS:
        raise ValueError(
            f"the enumerated sites {list(names)} have {math.prod(sizes)} joint values (> {MAX_ASSIGNMENTS}); summing "
            "them exactly would run the program that many times. Fix: enumerate fewer sites, or sample some"
        )
    return [{n: sup[i] for n, sup, i in zip(names, supports, combo)}
            for combo in itertools.product(*(range(c) for c in sizes))]


@dataclass
class EnumeratedParticles:
    """The record of a program whose guide enumerates discrete sites, summed out exactly.

    ``branches[c]`` is the :class:`Particles` record of the program with the enumerated sites
    fixed to their ``c``-th joint assignment y_c (both model and guide conditioned on it; the
    model's log p(y_c | ·) is in the branch's ``log_prior``), and ``log_q_enum[c]`` the guide's
    ``(K|1, B)`` log q(y_c | x). Per particle k and datapoint b:

        log w_k = log Σ_c p(x, y_c, z_kc) / q(z_kc | x, y_c)        (``log_weights``)

    an unbiased estimate of p(x) whatever q(y | x), so log-mean-exp over k is the
    importance-sampled log p(x) with y summed exactly; the ELBO is
    Σ_c q(y_c | x) (ELBO_c − log q(y_c | x)), as ``pyro.infer.TraceEnum_ELBO`` computes it.
    """

    branches: list[Particles]
    log_q_enum: list[torch.Tensor]
    names: list[str]
    beta: float = 1.0

    enumerated = True

    @property
    def num_particles(self) -> int:
        return self.branches[0].num_particles

    @property
    def batch_size(self) -> int:
        return self.branches[0].batch_size

    @property
    def data_scale(self) -> float:
        return self.branches[0].data_scale

    @property
    def plate_name(self) -> str:
        return self.branches[0].plate_name

    @property
    def latents(self) -> list[LatentSite]:
        """The continuous latent sites of every branch."""
        return [s for b in self.branches for s in b.latents]

    def require_local(self) -> None:
        for b in self.branches:
            b.require_local()

    def global_sites(self) -> list[str]:
        return sorted({n for b in self.branches for n in b.global_sites()})

    def q_enum(self) -> torch.Tensor:
        """q(y_c | x) as a ``(C, K|1, B)`` tensor (differentiable in the guide's parameters)."""
        B = self.batch_size
        return torch.stack([t.expand(t.shape[0], B) for t in self.log_q_enum]).exp()

    @property
    def log_weights(self) -> torch.Tensor:
        """log Σ_c p(x, y_c, z_kc) / q(z_kc | x, y_c), ``(K, B)``."""
        return torch.logsumexp(torch.stack([b.log_weights for b in self.branches]), dim=0)

    def flattened(self) -> "FlatBranches":
        """The branches as ``K·C`` particles ordered (k, c), each with log weight
        log w_kc + log C: a bound on sums of weights within groups of whole particles k (IWAE,
        MIWAE, PIWAE) is then the same bound on these, and their per-sample estimators (STL, DReG)
        apply, since each z_kc is a reparameterized draw from its own q(z | x, y_c)."""
        return FlatBranches(self)

    def scale_latents(self, beta: float) -> "EnumeratedParticles":
        """Every latent density, the enumerated ones' included, multiplied by β."""
        return EnumeratedParticles([b.scale_latents(beta) for b in self.branches], self.log_q_enum, self.names,
                                   self.beta * float(beta))


class FlatBranches:
    """:meth:`EnumeratedParticles.flattened`: the record's terms as ``(K·C, B)`` tensors, rows (k, c)."""

    def __init__(self, record: EnumeratedParticles) -> None:
        self.record = record
        self.branches = record.branches
        self.num_branches = len(record.branches)
        self.num_particles = record.num_particles  # K: what the objective was built for
        self.batch_size = record.batch_size
        self.data_scale = record.data_scale
        self.row_wise = False
        self._log_c = math.log(self.num_branches)

    def _flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        K, B = self.num_particles, self.batch_size
        return torch.stack([t.expand(K, B) for t in tensors], 1).reshape(K * self.num_branches, B)

    def require_local(self) -> None:
        self.record.require_local()

    @property
    def log_lik(self) -> torch.Tensor:
        return self._flat([b.log_lik for b in self.branches])

    @property
    def log_prior(self) -> torch.Tensor:
        return self._flat([b.log_prior for b in self.branches]) + self._log_c

    @property
    def log_q(self) -> torch.Tensor:
        return self._flat([b.log_q for b in self.branches])

    def stopped_log_q(self, who: str) -> torch.Tensor:
        return self._flat([b.stopped_log_q(who) for b in self.branches])

    @property
    def samples(self) -> list[torch.Tensor]:
        return [v for b in self.branches for v in b.samples]

    @property
    def model_samples(self) -> list[torch.Tensor]:
        return [v for b in self.branches for v in b.model_samples]

    def check_single_level(self, who: str) -> None:
        for b in self.branches:
            b.check_single_level(who)


def _enumerate(model, guide, args, kwargs, traces, enum, plate_name, plate, require_plate) -> EnumeratedParticles:
    gt = traces.guide_trace
    order = [n for n, site in gt.nodes.items() if is_latent(site)]
    first_continuous = next((i for i, n in enumerate(order) if n not in enum), len(order))
    for name in enum:
        site = gt.nodes[name]
        if order.index(name) > first_continuous:
            raise ValueError(
                f"guide site {name!r} is marked for enumeration but is drawn after the latent "
                f"{order[first_continuous]!r}; exact summation needs the enumerated sites drawn first in the guide "
                f"(as in M2's q(y|x) q(z|x,y)). Fix: draw {name!r} before the continuous latents, or remove its "
                "infer={'enumerate': ...} to sample it"
            )
        if not reduce_site(torch.zeros(()), site, traces, plate_name)[1]:
            raise PlateError(
                f"guide site {name!r} is marked for enumeration but sits outside the {plate_name!r} plate; exact "
                f"summation is per datapoint. Fix: move it inside `pyro.plate({plate_name!r}, ...)`"
            )
        if not getattr(site["fn"], "has_enumerate_support", False):
            raise ValueError(f"guide site {name!r} is marked for enumeration but {type(site['fn']).__name__} "
                             "has no finite support to enumerate; remove its infer={'enumerate': ...}")
    branches, log_q = [], []
    for data in enumerated_assignments(gt, enum):
        t = particle_traces(poutine.condition(model, data=data), poutine.condition(guide, data=data), args, kwargs,
                            traces.num_particles, traces.max_plate_nesting, plate_name, particle_plate=plate,
                            require_plate=require_plate, check=False)  # the pair was checked unconditioned
        branches.append(from_traces(t, plate_name, enumerated=frozenset(enum)))
        lq = None
        for n in enum:
            g = t.guide_trace.nodes[n]
            r = _scaled(g["scale"] / t.data_scale, reduce_site(g["fn"].log_prob(g["value"]), g, t, plate_name)[0])
            lq = r if lq is None else lq + r
        log_q.append(lq)
    return EnumeratedParticles(branches, log_q, list(enum))


def slice_particles(trace: poutine.Trace, lo: int, hi: int, max_plate_nesting: int) -> poutine.Trace:
    """A copy of a ``K``-particle guide trace whose latent sites hold particles ``lo:hi`` only.

    Only the values are sliced (along the particle dim, where a value has it with size ``K``);
    the sites' distributions keep all ``K`` particles, so the copy is for replaying the model on
    (``poutine.replay`` reads values only), not for scoring the guide. The particle plate's own
    index site is left out, so the replayed model's particle plate has ``hi - lo`` members and
    no subsampling scale.
    """
    out = poutine.Trace(graph_type=trace.graph_type)
    pdim = -(max_plate_nesting + 1)
    for name, site in trace.nodes.items():
        if name == PARTICLE_PLATE and site_is_subsample(site):
            continue
        v = site.get("value")
        if is_latent(site) and isinstance(v, torch.Tensor):
            frame = next((f for f in site["cond_indep_stack"] if f.name == PARTICLE_PLATE), None)
            at = v.dim() - len(site["fn"].event_shape) + pdim
            if frame is not None and at >= 0 and v.shape[at] == frame.size:
                site = {**site, "value": v.narrow(at, lo, hi - lo)}
        out.nodes[name] = site
    return out


def traced_log_weights(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, num_particles: int, max_plate_nesting: int,
    plate_name: str = DATA_PLATE, block_particles: int | None = None,
) -> torch.Tensor:
    """``traced_particles(...).log_weights``, ``(K, B)``, with the model replayed on blocks of at
    most ``block_particles`` particles.

    The guide runs once with all ``K`` particles (the same draws as :func:`traced_particles`,
    and log q scored at once); the model is replayed on :func:`slice_particles` blocks, so a
    block's decoder activations are still in cache when its log-density reads them (the
    component producer's row blocks, for any program). Each block is checked as a whole call is.
    ``block_particles=None`` (or ≥ K): one block, exactly :func:`traced_particles`; so does a
    guide with enumerated sites, or one that fails under the particle plate (the random state is
    restored first, so the draws are the same).
    """
    if block_particles is None or block_particles >= num_particles:
        return traced_particles(model, guide, args, kwargs, num_particles, max_plate_nesting, plate_name).log_weights
    if block_particles < 1:
        raise ValueError(f"block_particles must be >= 1, got {block_particles}")
    cpu_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        full = poutine.trace(vectorize(guide, num_particles, max_plate_nesting)).get_trace(*args, **kwargs)
    except Exception:  # noqa: BLE001 - traced_particles runs it again and raises its clear error
        full = None
    if full is None or enumerated_sites(full):
        torch.random.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        return traced_particles(model, guide, args, kwargs, num_particles, max_plate_nesting, plate_name).log_weights
    parts, traces = [], None
    for lo in range(0, num_particles, block_particles):
        hi = min(lo + block_particles, num_particles)
        traces = particle_traces(model, guide, args, kwargs, hi - lo, max_plate_nesting, plate_name,
                                 check=lo == 0, guide_trace=slice_particles(full, lo, hi, max_plate_nesting))
        block = from_traces(traces, plate_name)
        block.require_local()
        parts.append(block.log_lik + block.log_prior)
    # the guide's side at once: its latent sites, scored on the full trace (no model sites: all enter as log q)
    guide_only = ParticleTraces(poutine.Trace(), full, num_particles, max_plate_nesting, traces.batch_size,
                                traces.data_scale)
    return torch.cat(parts) - from_traces(guide_only, plate_name).log_q


# -- producer 2: a plain VAE's components ------------------------------------------------------------
def _reduce_plain(t: torch.Tensor, event_dims: int = 0) -> torch.Tensor:
    return t.unsqueeze(0) if t.dim() - event_dims == 1 else t


def plain_vae(model: Callable, guide: Callable) -> Any:
    """The :class:`~pyro_vae.VAE` whose own ``model``/``guide`` these are, outside any Pyro
    handler, when its class declares them the program of its components
    (``VAE.component_program``; a subclass that overrides ``model`` or ``guide`` does not);
    else ``None`` (then the program must be traced)."""
    owner = getattr(model, "__self__", None)
    if (
        getattr(type(owner), "component_program", False)
        and getattr(guide, "__self__", None) is owner
        and getattr(model, "__name__", None) == "model"
        and getattr(guide, "__name__", None) == "guide"
        and not am_i_wrapped()
    ):
        return owner
    return None


def from_vae(
    vae: Any,
    x: torch.Tensor,
    num_particles: int,
    num_data: int | None = None,
    q: Distribution | None = None,
    block_rows: int | None = None,
) -> Particles:
    """The :class:`Particles` record of a plain :class:`~pyro_vae.VAE` without tracing.

    Draws ``z = q.rsample((K,))`` with ``q = vae.encoder(x)`` — the draws ``pyro.sample`` makes
    under the ``K``-particle plate — and scores ``z`` under ``vae.prior()`` and ``vae.decoder``:
    the numbers of :func:`from_traces` on ``vae.model`` / ``vae.guide``. ``q`` may be passed
    when the encoder already ran on ``x``. With ``block_rows`` (no gradients only) the decoder
    runs on blocks of about that many (particle, datapoint) rows, so each block's activations
    stay in cache between the matmul and the log-density.
    """
    B, K = x.shape[0], num_particles
    if num_data is not None and num_data < B:
        raise ValueError(f"num_data={num_data} is smaller than the minibatch ({B}); pass the data set size")
    mods = vae._modules  # the components, without PyroModule's attribute lookup
    q = mods["encoder"](x) if q is None else q
    z = q.rsample((K,)) if getattr(q, "has_rsample", False) else q.sample((K,))
    z_p = z.view_as(z)  # the model's copy of z: routing may rescale its gradient with a hook
    prior = mods["prior"]()
    decoder = mods["decoder"]
    if block_rows is not None and not torch.is_grad_enabled():
        ks = max(1, block_rows // max(B, 1))
        log_lik = torch.cat([decoder(z_p[lo : lo + ks]).log_prob(x) for lo in range(0, K, ks)])
    else:
        log_lik = decoder(z_p).log_prob(x)  # (K, B)
    latent = LatentSite("z", q, prior, z, z_p, True, 1.0, 1.0, True, _reduce_plain)
    return Particles(
        K, B, 1.0 if num_data is None else num_data / B, [latent], [ObservedSite("x", log_lik, True, 1.0)],
        row_wise_check=lambda: rows_independent(decoder),
    )


# -- per-datapoint arguments ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DataArgs:
    """A program's arguments besides x, with the per-datapoint ones marked so that every chunk
    or subsample slices them together with x (``model(xs, ys)`` of a conditional VAE)."""

    args: tuple
    kwargs: dict
    positions: frozenset
    names: frozenset

    def chunk(self, lo: int, hi: int) -> tuple[tuple, dict]:
        """The arguments of datapoints ``lo:hi``."""
        return self.take(slice(lo, hi))

    def take(self, index: Any) -> tuple[tuple, dict]:
        """The arguments of the datapoints ``index`` selects (a slice or an index tensor)."""
        args = tuple(_rows(a, index) if i in self.positions else a for i, a in enumerate(self.args))
        kwargs = {k: (_rows(v, index) if k in self.names else v) for k, v in self.kwargs.items()}
        return args, kwargs

    def rebased(self, index: Any) -> "DataArgs":
        """The same marks on the arguments of the datapoints ``index`` selects."""
        args, kwargs = self.take(index)
        return DataArgs(args, kwargs, self.positions, self.names)


def _rows(value: Any, index: Any) -> Any:
    """The rows ``index`` (a slice or an index tensor) of a tensor, array or sequence."""
    if isinstance(index, slice) or hasattr(value, "shape"):
        return value[index.to(value.device) if isinstance(value, torch.Tensor) and isinstance(index, torch.Tensor)
                     else index]
    rows = [value[i] for i in index.tolist()]
    return type(value)(rows) if isinstance(value, (list, tuple)) else rows


def data_args(num_data: int, args: tuple, kwargs: dict, per_datapoint: Any = None) -> DataArgs:
    """Mark the per-datapoint arguments among ``args`` / ``kwargs``: tensors whose leading
    dimension is ``num_data`` (the number of rows of x), plus those named in ``per_datapoint``
    (positions into ``args`` counted from 0, or keyword names), which must have that length."""
    positions = {i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dim() >= 1 and a.shape[0] == num_data}
    names = {k for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == num_data}
    for key in per_datapoint or ():
        if isinstance(key, int) and not isinstance(key, bool):
            value, where = (args[key] if 0 <= key < len(args) else None), f"positional argument {key} after x"
            positions.add(key)
        else:
            value, where = kwargs.get(key), f"keyword argument {key!r}"
            names.add(key)
        length = len(value) if hasattr(value, "__len__") else None
        if length != num_data:
            raise ValueError(
                f"{where} is named per-datapoint but has length {length}, while x has {num_data} rows; "
                "pass one entry per datapoint (row i of every per-datapoint argument belongs to x[i])"
            )
    return DataArgs(tuple(args), dict(kwargs), frozenset(positions), frozenset(names))


# -- the streaming weight accumulator -----------------------------------------------------------------
class WeightAccumulator:
    """Running per-datapoint statistics of log weights arriving in (samples, datapoints) chunks.

    Keeps log Σw, log Σw², Σ log w, Σ (log w)² and the ``keep`` largest log weights per
    datapoint: memory O(N · keep), whatever K. The one accumulator of the package: the
    log-likelihood estimator and the importance diagnostics both stream their weights into it
    (NaN weights are an error naming the datapoints; +inf weights are counted).
    """

    def __init__(self, num_data: int, num_samples: int, keep: int) -> None:
        f64 = torch.float64
        self.num_samples = num_samples
        self.lse = torch.full((num_data,), -math.inf, dtype=f64)
        self.lse2 = torch.full((num_data,), -math.inf, dtype=f64)
        self.sum = torch.zeros(num_data, dtype=f64)
        self.sum2 = torch.zeros(num_data, dtype=f64)
        self.posinf = torch.zeros(num_data, dtype=torch.long)
        self.top = torch.full((num_data, keep), -math.inf, dtype=f64)
        self.eps = torch.finfo(f64).eps  # of the coarsest dtype the weights arrived in

    def update(self, lo: int, hi: int, lw: torch.Tensor) -> None:
        if lw.is_floating_point():
            self.eps = max(self.eps, torch.finfo(lw.dtype).eps)
        lw = lw.detach().double().cpu()
        nan = torch.isnan(lw)
        if bool(nan.any()):
            bad = (torch.nonzero(nan.any(0)).reshape(-1) + lo).tolist()
            raise ValueError(
                f"log importance weights are NaN for datapoints {bad[:10]}{' ...' if len(bad) > 10 else ''}: the "
                "model or guide returned a NaN log-density (a NaN network output, a zero scale, or data outside "
                "the likelihood's support); check the inputs and the parameters"
            )
        inf = lw == math.inf
        self.posinf[lo:hi] += inf.sum(0)
        self.lse[lo:hi] = torch.logaddexp(self.lse[lo:hi], torch.logsumexp(lw, dim=0))
        self.lse2[lo:hi] = torch.logaddexp(self.lse2[lo:hi], torch.logsumexp(2 * lw, dim=0))
        self.sum[lo:hi] += lw.sum(0)
        self.sum2[lo:hi] += (lw * lw).sum(0)
        keep = self.top.shape[1]
        if keep:
            both = torch.cat([self.top[lo:hi], lw.T], dim=1)
            self.top[lo:hi] = torch.topk(both, keep, dim=1).values

    def log_likelihood(self) -> torch.Tensor:
        """log (1/K) Σ_k w_k per datapoint."""
        return self.lse - math.log(self.num_samples)

    def ess(self) -> torch.Tensor:
        """(Σw)² / Σw² per datapoint; the count of infinite weights where there are any; 0 if all weights are 0."""
        ess = torch.exp(2 * self.lse - self.lse2)
        ess = torch.where(self.posinf > 0, self.posinf.double(), ess)
        return torch.where(self.lse == -math.inf, torch.zeros_like(ess), ess)

    def elbo(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of log w (the ELBO estimate) per datapoint and its Monte Carlo standard error."""
        k = self.num_samples
        mean = self.sum / k
        with torch.no_grad():
            var = (self.sum2 / k - mean**2).clamp(min=0) * k / max(k - 1, 1)
        finite = torch.isfinite(mean)
        se = torch.where(finite, torch.sqrt(var / k), torch.full_like(mean, math.inf))
        return mean, se



def log_weights(traces: ParticleTraces, plate_name: str = DATA_PLATE) -> torch.Tensor:
    """Per-datapoint log importance weights ``log p(x_b, z_kb) - log q(z_kb | x_b)``, shape ``(K, B)``.

    Every sample site must sit in the data plate; a global latent makes the weights joint over
    the minibatch and raises :class:`PlateError` naming the site and the fix.
    """
    return from_traces(traces, plate_name).log_weights


__all__ = [
    "PARTICLE_PLATE",
    "PlateError",
    "Particles",
    "LatentSite",
    "ObservedSite",
    "ParticleTraces",
    "from_traces",
    "EnumeratedParticles",
    "FlatBranches",
    "BroadcastError",
    "stack_particles",
    "enumerated_sites",
    "enumerated_assignments",
    "from_vae",
    "plain_vae",
    "traced_particles",
    "traced_log_weights",
    "slice_particles",
    "guess_max_plate_nesting",
    "particle_traces",
    "reduce_site",
    "site_log_prob",
    "log_prob",
    "log_weights",
    "WeightAccumulator",
    "DataArgs",
    "data_args",
    "stop_parameters",
    "latent_kl",
    "density_changed",
    "rows_independent",
    "is_sample",
    "is_latent",
    "is_observed",
    "vectorize",
]
