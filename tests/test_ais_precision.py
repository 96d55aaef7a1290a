"""AIS with bfloat16 gradients and full-precision densities (``gradient_precision``).

The leapfrog may follow any gradient field that is a fixed function of the position: the map
stays reversible and volume-preserving, and the Metropolis test with the exact densities makes
each transition leave f_β invariant, so the weights stay unbiased. These tests check that claim
against independent references: the linear-Gaussian model's closed-form log p(x) (in float32, so
that autocast really runs its matmuls in bfloat16), the unbiasedness identity E[p̂(x)] = p(x),
BDMC's bracket, Pyro's own Bernoulli log-density for the gradient-only kernel, and a deliberately
distorted gradient field that must change the acceptance rate but not the answer."""

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae as pv
from pyro_vae import _kernels
from pyro_vae.evaluation import ais, bdmc
from pyro_vae.evaluation import annealing as ais_module
from pyro_vae.program import guess_max_plate_nesting
from pyro_vae.testing import GaussianMixture, LinearGaussian


def float32(lg: LinearGaussian) -> LinearGaussian:
    """A float32 copy of a linear-Gaussian model (its ``z @ Wᵀ`` then runs in bfloat16 under autocast)."""
    return copy.deepcopy(lg).float()


def isotropic(x_dim: int, latent_dim: int, gain: float = 2.0) -> LinearGaussian:
    lg = LinearGaussian(x_dim=x_dim, latent_dim=latent_dim, noise_scale=1.0)
    q, _ = torch.linalg.qr(lg.W)
    lg.W.copy_(gain * q)
    return lg


def _target(model, guide, x, num_chains=4, init="guide"):
    mpn = guess_max_plate_nesting(model, guide, (x[:1],), {})
    return ais_module._Target(model, guide, (x,), {}, num_chains, mpn, "data", init)


# -- the kernels -------------------------------------------------------------------------------------------
def test_gradient_only_bernoulli_has_the_exact_gradient_and_no_value():
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 4, 6)).requires_grad_()
    x = torch.bernoulli(torch.full((4, 6), 0.4))
    weight = torch.randn(3, 4)
    ref_value = dist.Bernoulli(logits=logits).to_event(1).log_prob(x)  # Pyro's, not the library's
    (ref_grad,) = torch.autograd.grad((weight * ref_value).sum(), logits)
    for w in (weight, torch.ones(3, 4)):  # a weighted sum, and a plain sum (the kernel skips the product)
        (ref,) = torch.autograd.grad((w * dist.Bernoulli(logits=logits).to_event(1).log_prob(x)).sum(), logits)
        with _kernels.gradient_only():
            out = _kernels.bernoulli_log_prob(logits, x)
            assert out.shape == (3, 4) and bool(torch.isnan(out).all())  # a value read by mistake is loud
            (grad,) = torch.autograd.grad((w * out).sum(), logits)
            with torch.no_grad():  # no-gradient calls still compute the value
                torch.testing.assert_close(_kernels.bernoulli_log_prob(logits, x), ref_value.detach())
        torch.testing.assert_close(grad, ref, atol=1e-6, rtol=1e-6)
    assert not bool(torch.isnan(_kernels.bernoulli_log_prob(logits, x)).any())  # the switch is scoped
    # bfloat16 logits (autocast's matmul output): the gradient comes back in bfloat16, close to the exact one
    lb = logits.detach().bfloat16().requires_grad_()
    with _kernels.gradient_only():
        (gb,) = torch.autograd.grad((weight * _kernels.bernoulli_log_prob(lb, x)).sum(), lb)
    assert gb.dtype == torch.bfloat16
    torch.testing.assert_close(gb.float(), ref_grad, atol=3e-2, rtol=3e-2)


def test_library_linear_follows_autocast():
    layer = pv.nn.Linear(8, 5)
    h = torch.randn(300, 8)
    assert layer(h).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(h)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(h), atol=5e-2, rtol=5e-2)


# -- the transition --------------------------------------------------------------------------------------------
def test_bfloat16_gradients_are_used_while_the_densities_stay_exact():
    torch.manual_seed(0)
    vae = pv.VAE(pv.encoders.DiagNormalEncoder(12, 3, hidden=(16,)), pv.decoders.BernoulliDecoder(3, 12, hidden=(16,)))
    x = torch.bernoulli(torch.full((5, 12), 0.3))
    target = _target(vae.model, vae.guide, x)
    with pyro.validation_enabled(False):
        exact = target.evaluate(target.initial())
        assert ais_module._choose_precision(target, exact, "bfloat16") == "bfloat16" and target.bfloat16
        gA, gB = target.gradient(exact.u)
        err = ais_module._surrogate_error(exact, gA, gB)
        assert 1e-4 < err < ais_module.SURROGATE_TOLERANCE  # really bfloat16, and close
        state = target.start(exact.u)
        torch.testing.assert_close(state.A, exact.A)
        torch.testing.assert_close(state.B, exact.B)
        moved = 0
        for beta in (0.3, 0.7, 1.0):
            new, _ = ais_module._hmc(target, state, beta, torch.full((5,), 0.2), {"z": None}, 3)
            check = target.evaluate(new.u)  # full precision, from scratch
            torch.testing.assert_close(new.A, check.A, atol=1e-5, rtol=1e-6)  # Metropolis test and weights: exact
            torch.testing.assert_close(new.B, check.B, atol=1e-5, rtol=1e-6)
            g2A, g2B = target.gradient(new.u)  # the carried gradients are the surrogate field at the new point
            torch.testing.assert_close(new.gA["z"], g2A["z"])
            torch.testing.assert_close(new.gB["z"], g2B["z"])
            moved += int((new.u["z"] != state.u["z"]).any(-1).sum())
            state = new
        assert moved > 0


def test_full_precision_inner_steps_skip_only_the_value():
    """The inner leapfrog steps take gradients without the Bernoulli value: same chain, bit for bit,
    as evaluating value and gradient at every step."""
    torch.manual_seed(0)
    vae = pv.VAE(pv.encoders.DiagNormalEncoder(12, 3, hidden=(16,)), pv.decoders.BernoulliDecoder(3, 12, hidden=(16,)))
    x = torch.bernoulli(torch.full((6, 12), 0.3))
    fast = ais(vae.model, vae.guide, x, num_steps=30, num_chains=4, step_size=0.1, seed=3, gradient_precision="full")

    def every_value(self, u, beta=None):
        s = self.evaluate(u)
        return (s.gA, s.gB) if beta is None else {k: s.gA[k] + beta * s.gB[k] for k in s.gA}

    mp = pytest.MonkeyPatch()
    mp.setattr(ais_module._Target, "gradient", every_value)
    try:
        slow = ais(vae.model, vae.guide, x, num_steps=30, num_chains=4, step_size=0.1, seed=3, gradient_precision="full")
    finally:
        mp.undo()
    assert fast.gradient_precision == slow.gradient_precision == "full"
    torch.testing.assert_close(fast.log_weights, slow.log_weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast.accept_rate, slow.accept_rate)


# -- against closed forms -----------------------------------------------------------------------------------------
def test_bfloat16_ais_reaches_the_closed_form_with_a_poor_guide_in_20_dims():
    lg64 = isotropic(x_dim=30, latent_dim=20)
    x = lg64.sample(6)
    exact = lg64.log_marginal(x)
    lg = float32(lg64)
    x32 = x.float()
    res = ais(lg.model, lg.scaled_guide(0.45), x32, num_steps=300, num_chains=64, seed=0, gradient_precision="bfloat16")
    assert res.gradient_precision == "bfloat16"
    err = res.per_datapoint - exact
    assert abs(float(err.mean())) < 0.1, err
    assert float(err.abs().mean()) < 0.15
    assert float(res.accept_rate.mean()) > 0.4


def test_bfloat16_from_the_prior():
    """init='prior' (path p(z) p(x|z)^β): a one-backward inner step of log p(z) + β log p(x|z)."""
    lg64 = LinearGaussian(x_dim=3, latent_dim=2, noise_scale=1.0)
    x = lg64.sample(6)
    exact = lg64.log_marginal(x)
    lg = float32(lg64)
    res = ais(lg.model, lg.scaled_guide(2.0), x.float(), num_steps=300, num_chains=64, seed=0, init="prior",
              gradient_precision="bfloat16")
    assert res.gradient_precision == "bfloat16" and res.init == "prior"
    err = res.per_datapoint - exact
    assert abs(float(err.mean())) < 0.05 and float(err.abs().max()) < 0.2, err
    assert float(res.accept_rate.mean()) > 0.6


def test_bfloat16_with_the_exact_posterior_guide_every_chain_is_log_marginal():
    lg64 = LinearGaussian(x_dim=5, latent_dim=3)
    x = lg64.sample(4)
    exact = lg64.log_marginal(x)
    lg = float32(lg64)
    res = ais(lg.model, lg.exact_guide, x.float(), num_steps=20, num_chains=6, seed=0, gradient_precision="bfloat16")
    assert res.gradient_precision == "bfloat16"
    # B = log p(x, z) − log q(z|x) is log p(x) at every z when both are full precision (float32 rounding only)
    torch.testing.assert_close(res.log_weights, exact[:, None].expand(4, 6), atol=2e-4, rtol=0)


def test_bfloat16_weights_are_unbiased_for_the_marginal():
    lg64 = LinearGaussian(x_dim=5, latent_dim=2)
    x = lg64.sample(2)
    exact = lg64.log_marginal(x)
    lg = float32(lg64)
    res = ais(lg.model, lg.scaled_guide(0.7, shift=0.2), x.float(), num_steps=8, num_chains=4000, seed=1,
              gradient_precision="bfloat16")
    ratio = torch.exp(res.log_weights - exact[:, None])
    mean, se = ratio.mean(1), ratio.std(1) / math.sqrt(ratio.shape[1])
    assert bool(((mean - 1.0).abs() < 4 * se).all()), (mean, se)
    assert bool((se < 0.05).all())
    assert bool((res.log_weights.mean(1) < exact - 0.05).all())


def test_a_distorted_gradient_field_changes_acceptance_not_the_answer(monkeypatch):
    """Any deterministic field g(u) gives a valid transition under the exact Metropolis test: a
    field 40% off (and bent) must lower the acceptance rate and leave log p(x) where it is."""
    lg64 = isotropic(x_dim=12, latent_dim=6)
    x = lg64.sample(5)
    exact = lg64.log_marginal(x)
    lg = float32(lg64)
    opts = dict(num_steps=200, num_chains=32, step_size=0.25, seed=2, gradient_precision="bfloat16")
    good = ais(lg.model, lg.scaled_guide(0.5), x.float(), **opts)
    real = ais_module._Target.gradient

    def bent(self, u, beta=None):
        out = real(self, u, beta)
        if beta is not None:
            return {k: 0.6 * g + 0.3 * torch.tanh(u[k]) for k, g in out.items()}
        gA, gB = out
        return {k: 0.6 * g + 0.3 * torch.tanh(u[k]) for k, g in gA.items()}, {k: 0.6 * g for k, g in gB.items()}

    monkeypatch.setattr(ais_module._Target, "gradient", bent)
    bad = ais(lg.model, lg.scaled_guide(0.5), x.float(), **opts)
    assert float(bad.accept_rate.mean()) < float(good.accept_rate.mean()) - 0.05
    for res in (good, bad):
        err = res.per_datapoint - exact
        assert abs(float(err.mean())) < 0.1, err


def test_bfloat16_bdmc_brackets_the_exact_value():
    lg = float32(LinearGaussian(x_dim=5, latent_dim=2))
    r = bdmc(lg.model, lg.scaled_guide(2.0), torch.zeros(5, 5), num_steps=150, num_chains=8, seed=0,
             gradient_precision="bfloat16")
    assert r.forward.gradient_precision == r.reverse.gradient_precision == "bfloat16"
    exact = LinearGaussian(x_dim=5, latent_dim=2).log_marginal(r.x.double())
    tol = 3 * torch.nan_to_num(r.forward.chain_stderr + r.reverse.chain_stderr, nan=0.0) + 0.02
    assert bool((r.lower <= exact + tol).all()), (r.lower - exact, tol)
    assert bool((exact <= r.upper + tol).all()), (r.upper - exact, tol)
    assert r.mean_gap < 0.1


def test_bfloat16_with_an_enumerated_label():
    gm = GaussianMixture()
    x = torch.tensor([0.3, -1.2, 2.0, 0.7])
    exact = gm.log_marginal(x).double()

    @pyro.infer.config_enumerate
    def poor_guide(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=torch.tensor([0.3, -0.2, 0.1]).expand(x.shape[0], 3)))
            pyro.sample("z", dist.Normal(0.3 * x - 0.1 * gm.mu[y], 0.9))

    res = ais(gm.model, poor_guide, x, num_steps=200, num_chains=64, seed=1, gradient_precision="bfloat16")
    assert res.gradient_precision == "bfloat16"
    assert float((res.per_datapoint - exact).abs().max()) < 0.06


# -- the choice --------------------------------------------------------------------------------------------------------
def test_auto_picks_bfloat16_only_where_it_pays_and_agrees(monkeypatch):
    lg64 = LinearGaussian(x_dim=5, latent_dim=2)
    x64 = lg64.sample(3)
    lg = float32(lg64)
    x = x64.float()
    opts = dict(num_steps=5, num_chains=2, step_size=0.1, seed=0)
    monkeypatch.setattr(ais_module, "_fast_bfloat16", lambda device_type: True)
    assert ais(lg.model, lg.scaled_guide(2.0), x, **opts).gradient_precision == "bfloat16"
    assert ais(lg64.model, lg64.scaled_guide(2.0), x64, **opts).gradient_precision == "full"  # float64: autocast is a no-op
    assert ais(lg.model, lg.scaled_guide(2.0), x, gradient_precision="full", **opts).gradient_precision == "full"
    monkeypatch.setattr(ais_module, "SURROGATE_TOLERANCE", 0.0)  # gradients that disagree are not used
    assert ais(lg.model, lg.scaled_guide(2.0), x, **opts).gradient_precision == "full"
    monkeypatch.setattr(ais_module, "SURROGATE_TOLERANCE", 0.05)
    monkeypatch.setattr(ais_module, "_fast_bfloat16", lambda device_type: False)  # no fast bfloat16 matmul
    assert ais(lg.model, lg.scaled_guide(2.0), x, **opts).gradient_precision == "full"
    # an explicit request is honoured on any hardware
    assert ais(lg.model, lg.scaled_guide(2.0), x, gradient_precision="bfloat16", **opts).gradient_precision == "bfloat16"


def test_a_program_that_fails_under_autocast(monkeypatch):
    lg = float32(LinearGaussian(x_dim=5, latent_dim=2))
    x = lg.sample(3).float()

    def model(x):
        if torch.is_autocast_enabled("cpu"):
            raise TypeError("custom op without a bfloat16 kernel")
        lg.model(x)

    monkeypatch.setattr(ais_module, "_fast_bfloat16", lambda device_type: True)
    opts = dict(num_steps=5, num_chains=2, step_size=0.1, seed=0)
    assert ais(model, lg.scaled_guide(2.0), x, **opts).gradient_precision == "full"  # auto falls back
    with pytest.raises(RuntimeError, match="failed under bfloat16 autocast.*gradient_precision='full'"):
        ais(model, lg.scaled_guide(2.0), x, gradient_precision="bfloat16", **opts)


@pytest.mark.parametrize("who", [ais, bdmc])
def test_bad_precision_is_refused_before_any_work(monkeypatch, who):
    def no_work(*a, **k):
        raise AssertionError("annealing started before the input was checked")

    monkeypatch.setattr(ais_module, "_anneal", no_work)
    lg = LinearGaussian(x_dim=5, latent_dim=2)
    x = lg.sample(3)
    with pytest.raises(ValueError, match="unknown gradient_precision 'half'"):
        who(lg.model, lg.scaled_guide(2.0), x, num_steps=5, num_chains=2, gradient_precision="half")
    with pytest.raises(ValueError, match="needs float32 latents.*gradient_precision='full'"):
        who(lg.model, lg.scaled_guide(2.0), x, num_steps=5, num_chains=2, gradient_precision="bfloat16")
