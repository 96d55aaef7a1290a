"""Figures: each function returns a Figure, writes a readable PNG, leaks no pyplot figure."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

import pyro_vae as pv
from pyro_vae import plots

SHAPE = (1, 28, 28)


def make_vae(latent_dim: int = 3) -> pv.VAE:
    torch.manual_seed(0)
    return pv.VAE(
        encoder=pv.encoders.DiagNormalEncoder(784, latent_dim, hidden=(16,)),
        decoder=pv.decoders.BernoulliDecoder(latent_dim, 784, hidden=(16,)),
    )


@pytest.fixture
def vae() -> pv.VAE:
    return make_vae(3)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.bernoulli(torch.rand(40, 784, generator=torch.Generator().manual_seed(1)))


@pytest.fixture(autouse=True)
def _no_leaked_figures():
    assert plt.get_fignums() == []
    yield
    assert plt.get_fignums() == [], "a plotting function left a pyplot figure open"


def check_png(path: Path, fig: Figure) -> tuple[int, int]:
    assert isinstance(fig, Figure)
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert w > 0 and h > 0
    assert plt.get_fignums() == []
    return w, h


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(rows[0]) if rows else ["epoch", "train_loss", "val_elbo"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


# -- image_grid -----------------------------------------------------------------------------
def test_image_grid_writes_png(tmp_path, x):
    p = tmp_path / "grid.png"
    fig = plots.image_grid(x[:23], SHAPE, nrow=5, title="data", path=p)
    w, h = check_png(p, fig)
    assert h > w  # 5 rows of 5 columns (last partial): taller than wide
    assert fig.axes[0].get_title() == "data"


def test_image_grid_accepts_hw_shape_uint8_range_and_rgb(tmp_path):
    g = torch.Generator().manual_seed(0)
    p1, p2 = tmp_path / "u8.png", tmp_path / "rgb.png"
    check_png(p1, plots.image_grid(torch.randint(0, 256, (6, 64), generator=g), (8, 8), value_range=(0, 255), path=p1))
    check_png(p2, plots.image_grid(torch.rand(4, 3 * 8 * 8, generator=g), (3, 8, 8), path=p2))


def test_image_grid_clamps_out_of_range_values():
    fig = plots.image_grid(torch.linspace(-2, 3, 16).reshape(1, 16), (4, 4))
    arr = fig.axes[0].get_images()[0].get_array()
    assert float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0


def test_image_grid_without_path_writes_nothing(tmp_path, x):
    assert isinstance(plots.image_grid(x[:4], SHAPE), Figure)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "images, shape",
    [
        (torch.zeros(4, 783), SHAPE),  # D too small
        (torch.zeros(4, 784), (1, 28, 27)),  # image_shape has 756 pixels
        (torch.zeros(784), SHAPE),  # not (N, D)
        (torch.zeros(0, 784), SHAPE),  # no images
    ],
)
def test_image_grid_rejects_mismatched_shapes(images, shape):
    with pytest.raises(ValueError):
        plots.image_grid(images, shape)


def test_image_grid_rejects_bad_value_range_and_channels(x):
    with pytest.raises(ValueError, match="value_range"):
        plots.image_grid(x[:2], SHAPE, value_range=(1, 0))
    with pytest.raises(ValueError, match="channels"):
        plots.image_grid(torch.rand(2, 2 * 14 * 28), (2, 14, 28))


# -- reconstructions / prior samples / traversal --------------------------------------------
def test_reconstructions(tmp_path, vae, x):
    vae.train()
    p = tmp_path / "recon.png"
    fig = plots.reconstructions(vae, x, SHAPE, n=13, path=p)
    check_png(p, fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["data", "recon.", "data", "recon."]
    assert "reconstruction" in ax.get_title().lower()
    assert vae.training and all(m.training for m in vae.modules())  # mode restored


def test_prior_samples_leaves_rng_untouched_and_is_seeded(tmp_path, vae):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    p = tmp_path / "prior.png"
    fig = plots.prior_samples(vae, SHAPE, n=20, path=p, seed=3)
    check_png(p, fig)
    assert torch.equal(torch.get_rng_state(), before)
    a = fig.axes[0].get_images()[0].get_array()
    b = plots.prior_samples(vae, SHAPE, n=20, seed=3).axes[0].get_images()[0].get_array()
    c = plots.prior_samples(vae, SHAPE, n=20, seed=4).axes[0].get_images()[0].get_array()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert torch.equal(torch.get_rng_state(), before)


def test_latent_traversal(tmp_path, vae):
    p = tmp_path / "trav.png"
    fig = plots.latent_traversal(vae, SHAPE, dims=10, steps=5, span=2.0, path=p)
    w, h = check_png(p, fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["z[0]", "z[1]", "z[2]"]  # capped at latent_dim
    assert [t.get_text() for t in ax.get_xticklabels()] == ["-2σ", "-1σ", "0", "+1σ", "+2σ"]
    assert w > h  # 3 rows x 5 columns


def test_latent_traversal_rows_differ_only_along_the_varied_dim(vae):
    seen = {}

    def decoder(z):
        seen["z"] = z.clone()
        return vae.decoder.__class__.forward(vae.decoder, z)

    vae.decoder.forward = decoder
    plots.latent_traversal(vae, SHAPE, dims=[2, 0], steps=3, span=1.0)
    z = seen["z"].reshape(2, 3, 3)
    assert torch.allclose(z[0, :, 2], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(z[0, :, :2], torch.zeros(3, 2)) and torch.equal(z[1, :, 1:], torch.zeros(3, 2))
    with pytest.raises(ValueError):
        plots.latent_traversal(vae, SHAPE, dims=[3])


# -- latent scatter -------------------------------------------------------------------------
def test_latent_scatter_pca_when_latent_dim_above_two(tmp_path, vae, x):
    p = tmp_path / "scatter.png"
    labels = torch.arange(40) % 4
    fig = plots.latent_scatter(vae, x, labels, path=p)
    check_png(p, fig)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("PC1") and ax.get_ylabel().startswith("PC2")
    assert "% of variance" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1", "2", "3"]


def test_latent_scatter_raw_dims_when_latent_dim_is_two(tmp_path, x):
    p = tmp_path / "scatter2.png"
    fig = plots.latent_scatter(make_vae(2), x, None, path=p)
    check_png(p, fig)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("z[0]") and ax.get_ylabel().startswith("z[1]")
    assert "PC" not in ax.get_xlabel()


def test_latent_scatter_continuous_labels_get_a_colourbar_and_bad_input_raises(vae, x):
    fig = plots.latent_scatter(vae, x, torch.linspace(0, 1, 40))
    assert len(fig.axes) == 2  # scatter + colourbar
    with pytest.raises(ValueError, match="labels"):
        plots.latent_scatter(vae, x, torch.zeros(3))
    with pytest.raises(ValueError, match="method"):
        plots.latent_scatter(vae, x, None, method="tsne")


# -- loss curves ----------------------------------------------------------------------------
def test_loss_curves_from_csv(tmp_path):
    rows = [
        {"epoch": e, "train_loss": 200 - 10 * e, "val_elbo": -205 + 9 * e, "train_kl": 5 + e,
         "train_reconstruction": -195 + 11 * e, "time": "" if e == 2 else 1.5}
        for e in range(1, 6)
    ]
    csv_path = tmp_path / "metrics.csv"
    write_csv(csv_path, rows)
    p = tmp_path / "curves.png"
    fig = plots.loss_curves(csv_path, path=p)
    check_png(p, fig)
    assert len(fig.axes) == 2
    bound, terms = fig.axes
    assert [t.get_text() for t in bound.get_legend().get_texts()] == ["train −loss (bound)", "validation ELBO"]
    np.testing.assert_allclose(bound.get_lines()[0].get_ydata(), [-190, -180, -170, -160, -150])
    assert len(terms.get_lines()) == 2 and bound.get_xlabel() == "epoch"


def test_loss_curves_from_list_skips_missing_columns(tmp_path):
    p = tmp_path / "curves1.png"
    history = [{"epoch": 1, "train_loss": 3.0}, {"epoch": 2, "train_loss": 2.0, "val_elbo": -2.5}]
    fig = plots.loss_curves(history, path=p)
    check_png(p, fig)
    assert len(fig.axes) == 1
    val = fig.axes[0].get_lines()[1]
    assert list(val.get_xdata()) == [2.0]


def test_loss_curves_raises_on_empty(tmp_path):
    empty = tmp_path / "empty.csv"
    write_csv(empty, [])
    with pytest.raises(ValueError, match="no rows"):
        plots.loss_curves(empty)
    with pytest.raises(ValueError, match="no rows"):
        plots.loss_curves([])
    with pytest.raises(ValueError, match="plottable"):
        plots.loss_curves([{"epoch": 1, "lr": 0.1}])


# -- k-hat ----------------------------------------------------------------------------------
def test_khat_plot(tmp_path):
    k = np.array([0.1, 0.2, 0.3, 0.6, 0.65, 0.9, 1.2, 0.4, -np.inf, np.inf, np.nan])
    p = tmp_path / "khat.png"
    fig = plots.khat_plot(torch.as_tensor(k), path=p)
    check_png(p, fig)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    # -inf (exact guide: constant weights) is good, +inf bad, NaN counted apart
    assert texts[0].endswith("(5)") and texts[1].endswith("(2)") and texts[2].endswith("(3)")
    assert texts[3] == "NaN: 9.1% (1)"
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines())
    assert levels == [0.5, 0.7]
    with pytest.raises(ValueError):
        plots.khat_plot(np.array([]))


def test_all_exported():
    for name in plots.__all__:
        assert hasattr(plots, name)
