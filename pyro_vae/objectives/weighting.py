"""KL weighting for any objective: β-VAE, linear KL warm-up, free bits.

All three wrap another :class:`~pyro_vae.objectives.Objective` and compose with each other
(``KLWarmup(FreeBits(IWAE(8), 0.1), 10_000)`` works, in either order).

**β and warm-up** multiply the log-density of every *latent* sample site — in the model (log p(z))
and in the guide (log q(z|x)) — by β, with a Pyro handler (:func:`scale_latents`, the
latent-only counterpart of ``pyro.poutine.scale``); observed sites are untouched. For the ELBO
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
from typing import Any, Callable, NamedTuple

import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import Independent, kl_divergence

from ..traces import ParticleTraces, PlateError
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
        if msg["type"] == "sample" and not msg["is_observed"] and type(msg["fn"]).__name__ != "_Subsample":
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


# -- KL per latent site / group -------------------------------------------------------------------
class SiteKL(NamedTuple):
    """KL(q ‖ p) of one latent site, unscaled: ``kl`` has shape ``(K|1, B, G)`` for a site in the
    data plate (G groups: latent dims or 1) and ``(K|1, 1, G)`` for a global site."""

    name: str
    kl: torch.Tensor
    relative_scale: Any  # site scale / data scale: the β (and any user scale) on this site
    in_plate: bool
    method: str  # "analytic" or "monte carlo"


def _factorized(d: Any) -> tuple[Any, int] | None:
    n = 0
    while isinstance(d, Independent):
        n += d.reinterpreted_batch_ndims
        d = d.base_dist
    if tuple(d.event_shape) != ():
        return None
    return d, n


def latent_kl(traces: ParticleTraces, plate_name: str, analytic: bool = True, per_dim: bool = False) -> list[SiteKL]:
    """KL(q(z|x) ‖ p(z)) of every latent site of ``traces``, per datapoint and optionally per dimension.

    With ``per_dim=True`` each site's guide and prior must factorize over the latent dimensions
    (``Independent`` of a univariate distribution); otherwise ``NotImplementedError``.
    """
    out = []
    gt = traces.guide_trace
    for name, msite in traces.model_trace.nodes.items():
        if msite["type"] != "sample" or msite["is_observed"] or type(msite["fn"]).__name__ == "_Subsample":
            continue
        gsite = gt.nodes.get(name)
        if gsite is None:
            raise ValueError(f"latent site {name!r} of the model has no matching site in the guide")
        q, p, z = gsite["fn"], msite["fn"], gsite["value"]
        if per_dim:
            fq, fp = _factorized(q), _factorized(p)
            if fq is None or fp is None or fq[1] != fp[1]:
                raise NotImplementedError(
                    f"free bits per latent dimension needs a guide and prior that factorize over the dimensions "
                    f"of site {name!r} (Independent of a univariate family, e.g. Normal(...).to_event(1)), got "
                    f"{type(q).__name__} (guide) and {type(p).__name__} (prior). Fix: groups='site' clamps the "
                    "KL of the whole site instead"
                )
            (q, event), (p, _) = fq, fp
        else:
            event = len(q.event_shape)
        kl, method = None, "monte carlo"
        if analytic:
            try:
                kl, method = kl_divergence(q, p), "analytic"
            except NotImplementedError:
                kl = None
        if kl is None:
            kl = q.log_prob(z) - p.log_prob(z)
        if per_dim:
            kl = kl.reshape(*kl.shape[: kl.dim() - event], -1) if event else kl.unsqueeze(-1)
        else:
            kl = kl.unsqueeze(-1)
        kl, in_plate = _reduce(kl, gsite, traces, plate_name)
        out.append(SiteKL(name, kl, msite["scale"] / traces.data_scale, in_plate, method))
    return out


def _reduce(value: torch.Tensor, site: dict, traces: ParticleTraces, plate_name: str) -> tuple[torch.Tensor, bool]:
    """Sum a ``batch + (G,)`` tensor over every plate but the particle and data plates."""
    n = traces.num_dims
    nb = value.dim() - 1
    if nb > n:
        raise ValueError(
            f"site {site['name']!r} has more batch dims ({nb}) than its plates allow (max_plate_nesting="
            f"{traces.max_plate_nesting}); declare the missing plate or use .to_event()"
        )
    value = value.reshape((1,) * (n - nb) + tuple(value.shape))
    mask = site["mask"]
    if mask is not None and mask is not True:
        value = torch.where(torch.as_tensor(mask).unsqueeze(-1), value, value.new_zeros(()))
    data_dim = None
    for f in site["cond_indep_stack"]:
        if f.name == plate_name:
            data_dim = n + f.dim
    if data_dim is None:
        return value.sum(dim=tuple(range(1, n))).unsqueeze(1), False
    others = tuple(d for d in range(1, n) if d != data_dim)
    if others:
        value = value.sum(dim=others)
    return value, True


def kl_per_datapoint(site_kls: list[SiteKL], traces: ParticleTraces) -> torch.Tensor:
    """Total unweighted KL per datapoint (a global site counts 1/N per datapoint), detached."""
    total = torch.zeros(())
    n_total = traces.data_scale * traces.batch_size
    for s in site_kls:
        if s.in_plate:
            total = total + s.kl.sum(-1).mean(0).mean()
        else:
            total = total + s.kl.sum() / s.kl.shape[0] / n_total
    return total.detach()


# -- wrappers -----------------------------------------------------------------------------------------
class ObjectiveWrapper(Objective):
    """Base class of objectives that modify another objective.

    Implementing a new one:
        Override :meth:`_programs` to transform ``(model, guide)`` before tracing, and/or
        :meth:`_loss` (call ``self.objective._loss(traces)`` and modify its result). Particles,
        plate and ``max_plate_nesting`` are the wrapped objective's.
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

    def _programs(self, model: Callable, guide: Callable) -> tuple[Callable, Callable]:
        return model, guide

    def traces(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> ParticleTraces:  # noqa: D102
        model, guide = self._programs(model, guide)
        return self.objective.traces(model, guide, *args, **kwargs)

    def _loss(self, traces: ParticleTraces) -> tuple[torch.Tensor, Terms]:
        return self.objective._loss(traces)


def _default_elbo_parts(wrapper: ObjectiveWrapper, vae: Any, x: torch.Tensor,
                        num_data: int | None) -> tuple[float, torch.Tensor, torch.Tensor] | None:
    """``(N/B, Σ_b E_q log p(x_b|z), KL (B, L))`` from the ELBO's default-components branch when
    ``wrapper`` wraps a library :class:`~pyro_vae.objectives.ELBO` (or a subclass that changes
    only how it runs its networks) of a VAE with the default components; ``None`` otherwise
    (then the wrapper traces, with the same draws)."""
    from .elbo import ELBO

    inner = wrapper.objective
    cls = type(inner)
    if not isinstance(inner, ELBO) or any(
        getattr(cls, name) is not getattr(ELBO, name) for name in ("_loss", "_fast_loss", "_default_components_branch", "_kl")
    ):
        return None
    if num_data is not None and num_data < x.shape[0]:
        return None  # the data plate raises the error
    parts = inner._default_components_branch(vae, x, inner.num_particles)
    if parts is None:
        return None
    return (1.0 if num_data is None else num_data / x.shape[0]), parts[0], parts[1]


class _LatentScaled(ObjectiveWrapper):
    """Scales latent sites by :attr:`beta` (see the module docstring)."""

    def _fast_loss(self, vae: Any, x: torch.Tensor, num_data: int | None) -> tuple[torch.Tensor, Terms] | None:
        """N/B Σ_b (E_q log p(x_b|z) − β KL_b) without tracing, for a wrapped default-components ELBO."""
        parts = _default_elbo_parts(self, vae, x, num_data)
        if parts is None:
            return None  # trace (a warm-up counter has not advanced)
        scale, rec_sum, kl = parts
        beta = self._current_beta()  # advances KLWarmup's counter, as _programs does when tracing
        self.last_beta = beta
        kl_sum, B = kl.sum(), x.shape[0]
        bound_sum = scale * (rec_sum - beta * kl_sum)
        terms = Terms(bound=(bound_sum / (scale * B)).detach(), reconstruction=(rec_sum / B).detach(),
                      kl=(kl_sum / B).detach())
        return -bound_sum, terms

    @property
    def beta(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _current_beta(self) -> float:
        return self.beta

    def _programs(self, model, guide):  # noqa: D102
        beta = self._current_beta()
        self.last_beta = beta
        if beta == 1.0:
            return model, guide
        return LatentScaleMessenger(beta)(model), LatentScaleMessenger(beta)(guide)

    def _loss(self, traces):  # noqa: D102
        loss, terms = self.objective._loss(traces)
        kl = kl_per_datapoint(latent_kl(traces, self.plate_name, analytic=self.analytic_kl), traces)
        return loss, terms._replace(kl=kl)


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

    def _fast_loss(self, vae: Any, x: torch.Tensor, num_data: int | None) -> tuple[torch.Tensor, Terms] | None:
        """The ELBO loss plus N · Σ_j max(0, λ − KL̄_j) without tracing, for a wrapped
        default-components ELBO with closed-form KLs."""
        parts = _default_elbo_parts(self, vae, x, num_data) if self.analytic_kl else None
        if parts is None:
            return None
        scale, rec_sum, kl = parts
        B = x.shape[0]
        kl_sum = kl.sum()
        groups = kl if self.groups == "dim" else kl.sum(-1, keepdim=True)
        kl_bar = groups.mean(0)
        penalty = torch.clamp(self.threshold - kl_bar, min=0.0).sum()
        self.kl_sites["z"] = "analytic"
        self.last_group_kl = {"z": kl_bar.detach()}
        bound_sum = scale * (rec_sum - kl_sum)
        n_total = scale * B
        terms = Terms(bound=(bound_sum / n_total - penalty).detach(), reconstruction=(rec_sum / B).detach(),
                      kl=(kl_sum / B).detach())
        return -bound_sum + n_total * penalty, terms

    def _loss(self, traces):  # noqa: D102
        loss, terms = self.objective._loss(traces)
        penalty = torch.zeros(())
        group_kl = {}
        for s in latent_kl(traces, self.plate_name, analytic=self.analytic_kl, per_dim=self.groups == "dim"):
            if not s.in_plate:
                raise PlateError(
                    f"free bits needs per-datapoint KLs, but latent site {s.name!r} sits outside the "
                    f"{self.plate_name!r} plate. Fix: move it inside the data plate, or apply FreeBits only to "
                    "models whose latents are local"
                )
            self.kl_sites[s.name] = s.method
            kl_bar = s.kl.mean(dim=(0, 1))  # (G,): over particles and the minibatch
            group_kl[s.name] = kl_bar.detach()
            penalty = penalty + (s.relative_scale * torch.clamp(self.threshold - kl_bar, min=0.0)).sum()
        self.last_group_kl = group_kl
        n_total = traces.data_scale * traces.batch_size
        loss = loss + n_total * penalty
        return loss, terms._replace(bound=terms.bound - penalty.detach())


__all__ = [
    "BetaVAE",
    "KLWarmup",
    "FreeBits",
    "ObjectiveWrapper",
    "LatentScaleMessenger",
    "scale_latents",
    "latent_kl",
    "SiteKL",
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

