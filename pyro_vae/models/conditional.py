"""The conditional VAE: p_θ(x | z, c) p(z) (or p(z | c)), guide q_φ(z | x, c), for a context c
given with every datapoint.

The context is a tensor of shape ``(N, context_dim)`` passed beside x, ``model(x, c)`` /
``guide(x, c)``: one-hot labels (:func:`one_hot`: generate a digit of a given class), or the
observed part of an image (:func:`split_quadrants`: Pyro's quadrant-completion task, where c are
the visible quadrants and x the hidden ones). Row i of c belongs to row i of x, so
``pv.log_likelihood(cvae.model, cvae.guide, x, c)`` and the diagnostics slice c with x.
:func:`pyro_vae.fit` batches a single tensor: train on ``cvae.pack(x, c)`` with
``cvae.packed_model`` / ``cvae.packed_guide``, which split the columns back into (x, c).

Example:
    >>> import pyro_vae as pv
    >>> from pyro_vae.models import ConditionalVAE, one_hot
    >>> cvae = ConditionalVAE(x_dim=6, context_dim=3, latent_dim=2, hidden=(8,))
    >>> x, c = torch.bernoulli(torch.rand(5, 6)), one_hot(torch.tensor([0, 1, 2, 0, 1]), 3)
    >>> loss = pv.objectives.ELBO().loss(cvae.model, cvae.guide, x, c)
    >>> ll = pv.log_likelihood(cvae.model, cvae.guide, x, c, num_samples=20)
    >>> ll.per_datapoint.shape
    torch.Size([5])

References:
    Sohn, Lee, Yan (2015). Learning structured output representation using deep conditional
    generative models. NeurIPS.
    Pyro's ``examples/cvae`` (quadrant completion on MNIST).
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .._typing import Activation, Hidden
from ..decoders import BernoulliDecoder, Decoder
from ..encoders import DiagNormalEncoder, Encoder
from ..nn import MLP
from ..priors import StandardNormalPrior
from ..vae import data_plate, declare_params

_MIN_SCALE = 1e-4


def _check_sizes(**sizes: int) -> None:
    """Each size must be a positive integer (the structured models' dimensions)."""
    for key, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{key} must be a positive integer, got {v!r}")


class ConditionalNormal(nn.Module):
    """N(μ(h), diag σ(h)²) of dimension ``out_dim`` given features h: an MLP with two heads,
    σ = softplus(·) + 1e-4. The building block of the conditional priors p(z_l | z_{l+1}),
    p(z | c) and of the hierarchical guides.

    Example:
        >>> layer = ConditionalNormal(4, 2, hidden=(8,))
        >>> layer(torch.zeros(3, 5, 4)).event_shape, layer(torch.zeros(3, 5, 4)).batch_shape
        (torch.Size([2]), torch.Size([3, 5]))
    """

    row_wise = True

    def __init__(self, in_dim: int, out_dim: int, hidden: Hidden = (100,), activation: Activation = "tanh") -> None:
        super().__init__()
        if int(in_dim) < 1 or int(out_dim) < 1:
            raise ValueError(f"in_dim and out_dim must be positive, got {in_dim}, {out_dim}")
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.net = MLP(self.in_dim, tuple(hidden), 2 * self.out_dim, activation)

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:  # noqa: D102
        loc, raw = self.params(h)
        return dist.Normal(loc, raw, validate_args=False).to_event(1)

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ) of the layer at features ``h``."""
        if h.shape[-1] != self.in_dim:
            raise ValueError(f"{type(self).__name__} expects {self.in_dim} input features, got {h.shape[-1]}")
        out = self.net(h)
        return out[..., : self.out_dim], F.softplus(out[..., self.out_dim :]) + _MIN_SCALE


def broadcast_cat(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dim after broadcasting the leading dims (particles, enumerated
    values, datapoints): ``z`` of shape ``(K, B, d)`` with ``c`` of shape ``(B, e)`` gives ``(K, B, d + e)``.

    Example:
        >>> broadcast_cat(torch.zeros(3, 5, 2), torch.ones(5, 4)).shape
        torch.Size([3, 5, 6])
    """
    lead = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*lead, t.shape[-1]) for t in tensors], dim=-1)


def check_labels(labels: torch.Tensor, num_classes: int, name: str = "labels") -> torch.Tensor:
    """``labels`` as int64 after checking they are integers in ``0 .. num_classes - 1``.

    Raises:
        ValueError: naming ``name``, the offending values and the declared classes.
    """
    labels = torch.as_tensor(labels)
    if labels.is_floating_point():
        if not bool(torch.isfinite(labels).all()) or not bool((labels == labels.round()).all()):
            raise ValueError(f"{name} must be integer class indices 0..{num_classes - 1}, got non-integer values")
    elif labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class indices 0..{num_classes - 1}, got a bool tensor")
    labels = labels.long()
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        shown = sorted(set(labels[bad].tolist()))[:10]
        raise ValueError(
            f"{name} holds values {shown} outside the {num_classes} declared classes 0..{num_classes - 1}; "
            f"relabel the data or build the model with num_classes > {max(labels.max().item(), num_classes - 1)}"
        )
    return labels


def one_hot(labels: torch.Tensor, num_classes: int, name: str = "labels") -> torch.Tensor:
    """Float one-hot rows of integer ``labels`` (checked by :func:`check_labels`): a label context.

    Example:
        >>> one_hot(torch.tensor([2, 0]), 3)
        tensor([[0., 0., 1.],
                [1., 0., 0.]])
    """
    return F.one_hot(check_labels(labels, num_classes, name), num_classes).float()


def quadrant_mask(visible: Sequence[int], side: int = 28) -> torch.Tensor:
    """Boolean mask over the ``side * side`` pixels, True on the ``visible`` quadrants
    (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).

    Example:
        >>> quadrant_mask([0], side=4).reshape(4, 4).int()
        tensor([[1, 1, 0, 0],
                [1, 1, 0, 0],
                [0, 0, 0, 0],
                [0, 0, 0, 0]], dtype=torch.int32)
    """
    quads = list(visible)
    if not quads or len(set(quads)) != len(quads) or any(q not in (0, 1, 2, 3) for q in quads) or len(quads) > 3:
        raise ValueError(f"visible quadrants must be 1 to 3 distinct values of 0, 1, 2, 3, got {quads}")
    if side % 2:
        raise ValueError(f"side must be even to split an image into quadrants, got {side}")
    h = side // 2
    m = torch.zeros(side, side, dtype=torch.bool)
    for q in quads:
        r, c = divmod(q, 2)
        m[r * h : (r + 1) * h, c * h : (c + 1) * h] = True
    return m.reshape(-1)


def split_quadrants(images: torch.Tensor, visible: Sequence[int] = (0,), side: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, c)``: the hidden quadrants' pixels (what a conditional VAE generates) and the
    visible quadrants' pixels (its context), from flat ``(N, side * side)`` images.

    Example:
        >>> x, c = split_quadrants(torch.arange(16.).reshape(1, 16), visible=[0], side=4)
        >>> c
        tensor([[0., 1., 4., 5.]])
    """
    if images.dim() != 2 or images.shape[1] != side * side:
        raise ValueError(f"images must be flat (N, {side * side}) rows of {side}x{side} images, got {tuple(images.shape)}")
    m = quadrant_mask(visible, side).to(images.device)
    return images[:, ~m], images[:, m]


def merge_quadrants(x: torch.Tensor, c: torch.Tensor, visible: Sequence[int] = (0,), side: int = 28) -> torch.Tensor:
    """The flat images whose hidden quadrants are ``x`` and visible quadrants ``c`` (inverse of :func:`split_quadrants`)."""
    m = quadrant_mask(visible, side).to(x.device)
    out = x.new_zeros(*x.shape[:-1], side * side)
    out[..., ~m] = x
    out[..., m] = c.expand(*x.shape[:-1], c.shape[-1])
    return out


def check_context(x: torch.Tensor, c: torch.Tensor | None, context_dim: int, name: str = "c") -> torch.Tensor:
    """Refuse a missing context, or one whose rows or width disagree with x (naming ``name``)."""
    if c is None:
        raise TypeError(f"the context {name} is missing: call model(x, {name}) / guide(x, {name}) with {name} of shape "
                        f"(len(x), {context_dim})")
    if not isinstance(c, torch.Tensor) or c.dim() != 2:
        raise ValueError(f"context {name} must be a tensor of shape (len(x), {context_dim}), got "
                         f"{tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__}")
    if c.shape[0] != x.shape[0]:
        raise ValueError(
            f"context {name} has {c.shape[0]} rows but x has {x.shape[0]}: row i of {name} is the context of x[i]; "
            f"pass one context row per datapoint"
        )
    if c.shape[1] != context_dim:
        raise ValueError(f"context {name} has {c.shape[1]} features but the model was built with context_dim={context_dim}")
    return c.to(x.dtype) if c.dtype != x.dtype else c


class ConditionalVAE(nn.Module):
    """p(z) p_θ(x | z, c) (or p_θ(z | c) with ``conditional_prior=True``), guide q_φ(z | x, c).

    Args:
        x_dim: features of x (the generated part).
        context_dim: features of the context c (classes for one-hot labels, or visible pixels).
        latent_dim: dimension of z.
        hidden: widths of the default encoder, decoder and conditional prior networks.
        activation: their activation.
        conditional_prior: learn p(z | c) = N(μ(c), σ(c)²) instead of p(z) = N(0, I).
        encoder: a :class:`~pyro_vae.encoders.Encoder` of ``x_dim + context_dim`` inputs (it
            reads [x, c]); default :class:`~pyro_vae.encoders.DiagNormalEncoder`.
        decoder: a :class:`~pyro_vae.decoders.Decoder` of ``latent_dim + context_dim`` inputs
            (it reads [z, c]); default :class:`~pyro_vae.decoders.BernoulliDecoder`.

    Sites: ``"z"`` and the observed ``"x"`` in the ``"data"`` plate.

    Example:
        >>> cvae = ConditionalVAE(x_dim=588, context_dim=196, latent_dim=8, hidden=(32,))
        >>> x, c = split_quadrants(torch.bernoulli(torch.rand(4, 784)), visible=[0])
        >>> cvae.predict(c).shape
        torch.Size([4, 588])

    References:
        Sohn, Lee, Yan (2015). Learning structured output representation using deep conditional
        generative models. NeurIPS.
    """

    def __init__(
        self,
        x_dim: int,
        context_dim: int,
        latent_dim: int = 20,
        hidden: Hidden = (400,),
        activation: Activation = "softplus",
        conditional_prior: bool = False,
        encoder: Encoder | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(x_dim=x_dim, context_dim=context_dim, latent_dim=latent_dim)
        self.x_dim, self.context_dim, self.latent_dim = x_dim, context_dim, latent_dim
        self.encoder = encoder if encoder is not None else DiagNormalEncoder(x_dim + context_dim, latent_dim, hidden, activation)
        self.decoder = decoder if decoder is not None else BernoulliDecoder(latent_dim + context_dim, x_dim, hidden, activation)
        if self.encoder.x_dim != x_dim + context_dim or self.encoder.latent_dim != latent_dim:
            raise ValueError(
                f"encoder reads [x, c] and must map x_dim + context_dim = {x_dim + context_dim} features to latent_dim = "
                f"{latent_dim}, got {self.encoder.x_dim} -> {self.encoder.latent_dim}"
            )
        if self.decoder.latent_dim != latent_dim + context_dim or self.decoder.x_dim != x_dim:
            raise ValueError(
                f"decoder reads [z, c] and must map latent_dim + context_dim = {latent_dim + context_dim} features to "
                f"x_dim = {x_dim}, got {self.decoder.latent_dim} -> {self.decoder.x_dim}"
            )
        self.conditional_prior = bool(conditional_prior)
        self.prior = (ConditionalNormal(context_dim, latent_dim, hidden, activation) if self.conditional_prior
                      else StandardNormalPrior(latent_dim))

    def prior_dist(self, c: torch.Tensor) -> dist.TorchDistribution:
        """p(z | c) (or p(z), which ignores c)."""
        return self.prior(c) if self.conditional_prior else self.prior()

    # -- the probabilistic program ------------------------------------------------------------
    def model(self, x: torch.Tensor, c: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        """p(z | c) p_θ(x | z, c) for x of shape ``(B, x_dim)`` and c of shape ``(B, context_dim)``."""
        c = check_context(x, c, self.context_dim)
        declare_params("decoder", self.decoder)
        declare_params("prior", self.prior)
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior_dist(c))
            return pyro.sample("x", self.decoder(broadcast_cat(z, c)), obs=x)

    def guide(self, x: torch.Tensor, c: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        """q_φ(z | x, c)."""
        c = check_context(x, c, self.context_dim)
        declare_params("encoder", self.encoder)
        with data_plate(x, num_data):
            return pyro.sample("z", self.encoder(torch.cat([x, c], dim=-1)))

    # -- one tensor for pv.fit ------------------------------------------------------------------
    def pack(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``[x, c]`` as one ``(N, x_dim + context_dim)`` tensor, for :func:`pyro_vae.fit` (which
        batches one tensor); train with :meth:`packed_model` / :meth:`packed_guide`."""
        c = check_context(x, c, self.context_dim)
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise ValueError(f"x must have shape (N, {self.x_dim}), got {tuple(x.shape)}")
        return torch.cat([x, c], dim=-1)

    def unpack(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, c)`` from a :meth:`pack` ed tensor."""
        if xc.shape[-1] != self.x_dim + self.context_dim:
            raise ValueError(f"packed data must have x_dim + context_dim = {self.x_dim + self.context_dim} columns "
                             f"(see ConditionalVAE.pack), got {xc.shape[-1]}")
        return xc[..., : self.x_dim], xc[..., self.x_dim :]

    def packed_model(self, xc: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """:meth:`model` on ``unpack(xc)``."""
        return self.model(*self.unpack(xc), num_data=num_data)

    def packed_guide(self, xc: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """:meth:`guide` on ``unpack(xc)``."""
        return self.guide(*self.unpack(xc), num_data=num_data)

    # -- conveniences -------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, c: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Generate x given each row of c: z ~ p(z | c), then the mean of p(x | z, c) (or a draw)."""
        pz = self.prior_dist(c)
        z = pz.sample() if self.conditional_prior else pz.sample((c.shape[0],))
        px = self.decoder(broadcast_cat(z, c))
        return px.mean if mean else px.sample()


__all__ = ["ConditionalVAE", "ConditionalNormal", "broadcast_cat", "check_labels", "check_context", "one_hot",
           "quadrant_mask", "split_quadrants", "merge_quadrants"]
