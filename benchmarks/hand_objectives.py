"""Hand-written PyTorch versions of every objective in :mod:`pyro_vae.objectives`: the baselines of
the benchmark section ``objectives``.

Plain tensor code on a :class:`benchmarks.models.HandVAE` (no Pyro, no ``torch.distributions``),
written the cheapest correct way we know. Each loss returns what the library's
``objective.differentiable_loss(vae.model, vae.guide, x, num_data=N)`` returns for a minibatch of B
out of N datapoints, −(N/B) Σ_b bound_b, and its gradient is the library's estimator:

* STL: IWAE-K with log q evaluated at stopped encoder outputs (``HandVAE._log_w(stop_q=True)``);
* MIWAE(M, K): M·K particles reshaped outer-major to (M, K, B), the mean over m of IWAE-K;
* PIWAE(M, K): the value of IWAE-(M·K); the decoder gets its gradient, the encoder the MIWAE(M, K)
  gradient — one backward pass, a gradient hook on z rescaling each particle's ∂log p/∂z from the
  IWAE weight to the MIWAE weight (as ``HandVAE.dreg_loss`` routes DReG);
* CIWAE(β, K): β·(1/K) Σ_k log w_k + (1 − β)·IWAE-K;
* Rényi(α, K): log (1/K) Σ_k w_k^(1−α) / (1 − α);
* β-VAE, KL warm-up, free bits: the single-sample ELBO with the closed-form KL (``HandVAE.elbo``),
  the KL weighted by β, weighted by a linearly ramped β, or clamped per latent dimension at its
  minibatch mean (−N · (mean_b log p(x_b|z_b) − Σ_j max(λ, KL̄_j))).

Random numbers: every loss draws ε with ``torch.randn((P, B, L))`` (``randn_like`` for the
single-sample ELBO) and sets z = μ + σ·ε — the numbers, in the same order, of the library's
``q.rsample((P,))`` (``empty(P, B, L).normal_()``), so seeded calls agree
(``tests/test_hand_objectives.py`` checks loss and gradients of every case in :data:`CASES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from benchmarks.models import HandVAE
from pyro_vae.objectives import CIWAE, ELBO, IWAE, MIWAE, PIWAE, BetaVAE, FreeBits, KLWarmup, Objective, RenyiBound


def _scale(x: torch.Tensor, num_data: int) -> float:
    return num_data / x.shape[0]


# -- importance-weighted bounds -------------------------------------------------------------------------
def stl_loss(m: HandVAE, x: torch.Tensor, K: int, num_data: int) -> torch.Tensor:
    """IWAE-K with the sticking-the-landing gradient: Σ_k w̃_k ∇(log p − log q_φ̄)."""
    _, lw = m._log_w(x, K, stop_q=True)
    return -_scale(x, num_data) * (torch.logsumexp(lw, 0) - math.log(K)).sum()


def miwae_loss(m: HandVAE, x: torch.Tensor, M: int, K: int, num_data: int) -> torch.Tensor:
    """MIWAE(M, K) = (1/M) Σ_m log (1/K) Σ_k w_mk, standard gradient."""
    _, lw = m._log_w(x, M * K, stop_q=False)
    g = lw.view(M, K, -1)  # outer-major, as the library's reshape
    return -_scale(x, num_data) * (torch.logsumexp(g, 1) - math.log(K)).mean(0).sum()


def piwae_loss(m: HandVAE, x: torch.Tensor, M: int, K: int, num_data: int) -> torch.Tensor:
    """Value IWAE-(M·K); decoder gradient of IWAE-(M·K), encoder gradient of MIWAE(M, K).

    Surrogate Σ c_iwae · log p − Σ c_miwae · log q with a hook on z that multiplies each particle's
    gradient by c_miwae / c_iwae = Σ_all w / (M · Σ_group w) (the same for every particle of a
    group; computed in log space). Exact unless a particle's IWAE weight underflows to 0 while its
    MIWAE weight does not (a whole group ~87 nats, in float32, below the best particle), where the
    library falls back to exact routing with a second backward pass.
    """
    loc, scale = m.encode(x)
    B = x.shape[0]
    eps = torch.randn((M * K, *loc.shape), dtype=loc.dtype)
    z = loc + scale * eps
    log_p = m.log_px(m.decoder(z), x) - 0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
    log_q = (-0.5 * (eps.pow(2) + math.log(2 * math.pi)) - scale.log()).sum(-1)  # total derivative, as _log_w
    lw = (log_p - log_q).detach()
    lse_all = torch.logsumexp(lw, 0)  # (B,)
    lse_in = torch.logsumexp(lw.view(M, K, B), 1)  # (M, B)
    c_iwae = (lw - lse_all).exp()
    c_miwae = ((lw.view(M, K, B) - lse_in.unsqueeze(1)).exp() / M).view(M * K, B)
    r = (lse_all - lse_in - math.log(M)).exp().view(M, 1, B, 1)
    z.register_hook(lambda g: (g.reshape(M, K, B, -1) * r).view_as(g))
    bound = lse_all - math.log(M * K)
    surrogate = (c_iwae * log_p).sum() - (c_miwae * log_q).sum()
    return -_scale(x, num_data) * (bound.sum() + surrogate - surrogate.detach())


def ciwae_loss(m: HandVAE, x: torch.Tensor, beta: float, K: int, num_data: int) -> torch.Tensor:
    """CIWAE_β = β · (1/K) Σ_k log w_k + (1 − β) · IWAE-K, standard gradient."""
    _, lw = m._log_w(x, K, stop_q=False)
    bound = beta * lw.mean(0) + (1.0 - beta) * (torch.logsumexp(lw, 0) - math.log(K))
    return -_scale(x, num_data) * bound.sum()


def renyi_loss(m: HandVAE, x: torch.Tensor, alpha: float, K: int, num_data: int) -> torch.Tensor:
    """Variational Rényi bound L_α = log (1/K) Σ_k w_k^(1−α) / (1 − α), reparameterized gradient."""
    _, lw = m._log_w(x, K, stop_q=False)
    bound = (torch.logsumexp((1.0 - alpha) * lw, 0) - math.log(K)) / (1.0 - alpha)
    return -_scale(x, num_data) * bound.sum()


# -- KL weighting of the ELBO -----------------------------------------------------------------------------
def _elbo_terms(m: HandVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x_b | z_b) (B,) at one draw and the closed-form KL per latent dimension (B, L)."""
    loc, scale = m.encode(x)
    z = loc + scale * torch.randn_like(loc)
    kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1.0) - scale.log()
    return m.log_px(m.decoder(z), x), kl


def beta_elbo_loss(m: HandVAE, x: torch.Tensor, beta: float, num_data: int) -> torch.Tensor:
    """−(N/B) Σ_b (log p(x_b|z_b) − β KL_b): the β-weighted ELBO."""
    rec, kl = _elbo_terms(m, x)
    return -_scale(x, num_data) * (rec.sum() - beta * kl.sum())


def free_bits_loss(m: HandVAE, x: torch.Tensor, threshold: float, num_data: int) -> torch.Tensor:
    """−N · (mean_b log p(x_b|z_b) − Σ_j max(λ, KL̄_j)), KL̄_j the minibatch mean of dimension j's KL."""
    rec, kl = _elbo_terms(m, x)
    return -num_data * (rec.mean() - kl.mean(0).clamp(min=threshold).sum())


class KLWarmupLoss:
    """β-ELBO with β = min(t, W) / W on the call with counter t; the counter advances on every call
    with gradients enabled (as :class:`pyro_vae.objectives.KLWarmup` with its defaults)."""

    def __init__(self, m: HandVAE, warmup_steps: int, num_data: int) -> None:
        self.m, self.warmup_steps, self.num_data = m, warmup_steps, num_data
        self.step = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        beta = min(self.step, self.warmup_steps) / self.warmup_steps
        if torch.is_grad_enabled():
            self.step += 1
        return beta_elbo_loss(self.m, x, beta, self.num_data)


# -- the benchmarked settings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One benchmarked objective: the library's, and its hand-written counterpart."""

    label: str  # how the library objective is built
    hand_label: str  # the hand-written baseline
    library: Callable[[], Objective]
    hand: Callable[[HandVAE, int], Callable[[torch.Tensor], torch.Tensor]]  # (model, N) -> loss(x)
    quick: bool = False  # also run with --quick


WARMUP_STEPS = 10_000
FREE_BITS = 0.25

CASES: tuple[Case, ...] = (
    Case('IWAE(50, gradient="stl")', "IWAE-50, log q at stopped μ, σ",
         lambda: IWAE(50, gradient="stl"), lambda m, N: lambda x: stl_loss(m, x, 50, N), quick=True),
    Case("MIWAE(num_outer=5, num_inner=10)", "MIWAE(5, 10)",
         lambda: MIWAE(num_outer=5, num_inner=10), lambda m, N: lambda x: miwae_loss(m, x, 5, 10, N)),
    Case("PIWAE(num_outer=5, num_inner=10)", "PIWAE(5, 10), gradient hook on z",
         lambda: PIWAE(num_outer=5, num_inner=10), lambda m, N: lambda x: piwae_loss(m, x, 5, 10, N), quick=True),
    Case("CIWAE(beta=0.5, num_particles=50)", "CIWAE(0.5, 50)",
         lambda: CIWAE(beta=0.5, num_particles=50), lambda m, N: lambda x: ciwae_loss(m, x, 0.5, 50, N)),
    Case("RenyiBound(alpha=0.5, num_particles=50)", "Rényi bound (0.5, 50)",
         lambda: RenyiBound(alpha=0.5, num_particles=50), lambda m, N: lambda x: renyi_loss(m, x, 0.5, 50, N)),
    Case("BetaVAE(ELBO(), beta=4)", "ELBO, closed-form KL × 4",
         lambda: BetaVAE(ELBO(), beta=4.0), lambda m, N: lambda x: beta_elbo_loss(m, x, 4.0, N), quick=True),
    Case(f"KLWarmup(ELBO(), warmup_steps={WARMUP_STEPS})", "ELBO, closed-form KL × min(t, W)/W",
         lambda: KLWarmup(ELBO(), warmup_steps=WARMUP_STEPS), lambda m, N: KLWarmupLoss(m, WARMUP_STEPS, N)),
    Case(f"FreeBits(ELBO(), threshold={FREE_BITS})", f"ELBO, per-dimension KL̄ clamped at {FREE_BITS}",
         lambda: FreeBits(ELBO(), threshold=FREE_BITS), lambda m, N: lambda x: free_bits_loss(m, x, FREE_BITS, N),
         quick=True),
)

__all__ = [
    "stl_loss",
    "miwae_loss",
    "piwae_loss",
    "ciwae_loss",
    "renyi_loss",
    "beta_elbo_loss",
    "free_bits_loss",
    "KLWarmupLoss",
    "Case",
    "CASES",
]
