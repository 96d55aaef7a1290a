"""Importance-weighted bounds, combined per datapoint: IWAE, MIWAE, CIWAE, PIWAE.

For a datapoint x_b and K particles z_kb ~ q(z | x_b) the log importance weights are
log w_kb = log p(x_b, z_kb) − log q(z_kb | x_b) (:attr:`pyro_vae.program.Particles.log_weights`), and

    IWAE-K(x_b) = log (1/K) Σ_k w_kb                       (Burda et al. 2016)

Every bound here is a :class:`pyro_vae.objectives.Objective`: ``loss`` / ``differentiable_loss``
return −(N/B) Σ_b bound_b for a minibatch of B out of N datapoints, particles are vectorized,
and ``SVI(model, guide, optim, loss=IWAE(...))`` or ``IWAE(...)(model, guide)`` both work.

Gradient estimators
-------------------
Write A_k = log p_θ(x, z_k) (the model), Q_k = log q_φ(z_k | x) (the guide) and w̃_k the
normalized weights. Every estimator here is a choice of two detached coefficient tensors:

* ``c_model`` weights the gradient of A_k along its *explicit* dependence on parameters
  (decoder, prior — and the encoder too when a VampPrior uses it);
* ``c_sample`` weights the gradient along the *sample path* z_k = z_φ(ε_k) and the explicit
  dependence of log q.

When the two coincide the surrogate is simply Σ_k c_k (A_k − Q_k) (standard, STL). When they
differ (DReG, PIWAE) the surrogate is

    Σ c_sample (A − Q) + D − Σ_sites ⟨∂D/∂z, z⟩,      D = Σ (c_model − c_sample) A,

where ∂D/∂z is taken with ``torch.autograd.grad`` and detached: its sample-path gradient
cancels, so parameters reached through z get the ``c_sample`` gradient and parameters reached
through the model's own computation get the ``c_model`` gradient — without knowing which
parameters belong to the encoder or decoder, for any model/guide pair. The cost is one extra
backward pass from the model's log-density to z.

Sticking the landing (STL) and DReG need log q with the guide's distribution parameters
stopped, log q_φ̄(z). This module rebuilds each guide site's distribution with its tensors
detached (:func:`stop_parameters`) — no second guide pass, any guide callable. That is exact
when the distribution's parameters are plain tensors (Normal, Independent, MultivariateNormal,
LowRankMultivariateNormal, Gamma, StudentT, Laplace, LogNormal and other parameter-free
transforms of those, ...). Two cases cannot be handled this way and raise
``NotImplementedError`` with the fix (use ``gradient="standard"``):

* parameters held inside ``nn.Module`` s of the distribution (normalizing-flow transforms such as
  :class:`pyro_vae.encoders.IAFEncoder`), which detaching tensors cannot reach; and
* hierarchical guides, where one latent's distribution depends on another latent's sample:
  stopping the parameters would also cut the upstream sample path, and the routing above
  would count it twice.

These estimators also assume the guide does not use model parameters (z does not depend
on θ), which holds for amortized encoders.

Speed
-----
Every bound here is written once, in :meth:`ImportanceObjective._loss`, on the
:class:`~pyro_vae.program.Particles` record of the call; the record of a plain
:class:`~pyro_vae.VAE` comes from its components without tracing
(:func:`~pyro_vae.program.from_vae`, the same draws as the traced path), and the components
carry the fast kernels (:mod:`pyro_vae._kernels`). For routed estimators (DReG, PIWAE) the
routing D − ⟨∂D/∂z, z⟩ is replaced, when the record says the model's densities act on each
particle and datapoint separately (``particles.row_wise``: a decoder whose network is declared
row-wise, see :func:`pyro_vae.program.rows_independent`), by a gradient hook on the model's copy
of z that rescales ∂/∂z of each particle's log p by c_sample / c_model — the same gradient
without the extra backward pass. Other programs keep the exact routing.
"""

from __future__ import annotations

from typing import Any

import torch

from ..program import EnumeratedParticles, FlatBranches, Particles, stop_parameters
from .base import Objective, Terms, log_mean_exp

#: gradient estimators of the importance-weighted bounds
GRADIENTS = ("standard", "stl", "dreg")


def _route(D: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
    """D − Σ ⟨∂D/∂z, z⟩: keeps D's gradient along explicit parameter paths, cancels it along z."""
    values = [v for v in values if v.requires_grad]
    if not (D.requires_grad and values):
        return D
    grads = torch.autograd.grad(D, values, retain_graph=True, allow_unused=True)
    correction = sum((g * v).sum() for g, v in zip(grads, values) if g is not None)
    return D - correction


# -- the family's base class ----------------------------------------------------------------------
class ImportanceObjective(Objective):
    """Base class of bounds built from per-datapoint importance weights.

    Implementing a new one:
        Override :meth:`_combine`: given detached ``(K, B)`` log weights return the per-datapoint
        bound ``(B,)`` and the detached coefficients ``(c_model, c_sample)``, each ``(K, B)``,
        such that the gradient estimate is Σ c_model ∇_explicit log p + Σ c_sample ∇_path (log p −
        log q) (return the same tensor twice for an ordinary Σ c ∇ log w). Set ``_stop_q`` when
        the sample-path part uses log q with stopped parameters (STL, DReG).

    :attr:`last_log_weights` keeps the detached ``(K, B)`` log weights of the last call.
    """

    _stop_q: bool = False
    #: is the bound a function of sums of weights within groups of whole particles (IWAE, MIWAE,
    #: PIWAE)? Then an enumerated site's branches are flattened into particles (see _enumerated_loss)
    sums_weights: bool = False

    def __init__(self, num_particles: int = 1, **kwargs: Any) -> None:
        super().__init__(num_particles=num_particles, **kwargs)
        self.last_log_weights: torch.Tensor | None = None

    def _combine(self, logw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _check_particles(self, particles: Particles) -> None:
        """Hook for shape checks (e.g. particles = num_outer · num_inner)."""

    def _loss(self, particles: Particles | EnumeratedParticles) -> tuple[torch.Tensor, Terms]:
        if particles.enumerated:
            return self._enumerated_loss(particles)
        return self._weights_loss(particles)

    def _weights_loss(self, particles: Particles | FlatBranches) -> tuple[torch.Tensor, Terms]:
        self._check_particles(particles)
        particles.require_local()
        who = type(self).__name__
        grad = torch.is_grad_enabled()
        log_p = particles.log_lik + particles.log_prior
        if self._stop_q and grad:
            # log q at stopped parameters has the value of log q: compute it once
            log_q_s = particles.stopped_log_q(who)
            log_q = log_q_s.detach()
        else:
            log_q = log_q_s = particles.log_q
        logw = log_p - log_q
        lw = logw.detach()
        self.last_log_weights = lw
        bound, c_model, c_sample = self._combine(lw)
        surrogate = torch.zeros((), dtype=lw.dtype, device=lw.device)
        if grad and (log_p.requires_grad or log_q_s.requires_grad):
            routed = c_model is not c_sample
            if self._stop_q or routed:
                particles.check_single_level(who)
            if not routed:
                surrogate = (c_sample * (log_p - log_q_s)).sum()
            else:
                ratio = _routing_ratio(c_model, c_sample) if particles.row_wise else None
                if ratio is not None:
                    # explicit parameters of log p get c_model; the sample path gets
                    # c_model · ratio = c_sample through the hook on the model's copy of z
                    for z_p in particles.model_samples:
                        r = ratio.reshape(ratio.shape + (1,) * (z_p.dim() - ratio.dim()))
                        z_p.register_hook(lambda g, r=r: g * r)
                    surrogate = (c_model * log_p).sum() - (c_sample * log_q_s).sum()
                else:
                    surrogate = (c_sample * (log_p - log_q_s)).sum()
                    surrogate = surrogate + _route(((c_model - c_sample) * log_p).sum(), particles.samples)
        loss = -particles.data_scale * (bound.sum() + (surrogate - surrogate.detach()))
        terms = Terms(
            bound=bound.mean().detach(),
            reconstruction=particles.log_lik.detach().mean(),
            kl=(log_q - particles.log_prior).detach().mean(),
        )
        return loss, terms


    def _enumerated_loss(self, particles: EnumeratedParticles) -> tuple[torch.Tensor, Terms]:
        """The bound on log w_k = log Σ_c p(x, y_c, z_kc) / q(z_kc | x, y_c) (y summed exactly).

        A bound on sums of weights within groups of particles (:attr:`sums_weights`: IWAE, MIWAE,
        PIWAE) is the same bound on the ``K·C`` flattened branches (:meth:`EnumeratedParticles.flattened`),
        so every gradient estimator of :meth:`_loss` applies (STL, DReG, PIWAE's split). The others
        (CIWAE, Rényi) combine log w_k itself, with the standard gradient Σ_k c_k ∇ log w_k."""
        who = type(self).__name__
        if self.sums_weights:
            loss, flat_terms = self._weights_loss(particles.flattened())
            self.last_log_weights = particles.log_weights.detach()
            bound = flat_terms.bound
        else:
            self._check_particles(particles)
            particles.require_local()
            logw = particles.log_weights
            lw = logw.detach()
            bound, c_model, c_sample = self._combine(lw)
            if self._stop_q or c_model is not c_sample:
                raise NotImplementedError(
                    f"{who} with gradient={getattr(self, 'gradient', '?')!r} on a program whose guide enumerates "
                    f"{particles.names}: its bound combines log Σ_y w (not a sum of weights), for which the "
                    "stopped-parameter estimator is not derived. Fix: gradient='standard', or IWAE / MIWAE / PIWAE "
                    "(any gradient), or sample the discrete site instead of enumerating it"
                )
            self.last_log_weights = lw
            surrogate = (c_sample * logw).sum() if torch.is_grad_enabled() and logw.requires_grad else lw.new_zeros(())
            loss = -particles.data_scale * (bound.sum() + (surrogate - surrogate.detach()))
            bound = bound.mean().detach()
        with torch.no_grad():
            q = particles.q_enum().mean(1)  # (C, B)
            rec = sum(q[c] * b.log_lik.mean(0) for c, b in enumerate(particles.branches))
            terms = Terms(bound=bound, reconstruction=rec.mean(), kl=rec.mean() - bound)
        return loss, terms


def _routing_ratio(c_model: torch.Tensor, c_sample: torch.Tensor) -> torch.Tensor | None:
    """c_sample / c_model where defined (0 where both are 0); ``None`` if some c_model is 0
    where c_sample is not (then the hook cannot route, and the exact routing runs)."""
    pos = c_model > 0
    if not bool((pos | (c_sample == 0)).all()):
        return None
    return torch.where(pos, c_sample / torch.where(pos, c_model, torch.ones_like(c_model)), torch.zeros_like(c_model))


def _check_gradient(gradient: str, allowed: tuple[str, ...] = GRADIENTS) -> str:
    if gradient not in allowed:
        raise ValueError(f"gradient must be one of {allowed}, got {gradient!r}")
    return gradient


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _grouped(lw: torch.Tensor, num_outer: int, squared: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MIWAE bound (1/M) Σ_m log (1/K) Σ_k w_mk and its coefficients (w̃ normalized within groups)."""
    MK, B = lw.shape
    g = lw.reshape(num_outer, MK // num_outer, B)
    bound = log_mean_exp(g, dim=1).mean(0)
    wn = torch.softmax(g, dim=1)
    c = (wn / num_outer).reshape(MK, B)
    c2 = (wn.square() / num_outer).reshape(MK, B) if squared else c
    return bound, c, c2


class MIWAE(ImportanceObjective):
    """Multiply importance-weighted bound: the mean of ``num_outer`` independent IWAE bounds of
    ``num_inner`` particles each,

        MIWAE(x) = (1/M) Σ_m log (1/K) Σ_k w_mk,

    computed with M·K vectorized particles. M = 1 is IWAE-K; K = 1 is the ELBO with M particles.

    Args:
        num_outer: M ≥ 1.
        num_inner: K ≥ 1.
        gradient: ``"standard"`` (reparameterized gradient of the bound), ``"stl"`` (sticking
            the landing: log q with stopped parameters) or ``"dreg"`` (doubly reparameterized,
            per group). See the module docstring for how they are built and their limits.
        num_particles: optional; if given must equal ``num_outer * num_inner``.

    References:
        Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh (2018). Tighter variational bounds are
        not necessarily better. ICML.
    """

    sums_weights = True  # (IWAE and PIWAE too): groups of whole particles, weights summed

    def __init__(
        self,
        num_outer: int,
        num_inner: int,
        gradient: str = "standard",
        num_particles: int | None = None,
        **kwargs: Any,
    ) -> None:
        M, K = _check_count("num_outer", num_outer), _check_count("num_inner", num_inner)
        if num_particles is not None and num_particles != M * K:
            raise ValueError(
                f"num_particles={num_particles!r} but num_outer * num_inner = {M} * {K} = {M * K}; "
                "omit num_particles (it is num_outer * num_inner)"
            )
        super().__init__(num_particles=M * K, **kwargs)
        self.num_outer, self.num_inner = M, K
        self.gradient = _check_gradient(gradient)
        self._stop_q = gradient in ("stl", "dreg")

    def _check_particles(self, particles: Particles) -> None:
        if particles.num_particles != self.num_outer * self.num_inner:
            raise ValueError(
                f"{type(self).__name__} got {particles.num_particles} particles but num_outer * num_inner = "
                f"{self.num_outer} * {self.num_inner}; do not change num_particles after construction "
                "(build a new objective instead)"
            )

    def _combine(self, lw):  # noqa: D102
        bound, c, c2 = _grouped(lw, self.num_outer, squared=self.gradient == "dreg")
        return bound, c, c2


class IWAE(MIWAE):
    """Importance-weighted bound with K particles, per datapoint:

        IWAE-K(x) = log (1/K) Σ_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x).

    IWAE-1 is the (Monte Carlo KL) ELBO; the bound increases with K towards log p(x).

    Args:
        num_particles: K ≥ 1 (vectorized).
        gradient: ``"standard"`` — Σ_k w̃_k ∇ log w_k (Burda et al.); ``"stl"`` — sticking the
            landing, the same with log q evaluated at stopped parameters so only the sample path
            carries the encoder gradient (Roeder et al.; with K = 1 it is STL for the ELBO);
            ``"dreg"`` — doubly reparameterized: the encoder gets Σ_k w̃_k² ∂log w̃_k/∂z_k ∂z_k/∂φ
            (stopped-parameter log q), the decoder and prior the standard Σ_k w̃_k ∇_θ log w_k
            (Tucker et al.). STL and DReG gradients vanish when the guide is the exact posterior.
            For K > 1 the STL gradient is biased for the IWAE bound (Tucker et al. 2019, §3;
            ``tests/test_objectives.py`` measures the bias); DReG is unbiased.

    Example:
        >>> import pyro_vae as pv
        >>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)),
        ...              pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
        >>> iwae = pv.objectives.IWAE(num_particles=8, gradient="dreg")
        >>> loss = iwae(vae.model, vae.guide)(torch.zeros(3, 4))
        >>> loss.backward()

    References:
        Burda, Grosse, Salakhutdinov (2016). Importance weighted autoencoders. ICLR.
        Roeder, Wu, Duvenaud (2017). Sticking the landing: simple, lower-variance gradient
        estimators for variational inference. NeurIPS.
        Tucker, Lawson, Gu, Maddison (2019). Doubly reparameterized gradient estimators for Monte
        Carlo objectives. ICLR.
    """

    def __init__(self, num_particles: int = 1, gradient: str = "standard", **kwargs: Any) -> None:
        K = _check_count("num_particles", num_particles)
        super().__init__(num_outer=1, num_inner=K, gradient=gradient, **kwargs)


class CIWAE(ImportanceObjective):
    """Combination of the ELBO and IWAE on the same K particles:

        CIWAE_β(x) = β · (1/K) Σ_k log w_k + (1 − β) · log (1/K) Σ_k w_k,   0 ≤ β ≤ 1.

    β = 1 is the (Monte Carlo KL) ELBO with K particles, β = 0 is IWAE-K.

    Args:
        beta: mixing weight β in [0, 1] of the ELBO term (not a KL weight; for β-VAE see
            :class:`pyro_vae.objectives.BetaVAE`).
        num_particles: K ≥ 1.
        gradient: ``"standard"`` or ``"stl"`` (log q at stopped parameters).

    References:
        Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh (2018). Tighter variational bounds are
        not necessarily better. ICML.
    """

    def __init__(self, beta: float, num_particles: int = 1, gradient: str = "standard", **kwargs: Any) -> None:
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"CIWAE beta must lie in [0, 1] (beta=1: ELBO, beta=0: IWAE), got {beta!r}")
        super().__init__(num_particles=_check_count("num_particles", num_particles), **kwargs)
        self.beta = float(beta)
        self.gradient = _check_gradient(gradient, ("standard", "stl"))
        self._stop_q = gradient == "stl"

    def _combine(self, lw):  # noqa: D102
        K = lw.shape[0]
        bound = self.beta * lw.mean(0) + (1.0 - self.beta) * log_mean_exp(lw, dim=0)
        c = self.beta / K + (1.0 - self.beta) * torch.softmax(lw, dim=0)
        return bound, c, c


class PIWAE(MIWAE):
    """Partially importance-weighted autoencoder: one set of M·K particles, two bounds.

    The decoder and prior (every explicit parameter dependence of log p) get the gradient of
    IWAE-(M·K); the encoder (the sample path z and log q) gets the gradient of MIWAE(M, K), whose
    signal-to-noise ratio for the encoder does not vanish as K grows. The reported value (loss and
    ``last_terms.bound``) is IWAE-(M·K). The split is by gradient path, not by parameter list, so
    any model/guide pair works; see the module docstring for the surrogate.

    Args:
        num_outer: M ≥ 1.
        num_inner: K ≥ 1.
        encoder_gradient: estimator of the encoder's MIWAE gradient: ``"standard"`` (as in the
            paper), ``"stl"`` or ``"dreg"``.
        num_particles: optional; if given must equal ``num_outer * num_inner``.

    References:
        Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh (2018). Tighter variational bounds are
        not necessarily better. ICML.
    """

    def __init__(
        self,
        num_outer: int,
        num_inner: int,
        encoder_gradient: str = "standard",
        num_particles: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_outer, num_inner, gradient=encoder_gradient, num_particles=num_particles, **kwargs)
        self.encoder_gradient = self.gradient

    def _combine(self, lw):  # noqa: D102
        _, _, c_sample = _grouped(lw, self.num_outer, squared=self.gradient == "dreg")
        bound = log_mean_exp(lw, dim=0)
        c_model = torch.softmax(lw, dim=0)
        return bound, c_model, c_sample


__all__ = [
    "GRADIENTS",
    "ImportanceObjective",
    "IWAE",
    "MIWAE",
    "CIWAE",
    "PIWAE",
    "stop_parameters",
]
