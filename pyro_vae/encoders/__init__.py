"""Encoders q_φ(z|x): the amortized guide's family. ``forward(x)`` returns a distribution with
``batch_shape == x.shape[:-1]`` and ``event_shape == (latent_dim,)``; samples are
reparameterized (``rsample``), z = μ_φ(x) + σ_φ(x) ⊙ ε for the Gaussian ones.

Which one should I use?

* :class:`DiagNormalEncoder` — the default; closed-form KL against Gaussian priors; fastest.
* :class:`LowRankNormalEncoder` — correlated posteriors at O(D·r) cost (Monte Carlo KL
  against a diagonal prior).
* :class:`IAFEncoder` — a diagonal Normal followed by conditional inverse autoregressive
  flows (Kingma et al. 2016): flexible, non-Gaussian posteriors; Monte Carlo KL.

All take ``input_scale``: the network sees ``x * input_scale`` (use ``1/255`` for 8-bit
integer pixels, so the likelihood scores raw counts while the network sees [0, 1]).

Implementing a new one:
    Subclass :class:`Encoder`, call ``super().__init__(x_dim, latent_dim)`` and override
    :meth:`Encoder.forward`. Shape checks live in :meth:`Encoder.check`; reuse
    :func:`pyro_vae.nn.backbone` for the network body.
"""

from __future__ import annotations

from typing import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.infer.util import is_validation_enabled
from torch import nn

from .._typing import Activation, Hidden
from ..nn import backbone

_MIN_SCALE = 1e-5


class Encoder(nn.Module):
    """Base class of encoders: ``forward(x) -> q(z|x)``."""

    def __init__(self, x_dim: int, latent_dim: int) -> None:
        super().__init__()
        if int(x_dim) < 1 or int(latent_dim) < 1:
            raise ValueError(f"x_dim and latent_dim must be positive, got {x_dim}, {latent_dim}")
        self.x_dim = int(x_dim)
        self.latent_dim = int(latent_dim)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, x: torch.Tensor) -> dist.TorchDistribution:
        """Run once on ``x`` and verify the distribution's shapes."""
        if x.shape[-1] != self.x_dim:
            raise ValueError(
                f"{type(self).__name__} expects x_dim={self.x_dim} features, got {x.shape[-1]}"
            )
        d = self(x)
        if tuple(d.batch_shape) != tuple(x.shape[:-1]) or tuple(d.event_shape) != (self.latent_dim,):
            raise ValueError(
                f"{type(self).__name__}.forward returned batch_shape={tuple(d.batch_shape)}, "
                f"event_shape={tuple(d.event_shape)}; expected {tuple(x.shape[:-1])} and ({self.latent_dim},)"
            )
        return d


def _check_not_nan(encoder: nn.Module, heads: torch.Tensor) -> None:
    """Raise, as Pyro's argument validation of ``Normal`` would, if the encoder's heads hold NaN
    (infinite values pass, as they pass the ``Real()`` constraint; the loss then says it)."""
    if bool(torch.isnan(heads).any()):
        raise ValueError(
            f"{type(encoder).__name__} returned NaN parameters (in loc or log-scale): expected them to satisfy "
            "the constraint Real(). The weights or the input diverged; lower the learning rate, clip gradients "
            "(grad_clip) or check the data"
        )


class _GaussianHeads(Encoder):
    """Shared body for Gaussian encoders: x -> features -> (loc, log_scale, extra)."""

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        hidden: Hidden,
        act: Activation,
        network: str,
        image_shape: Sequence[int] | None,
        extra: int,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__(x_dim, latent_dim)
        self.hidden = tuple(hidden)
        self.input_scale = float(input_scale)
        self.net = backbone(network, self.x_dim, 2 * self.latent_dim + extra, self.hidden, act, image_shape, "encode")

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(x if self.input_scale == 1.0 else x * self.input_scale)
        d = self.latent_dim
        return out[..., :d], out[..., d : 2 * d], out[..., 2 * d :]


class DiagNormalEncoder(_GaussianHeads):
    """q(z|x) = N(μ(x), diag σ(x)²), σ = exp(log σ) + 1e-5.

    Example:
        >>> enc = DiagNormalEncoder(784, 50, hidden=(400,))
        >>> enc(torch.rand(8, 784)).rsample().shape
        torch.Size([8, 50])
    """

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        hidden: Hidden = (400,),
        activation: Activation = "softplus",
        network: str = "mlp",
        image_shape: Sequence[int] | None = None,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__(x_dim, latent_dim, hidden, activation, network, image_shape, extra=0, input_scale=input_scale)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:  # noqa: D102
        out = self.net(x if self.input_scale == 1.0 else x * self.input_scale)
        if is_validation_enabled():  # one check of both heads instead of Normal's two constraint checks
            _check_not_nan(self, out)
        d = self.latent_dim
        return dist.Normal(out[..., :d], out[..., d:].exp() + _MIN_SCALE, validate_args=False).to_event(1)


class LowRankNormalEncoder(_GaussianHeads):
    """q(z|x) = N(μ(x), W(x) W(x)ᵀ + diag σ(x)²) with W of rank ``rank``."""

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        rank: int = 2,
        hidden: Hidden = (400,),
        activation: Activation = "softplus",
        network: str = "mlp",
        image_shape: Sequence[int] | None = None,
        input_scale: float = 1.0,
    ) -> None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.rank = int(rank)
        super().__init__(x_dim, latent_dim, hidden, activation, network, image_shape, extra=latent_dim * rank,
                         input_scale=input_scale)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:  # noqa: D102
        loc, log_scale, w = self._heads(x)
        cov_factor = 0.1 * w.reshape(*w.shape[:-1], self.latent_dim, self.rank)
        cov_diag = (log_scale.exp() + _MIN_SCALE) ** 2
        return dist.LowRankMultivariateNormal(loc, cov_factor, cov_diag)


class IAFEncoder(_GaussianHeads):
    """A diagonal Normal followed by ``num_flows`` conditional inverse autoregressive flows.

    The encoder network emits (μ, log σ, h); each flow is a conditional affine autoregressive
    transform of z given the context h (Pyro's ``ConditionalAffineAutoregressive``), so sampling
    and the density of the samples both cost one pass per flow.

    References:
        Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling (2016). Improved variational
        inference with inverse autoregressive flow. NeurIPS.
    """

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        hidden: Hidden = (400,),
        activation: Activation = "softplus",
        network: str = "mlp",
        image_shape: Sequence[int] | None = None,
        num_flows: int = 2,
        context_dim: int = 32,
        flow_hidden: Sequence[int] | None = None,
        input_scale: float = 1.0,
    ) -> None:
        if num_flows < 1:
            raise ValueError(f"num_flows must be >= 1, got {num_flows}")
        super().__init__(x_dim, latent_dim, hidden, activation, network, image_shape, extra=context_dim,
                         input_scale=input_scale)
        fh = list(flow_hidden) if flow_hidden is not None else [max(2 * latent_dim, 16)]
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(0)  # deterministic MADE masks
        try:
            self.flows = nn.ModuleList(
                T.conditional_affine_autoregressive(self.latent_dim, context_dim, hidden_dims=fh)
                for _ in range(num_flows)
            )
        finally:
            torch.random.set_rng_state(torch_state)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:  # noqa: D102
        loc, log_scale, h = self._heads(x)
        base = dist.Normal(loc, log_scale.exp() + _MIN_SCALE).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(h) for f in self.flows])


__all__ = ["Encoder", "DiagNormalEncoder", "LowRankNormalEncoder", "IAFEncoder"]
