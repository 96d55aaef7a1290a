"""The torch-free half of :func:`pyro_vae.diagnostics.to_inference_data`: numpy arrays → ArviZ.

This module imports numpy only; ArviZ and xarray are imported when a function runs. It never
imports torch or the rest of :mod:`pyro_vae`, so it can be loaded on its own from its file
(``tests/test_arviz1_groups.py`` does that in a Python ≥ 3.12 environment holding just
``arviz>=1`` and numpy).

It returns the *native* object of the installed ArviZ:

* ArviZ 0.x (``arviz.InferenceData`` exists): an ``arviz.InferenceData``;
* ArviZ 1.x (arviz-base / arviz-stats / arviz-plots): an ``xarray.DataTree`` with one child
  node per group.

Both hold the same groups, variables, dims, coords and attrs, so ``obj.posterior["z"]``,
``obj["sample_stats"]["khat"]`` and ArviZ's ``summary`` / ``loo`` / ``compare`` / ``plot_khat``
work on either (the plotting functions have new names in 1.x: ``plot_posterior`` →
``plot_dist``, ``plot_ppc`` → ``plot_ppc_dist``).
"""

from __future__ import annotations

import datetime
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

#: ArviZ's group order (0.x ``InferenceData``'s canonical one); groups are written in this order
GROUP_ORDER = (
    "posterior",
    "posterior_predictive",
    "log_likelihood",
    "sample_stats",
    "prior",
    "prior_predictive",
    "observed_data",
)


def arviz_major() -> int:
    """The major version of the installed ArviZ: 0 (``InferenceData``) or 1 and later (``DataTree``)."""
    import arviz as az

    # not hasattr(az, "InferenceData"): ArviZ 1.x answers that with a MigrationWarning and a DataTree
    head = str(az.__version__).split(".")[0]
    return int(head) if head.isdigit() else 0


def build(
    groups: Mapping[str, Mapping[str, np.ndarray]],
    dims: Mapping[str, Mapping[str, Sequence[str]]],
    coords: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
):
    """The installed ArviZ's native object (``InferenceData`` on 0.x, ``DataTree`` on 1.x).

    Args:
        groups: ``{group: {variable: array}}``; empty or ``None`` groups are left out.
        dims: ``{group: {variable: dims}}`` naming *every* axis of each array, ``chain`` and
            ``draw`` included where the array has them (``observed_data`` and per-datapoint
            statistics have none). Per group, because one site name (``x``) carries different
            dims in different groups.
        coords: coordinate values per dim; dims without one get ``0..n−1``.
        attrs: attributes stored on every group (``created_at`` and ``arviz_version`` are added).
    """
    import arviz as az
    import xarray as xr

    unknown = set(groups) - set(GROUP_ORDER)
    if unknown:
        raise ValueError(f"unknown ArviZ groups {sorted(unknown)}; known: {list(GROUP_ORDER)}")
    coords = dict(coords or {})
    meta = {
        "created_at": datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None).isoformat(),
        "arviz_version": str(az.__version__),
        **dict(attrs or {}),
    }
    datasets: dict[str, Any] = {}
    for group in GROUP_ORDER:
        variables = groups.get(group)
        if not variables:
            continue
        data_vars = {}
        for name, value in variables.items():
            arr = np.asarray(value)
            names = tuple(dims[group][name])
            if len(names) != arr.ndim:
                raise ValueError(f"{group}.{name}: dims {names} for an array of shape {arr.shape}")
            var_coords = {}
            for axis, dim in enumerate(names):
                values = coords.get(dim)
                if values is None:
                    values = np.arange(arr.shape[axis])
                values = np.asarray(values)
                if values.shape != (arr.shape[axis],):
                    raise ValueError(f"{group}.{name}: coords of {dim!r} have shape {values.shape}, "
                                     f"the axis has length {arr.shape[axis]}")
                var_coords[dim] = values
            data_vars[name] = xr.DataArray(arr, dims=names, coords=var_coords)
        datasets[group] = xr.Dataset(data_vars, attrs=dict(meta))
    if arviz_major() == 0:
        return az.InferenceData(**datasets)
    return xr.DataTree.from_dict(datasets)


def group_names(obj: Any) -> list[str]:
    """The groups of an ``InferenceData`` (0.x) or a ``DataTree`` (1.x)."""
    if hasattr(obj, "groups") and callable(obj.groups) and not hasattr(obj, "children"):
        return list(obj.groups())
    return list(obj.children)


def group(obj: Any, name: str):
    """One group as an ``xarray.Dataset``, from an ``InferenceData`` or a ``DataTree``."""
    node = obj[name]
    return node.to_dataset() if hasattr(node, "to_dataset") and hasattr(node, "children") else node


def logsumexp(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """log Σ exp(a) along ``axis``, stable; all −inf gives −inf."""
    a = np.asarray(a, dtype=np.float64)
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


def importance_ess(log_weight: np.ndarray) -> np.ndarray:
    """Kish's effective sample size (Σ w)² / Σ w² of ``(S, N)`` log weights, per datapoint."""
    lw = np.asarray(log_weight, dtype=np.float64)
    return np.exp(2 * logsumexp(lw, 0) - logsumexp(2 * lw, 0))


def make_elpd_data(elpd_i: Any, pareto_k: Any, *, n_samples: int, good_k: float, obs_coords: Any = None):
    """The installed ArviZ's ``ELPDData`` for per-datapoint ``elpd_i`` and k̂ ``pareto_k`` (dim ``obs``).

    The total ``elpd`` is Σ_i elpd_i with SE √N · sd_i(elpd_i); ``p`` has no meaning here and is 0.
    ArviZ 0.x: ``arviz.stats.stats_utils.ELPDData`` (``elpd_loo``, ``loo_i``, ``pareto_k``);
    ArviZ 1.x: ``arviz_stats.ELPDDataLOO`` (``elpd``, ``elpd_i``, ``pareto_k``). Both feed
    ``az.plot_khat`` and ``az.compare``.
    """
    import xarray as xr

    ll_i = np.asarray(elpd_i, dtype=np.float64).reshape(-1)
    khat = np.asarray(pareto_k, dtype=np.float64).reshape(-1)
    n = ll_i.size
    if khat.size != n:
        raise ValueError(f"{n} elpd_i but {khat.size} pareto_k")
    coords = {"obs": np.arange(n) if obs_coords is None else np.asarray(obs_coords)}
    elpd = float(ll_i.sum())
    se = float(np.std(ll_i, ddof=1) * math.sqrt(n)) if n > 1 else 0.0
    warning = bool((khat > good_k).any())
    if arviz_major() == 0:
        from arviz.stats.stats_utils import ELPDData

        ll = xr.DataArray(ll_i, dims=["obs"], coords=coords, name="loo_i")
        k = xr.DataArray(khat, dims=["obs"], coords=coords, name="pareto_shape")
        return ELPDData(
            data=[elpd, se, 0.0, int(n_samples), n, warning, ll, k, "log", float(good_k)],
            index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i", "pareto_k", "scale",
                   "good_k"],
        )
    from arviz_stats import ELPDDataLOO

    ll = xr.DataArray(ll_i, dims=["obs"], coords=coords, name="elpd_i")
    k = xr.DataArray(khat, dims=["obs"], coords=coords, name="pareto_k")
    return ELPDDataLOO(elpd=elpd, se=se, p=0.0, n_samples=int(n_samples), n_data_points=n, scale="log",
                       warning=warning, good_k=float(good_k), elpd_i=ll, pareto_k=k)


def elpd_data(obj: Any, threshold: Callable[[int], float]):
    """:func:`make_elpd_data` from an exported object's ``sample_stats`` (``log_weight``, ``khat``).

    elpd_i = log p̂(x_i) = log mean_s exp(log_weight); ``threshold(S)`` is the k̂ reliability
    threshold for S draws per datapoint.
    """
    stats = group(obj, "sample_stats")
    if "khat" not in stats or "log_weight" not in stats:
        raise ValueError("sample_stats needs khat and log_weight; build it with to_inference_data")
    khat = stats["khat"]
    if khat.ndim != 1:
        raise ValueError(f"sample_stats.khat must have one dim (the datapoints); it has {khat.dims}")
    dim = khat.dims[0]  # "obs", or "obs_id" when a site is called "obs"
    lw = stats["log_weight"].transpose("chain", "draw", dim).values
    s = lw.shape[0] * lw.shape[1]
    ll_i = logsumexp(lw.reshape(s, -1), 0) - math.log(s)
    return make_elpd_data(ll_i, khat.values, n_samples=s, good_k=threshold(s), obs_coords=khat[dim].values)


__all__ = ["GROUP_ORDER", "arviz_major", "build", "group_names", "group", "importance_ess", "make_elpd_data", "elpd_data",
           "logsumexp"]
