"""AIS and BDMC against closed forms: the linear-Gaussian model (pyro_vae.testing), a
Gamma–Poisson model, a hierarchical model with a structured guide and a conditional model(x, y).

References are independent of the library: exact marginals (multivariate normal, negative
binomial), exact posteriors, and the unbiasedness identity E[p̂(x)] = p(x)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae as pv
from pyro_vae.evaluation import AISResult, BDMCResult, ais, bdmc
from pyro_vae.program import PlateError
from pyro_vae.testing import GaussianMixture, LinearGaussian

from pyro_vae.evaluation import annealing as ais_module  # noqa: E402


def isotropic(x_dim: int, latent_dim: int, noise_scale: float = 1.0, gain: float = 2.0) -> LinearGaussian:
    """The linear-Gaussian model with W = gain · (orthonormal columns): an isotropic posterior, so
    the difficulty of a scaled guide depends only on its scale and the dimension."""
    lg = LinearGaussian(x_dim=x_dim, latent_dim=latent_dim, noise_scale=noise_scale)
    q, _ = torch.linalg.qr(lg.W)
    lg.W.copy_(gain * q)
    return lg


# -- the schedule -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sigmoid", "geometric", "linear"])
def test_schedule_runs_from_zero_to_one(kind):
    b = ais_module.schedule(kind, 50)
    assert b.dtype == torch.float64 and b.shape == (50,)
    assert b[0] == 0.0 and b[-1] == 1.0
    assert bool((b[1:] > b[:-1]).all())
    assert ais_module.schedule(kind, 2).tolist() == [0.0, 1.0]


def test_sigmoid_schedule_is_grosse_et_al():
    t = torch.linspace(-4.0, 4.0, 7, dtype=torch.float64)
    s = torch.sigmoid(t)
    ref = (s - s[0]) / (s[-1] - s[0])
    assert torch.allclose(ais_module.schedule("sigmoid", 7), ref)


# -- accuracy against closed forms ------------------------------------------------------------------
def test_ais_beats_importance_sampling_with_a_poor_guide_in_20_dims():
    lg = isotropic(x_dim=30, latent_dim=20)
    x = lg.sample(6)
    exact = lg.log_marginal(x)
    guide = lg.scaled_guide(0.45)  # 0.45× too narrow in each of 20 dims
    is_est = pv.log_likelihood(lg.model, guide, x, num_samples=5000).per_datapoint.double()
    assert float((exact - is_est).mean()) > 2.0  # importance sampling is off by more than 2 nats
    res = ais(lg.model, guide, x, num_steps=300, num_chains=64, seed=0)
    err = res.per_datapoint - exact
    assert abs(float(err.mean())) < 0.1
    assert float(err.abs().mean()) < 0.15
    assert float(res.accept_rate.mean()) > 0.4


def test_exact_posterior_guide_gives_log_marginal_in_every_chain():
    lg = LinearGaussian(x_dim=5, latent_dim=3)
    x = lg.sample(4)
    exact = lg.log_marginal(x)
    res = ais(lg.model, lg.exact_guide, x, num_steps=20, num_chains=6, seed=0)
    assert torch.allclose(res.log_weights, exact[:, None].expand(4, 6), atol=1e-5, rtol=0)
    assert torch.allclose(res.per_datapoint, exact, atol=1e-5, rtol=0)
    assert torch.allclose(res.ess, torch.full((4,), 6.0, dtype=res.ess.dtype), atol=1e-6)


def test_weights_are_unbiased_for_the_marginal():
    """E[w] = p(x): the chain weights of many independent short runs average to p(x)."""
    lg = LinearGaussian(x_dim=5, latent_dim=2)
    x = lg.sample(2)
    exact = lg.log_marginal(x)
    res = ais(lg.model, lg.scaled_guide(0.7, shift=0.2), x, num_steps=8, num_chains=4000, seed=1)
    ratio = torch.exp(res.log_weights - exact[:, None])  # w / p(x), (N, C)
    mean, se = ratio.mean(1), ratio.std(1) / math.sqrt(ratio.shape[1])
    assert bool(((mean - 1.0).abs() < 4 * se).all()), (mean, se)
    assert bool((se < 0.05).all())  # a sharp check, not a vacuous one
    # ... while the log weights sit well below log p(x) (Jensen): the estimate is not trivially exact
    assert bool((res.log_weights.mean(1) < exact - 0.05).all())


def test_constrained_latent_gamma_poisson_both_starts():
    """z ~ Gamma(a, b), x_j ~ Poisson(z): p(x) is negative binomial; the guide is a LogNormal."""
    a, b, d = 2.0, 1.0, 4

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Gamma(torch.tensor(a, dtype=x.dtype), torch.tensor(b, dtype=x.dtype)))
            rate = z.unsqueeze(-1).expand(z.shape + (d,))
            pyro.sample("x", dist.Poisson(rate).to_event(1), obs=x)

    def guide(x):
        mean = (a + x.sum(-1)) / (b + d)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.LogNormal(mean.log() + 0.4, 0.6))

    x = torch.tensor([[0.0, 1, 2, 1], [5, 3, 4, 6], [1, 0, 0, 0]], dtype=torch.float64)
    s = x.sum(-1)
    exact = (a * math.log(b) - math.lgamma(a) - torch.lgamma(x + 1).sum(-1) + torch.lgamma(a + s)
             - (a + s) * math.log(b + d))
    # the prior is the poorer start here; mass="guide" on a constrained site uses the guide draws' spread
    for init, mass, atol in (("guide", "identity", 0.05), ("prior", "identity", 0.1), ("guide", "guide", 0.05)):
        res = ais(model, guide, x, num_steps=100, num_chains=256, init=init, mass=mass, seed=0)
        assert torch.allclose(res.per_datapoint, exact, atol=atol), (init, mass, res.per_datapoint - exact)


def test_structured_guide_is_replayed_at_the_chains_values():
    """z1 ~ N(0, 1), z2 | z1 ~ N(z1, 1), x | z2 ~ N(z2 · 1, σ² I); guide q(z1|x) q(z2|z1, x)."""
    sigma, d = 0.7, 3

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
            pyro.sample("x", dist.Normal(z2.unsqueeze(-1).expand(z2.shape + (d,)), sigma).to_event(1), obs=x)

    calls = {"guide": 0}

    def guide(x):
        calls["guide"] += 1
        m = x.mean(-1)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.5 * m, 0.8))
            pyro.sample("z2", dist.Normal(0.5 * z1 + 0.5 * m, 0.5))  # depends on z1

    cov = 2.0 * torch.ones(d, d, dtype=torch.float64) + sigma**2 * torch.eye(d, dtype=torch.float64)
    x = torch.tensor([[0.3, -0.2, 0.5], [2.0, 1.5, 2.5], [-1.0, -2.0, -1.5]], dtype=torch.float64)
    exact = dist.MultivariateNormal(torch.zeros(d, dtype=torch.float64), covariance_matrix=cov).log_prob(x)
    res = ais(model, guide, x, num_steps=150, num_chains=32, seed=0)
    assert torch.allclose(res.per_datapoint, exact, atol=0.1), res.per_datapoint - exact
    assert calls["guide"] > 150  # q(z2 | z1, x) is re-evaluated at the chains' z1, not cached


def test_conditional_program_slices_per_datapoint_arguments_across_chunks():
    """model(x, y): x | z, y ~ N(W z + b + V y, σ² I), so log p(x | y) = log N(x − V y; b, W Wᵀ + σ² I)."""
    lg = LinearGaussian(x_dim=4, latent_dim=2)
    v = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def model(x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b + y @ v.T, lg.sigma).to_event(1), obs=x)

    def exact_guide(x, y):
        post = lg.posterior(x - y @ v.T)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", post)

    def wide_guide(x, y):
        post = lg.posterior(x - y @ v.T)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(post.loc, scale_tril=1.5 * post.scale_tril))

    y = torch.randn(5, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x = lg.sample(5) + y @ v.T
    exact = lg.log_marginal(x - y @ v.T)
    budget = 2 * 8 * 4 * ais_module._BYTES_PER_ELEMENT  # two datapoints per chunk with 8 chains
    res = ais(model, exact_guide, x, y, num_steps=10, num_chains=8, memory_budget=budget, seed=0)
    assert torch.allclose(res.log_weights, exact[:, None].expand(5, 8), atol=1e-6)
    res = ais(model, wide_guide, x, y, num_steps=100, num_chains=16, seed=0)
    assert torch.allclose(res.per_datapoint, exact, atol=0.1), res.per_datapoint - exact


@pytest.mark.parametrize("schedule, mass", [("geometric", "identity"), ("linear", "guide")])
def test_other_schedules_and_the_guide_mass_matrix(schedule, mass):
    lg = LinearGaussian(x_dim=5, latent_dim=2)
    x = lg.sample(3)
    exact = lg.log_marginal(x)
    res = ais(lg.model, lg.scaled_guide(1.8, shift=0.2), x, num_steps=100, num_chains=32, schedule=schedule,
              mass=mass, seed=0)
    assert res.schedule == schedule
    assert torch.allclose(res.per_datapoint, exact, atol=0.1), res.per_datapoint - exact


def test_progress_bar_over_temperatures(capsys):
    lg = LinearGaussian(x_dim=5, latent_dim=2)
    ais(lg.model, lg.scaled_guide(2.0), lg.sample(2), num_steps=10, num_chains=2, step_size=0.2, progress=True,
        seed=0)
    assert "AIS" in capsys.readouterr().err


# -- BDMC ------------------------------------------------------------------------------------------
def test_bdmc_brackets_the_exact_value_and_the_gap_shrinks():
    lg = LinearGaussian(x_dim=5, latent_dim=2)
    template = torch.zeros(5, 5, dtype=torch.float64)
    guide = lg.scaled_guide(2.0)
    short = bdmc(lg.model, guide, template, num_steps=5, num_chains=8, seed=0)
    long = bdmc(lg.model, guide, template, num_steps=150, num_chains=8, seed=0)
    assert isinstance(long, BDMCResult) and long.x.shape == template.shape
    assert torch.equal(short.x, long.x)  # same seed, same simulated data
    exact = lg.log_marginal(long.x)
    for r in (short, long):
        tol = 3 * torch.nan_to_num(r.forward.chain_stderr + r.reverse.chain_stderr, nan=0.0) + 0.02
        assert bool((r.lower <= exact + tol).all()), (r.lower - exact, tol)
        assert bool((exact <= r.upper + tol).all()), (r.upper - exact, tol)
        assert torch.allclose(r.gap, r.upper - r.lower)
    assert long.mean_gap < 0.5 * short.mean_gap
    assert long.mean_gap < 0.1
    assert torch.equal(long.reverse.step_size, long.forward.step_size)  # the reverse run reuses the frozen steps


def test_bdmc_refuses_models_it_cannot_simulate():
    lg = LinearGaussian(x_dim=3, latent_dim=2)

    def two_observed(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T, 1.0).to_event(1), obs=x)
            pyro.sample("x2", dist.Normal(z.sum(-1), 1.0), obs=x.sum(-1))

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))

    def no_observed(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))

    x = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="exactly one observed sample site"):
        bdmc(two_observed, guide, x, num_steps=5, num_chains=2)
    with pytest.raises(ValueError, match="no observed site"):
        bdmc(no_observed, guide, x, num_steps=5, num_chains=2)


# -- frozen step sizes, reproducibility -----------------------------------------------------------------
def test_scored_run_uses_the_pilots_frozen_step_sizes(monkeypatch):
    lg = LinearGaussian(x_dim=5, latent_dim=2)
    x = lg.sample(3)
    seen = []
    real = ais_module._hmc

    def spy(target, state, beta, eps, inv_mass, num_leapfrog):
        seen.append((beta, eps.clone()))
        return real(target, state, beta, eps, inv_mass, num_leapfrog)

    monkeypatch.setattr(ais_module, "_hmc", spy)
    num_steps, pilot = 40, 60
    res = ais(lg.model, lg.scaled_guide(2.0), x, num_steps=num_steps, num_chains=4, pilot_steps=pilot, seed=0)
    assert len(seen) == (pilot - 2) + (num_steps - 2)
    pilot_eps = torch.stack([e for _, e in seen[: pilot - 2]])
    scored_eps = torch.stack([e for _, e in seen[pilot - 2:]])
    assert len({tuple(e.tolist()) for e in pilot_eps}) > 10  # the pilot adapts ...
    nb = res.step_size.shape[0]
    assert res.step_size.shape == (nb, 3) and nb > 1
    for t, eps in enumerate(scored_eps, start=1):  # ... the scored run only reads the frozen table
        assert torch.equal(eps, res.step_size[min(nb - 1, (t - 1) * nb // (num_steps - 1))])
    # a given step size skips the pilot and is used as is
    seen.clear()
    again = ais(lg.model, lg.scaled_guide(2.0), x, num_steps=num_steps, num_chains=4, step_size=res.step_size, seed=0)
    assert len(seen) == num_steps - 2
    assert torch.equal(again.step_size, res.step_size)


def test_seed_reproduces_and_leaves_the_callers_stream_alone():
    lg = LinearGaussian(x_dim=5, latent_dim=2)
    x = lg.sample(3)
    state = torch.get_rng_state()
    a = ais(lg.model, lg.scaled_guide(2.0), x, num_steps=20, num_chains=4, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = ais(lg.model, lg.scaled_guide(2.0), x, num_steps=20, num_chains=4, seed=7)
    c = ais(lg.model, lg.scaled_guide(2.0), x, num_steps=20, num_chains=4, seed=8)
    assert torch.equal(a.log_weights, b.log_weights) and torch.equal(a.step_size, b.step_size)
    assert not torch.equal(a.log_weights, c.log_weights)


def test_result_fields_and_diagnostics():
    lg = LinearGaussian(x_dim=5, latent_dim=2)
    x = lg.sample(3)
    res = ais(lg.model, lg.scaled_guide(1.5), x, num_steps=20, num_chains=30, seed=0)
    assert isinstance(res, AISResult)
    n, c = 3, 30
    assert res.log_weights.shape == (n, c) and res.log_weights.dtype == torch.float64
    lme = torch.logsumexp(res.log_weights, 1) - math.log(c)
    assert torch.allclose(res.per_datapoint, lme)
    w = torch.exp(res.log_weights - res.log_weights.max(1, keepdim=True).values)
    assert torch.allclose(res.ess, w.sum(1) ** 2 / (w * w).sum(1))
    assert torch.allclose(res.chain_stderr, w.std(1) / (math.sqrt(c) * w.mean(1)))
    assert bool(torch.isfinite(res.khat).all())  # 30 chains: a tail of 6 weights is fitted
    assert bool(((res.accept_rate > 0) & (res.accept_rate <= 1)).all())
    assert res.mean == pytest.approx(float(res.per_datapoint.mean()))
    assert "AIS log p(x)" in str(res)
    few = ais(lg.model, lg.scaled_guide(1.5), x, num_steps=5, num_chains=4, seed=0)
    assert bool(torch.isnan(few.khat).all())  # too few chains for a Pareto fit


def test_log_likelihood_dispatches_to_ais():
    lg = LinearGaussian(x_dim=5, latent_dim=2)
    x = lg.sample(3)
    opts = {"num_steps": 20, "num_chains": 4, "seed": 3}
    ll = pv.log_likelihood(lg.model, lg.scaled_guide(2.0), x, method="ais", ais_options=opts)
    res = ais(lg.model, lg.scaled_guide(2.0), x, **opts)
    assert torch.equal(ll.per_datapoint, res.per_datapoint.float())
    assert ll.num_samples == 4 and ll.mean == pytest.approx(res.mean)
    with pytest.raises(ValueError, match="unknown method"):
        pv.log_likelihood(lg.model, lg.scaled_guide(2.0), x, method="annealed")
    with pytest.raises(ValueError, match="ais_options"):
        pv.log_likelihood(lg.model, lg.scaled_guide(2.0), x, ais_options=opts)


def test_vae_with_bernoulli_decoder_runs_and_is_not_below_importance_sampling():
    torch.manual_seed(0)
    vae = pv.VAE(pv.encoders.DiagNormalEncoder(12, 3, hidden=(16,)), pv.decoders.BernoulliDecoder(3, 12, hidden=(16,)))
    x = torch.bernoulli(torch.full((6, 12), 0.3))
    is_est = pv.log_likelihood(vae.model, vae.guide, x, num_samples=200).per_datapoint.double()
    res = ais(vae.model, vae.guide, x, num_steps=100, num_chains=8, seed=0)
    assert bool(torch.isfinite(res.per_datapoint).all())
    assert float(res.per_datapoint.mean()) > float(is_est.mean()) - 0.05


# -- bad input, before any work -------------------------------------------------------------------------
def _discrete_model(x):
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Bernoulli(torch.full((), 0.5, dtype=x.dtype)))
        pyro.sample("x", dist.Normal(c.unsqueeze(-1).expand(c.shape + (x.shape[-1],)), 1.0).to_event(1), obs=x)


def _discrete_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("c", dist.Bernoulli(torch.full((), 0.5, dtype=x.dtype)))


def _global_model(x):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu.unsqueeze(-1).expand(mu.shape + x.shape[-1:]), 1.0).to_event(1), obs=x)


def _global_guide(x):
    pyro.sample("mu", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))


def _plateless_model(x):
    z = pyro.sample("z", dist.Normal(torch.zeros(x.shape, dtype=x.dtype), 1.0).to_event(2))
    pyro.sample("x", dist.Normal(z, 1.0).to_event(2), obs=x)


def _plateless_guide(x):
    pyro.sample("z", dist.Normal(torch.zeros(x.shape, dtype=x.dtype), 1.0).to_event(2))


@pytest.mark.parametrize(
    "case, match",
    [
        ({"num_steps": 1}, "num_steps must be an integer >= 2"),
        ({"num_chains": 0}, "num_chains must be an integer >= 1"),
        ({"num_leapfrog": 0}, "num_leapfrog must be an integer >= 1"),
        ({"schedule": "cosine"}, "unknown schedule"),
        ({"init": "posterior"}, "unknown init"),
        ({"mass": "dense"}, "unknown mass"),
        ({"target_accept": 1.0}, "target_accept"),
        ({"pilot_steps": 2}, "pilot_steps"),
        ({"step_size": -0.1}, "step_size must be finite and positive"),
        ({"step_size": torch.ones(7)}, "step_size must be"),
        ({"x": torch.zeros(0, 5)}, "x is empty"),
        ({"x": torch.tensor([[0.0, math.nan, 0, 0, 0]])}, "NaN"),
        ({"program": (_discrete_model, _discrete_guide)}, "(?s)'c' is discrete.*mark the guide's site for enumeration"),
        ({"program": (_global_model, _global_guide)}, "'mu' sits outside the 'data' plate"),
        ({"program": (_plateless_model, _plateless_guide)}, "plate named 'data'|inside the 'data' plate"),
        ({"extra": {"per_datapoint": ["y"], "y": torch.zeros(2)}}, "has length 2, while x has 3 rows"),
    ],
)
def test_bad_input_raises_before_any_work(monkeypatch, case, match):
    def no_work(*a, **k):
        raise AssertionError("annealing started before the input was checked")

    monkeypatch.setattr(ais_module, "_anneal", no_work)
    case = dict(case)
    lg = LinearGaussian(x_dim=5, latent_dim=2)
    x = case.pop("x", lg.sample(3))
    model, guide = case.pop("program", (lg.model, lg.scaled_guide(2.0)))
    extra = case.pop("extra", {})
    if extra:
        def model(x, y=None):  # noqa: F811 - a program with a per-datapoint keyword
            lg.model(x)

        def guide(x, y=None):
            lg.exact_guide(x)
    options = {"num_steps": 10, "num_chains": 2, **case, **extra}
    with pytest.raises(ValueError, match=match):
        ais(model, guide, x, **options)
    with pytest.raises(ValueError, match=match):
        bdmc(model, guide, x, **options)


def test_latent_outside_the_data_plate_is_a_plate_error():
    with pytest.raises(PlateError, match="'mu'"):
        ais(_global_model, _global_guide, torch.zeros(3, 2), num_steps=5, num_chains=2)


# -- an enumerated discrete site, summed exactly in both densities -------------------------------------
_GM = GaussianMixture()  # y ~ Cat(π), z ~ N(0, 1), x | y, z ~ N(z + μ_y, σ²): log p(x) in closed form
_MU = _GM.mu
_mixture_model, _mixture_exact_guide, _mixture_exact = _GM.model, _GM.exact_guide, _GM.log_marginal


@pyro.infer.config_enumerate
def _mixture_poor_guide(x):
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Categorical(logits=torch.tensor([0.3, -0.2, 0.1]).expand(x.shape[0], 3)))
        pyro.sample("z", dist.Normal(0.3 * x - 0.1 * _MU[y], 0.9))


def test_enumerated_label_is_summed_exactly():
    """With q(y|x) q(z|x,y) the exact posterior, q(z|x) = Σ_y q(y|x) q(z|x,y) is p(z|x): every chain
    weight is log p(x); with a poor guide AIS still reaches the closed form (y summed, z annealed)."""
    x = torch.tensor([0.3, -1.2, 2.0, 0.7])
    exact = _mixture_exact(x).double()
    res = ais(_mixture_model, _mixture_exact_guide, x, num_steps=5, num_chains=4, seed=0)
    torch.testing.assert_close(res.log_weights, exact.unsqueeze(-1).expand(4, 4), atol=1e-5, rtol=0)
    for init in ("guide", "prior"):
        res = ais(_mixture_model, _mixture_poor_guide, x, num_steps=200, num_chains=64, seed=1, init=init)
        assert float((res.per_datapoint - exact).abs().max()) < 0.06, (init, res.per_datapoint, exact)
