"""Priors p(z): modules whose ``forward()`` returns a distribution with event shape ``(latent_dim,)``.

Which one should I use?

* :class:`StandardNormalPrior` — the default; the KL to a diagonal-Normal guide is closed form.
* :class:`DiagonalGaussianPrior` — a learnable location and scale; still closed-form KL.
* :class:`MixtureGaussianPrior` — multi-modal latent spaces (clusters); Monte Carlo KL.
* :class:`VampPrior` — the aggregate posterior approximated by the encoder at learned
  pseudo-inputs (Tomczak & Welling 2018); usually the best log-likelihood; Monte Carlo KL.
* :class:`FlowPrior` — a normalizing flow on a standard Normal (masked autoregressive,
  density evaluation in one pass); Monte Carlo KL.

Implementing a new one:
    Subclass :class:`Prior`, call ``super().__init__(latent_dim)`` and override
    :meth:`Prior.forward` to return a ``pyro.distributions`` distribution with
    ``batch_shape == ()`` and ``event_shape == (latent_dim,)``. Nothing else is needed: the
    contract test (``tests/test_components.py``) picks it up from one registry line.
"""

from __future__ import annotations

from typing import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from ..distributions import UniformMixture


class Prior(nn.Module):
    """Base class of priors: ``forward() -> p(z)`` with event shape ``(latent_dim,)``."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
        self.latent_dim = int(latent_dim)

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self) -> dist.TorchDistribution:
        """Build the distribution once and verify its shapes (called by :class:`~pyro_vae.VAE`)."""
        d = self()
        if tuple(d.event_shape) != (self.latent_dim,) or tuple(d.batch_shape) != ():
            raise ValueError(
                f"{type(self).__name__}.forward() returned batch_shape={tuple(d.batch_shape)}, "
                f"event_shape={tuple(d.event_shape)}; a prior must have batch_shape=() and "
                f"event_shape=({self.latent_dim},) — use .to_event(1) on a per-dimension distribution"
            )
        return d


class StandardNormalPrior(Prior):
    """p(z) = N(0, I).

    Example:
        >>> StandardNormalPrior(2)().log_prob(torch.zeros(2)).item()  # doctest: +ELLIPSIS
        -1.837...
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(self.latent_dim))
        self.register_buffer("scale", torch.ones(self.latent_dim))

    def forward(self) -> dist.TorchDistribution:  # noqa: D102
        # constant buffers: nothing for argument validation to check on every call
        return dist.Normal(self.loc, self.scale, validate_args=False).to_event(1)


class DiagonalGaussianPrior(Prior):
    """p(z) = N(μ, diag σ²) with learnable μ and log σ, initialised at N(0, I)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(self.latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(self.latent_dim))

    def forward(self) -> dist.TorchDistribution:  # noqa: D102
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)


class MixtureGaussianPrior(Prior):
    """p(z) = Σ_k π_k N(μ_k, diag σ_k²) with learnable weights, means and scales.

    Means start spread as N(0, I) draws from a fixed generator (seed 0), scales at 1.
    """

    def __init__(self, latent_dim: int, num_components: int = 10) -> None:
        super().__init__(latent_dim)
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        g = torch.Generator().manual_seed(0)
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, self.latent_dim, generator=g))
        self.log_scales = nn.Parameter(torch.zeros(num_components, self.latent_dim))

    def forward(self) -> dist.TorchDistribution:  # noqa: D102
        comps = dist.Normal(self.locs, self.log_scales.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), comps)


class VampPrior(Prior):
    """Variational mixture of posteriors: p(z) = (1/K) Σ_k q(z | u_k) over learned pseudo-inputs u_k.

    Built by reconfiguring the encoder: its output at the pseudo-inputs is the set of mixture
    components, so any :class:`~pyro_vae.encoders.Encoder` works (diagonal, low-rank, flow).
    Pseudo-inputs are stored unconstrained and squashed to (0, 1) by a sigmoid when
    ``unit_interval`` (image data in [0, 1]).

    References:
        Tomczak, Welling (2018). VAE with a VampPrior. AISTATS.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_pseudo_inputs: int = 500,
        init: torch.Tensor | None = None,
        unit_interval: bool = True,
    ) -> None:
        super().__init__(encoder.latent_dim)
        if num_pseudo_inputs < 1:
            raise ValueError(f"num_pseudo_inputs must be >= 1, got {num_pseudo_inputs}")
        self.encoder = encoder
        self.unit_interval = unit_interval
        x_dim = encoder.x_dim
        if init is None:
            g = torch.Generator().manual_seed(0)
            init = 0.5 + 0.01 * torch.randn(num_pseudo_inputs, x_dim, generator=g)
        if init.shape != (num_pseudo_inputs, x_dim):
            raise ValueError(f"init must have shape ({num_pseudo_inputs}, {x_dim}), got {tuple(init.shape)}")
        if unit_interval:
            init = torch.logit(init.clamp(1e-3, 1 - 1e-3))
        self.pseudo_inputs = nn.Parameter(init.clone().float())

    def inputs(self) -> torch.Tensor:
        """The pseudo-inputs on the data scale."""
        return torch.sigmoid(self.pseudo_inputs) if self.unit_interval else self.pseudo_inputs

    def forward(self) -> dist.TorchDistribution:  # noqa: D102
        return UniformMixture(self.encoder(self.inputs()))


class FlowPrior(Prior):
    """A normalizing-flow prior: z = f(u), u ~ N(0, I), f a stack of masked autoregressive flows.

    The flows run in the density direction (MAF): ``log p(z)`` costs one network pass per
    flow, sampling costs ``latent_dim`` passes (only used for generation).

    References:
        Papamakarios, Pavlakou, Murray (2017). Masked Autoregressive Flow. NeurIPS.
    """

    def __init__(self, latent_dim: int, num_flows: int = 2, hidden: Sequence[int] | None = None) -> None:
        super().__init__(latent_dim)
        if num_flows < 1:
            raise ValueError(f"num_flows must be >= 1, got {num_flows}")
        hidden_dims = list(hidden) if hidden is not None else [max(4 * self.latent_dim, 16)]
        self.register_buffer("loc", torch.zeros(self.latent_dim))
        self.register_buffer("scale", torch.ones(self.latent_dim))
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(0)  # deterministic MADE masks and weights, whatever the caller's seed
        try:
            self.flows = nn.ModuleList(
                T.affine_autoregressive(self.latent_dim, hidden_dims=hidden_dims) for _ in range(num_flows)
            )
        finally:
            torch.random.set_rng_state(torch_state)

    def forward(self) -> dist.TorchDistribution:  # noqa: D102
        base = dist.Normal(self.loc, self.scale).to_event(1)
        for f in self.flows:
            # The transforms cache their last (input, output) pair keyed on tensor identity; it was
            # computed with the parameters of an earlier call (stale after an optimizer step or
            # load_state_dict, and its graph may be freed), so each distribution starts empty.
            f._cached_x_y = (None, None)
        # .inv: each MADE evaluates the density direction in one pass.
        return dist.TransformedDistribution(base, [f.inv for f in self.flows])


__all__ = [
    "Prior",
    "StandardNormalPrior",
    "DiagonalGaussianPrior",
    "MixtureGaussianPrior",
    "VampPrior",
    "FlowPrior",
]
