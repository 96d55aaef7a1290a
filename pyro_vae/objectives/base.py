"""Base class of objectives: a :class:`pyro.infer.ELBO` with vectorized particles and
per-datapoint terms under the data plate."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import pyro
import torch
from pyro.poutine.runtime import am_i_wrapped

from ..traces import ParticleTraces, guess_max_plate_nesting, particle_traces
from ..vae import DATA_PLATE


class Terms(NamedTuple):
    """What one evaluation of an objective measured, averaged per datapoint (not scaled to N).

    ``bound`` is the objective's own bound (ELBO, IWAE-K, ...) per datapoint; ``reconstruction``
    is E_q[log p(x|z)] and ``kl`` the (analytic or Monte Carlo) KL(q(z|x) ‖ p(z)), both per
    datapoint. All are detached scalars.
    """

    bound: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


class Objective(pyro.infer.ELBO):
    """Base class of pyro_vae objectives.

    Every objective is a :class:`pyro.infer.ELBO`, so ``SVI(model, guide, optim, loss=objective)``
    works, and ``objective(model, guide)`` returns an ``nn.Module`` for torch optimizers and
    Lightning. Particles are always vectorized: one pass for ``num_particles`` samples.

    Implementing a new one:
        Override :meth:`_loss` — given the :class:`~pyro_vae.traces.ParticleTraces` of one call,
        return ``(loss, terms)`` where ``loss`` is the differentiable surrogate (scaled to the
        whole data set, like Pyro's losses) and ``terms`` a :class:`Terms`. Use
        :func:`pyro_vae.traces.log_weights` for per-datapoint ``(K, B)`` log weights. Nothing
        else: ``loss``, ``differentiable_loss`` and ``loss_and_grads`` are shared.

    After each call, :attr:`last_terms` holds the :class:`Terms` of that call.
    """

    #: does the objective need a reparameterized guide?
    requires_rsample: bool = True
    #: use :meth:`_fast_loss` for plain VAEs outside Pyro handlers (same numbers, no tracing)
    use_fast_path: bool = True

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: int | None = None,
        plate_name: str = DATA_PLATE,
    ) -> None:
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=float("inf") if max_plate_nesting is None else max_plate_nesting,
            vectorize_particles=True,
        )
        # pyro.infer.ELBO adds 1 to a given max_plate_nesting for its own particle plate when
        # num_particles > 1; ours is added in particle_traces, so keep the user's value.
        self.max_plate_nesting = float("inf") if max_plate_nesting is None else max_plate_nesting
        self.plate_name = plate_name
        self.last_terms: Terms | None = None

    # -- shared machinery ---------------------------------------------------------------------
    def traces(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> ParticleTraces:
        """Vectorized traces for one call (guesses ``max_plate_nesting`` on first use)."""
        if self.max_plate_nesting == float("inf"):
            self.max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        tr = particle_traces(
            model, guide, args, kwargs, self.num_particles, int(self.max_plate_nesting), self.plate_name
        )
        if self.requires_rsample:
            _check_reparameterized(tr, type(self).__name__)
        return tr

    def _loss(self, traces: ParticleTraces) -> tuple[torch.Tensor, Terms]:  # pragma: no cover
        raise NotImplementedError

    def _fast_loss(self, vae: Any, x: torch.Tensor, num_data: int | None) -> tuple[torch.Tensor, Terms] | None:
        """Optional fast path for a plain :class:`~pyro_vae.VAE` (override; ``None`` = trace).

        Must return exactly what :meth:`_loss` returns on the traces of ``vae.model`` /
        ``vae.guide``, drawing the same random numbers in the same order (tests check both).
        """
        return None

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The negative bound, scaled to the whole data set, differentiable in all parameters.

        For a plain :class:`~pyro_vae.VAE` called outside any Pyro handler, objectives with a
        fast path skip tracing: the program's structure is fixed (one latent site ``z`` in the
        ``data`` plate, one observed site ``x``), so the components are called directly. Inside
        handlers (``SVI``, ``poutine.*``), for subclasses that override ``model``/``guide``, and
        for hand-written programs, the traced path runs. Set ``use_fast_path = False`` to
        always trace.
        """
        if self.use_fast_path:
            vae = plain_vae(model, guide)
            if vae is not None:
                call = _vae_call(args, kwargs)
                if call is not None:
                    out = self._fast_loss(vae, *call)
                    if out is not None:
                        self.last_terms = out[1]
                        return out[0]
        loss, terms = self._loss(self.traces(model, guide, *args, **kwargs))
        self.last_terms = terms
        return loss

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The negative bound as a float (no gradients)."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Back-propagate the surrogate loss and return its value (what ``SVI.step`` calls)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())

    def _get_trace(self, model, guide, args, kwargs):  # pyro.infer.ELBO's abstract hook
        raise NotImplementedError("pyro_vae objectives trace through Objective.traces()")


def plain_vae(model: Callable, guide: Callable) -> Any:
    """The :class:`~pyro_vae.VAE` whose unmodified ``model``/``guide`` these are, outside any
    Pyro handler; else ``None`` (then the program must be traced)."""
    from ..vae import VAE

    owner = getattr(model, "__self__", None)
    if (
        isinstance(owner, VAE)
        and getattr(guide, "__self__", None) is owner
        and getattr(model, "__func__", None) is VAE.model
        and getattr(guide, "__func__", None) is VAE.guide
        and not am_i_wrapped()
    ):
        return owner
    return None


def _vae_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, int | None] | None:
    if len(args) == 1 and set(kwargs) <= {"num_data"}:
        return args[0], kwargs.get("num_data")
    if len(args) == 2 and not kwargs:
        return args[0], args[1]
    return None


def _check_reparameterized(traces: ParticleTraces, who: str) -> None:
    for site in traces.guide_trace.nodes.values():
        if site["type"] == "sample" and not site["is_observed"] and type(site["fn"]).__name__ != "_Subsample":
            if not getattr(site["fn"], "has_rsample", False):
                raise ValueError(
                    f"{who} needs reparameterized guide samples, but guide site {site['name']!r} draws from "
                    f"{type(site['fn']).__name__}, which has no rsample. Fix: use a reparameterizable "
                    "family (Normal, LowRankMultivariateNormal, a flow) for that site, or train with a "
                    "score-function objective such as pyro.infer.TraceGraph_ELBO"
                )


def log_mean_exp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) Σ_k exp(x_k) along ``dim``, stable."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


__all__ = ["Objective", "Terms", "log_mean_exp"]
