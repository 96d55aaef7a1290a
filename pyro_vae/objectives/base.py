"""Base class of objectives: a :class:`pyro.infer.ELBO` with vectorized particles and
per-datapoint terms under the data plate."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import pyro
import torch

from ..program import (  # noqa: F401  (plain_vae: re-exported)
    Particles,
    ParticleTraces,
    from_traces,
    from_vae,
    guess_max_plate_nesting,
    particle_traces,
    plain_vae,
)
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

    Each call builds one :class:`~pyro_vae.program.Particles` record — by tracing the program
    (:func:`~pyro_vae.program.from_traces`, any model/guide pair) or, for a plain
    :class:`~pyro_vae.VAE` outside Pyro handlers, from its components without tracing
    (:func:`~pyro_vae.program.from_vae`, the same draws) — and hands it to :meth:`_loss`, where
    the objective's bound is written once.

    Implementing a new one:
        Override :meth:`_loss` — given the :class:`~pyro_vae.program.Particles` of one call,
        return ``(loss, terms)`` where ``loss`` is the differentiable surrogate (scaled to the
        whole data set, like Pyro's losses) and ``terms`` a :class:`Terms`. Read ``(K, B)``
        per-datapoint terms from the record (``log_lik``, ``log_prior``, ``log_q``,
        ``log_weights``, ``latents``). Nothing else: ``loss``, ``differentiable_loss`` and
        ``loss_and_grads`` are shared.

    After each call, :attr:`last_terms` holds the :class:`Terms` of that call.
    """

    #: does the objective need a reparameterized guide?
    requires_rsample: bool = True
    #: build the record of a plain VAE from its components (same numbers, no tracing)
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
        return particle_traces(
            model, guide, args, kwargs, self.num_particles, int(self.max_plate_nesting), self.plate_name
        )

    def particles(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Particles:
        """The :class:`~pyro_vae.program.Particles` record of one call.

        A plain :class:`~pyro_vae.VAE` (its unmodified ``model``/``guide``, called as
        ``(x)``, ``(x, num_data)`` or ``(x, num_data=N)`` outside any Pyro handler) is read from
        its components; everything else is traced. ``use_fast_path = False`` always traces.
        """
        if self.use_fast_path and self.plate_name == DATA_PLATE:
            vae = plain_vae(model, guide)
            call = _vae_call(args, kwargs) if vae is not None else None
            if call is not None:
                return from_vae(vae, call[0], self.num_particles, call[1])
        return from_traces(self.traces(model, guide, *args, **kwargs), self.plate_name)

    def _loss(self, particles: Particles) -> tuple[torch.Tensor, Terms]:  # pragma: no cover
        raise NotImplementedError

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The negative bound, scaled to the whole data set, differentiable in all parameters."""
        particles = self.particles(model, guide, *args, **kwargs)
        if self.requires_rsample:
            _check_reparameterized(particles, type(self).__name__)
        loss, terms = self._loss(particles)
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


def _vae_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, int | None] | None:
    if len(args) == 1 and set(kwargs) <= {"num_data"}:
        return args[0], kwargs.get("num_data")
    if len(args) == 2 and not kwargs:
        return args[0], args[1]
    return None


def _check_reparameterized(particles: Particles, who: str) -> None:
    for site in particles.latents:
        if not getattr(site.q, "has_rsample", False):
            q = site.q
            discrete = bool(getattr(q, "has_enumerate_support", False))
            fix = (
                "this is a discrete site: sum it out exactly with pyro.infer.TraceEnum_ELBO (mark the guide with "
                "pyro.infer.config_enumerate, and give the model's site infer={'enumerate': 'parallel'}), or train "
                "with a score-function objective such as pyro.infer.TraceGraph_ELBO"
                if discrete else
                "use a reparameterizable family (Normal, LowRankMultivariateNormal, a flow) for that site, or train "
                "with a score-function objective such as pyro.infer.TraceGraph_ELBO"
            )
            raise ValueError(
                f"{who} needs reparameterized guide samples, but guide site {site.name!r} draws from "
                f"{type(q).__name__}, which has no rsample. Fix: {fix}"
            )


def log_mean_exp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) Σ_k exp(x_k) along ``dim``, stable."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


__all__ = ["Objective", "Terms", "log_mean_exp"]
