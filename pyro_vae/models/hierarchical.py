"""Hierarchical VAEs: L ≥ 2 stochastic layers z_1 (next to x) .. z_L (top).

Generative model (both inference schemes):

    p(z_L) = N(0, I),   p(z_l | z_{l+1}) = N(μ_l(z_{l+1}), σ_l(z_{l+1})²),   p(x | z_1) = decoder(z_1)

Inference:

* ``inference="bottom_up"`` — q(z_1 | x) q(z_2 | z_1) .. q(z_L | z_{L-1}): the two-layer model of
  the IWAE paper (Burda et al. 2016, x → 200 → 200 → z_1(100) → 100 → 100 → z_2(50), tanh,
  Bernoulli likelihood) with its defaults. The guide draws z_1 before z_2 while the prior of z_1
  depends on z_2, so a closed-form KL at z_1 is not the expected log q − log p: pyro_vae's ELBO
  uses the Monte Carlo term there (``elbo.kl_sites == {"z1": "monte carlo", "z2": "analytic"}``).
* ``inference="top_down"`` — the ladder VAE (Sønderby et al. 2016): a deterministic bottom-up
  pass d_1 = f_1(x), d_l = f_l(d_{l-1}) gives (μ̂_l, σ̂_l) per layer; then from the top,
  q(z_L | x) = N(μ̂_L, σ̂_L²) and q(z_l | z_{l+1}, x) is the precision-weighted merge of the
  bottom-up (μ̂_l, σ̂_l) and the generative p(z_l | z_{l+1}) = N(μ_p, σ_p²):

      σ_q² = 1 / (σ̂⁻² + σ_p⁻²),   μ_q = (μ̂ σ̂⁻² + μ_p σ_p⁻²) σ_q².

  The guide draws every layer after its parents, so the closed-form KL is valid at every site.

Sites: ``"z1"`` .. ``"zL"`` and the observed ``"x"``, all in the ``"data"`` plate.

Example:
    >>> import pyro_vae as pv
    >>> from pyro_vae.models import HierarchicalVAE
    >>> hvae = HierarchicalVAE(x_dim=12, latent_dims=(4, 2), hidden=((16,), (8,)))
    >>> elbo = pv.objectives.ELBO()
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", RuntimeWarning)   # announces the Monte Carlo KL at z1
    ...     _ = elbo.loss(hvae.model, hvae.guide, torch.bernoulli(torch.rand(3, 12)))
    >>> elbo.kl_sites == {"z1": "monte carlo", "z2": "analytic"}
    True

References:
    Burda, Grosse, Salakhutdinov (2016). Importance weighted autoencoders. ICLR.
    Sønderby, Raiko, Maaløe, Sønderby, Winther (2016). Ladder variational autoencoders. NeurIPS.
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .._typing import Activation
from ..decoders import BernoulliDecoder, Decoder
from ..encoders import Encoder
from ..nn import MLP, Linear
from ..priors import StandardNormalPrior
from ..vae import data_plate, declare_params
from .conditional import _MIN_SCALE, ConditionalNormal, _check_sizes

INFERENCE = ("bottom_up", "top_down")


def _check_layers(x_dim: int, latent_dims: Sequence[int], hidden: Sequence[Sequence[int]], inference: str) -> None:
    _check_sizes(x_dim=x_dim)
    if len(latent_dims) < 2:
        raise ValueError(
            f"a hierarchical VAE needs at least 2 stochastic layers, got latent_dims={tuple(latent_dims)}; "
            "for one layer use pv.VAE"
        )
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in latent_dims):
        raise ValueError(f"latent_dims must be positive integers (bottom layer first), got {tuple(latent_dims)}")
    if len(hidden) != len(latent_dims):
        raise ValueError(
            f"hidden gives {len(hidden)} layers of hidden widths but latent_dims has {len(latent_dims)} stochastic "
            "layers; pass one tuple of widths per stochastic layer (hidden[l] builds the networks between z_l and "
            "the layer below it), e.g. hidden=((200, 200), (100, 100)) for latent_dims=(100, 50)"
        )
    for l, h in enumerate(hidden):
        if isinstance(h, int) or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in h) or not len(h):
            raise ValueError(f"hidden[{l}] must be a non-empty tuple of positive widths, got {h!r}")
    if inference not in INFERENCE:
        raise ValueError(f"inference must be one of {INFERENCE}, got {inference!r}")


class HierarchicalVAE(nn.Module):
    """A VAE with ``len(latent_dims)`` stochastic layers (see the module docstring for the maths).

    Args:
        x_dim: features of x.
        latent_dims: (d_1, .., d_L), the bottom layer (next to x) first; L ≥ 2.
        hidden: one tuple of hidden widths per stochastic layer: ``hidden[0]`` builds x ↔ z_1
            (encoder and decoder), ``hidden[l]`` the networks between z_l and z_{l+1}
            (q(z_{l+1} | z_l) and p(z_l | z_{l+1})). Default: the IWAE paper's ``((200, 200), (100, 100))``.
        activation: of every network (the IWAE paper: tanh).
        inference: ``"bottom_up"`` (IWAE paper) or ``"top_down"`` (ladder VAE).
        decoder: p(x | z_1), a :class:`~pyro_vae.decoders.Decoder` from d_1 to x_dim; default
            :class:`~pyro_vae.decoders.BernoulliDecoder` with ``hidden[0]`` reversed.
        encoder: bottom-up only: q(z_1 | x), an :class:`~pyro_vae.encoders.Encoder` from x_dim
            to d_1; default a Normal with ``hidden[0]``.

    Raises:
        ValueError: at construction, for fewer than 2 layers, a ``hidden`` that does not give
            one entry per layer, or a decoder / encoder whose dimensions do not connect.

    References:
        Burda, Grosse, Salakhutdinov (2016). Importance weighted autoencoders. ICLR.
        Sønderby, Raiko, Maaløe, Sønderby, Winther (2016). Ladder variational autoencoders. NeurIPS.
    """

    def __init__(
        self,
        x_dim: int = 784,
        latent_dims: Sequence[int] = (100, 50),
        hidden: Sequence[Sequence[int]] = ((200, 200), (100, 100)),
        activation: Activation = "tanh",
        inference: str = "bottom_up",
        decoder: Decoder | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        super().__init__()
        latent_dims, hidden = tuple(latent_dims), tuple(tuple(h) if not isinstance(h, int) else h for h in hidden)
        _check_layers(x_dim, latent_dims, hidden, inference)
        self.x_dim, self.latent_dims, self.hidden, self.inference = x_dim, latent_dims, hidden, inference
        L = self.num_layers = len(latent_dims)
        self.sites = tuple(f"z{l + 1}" for l in range(L))
        d = latent_dims
        # ---- generative model: p(z_L), p(z_l | z_{l+1}), p(x | z_1) --------------------------
        self.prior = StandardNormalPrior(d[-1])
        self.top_down = nn.ModuleList(
            ConditionalNormal(d[l + 1], d[l], tuple(reversed(hidden[l + 1])), activation) for l in range(L - 1)
        )
        self.decoder = decoder if decoder is not None else BernoulliDecoder(d[0], x_dim, tuple(reversed(hidden[0])), activation)
        if self.decoder.latent_dim != d[0] or self.decoder.x_dim != x_dim:
            raise ValueError(
                f"the layers do not connect: decoder maps {self.decoder.latent_dim} -> {self.decoder.x_dim} features but "
                f"p(x | z1) must map latent_dims[0] = {d[0]} -> x_dim = {x_dim}; build the decoder with "
                f"latent_dim={d[0]}, x_dim={x_dim}"
            )
        # ---- guide -------------------------------------------------------------------------------
        if inference == "bottom_up":
            first = encoder if encoder is not None else ConditionalNormal(x_dim, d[0], hidden[0], activation)
            in_dim = first.x_dim if isinstance(first, Encoder) else first.in_dim
            out_dim = first.latent_dim if isinstance(first, Encoder) else first.out_dim
            if in_dim != x_dim or out_dim != d[0]:
                raise ValueError(
                    f"the layers do not connect: encoder maps {in_dim} -> {out_dim} features but q(z1 | x) must map "
                    f"x_dim = {x_dim} -> latent_dims[0] = {d[0]}"
                )
            self.bottom_up = nn.ModuleList(
                [first] + [ConditionalNormal(d[l], d[l + 1], hidden[l + 1], activation) for l in range(L - 1)]
            )
        else:
            if encoder is not None:
                raise ValueError("encoder= replaces q(z1 | x) of the bottom-up guide; the top-down (ladder) guide "
                                 "builds its own deterministic pass: drop encoder= or use inference='bottom_up'")
            widths = [x_dim] + [h[-1] for h in hidden]
            self.deterministic = nn.ModuleList(
                MLP(widths[l], hidden[l][:-1], hidden[l][-1], activation, final_activation=True) for l in range(L)
            )
            self.heads = nn.ModuleList(Linear(hidden[l][-1], 2 * d[l]) for l in range(L))

    # -- the probabilistic program ------------------------------------------------------------
    def model(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """p(z_L) Π p(z_l | z_{l+1}) p(x | z_1) for a minibatch x of shape ``(B, x_dim)``."""
        declare_params("decoder", self.decoder)
        declare_params("top_down", self.top_down)
        with data_plate(x, num_data):
            z = pyro.sample(self.sites[-1], self.prior())
            for l in reversed(range(self.num_layers - 1)):
                z = pyro.sample(self.sites[l], self.top_down[l](z))
            return pyro.sample("x", self.decoder(z), obs=x)

    def guide(self, x: torch.Tensor, num_data: int | None = None) -> list[torch.Tensor]:
        """q(z_1..z_L | x), bottom-up or top-down (``self.inference``); returns [z_1, .., z_L]."""
        if self.inference == "bottom_up":
            declare_params("bottom_up", self.bottom_up)
            zs, h = [], x
            with data_plate(x, num_data):
                for l in range(self.num_layers):
                    h = pyro.sample(self.sites[l], self.bottom_up[l](h))
                    zs.append(h)
            return zs
        declare_params("deterministic", self.deterministic)
        declare_params("heads", self.heads)
        declare_params("top_down", self.top_down)  # the ladder guide merges with the generative top-down pass
        up = self.bottom_up_params(x)
        zs: list[torch.Tensor] = [None] * self.num_layers  # type: ignore[list-item]
        with data_plate(x, num_data):
            loc, scale = up[-1]
            z = zs[-1] = pyro.sample(self.sites[-1], dist.Normal(loc, scale, validate_args=False).to_event(1))
            for l in reversed(range(self.num_layers - 1)):
                loc_p, scale_p = self.top_down[l].params(z)
                loc_q, scale_q = precision_weighted(*up[l], loc_p, scale_p)
                z = zs[l] = pyro.sample(self.sites[l], dist.Normal(loc_q, scale_q, validate_args=False).to_event(1))
        return zs

    def bottom_up_params(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Top-down inference: the deterministic pass's (μ̂_l, σ̂_l) per layer, bottom first."""
        out, h = [], x
        for l in range(self.num_layers):
            h = self.deterministic[l](h)
            loc, raw = self.heads[l](h).chunk(2, dim=-1)
            out.append((loc, F.softplus(raw) + _MIN_SCALE))
        return out

    # -- conveniences -------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Ancestral samples: z_L ~ p(z_L), .., z_1, then the mean of p(x | z_1) (or a draw)."""
        z = self.prior().sample((num_samples,))
        for l in reversed(range(self.num_layers - 1)):
            z = self.top_down[l](z).sample()
        px = self.decoder(z)
        return px.mean if mean else px.sample()


def precision_weighted(loc_a: torch.Tensor, scale_a: torch.Tensor, loc_b: torch.Tensor, scale_b: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The product of two Normal densities, renormalized: precision-weighted mean and its scale.

    Example:
        >>> loc, scale = precision_weighted(torch.tensor(0.), torch.tensor(1.), torch.tensor(2.), torch.tensor(1.))
        >>> float(loc), round(float(scale) ** 2, 6)
        (1.0, 0.5)
    """
    pa, pb = scale_a.pow(-2), scale_b.pow(-2)
    var = 1.0 / (pa + pb)
    return (loc_a * pa + loc_b * pb) * var, var.sqrt()


__all__ = ["HierarchicalVAE", "precision_weighted", "INFERENCE"]
