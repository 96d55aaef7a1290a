"""The torch-free ArviZ builder (``pyro_vae/diagnostics/_arviz_groups.py``) on the installed ArviZ.

Needs numpy, ArviZ and matplotlib only: no torch, no pyro, no ``pyro_vae`` package import. The
module is loaded from its file, so this file also runs in a Python ≥ 3.12 environment holding
``arviz>=1`` (``.ci/run`` does that, with ``--noconftest``: the repository's conftests import
torch). In the main suite (ArviZ 0.x) the same tests check the 0.x path.

The arrays mimic ``to_inference_data``'s layout: ``obs`` datapoints, a latent site ``z`` and an
observed site ``x``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

import arviz as az  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import xarray as xr  # noqa: E402

MODULE = Path(__file__).resolve().parents[1] / "pyro_vae" / "diagnostics" / "_arviz_groups.py"


def _load(name: str = "_pyro_vae_arviz_groups"):
    spec = importlib.util.spec_from_file_location(name, MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ag = _load()
MAJOR = ag.arviz_major()
C, DRAWS, N, L, F = 2, 100, 5, 3, 4
GROUPS = {"posterior", "posterior_predictive", "log_likelihood", "sample_stats", "prior", "prior_predictive",
          "observed_data"}


def threshold(s: int) -> float:
    return min(1.0 - 1.0 / np.log10(s), 0.7)


def make(seed: int = 0, shift: float = 0.0):
    """The installed ArviZ's object for a toy export (``shift`` lowers the log-likelihood)."""
    rng = np.random.default_rng(seed)
    cd = ["chain", "draw"]
    lw = 0.2 * rng.normal(size=(C, DRAWS, N)) - shift
    groups = {
        "posterior": {"z": rng.normal(size=(C, DRAWS, N, L))},
        "log_likelihood": {"x": -3.0 - shift + 0.1 * rng.normal(size=(C, DRAWS, N))},
        "posterior_predictive": {"x": rng.normal(size=(C, DRAWS, N, F)).astype(np.float32)},
        "prior": {"z": rng.normal(size=(C, DRAWS, N, L))},
        "prior_predictive": {"x": rng.normal(size=(C, DRAWS, N, F)).astype(np.float32)},
        "observed_data": {"x": rng.normal(size=(N, F))},
        "sample_stats": {"log_weight": lw, "ess": ag.importance_ess(lw.reshape(C * DRAWS, N)),
                         "khat": rng.uniform(0.0, 0.4, N)},
    }
    dims = {
        "posterior": {"z": [*cd, "obs", "latent"]},
        "log_likelihood": {"x": [*cd, "obs"]},
        "posterior_predictive": {"x": [*cd, "obs", "feature"]},
        "prior": {"z": [*cd, "obs", "latent"]},
        "prior_predictive": {"x": [*cd, "obs", "feature"]},
        "observed_data": {"x": ["obs", "feature"]},
        "sample_stats": {"log_weight": [*cd, "obs"], "ess": ["obs"], "khat": ["obs"]},
    }
    coords = {"obs": [f"d{i}" for i in range(N)]}
    return ag.build(groups, dims, coords, attrs={"inference_library": "pyro_vae"}), groups


@pytest.fixture()
def exported():
    obj, groups = make()
    yield obj, groups
    plt.close("all")


def test_the_module_imports_neither_torch_nor_the_package():
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('m', {str(MODULE)!r}); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "bad = [k for k in sys.modules if k.split('.')[0] in ('torch', 'pyro', 'pyro_vae', 'arviz')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_native_object_with_every_group(exported):
    obj, groups = exported
    if MAJOR == 0:
        assert isinstance(obj, az.InferenceData)
    else:
        assert isinstance(obj, xr.DataTree)
    assert set(ag.group_names(obj)) == GROUPS
    assert dict(obj.posterior["z"].sizes) == {"chain": C, "draw": DRAWS, "obs": N, "latent": L}
    assert dict(obj["log_likelihood"]["x"].sizes) == {"chain": C, "draw": DRAWS, "obs": N}
    assert dict(obj["posterior_predictive"]["x"].sizes) == {"chain": C, "draw": DRAWS, "obs": N, "feature": F}
    assert dict(obj["observed_data"]["x"].sizes) == {"obs": N, "feature": F}
    assert obj["sample_stats"]["khat"].dims == ("obs",)
    assert list(obj.posterior["obs"].values) == [f"d{i}" for i in range(N)]
    assert np.array_equal(obj["prior"]["z"].values, groups["prior"]["z"])
    stats = ag.group(obj, "sample_stats")
    assert isinstance(stats, xr.Dataset) and stats.attrs["inference_library"] == "pyro_vae"
    assert stats["log_weight"].dtype == np.float64 and obj["prior_predictive"]["x"].dtype == np.float32


def test_build_refuses_wrong_dims_and_groups():
    with pytest.raises(ValueError, match="dims"):
        ag.build({"posterior": {"z": np.zeros((2, 3, 4))}}, {"posterior": {"z": ["chain", "draw"]}})
    with pytest.raises(ValueError, match="coords"):
        ag.build({"posterior": {"z": np.zeros((2, 3))}}, {"posterior": {"z": ["chain", "draw"]}},
                 coords={"draw": [0, 1]})
    with pytest.raises(ValueError, match="unknown ArviZ groups"):
        ag.build({"posteriors": {"z": np.zeros((2, 3))}}, {"posteriors": {"z": ["chain", "draw"]}})


def test_importance_ess_and_logsumexp():
    assert np.allclose(ag.importance_ess(np.zeros((50, 3))), 50.0)
    lw = np.array([[0.0], [-np.inf], [-np.inf], [-np.inf]])  # one weight carries everything
    assert np.allclose(ag.importance_ess(lw), 1.0)
    assert np.isneginf(ag.logsumexp(np.full((3, 1), -np.inf))[0])


@pytest.mark.filterwarnings("ignore:.*[Pp]areto:UserWarning")
def test_summary_and_loo(exported):
    obj, _ = exported
    summary = az.summary(obj, var_names=["z"])
    assert summary.shape[0] == N * L and np.all(summary["r_hat"] < 1.1)
    loo = az.loo(obj)
    elpd = loo["elpd_loo"] if MAJOR == 0 else loo.elpd
    assert np.isfinite(elpd) and abs(elpd - (-3.0 * N)) < 1.0


def test_elpd_data_is_the_importance_sampled_elpd(exported):
    obj, groups = exported
    e = ag.elpd_data(obj, threshold)
    lw = groups["sample_stats"]["log_weight"].reshape(C * DRAWS, N)
    ll_i = np.log(np.mean(np.exp(lw), axis=0))
    total = e["elpd_loo"] if MAJOR == 0 else e.elpd
    assert np.isclose(total, ll_i.sum())
    assert e["pareto_k"].dims == ("obs",) and np.allclose(e["pareto_k"].values, groups["sample_stats"]["khat"])
    assert e["good_k"] == pytest.approx(threshold(C * DRAWS)) and e["n_data_points"] == N
    assert list(e["pareto_k"]["obs"].values) == [f"d{i}" for i in range(N)]
    with pytest.raises(ValueError, match="khat and log_weight"):
        ag.elpd_data(ag.build({"sample_stats": {"log_weight": np.zeros((1, 2, 3))}},
                              {"sample_stats": {"log_weight": ["chain", "draw", "obs"]}}), threshold)


@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")  # ArviZ 0.x on pandas 3
@pytest.mark.filterwarnings("ignore:.*[Pp]areto:UserWarning")
def test_compare(exported):
    obj, _ = exported
    worse, _ = make(seed=1, shift=0.5)
    table = az.compare({"good": obj, "worse": worse})
    assert list(table.index) == ["good", "worse"]
    table = az.compare({"worse": ag.elpd_data(worse, threshold), "good": ag.elpd_data(obj, threshold)})
    assert list(table.index) == ["good", "worse"]


def test_plots(exported):
    obj, _ = exported
    if MAJOR == 0:
        with warnings.catch_warnings():
            # ArviZ 0.23's plots trigger a harmless MatplotlibDeprecationWarning on matplotlib 3.11
            warnings.simplefilter("ignore", DeprecationWarning)
            az.plot_khat(ag.elpd_data(obj, threshold))
            az.plot_ppc(obj, num_pp_samples=10)
            az.plot_posterior(obj, var_names=["z"], coords={"obs": ["d0"]})
    else:  # ArviZ 1.x names
        az.plot_khat(ag.elpd_data(obj, threshold))
        az.plot_ppc_dist(obj, num_samples=10)
        az.plot_dist(obj, var_names=["z"], coords={"obs": ["d0"]})
        az.plot_prior_posterior(obj, var_names=["z"], coords={"obs": ["d0"]})
    assert plt.get_fignums()
