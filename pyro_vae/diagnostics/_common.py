"""Shared plumbing of the diagnostics: who is the model and the guide, chunking, traces.

Every diagnostic accepts the same three spellings of "what to diagnose":

* ``f(vae, x)`` — anything with ``.model`` and ``.guide`` (a :class:`~pyro_vae.VAE`);
* ``f((model, guide), x)`` — a pair of Pyro programs;
* ``f(model, guide, x)`` — the same pair, spelled out (as :func:`pyro_vae.log_likelihood` does).

The programs are called as ``model(x_chunk, *model_args, **model_kwargs)``; all their sample
sites must sit in the data plate (``pyro.plate("data", len(x_chunk))`` by default).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator


import pyro.poutine as poutine
import torch

from ..evaluation.log_likelihood import plan_chunks
from ..program import (
    PARTICLE_PLATE,
    DataArgs,
    PlateError,
    blame_broadcasting,
    data_args,
    guess_max_plate_nesting,
    is_latent,
    is_sample,
    vectorize,
)

#: default working-memory budget of one chunk, bytes (the same default as ``log_likelihood``)
DEFAULT_MEMORY_BUDGET = float(1 << 30)


class DiagnosticWarning(UserWarning):
    """A diagnostic ran, but its result needs care (too few samples, unreliable estimates, ...)."""


class SampleSizeWarning(DiagnosticWarning):
    """Too few samples (or simulations) for the diagnostic to be stable; the message says how many."""


class NonFiniteWeightWarning(DiagnosticWarning):
    """Some datapoints got infinite importance weights (or only zero weights); they are named."""


@dataclass(frozen=True)
class Pair:
    """A model/guide pair with everything needed to call it on a chunk of data."""

    model: Callable[..., Any]
    guide: Callable[..., Any]
    args: tuple
    kwargs: dict
    plate_name: str
    max_plate_nesting: int
    #: which of ``args`` / ``kwargs`` are per-datapoint (sliced with x); ``None``: none are
    extra: DataArgs | None = None

    def call_args(self, xb: torch.Tensor) -> tuple:
        return (xb, *self.args)

    def at(self, lo: int, hi: int) -> "Pair":
        """The pair for datapoints ``lo:hi``: per-datapoint arguments sliced with x."""
        return self.take(slice(lo, hi))

    def take(self, index: Any) -> "Pair":
        """The pair for the datapoints ``index`` selects (a slice or an index tensor)."""
        if self.extra is None:
            return self
        extra = self.extra.rebased(index)
        return replace(self, args=extra.args, kwargs=extra.kwargs, extra=extra)


def _is_vae_like(obj: Any) -> bool:
    return callable(getattr(obj, "model", None)) and callable(getattr(obj, "guide", None))


def resolve(model: Any, guide: Any, x: Any, where: str) -> tuple[Callable, Callable, torch.Tensor]:
    """Turn the three accepted spellings into ``(model, guide, x)``."""
    if x is None:
        data = guide
        if isinstance(model, (tuple, list)) and len(model) == 2:
            m, g = model
        elif _is_vae_like(model):
            m, g = model.model, model.guide
        else:
            raise TypeError(
                f"{where}: pass a VAE and the data ({where}(vae, x)), a (model, guide) pair and the data "
                f"({where}((model, guide), x)), or model, guide and data ({where}(model, guide, x)); "
                f"got {type(model).__name__} and {type(guide).__name__}"
            )
    else:
        m, g, data = model, guide, x
    if not (callable(m) and callable(g)):
        raise TypeError(f"{where}: model and guide must be callables (Pyro programs), got {type(m).__name__}, {type(g).__name__}")
    if data is None:
        raise TypeError(f"{where}: no data given; pass the datapoints to diagnose as x")
    return m, g, check_data(data, where)


def check_data(x: Any, where: str) -> torch.Tensor:
    """``x`` as a tensor with at least one finite datapoint along dim 0."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{where}: x is empty (shape {tuple(x.shape)}); pass at least one datapoint (rows are datapoints)")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = torch.nonzero(~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)).reshape(-1)
        raise ValueError(
            f"{where}: x contains NaN or inf in {len(bad)} datapoints (first: {bad[:5].tolist()}); "
            "drop or impute those rows before diagnosing"
        )
    return x


def make_pair(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    model_args: tuple,
    model_kwargs: dict | None,
    plate_name: str,
    max_plate_nesting: int | None,
) -> Pair:
    kwargs = dict(model_kwargs or {})
    args = tuple(model_args)
    extra = data_args(x.shape[0], args, kwargs)  # arguments whose leading dim is len(x) go with x
    if not (extra.positions or extra.names):
        extra = None
    if max_plate_nesting is None:
        a1, k1 = extra.chunk(0, 1) if extra is not None else (args, kwargs)
        max_plate_nesting = guess_max_plate_nesting(model, guide, (x[:1], *a1), k1)
    return Pair(model, guide, args, kwargs, plate_name, int(max_plate_nesting), extra)


def check_budget(memory_budget: float) -> float:
    if not memory_budget > 0:
        raise ValueError(f"memory_budget must be positive bytes, got {memory_budget}")
    return float(memory_budget)


def check_positive(name: str, value: int) -> int:
    if int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def feature_size(x: torch.Tensor) -> int:
    return max(1, int(x[0].numel()))


def chunk_plan(x: torch.Tensor, num_samples: int, memory_budget: float) -> tuple[list[tuple[int, int]], int]:
    """Datapoint chunks ``[(lo, hi), ...]`` and samples per chunk, from :func:`plan_chunks`."""
    n = x.shape[0]
    points, samples = plan_chunks(n, num_samples, feature_size(x), memory_budget)
    return [(lo, min(lo + points, n)) for lo in range(0, n, points)], samples


def sample_chunks(num_samples: int, per_chunk: int) -> Iterator[tuple[int, int]]:
    done = 0
    while done < num_samples:
        k = min(per_chunk, num_samples - done)
        yield done, k
        done += k


#: ``fn`` inside the outer particle plate (the one definition is :func:`pyro_vae.program.vectorize`)
vectorized = vectorize


def _broadcast_errors(pair: Pair, xb: torch.Tensor, num_particles: int | None) -> Any:
    """A program that fails under the particle plate but runs as written: a :class:`BroadcastError`
    naming the requirement (diagnostics draw their samples in one vectorized pass)."""
    return blame_broadcasting(pair.model, pair.guide, pair.call_args(xb), pair.kwargs, num_particles,
                              pair.max_plate_nesting, "as diagnostics draw their samples in one vectorized pass")


def trace_guide(pair: Pair, xb: torch.Tensor, num_particles: int | None = None) -> poutine.Trace:
    """Trace the guide on a chunk, with ``num_particles`` vectorized particles (or none)."""
    g = pair.guide if num_particles is None else vectorized(pair.guide, num_particles, pair.max_plate_nesting)
    with _broadcast_errors(pair, xb, num_particles):
        return poutine.trace(g).get_trace(*pair.call_args(xb), **pair.kwargs)


def trace_model_on(pair: Pair, xb: torch.Tensor, guide_trace: poutine.Trace, num_particles: int | None = None,
                   uncondition: bool = False) -> poutine.Trace:
    """Replay the model on a guide trace; ``uncondition=True`` samples the observed sites anew."""
    m: Callable = pair.model
    if uncondition:
        m = poutine.uncondition(m)
    if num_particles is not None:
        m = vectorized(m, num_particles, pair.max_plate_nesting)
    with _broadcast_errors(pair, xb, num_particles):
        return poutine.trace(poutine.replay(m, trace=guide_trace)).get_trace(*pair.call_args(xb), **pair.kwargs)


def trace_prior(pair: Pair, xb: torch.Tensor, num_particles: int | None = None) -> poutine.Trace:
    """Trace the model with every observed site sampled: z ~ p(z), x ~ p(x|z)."""
    m: Callable = poutine.uncondition(pair.model)
    if num_particles is not None:
        m = vectorized(m, num_particles, pair.max_plate_nesting)
    with _broadcast_errors(pair, xb, num_particles):
        return poutine.trace(m).get_trace(*pair.call_args(xb), **pair.kwargs)


def in_plate(site: dict, plate_name: str) -> bool:
    return any(f.name == plate_name for f in site["cond_indep_stack"])


def latent_sites(trace: poutine.Trace, plate_name: str, who: str = "guide") -> list[dict]:
    """Unobserved sample sites (not subsample sites); each must sit in the data plate."""
    out = []
    for site in trace.nodes.values():
        if not is_latent(site):
            continue
        if (site.get("infer") or {}).get("was_observed"):
            continue
        if not in_plate(site, plate_name):
            raise PlateError(
                f"{who} sample site {site['name']!r} sits outside the {plate_name!r} plate: the guide is not "
                f"amortized over the data plate (a global latent is shared by every datapoint), so per-datapoint "
                f"diagnostics are undefined. Fix: declare it inside `pyro.plate({plate_name!r}, ...)`, or pass "
                "plate_name= naming your data plate"
            )
        out.append(site)
    if not out:
        raise PlateError(
            f"the {who} has no latent sample site in a plate named {plate_name!r}; per-datapoint diagnostics "
            f"need `with pyro.plate({plate_name!r}, N): pyro.sample(...)` (or pass plate_name=)"
        )
    return out


def observed_sites(trace: poutine.Trace, plate_name: str) -> list[dict]:
    """Observed sites (or sites that were observed before ``poutine.uncondition``) in the data plate."""
    out = []
    for site in trace.nodes.values():
        if not is_sample(site):
            continue
        if site["is_observed"] or (site.get("infer") or {}).get("was_observed"):
            if not in_plate(site, plate_name):
                raise PlateError(
                    f"observed site {site['name']!r} sits outside the {plate_name!r} plate; declare the "
                    f"datapoints with `with pyro.plate({plate_name!r}, N):` around it"
                )
            out.append(site)
    if not out:
        raise PlateError(f"the model has no observed site (pyro.sample(..., obs=x)) in the {plate_name!r} plate")
    return out


def flat_values(site: dict, num_particles: int | None, batch_size: int, plate_name: str) -> torch.Tensor:
    """Site value as ``(K, B, P)`` (``num_particles``) or ``(B, P)``: P = all per-datapoint numbers."""
    value = site["value"]
    event_dim = len(site["fn"].event_shape)
    batch_shape = value.shape[: value.dim() - event_dim]
    data_pos = None
    for f in site["cond_indep_stack"]:
        if f.name == plate_name:
            data_pos = len(batch_shape) + f.dim
    if data_pos is None or data_pos < 0 or batch_shape[data_pos] not in (1, batch_size):
        raise PlateError(f"site {site['name']!r}: cannot find its {plate_name!r} dim of size {batch_size}")
    particle_pos = None
    if num_particles is not None:
        for f in site["cond_indep_stack"]:
            if f.name == PARTICLE_PLATE:
                particle_pos = len(batch_shape) + f.dim
    # move particle and data dims to the front, flatten the rest
    order = ([particle_pos] if particle_pos is not None else []) + [data_pos]
    rest = [i for i in range(value.dim()) if i not in order]
    v = value.permute(*order, *rest)
    if num_particles is not None and particle_pos is None:
        v = v.unsqueeze(0)
    lead = (num_particles, batch_size) if num_particles is not None else (batch_size,)
    v = v.expand(*lead, *v.shape[len(lead):]) if v.dim() >= len(lead) else v
    return v.reshape(*lead, -1)


def row_chunks(n: int, size: int) -> list[tuple[int, int]]:
    size = max(1, int(size))
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def index_list(mask: torch.Tensor, limit: int = 10) -> str:
    idx = torch.nonzero(mask).reshape(-1).tolist()
    shown = ", ".join(str(i) for i in idx[:limit])
    return f"[{shown}{', ...' if len(idx) > limit else ''}] ({len(idx)} in all)"


def warn(message: str, category: type[Warning] = DiagnosticWarning, stacklevel: int = 3) -> None:
    warnings.warn(message, category, stacklevel=stacklevel)
