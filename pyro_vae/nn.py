"""Network backbones: plain :class:`torch.nn.Module` s, no Pyro inside.

Every backbone maps a tensor with arbitrary leading (batch, particle) dimensions and a last
feature dimension to another such tensor, so encoders, decoders and priors can call them on
``(B, D)`` or ``(K, B, D)`` inputs alike.

Which one should I use? :class:`MLP` for any flat data; :class:`ConvEncoderNet` /
:class:`ConvDecoderNet` for 28×28 single-channel images when you want translation structure.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import _kernels
from ._typing import Activation, Hidden

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: Activation) -> nn.Module:
    """Build an activation module from its name, with a clear error for unknown names."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


class Linear(nn.Linear):
    """:class:`torch.nn.Linear` whose matmul is :func:`pyro_vae._kernels.linear` (oneDNN on CPU
    float32 where the first-use measurement found it faster; ``F.linear`` otherwise).

    Same parameters and state-dict keys as ``nn.Linear``; inputs with more than two dims are
    folded to 2-D for the matmul. Acts on each row of its input separately (``row_wise``).

    Example:
        >>> layer = Linear(4, 3)
        >>> layer(torch.zeros(2, 5, 4)).shape
        torch.Size([2, 5, 3])
    """

    row_wise = True

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if h.dim() == 2:
            return _kernels.linear(h, self.weight, self.bias)
        lead = h.shape[:-1]
        return _kernels.linear(h.reshape(-1, h.shape[-1]), self.weight, self.bias).reshape(*lead, self.out_features)


class MLP(nn.Sequential):
    """Multi-layer perceptron ``in_dim -> hidden... -> out_dim`` with an activation between layers.

    Its linear layers are :class:`Linear` (the measured fastest matmul on this machine); it acts
    on each row (particle, datapoint) of its input separately (``row_wise``).

    Example:
        >>> net = MLP(784, (400,), 20)
        >>> net(torch.zeros(3, 5, 784)).shape
        torch.Size([3, 5, 20])
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Hidden,
        out_dim: int,
        act: Activation = "softplus",
        final_activation: bool = False,
    ) -> None:
        if in_dim < 1 or out_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(
                f"layer widths must be positive, got in_dim={in_dim}, hidden={tuple(hidden)}, "
                f"out_dim={out_dim}"
            )
        layers: list[nn.Module] = []
        widths = [in_dim, *hidden]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [Linear(a, b), activation(act)]
        layers.append(Linear(widths[-1], out_dim))
        if final_activation:
            layers.append(activation(act))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim

    row_wise = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.dim() == 2:
            return super().forward(x)
        # fold leading (particle, batch) dims: 2-D matmuls take the faster addmm kernels
        lead = x.shape[:-1]
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(*lead, self.out_dim)


def _flatten_leading(x: torch.Tensor, n_tail: int) -> tuple[torch.Tensor, torch.Size]:
    lead = x.shape[: x.dim() - n_tail]
    return x.reshape(-1, *x.shape[x.dim() - n_tail :]), lead


class ConvEncoderNet(nn.Module):
    """Small conv net for flat 28×28 single-channel images: ``(..., 784) -> (..., out_dim)``.

    Two stride-2 convolutions (32 and 64 channels) then a linear layer.

    Example:
        >>> ConvEncoderNet(64)(torch.zeros(2, 784)).shape
        torch.Size([2, 64])
    """

    row_wise = True

    def __init__(self, out_dim: int, image_shape: Sequence[int] = (1, 28, 28), act: Activation = "relu"):
        super().__init__()
        if tuple(image_shape)[1:] != (28, 28):
            raise ValueError(
                f"ConvEncoderNet is built for 28x28 images, got image_shape={tuple(image_shape)}; "
                "use network='mlp' for other sizes"
            )
        c = image_shape[0]
        self.image_shape = tuple(image_shape)
        self.in_dim = c * 28 * 28
        self.out_dim = out_dim
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 4, stride=2, padding=1),  # 14x14
            activation(act),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),  # 7x7
            activation(act),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, lead = _flatten_leading(x, 1)
        out = self.body(flat.reshape(-1, *self.image_shape))
        return out.reshape(*lead, self.out_dim)


class ConvDecoderNet(nn.Module):
    """Mirror of :class:`ConvEncoderNet`: ``(..., in_dim) -> (..., channels_out * 784)``.

    Example:
        >>> ConvDecoderNet(8)(torch.zeros(3, 2, 8)).shape
        torch.Size([3, 2, 784])
    """

    row_wise = True

    def __init__(
        self,
        in_dim: int,
        image_shape: Sequence[int] = (1, 28, 28),
        act: Activation = "relu",
        channels_out: int | None = None,
    ):
        super().__init__()
        if tuple(image_shape)[1:] != (28, 28):
            raise ValueError(
                f"ConvDecoderNet is built for 28x28 images, got image_shape={tuple(image_shape)}; "
                "use network='mlp' for other sizes"
            )
        self.image_shape = tuple(image_shape)
        self.c_out = channels_out if channels_out is not None else image_shape[0]
        self.in_dim = in_dim
        self.out_dim = self.c_out * 28 * 28
        self.fc = nn.Sequential(nn.Linear(in_dim, 64 * 7 * 7), activation(act))
        self.body = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),  # 14x14
            activation(act),
            nn.ConvTranspose2d(32, self.c_out, 4, stride=2, padding=1),  # 28x28
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat, lead = _flatten_leading(z, 1)
        h = self.fc(flat).reshape(-1, 64, 7, 7)
        return self.body(h).reshape(*lead, self.out_dim)


def backbone(
    network: str,
    in_dim: int,
    out_dim: int,
    hidden: Hidden,
    act: Activation,
    image_shape: Sequence[int] | None,
    direction: str,
) -> nn.Module:
    """Build the body shared by encoders (``direction="encode"``) and decoders (``"decode"``)."""
    if network == "mlp":
        return MLP(in_dim, hidden, out_dim, act)
    if network == "conv":
        shape = tuple(image_shape) if image_shape is not None else (1, 28, 28)
        if direction == "encode":
            if in_dim != int(torch.Size(shape).numel()):
                raise ValueError(f"conv encoder needs x_dim={torch.Size(shape).numel()}, got {in_dim}")
            return ConvEncoderNet(out_dim, shape)
        net = ConvDecoderNet(in_dim, shape, channels_out=out_dim // (28 * 28))
        if net.out_dim != out_dim:
            raise ValueError(f"conv decoder cannot produce {out_dim} outputs for image shape {shape}")
        return net
    raise ValueError(f"unknown network {network!r}; choose 'mlp' or 'conv'")


__all__ = ["Linear", "MLP", "ConvEncoderNet", "ConvDecoderNet", "activation", "backbone"]
