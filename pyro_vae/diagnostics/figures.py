"""Figures of the diagnostics: KL per dimension, SBC rank histograms, predictive checks.

Like :mod:`pyro_vae.plots` (whose :func:`~pyro_vae.plots.khat_plot` draws the per-datapoint
k̂), every function builds a :class:`matplotlib.figure.Figure` directly — nothing is
registered with pyplot, nothing needs closing — and saves it when ``path`` is given.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Union

import numpy as np

from .checks import PredictiveCheck, SBCResult
from .latent import LatentDiagnostics

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

_MAX_SBC_PANELS = 16

PathLike = Union[str, "os.PathLike[str]"]


def _figure(**kwargs) -> Figure:
    from matplotlib.figure import Figure  # lazy: importing the diagnostics stays light

    return Figure(layout="constrained", **kwargs)


def _save(fig: Figure, path: PathLike | None) -> Figure:
    """Save with :mod:`pyro_vae.plots`' saver (``DPI``, tight box, parents created) and return the figure."""
    if path is not None:
        from ..plots import _save as save  # lazy: pyro_vae.plots imports matplotlib

        save(fig, path)
    return fig


def kl_per_dim_plot(latent: LatentDiagnostics, path: PathLike | None = None) -> Figure:
    """Bars of E_x KL(q(z_u|x) ‖ p(z_u)) per latent dimension; inactive units in grey."""
    kl = latent.kl_per_dim.numpy()
    active = latent.active.numpy()
    d = kl.shape[0]
    fig = _figure(figsize=(max(4.0, min(14.0, 0.25 * d + 2.0)), 3.6))
    ax = fig.add_subplot()
    colors = np.where(active, "tab:blue", "lightgrey")
    ax.bar(np.arange(d), kl, color=colors, width=0.8)
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL(q(z_u|x) ‖ p(z_u)), nats")
    ax.set_title(
        f"KL per dimension ({latent.kl_method}); {latent.num_active}/{d} active units (blue), "
        f"I(x;z) ≈ {latent.mutual_information:.2f} nats",
        fontsize=9,
    )
    if d <= 30:
        ax.set_xticks(np.arange(d))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def sbc_plot(result: SBCResult, path: PathLike | None = None) -> Figure:
    """Rank histograms per latent dimension (up to 16) with the 99% band of a uniform histogram."""
    from scipy.stats import binom

    p = min(len(result.labels), _MAX_SBC_PANELS)
    order = np.argsort(result.pvalues.numpy())[:p] if len(result.labels) > p else np.arange(p)
    cols = min(4, p)
    rows = math.ceil(p / cols)
    fig = _figure(figsize=(2.6 * cols, 2.1 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    bins = result.num_bins
    n = result.num_simulations
    lo, hi = binom.ppf(0.005, n, 1 / bins), binom.ppf(0.995, n, 1 / bins)
    for ax in axes.flat[p:]:
        ax.set_visible(False)
    for ax, j in zip(axes.flat, order):
        counts = result.counts[:, j].numpy()
        ax.axhspan(lo, hi, color="lightgrey", alpha=0.6, linewidth=0)
        ax.axhline(n / bins, color="grey", linewidth=0.8)
        ax.bar(np.arange(bins), counts, width=1.0, color="tab:blue", alpha=0.8, edgecolor="white", linewidth=0.5)
        ax.set_title(f"{result.labels[j]}  p={float(result.pvalues[j]):.2g}", fontsize=8)
        ax.set_xticks([])
        ax.tick_params(labelsize=7)
    fig.suptitle(
        f"SBC rank histograms ({n} simulations, L={result.num_posterior_samples}); grey: 99% band if uniform; "
        f"combined p = {result.pvalue:.2g}",
        fontsize=9,
    )
    return _save(fig, path)


def ppc_plot(check: PredictiveCheck, path: PathLike | None = None) -> Figure:
    """Replicated vs observed data-set statistics (histograms) and the reliability curve."""
    names = list(check.statistics)
    panels = len(names) + 1
    fig = _figure(figsize=(3.2 * panels, 3.2))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, name in zip(axes, names):
        s = check.statistics[name]
        rep = s.replicated_total.numpy()
        ax.hist(rep, bins=min(30, max(5, len(rep) // 4)), color="tab:blue", alpha=0.7, label="replicated")
        ax.axvline(s.observed_total, color="black", linewidth=1.5, label="observed")
        ax.set_title(f"{name}: p = {s.ppp_total:.2f}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    cal = check.calibration
    pred, obs = cal["predicted"].numpy(), cal["observed"].numpy()
    lo = float(min(pred.min(), obs.min())) if pred.size else 0.0
    hi = float(max(pred.max(), obs.max())) if pred.size else 1.0
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--")
    ax.plot(pred, obs, marker="o", markersize=3, color="tab:red")
    ax.set_xlabel("predicted mean E[x_rep]", fontsize=8)
    ax.set_ylabel("observed mean", fontsize=8)
    ax.set_title(f"per-pixel calibration (error {check.calibration_error:.3g})", fontsize=9)
    ax.tick_params(labelsize=7)
    fig.suptitle(f"{check.kind.capitalize()} predictive check, {check.num_samples} replicates", fontsize=10)
    return _save(fig, path)


__all__ = ["kl_per_dim_plot", "sbc_plot", "ppc_plot"]
