"""The importance-sampled log-likelihood estimator against analytic truth.

``pyro_vae.testing.LinearGaussian`` (probabilistic PCA) has a closed-form log p(x) and
posterior: with the exact posterior as guide every importance weight equals p(x), so the
estimate is exact for any K; with a wider guide it must sit within Monte Carlo error.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae as pv
from pyro_vae.evaluation import plan_chunks
from pyro_vae.testing import LinearGaussian
from pyro_vae.traces import PlateError

N = 10
X_DIM = 5


@pytest.fixture
def lg() -> LinearGaussian:
    return LinearGaussian(x_dim=X_DIM, latent_dim=2, noise_scale=0.5, seed=0)


@pytest.fixture
def x(lg) -> torch.Tensor:
    return lg.sample(N)


def _mc_standard_error(ll: pv.LogLikelihood) -> torch.Tensor:
    """Delta-method SE of log (1/K) Σ w: sqrt(Var(w) / (K E[w]²)) ≈ sqrt(1/ESS − 1/K)."""
    return torch.sqrt(1.0 / ll.ess.double() - 1.0 / ll.num_samples)


# --------------------------------------------------------------------------------------------
# analytic truth
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_samples", [1, 7])
def test_exact_posterior_guide_gives_the_log_marginal(lg, x, num_samples):
    ll = pv.log_likelihood(lg.model, lg.exact_guide, x, num_samples=num_samples)
    truth = lg.log_marginal(x)
    assert ll.per_datapoint.shape == (N,)
    assert torch.allclose(ll.per_datapoint.double(), truth, atol=1e-5, rtol=0)
    # every weight is p(x): the effective sample size is K exactly
    assert torch.allclose(ll.ess, torch.full((N,), float(num_samples)), rtol=1e-5)
    assert ll.num_samples == num_samples


def test_wider_guide_is_within_monte_carlo_error_of_the_truth(lg, x):
    K = 5000
    ll = pv.log_likelihood(lg.model, lg.scaled_guide(1.5), x, num_samples=K)
    truth = lg.log_marginal(x)
    se = _mc_standard_error(ll)
    # a wider guide is a proper but imperfect proposal: ESS well below K, but not degenerate
    assert ll.ess.shape == (N,)
    assert (ll.ess > 0.3 * K).all() and (ll.ess < 0.95 * K).all(), ll.ess
    assert (se < 0.02).all() and (se > 1e-3).all(), se
    z = (ll.per_datapoint.double() - truth) / se
    assert (z.abs() < 4).all(), z
    assert (z**2).mean() < 3, z  # not systematically off either
    assert (ll.per_datapoint.double() != truth).any()  # a genuine Monte Carlo estimate


def test_ess_standard_error_matches_repeated_runs(lg, x):
    """The ESS-based SE is the spread of the estimate over independent runs."""
    K, R = 300, 40
    runs = []
    for seed in range(R):
        pyro.set_rng_seed(seed)
        runs.append(pv.log_likelihood(lg.model, lg.scaled_guide(1.5), x, num_samples=K, max_plate_nesting=1))
    estimates = torch.stack([r.per_datapoint.double() for r in runs])  # (R, N)
    empirical = estimates.std(0)
    predicted = torch.stack([_mc_standard_error(r) for r in runs]).mean(0)
    ratio = empirical / predicted
    assert (ratio > 0.6).all() and (ratio < 1.6).all(), ratio
    assert 0.85 < float(ratio.mean()) < 1.15, ratio
    # and the average over runs (K·R samples' worth) is close to the truth; the log of a mean is
    # biased low by ≈ SE²/2 per run
    bias = -(predicted**2) / 2
    z = (estimates.mean(0) - lg.log_marginal(x) - bias) / (empirical / math.sqrt(R))
    assert (z.abs() < 4).all(), z


# --------------------------------------------------------------------------------------------
# chunking
# --------------------------------------------------------------------------------------------

#: bytes for 700 (sample, datapoint) pairs of 5 features: chunks of 1 datapoint x 700 samples
TINY_BUDGET = 32 * X_DIM * 700


def test_plan_chunks_respects_the_budget():
    assert plan_chunks(N, 5000, X_DIM, TINY_BUDGET) == (1, 700)
    assert plan_chunks(N, 50, X_DIM, 32 * X_DIM * 150) == (3, 50)  # several datapoints per chunk
    assert plan_chunks(N, 50, X_DIM, 1 << 30) == (N, 50)  # everything at once
    assert plan_chunks(N, 50, X_DIM, 1) == (1, 1)  # never zero


def test_chunking_is_invariant_with_the_exact_guide(lg, x):
    """Constant weights: chunking must reproduce the one-chunk answer to float precision."""
    big = pv.log_likelihood(lg.model, lg.exact_guide, x, num_samples=3000)
    small = pv.log_likelihood(lg.model, lg.exact_guide, x, num_samples=3000, memory_budget=TINY_BUDGET)
    assert torch.allclose(small.per_datapoint, big.per_datapoint, atol=1e-5, rtol=0)
    assert torch.allclose(small.ess, big.ess, rtol=1e-5)
    assert torch.allclose(small.per_datapoint.double(), lg.log_marginal(x), atol=1e-5, rtol=0)


def test_chunking_is_exact_when_the_draws_are_the_same(lg, x):
    """RNG consumption: each chunk's guide draws one (k, b, d) standard-normal block. Splitting
    one datapoint's samples into chunks consumes the stream in the same order as one (K, 1, d)
    block *provided* every block holds a multiple of 16 numbers: torch's CPU normal sampler
    turns uniforms into normals in groups of 16 (Box-Muller across the group) and redraws the
    last 16 of a block that is not a multiple of 16. With 800 samples x 2 latent dims per chunk,
    chunked over samples and datapoints == one datapoint at a time with one big chunk, to float
    precision (max_plate_nesting is given so no extra guide run draws numbers in between)."""
    K, guide = 4800, lg.scaled_guide(1.5)
    budget = 32 * X_DIM * 800
    assert plan_chunks(N, K, X_DIM, budget) == (1, 800) and (800 * lg.latent_dim) % 16 == 0
    pyro.set_rng_seed(42)
    chunked = pv.log_likelihood(lg.model, guide, x, num_samples=K, memory_budget=budget, max_plate_nesting=1)
    pyro.set_rng_seed(42)
    rows = [pv.log_likelihood(lg.model, guide, x[i : i + 1], num_samples=K, max_plate_nesting=1) for i in range(N)]
    assert torch.allclose(chunked.per_datapoint, torch.cat([r.per_datapoint for r in rows]), atol=1e-5, rtol=0)
    assert torch.allclose(chunked.ess, torch.cat([r.ess for r in rows]), rtol=1e-4)
    assert (chunked.ess < 0.95 * K).all()  # unequal weights: the combination across chunks mattered


def test_chunking_over_all_datapoints_agrees_statistically(lg, x):
    """One big chunk draws a (K, N, d) block: a different order than N x (700, 1, d) chunks, so
    the two estimates use different draws and agree only within Monte Carlo error."""
    K, guide = 5000, lg.scaled_guide(1.5)
    big = pv.log_likelihood(lg.model, guide, x, num_samples=K)
    small = pv.log_likelihood(lg.model, guide, x, num_samples=K, memory_budget=TINY_BUDGET)
    assert not torch.equal(big.per_datapoint, small.per_datapoint)
    se = torch.sqrt(_mc_standard_error(big) ** 2 + _mc_standard_error(small) ** 2)
    assert ((big.per_datapoint.double() - small.per_datapoint.double()).abs() < 4 * se).all()
    truth = lg.log_marginal(x)
    assert ((small.per_datapoint.double() - truth).abs() < 4 * _mc_standard_error(small)).all()


# --------------------------------------------------------------------------------------------
# per datapoint, summary fields
# --------------------------------------------------------------------------------------------


def test_estimates_are_per_datapoint_not_joint(lg, x):
    perm = torch.randperm(N)
    ll = pv.log_likelihood(lg.model, lg.exact_guide, x, num_samples=4)
    shuffled = pv.log_likelihood(lg.model, lg.exact_guide, x[perm], num_samples=4)
    assert torch.allclose(shuffled.per_datapoint, ll.per_datapoint[perm], atol=1e-6)
    # a datapoint's estimate does not depend on its batch mates
    alone = pv.log_likelihood(lg.model, lg.exact_guide, x[3:4], num_samples=4)
    assert float(alone.per_datapoint[0]) == pytest.approx(float(ll.per_datapoint[3]), abs=1e-5)
    assert ll.per_datapoint.std() > 0.1  # genuinely different values per datapoint


def test_per_datapoint_with_a_stochastic_guide_follows_the_permutation(lg, x):
    perm = torch.randperm(N)
    K = 5000
    ll = pv.log_likelihood(lg.model, lg.scaled_guide(1.5), x, num_samples=K)
    shuffled = pv.log_likelihood(lg.model, lg.scaled_guide(1.5), x[perm], num_samples=K)
    se = torch.sqrt(_mc_standard_error(ll)[perm] ** 2 + _mc_standard_error(shuffled) ** 2)
    assert ((shuffled.per_datapoint - ll.per_datapoint[perm]).abs().double() < 4 * se).all()


def test_summary_fields_are_consistent(lg, x):
    ll = pv.log_likelihood(lg.model, lg.scaled_guide(1.2), x, num_samples=200)
    pd = ll.per_datapoint.double()
    assert ll.mean == pytest.approx(float(pd.mean()), abs=1e-5)
    assert ll.stderr == pytest.approx(float(pd.std(unbiased=True)) / math.sqrt(N), rel=1e-5)
    assert ll.num_samples == 200 and ll.ess.shape == (N,)
    assert ((ll.ess >= 1) & (ll.ess <= 200)).all()
    assert f"{ll.mean:.2f}" in str(ll) and "K=200" in str(ll) and f"N={N}" in str(ll)
    one = pv.log_likelihood(lg.model, lg.scaled_guide(1.2), x[:1], num_samples=10)
    assert math.isnan(one.stderr) and one.mean == pytest.approx(float(one.per_datapoint[0]))


# --------------------------------------------------------------------------------------------
# any model/guide pair
# --------------------------------------------------------------------------------------------

A = torch.tensor([1.0, -0.5, 2.0, 0.3], dtype=torch.float64)  # loadings of a scalar latent
C = torch.tensor([0.2, 0.0, -1.0, 0.5], dtype=torch.float64)
SIGMA = 0.7


def _flat_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z * A + C, SIGMA).to_event(1), obs=x)


def _exact_posterior(x):
    precision = 1.0 + (A**2).sum() / SIGMA**2
    mean = ((x - C) * A).sum(-1, keepdim=True) / SIGMA**2 / precision
    return mean, precision.rsqrt()


def _flat_guide(x):
    mean, sd = _exact_posterior(x)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(mean, sd).to_event(1))


def _nested_model(x):  # data plate at dim -2, a "features" plate inside it
    with pyro.plate("data", len(x), dim=-2):
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        with pyro.plate("features", x.shape[-1], dim=-1):
            pyro.sample("x", dist.Normal(z * A + C, SIGMA), obs=x)


def _nested_guide(x):
    mean, sd = _exact_posterior(x)
    with pyro.plate("data", len(x), dim=-2):
        pyro.sample("z", dist.Normal(mean, sd))


def _true_log_marginal(x):
    cov = torch.outer(A, A) + SIGMA**2 * torch.eye(4, dtype=torch.float64)
    return dist.MultivariateNormal(C, covariance_matrix=cov).log_prob(x)


@pytest.mark.parametrize("model, guide", [(_flat_model, _flat_guide), (_nested_model, _nested_guide)], ids=["flat", "nested"])
def test_hand_written_model_and_guide(model, guide):
    x = C + 1.5 * torch.randn(12, 4, dtype=torch.float64)
    ll = pv.log_likelihood(model, guide, x, num_samples=1)
    assert torch.allclose(ll.per_datapoint.double(), _true_log_marginal(x), atol=1e-5, rtol=0)
    # a wider guide: within Monte Carlo error, also when chunked
    def wide(x):
        mean, sd = _exact_posterior(x)
        with pyro.plate("data", len(x), dim=-2 if guide is _nested_guide else -1):
            d = dist.Normal(mean, 2 * sd)
            pyro.sample("z", d if guide is _nested_guide else d.to_event(1))

    ll = pv.log_likelihood(model, wide, x, num_samples=4000, memory_budget=32 * 4 * 1000)
    z = (ll.per_datapoint.double() - _true_log_marginal(x)) / _mc_standard_error(ll)
    assert (z.abs() < 4).all(), z


def test_vae_pair_works_too():
    vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)), pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
    x = torch.randn(6, 4)
    ll = pv.log_likelihood(vae.model, vae.guide, x, num_samples=2000)
    assert ll.per_datapoint.shape == (6,) and torch.isfinite(ll.per_datapoint).all()
    # importance sampling is never below the ELBO in expectation: compare with the K=1 average
    elbo_like = torch.stack(
        [pv.log_likelihood(vae.model, vae.guide, x, num_samples=1).per_datapoint for _ in range(200)]
    ).mean(0)
    assert (ll.per_datapoint > elbo_like - 0.05).all()


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_argument_errors(lg, x):
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        pv.log_likelihood(lg.model, lg.exact_guide, x, num_samples=0)
    with pytest.raises(ValueError, match="x is empty"):
        pv.log_likelihood(lg.model, lg.exact_guide, x[:0], num_samples=10)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        pv.log_likelihood(lg.model, lg.exact_guide, bad, num_samples=10)
    for budget in (0, -1.0):
        with pytest.raises(ValueError, match="memory_budget must be positive"):
            pv.log_likelihood(lg.model, lg.exact_guide, x, num_samples=10, memory_budget=budget)


def _global_latent_model(x):
    g = pyro.sample("g", dist.Normal(0.0, 1.0))  # outside the data plate
    with pyro.plate("data", len(x)):
        loc = g.unsqueeze(-1).expand(g.shape + x.shape[-1:])
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def _global_latent_guide(x):
    pyro.sample("g", dist.Normal(0.0, 1.0))


def _no_plate_model(x):
    z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 1), 1.0).to_event(2))
    pyro.sample("x", dist.Normal(z, 1.0).to_event(2), obs=x)


def _no_plate_guide(x):
    pyro.sample("z", dist.Normal(torch.zeros(len(x), 1), 1.0).to_event(2))


def test_latent_outside_the_data_plate_names_the_fix():
    x = torch.randn(5, 3)
    with pytest.raises(PlateError) as err:
        pv.log_likelihood(_global_latent_model, _global_latent_guide, x, num_samples=10)
    msg = str(err.value)
    assert "'g'" in msg and "outside the 'data' plate" in msg and "move it inside" in msg
    assert isinstance(err.value, ValueError)


def test_model_without_a_data_plate_names_the_fix():
    x = torch.randn(5, 1)
    with pytest.raises(PlateError, match=r"with pyro.plate\('data', N\)"):
        pv.log_likelihood(_no_plate_model, _no_plate_guide, x, num_samples=10)
    # a data plate under another name is found with plate_name=
    def model(x):
        with pyro.plate("rows", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    def guide(x):
        with pyro.plate("rows", len(x)):
            pyro.sample("z", dist.Normal(x[:, 0] / 2, math.sqrt(0.5)))

    with pytest.raises(PlateError, match="plate_name="):
        pv.log_likelihood(model, guide, x, num_samples=10)
    ll = pv.log_likelihood(model, guide, x, num_samples=1, plate_name="rows")
    truth = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x[:, 0])
    assert torch.allclose(ll.per_datapoint, truth, atol=1e-5)


# --------------------------------------------------------------------------------------------
# bits per dimension
# --------------------------------------------------------------------------------------------


def test_bits_per_dim(lg, x):
    assert pv.bits_per_dim(-100.0, 784) == pytest.approx(100.0 / (784 * math.log(2.0)))
    assert pv.bits_per_dim(-100.0, 784) == pytest.approx(0.184017, abs=1e-6)
    # a uniform distribution over 256 levels per dimension is exactly 8 bits/dim
    assert pv.bits_per_dim(-784 * math.log(256.0), 784) == pytest.approx(8.0)
    ll = pv.log_likelihood(lg.model, lg.exact_guide, x, num_samples=1)
    expected = -float(lg.log_marginal(x).mean()) / (X_DIM * math.log(2.0))
    assert pv.bits_per_dim(ll.mean, X_DIM) == pytest.approx(expected, abs=1e-5)
