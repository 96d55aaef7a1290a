"""Base class of objectives: a :class:`pyro.infer.ELBO` with vectorized particles and
per-datapoint terms under the data plate."""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, NamedTuple

import pyro
import torch

from ..program import (  # noqa: F401  (plain_vae: re-exported)
    BroadcastError,
    EnumeratedParticles,
    Particles,
    ParticleTraces,
    from_traces,
    from_vae,
    guess_max_plate_nesting,
    particle_traces,
    plain_vae,
    traced_particles,
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
    Lightning. A drop-in for :class:`pyro.infer.Trace_ELBO`: the constructor takes its arguments
    (``num_particles``, ``max_plate_nesting``, ``vectorize_particles``, ``retain_graph``, ...;
    ``strict_enumeration_warning``, ``ignore_jit_warnings`` and ``jit_options`` are accepted and
    have no effect), and any program Trace_ELBO runs works — global latents, no data plate (the
    program is then one datapoint), nested plates, masks, ``pyro.factor``. Particles run in one
    vectorized pass (``K = 1``: no particle plate at all, the program runs as written); a program
    that cannot broadcast over the particle plate runs them one at a time
    (``vectorize_particles=None``, the default, switches with one warning; ``False`` always). Guide
    sites marked for enumeration are summed out exactly
    (:class:`~pyro_vae.program.EnumeratedParticles`).

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
        vectorize_particles: bool | None = None,
        strict_enumeration_warning: bool = True,
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
        retain_graph: bool | None = None,
        tail_adaptive_beta: float = -1.0,
        max_iarange_nesting: int | None = None,
    ) -> None:
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}")
        if max_iarange_nesting is not None:  # Pyro's deprecated spelling
            max_plate_nesting = max_iarange_nesting if max_plate_nesting is None else max_plate_nesting
        if vectorize_particles not in (None, True, False):
            raise ValueError(f"vectorize_particles must be True, False or None (auto), got {vectorize_particles!r}")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=float("inf") if max_plate_nesting is None else max_plate_nesting,
            vectorize_particles=vectorize_particles is not False,
            strict_enumeration_warning=strict_enumeration_warning,
            ignore_jit_warnings=ignore_jit_warnings,
            jit_options=jit_options,
            retain_graph=retain_graph,
            tail_adaptive_beta=tail_adaptive_beta,
        )
        # pyro.infer.ELBO adds 1 to a given max_plate_nesting for its own particle plate when
        # num_particles > 1; ours is added in particle_traces, so keep the user's value.
        self.max_plate_nesting = float("inf") if max_plate_nesting is None else max_plate_nesting
        self.plate_name = plate_name
        #: True: one vectorized pass; False: particles one at a time; None (default): vectorized,
        #: and one at a time (with one warning) once the program fails under the particle plate
        self.vectorize_particles = vectorize_particles
        self.last_terms: Terms | None = None

    # -- shared machinery ---------------------------------------------------------------------
    def traces(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> ParticleTraces:
        """Vectorized traces for one call (guesses ``max_plate_nesting`` on first use)."""
        self._guess_nesting(model, guide, args, kwargs)
        return particle_traces(
            model, guide, args, kwargs, self.num_particles, int(self.max_plate_nesting), self.plate_name,
            particle_plate=self.num_particles > 1, require_plate=False,
        )

    def _guess_nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        if self.max_plate_nesting == float("inf"):
            self.max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)

    def traced(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Particles | EnumeratedParticles:
        """The record of one call by tracing the program (any model/guide pair).

        A program without the data plate is one datapoint. Enumerated guide sites are summed
        out exactly. With ``vectorize_particles=None`` a program that cannot broadcast over the
        particle plate runs its particles one at a time from then on (warned once).
        """
        self._guess_nesting(model, guide, args, kwargs)
        run = functools.partial(traced_particles, model, guide, args, kwargs, self.num_particles,
                                int(self.max_plate_nesting), self.plate_name, require_plate=False)
        if self.num_particles == 1 or self.vectorize_particles is True:
            return run(vectorized=True)
        if self.vectorize_particles is False:
            return run(vectorized=False)
        try:
            return run(vectorized=True)
        except BroadcastError as e:
            warnings.warn(
                f"{type(self).__name__}: {e.args[0].split('. Fix:')[0]}; running its {self.num_particles} particles "
                "one at a time from now on (pass vectorize_particles=False to say so, or make the program "
                "broadcast-safe for one vectorized pass)", RuntimeWarning, stacklevel=4)
            self.vectorize_particles = False
            return run(vectorized=False)

    def particles(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Particles | EnumeratedParticles:
        """The :class:`~pyro_vae.program.Particles` record of one call.

        A plain :class:`~pyro_vae.VAE` (its unmodified ``model``/``guide``, called as
        ``(x)``, ``(x, num_data)`` or ``(x, num_data=N)`` outside any Pyro handler) is read from
        its components; everything else is traced (:meth:`traced`). ``use_fast_path = False``
        always traces.
        """
        if self.use_fast_path and self.plate_name == DATA_PLATE:
            vae = plain_vae(model, guide)
            call = _vae_call(args, kwargs) if vae is not None else None
            if call is not None:
                return from_vae(vae, call[0], self.num_particles, call[1])
        return self.traced(model, guide, *args, **kwargs)

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
            loss.backward(retain_graph=self.retain_graph)
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
                "this is a discrete site: sum it out exactly by marking it for enumeration (decorate the guide with "
                "pyro.infer.config_enumerate, or give the site infer={'enumerate': 'parallel'}; pyro_vae's ELBO and "
                "importance-weighted bounds then sum it per datapoint), or train it with a score-function objective "
                "such as pyro_vae.objectives.VIMCO"
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
