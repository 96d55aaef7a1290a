"""Decoders p_θ(x|z): the likelihood's family. ``forward(z)`` returns a distribution with
``batch_shape == z.shape[:-1]`` and ``event_shape == (x_dim,)``.

Which one should I use?

==============================  ==========================================  ======================
decoder                          data                                        note
==============================  ==========================================  ======================
:class:`BernoulliDecoder`        binary pixels (binarize MNIST first)        logits; the classic
:class:`ContinuousBernoulliDecoder`  intensities in [0, 1]                   a proper density on [0,1]
:class:`GaussianDecoder`         real values                                 fixed or learned scale
:class:`DiscretizedLogisticDecoder`  8-bit integers 0..255                   bits/dim comparable
:class:`PoissonDecoder`          counts                                      log-rate head
:class:`NegativeBinomialDecoder` over-dispersed counts (single-cell, ...)    learned dispersion
==============================  ==========================================  ======================

A likelihood must match its data's support: :meth:`Decoder.check_data` refuses, before any
training, data outside it (a Bernoulli likelihood on grey-level pixels is not a likelihood).

Implementing a new one:
    Subclass :class:`Decoder`; call ``super().__init__(latent_dim, x_dim, ...)`` with
    ``num_params`` outputs per feature; override :meth:`Decoder.distribution` (turn the network
    output ``(…, x_dim, num_params)`` into a distribution with ``.to_event(1)``) and
    :meth:`Decoder.support_error` (return ``None`` for valid data, else a message naming the fix).
    A subclass that overrides ``forward`` and still treats each row (particle, datapoint) of
    ``z`` separately may declare ``row_wise = True`` in its class body; then the importance-
    weighted objectives may route DReG/PIWAE gradients with a cheap hook instead of an extra
    backward pass (an undeclared override gets the exact routing).
"""

from __future__ import annotations

from typing import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .._typing import Activation, Hidden
from ..data import DataError
from ..distributions import BernoulliLogits, DiscretizedLogistic
from ..nn import backbone


class Decoder(nn.Module):
    """Base class of decoders: ``forward(z) -> p(x|z)``.

    The network maps z to ``x_dim * num_params`` numbers; :meth:`distribution` turns the
    ``(…, x_dim, num_params)`` view of them into the likelihood.
    """

    #: one line naming the data this likelihood accepts; used in error messages
    support_name: str = "any real values"
    #: ``forward`` maps each row of z on its own (given a row-wise network); a subclass that
    #: overrides ``forward`` must declare it again (see :func:`pyro_vae.program.rows_independent`)
    row_wise: bool = True

    def __init__(
        self,
        latent_dim: int,
        x_dim: int,
        num_params: int = 1,
        hidden: Hidden = (400,),
        activation: Activation = "softplus",
        network: str = "mlp",
        image_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if int(x_dim) < 1 or int(latent_dim) < 1:
            raise ValueError(f"x_dim and latent_dim must be positive, got {x_dim}, {latent_dim}")
        self.latent_dim = int(latent_dim)
        self.x_dim = int(x_dim)
        self.num_params = int(num_params)
        self.hidden = tuple(hidden)
        self.net = backbone(network, self.latent_dim, self.x_dim * self.num_params, self.hidden, activation, image_shape, "decode")

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z) with batch shape ``z.shape[:-1]`` and event shape ``(x_dim,)``."""
        out = self.net(z)
        if self.num_params == 1:
            return self.distribution(out)
        if isinstance(self.net, nn.Sequential):  # MLP: parameters interleaved per feature
            return self.distribution(out.reshape(*out.shape[:-1], self.x_dim, self.num_params))
        # conv: one channel per parameter
        out = out.reshape(*out.shape[:-1], self.num_params, self.x_dim)
        return self.distribution(out.transpose(-1, -2))

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        """Turn network output into the likelihood (override)."""
        raise NotImplementedError

    def support_error(self, x: torch.Tensor) -> str | None:
        """``None`` if ``x`` lies in the likelihood's support, else what is wrong."""
        return None

    def check_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Raise :class:`~pyro_vae.data.DataError` if ``x`` cannot be scored by this likelihood."""
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise DataError(
                f"{name} has shape {tuple(x.shape)} but {type(self).__name__} expects (N, {self.x_dim}); "
                "flatten images to (N, features) or build the model with the data's x_dim"
            )
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise DataError(
                f"{name} contains {bad} NaN or infinite values, which no likelihood can score; "
                "drop or impute those rows first (x[torch.isfinite(x).all(dim=1)] or torch.nan_to_num(x))"
            )
        problem = self.support_error(x)
        if problem is not None:
            raise DataError(f"{name}: {problem}")


def _is_integer(x: torch.Tensor) -> bool:
    return bool(torch.all(x == torch.round(x)))


class BernoulliDecoder(Decoder):
    """p(x|z) = Π_d Bernoulli(x_d | σ(f_θ(z)_d)), parameterized by logits (numerically stable).

    Example:
        >>> dec = BernoulliDecoder(50, 784)
        >>> dec(torch.zeros(3, 50)).log_prob(torch.zeros(3, 784)).shape
        torch.Size([3])
    """

    support_name = "binary values {0, 1}"

    def __init__(self, latent_dim: int, x_dim: int, hidden: Hidden = (400,), activation: Activation = "softplus",
                 network: str = "mlp", image_shape: Sequence[int] | None = None) -> None:
        super().__init__(latent_dim, x_dim, 1, hidden, activation, network, image_shape)

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:  # noqa: D102
        return BernoulliLogits.from_logits(params)

    def support_error(self, x: torch.Tensor) -> str | None:  # noqa: D102
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            return (
                f"BernoulliDecoder needs binary data (0/1), but {int(bad.sum())} values are not 0 or 1 "
                f"(range {float(x.min()):g}..{float(x.max()):g}); a Bernoulli likelihood on grey levels is not a "
                "likelihood. Fix: binarize the data (binarize='dynamic' or 'static'; CLI --binarize dynamic), "
                "or use a continuous likelihood (decoder='continuous_bernoulli' or 'gaussian')"
            )
        return None


class ContinuousBernoulliDecoder(Decoder):
    """p(x|z) = Π_d CB(x_d | λ_d), the normalized continuous Bernoulli on [0, 1].

    References:
        Loaiza-Ganem, Cunningham (2019). The continuous Bernoulli. NeurIPS.
    """

    support_name = "values in [0, 1]"

    def __init__(self, latent_dim: int, x_dim: int, hidden: Hidden = (400,), activation: Activation = "softplus",
                 network: str = "mlp", image_shape: Sequence[int] | None = None) -> None:
        super().__init__(latent_dim, x_dim, 1, hidden, activation, network, image_shape)

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:  # noqa: D102
        return dist.ContinuousBernoulli(logits=params, validate_args=False).to_event(1)

    def support_error(self, x: torch.Tensor) -> str | None:  # noqa: D102
        if bool((x < 0).any() or (x > 1).any()):
            return (
                f"ContinuousBernoulliDecoder needs values in [0, 1], got range {float(x.min()):g}..{float(x.max()):g}. "
                "Fix: scale the data to [0, 1] (pixel_scale='unit'), or use decoder='gaussian'"
            )
        return None


class GaussianDecoder(Decoder):
    """p(x|z) = Π_d N(x_d | μ_θ(z)_d, σ_d²) with σ fixed (``scale=float``) or learned per feature
    (``scale=None``, initialised at 1)."""

    support_name = "real values"

    def __init__(self, latent_dim: int, x_dim: int, hidden: Hidden = (400,), activation: Activation = "softplus",
                 network: str = "mlp", image_shape: Sequence[int] | None = None, scale: float | None = None) -> None:
        super().__init__(latent_dim, x_dim, 1, hidden, activation, network, image_shape)
        if scale is None:
            self.log_scale = nn.Parameter(torch.zeros(self.x_dim))
        else:
            if not scale > 0:
                raise ValueError(f"GaussianDecoder scale must be positive, got {scale}")
            self.register_buffer("log_scale", torch.full((self.x_dim,), float(scale)).log())

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:  # noqa: D102
        return dist.Normal(params, self.log_scale.exp()).to_event(1)


class DiscretizedLogisticDecoder(Decoder):
    """p(x|z) = Π_d DiscretizedLogistic(x_d | μ_d, s_d) on the integers 0..255 (8-bit pixels).

    The network emits a location on the unit scale (times 255) and a log-scale per pixel.
    """

    support_name = "integers 0..255"

    def __init__(self, latent_dim: int, x_dim: int, hidden: Hidden = (400,), activation: Activation = "softplus",
                 network: str = "mlp", image_shape: Sequence[int] | None = None, num_bins: int = 256) -> None:
        super().__init__(latent_dim, x_dim, 2, hidden, activation, network, image_shape)
        self.num_bins = int(num_bins)

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:  # noqa: D102
        top = self.num_bins - 1
        loc = top * torch.sigmoid(params[..., 0])
        scale = F.softplus(params[..., 1] + 2.0) + 1e-2
        return DiscretizedLogistic(loc, scale, self.num_bins, validate_args=False).to_event(1)

    def support_error(self, x: torch.Tensor) -> str | None:  # noqa: D102
        top = self.num_bins - 1
        if bool((x < 0).any() or (x > top).any()) or not _is_integer(x):
            return (
                f"DiscretizedLogisticDecoder needs integers 0..{top}, got range {float(x.min()):g}..{float(x.max()):g}"
                f"{'' if _is_integer(x) else ' with non-integer values'}. Fix: load the data with "
                "pixel_scale='uint8' (CLI --pixel-scale uint8), or use decoder='continuous_bernoulli' for [0,1] data"
            )
        return None


class PoissonDecoder(Decoder):
    """p(x|z) = Π_d Poisson(x_d | exp(f_θ(z)_d)) for count data."""

    support_name = "non-negative integers"

    def __init__(self, latent_dim: int, x_dim: int, hidden: Hidden = (400,), activation: Activation = "softplus",
                 network: str = "mlp", image_shape: Sequence[int] | None = None) -> None:
        super().__init__(latent_dim, x_dim, 1, hidden, activation, network, image_shape)

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:  # noqa: D102
        return dist.Poisson(params.clamp(max=20.0).exp(), validate_args=False).to_event(1)

    def support_error(self, x: torch.Tensor) -> str | None:  # noqa: D102
        if bool((x < 0).any()) or not _is_integer(x):
            return (
                f"{type(self).__name__} needs non-negative integer counts, got range "
                f"{float(x.min()):g}..{float(x.max()):g}{'' if _is_integer(x) else ' with non-integer values'}. "
                "Fix: pass raw counts (pixel_scale='uint8' for images), or use decoder='gaussian' for real values"
            )
        return None


class NegativeBinomialDecoder(PoissonDecoder):
    """p(x|z) = Π_d NB(x_d | r_d, logits_θ(z)_d) with a learned per-feature dispersion r_d
    (mean r·exp(logits)); suits over-dispersed counts such as single-cell expression."""

    def __init__(self, latent_dim: int, x_dim: int, hidden: Hidden = (400,), activation: Activation = "softplus",
                 network: str = "mlp", image_shape: Sequence[int] | None = None) -> None:
        super().__init__(latent_dim, x_dim, hidden, activation, network, image_shape)
        self.log_total_count = nn.Parameter(torch.zeros(self.x_dim))

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:  # noqa: D102
        return dist.NegativeBinomial(
            total_count=self.log_total_count.exp(), logits=params, validate_args=False
        ).to_event(1)


__all__ = [
    "Decoder",
    "BernoulliDecoder",
    "ContinuousBernoulliDecoder",
    "GaussianDecoder",
    "DiscretizedLogisticDecoder",
    "PoissonDecoder",
    "NegativeBinomialDecoder",
]
