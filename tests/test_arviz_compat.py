"""``to_inference_data`` returns the installed ArviZ's native object, and the docs' ArviZ calls run on it.

ArviZ 0.x (Python 3.11 here): an ``arviz.InferenceData``. ArviZ 1.x (Python ≥ 3.12): an
``xarray.DataTree`` with the same groups. The torch-free half is tested on its own, also under
ArviZ 1.x, by ``tests/test_arviz_groups.py``.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pytest
import torch
import xarray as xr

from pyro_vae import diagnostics as D
from pyro_vae.diagnostics import _arviz_groups as ag
from pyro_vae.testing import LinearGaussian

MAJOR = ag.arviz_major()
GROUPS = {"posterior", "posterior_predictive", "log_likelihood", "sample_stats", "prior", "prior_predictive",
          "observed_data"}


@pytest.fixture(scope="module")
def lg() -> LinearGaussian:
    return LinearGaussian(x_dim=6, latent_dim=3, noise_scale=0.5, seed=0)


@pytest.fixture(scope="module")
def exported(lg):
    """Two models on the same 4 datapoints of ``lg``: ``lg`` itself and one with other weights."""
    torch.manual_seed(0)
    x = lg.sample(4)
    other = LinearGaussian(x_dim=6, latent_dim=3, noise_scale=0.5, seed=1)
    good = D.to_inference_data((lg.model, lg.scaled_guide(1.2)), x, num_samples=200, num_chains=2)
    poor = D.to_inference_data((other.model, other.scaled_guide(1.2)), x, num_samples=200, num_chains=2)
    return x, good, poor


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_native_object_with_the_documented_groups(exported):
    x, idata, _ = exported
    assert isinstance(idata, az.InferenceData if MAJOR == 0 else xr.DataTree)
    assert set(ag.group_names(idata)) == GROUPS
    assert dict(idata.posterior["z"].sizes) == {"chain": 2, "draw": 100, "obs": 4, "latent": 3}
    assert dict(idata["prior"]["z"].sizes) == {"chain": 2, "draw": 100, "obs": 4, "latent": 3}
    assert dict(idata["log_likelihood"]["x"].sizes) == {"chain": 2, "draw": 100, "obs": 4}
    assert dict(idata["posterior_predictive"]["x"].sizes) == {"chain": 2, "draw": 100, "obs": 4, "feature": 6}
    assert dict(idata["prior_predictive"]["x"].sizes) == {"chain": 2, "draw": 100, "obs": 4, "feature": 6}
    assert dict(idata["observed_data"]["x"].sizes) == {"obs": 4, "feature": 6}
    assert np.allclose(idata["observed_data"]["x"].values, x.numpy())
    stats = ag.group(idata, "sample_stats")
    assert set(stats.data_vars) == {"log_weight", "ess", "khat"}
    assert stats["khat"].dims == stats["ess"].dims == ("obs",)
    assert stats.attrs["inference_library"] == "pyro_vae"
    # ess from the exported weights, as the torch estimate had it
    lw = torch.as_tensor(stats["log_weight"].values).reshape(200, 4)
    ess = torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))
    assert torch.allclose(torch.as_tensor(stats["ess"].values), ess)


def test_summary_and_loo(exported):
    _, idata, _ = exported
    summary = az.summary(idata, var_names=["z"])
    assert summary.shape[0] == 12 and np.all(summary["r_hat"] < 1.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k̂ of guide draws: see docs/diagnostics.md
        loo = az.loo(idata)
    assert np.isfinite(loo["elpd_loo"] if MAJOR == 0 else loo.elpd)


@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")  # ArviZ 0.x on pandas 3
def test_compare_ranks_the_better_guide_first(exported, lg):
    x, good, poor = exported
    table = az.compare({"poor": D.elpd_data(poor), "good": D.elpd_data(good)})
    assert list(table.index) == ["good", "poor"]
    # the elpd is the importance-sampled Σ log p(x_i), close to the exact one for the good guide
    e = D.elpd_data(good)
    total = e["elpd_loo"] if MAJOR == 0 else e.elpd
    assert abs(total - float(lg.log_marginal(x).sum())) < 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = az.compare({"poor": poor, "good": good})
    assert list(table.index) == ["good", "poor"]


def test_plots(exported):
    _, idata, _ = exported
    with warnings.catch_warnings():
        # ArviZ 0.23's plots trigger a harmless MatplotlibDeprecationWarning on matplotlib 3.11
        warnings.simplefilter("ignore", DeprecationWarning)
        az.plot_khat(D.elpd_data(idata))
        if MAJOR == 0:
            az.plot_ppc(idata, num_pp_samples=10)
            az.plot_posterior(idata, var_names=["z"], coords={"obs": [0]})
        else:
            az.plot_ppc_dist(idata, num_samples=10)
            az.plot_dist(idata, var_names=["z"], coords={"obs": [0]})
