"""Shared type aliases for the public API."""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import torch

#: A Pyro program: ``model(x, num_data=None)`` or ``guide(x, num_data=None)``.
PyroProgram = Callable[..., Any]
#: Hidden layer widths of an MLP, e.g. ``(400,)`` or ``(200, 200)``.
Hidden = Sequence[int]
#: A device given as a string or a :class:`torch.device`.
DeviceLike = Union[str, torch.device]
#: A PyTorch activation given by name (``"softplus"``, ``"relu"``, ``"tanh"``, ...).
Activation = str

__all__ = ["PyroProgram", "Hidden", "DeviceLike", "Activation"]
