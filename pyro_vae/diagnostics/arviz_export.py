"""Export a model/guide pair on data to an ArviZ ``InferenceData`` (built with ``az.from_dict``).

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

import math
from typing import Any

import numpy as np
import torch

from ..program import log_weights, particle_traces, site_log_prob
from ..vae import DATA_PLATE
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
    """An :class:`arviz.InferenceData` of ``num_samples`` guide draws per datapoint of ``x``.

    Call as ``to_inference_data(vae, x)``, ``to_inference_data((model, guide), x)`` or
    ``to_inference_data(model, guide, x)``. Works with ``az.summary``, ``az.plot_posterior``,
    ``az.plot_ppc`` and — through :func:`elpd_data` — ``az.plot_khat``.

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
    import arviz as az
    import xarray as xr

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
            for s0, k in sample_chunks(num_samples, per):
                tr = particle_traces(pair.model, pair.guide, pair.call_args(xb), pair.kwargs, k,
                                     pair.max_plate_nesting, plate_name)
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
                    pt = trace_prior(pair, xb, k)
                    for site in latent_sites(pt, plate_name, who="model"):
                        put("prior", site["name"], s0, lo, hi, flat_values(site, k, b, plate_name), np.float64)
                        dims.setdefault(site["name"], ["obs", _dim_name(site["name"], "latent")])
                    put("prior_predictive", obs_name, s0, lo, hi, flat_values(pt.nodes[obs_name], k, b, plate_name),
                        np.float32)
    assert obs_name is not None
    dims[obs_name] = ["obs", _dim_name(obs_name, "observed")]
    dims["log_weight"] = ["obs"]
    ll_dims = {obs_name: ["obs"]}
    lw = groups["sample_stats"]["log_weight"]
    draws = num_samples // num_chains

    def chains(arr: np.ndarray) -> np.ndarray:
        return arr.reshape(num_chains, draws, *arr.shape[1:])

    observed = x.reshape(n, -1).detach().cpu().numpy()
    data = {k: {name: chains(v) for name, v in vals.items()} for k, vals in groups.items() if vals}
    for name, arr in data.get("posterior", {}).items():
        coords.setdefault(dims[name][1], np.arange(arr.shape[-1]))
    coords.setdefault(dims[obs_name][1], np.arange(observed.shape[1]))
    all_dims = {**dims}
    # log_likelihood has no feature dim: ArviZ takes dims per variable name, so pass it separately
    idata = az.from_dict(
        posterior=data.get("posterior"),
        posterior_predictive=data.get("posterior_predictive"),
        prior=data.get("prior"),
        prior_predictive=data.get("prior_predictive"),
        sample_stats=data.get("sample_stats"),
        observed_data={obs_name: observed},
        coords=coords,
        dims=all_dims,
        attrs={"inference_library": "pyro_vae",
               "posterior_kind": "independent draws from the amortized guide q(z|x); reweight with "
                                 "sample_stats.log_weight"},
    )
    ll = az.from_dict(log_likelihood={obs_name: chains(groups["log_likelihood"][obs_name])}, coords=coords,
                      dims=ll_dims)
    idata.add_groups({"log_likelihood": ll.log_likelihood})
    lw_t = torch.as_tensor(lw)
    ess = torch.exp(2 * torch.logsumexp(lw_t, 0) - torch.logsumexp(2 * lw_t, 0))
    idata.sample_stats["ess"] = xr.DataArray(ess.numpy(), dims=["obs"], coords={"obs": coords["obs"]})
    if num_samples >= MIN_SAMPLES:
        khat = pareto_khat(lw_t)
        idata.sample_stats["khat"] = xr.DataArray(khat.numpy(), dims=["obs"], coords={"obs": coords["obs"]})
    else:
        warn(
            f"to_inference_data: {num_samples} draws per datapoint are too few for k̂ (at least {MIN_SAMPLES}); "
            "sample_stats has no khat",
            SampleSizeWarning,
        )
    return idata


def _pick_observed(trace: Any, xb: torch.Tensor, plate_name: str) -> str:
    sites = observed_sites(trace, plate_name)
    match = [s for s in sites if tuple(s["value"].shape) == tuple(xb.shape)]
    if len(match) == 1 or len(sites) == 1:
        return (match or sites)[0]["name"]
    raise ValueError(f"several observed sites ({[s['name'] for s in sites]}) match the data; export supports one")


def elpd_data(idata: Any):
    """An ArviZ ``ELPDData`` from :func:`to_inference_data` output, for ``az.plot_khat``.

    ``elpd_loo`` holds Σ_i log p̂(x_i), the importance-sampled log-likelihood of the exported
    datapoints (an expected log predictive density when they are held out), ``pareto_k`` the
    per-datapoint k̂ and ``good_k`` the sample-size-dependent threshold min(1 − 1/log10 S, 0.7).

    Example:
        >>> from pyro_vae.testing import LinearGaussian
        >>> lg = LinearGaussian(x_dim=5, latent_dim=2)
        >>> idata = to_inference_data((lg.model, lg.scaled_guide(1.5)), lg.sample(3), num_samples=100)
        >>> elpd_data(idata)["pareto_k"].dims
        ('obs',)
    """
    from arviz.stats.stats_utils import ELPDData

    stats = idata.sample_stats
    if "khat" not in stats or "log_weight" not in stats:
        raise ValueError("idata.sample_stats needs khat and log_weight; build it with to_inference_data")
    lw = stats["log_weight"].stack(sample=("chain", "draw")).transpose("sample", ...)
    s = lw.sizes["sample"]
    vals = torch.as_tensor(lw.values)
    ll_i = torch.logsumexp(vals, 0) - math.log(s)
    n = ll_i.numel()
    ll = stats["khat"].copy(data=ll_i.numpy()).rename("loo_i")
    khat = stats["khat"].rename("pareto_shape")
    threshold = khat_threshold(s)
    se = float(ll_i.std() * math.sqrt(n)) if n > 1 else 0.0
    return ELPDData(
        data=[float(ll_i.sum()), se, 0.0, s, n, bool((khat > threshold).any()), ll, khat, "log", threshold],
        index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i", "pareto_k", "scale",
               "good_k"],
    )


__all__ = ["to_inference_data", "elpd_data"]
