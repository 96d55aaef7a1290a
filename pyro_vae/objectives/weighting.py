"""KL weighting for any objective: β-VAE, linear KL warm-up, free bits.

All three wrap another :class:`~pyro_vae.objectives.Objective` and compose with each other
(``KLWarmup(FreeBits(IWAE(8), 0.1), 10_000)`` works, in either order).

**β and warm-up** multiply the log-density of every *latent* sample site — in the model (log p(z))
and in the guide (log q(z|x)) — by β (on the call's :class:`~pyro_vae.program.Particles` record,
:meth:`~pyro_vae.program.Particles.scale_latents`; for Pyro's own ELBOs the handler
:func:`scale_latents` does the same, the latent-only counterpart of ``pyro.poutine.scale``);
observed sites are untouched. For the ELBO
this is exact: E_q[log p(x|z)] − β KL(q ‖ p), with the closed-form KL where registered. For
importance-weighted bounds (IWAE, MIWAE, Rényi, ...) β scales log p(z) − log q(z|x) *inside*
each weight, log w_k = log p(x|z_k) + β (log p(z_k) − log q(z_k|x)); for β ≠ 1 that is no longer
a bound on log p(x), and for K > 1 it is not the ELBO's "β · KL" either. The bound reported in
``last_terms.bound`` is the weighted objective's value; ``last_terms.kl`` is the *unweighted*
KL(q ‖ p) per datapoint, so logs stay comparable during warm-up.

**Free bits** (Kingma et al. 2016) replaces each latent group's KL by max(λ, KL̄_j), where KL̄_j
is that group's KL averaged over the minibatch (and the particles). As a wrapper it subtracts
N · Σ_j β_j · max(0, λ − KL̄_j) from the wrapped objective, which for the ELBO is exactly

    N · ( mean_b E_q[log p(x_b|z)] − Σ_j β_j max(λ, KL̄_j) ),

so groups below λ nats stop receiving the KL's gradient. For other objectives the same
correction is added (the groups' KL gradient is cancelled below λ); it is the free-bits
objective of the ELBO, transplanted. Groups are latent dimensions (``groups="dim"``, needs a
factorized guide and prior at the site: ``Independent`` of a univariate family, e.g.
``Normal(...).to_event(1)``) or whole latent sites (``groups="site"``, any family). The KL is
closed-form where ``kl_divergence`` is registered (``analytic_kl=True``) and Monte Carlo
(log q − log p at the particles) otherwise; :attr:`FreeBits.kl_sites` records which.

References:
    Higgins, Matthey, Pal, Burgess, Glorot, Botvinick, Mohamed, Lerchner (2017). β-VAE:
    learning basic visual concepts with a constrained variational framework. ICLR.
    Bowman, Vilnis, Vinyals, Dai, Jozefowicz, Bengio (2016). Generating sentences from a
    continuous space. CoNLL. (KL annealing)
    Sønderby, Raiko, Maaløe, Sønderby, Winther (2016). Ladder variational autoencoders. NeurIPS.
    (warm-up)
    Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling (2016). Improved variational inference
    with inverse autoregressive flow. NeurIPS. (free bits)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from pyro.poutine.messenger import Messenger

from ..program import Particles, ParticleTraces, PlateError, is_latent, latent_kl
from .base import Objective, Terms


# -- the handler ------------------------------------------------------------------------------------
class LatentScaleMessenger(Messenger):
    """Multiply the ``scale`` of every latent (non-observed) sample site by ``beta``.

    Like ``pyro.poutine.scale`` but leaves observed sites alone, and allows β = 0 (the start of a
    warm-up)."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: Any) -> None:
        if is_latent(msg):
            msg["scale"] = self.beta * msg["scale"]


def scale_latents(fn: Callable, beta: float) -> Callable:
    """``fn`` (a model or guide) with the log-density of its latent sites multiplied by ``beta``.

    Applied to both model and guide it turns any ELBO into the β-ELBO, E_q[log p(x|z)] − β KL;
    this is what :class:`BetaVAE` and :class:`KLWarmup` do, and it works with Pyro's own ELBOs too.
    """
    beta = _check_beta(beta)
    return LatentScaleMessenger(beta)(fn)


def _check_beta(beta: float, name: str = "beta") -> float:
    beta = float(beta)
    if not (math.isfinite(beta) and beta >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {beta!r}")
    return beta


def kl_per_datapoint(particles: Particles, analytic: bool) -> torch.Tensor:
    """Total unweighted KL(q ‖ p) per datapoint (a global site counts 1/N per datapoint), detached."""
    total = torch.zeros(())
    n_total = particles.data_scale * particles.batch_size
    for site in particles.latents:
        if site.p is None:
            continue
        kl, _ = latent_kl(site, analytic=analytic)
        if site.in_plate:
            total = total + kl.mean()
        else:
            total = total + kl.sum() / kl.shape[0] / n_total
    return total.detach()


def _inner_beta(objective: Objective) -> float:
    """The product of the β's that wrappers inside ``objective`` applied in their last call."""
    beta = 1.0
    for _ in range(16):
        if objective is None:
            break
        beta *= float(getattr(objective, "last_beta", 1.0))
        objective = getattr(objective, "objective", None)
    return beta


# -- wrappers -----------------------------------------------------------------------------------------
class ObjectiveWrapper(Objective):
    """Base class of objectives that modify another objective.

    Implementing a new one:
        Override :meth:`_loss`: transform the :class:`~pyro_vae.program.Particles` record and/or
        call ``self.objective._loss(particles)`` and modify its result. Particles, plate and
        ``max_plate_nesting`` are the wrapped objective's.
    """

    def __init__(self, objective: Objective) -> None:
        if not isinstance(objective, Objective):
            raise TypeError(
                f"{type(self).__name__} wraps a pyro_vae objective (ELBO, IWAE, RenyiBound, ...), got "
                f"{type(objective).__name__}. For Pyro's own ELBOs apply pyro_vae.objectives.scale_latents "
                "to the model and guide instead"
            )
        super().__init__(num_particles=objective.num_particles, plate_name=objective.plate_name)
        self.objective = objective
        self.requires_rsample = objective.requires_rsample

    @property
    def analytic_kl(self) -> bool:
        """Whether the wrapped objective uses closed-form KLs (its ``analytic_kl``, else False)."""
        return bool(getattr(self.objective, "analytic_kl", False))

    def traces(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> ParticleTraces:  # noqa: D102
        return self.objective.traces(model, guide, *args, **kwargs)

    def particles(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Particles:  # noqa: D102
        if not self.use_fast_path:
            return self.objective.traced(model, guide, *args, **kwargs)
        return self.objective.particles(model, guide, *args, **kwargs)

    def _loss(self, particles: Particles) -> tuple[torch.Tensor, Terms]:
        return self.objective._loss(particles)


class _LatentScaled(ObjectiveWrapper):
    """Scales latent sites by :attr:`beta` (see the module docstring)."""

    @property
    def beta(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _current_beta(self) -> float:
        return self.beta

    def _loss(self, particles: Particles) -> tuple[torch.Tensor, Terms]:  # noqa: D102
        beta = self._current_beta()
        self.last_beta = beta
        loss, terms = self.objective._loss(particles if beta == 1.0 else particles.scale_latents(beta))
        return loss, terms._replace(kl=kl_per_datapoint(particles, analytic=self.analytic_kl))


class BetaVAE(_LatentScaled):
    """The wrapped objective with latent log-densities weighted by a constant β.

    For the ELBO: E_q[log p(x|z)] − β KL(q ‖ p) (β > 1 is the β-VAE; β < 1 favours reconstruction).
    For IWAE-type bounds β scales log p(z) − log q(z|x) inside each importance weight (see the
    module docstring).

    Example:
        >>> import pyro_vae as pv
        >>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)),
        ...              pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
        >>> objective = pv.objectives.BetaVAE(pv.objectives.ELBO(), beta=4.0)
        >>> loss = objective.loss(vae.model, vae.guide, torch.zeros(3, 4))

    References:
        Higgins et al. (2017). β-VAE: learning basic visual concepts with a constrained
        variational framework. ICLR.
    """

    def __init__(self, objective: Objective, beta: float) -> None:
        super().__init__(objective)
        self._beta = _check_beta(beta)

    @property
    def beta(self) -> float:
        """The constant KL weight β."""
        return self._beta


class KLWarmup(_LatentScaled):
    """The wrapped objective with a KL weight β that ramps linearly from ``beta_start`` to
    ``beta_end`` over ``warmup_steps`` training calls, then stays at ``beta_end``.

    The step counter advances once per evaluation with gradients enabled (every ``SVI.step``,
    every training forward of ``objective(model, guide)``); ``loss`` and evaluations under
    ``torch.no_grad()`` do not advance it. :meth:`set_step` sets it (e.g. when resuming). The call
    with counter t uses β = beta_start + (beta_end − beta_start) · min(t, W) / W.

    Example:
        >>> import pyro_vae as pv
        >>> objective = pv.objectives.KLWarmup(pv.objectives.ELBO(), warmup_steps=1000)
        >>> objective.set_step(250); objective.beta
        0.25

    References:
        Bowman et al. (2016). Generating sentences from a continuous space. CoNLL.
        Sønderby et al. (2016). Ladder variational autoencoders. NeurIPS.
    """

    def __init__(
        self, objective: Objective, warmup_steps: int, beta_start: float = 0.0, beta_end: float = 1.0
    ) -> None:
        super().__init__(objective)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be an integer >= 1, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.beta_start = _check_beta(beta_start, "beta_start")
        self.beta_end = _check_beta(beta_end, "beta_end")
        self.step = 0

    @property
    def beta(self) -> float:
        """β at the current step."""
        t = min(self.step, self.warmup_steps) / self.warmup_steps
        return self.beta_start + (self.beta_end - self.beta_start) * t

    def set_step(self, step: int) -> None:
        """Set the step counter (≥ 0)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        self.step = step

    def _current_beta(self) -> float:
        beta = self.beta
        if torch.is_grad_enabled():
            self.step += 1
        return beta


class FreeBits(ObjectiveWrapper):
    """Free bits: each latent group's minibatch-averaged KL counts as at least ``threshold`` nats.

    Subtracts N · Σ_j β_j · max(0, λ − KL̄_j) from the wrapped objective (β_j: the KL weight on the
    group's site, 1 unless wrapped in :class:`BetaVAE` / :class:`KLWarmup`), see the module
    docstring. ``last_terms.bound`` includes the correction; :attr:`last_group_kl` holds KL̄ per
    group of the last call and :attr:`kl_sites` whether each site's KL was analytic.

    Args:
        objective: the objective to modify.
        threshold: λ ≥ 0, in nats per group.
        groups: ``"dim"`` (each latent dimension; factorized guide and prior) or ``"site"``.
        analytic_kl: closed-form KL where registered; ``None`` follows the wrapped objective's
            ``analytic_kl`` (True when it has none, e.g. IWAE).

    Example:
        >>> import pyro_vae as pv
        >>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)),
        ...              pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
        >>> objective = pv.objectives.FreeBits(pv.objectives.ELBO(), threshold=0.25)
        >>> loss = objective.loss(vae.model, vae.guide, torch.zeros(3, 4))
        >>> objective.last_group_kl["z"].shape
        torch.Size([2])

    References:
        Kingma et al. (2016). Improved variational inference with inverse autoregressive flow.
        NeurIPS.
    """

    def __init__(
        self, objective: Objective, threshold: float, groups: str = "dim", analytic_kl: bool | None = None
    ) -> None:
        super().__init__(objective)
        self.threshold = _check_beta(threshold, "threshold")
        if groups not in ("dim", "site"):
            raise ValueError(
                f"groups must be 'dim' (each latent dimension) or 'site' (each latent site), got {groups!r}"
            )
        self.groups = groups
        self._analytic = analytic_kl
        self.kl_sites: dict[str, str] = {}
        self.last_group_kl: dict[str, torch.Tensor] = {}

    @property
    def analytic_kl(self) -> bool:  # noqa: D102
        if self._analytic is not None:
            return bool(self._analytic)
        return bool(getattr(self.objective, "analytic_kl", True))

    def _loss(self, particles: Particles) -> tuple[torch.Tensor, Terms]:  # noqa: D102
        if particles.enumerated:
            raise NotImplementedError(
                f"FreeBits on a program whose guide enumerates {particles.names}: a free-bits floor per latent group "
                "is not defined for a KL summed over enumerated values. Fix: apply FreeBits to the continuous "
                "latents of a program without enumerated sites, or use BetaVAE / KLWarmup"
            )
        for site in particles.latents:  # refuse before any work
            if site.p is not None and not site.in_plate:
                raise PlateError(
                    f"free bits needs per-datapoint KLs, but latent site {site.name!r} sits outside the "
                    f"{self.plate_name!r} plate. Fix: move it inside the data plate, or apply FreeBits only to "
                    "models whose latents are local"
                )
        loss, terms = self.objective._loss(particles)
        beta = particles.beta * _inner_beta(self.objective)  # the KL weight on each group's site
        # per site: Σ over its entries (particles run one at a time give one entry per particle)
        kls, scales = {}, {}
        for site in particles.latents:
            if site.p is None:
                continue
            kl, method = latent_kl(site, analytic=self.analytic_kl, per_dim=self.groups == "dim")
            if self.groups == "site":
                kl = kl.unsqueeze(-1)
            self.kl_sites[site.name] = "analytic" if method == "analytic" else "monte carlo"
            kl = kl.expand(particles.num_particles, particles.batch_size, kl.shape[-1])
            kls[site.name] = kl if site.name not in kls else kls[site.name] + kl
            scales[site.name] = site.p_scale
        penalty = torch.zeros(())
        group_kl = {}
        for name, kl in kls.items():
            kl_bar = kl.mean(dim=(0, 1))
            group_kl[name] = kl_bar.detach()
            penalty = penalty + (beta * scales[name] * torch.clamp(self.threshold - kl_bar, min=0.0)).sum()
        self.last_group_kl = group_kl
        n_total = particles.data_scale * particles.batch_size
        loss = loss + n_total * penalty
        return loss, terms._replace(bound=terms.bound - penalty.detach())


__all__ = [
    "BetaVAE",
    "KLWarmup",
    "FreeBits",
    "ObjectiveWrapper",
    "LatentScaleMessenger",
    "scale_latents",
]


def find_warmup(objective: Any) -> "KLWarmup | None":
    """The :class:`KLWarmup` inside (possibly nested) objective wrappers, or ``None``.

    Trainers checkpoint its step so a resumed warm-up continues where it stopped.
    """
    for _ in range(16):
        if objective is None:
            return None
        if isinstance(objective, KLWarmup):
            return objective
        objective = getattr(objective, "objective", None)
    return None

