"""In-memory minibatching with fully reproducible shuffling and dynamic binarization.

:class:`Batches` draws every random number (the shuffle permutation and the per-minibatch
Bernoulli resampling) from one explicit :class:`torch.Generator`, never from the global torch
RNG. Saving ``generator.get_state()`` and restoring it with ``generator.set_state(...)`` therefore
reproduces the following iteration exactly, which is what a resumable trainer needs.

Example
-------
>>> import torch
>>> gen = torch.Generator().manual_seed(0)
>>> batches = Batches(torch.rand(10, 3), batch_size=4, dynamic_binarization=True, generator=gen)
>>> len(batches), batches.num_data
(3, 10)
>>> [xb.shape[0] for _, xb in batches]
[4, 4, 2]
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .datasets import DataError, validate_array

__all__ = ["Batches"]

_DEFAULT_GENERATOR_SEED = 0


class Batches:
    """In-memory minibatch iterator over a ``(N, D)`` tensor (faster than DataLoader for data that fits in memory).

    Each pass (each ``iter(batches)``) yields ``(indices, x_batch)`` pairs: ``indices`` are the
    ``int64`` row numbers ``(B,)`` of the batch in ``x`` (useful for per-datapoint parameters and
    ``pyro.plate(..., subsample=indices)``), ``x_batch`` is ``x[indices]`` of shape ``(B, D)``.
    Both live on ``device``. With ``shuffle=False`` and no binarization ``x_batch`` is a view of
    the stored data: do not modify it in place.

    Random numbers come only from ``generator``, consumed in this fixed order per pass: when the
    first batch is requested, one ``torch.randperm(N, generator=generator)`` (if ``shuffle``);
    then, per batch and only if ``dynamic_binarization``, one
    ``torch.bernoulli(x_batch, generator=generator)``. Restoring ``generator.set_state(s)`` to a
    state saved between passes therefore replays the next pass exactly. The global torch RNG is
    never touched.

    Parameters
    ----------
    x:
        Data of shape ``(N, D)``; checked with :func:`~pyro_vae.data.validate_array`. Non-floating
        input is converted to ``float32``. Moved to ``device`` once, here.
    batch_size:
        Examples per batch, ``>= 1``. The last batch is smaller when ``N`` is not a multiple of it
        (unless ``drop_last``).
    shuffle:
        Draw a fresh random order for every pass; otherwise rows come in order ``0..N-1``.
    dynamic_binarization:
        Replace every batch by a fresh sample ``Bernoulli(x_batch)`` (the "dynamic binarization"
        of unit-scale images, e.g. from ``load_dataset(..., binarize="dynamic")``). ``x`` must
        then lie in [0, 1].
    generator:
        Source of all randomness. ``None`` creates a private ``torch.Generator`` seeded with 0
        (deterministic; available as :attr:`generator` for checkpointing). If it lives on another
        device than ``device``, permutations are drawn on the generator's device and moved, and
        dynamic binarization compares ``torch.rand(..., generator=generator)`` on that device
        with the probabilities (same distribution, still reproducible).
    drop_last:
        Skip the final incomplete batch.
    device:
        Where ``x`` and the yielded tensors live (default: where ``x`` already is).

    Raises
    ------
    DataError
        For ``batch_size < 1``, invalid ``x``, values outside [0, 1] with
        ``dynamic_binarization``, or ``drop_last`` with ``batch_size > N`` (no batches at all).

    Example
    -------
    >>> import torch
    >>> gen = torch.Generator().manual_seed(0)
    >>> x = torch.rand(100, 784)
    >>> batches = Batches(x, 32, dynamic_binarization=True, generator=gen)
    >>> state = gen.get_state()
    >>> first = [xb for _, xb in batches]
    >>> _ = gen.set_state(state)
    >>> again = [xb for _, xb in batches]
    >>> all(torch.equal(a, b) for a, b in zip(first, again))
    True
    """

    def __init__(
        self,
        x: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        dynamic_binarization: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise DataError(f"batch_size must be an integer but got {batch_size!r}; pass e.g. batch_size=128")
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} is less than 1; pass a positive batch size such as 128")
        if not isinstance(x, torch.Tensor):
            raise DataError(
                f"Batches needs a torch.Tensor but got {type(x).__name__}; convert it with torch.as_tensor(x) "
                f"or build DataSplits with from_arrays()"
            )
        validate_array(x, name="batched data", any_shape=True)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise DataError(
                f"generator must be a torch.Generator but got {type(generator).__name__}; pass "
                f"torch.Generator().manual_seed(seed) or None"
            )
        target = torch.device(device) if device is not None else x.device
        if not x.is_floating_point():
            x = x.to(torch.float32)
        self._x: torch.Tensor = x.to(target)
        if dynamic_binarization:
            lo, hi = float(self._x.min().item()), float(self._x.max().item())
            if lo < 0.0 or hi > 1.0:
                raise DataError(
                    f"dynamic_binarization needs values in [0, 1] (they are Bernoulli probabilities) but "
                    f"the data spans [{lo:.4g}, {hi:.4g}]; load it with pixel_scale='unit' or set "
                    f"dynamic_binarization=False"
                )
        n = int(self._x.shape[0])
        if drop_last and batch_size > n:
            raise DataError(
                f"batch_size={batch_size} exceeds the {n} examples and drop_last=True, so there would be "
                f"no batches at all; lower batch_size to at most {n} or set drop_last=False"
            )
        self._batch_size = int(batch_size)
        self._shuffle = bool(shuffle)
        self._dynamic = bool(dynamic_binarization)
        self._drop_last = bool(drop_last)
        self._generator: torch.Generator = (
            generator if generator is not None else torch.Generator().manual_seed(_DEFAULT_GENERATOR_SEED)
        )

    @property
    def num_data(self) -> int:
        """Number of rows ``N`` of the data (all of them, including a dropped last partial batch).

        Example
        -------
        >>> Batches(torch.zeros(10, 2), 3).num_data
        10
        """
        return int(self._x.shape[0])

    @property
    def batch_size(self) -> int:
        """The nominal batch size.

        Example
        -------
        >>> Batches(torch.zeros(10, 2), 3).batch_size
        3
        """
        return self._batch_size

    @property
    def generator(self) -> torch.Generator:
        """The generator all randomness is drawn from (checkpoint ``generator.get_state()``).

        Example
        -------
        >>> gen = torch.Generator().manual_seed(3)
        >>> Batches(torch.zeros(4, 2), 2, generator=gen).generator is gen
        True
        """
        return self._generator

    @property
    def x(self) -> torch.Tensor:
        """The full data tensor ``(N, D)`` on the target device (not binarized).

        Example
        -------
        >>> Batches(torch.zeros(4, 2), 2).x.shape
        torch.Size([4, 2])
        """
        return self._x

    @property
    def device(self) -> torch.device:
        """Device of the data and of every yielded tensor.

        Example
        -------
        >>> Batches(torch.zeros(4, 2), 2).device
        device(type='cpu')
        """
        return self._x.device

    def __len__(self) -> int:
        """Number of batches per pass.

        Example
        -------
        >>> len(Batches(torch.zeros(10, 2), 3)), len(Batches(torch.zeros(10, 2), 3, drop_last=True))
        (4, 3)
        """
        n = self.num_data
        return n // self._batch_size if self._drop_last else math.ceil(n / self._batch_size)

    def _binarize(self, xb: torch.Tensor) -> torch.Tensor:
        gen = self._generator
        if gen.device == xb.device:
            return torch.bernoulli(xb, generator=gen)
        u = torch.rand(xb.shape, generator=gen, device=gen.device, dtype=xb.dtype).to(xb.device)
        return (u < xb).to(xb.dtype)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(indices int64 (B,), x_batch (B, D))`` for one pass over the data.

        Example
        -------
        >>> sizes = [idx.tolist() for idx, _ in Batches(torch.zeros(5, 2), 2, shuffle=False)]
        >>> sizes == [[0, 1], [2, 3], [4]]
        True
        """
        n = self.num_data
        device = self._x.device
        if self._shuffle:
            order = torch.randperm(n, generator=self._generator, device=self._generator.device).to(device)
        else:
            order = torch.arange(n, dtype=torch.int64, device=device)
        for b in range(len(self)):
            start = b * self._batch_size
            idx = order[start : start + self._batch_size]
            xb = self._x.index_select(0, idx) if self._shuffle else self._x[start : start + idx.shape[0]]
            if self._dynamic:
                xb = self._binarize(xb)
            yield idx, xb

    def __repr__(self) -> str:
        return (
            f"Batches(num_data={self.num_data}, batch_size={self._batch_size}, batches={len(self)}, "
            f"shuffle={self._shuffle}, dynamic_binarization={self._dynamic}, drop_last={self._drop_last}, "
            f"device={self.device})"
        )
