"""Figures for VAEs: image grids, reconstructions, prior samples, latent views, curves, k̂.

Every function builds a :class:`matplotlib.figure.Figure` directly (never through
:mod:`matplotlib.pyplot`), so nothing is registered with pyplot, nothing needs closing, no
window is opened and the module works on any backend (``Agg`` included). Each returns the
figure and, when ``path`` is given, also saves it there (PNG unless the suffix names another
format; ``dpi=120``, tight bounding box; missing parent folders are created).

Image functions take flat data ``(N, D)`` plus an ``image_shape`` — ``(H, W)`` or
``(C, H, W)`` with ``C`` in ``{1, 3}`` — and assume values in ``value_range`` (default
``(0, 1)``; pass ``value_range=(0, 255)`` for 8-bit data such as a
:class:`~pyro_vae.decoders.DiscretizedLogisticDecoder`'s means). Values are clamped to it.

Example
-------
>>> import torch, pyro_vae as pv
>>> from pyro_vae import plots
>>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(784, 2, hidden=(16,)),
...              pv.decoders.BernoulliDecoder(2, 784, hidden=(16,)))
>>> fig = plots.prior_samples(vae, (1, 28, 28), n=16)
>>> type(fig).__name__
'Figure'
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torchvision.utils import make_grid

if TYPE_CHECKING:  # pragma: no cover
    from .vae import VAE

__all__ = [
    "image_grid",
    "reconstructions",
    "prior_samples",
    "latent_scatter",
    "latent_traversal",
    "loss_curves",
    "khat_plot",
    "DPI",
]

#: resolution of saved figures
DPI = 120
#: figure inches per 60 grid pixels: one image pixel becomes 2 saved pixels at ``DPI``
_PIXELS_PER_INCH = 60.0
_MAX_INCHES = 16.0
_MIN_CELL_INCHES = 0.5
_PAD = 2  # make_grid padding (pixels)
_PAD_VALUE = 1.0  # white separators between cells

PathLike = Union[str, "os.PathLike[str]"]


# -- shared helpers -----------------------------------------------------------------------------
def _save(fig: Figure, path: PathLike | None) -> Figure:
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=DPI, bbox_inches="tight")
    return fig


def _chw(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W) or (C, H, W) with positive sizes, got {tuple(image_shape)}")
    if shape[0] not in (1, 3):
        raise ValueError(
            f"image_shape={tuple(image_shape)} has {shape[0]} channels; only 1 (grey) or 3 (RGB) can be shown"
        )
    return shape


def _check_range(value_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in value_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    return lo, hi


def _to_images(
    images: torch.Tensor | np.ndarray, image_shape: Sequence[int], value_range: tuple[float, float]
) -> torch.Tensor:
    """``(N, D)`` (or ``(N, *image_shape)``) → float ``(N, C, H, W)`` on the CPU, scaled to [0, 1]."""
    chw = _chw(image_shape)
    lo, hi = _check_range(value_range)
    t = torch.as_tensor(images).detach().cpu()
    if t.dim() < 2 or t.shape[0] == 0:
        raise ValueError(f"images must have shape (N, D) with N >= 1, got {tuple(t.shape)}")
    d = math.prod(t.shape[1:])
    if d != math.prod(chw):
        raise ValueError(
            f"images have D={d} features per item but image_shape={tuple(image_shape)} has "
            f"{math.prod(chw)} pixels; pass the image_shape the data was flattened from"
        )
    t = t.reshape(t.shape[0], *chw).to(torch.float32)
    return ((t - lo) / (hi - lo)).clamp_(0.0, 1.0)


def _grid_axes(
    images: torch.Tensor, nrow: int, title: str | None
) -> tuple[Figure, Axes, tuple[int, int]]:
    """A figure with one axes showing ``make_grid(images)``; returns (figure, axes, cell size H, W)."""
    if int(nrow) < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow}")
    grid = make_grid(images, nrow=int(nrow), padding=_PAD, pad_value=_PAD_VALUE)
    gh, gw = grid.shape[-2:]
    # inches per grid pixel: 2 saved pixels per image pixel, but cells at least _MIN_CELL_INCHES
    # wide (small images such as 8x8 digits), and the whole grid at most _MAX_INCHES
    per_pixel = max(1.0 / _PIXELS_PER_INCH, _MIN_CELL_INCHES / max(images.shape[-2:]))
    per_pixel = min(per_pixel, _MAX_INCHES / max(gh, gw))
    width = max(gw * per_pixel, 1.5)
    height = max(gh * per_pixel, 1.0) + (0.4 if title else 0.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig, ax, (int(images.shape[-2]), int(images.shape[-1]))


def _cell_centres(count: int, size: int) -> list[float]:
    """Pixel centres of ``count`` grid cells of side ``size`` along one axis of a make_grid image."""
    return [r * (size + _PAD) + _PAD + (size - 1) / 2 for r in range(count)]


def _device(module: torch.nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode for the duration; restores every submodule's own training flag."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for ``device`` inside, restoring the caller's RNG state(s) afterwards."""
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(seed))  # CPU only: no lazy seeding of other devices
            yield
    else:
        mod = getattr(torch, device.type)
        with torch.random.fork_rng(devices=list(range(mod.device_count())), device_type=device.type):
            torch.manual_seed(int(seed))
            yield


def _check_vae(vae: Any) -> None:
    for name in ("encoder", "decoder", "prior", "latent_dim"):
        if not hasattr(vae, name):
            raise TypeError(f"expected a pyro_vae.VAE (with .{name}), got {type(vae).__name__}")


def _encode(vae: VAE, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    x = torch.as_tensor(x)
    x = x.reshape(x.shape[0], -1).to(_device(vae), torch.get_default_dtype())
    with _eval_mode(vae), torch.no_grad():
        return torch.cat([vae.encode(x[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)])


# -- image figures ------------------------------------------------------------------------------
def image_grid(
    images: torch.Tensor,
    image_shape: tuple[int, ...],
    nrow: int = 10,
    title: str | None = None,
    path: PathLike | None = None,
    *,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Figure:
    """A grid of images, ``nrow`` per row (torchvision's ``make_grid``, white separators).

    Args:
        images: ``(N, D)`` flat images (``D = prod(image_shape)``); ``(N, *image_shape)`` also works.
        image_shape: ``(H, W)`` or ``(C, H, W)`` with ``C`` in {1, 3}.
        nrow: images per row.
        title: optional title above the grid.
        path: where to save the figure (optional).
        value_range: the black/white points of the data, e.g. ``(0, 255)`` for 8-bit pixels;
            values outside are clamped.

    Raises:
        ValueError: ``D`` does not match ``image_shape``, or a bad ``nrow``/``value_range``.
    """
    imgs = _to_images(images, image_shape, value_range)
    fig, _, _ = _grid_axes(imgs, nrow, title)
    return _save(fig, path)


def reconstructions(
    vae: VAE,
    x: torch.Tensor,
    image_shape: tuple[int, ...],
    n: int = 10,
    path: PathLike | None = None,
    *,
    nrow: int = 10,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Figure:
    """The first ``n`` datapoints of ``x`` over their reconstructions.

    Shows blocks of two rows: a row of data (labelled "data") over the row of their
    reconstructions (labelled "recon."), the mean of p(x | z = E_q[z|x]) from
    :meth:`VAE.reconstruct`. Up to ``nrow`` images per row; the VAE runs in eval mode and its
    training flags are restored afterwards.
    """
    _check_vae(vae)
    if int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    if int(nrow) < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow}")
    xt = torch.as_tensor(x)[: int(n)]
    if xt.dim() < 2 or xt.shape[0] == 0:
        raise ValueError(f"x must have shape (N, D) with N >= 1, got {tuple(torch.as_tensor(x).shape)}")
    originals = _to_images(xt, image_shape, value_range)
    xin = xt.reshape(xt.shape[0], -1).to(_device(vae), torch.get_default_dtype())
    with _eval_mode(vae), torch.no_grad():
        recon = _to_images(vae.reconstruct(xin), image_shape, value_range)

    count = originals.shape[0]
    cols = min(int(nrow), count)
    blank = torch.full_like(originals[:1], _PAD_VALUE)
    rows: list[torch.Tensor] = []
    for start in range(0, count, cols):
        for part in (originals[start : start + cols], recon[start : start + cols]):
            fill = cols - part.shape[0]
            rows.append(torch.cat([part, blank.expand(fill, -1, -1, -1)]) if fill else part)
    fig, ax, (h, _) = _grid_axes(torch.cat(rows), cols, "Data (upper row) over reconstructions (lower row)")
    ax.set_yticks(_cell_centres(len(rows), h), ["data", "recon."] * (len(rows) // 2), fontsize=8)
    ax.tick_params(axis="y", length=0)
    return _save(fig, path)


def prior_samples(
    vae: VAE,
    image_shape: tuple[int, ...],
    n: int = 100,
    path: PathLike | None = None,
    seed: int = 0,
    *,
    nrow: int = 10,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Figure:
    """Means of p(x|z) for ``n`` draws z ~ p(z) — what the generative model has learned.

    The draws are reproducible (``seed``) and leave the caller's global torch RNG state
    untouched (it is forked and restored).
    """
    _check_vae(vae)
    if int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    with _seeded(seed, _device(vae)), _eval_mode(vae), torch.no_grad():
        means = vae.sample(int(n), mean=True)
    imgs = _to_images(means, image_shape, value_range)
    fig, _, _ = _grid_axes(imgs, min(int(nrow), int(n)), f"Means of p(x|z), z ~ p(z) ({int(n)} draws, seed {seed})")
    return _save(fig, path)


def _prior_scale(vae: VAE) -> torch.Tensor:
    """Per-dimension standard deviation of p(z): closed form if available, else 4096 draws (seed 0)."""
    d = vae.prior()
    try:
        scale = d.stddev.detach()
        if tuple(scale.shape) == (vae.latent_dim,) and bool(torch.isfinite(scale).all()):
            return scale
    except (NotImplementedError, AttributeError):
        pass
    with _seeded(0, _device(vae)), torch.no_grad():
        return d.sample((4096,)).std(0)


def latent_traversal(
    vae: VAE,
    image_shape: tuple[int, ...],
    dims: int | Sequence[int] = 10,
    steps: int = 9,
    span: float = 3.0,
    path: PathLike | None = None,
    *,
    center: torch.Tensor | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Figure:
    """Decoder means along one latent axis at a time: row i varies z[d_i], the others stay put.

    Each row varies one latent dimension over ``steps`` evenly spaced values in
    ``[-span, span]`` in units of the prior's standard deviation of that dimension (1 for
    N(0, I); estimated by Monte Carlo for priors without a closed form), around ``center``
    (default: zero), with all other dimensions at ``center`` (zero). Cells show the mean of p(x|z).

    Args:
        dims: the number of leading dimensions to show (capped at ``latent_dim``), or a
            sequence of dimension indices.
        steps: values per row (columns).
        span: the largest deviation from the centre, in prior standard deviations.
        center: a ``(latent_dim,)`` point to traverse around instead of zero.
    """
    _check_vae(vae)
    L = int(vae.latent_dim)
    if isinstance(dims, int):
        if dims < 1:
            raise ValueError(f"dims must be a positive integer or a sequence of indices, got {dims}")
        index = list(range(min(dims, L)))
    else:
        index = [int(i) for i in dims]
        if not index or any(not 0 <= i < L for i in index):
            raise ValueError(f"dims must be a non-empty sequence of indices in [0, {L}), got {list(dims)}")
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if not (math.isfinite(float(span)) and float(span) > 0):
        raise ValueError(f"span must be a positive number, got {span}")
    device = _device(vae)
    base = torch.zeros(L) if center is None else torch.as_tensor(center, dtype=torch.float32).detach().cpu()
    if tuple(base.shape) != (L,):
        raise ValueError(f"center must have shape ({L},), got {tuple(base.shape)}")
    offsets = torch.linspace(-float(span), float(span), int(steps)) if int(steps) > 1 else torch.zeros(1)
    with _eval_mode(vae), torch.no_grad():
        scale = _prior_scale(vae).cpu().float()
        z = base.repeat(len(index), int(steps), 1)  # (rows, steps, L)
        for r, i in enumerate(index):
            z[r, :, i] = base[i] + offsets * scale[i]
        z = z.reshape(-1, L).to(device, torch.get_default_dtype())
        means = vae.decoder(z).mean
    imgs = _to_images(means, image_shape, value_range)
    others = "0" if center is None else "at center"
    title = f"Latent traversal: decoder means, one z dim varied (others {others})"
    fig, ax, (h, w) = _grid_axes(imgs, int(steps), title)
    ax.set_yticks(_cell_centres(len(index), h), [f"z[{i}]" for i in index], fontsize=8)
    every = max(1, math.ceil(int(steps) / 9))
    ticks = [
        (c, f"{o:+.3g}σ" if o != 0 else "0")
        for k, (c, o) in enumerate(zip(_cell_centres(int(steps), w), offsets.tolist()))
        if k % every == 0
    ]
    ax.set_xticks([c for c, _ in ticks], [t for _, t in ticks], fontsize=7)
    ax.tick_params(length=0)
    return _save(fig, path)


# -- latent space -------------------------------------------------------------------------------
def latent_scatter(
    vae: VAE,
    x: torch.Tensor,
    labels: torch.Tensor | np.ndarray | None = None,
    path: PathLike | None = None,
    method: str = "pca",
    *,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """A 2-D scatter of the posterior means E_q[z|x] of ``x`` (:meth:`VAE.encode`).

    Projection: the latent coordinates themselves when ``latent_dim <= 2`` or ``method="dims"``
    (first two dimensions), otherwise the first two principal components (``method="pca"``,
    scikit-learn ``PCA(random_state=0)``). Axis labels name the projection and the share of
    the posterior means' total variance each axis carries. With ``latent_dim == 1`` the y axis
    is a small fixed jitter. Points are coloured by ``labels``: a legend (``tab10``/``tab20``)
    for up to 20 integer classes, a colourbar otherwise.
    """
    _check_vae(vae)
    if method not in ("pca", "dims"):
        raise ValueError(f"method must be 'pca' or 'dims', got {method!r}")
    xt = torch.as_tensor(x)
    if xt.dim() < 2 or xt.shape[0] < 2:
        raise ValueError(f"x must have shape (N, D) with N >= 2, got {tuple(xt.shape)}")
    z = _encode(vae, xt).double().numpy()
    n, L = z.shape
    total = float(z.var(axis=0).sum()) or 1.0
    if L == 1:
        pts = np.stack([z[:, 0], np.random.default_rng(0).uniform(-0.5, 0.5, n)], axis=1)
        xlabel = f"z[0] (posterior mean, {100 * z[:, 0].var() / total:.1f}% of variance)"
        ylabel = "jitter (no meaning)"
        what = "1-D latent"
    elif L == 2 or method == "dims":
        pts = z[:, :2]
        share = 100 * pts.var(axis=0) / total
        xlabel = f"z[0] (posterior mean, {share[0]:.1f}% of variance)"
        ylabel = f"z[1] (posterior mean, {share[1]:.1f}% of variance)"
        what = f"first two dims of {L}-D latent" if L > 2 else "2-D latent"
    else:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=0)
        pts = pca.fit_transform(z)
        ev = 100 * pca.explained_variance_ratio_
        xlabel = f"PC1 of posterior means ({ev[0]:.1f}% of variance)"
        ylabel = f"PC2 of posterior means ({ev[1]:.1f}% of variance)"
        what = f"PCA of {L}-D latent"

    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    size = float(np.clip(6000.0 / n, 4.0, 25.0))
    if labels is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=size, alpha=0.7, color="tab:blue", linewidths=0)
    else:
        lab = np.asarray(torch.as_tensor(labels).detach().cpu()).reshape(-1)
        if lab.shape[0] != n:
            raise ValueError(f"labels has {lab.shape[0]} entries but x has {n} datapoints")
        classes = np.unique(lab)
        discrete = (lab.dtype.kind in "biu" or bool(np.all(lab == np.round(lab)))) and len(classes) <= 20
        if discrete:
            cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
            names = list(class_names) if class_names is not None else None
            for k, c in enumerate(classes):
                m = lab == c
                if names is not None and 0 <= int(c) < len(names):
                    name = str(names[int(c)])
                else:
                    name = f"{c:g}" if lab.dtype.kind == "f" else str(c)
                ax.scatter(pts[m, 0], pts[m, 1], s=size, alpha=0.7, color=cmap(k % cmap.N), linewidths=0, label=name)
            ax.legend(title="label", markerscale=max(1.0, 20.0 / size) ** 0.5, fontsize=8, title_fontsize=8,
                      loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        else:
            sc = ax.scatter(pts[:, 0], pts[:, 1], s=size, alpha=0.7, c=lab.astype(float), cmap="viridis", linewidths=0)
            fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"Posterior means E_q[z|x] ({what}, n={n})", fontsize=10)
    return _save(fig, path)


# -- training curves ----------------------------------------------------------------------------
#: (column, transform sign, legend label) of the bound panel
_BOUND_COLUMNS = (
    ("train_loss", -1.0, "train −loss (bound)"),
    ("train_elbo", 1.0, "train ELBO"),
    ("val_elbo", 1.0, "validation ELBO"),
    ("val_loss", -1.0, "validation −loss"),
)
#: columns of the decomposition panel
_TERM_COLUMNS = (
    ("train_kl", 1.0, "train KL(q‖p)"),
    ("val_kl", 1.0, "validation KL(q‖p)"),
    ("train_reconstruction", 1.0, "train reconstruction"),
    ("val_reconstruction", 1.0, "validation reconstruction"),
)


def _read_history(history: Sequence[Mapping[str, Any]] | PathLike) -> list[Mapping[str, Any]]:
    if isinstance(history, (str, os.PathLike)):
        with open(history, newline="") as fh:
            rows: list[Mapping[str, Any]] = list(csv.DictReader(fh))
        source = f"{os.fspath(history)!r}"
    else:
        rows = list(history)
        source = "history"
    if not rows:
        raise ValueError(f"{source} has no rows: nothing to plot (train for at least one epoch first)")
    return rows


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray | None:
    if not any(key in r for r in rows):
        return None
    out = np.full(len(rows), np.nan)
    for i, r in enumerate(rows):
        v = r.get(key)
        if v is None or (isinstance(v, str) and v.strip() == ""):
            continue
        try:
            out[i] = float(v.item() if hasattr(v, "item") else v)
        except (TypeError, ValueError):
            raise ValueError(f"column {key!r} row {i} holds {v!r}, which is not a number") from None
    return out if bool(np.isfinite(out).any()) else None


def loss_curves(
    history: Sequence[Mapping[str, Any]] | PathLike, path: PathLike | None = None
) -> Figure:
    """Training curves in nats per datapoint, from a list of per-epoch dicts or a ``metrics.csv``.

    Left panel: the bound — ``−train_loss`` (the loss is the negative bound), ``train_elbo``,
    ``val_elbo`` and ``−val_loss`` where present. Right panel (only if any is present): the
    terms ``train_kl``/``val_kl`` and ``train_reconstruction``/``val_reconstruction``. The x
    axis is ``epoch`` (row number when absent). Missing columns and blank cells are skipped.

    Raises:
        ValueError: the history is empty, has no plottable column, or a cell is not a number.
    """
    rows = _read_history(history)
    epoch = _column(rows, "epoch")
    xs = epoch if epoch is not None else np.arange(1, len(rows) + 1, dtype=float)
    panels = []
    for spec, ylabel, title in (
        (_BOUND_COLUMNS, "bound (nats per datapoint)", "Bound (higher is better)"),
        (_TERM_COLUMNS, "nats per datapoint", "KL and reconstruction terms"),
    ):
        series = [(sign * col, label) for key, sign, label in spec if (col := _column(rows, key)) is not None]
        if series:
            panels.append((series, ylabel, title))
    if not panels:
        wanted = ", ".join(k for k, _, _ in _BOUND_COLUMNS + _TERM_COLUMNS)
        present = sorted({k for r in rows for k in r})
        raise ValueError(f"history has none of the plottable columns ({wanted}); it has {present}")

    fig = Figure(figsize=(5.0 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    marker = "o" if len(rows) <= 30 else None
    for ax, (series, ylabel, title) in zip(axes, panels):
        for ys, label in series:
            ok = np.isfinite(ys)
            ax.plot(xs[ok], ys[ok], marker=marker, markersize=3, linewidth=1.5, label=label)
        ax.set_xlabel("epoch" if epoch is not None else "row")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


# -- diagnostics --------------------------------------------------------------------------------
def khat_plot(
    khat: torch.Tensor | np.ndarray | Sequence[float],
    path: PathLike | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Per-datapoint Pareto k̂ (PSIS) against datapoint index, with thresholds at 0.5 and 0.7.

    Points are coloured by band — k̂ ≤ 0.5 (good: importance weights have finite variance),
    0.5 < k̂ ≤ 0.7 (ok), k̂ > 0.7 (unreliable: the guide misses mass of the posterior) — and
    the legend gives each band's share of the datapoints. k̂ = −inf (constant weights: the
    guide is exact there) counts as good and k̂ = +inf (infinite weights) as bad; both are drawn
    clipped to the plot's edge. NaN values are not drawn but are counted in the legend.
    """
    k = np.asarray(torch.as_tensor(khat).detach().cpu(), dtype=float).reshape(-1)
    if k.size == 0:
        raise ValueError("khat is empty: pass one Pareto k̂ per datapoint")
    n = k.size
    idx = np.arange(n)
    finite = ~np.isnan(k)
    bands = (
        (finite & (k <= 0.5), "tab:green", r"$\hat{k} \leq 0.5$ (good)"),
        (finite & (k > 0.5) & (k <= 0.7), "tab:orange", r"$0.5 < \hat{k} \leq 0.7$ (ok)"),
        (finite & (k > 0.7), "tab:red", r"$\hat{k} > 0.7$ (bad)"),
    )
    real = k[np.isfinite(k)]
    lo = min(float(real.min()) if real.size else 0.0, 0.0) - 0.1
    hi = max(float(real.max()) if real.size else 1.0, 1.0) + 0.1
    k = np.clip(k, lo, hi)  # ±inf drawn at the edges
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    size = float(np.clip(3000.0 / n, 3.0, 25.0))
    handles = []
    for mask, color, label in bands:
        m = int(mask.sum())
        ax.scatter(idx[mask], k[mask], s=size, color=color, alpha=0.8, linewidths=0)
        share = f"{label}: {100 * m / n:.1f}% ({m})"
        handles.append(Line2D([], [], linestyle="", marker="o", color=color, label=share))
    if not finite.all():
        m = int((~finite).sum())
        share = f"NaN: {100 * m / n:.1f}% ({m})"
        handles.append(Line2D([], [], linestyle="", marker="x", color="grey", label=share))
    for level, color in ((0.5, "tab:orange"), (0.7, "tab:red")):
        ax.axhline(level, color=color, linestyle="--", linewidth=1)
    ax.set_xlabel("datapoint index")
    ax.set_ylabel(r"Pareto $\hat{k}$")
    ax.set_title(title or rf"PSIS Pareto $\hat{{k}}$ per datapoint (n={n})", fontsize=10)
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)
