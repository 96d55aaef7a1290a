"""Export a model/guide pair on data to the installed ArviZ's native object.

ArviZ 0.x gets an ``arviz.InferenceData``, ArviZ 1.x (arviz-base / arviz-stats / arviz-plots,
Python ≥ 3.12) an ``xarray.DataTree``; both hold the same groups. This module draws the samples
with torch; the torch-free :mod:`._arviz_groups` turns the numpy arrays into the ArviZ object.

Groups and dims (``obs`` indexes datapoints — ``obs_id`` when a site is called ``obs`` —
``latent`` the dims of ``z``, ``feature`` those of x; one variable per observed site):

=====================  ==========================================  ==============================
group                  variables                                   dims
=====================  ==========================================  ==============================
posterior              latent sites, draws z ~ q(z|x_i)            chain, draw, obs, latent
log_likelihood         observed site, log p(x_i | z)               chain, draw, obs
posterior_predictive   observed site, x_rep ~ p(x | z), z ~ q      chain, draw, obs, feature
prior                  latent sites, z ~ p(z)                      chain, draw, obs, latent
prior_predictive       observed site, x ~ p(x | z), z ~ p(z)       chain, draw, obs, feature
observed_data          observed site, its observed value (obs=)    obs, feature
sample_stats           log_weight = log p(x_i, z) − log q(z|x_i)   chain, draw, obs
                       khat, ess (per datapoint)                   obs
=====================  ==========================================  ==============================

The ``posterior`` group holds draws from the *amortized guide*, not the exact posterior: they are
independent (chains are an arbitrary split of them, so ``r_hat`` ≈ 1 by construction) and can be
reweighted to the posterior with ``sample_stats.log_weight`` when k̂ is small. Site names other
than ``z`` and ``x`` get dims ``<site>_dim``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..program import log_weights, particle_traces, site_log_prob
from ..vae import DATA_PLATE
from ._arviz_groups import build, importance_ess
from ._arviz_groups import elpd_data as _elpd_data
from ._common import (
    DEFAULT_MEMORY_BUDGET,
    SampleSizeWarning,
    check_budget,
    check_positive,
    chunk_plan,
    flat_values,
    latent_sites,
    make_pair,
    observed_sites,
    resolve,
    sample_chunks,
    trace_prior,
    warn,
)
from .importance import MIN_SAMPLES, khat_threshold, pareto_khat


def _dim_name(site: str, kind: str) -> str:
    if kind == "latent":
        return "latent" if site == "z" else f"{site}_dim"
    return "feature" if site == "x" else f"{site}_dim"


def to_inference_data(
    model: Any,
    guide: Any = None,
    x: Any = None,
    *,
    num_samples: int = 200,
    num_chains: int = 2,
    predictive: bool = True,
    prior: bool = True,
    obs_coords: Any = None,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    max_plate_nesting: int | None = None,
    plate_name: str = DATA_PLATE,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    obs_site: str | Sequence[str] | None = None,
):
    """``num_samples`` guide draws per datapoint of ``x`` as the installed ArviZ's native object.

    That is an ``arviz.InferenceData`` on ArviZ 0.x and an ``xarray.DataTree`` on ArviZ 1.x, with
    the same groups either way. Call as ``to_inference_data(vae, x)``,
    ``to_inference_data((model, guide), x)`` or ``to_inference_data(model, guide, x)``. Works
    with ``az.summary``, ``az.loo``, ``az.compare``, ``az.plot_posterior`` (1.x: ``az.plot_dist``),
    ``az.plot_ppc`` (1.x: ``az.plot_ppc_dist``) and, through :func:`elpd_data`, ``az.plot_khat``.

    Args:
        num_samples: draws per datapoint in all, split evenly into ``num_chains`` chains.
        predictive: include ``posterior_predictive`` (N · num_samples · D numbers: mind the size).
        prior: include ``prior`` and ``prior_predictive`` (as many draws).
        obs_coords: labels of the datapoints (default 0..N−1).
        obs_site: the observed site(s) to export (a name or a list of names); default every
            observed site in the data plate.

    The observed sites are found in the model's trace by name: ``observed_data`` holds each
    site's observed value (what the model passed as ``obs=``, e.g. ``x.reshape(-1, 784)``), not
    the data argument, and ``log_likelihood`` / the predictive groups have one variable per
    site, named after it. With several observed sites, ``sample_stats.log_weight`` (and k̂, the
    ELPD) is the joint one; ArviZ's ``loo`` then needs ``var_name=`` to pick a site. The
    datapoint dim is ``obs`` unless a site is called ``obs`` (as in Pyro's ``examples/vae``):
    then it is ``obs_id``.

    The k̂ in ``sample_stats`` come from the exported weights (at least 25 draws; fewer than
    100 warns); for a sharper k̂ use :func:`importance_diagnostics` with more samples.

    Example:
        >>> from pyro_vae.testing import LinearGaussian
        >>> lg = LinearGaussian(x_dim=5, latent_dim=2)
        >>> idata = to_inference_data((lg.model, lg.exact_guide), lg.sample(3), num_samples=100)
        >>> dict(idata.posterior["z"].sizes)
        {'chain': 2, 'draw': 50, 'obs': 3, 'latent': 2}
    """
    m, g, x = resolve(model, guide, x, "to_inference_data")
    num_samples = check_positive("num_samples", num_samples)
    num_chains = check_positive("num_chains", num_chains)
    if num_samples % num_chains:
        raise ValueError(f"num_samples={num_samples} must be a multiple of num_chains={num_chains}")
    memory_budget = check_budget(memory_budget)
    pair = make_pair(m, g, x, model_args, model_kwargs, plate_name, max_plate_nesting)
    n = x.shape[0]
    chunks, per = chunk_plan(x, num_samples, memory_budget)
    groups: dict[str, dict[str, np.ndarray]] = {k: {} for k in ("posterior", "log_likelihood", "posterior_predictive",
                                                                "prior", "prior_predictive", "sample_stats")}
    dims: dict[str, list[str]] = {}
    coords: dict[str, Any] = {"obs": np.arange(n) if obs_coords is None else np.asarray(obs_coords)}
    obs_names: list[str] | None = None
    observed: dict[str, np.ndarray] = {}

    def put(group: str, name: str, s0: int, lo: int, hi: int, value: torch.Tensor, dtype: Any) -> None:
        arr = groups[group].get(name)
        if arr is None:
            arr = np.empty((num_samples, n, *value.shape[2:]), dtype=dtype)
            groups[group][name] = arr
        arr[s0 : s0 + value.shape[0], lo:hi] = value.detach().cpu().numpy()

    with torch.no_grad():
        for lo, hi in chunks:
            xb = x[lo:hi]
            b = hi - lo
            cp = pair.at(lo, hi)  # per-datapoint arguments sliced with x
            for s0, k in sample_chunks(num_samples, per):
                tr = particle_traces(cp.model, cp.guide, cp.call_args(xb), cp.kwargs, k,
                                     cp.max_plate_nesting, plate_name)
                if obs_names is None:
                    obs_names = _pick_observed(tr.model_trace, plate_name, obs_site)
                for site in latent_sites(tr.guide_trace, plate_name):
                    name = site["name"]
                    put("posterior", name, s0, lo, hi, flat_values(site, k, b, plate_name), np.float64)
                    dims[name] = [_dim_name(name, "latent")]
                for obs_name in obs_names:
                    osite = tr.model_trace.nodes[obs_name]
                    if s0 == 0:  # the site's observed value, one row per datapoint
                        value = flat_values(osite, None, b, plate_name).detach().cpu().numpy()
                        if obs_name not in observed:
                            observed[obs_name] = np.empty((n, value.shape[-1]), dtype=value.dtype)
                        observed[obs_name][lo:hi] = value
                    lp, _ = site_log_prob(osite, tr, plate_name)
                    put("log_likelihood", obs_name, s0, lo, hi, lp.expand(k, b), np.float64)
                    if predictive:
                        rep_site = dict(osite, value=osite["fn"].sample())
                        put("posterior_predictive", obs_name, s0, lo, hi, flat_values(rep_site, k, b, plate_name),
                            np.float32)

                put("sample_stats", "log_weight", s0, lo, hi, log_weights(tr, plate_name), np.float64)
                if prior:
                    pt = trace_prior(cp, xb, k)
                    for site in latent_sites(pt, plate_name, who="model"):
                        put("prior", site["name"], s0, lo, hi, flat_values(site, k, b, plate_name), np.float64)
                        dims.setdefault(site["name"], [_dim_name(site["name"], "latent")])
                    for obs_name in obs_names:
                        put("prior_predictive", obs_name, s0, lo, hi,
                            flat_values(pt.nodes[obs_name], k, b, plate_name), np.float32)
    assert obs_names is not None
    for obs_name in obs_names:
        dims[obs_name] = [_dim_name(obs_name, "observed")]
    data_dim = _datapoint_dim(set(dims) | {d for v in dims.values() for d in v})
    coords = {data_dim: coords["obs"]}
    draws = num_samples // num_chains
    data: dict[str, dict[str, np.ndarray]] = {}
    data_dims: dict[str, dict[str, list[str]]] = {}
    for group, vals in groups.items():
        if vals:  # the log-likelihood and the weights are one number per draw and datapoint
            data[group] = {name: v.reshape(num_chains, draws, *v.shape[1:]) for name, v in vals.items()}
            data_dims[group] = {name: ["chain", "draw", data_dim,
                                       *([] if group in ("log_likelihood", "sample_stats") else dims[name])]
                                for name in vals}
    data["observed_data"] = observed
    data_dims["observed_data"] = {name: [data_dim, *dims[name]] for name in observed}
    lw = groups["sample_stats"]["log_weight"]
    data["sample_stats"]["ess"] = importance_ess(lw)
    data_dims["sample_stats"]["ess"] = [data_dim]
    if num_samples >= MIN_SAMPLES:
        data["sample_stats"]["khat"] = pareto_khat(torch.as_tensor(lw)).numpy()
        data_dims["sample_stats"]["khat"] = [data_dim]
    else:
        warn(
            f"to_inference_data: {num_samples} draws per datapoint are too few for k̂ (at least {MIN_SAMPLES}); "
            "sample_stats has no khat",
            SampleSizeWarning,
        )
    return build(
        data,
        data_dims,
        coords,
        attrs={"inference_library": "pyro_vae",
               "posterior_kind": "independent draws from the amortized guide q(z|x); reweight with "
                                 "sample_stats.log_weight"},
    )


def _pick_observed(trace: Any, plate_name: str, obs_site: str | Sequence[str] | None) -> list[str]:
    """Names of the observed sites to export: all in the data plate, or those ``obs_site`` names."""
    names = [s["name"] for s in observed_sites(trace, plate_name)]
    if obs_site is None:
        return names
    wanted = [obs_site] if isinstance(obs_site, str) else list(obs_site)
    if not wanted:
        raise ValueError(f"obs_site is empty; name one or more of the observed sites {names}")
    for name in wanted:
        if name not in names:
            raise ValueError(f"obs_site: no observed site named {name!r} in the {plate_name!r} plate; "
                             f"observed sites are {', '.join(repr(s) for s in names)}")
    return wanted


def _datapoint_dim(taken: set[str]) -> str:
    """``obs`` unless a site or dim already has that name (Pyro's examples call the observed site ``obs``)."""
    for name in ("obs", "obs_id", "datapoint"):
        if name not in taken:
            return name
    i = 0
    while f"obs_id{i}" in taken:
        i += 1
    return f"obs_id{i}"


def elpd_data(idata: Any):
    """The installed ArviZ's ``ELPDData`` from :func:`to_inference_data` output, for ``az.plot_khat``.

    ``elpd_loo`` (1.x: ``elpd``) holds Σ_i log p̂(x_i), the importance-sampled log-likelihood of
    the exported datapoints (an expected log predictive density when they are held out),
    ``pareto_k`` the per-datapoint k̂ and ``good_k`` the sample-size-dependent threshold
    min(1 − 1/log10 S, 0.7). On ArviZ 0.x it is ``arviz.stats.stats_utils.ELPDData``, on 1.x
    ``arviz_stats.ELPDDataLOO``; both feed ``az.plot_khat`` and ``az.compare``.

    Example:
        >>> from pyro_vae.testing import LinearGaussian
        >>> lg = LinearGaussian(x_dim=5, latent_dim=2)
        >>> idata = to_inference_data((lg.model, lg.scaled_guide(1.5)), lg.sample(3), num_samples=100)
        >>> elpd_data(idata)["pareto_k"].dims
        ('obs',)
    """
    return _elpd_data(idata, khat_threshold)


__all__ = ["to_inference_data", "elpd_data"]
