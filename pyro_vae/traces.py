"""Per-datapoint, vectorized-particle traces of any Pyro model/guide pair with a data plate.

Everything that needs log importance weights **per datapoint** — IWAE-style objectives, the
log-likelihood estimator, Pareto k̂ — goes through :func:`particle_traces` and
:func:`log_weights`. (Pyro's ``vectorized_importance_weights`` sums the weights over the
batch, which is the joint weight of the whole minibatch, not one per datapoint.)

Conventions: the particles sit in an outer plate at ``dim = -(max_plate_nesting + 1)``; the
data plate is the plate named ``"data"`` (see :data:`pyro_vae.vae.DATA_PLATE`). A site's
log-density is summed over every other plate it sits in, giving a ``(K, B)`` tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_model_guide_match

from .vae import DATA_PLATE

PARTICLE_PLATE = "num_particles_vectorized"


class PlateError(ValueError):
    """A model or guide lacks the data plate, or has a site outside it where one is required."""


@dataclass
class ParticleTraces:
    """Traces of ``K`` vectorized particles and where the particle and data dims are."""

    model_trace: poutine.Trace
    guide_trace: poutine.Trace
    num_particles: int
    max_plate_nesting: int
    batch_size: int
    data_scale: float  # num_data / batch_size, from the data plate's subsampling

    @property
    def num_dims(self) -> int:
        """Number of batch dims every site's log-density is padded to (particles + plates)."""
        return self.max_plate_nesting + 1


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


def _find_data_frame(trace: poutine.Trace, plate_name: str):
    for site in trace.nodes.values():
        if site["type"] == "sample":
            for f in site["cond_indep_stack"]:
                if f.name == plate_name:
                    return f
    return None


def particle_traces(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    max_plate_nesting: int,
    plate_name: str = DATA_PLATE,
) -> ParticleTraces:
    """Trace the guide with ``num_particles`` vectorized particles and replay the model on it."""
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    dim = -(max_plate_nesting + 1)

    def vec(fn: Callable) -> Callable:
        def wrapped(*a: Any, **k: Any) -> Any:
            with pyro.plate(PARTICLE_PLATE, num_particles, dim=dim):
                return fn(*a, **k)

        return wrapped

    guide_trace = poutine.trace(vec(guide)).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(vec(model), trace=guide_trace)).get_trace(*args, **kwargs)
    if is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace, max_plate_nesting)
    frame = _find_data_frame(guide_trace, plate_name) or _find_data_frame(model_trace, plate_name)
    if frame is None:
        raise PlateError(
            f"no sample site sits in a plate named {plate_name!r}; per-datapoint quantities need the "
            f"model and guide to declare their datapoints with `with pyro.plate({plate_name!r}, N):` "
            "(or pass plate_name= naming your data plate)"
        )
    if frame.dim is None:
        raise PlateError(f"the {plate_name!r} plate must be vectorized (give it a dim), not a sequential plate")
    full = frame.full_size if frame.full_size is not None else frame.size
    return ParticleTraces(
        model_trace=model_trace,
        guide_trace=guide_trace,
        num_particles=num_particles,
        max_plate_nesting=max_plate_nesting,
        batch_size=int(frame.size),
        data_scale=float(full) / float(frame.size),
    )


def site_log_prob(site: dict, traces: ParticleTraces, plate_name: str = DATA_PLATE) -> tuple[torch.Tensor, bool]:
    """Unscaled log-density of a site as a ``(K or 1, B or 1)`` tensor, summed over other plates.

    Returns the tensor and whether the site sits in the data plate. Masks are applied; the
    site's scale is not (callers apply it).
    """
    lp = site["fn"].log_prob(site["value"])
    mask = site["mask"]
    if mask is not None and mask is not True:
        # poutine.mask accepts a Python bool as well as a bool tensor
        lp = torch.where(torch.as_tensor(mask, device=lp.device), lp, lp.new_zeros(()))
    n = traces.num_dims
    if lp.dim() > n:
        raise ValueError(
            f"site {site['name']!r} has log_prob shape {tuple(lp.shape)} with more batch dims than its plates "
            f"allow (max_plate_nesting={traces.max_plate_nesting}); declare the missing plate or use .to_event()"
        )
    lp = lp.reshape((1,) * (n - lp.dim()) + lp.shape)
    data_dim = None
    for f in site["cond_indep_stack"]:
        if f.name == plate_name:
            data_dim = n + f.dim
    if data_dim is None:
        return lp.sum(dim=tuple(range(1, n))).unsqueeze(-1), False
    others = tuple(d for d in range(1, n) if d != data_dim)
    if others:
        lp = lp.sum(dim=others)
    return lp, True


def log_weights(traces: ParticleTraces, plate_name: str = DATA_PLATE) -> torch.Tensor:
    """Per-datapoint log importance weights ``log p(x_b, z_kb) - log q(z_kb | x_b)``, shape ``(K, B)``.

    Every sample site must sit in the data plate; a global latent makes the weights joint over
    the minibatch and raises :class:`PlateError` naming the site and the fix.
    """
    K, B = traces.num_particles, traces.batch_size
    total = torch.zeros(())
    for sign, trace in ((1.0, traces.model_trace), (-1.0, traces.guide_trace)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            lp, in_plate = site_log_prob(site, traces, plate_name)
            if not in_plate:
                raise PlateError(
                    f"sample site {site['name']!r} sits outside the {plate_name!r} plate, so its weight is "
                    "shared by the whole minibatch and per-datapoint weights are undefined. Fix: move it inside "
                    f"`pyro.plate({plate_name!r}, ...)` (a local latent), or use an objective that does not "
                    "combine weights per datapoint (pyro_vae.objectives.ELBO or pyro.infer.Trace_ELBO)"
                )
            # relative scale: 1 unless the user scaled the site (poutine.scale) on top of subsampling
            rel = site["scale"] / traces.data_scale
            total = total + sign * (lp if (isinstance(rel, float) and rel == 1.0) else rel * lp)
    return total.expand(K, B) if total.dim() == 2 else total.reshape(1, 1).expand(K, B)


__all__ = [
    "ParticleTraces",
    "PlateError",
    "PARTICLE_PLATE",
    "guess_max_plate_nesting",
    "particle_traces",
    "site_log_prob",
    "log_weights",
]
