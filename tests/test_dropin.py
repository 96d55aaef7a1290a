"""pyro_vae's objectives as drop-ins for Pyro's ELBOs on programs that are not the plain VAE (issue 11).

References are Pyro's own ``Trace_ELBO`` / ``TraceEnum_ELBO`` / ``RenyiELBO`` on the same program
(in expectation, tolerance from the Monte Carlo standard error) and closed forms of a
linear-Gaussian mixture (exact log p(x) with the exact posterior as the guide).
"""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, config_enumerate

import pyro_vae as pv
from pyro_vae.program import BroadcastError
from pyro_vae.testing import GaussianMixture

O = pv.objectives


def _mean_and_se(fn, n: int) -> tuple[float, float]:
    vals = torch.tensor([fn() for _ in range(n)], dtype=torch.float64)
    return float(vals.mean()), float(vals.std() / math.sqrt(n))


def _agree(ours, ref, n: int = 300, z: float = 5.0):
    m1, s1 = _mean_and_se(ours, n)
    m2, s2 = _mean_and_se(ref, n)
    assert abs(m1 - m2) <= z * math.hypot(s1, s2) + 1e-6, (m1, s1, m2, s2)


# -- programs ---------------------------------------------------------------------------------
X = torch.tensor([0.3, -1.2, 2.0, 0.7])


def no_plate_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(z.unsqueeze(-1), 1.0).expand(z.shape + x.shape).to_event(1), obs=x)


def no_plate_guide(x):
    pyro.sample("z", dist.Normal(0.2, 0.7))


def global_model(x):
    s = pyro.sample("s", dist.LogNormal(0.0, 0.5))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("inner", 2):
            pyro.sample("x", dist.Normal(z, s), obs=x.expand(2, -1))
        pyro.factor("f", -0.1 * z**2)


def global_guide(x):
    pyro.sample("s", dist.LogNormal(0.1, 0.3))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.5 * x, 0.8))


def param_in_plate_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def param_in_plate_guide(x):
    with pyro.plate("data", x.shape[0]):
        loc = pyro.param("loc", torch.zeros(x.shape[0]))  # a local parameter declared inside the plate
        pyro.sample("z", dist.Normal(loc, 1.0))


def masked_index_model(x, keep):
    with pyro.plate("data"):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
        loc = z.clone()
        loc[~keep] = 0.0  # boolean-mask indexing over the data dim: breaks under a particle dim
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)


def masked_index_guide(x, keep):
    with pyro.plate("data"):
        pyro.sample("z", dist.Normal(0.5 * x, 0.9))


# -- a Gaussian mixture with the exact posterior as the guide ------------------------------------
GM = GaussianMixture()  # y ~ Cat(π), z ~ N(0, 1), x | y, z ~ N(z + μ_y, σ²): log p(x) in closed form
PI, MU, SIGMA = GM.pi, GM.mu, GM.sigma
mixture_model, mixture_guide_exact, _exact_log_px = GM.model, GM.exact_guide, GM.log_marginal


@config_enumerate
def mixture_guide_poor(x):
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Categorical(logits=torch.tensor([0.3, -0.2, 0.1]).expand(x.shape[0], 3)))
        pyro.sample("z", dist.Normal(0.3 * x - 0.1 * MU[y], 0.9))


# -- tests ------------------------------------------------------------------------------------------
def test_trace_elbo_constructor_arguments_are_accepted():
    elbo = O.ELBO(num_particles=2, max_plate_nesting=1, vectorize_particles=True, strict_enumeration_warning=False,
                  ignore_jit_warnings=True, jit_options={}, retain_graph=True)
    assert elbo.retain_graph and elbo.vectorize_particles is True
    assert O.ELBO(max_iarange_nesting=2).max_plate_nesting == 2
    with pytest.raises(ValueError, match="vectorize_particles"):
        O.ELBO(vectorize_particles="yes")


@pytest.mark.parametrize("k", [1, 3])
def test_no_data_plate_is_one_datapoint(k):
    _agree(lambda: -O.ELBO(num_particles=k).loss(no_plate_model, no_plate_guide, X),
           lambda: -Trace_ELBO(num_particles=k).loss(no_plate_model, no_plate_guide, X))
    _agree(lambda: -O.IWAE(k).loss(no_plate_model, no_plate_guide, X),
           lambda: -RenyiELBO(alpha=0.0, num_particles=k).loss(no_plate_model, no_plate_guide, X))


@pytest.mark.parametrize("vectorize", [True, False])
def test_global_latent_nested_plate_and_factor(vectorize):
    _agree(lambda: -O.ELBO(num_particles=2, vectorize_particles=vectorize).loss(global_model, global_guide, X),
           lambda: -Trace_ELBO(num_particles=2).loss(global_model, global_guide, X))


def test_param_inside_a_plate_at_one_particle():
    elbo = O.ELBO()
    loss = elbo.differentiable_loss(param_in_plate_model, param_in_plate_guide, X)
    loss.backward()
    assert pyro.param("loc").grad is not None and pyro.param("loc").grad.shape == X.shape
    _agree(lambda: -O.ELBO().loss(param_in_plate_model, param_in_plate_guide, X),
           lambda: -Trace_ELBO().loss(param_in_plate_model, param_in_plate_guide, X))


def test_program_that_cannot_broadcast_runs_particles_one_at_a_time():
    keep = torch.tensor([True, False, True, True])
    with pytest.raises(BroadcastError, match=r"not broadcast-safe.*vectorize_particles=False"):
        O.ELBO(num_particles=3, vectorize_particles=True).loss(masked_index_model, masked_index_guide, X, keep)
    auto = O.ELBO(num_particles=3)
    with pytest.warns(RuntimeWarning, match="one at a time"):
        auto.loss(masked_index_model, masked_index_guide, X, keep)
    assert auto.vectorize_particles is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        _agree(lambda: -auto.loss(masked_index_model, masked_index_guide, X, keep),
               lambda: -Trace_ELBO(num_particles=3).loss(masked_index_model, masked_index_guide, X, keep))
    iw = O.IWAE(3, vectorize_particles=False)
    _agree(lambda: -iw.loss(masked_index_model, masked_index_guide, X, keep),
           lambda: -RenyiELBO(alpha=0.0, num_particles=3).loss(masked_index_model, masked_index_guide, X, keep))
    # one particle needs no particle dim at all
    O.ELBO().loss(masked_index_model, masked_index_guide, X, keep)


def test_program_bug_is_not_blamed_on_broadcasting():
    def bad_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z[:2], 1.0), obs=x)  # wrong in any case

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(Exception) as info:
        O.ELBO(num_particles=3, vectorize_particles=True).loss(bad_model, guide, X)
    assert not isinstance(info.value, BroadcastError)


def test_sequential_particles_equal_vectorized_in_expectation_with_freebits():
    seq = O.FreeBits(O.ELBO(num_particles=2, vectorize_particles=False), 2.0)
    vec = O.FreeBits(O.ELBO(num_particles=2, vectorize_particles=True), 2.0)
    _agree(lambda: -seq.loss(param_in_plate_model, masked_index_guide_free, X),
           lambda: -vec.loss(param_in_plate_model, masked_index_guide_free, X))


def masked_index_guide_free(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.5 * x, 0.9))


# -- enumerated discrete sites --------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 4])
def test_enumerated_site_with_exact_posterior_gives_log_px(k):
    exact = _exact_log_px(X)
    for obj in (O.ELBO(num_particles=k, analytic_kl=False), O.IWAE(k), O.RenyiBound(0.5, k), O.MIWAE(1, k), O.CIWAE(0.3, k)):
        loss = obj.loss(mixture_model, mixture_guide_exact, X)
        assert loss == pytest.approx(-float(exact.sum()), abs=1e-4), type(obj).__name__
    ll = pv.log_likelihood(mixture_model, mixture_guide_exact, X, num_samples=7)
    torch.testing.assert_close(ll.per_datapoint.double(), exact.double(), atol=1e-5, rtol=0)


def test_enumerated_elbo_equals_trace_enum_elbo_in_expectation():
    _agree(lambda: -O.ELBO().loss(mixture_model, mixture_guide_poor, X),
           lambda: -TraceEnum_ELBO(max_plate_nesting=1).loss(mixture_model, mixture_guide_poor, X), n=400)


def test_enumerated_log_likelihood_is_the_exact_sum_of_per_value_estimates():
    """log p̂(x) = log Σ_y p̂(x, y), each p̂(x, y) an importance estimate with y fixed (written here)."""
    torch.manual_seed(3)
    K = 2000
    est = pv.log_likelihood(mixture_model, mixture_guide_poor, X, num_samples=K).per_datapoint.double()
    ref = []
    for x in X:
        per_y = []
        for y in range(3):
            q_z = dist.Normal(0.3 * x - 0.1 * MU[y], 0.9)
            z = q_z.sample((K,))
            lw = (PI[y].log() + dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z + MU[y], SIGMA).log_prob(x)
                  - q_z.log_prob(z))
            per_y.append(torch.logsumexp(lw, 0) - math.log(K))
        ref.append(torch.logsumexp(torch.stack(per_y), 0))
    torch.testing.assert_close(est, torch.stack(ref).double(), atol=0.03, rtol=0)
    torch.testing.assert_close(est, _exact_log_px(X).double(), atol=0.03, rtol=0)


def test_enumerated_gradients_match_trace_enum_elbo():
    """Same parameters, many particles: the ELBO gradient of a learnable guide agrees with Pyro's."""

    @config_enumerate
    def guide(x):
        a = pyro.param("a", torch.tensor([0.2, -0.1, 0.3]))
        b = pyro.param("b", torch.tensor(0.4))
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=a.expand(x.shape[0], 3)))
            pyro.sample("z", dist.Normal(b * x - 0.1 * MU[y], 0.9))

    def grads(elbo):
        pyro.clear_param_store()
        guide(X)
        loss = elbo.differentiable_loss(mixture_model, guide, X)
        ga, gb = torch.autograd.grad(loss, [pyro.param("a").unconstrained(), pyro.param("b").unconstrained()])
        return torch.cat([ga, gb.reshape(1)])

    ours = torch.stack([grads(O.ELBO(num_particles=50)) for _ in range(40)])
    ref = torch.stack([grads(TraceEnum_ELBO(num_particles=50, vectorize_particles=True, max_plate_nesting=1))
                       for _ in range(40)])
    se = torch.sqrt(ours.var(0) / 40 + ref.var(0) / 40)
    assert bool(((ours.mean(0) - ref.mean(0)).abs() <= 5 * se + 1e-4).all()), (ours.mean(0), ref.mean(0), se)


def _param_guide(a0, s0):
    @config_enumerate
    def guide(x):
        a = pyro.param("a", torch.tensor(a0))
        s = pyro.param("s", torch.tensor(s0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=PI.log() + dist.Normal(MU, math.sqrt(1 + SIGMA**2))
                                                  .log_prob(x.unsqueeze(-1))))
            pyro.sample("z", dist.Normal(a * (x - MU[y]), s))

    return guide


def _guide_grads(obj, guide, n):
    out = []
    for _ in range(n):
        pyro.clear_param_store()
        guide(X)
        loss = obj.differentiable_loss(mixture_model, guide, X)
        g = torch.autograd.grad(loss, [pyro.param("a").unconstrained(), pyro.param("s").unconstrained()])
        out.append(torch.stack(g))
    return torch.stack(out)


@pytest.mark.parametrize("make, standard", [
    (lambda: O.IWAE(4, gradient="dreg"), lambda: O.IWAE(4)),
    (lambda: O.MIWAE(2, 2, gradient="dreg"), lambda: O.MIWAE(2, 2)),
    (lambda: O.PIWAE(2, 2, encoder_gradient="dreg"), lambda: O.PIWAE(2, 2)),
], ids=["iwae", "miwae", "piwae"])
def test_dreg_on_an_enumerated_label(make, standard):
    """The branches flattened into K·C particles: DReG's encoder gradient vanishes at the exact
    posterior (every weight equal), and elsewhere agrees in expectation with the standard one."""
    a_true, s_true = 1.0 / (1.0 + SIGMA**2), (1.0 + 1.0 / SIGMA**2) ** -0.5
    exact = _guide_grads(make(), _param_guide(a_true, s_true), 3)
    assert float(exact.abs().max()) < 1e-4
    guide = _param_guide(0.3, 0.9)
    dreg, std = _guide_grads(make(), guide, 200), _guide_grads(standard(), guide, 400)
    se = torch.sqrt(dreg.var(0) / 200 + std.var(0) / 400)
    assert bool(((dreg.mean(0) - std.mean(0)).abs() <= 5 * se).all()), (dreg.mean(0), std.mean(0), se)
    assert bool((dreg.var(0) < std.var(0)).all())  # and with less variance


def test_enumeration_refusals_name_the_fix():
    with pytest.raises(NotImplementedError, match="gradient='standard'"):
        O.CIWAE(0.5, 3, gradient="stl").differentiable_loss(mixture_model, mixture_guide_poor, X)
    with pytest.raises(NotImplementedError, match="FreeBits"):
        O.FreeBits(O.ELBO(), 0.1).loss(mixture_model, mixture_guide_poor, X)

    @config_enumerate
    def late_guide(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.3 * x, 0.9))
            pyro.sample("y", dist.Categorical(logits=torch.stack([z, -z, z * 0], -1)))

    with pytest.raises(ValueError, match="drawn after the latent 'z'"):
        O.ELBO().loss(mixture_model, late_guide, X)


def test_beta_vae_scales_the_enumerated_kl():
    """β = 1 is the ELBO; the exact-posterior ELBO equals log p(x), so β ≠ 1 moves it by (β−1)·(−KL) ≠ 0."""
    exact = -float(_exact_log_px(X).sum())
    elbo = O.ELBO(analytic_kl=False)
    assert O.BetaVAE(elbo, 1.0).loss(mixture_model, mixture_guide_exact, X) == pytest.approx(exact, abs=1e-4)
    assert abs(O.BetaVAE(elbo, 2.0).loss(mixture_model, mixture_guide_exact, X) - exact) > 0.1
