"""Gradient signal-to-noise ratio: how much of a stochastic gradient is signal.

For a gradient estimator g (one call of a stochastic loss, differentiated), the per-element
SNR_i = |E g_i| / std g_i over repeated draws at fixed parameters (Rainforth et al. 2018).
:func:`gradient_snr` estimates it for any loss and parameter groups, :func:`vae_gradient_snr`
for a VAE's encoder / decoder / prior under an objective, and :class:`GradientMoments` keeps
the streaming moments for other summaries than the mean over elements.

Example:
    >>> import pyro_vae as pv
    >>> snr = pv.diagnostics.vae_gradient_snr(vae, pv.objectives.IWAE(10, gradient="dreg"),
    ...                                       x[:64], repeats=100)   # doctest: +SKIP
    >>> snr["encoder"], snr["decoder"]                              # doctest: +SKIP

References:
    Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh (2018). Tighter variational bounds are not
    necessarily better. ICML.
    Tucker, Lawson, Gu, Maddison (2019). Doubly reparameterized gradient estimators for Monte
    Carlo objectives. ICLR.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Callable, Mapping, Sequence

import pyro
import torch

from ..vae import VAE


class GradientMoments:
    """Streaming per-element mean and variance of repeated gradients (float64 sums).

    ``add(grads)`` takes one gradient sample (a list of tensors, one per parameter); :meth:`snr`
    returns |mean| / std per element (unbiased std, n − 1), flattened over the parameters.
    """

    def __init__(self) -> None:
        self.n = 0
        self._sum: list[torch.Tensor] = []
        self._sumsq: list[torch.Tensor] = []

    def add(self, grads: Sequence[torch.Tensor]) -> None:
        """Accumulate one gradient sample."""
        g64 = [g.detach().double().reshape(-1) for g in grads]
        if not self._sum:
            self._sum = [torch.zeros_like(g) for g in g64]
            self._sumsq = [torch.zeros_like(g) for g in g64]
        for s, s2, g in zip(self._sum, self._sumsq, g64):
            s.add_(g)
            s2.add_(g * g)
        self.n += 1

    def mean(self) -> torch.Tensor:
        """Per-element mean of the gradient samples (flattened)."""
        return torch.cat(self._sum) / self.n if self.n else torch.zeros(0, dtype=torch.float64)

    def std(self) -> torch.Tensor:
        """Per-element unbiased standard deviation (flattened)."""
        if self.n < 2:
            raise ValueError(f"a standard deviation needs at least 2 gradient samples, got {self.n}")
        s, s2 = torch.cat(self._sum), torch.cat(self._sumsq)
        var = (s2 - s * s / self.n) / (self.n - 1)
        return var.clamp_min(0.0).sqrt()

    def snr(self) -> torch.Tensor:
        """Per-element |mean| / std; elements whose gradient never varies (std = 0) are NaN."""
        m, sd = self.mean().abs(), self.std()
        out = m / sd
        return torch.where(sd > 0, out, torch.full_like(out, math.nan))


def summarize_snr(snr: torch.Tensor) -> float:
    """Mean over elements of a per-element SNR, ignoring NaN (zero-variance) elements."""
    ok = torch.isfinite(snr)
    return float(snr[ok].mean()) if bool(ok.any()) else math.nan


def gradient_snr(
    loss_fn: Callable[[], torch.Tensor],
    groups: Mapping[str, Sequence[torch.Tensor]],
    repeats: int,
) -> dict[str, float]:
    """Signal-to-noise ratio of a stochastic gradient, per parameter group (Rainforth et al. 2018).

    Calls ``loss_fn()`` ``repeats`` times at fixed parameters, differentiates each result with
    respect to every tensor of ``groups``, and returns per group the mean over parameter elements
    of SNR_i = |mean_r g_ri| / std_r g_ri (std with n − 1). Elements whose gradient has zero
    variance (std exactly 0) are left out of the mean. Nothing is updated.

    The estimate is itself noisy: an element whose true SNR is 0 contributes about
    √(2 / (π · repeats)) (the mean absolute value of the noise of the sample mean), so small
    SNRs read high when ``repeats`` is small.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> theta = torch.zeros(3, requires_grad=True)
        >>> loss = lambda: ((theta - 1.0) ** 2).sum() / 2 + (torch.randn(3) * theta).sum()
        >>> round(gradient_snr(loss, {"theta": [theta]}, repeats=4000)["theta"], 1)
        1.0
    """
    return {k: summarize_snr(m.snr()) for k, m in gradient_moments(loss_fn, groups, repeats).items()}


def gradient_moments(
    loss_fn: Callable[[], torch.Tensor],
    groups: Mapping[str, Sequence[torch.Tensor]],
    repeats: int,
) -> dict[str, GradientMoments]:
    """The repeated gradients behind :func:`gradient_snr`, per non-empty group, as
    :class:`GradientMoments` (for other summaries than its mean per-element SNR)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats must be an integer >= 2 (a standard deviation needs two samples), got {repeats!r}")
    names = [k for k, v in groups.items() if len(v) > 0]
    flat = [p for k in names for p in groups[k]]
    sizes = [len(groups[k]) for k in names]
    moments = {k: GradientMoments() for k in names}
    for _ in range(repeats):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, flat)]
        i = 0
        for k, n in zip(names, sizes):
            moments[k].add(grads[i : i + n])
            i += n
    return moments


def _groups(vae: VAE) -> dict[str, list[torch.Tensor]]:
    """Trainable parameters of a VAE by family: ``encoder``, ``decoder``, ``prior``."""
    out: dict[str, list[torch.Tensor]] = {"encoder": [], "decoder": [], "prior": []}
    for family, p in vae.component_parameters():
        if p.requires_grad:
            out[family].append(p)
    return out


def vae_gradient_snr(
    vae: VAE,
    objective: Any,
    x: torch.Tensor,
    repeats: int,
    num_data: int | None = None,
    seed: int = 0,
    batch_source: Callable[[], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Gradient SNR of ``objective`` for a VAE's encoder, decoder (and prior, if it has parameters).

    Each repeat evaluates ``objective.differentiable_loss(vae.model, vae.guide, xb, num_data=...)``
    on ``xb = x`` (the same minibatch every time: only the objective's Monte Carlo noise varies)
    or, with ``batch_source``, on a fresh minibatch ``batch_source()`` per repeat (data noise too).
    Pyro's RNG is seeded with ``seed`` first, so two estimators that draw their particles the same
    way see the same particles (common random numbers).
    """
    objective = copy.deepcopy(objective)  # e.g. a KL warm-up's step counter must not advance
    was_training = vae.training
    vae.eval()
    num_data = num_data if num_data is not None else x.shape[0]
    pyro.set_rng_seed(seed)

    def loss() -> torch.Tensor:
        xb = batch_source() if batch_source is not None else x
        return objective.differentiable_loss(vae.model, vae.guide, xb, num_data=max(num_data, xb.shape[0]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Monte Carlo KL notice: irrelevant here
        out = gradient_snr(loss, _groups(vae), repeats)
    vae.train(was_training)
    return out


__all__ = ["GradientMoments", "gradient_snr", "gradient_moments", "vae_gradient_snr", "summarize_snr"]
