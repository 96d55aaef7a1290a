"""Export a model/guide pair on data to the installed ArviZ's native object.

ArviZ 0.x gets an ``arviz.InferenceData``, ArviZ 1.x (arviz-base / arviz-stats / arviz-plots,
Python ≥ 3.12) an ``xarray.DataTree``; both hold the same groups. This module draws the samples
with torch; the torch-free :mod:`._arviz_groups` turns the numpy arrays into the ArviZ object.

Groups and dims (``obs`` indexes datapoints, ``latent`` the dims of ``z``, ``feature`` those of x):

=====================  ==========================================  ==============================
group                  variables                                   dims
=====================  ==========================================  ==============================
posterior              latent sites, draws z ~ q(z|x_i)            chain, draw, obs, latent
log_likelihood         observed site, log p(x_i | z)               chain, draw, obs
posterior_predictive   observed site, x_rep ~ p(x | z), z ~ q      chain, draw, obs, feature
prior                  latent sites, z ~ p(z)                      chain, draw, obs, latent
prior_predictive       observed site, x ~ p(x | z), z ~ p(z)       chain, draw, obs, feature
observed_data          observed site, the data                     obs, feature
sample_stats           log_weight = log p(x_i, z) − log q(z|x_i)   chain, draw, obs
                       khat, ess (per datapoint)                   obs
=====================  ==========================================  ==============================

The ``posterior`` group holds draws from the *amortized guide*, not the exact posterior: they are
independent (chains are an arbitrary split of them, so ``r_hat`` ≈ 1 by construction) and can be
reweighted to the posterior with ``sample_stats.log_weight`` when k̂ is small. Site names other
than ``z`` and ``x`` get dims ``<site>_dim``.
"""

from __future__ import annotations

from typing import Any

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
    obs_name = None

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
                if obs_name is None:
                    obs_name = _pick_observed(tr.model_trace, xb, plate_name)
                for site in latent_sites(tr.guide_trace, plate_name):
                    name = site["name"]
                    put("posterior", name, s0, lo, hi, flat_values(site, k, b, plate_name), np.float64)
                    dims[name] = ["obs", _dim_name(name, "latent")]
                osite = tr.model_trace.nodes[obs_name]
                lp, _ = site_log_prob(osite, tr, plate_name)
                put("log_likelihood", obs_name, s0, lo, hi, lp.expand(k, b), np.float64)

                put("sample_stats", "log_weight", s0, lo, hi, log_weights(tr, plate_name), np.float64)
                if predictive:
                    rep = osite["fn"].sample()
                    rep_site = dict(osite, value=rep)
                    put("posterior_predictive", obs_name, s0, lo, hi, flat_values(rep_site, k, b, plate_name),
                        np.float32)
                if prior:
                    pt = trace_prior(cp, xb, k)
                    for site in latent_sites(pt, plate_name, who="model"):
                        put("prior", site["name"], s0, lo, hi, flat_values(site, k, b, plate_name), np.float64)
                        dims.setdefault(site["name"], ["obs", _dim_name(site["name"], "latent")])
                    put("prior_predictive", obs_name, s0, lo, hi, flat_values(pt.nodes[obs_name], k, b, plate_name),
                        np.float32)
    assert obs_name is not None
    dims[obs_name] = ["obs", _dim_name(obs_name, "observed")]
    draws = num_samples // num_chains
    data: dict[str, dict[str, np.ndarray]] = {}
    data_dims: dict[str, dict[str, list[str]]] = {}
    for group, vals in groups.items():
        if vals:  # the log-likelihood and the weights are one number per draw and datapoint
            data[group] = {name: v.reshape(num_chains, draws, *v.shape[1:]) for name, v in vals.items()}
            data_dims[group] = {name: ["chain", "draw", *(["obs"] if group in ("log_likelihood", "sample_stats")
                                                           else dims[name])] for name in vals}
    data["observed_data"] = {obs_name: x.reshape(n, -1).detach().cpu().numpy()}
    data_dims["observed_data"] = {obs_name: dims[obs_name]}
    lw = groups["sample_stats"]["log_weight"]
    data["sample_stats"]["ess"] = importance_ess(lw)
    data_dims["sample_stats"]["ess"] = ["obs"]
    if num_samples >= MIN_SAMPLES:
        data["sample_stats"]["khat"] = pareto_khat(torch.as_tensor(lw)).numpy()
        data_dims["sample_stats"]["khat"] = ["obs"]
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


def _pick_observed(trace: Any, xb: torch.Tensor, plate_name: str) -> str:
    sites = observed_sites(trace, plate_name)
    match = [s for s in sites if tuple(s["value"].shape) == tuple(xb.shape)]
    if len(match) == 1 or len(sites) == 1:
        return (match or sites)[0]["name"]
    raise ValueError(f"several observed sites ({[s['name'] for s in sites]}) match the data; export supports one")


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
