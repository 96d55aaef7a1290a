"""Per-datapoint diagnostics against analytic truth.

``LinearGaussian`` (probabilistic PCA) has a closed-form log p(x) and posterior, and its
``scaled_guide(scale, shift)`` gives guides whose importance weights are known in law: with
q = N(μ*, s² Σ*) the log weight is (1 − s²)|ε|²/2 + const, ε ~ N(0, I_d), so the weights have
Pareto shape 1 − s² for s < 1 (heavy tail) and are bounded for s > 1.
"""

from __future__ import annotations

import math
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib import MatplotlibDeprecationWarning
from pyro.ops.stats import fit_generalized_pareto

import pyro_vae as pv
import pyro_vae.diagnostics as D
from pyro_vae.diagnostics.importance import WeightAccumulator, khat_from_top, tail_length
from pyro_vae.testing import LinearGaussian
from pyro_vae.traces import PlateError


@pytest.fixture
def lg() -> LinearGaussian:
    return LinearGaussian(x_dim=6, latent_dim=3, noise_scale=0.5, seed=0)


def _tiny_vae(encoder: str = "diag", prior: str = "standard", x_dim: int = 5, latent_dim: int = 2) -> pv.VAE:
    torch.manual_seed(0)
    enc = {
        "diag": lambda: pv.encoders.DiagNormalEncoder(x_dim, latent_dim, hidden=(8,)),
        "low_rank": lambda: pv.encoders.LowRankNormalEncoder(x_dim, latent_dim, rank=1, hidden=(8,)),
        "iaf": lambda: pv.encoders.IAFEncoder(x_dim, latent_dim, hidden=(8,), num_flows=1, context_dim=4),
    }[encoder]()
    pri = {
        "standard": lambda: pv.priors.StandardNormalPrior(latent_dim),
        "mixture": lambda: pv.priors.MixtureGaussianPrior(latent_dim, num_components=3),
    }[prior]()
    return pv.VAE(enc, pv.decoders.GaussianDecoder(latent_dim, x_dim, hidden=(8,), scale=0.5), pri)


def _no_plate_model(x):
    z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(2))
    pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True) + torch.zeros_like(x), 1.0).to_event(2), obs=x)


def _no_plate_guide(x):
    pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(2))


def _global_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu.unsqueeze(-1) + torch.zeros_like(x), 1.0).to_event(1), obs=x)


def _global_guide(x):
    pyro.sample("mu", dist.Normal(0.0, 1.0))  # one latent for the whole batch: not amortized per datapoint


# --------------------------------------------------------------------------------------------
# Pareto k̂
# --------------------------------------------------------------------------------------------


def test_vectorized_khat_equals_arviz_and_pyro_row_by_row():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    lw = torch.randn(2000, 6, generator=g, dtype=torch.float64) * scales  # log-normal weights
    k = D.pareto_khat(lw)
    _, k_arviz = az.psislw(lw.T.numpy().copy(), reff=1.0)
    assert np.allclose(k.numpy(), k_arviz, atol=1e-10, rtol=0)
    m = tail_length(2000)
    for i in range(6):
        s = torch.sort(lw[:, i], descending=True).values
        k_pyro, _ = fit_generalized_pareto(torch.exp(s[:m] - s[0]) - torch.exp(s[m] - s[0]))
        assert k[i].item() == pytest.approx(k_pyro, abs=1e-10)
    assert D.pareto_khat(lw[:, 2]).item() == pytest.approx(k[2].item())  # a single vector


def test_streamed_weights_give_the_same_khat_as_all_at_once():
    g = torch.Generator().manual_seed(1)
    lw = 2.0 * torch.randn(600, 7, generator=g, dtype=torch.float64)
    acc = WeightAccumulator(7, 600, tail_length(600) + 1)
    for lo, hi in ((0, 4), (4, 7)):  # datapoint chunks
        for s in range(0, 600, 150):  # sample chunks
            acc.update(lo, hi, lw[s : s + 150, lo:hi])
    k = khat_from_top(acc.top)
    assert torch.allclose(k, D.pareto_khat(lw), atol=1e-12)
    assert torch.allclose(acc.log_likelihood(), torch.logsumexp(lw, 0) - math.log(600))
    w = torch.exp(lw - lw.max(0).values)
    assert torch.allclose(acc.ess(), w.sum(0) ** 2 / (w**2).sum(0))


def test_khat_separates_wide_and_narrow_guides_for_every_datapoint():
    """k̂ < 0.5 for a guide wider than the posterior, > 0.7 for a much narrower one, per datapoint.

    Checked, not guessed: with 8 latent dims and K=4000 the narrow guide's k̂ stayed >= 0.80
    and the wide guide's <= 0.22 over 25 seeds x 20 datapoints (asymptotically k = 1 − 0.1² =
    0.99 and the wide guide's weights are bounded).
    """
    big = LinearGaussian(x_dim=12, latent_dim=8, noise_scale=0.5, seed=0)
    x = big.sample(20)
    wide = D.importance_diagnostics(big.model, big.scaled_guide(1.5), x, num_samples=4000)
    narrow = D.importance_diagnostics(big.model, big.scaled_guide(0.1), x, num_samples=4000)
    assert wide.khat.shape == narrow.khat.shape == (20,)
    assert (wide.khat < D.KHAT_GOOD).all(), wide.khat
    assert (narrow.khat > D.KHAT_OK).all(), narrow.khat
    assert wide.shares == {"good": 1.0, "ok": 0.0, "bad": 0.0}
    assert narrow.counts["bad"] == 20
    # a heavy tail wrecks the effective sample size; bounded weights keep it
    assert (narrow.relative_ess < 0.1).all() and (wide.relative_ess > 0.1).all()
    # worst datapoints come sorted, and psis_khat is the same estimate
    assert torch.all(narrow.khat[narrow.worst[:-1]] >= narrow.khat[narrow.worst[1:]])
    assert narrow.table(3).shape == (3, 4)
    pyro.set_rng_seed(3)
    k1 = D.psis_khat(big.model, big.scaled_guide(0.1), x[:3], num_samples=500)
    pyro.set_rng_seed(3)
    k2 = D.importance_diagnostics((big.model, big.scaled_guide(0.1)), x[:3], num_samples=500).khat
    assert torch.equal(k1, k2)


def test_importance_log_likelihood_is_the_log_likelihood_estimator(lg):
    x = lg.sample(8)
    exact = D.importance_diagnostics(lg.model, lg.exact_guide, x, num_samples=200)
    assert torch.allclose(exact.log_likelihood, lg.log_marginal(x), atol=1e-8)
    assert torch.allclose(exact.elbo, lg.log_marginal(x), atol=1e-8)  # constant weights: ELBO = log p(x)
    assert torch.allclose(exact.ess, torch.full((8,), 200.0, dtype=torch.float64))
    assert (exact.khat <= D.KHAT_GOOD).all()  # constant weights up to rounding: never flagged
    pyro.set_rng_seed(5)
    ours = D.importance_diagnostics(lg.model, lg.scaled_guide(1.5), x, num_samples=300, memory_budget=20_000)
    pyro.set_rng_seed(5)
    ref = pv.log_likelihood(lg.model, lg.scaled_guide(1.5), x, num_samples=300, memory_budget=20_000)
    assert torch.allclose(ours.log_likelihood.float(), ref.per_datapoint, atol=1e-5)
    assert torch.allclose(ours.ess.float(), ref.ess, rtol=1e-4)
    # ELBO ≤ log p(x) per datapoint; the ELBO's SE is a real Monte Carlo error
    assert (ours.elbo < ours.log_likelihood).all() and (ours.elbo_se > 0).all()


def test_to_elpd_data_feeds_plot_khat(lg):
    import matplotlib.pyplot as plt

    d = D.importance_diagnostics(lg.model, lg.scaled_guide(0.5), lg.sample(5), num_samples=300)
    e = d.to_elpd_data()
    assert e["pareto_k"].dims == ("obs",) and e["n_data_points"] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MatplotlibDeprecationWarning)  # ArviZ 0.23 on matplotlib 3.11
        az.plot_khat(e)
    plt.close("all")
    assert "Pareto k̂ over 5 datapoints" in str(d)


def test_too_few_samples_for_khat(lg):
    x = lg.sample(3)
    with pytest.raises(ValueError, match="at least 25"):
        D.importance_diagnostics(lg.model, lg.exact_guide, x, num_samples=10)
    with pytest.warns(D.SampleSizeWarning, match="at least 100"):
        D.importance_diagnostics(lg.model, lg.exact_guide, x, num_samples=50)
    assert D.khat_threshold(100) == pytest.approx(0.5)
    assert D.khat_threshold(10_000) == pytest.approx(0.7)
    assert D.samples_needed(0.7) == pytest.approx(10 ** (1 / 0.3))


def test_plate_errors_are_clear():
    x = torch.randn(4, 3)
    with pytest.raises(PlateError, match="plate named 'data'"):
        D.importance_diagnostics(_no_plate_model, _no_plate_guide, x, num_samples=100)
    with pytest.raises(PlateError, match="outside the 'data' plate"):
        D.importance_diagnostics(_global_model, _global_guide, x, num_samples=100)
    with pytest.raises(PlateError, match="not amortized"):
        D.inference_gaps(_global_model, _global_guide, x, num_steps=1, num_samples=100)
    with pytest.raises(PlateError, match="not amortized"):
        D.latent_diagnostics(_global_model, _global_guide, x)
    with pytest.raises(TypeError, match="pass a VAE and the data"):
        D.psis_khat(lambda x: None, x)


def test_infinite_and_zero_weights_are_named_not_nan():
    """Datapoint 0 gets an infinite weight, datapoint 1 only zero weights; the rest are normal."""
    x = torch.arange(4.0).unsqueeze(-1).expand(4, 2)

    def model(x):
        log_density = torch.where(x[:, 0] == 0, math.inf, 0.0)
        off_atom = (x[:, 0] == 1).to(x.dtype).unsqueeze(-1)  # datapoint 1 is off the Delta's atom: weight 0
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Delta(x + off_atom, log_density=log_density, event_dim=1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    with pytest.warns(D.NonFiniteWeightWarning) as record:
        d = D.importance_diagnostics(model, guide, x, num_samples=100)
    messages = " ".join(str(w.message) for w in record)
    assert "infinite importance weight" in messages and "[0]" in messages
    assert "zero weight from every sample" in messages and "[1]" in messages
    assert d.khat[0] == math.inf and d.khat[1] == math.inf
    assert not torch.isnan(d.khat).any() and not torch.isnan(d.ess).any()
    assert d.ess[0] == 100 and d.ess[1] == 0  # every weight infinite / every weight zero
    acc = WeightAccumulator(2, 3, 2)
    with pytest.raises(ValueError, match=r"NaN for datapoints \[6\]"):
        acc.update(5, 7, torch.tensor([[0.0, math.nan], [0.0, 0.0], [0.0, 0.0]]))


# --------------------------------------------------------------------------------------------
# inference gaps
# --------------------------------------------------------------------------------------------


def test_gaps_vanish_for_the_exact_posterior(lg):
    x = lg.sample(6)
    g = D.inference_gaps(lg.model, lg.exact_guide, x, num_samples=200)  # 300 steps, lr decayed to 0
    truth = lg.log_marginal(x)
    assert g.families == {"z": "multivariate_normal"}
    assert torch.allclose(g.log_likelihood, truth, atol=1e-3)
    assert g.amortization_gap.abs().max() < 1e-3, g.amortization_gap
    assert g.approximation_gap.abs().max() < 1e-3, g.approximation_gap
    assert abs(g.mean_amortization_gap[0]) < 1e-3 and abs(g.mean_approximation_gap[0]) < 1e-3
    assert g.history.shape == (300,)


def test_gaps_of_a_biased_guide_equal_its_kl_to_the_posterior():
    """Refinement from q = N(μ* + δ, Σ*) recovers the posterior: the amortization gap is KL(q ‖ p(z|x)) =
    ½ δᵀ Σ*⁻¹ δ and the approximation gap is 0 (the Gaussian family contains the posterior)."""
    lg = LinearGaussian(x_dim=4, latent_dim=2, noise_scale=1.0, seed=0)
    x = lg.sample(8)
    g = D.inference_gaps(lg.model, lg.scaled_guide(1.0, shift=0.5), x, num_steps=200, lr=0.05, num_samples=2000)
    post = lg.posterior(x)
    kl = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(post.loc + 0.5, scale_tril=post.scale_tril), post
    )
    z = (g.amortization_gap - kl) / g.amortized_elbo_se
    assert (z.abs() < 4).all(), (g.amortization_gap, kl, g.amortized_elbo_se)
    assert (kl > 0.3).all()  # a real gap to recover
    assert g.approximation_gap.abs().max() < 0.01, g.approximation_gap
    assert torch.allclose(g.log_likelihood, lg.log_marginal(x), atol=0.01)
    assert g.history[-1] > g.history[0]
    assert "amortization gap" in str(g)


@pytest.mark.parametrize("encoder", ["diag", "low_rank"])
def test_gaps_on_vae_encoders(encoder):
    vae = _tiny_vae(encoder)
    x = torch.randn(6, 5)
    g = D.inference_gaps(vae, x, num_steps=30, lr=0.05, num_samples=200)
    assert g.families == {"z": {"diag": "normal", "low_rank": "low_rank_multivariate_normal"}[encoder]}
    assert g.amortization_gap.shape == (6,)
    assert g.mean_amortization_gap[0] > 0  # an untrained encoder leaves a lot to gain
    assert torch.isfinite(g.approximation_gap).all()
    assert not any(p.grad is not None for p in vae.parameters())  # the model's modules are untouched


def test_gaps_when_the_evaluation_needs_smaller_chunks_than_the_refinement():
    """Regression: the refined guide is tied to its chunk; evaluating it with many samples under a
    small memory budget must not split that chunk (it did: 'refined parameters have batch shape')."""
    vae = _tiny_vae("diag")
    x = torch.randn(12, 5)
    budget = 5 * 32 * 400 * 3  # room for ~3 datapoints x 400 samples, ~1200 datapoints x 1 particle
    g = D.inference_gaps(vae, x, num_steps=5, lr=0.05, num_samples=400, memory_budget=budget)
    assert g.amortization_gap.shape == (12,) and torch.isfinite(g.approximation_gap).all()


def test_gaps_refuse_flow_guides_with_the_reason():
    with pytest.raises(TypeError, match="Gaussian guide sites.*TransformedDistribution"):
        D.inference_gaps(_tiny_vae("iaf"), torch.randn(3, 5), num_steps=1, num_samples=100)


# --------------------------------------------------------------------------------------------
# latent diagnostics
# --------------------------------------------------------------------------------------------


def test_active_units_and_kl_per_dim_find_ignored_dimensions():
    """Dims 2 and 3 are ignored by the decoder (zero columns of W): their posterior is the prior."""
    lg = LinearGaussian(x_dim=6, latent_dim=4, noise_scale=0.5, seed=0)
    with torch.no_grad():
        lg.W[:, 2:] = 0
    x = lg.sample(800)
    d = D.latent_diagnostics(lg.model, lg.exact_guide, x)
    assert d.active.tolist() == [True, True, False, False]
    assert d.num_active == 2 and d.inactive_dims == [2, 3]
    assert d.kl_method == "closed form" and d.total_kl_method == "closed form"
    assert (d.kl_per_dim[2:].abs() < 1e-10).all() and (d.kl_per_dim[:2] > 0.5).all()
    # analytic truth: Cov_x E[z|x] = I − Σ*, I(x; z) = −½ log det Σ*
    sigma = lg.posterior(x[:1]).covariance_matrix[0]
    assert torch.allclose(d.activity[:2], 1 - torch.diagonal(sigma)[:2], rtol=0.2)
    assert d.mutual_information == pytest.approx(-0.5 * float(torch.logdet(sigma)), abs=4 * d.mutual_information_se)
    assert d.mutual_information < d.mi_upper_bound
    expected_total = torch.distributions.kl_divergence(
        lg.posterior(x), torch.distributions.MultivariateNormal(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    ).mean()
    assert d.total_kl == pytest.approx(float(expected_total), rel=1e-8)
    assert not d.collapsed and "Dims [2, 3] are inactive" in d.explanation
    assert d.table().shape == (4, 3)


def test_posterior_collapse_is_flagged_and_explained():
    lg = LinearGaussian(x_dim=6, latent_dim=3, seed=0)
    with torch.no_grad():
        lg.W.zero_()
    d = D.latent_diagnostics(lg.model, lg.exact_guide, lg.sample(50))
    assert d.collapsed and d.num_active == 0
    assert abs(d.mutual_information) < 1e-10
    assert "Posterior collapse" in d.explanation and "decoder" in d.explanation
    with pytest.raises(ValueError, match="at least 2 datapoints"):
        D.latent_diagnostics(lg.model, lg.exact_guide, lg.sample(1))


def test_kl_per_dim_methods_are_reported():
    x = torch.randn(10, 5)
    assert D.latent_diagnostics(_tiny_vae("diag"), x).kl_method == "closed form"
    mix = D.latent_diagnostics(_tiny_vae("diag", prior="mixture"), x)
    assert mix.kl_method.startswith("monte carlo") and mix.total_kl_method.startswith("monte carlo")
    assert (mix.kl_per_dim > -0.05).all()
    iaf = D.latent_diagnostics(_tiny_vae("iaf"), x)
    assert iaf.kl_method == "moment-matched Normal marginals (approximation)"
    assert math.isfinite(iaf.mutual_information)


# --------------------------------------------------------------------------------------------
# ArviZ
# --------------------------------------------------------------------------------------------


def test_inference_data_works_with_arviz(lg):
    import matplotlib.pyplot as plt

    x = lg.sample(3)
    idata = D.to_inference_data((lg.model, lg.scaled_guide(1.5)), x, num_samples=200, num_chains=2)
    assert set(idata.groups()) == {"posterior", "log_likelihood", "posterior_predictive", "prior", "prior_predictive",
                                   "observed_data", "sample_stats"}
    assert dict(idata.posterior["z"].sizes) == {"chain": 2, "draw": 100, "obs": 3, "latent": 3}
    assert dict(idata.posterior_predictive["x"].sizes) == {"chain": 2, "draw": 100, "obs": 3, "feature": 6}
    assert dict(idata.prior["z"].sizes) == {"chain": 2, "draw": 100, "obs": 3, "latent": 3}
    assert dict(idata.log_likelihood["x"].sizes) == {"chain": 2, "draw": 100, "obs": 3}
    assert idata.sample_stats["khat"].dims == ("obs",)
    assert np.allclose(idata.observed_data["x"].values, x.numpy())
    # log weight = log p(x|z) + log p(z) − log q(z|x), recomputed from the exported draws
    z = torch.as_tensor(idata.posterior["z"].values)
    post = lg.posterior(x)
    q = torch.distributions.MultivariateNormal(post.loc, scale_tril=1.5 * post.scale_tril)
    prior = torch.distributions.Normal(0.0, 1.0)
    lw = torch.as_tensor(idata.log_likelihood["x"].values) + prior.log_prob(z).sum(-1) - q.log_prob(z)
    assert torch.allclose(lw, torch.as_tensor(idata.sample_stats["log_weight"].values), atol=1e-8)
    summary = az.summary(idata, var_names=["z"])
    assert summary.shape[0] == 9 and np.all(summary["r_hat"] < 1.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MatplotlibDeprecationWarning)  # ArviZ 0.23 on matplotlib 3.11
        az.plot_khat(D.elpd_data(idata))
        az.plot_ppc(idata, num_pp_samples=10)
        az.plot_posterior(idata, var_names=["z"])
    plt.close("all")


def test_inference_data_of_a_vae():
    vae = _tiny_vae()
    idata = D.to_inference_data(vae, torch.randn(4, 5), num_samples=100, num_chains=2, prior=False,
                                obs_coords=["a", "b", "c", "d"])
    assert "prior" not in idata.groups()
    assert list(idata.posterior["obs"].values) == ["a", "b", "c", "d"]
    with pytest.warns(D.SampleSizeWarning, match="too few for k̂"):
        small = D.to_inference_data(vae, torch.randn(2, 5), num_samples=10, num_chains=1, predictive=False)
    assert "khat" not in small.sample_stats


# --------------------------------------------------------------------------------------------
# model comparison
# --------------------------------------------------------------------------------------------


def test_compare_models_ranks_and_paired_se_match_a_direct_computation():
    truth = LinearGaussian(x_dim=5, latent_dim=2, noise_scale=0.5, seed=0)
    worse = LinearGaussian(x_dim=5, latent_dim=2, noise_scale=0.8, seed=0)  # wrong noise level
    test = truth.sample(40, generator=torch.Generator().manual_seed(99))  # held out
    df = D.compare_models({"worse": (worse.model, worse.exact_guide), "true": (truth.model, truth.exact_guide)},
                          test, num_samples=100)
    assert list(df.index) == ["true", "worse"] and list(df["rank"]) == [0, 1]
    ll_t, ll_w = truth.log_marginal(test), worse.log_marginal(test)
    d = ll_t - ll_w
    n = len(test)
    assert df.loc["true", "elpd"] == pytest.approx(float(ll_t.sum()), abs=1e-5)
    assert df.loc["worse", "elpd_diff"] == pytest.approx(float(d.sum()), abs=1e-5)
    assert df.loc["worse", "dse"] == pytest.approx(float(d.std() * math.sqrt(n)), rel=1e-6)
    assert df.loc["true", "se"] == pytest.approx(float(ll_t.std() * math.sqrt(n)), rel=1e-6)
    assert df.loc["true", "elpd_diff"] == 0 and df.loc["true", "dse"] == 0
    assert df.loc["worse", "elpd_diff"] > 2 * df.loc["worse", "dse"]  # the difference is meaningful
    assert not df["warning"].any() and df.attrs["num_data"] == n
    md = D.markdown_table(df)
    assert md.splitlines()[0].startswith("| model | rank | elpd |") and "| true |" in md


def test_compare_models_warns_about_bad_khat_and_accepts_precomputed():
    truth = LinearGaussian(x_dim=5, latent_dim=3, seed=0)
    test = truth.sample(10)
    narrow = D.importance_diagnostics(truth.model, truth.scaled_guide(0.1), test, num_samples=500)
    exact = pv.log_likelihood(truth.model, truth.exact_guide, test, num_samples=50)
    with pytest.warns(D.KhatWarning, match="'narrow'.*k̂ > 0.7"):
        df = D.compare_models({"narrow": narrow, "exact": exact, "tensor": truth.log_marginal(test)})
    assert df.loc["narrow", "warning"] and df.loc["narrow", "khat_bad"] > 0.5
    assert df.index[-1] == "narrow"  # its importance-sampled elpd is biased low
    with pytest.raises(ValueError, match="different numbers of datapoints"):
        D.compare_models({"a": torch.zeros(3), "b": torch.zeros(4)})


# --------------------------------------------------------------------------------------------
# predictive checks and SBC
# --------------------------------------------------------------------------------------------


def test_posterior_predictive_check_passes_a_true_model_and_flags_a_wrong_one(lg):
    x = lg.sample(100)
    ok = D.predictive_check(lg.model, lg.exact_guide, x, num_samples=100)
    for name in ("mean", "variance"):
        s = ok.statistics[name]
        assert s.observed.shape == (100,) and s.replicated.shape == (100, 100)
        assert 0.01 < s.ppp_total < 0.99, (name, s.ppp_total)
    assert ok.pixel_outside < 0.2 and ok.calibration_error < 0.2
    shifted = D.predictive_check(lg.model, lg.exact_guide, 3.0 * x, num_samples=100)  # data the model can't make
    assert shifted.statistics["variance"].ppp_total < 0.01
    assert shifted.pixel_outside > 0.5
    table = ok.table()
    assert list(table.index) == ["mean", "variance", "zeros"] and "ppp" in table.columns
    prior = D.predictive_check(lg.model, lg.exact_guide, x, kind="prior", num_samples=50,
                               statistics={"max": lambda v: v.max(-1).values})
    assert list(prior.statistics) == ["max"] and 0.01 < prior.statistics["max"].ppp_total < 0.99


def test_predictive_check_on_counts_uses_the_zeros_statistic():
    torch.manual_seed(0)
    vae = pv.VAE(pv.encoders.DiagNormalEncoder(6, 2, hidden=(8,)), pv.decoders.PoissonDecoder(2, 6, hidden=(8,)))
    counts = torch.poisson(torch.full((20, 6), 0.3))
    c = D.predictive_check(vae, counts, num_samples=30)
    assert c.statistics["zeros"].observed_total == pytest.approx(float((counts == 0).float().mean()))
    assert c.replicated_examples.shape == (8, 6)


def test_sbc_ranks_are_uniform_for_the_exact_posterior_only(lg):
    x = lg.sample(1)
    exact = D.sbc(lg.model, lg.exact_guide, x, num_simulations=500, num_posterior_samples=99, num_bins=20)
    assert exact.ranks.shape == (500, 3) and exact.counts.sum(0).tolist() == [500, 500, 500]
    assert exact.labels == ["z[0]", "z[1]", "z[2]"]
    assert exact.pvalue > 0.01, exact.pvalues
    biased = D.sbc(lg.model, lg.scaled_guide(1.0, shift=1.0), x, num_simulations=500)
    assert biased.pvalue < 1e-6
    assert (biased.mean_rank < -0.2).all()  # q sits above the truth: low ranks
    assert "combined p" in str(biased)


def test_sbc_warns_when_bins_would_be_nearly_empty(lg):
    with pytest.warns(D.SampleSizeWarning, match="num_simulations >= 100"):
        r = D.sbc(lg.model, lg.exact_guide, lg.sample(1), num_simulations=30, num_posterior_samples=99)
    assert r.num_bins == 20
    assert D.sbc(lg.model, lg.exact_guide, lg.sample(1), num_simulations=60, num_posterior_samples=9,
                 num_bins=4).num_bins == 2  # rounded down to a divisor of L + 1 = 10


# --------------------------------------------------------------------------------------------
# figures and API
# --------------------------------------------------------------------------------------------


def test_figures_are_written(lg, tmp_path):
    x = lg.sample(30)
    D.kl_per_dim_plot(D.latent_diagnostics(lg.model, lg.exact_guide, x), tmp_path / "kl.png")
    D.sbc_plot(D.sbc(lg.model, lg.exact_guide, x, num_simulations=100), tmp_path / "sbc.png")
    D.ppc_plot(D.predictive_check(lg.model, lg.exact_guide, x, num_samples=20), tmp_path / "ppc.png")
    for name in ("kl.png", "sbc.png", "ppc.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_the_three_call_spellings_agree():
    vae = _tiny_vae()
    x = torch.randn(4, 5)
    results = []
    for args in ((vae, x), ((vae.model, vae.guide), x), (vae.model, vae.guide, x)):
        pyro.set_rng_seed(0)
        results.append(D.psis_khat(*args, num_samples=100))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    for name in D.__all__:
        assert hasattr(D, name), name
    with pytest.raises(ValueError, match="x is empty"):
        D.psis_khat(vae, torch.zeros(0, 5))
    with pytest.raises(ValueError, match="NaN or inf"):
        D.psis_khat(vae, torch.full((2, 5), math.nan))
    assert isinstance(D.compare_models({"a": torch.zeros(2)}), pd.DataFrame)
