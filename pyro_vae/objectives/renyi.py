"""The variational Rényi bound, combined per datapoint."""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import log_mean_exp
from .iwae import ImportanceObjective, _check_count


class RenyiBound(ImportanceObjective):
    """Variational Rényi bound of order α with K particles, per datapoint:

        L_α(x) = 1/(1 − α) · log (1/K) Σ_k w_k^(1−α),   w_k = p(x, z_k) / q(z_k | x).

    α = 0 is IWAE-K; α → 1 is the ELBO (use :class:`~pyro_vae.objectives.ELBO`; α = 1 itself is
    an error). For 0 ≤ α < 1 it is a lower bound on log p(x) that loosens as α grows; α < 0 gives
    values that can exceed log p(x) (not a lower bound). The gradient is the reparameterized one,
    Σ_k ŵ_k ∇ log w_k with ŵ_k ∝ w_k^(1−α).

    Unlike ``pyro.infer.RenyiELBO`` the weights are combined per datapoint (RenyiELBO does so only
    when every sample site sits in the data plate, and scales the weights by N/B under
    subsampling), and there is a ``differentiable_loss``.

    Args:
        alpha: order α ≠ 1 (finite).
        num_particles: K ≥ 1 (vectorized).

    Example:
        >>> import pyro_vae as pv
        >>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)),
        ...              pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
        >>> loss = pv.objectives.RenyiBound(alpha=0.5, num_particles=5).loss(vae.model, vae.guide, torch.zeros(3, 4))

    References:
        Li, Turner (2016). Rényi divergence variational inference. NeurIPS.
    """

    def __init__(self, alpha: float, num_particles: int = 1, **kwargs: Any) -> None:
        alpha = float(alpha)
        if alpha == 1.0:
            raise ValueError(
                "RenyiBound(alpha=1) is the ELBO, where the formula divides by 1 - alpha = 0; "
                "use pyro_vae.objectives.ELBO for alpha = 1"
            )
        if not math.isfinite(alpha):
            raise ValueError(f"RenyiBound needs a finite alpha, got {alpha!r}")
        super().__init__(num_particles=_check_count("num_particles", num_particles), **kwargs)
        self.alpha = alpha

    def _combine(self, lw: torch.Tensor):  # noqa: D102
        s = (1.0 - self.alpha) * lw
        bound = log_mean_exp(s, dim=0) / (1.0 - self.alpha)
        c = torch.softmax(s, dim=0)
        return bound, c, c


__all__ = ["RenyiBound"]
