"""Distributions that Pyro does not ship but VAEs need.

* :class:`UniformMixture` — an equally weighted mixture of the ``K`` batch members of *any*
  distribution (used by the VampPrior, whose components may be flows or low-rank Gaussians).
* :class:`DiscretizedLogistic` — the 8-bit image likelihood of PixelCNN++ / IAF-VAE.
* :class:`BernoulliLogits` — ``Bernoulli(logits).to_event(1)`` whose ``log_prob`` is one fused
  kernel (:func:`pyro_vae._kernels.bernoulli_log_prob`); what
  :class:`~pyro_vae.decoders.BernoulliDecoder` returns.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

from . import _kernels


class BernoulliLogits(dist.Independent):
    """Independent Bernoulli pixels ``Bernoulli(logits=l).to_event(1)`` with a fused log-density.

    Everything but ``log_prob`` is Pyro's ``Independent(Bernoulli)``; ``log_prob(x)`` is
    Σ_d x_d·l_d − softplus(l_d) computed by one autograd node
    (:func:`pyro_vae._kernels.bernoulli_log_prob`), equal to the unfused value to float rounding.
    Build it with :meth:`from_logits`.

    Example:
        >>> l, x = torch.randn(3, 5), torch.bernoulli(torch.full((3, 5), 0.5))
        >>> d = BernoulliLogits.from_logits(l)
        >>> bool(torch.allclose(d.log_prob(x), dist.Bernoulli(logits=l).to_event(1).log_prob(x), atol=1e-5))
        True
    """

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> "BernoulliLogits":
        """The distribution with these logits (last dim: the event)."""
        return cls(dist.Bernoulli(logits=logits, validate_args=False), 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:  # noqa: D102
        base = self.base_dist
        if self.reinterpreted_batch_ndims == 1 and "logits" in vars(base):
            return _kernels.bernoulli_log_prob(base.logits, value)
        return super().log_prob(value)


class UniformMixture(dist.TorchDistribution):
    """Equal-weight mixture over the rightmost batch dimension of ``components``.

    ``log p(z) = logsumexp_k log q_k(z) - log K``. Sampling picks a component uniformly,
    then samples it (not reparameterized: a mixture's component choice is discrete).

    Example:
        >>> comps = dist.Normal(torch.tensor([[-1.0], [1.0]]), 1.0).to_event(1)
        >>> UniformMixture(comps).log_prob(torch.zeros(1)).shape
        torch.Size([])
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, components: dist.TorchDistribution, validate_args: bool | None = None):
        if len(components.batch_shape) < 1:
            raise ValueError("UniformMixture needs components with at least one batch dimension")
        self.components = components
        self.num_components = components.batch_shape[-1]
        super().__init__(components.batch_shape[:-1], components.event_shape, validate_args=False)

    @property
    def support(self):  # type: ignore[override]
        return self.components.support

    def expand(self, batch_shape, _instance=None):  # noqa: D102
        batch_shape = torch.Size(batch_shape)
        comps = self.components.expand(batch_shape + (self.num_components,))
        return UniformMixture(comps)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:  # noqa: D102
        # value: (..., event) -> (..., 1, event) so it broadcasts against the K components.
        ev = len(self.event_shape)
        v = value.unsqueeze(-1 - ev)
        # expand explicitly: conditional flows need the full batch shape to broadcast their context
        shape = torch.broadcast_shapes(v.shape[: v.dim() - ev], self.components.batch_shape)
        lp = self.components.log_prob(v.expand(shape + self.event_shape))
        return torch.logsumexp(lp, dim=-1) - math.log(self.num_components)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: D102
        with torch.no_grad():
            draws = self.components.sample(sample_shape)  # (*S, *B, K, *E)
            shape = sample_shape + self.batch_shape
            idx = torch.randint(self.num_components, shape, device=draws.device)
            ev = len(self.event_shape)
            idx = idx.reshape(shape + (1,) + (1,) * ev).expand(shape + (1,) + self.event_shape)
            return draws.gather(len(shape), idx).squeeze(len(shape))

    @property
    def mean(self) -> torch.Tensor:  # noqa: D102
        return self.components.mean.mean(-1 - len(self.event_shape))


class DiscretizedLogistic(dist.TorchDistribution):
    """Discretized logistic over the integers ``0..num_bins-1`` (Salimans et al. 2017).

    ``P(x) = σ((x + ½ - μ)/s) - σ((x - ½ - μ)/s)``, with the lowest bin taking all mass below
    and the highest all mass above. ``loc`` is on the integer scale.

    References:
        Salimans, Karpathy, Chen, Kingma (2017). PixelCNN++. ICLR.

    Example:
        >>> d = DiscretizedLogistic(torch.tensor([127.5]), torch.tensor([10.0]))
        >>> float(d.log_prob(torch.tensor([128.0])).exp()) > 0.02
        True
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, num_bins: int = 256, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.num_bins = num_bins
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    @property
    def support(self):  # type: ignore[override]
        return constraints.integer_interval(0, self.num_bins - 1)

    def expand(self, batch_shape, _instance=None):  # noqa: D102
        batch_shape = torch.Size(batch_shape)
        return DiscretizedLogistic(self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.num_bins)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self._validate_args:
            self._validate_sample(value)
        inv_s = 1.0 / self.scale
        centered = value - self.loc
        plus = (centered + 0.5) * inv_s
        minus = (centered - 0.5) * inv_s
        # σ(a) - σ(b) = σ(a) σ(-b) (1 - exp(b - a)) with b - a = -1/s: every factor is computed
        # to float precision in log space, in the body and in both tails (no underflow, no fallback).
        log_cdf_plus = F.logsigmoid(plus)
        log_one_minus_cdf_minus = -F.softplus(minus)
        mid = log_cdf_plus + F.logsigmoid(-minus) + torch.log(-torch.expm1(-inv_s))
        lo = value <= 0
        hi = value >= self.num_bins - 1
        return torch.where(lo, log_cdf_plus, torch.where(hi, log_one_minus_cdf_minus, mid))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: D102
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            x = self.loc + self.scale * (torch.log(u) - torch.log1p(-u))
            return x.round().clamp(0, self.num_bins - 1)

    @property
    def mean(self) -> torch.Tensor:  # noqa: D102
        return self.loc.clamp(0, self.num_bins - 1)


__all__ = ["BernoulliLogits", "UniformMixture", "DiscretizedLogistic"]
