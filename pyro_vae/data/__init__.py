"""Data layer of :mod:`pyro_vae`: datasets, splits, validation and in-memory minibatching.

Everything here raises :class:`DataError` (a :class:`ValueError`) for bad input, with a message
that names the problem and the fix, before anything is trained or written.

Example
-------
>>> import torch
>>> from pyro_vae.data import Batches, load_dataset
>>> splits = load_dataset("sklearn-digits", binarize="dynamic")
>>> batches = Batches(splits.train, 256, dynamic_binarization=True,
...                   generator=torch.Generator().manual_seed(0))
>>> idx, xb = next(iter(batches))
>>> xb.shape, sorted(xb.unique().tolist())
(torch.Size([256, 64]), [0.0, 1.0])
"""

from .batching import Batches
from .datasets import (
    BINARIZE_MODES,
    DATASETS,
    EMBEDDED,
    PIXEL_SCALES,
    as_data,
    model_dtype,
    DataError,
    DataSplits,
    from_arrays,
    load_dataset,
    validate_array,
)

__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "EMBEDDED",
    "PIXEL_SCALES",
    "Batches",
    "as_data",
    "model_dtype",
    "DataError",
    "DataSplits",
    "from_arrays",
    "load_dataset",
    "validate_array",
]
