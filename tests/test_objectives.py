"""Tests of :mod:`pyro_vae.objectives` against analytic truth (the linear-Gaussian VAE)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from torch import nn

import pyro_vae as pv
from pyro_vae.objectives import (
    CIWAE,
    ELBO,
    IWAE,
    MIWAE,
    PIWAE,
    BetaVAE,
    FreeBits,
    KLWarmup,
    RenyiBound,
    scale_latents,
)
from pyro_vae.objectives.iwae import stop_parameters
from pyro_vae.testing import LinearGaussian
from pyro_vae.traces import PlateError
from pyro_vae.vae import data_plate, declare_params

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


class ParamGuide(nn.Module):
    """A guide for LinearGaussian with one set of parameters per datapoint (rows of ``x``).

    ``kind="mvn"``: q(z|x_b) = N(loc_b, L_b L_bᵀ); ``kind="diag"``: N(loc_b, diag exp(log_scale_b)²).
    Initialised at the exact posterior (or its diagonal) moved by ``shift`` and widened by ``scale``.
    """

    def __init__(self, lg: LinearGaussian, x: torch.Tensor, kind: str = "mvn", scale: float = 1.0, shift: float = 0.0):
        super().__init__()
        post = lg.posterior(x)
        self.kind = kind
        self.loc = nn.Parameter(post.loc.detach().clone() + shift)
        if kind == "mvn":
            self.scale_tril = nn.Parameter(scale * post.scale_tril.expand(len(x), -1, -1).clone())
        else:
            sd = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
            self.log_scale = nn.Parameter((scale * sd).log().expand(len(x), -1).clone())

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> None:
        declare_params("guide", self)
        with data_plate(x, num_data):
            if self.kind == "mvn":
                # tril: an upper entry would move the samples but not the density
                pyro.sample("z", dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril.tril()))
            else:
                pyro.sample("z", dist.Normal(self.loc, self.log_scale.exp()).to_event(1))


def grads(objective, model, guide, params, *args, seed=0, **kwargs):
    """(loss value, [grad of each param]) of ``objective`` with the draws of ``seed``."""
    for p in params:
        p.grad = None
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(model, guide, *args, **kwargs)
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]


def loss_at(objective, model, guide, *args, seed=0, **kwargs) -> float:
    pyro.set_rng_seed(seed)
    return objective.loss(model, guide, *args, **kwargs)


def small_vae(seed: int = 0, encoder=None) -> pv.VAE:
    torch.manual_seed(seed)
    enc = encoder if encoder is not None else pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,))
    vae = pv.VAE(enc, pv.decoders.GaussianDecoder(2, 4, hidden=(8,), scale=0.7))
    return vae.double()


def family_params(vae: pv.VAE, family: str) -> list[torch.Tensor]:
    return [p for f, p in vae.component_parameters() if f == family]


@pytest.fixture
def lg() -> LinearGaussian:
    return LinearGaussian(x_dim=5, latent_dim=2, noise_scale=0.5, seed=0)


# --------------------------------------------------------------------------------------------
# IWAE(K=1) is the ELBO; Rényi(α=0) is IWAE and agrees with pyro.infer.RenyiELBO
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gradient", ["standard", "stl", "dreg"])
def test_iwae_one_particle_equals_elbo_value_and_gradient(lg, gradient):
    x = lg.sample(6)
    guide = ParamGuide(lg, x, scale=1.3, shift=0.2)
    params = list(guide.parameters())
    elbo_val, elbo_g = grads(ELBO(analytic_kl=False), lg.model, guide, params, x, seed=3)
    iwae_val, iwae_g = grads(IWAE(num_particles=1, gradient=gradient), lg.model, guide, params, x, seed=3)
    assert iwae_val.item() == pytest.approx(elbo_val.item(), abs=1e-10)
    if gradient == "standard":  # the STL/DReG gradients differ from the ELBO's by the score term
        for a, b in zip(iwae_g, elbo_g):
            assert torch.allclose(a, b, atol=1e-10)
    else:
        assert max(float((a - b).abs().max()) for a, b in zip(iwae_g, elbo_g)) > 1e-3


def test_iwae_one_particle_equals_elbo_on_a_vae_decoder_and_encoder():
    vae = small_vae()
    x = torch.randn(5, 4, dtype=torch.float64)
    params = list(vae.parameters())
    ev, eg = grads(ELBO(analytic_kl=False), vae.model, vae.guide, params, x, seed=1)
    iv, ig = grads(IWAE(1), vae.model, vae.guide, params, x, seed=1)
    assert iv.item() == pytest.approx(ev.item(), abs=1e-10)
    for a, b in zip(ig, eg):
        assert torch.allclose(a, b, atol=1e-10)


def test_renyi_alpha_zero_equals_iwae(lg):
    x = lg.sample(7)
    guide = lg.scaled_guide(1.5, 0.3)
    renyi = loss_at(RenyiBound(alpha=0.0, num_particles=6), lg.model, guide, x, seed=5)
    iwae = loss_at(IWAE(6), lg.model, guide, x, seed=5)
    assert renyi == pytest.approx(iwae, abs=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.5, -0.5])
def test_renyi_matches_pyro_renyi_elbo_when_every_site_is_in_the_data_plate(lg, alpha):
    # pyro.infer.RenyiELBO sums the log weights over the plates every site shares, so with all sites in
    # the (un-subsampled) data plate its bound is per datapoint, like ours.
    x = lg.sample(4)
    guide = ParamGuide(lg, x, scale=1.4, shift=-0.3)
    params = list(guide.parameters())
    pyro_renyi = pyro.infer.RenyiELBO(alpha=alpha, num_particles=5, max_plate_nesting=1, vectorize_particles=True)
    for p in params:
        p.grad = None
    pyro.set_rng_seed(2)
    pyro_loss = pyro_renyi.loss_and_grads(lg.model, guide, x)
    pyro_g = [p.grad.clone() for p in params]
    ours, ours_g = grads(RenyiBound(alpha, num_particles=5), lg.model, guide, params, x, seed=2)
    assert ours.item() == pytest.approx(pyro_loss, abs=1e-9)
    for a, b in zip(ours_g, pyro_g):
        assert torch.allclose(a, b, atol=1e-9)


# --------------------------------------------------------------------------------------------
# bounds against log p(x)
# --------------------------------------------------------------------------------------------


def test_bounds_are_ordered_elbo_iwae_k_iwae_2k_log_marginal(lg):
    x = lg.sample(4000)
    guide = lg.scaled_guide(1.5, 0.3)
    chunks = x.split(100)
    truth = torch.stack([lg.log_marginal(c).mean() for c in chunks])

    def gaps(objective):  # per chunk: bound per datapoint minus log p(x) per datapoint
        vals = torch.tensor([-objective.loss(lg.model, guide, c) / len(c) for c in chunks], dtype=torch.float64)
        g = vals - truth
        return float(g.mean()), float(g.std() / math.sqrt(len(g)))

    elbo, se_e = gaps(ELBO(analytic_kl=False))
    iw4, se_4 = gaps(IWAE(4))
    iw8, se_8 = gaps(IWAE(8))
    # each step tightens the bound by many standard errors, and the tightest is still below log p(x)
    assert iw4 - elbo > 5 * math.hypot(se_e, se_4)
    assert iw8 - iw4 > 5 * math.hypot(se_4, se_8)
    assert iw8 < 3 * se_8
    # the ELBO's gap is exactly −KL(q ‖ p(z|x)), the same for every x here
    post = lg.posterior(x[:1])
    q = dist.MultivariateNormal(post.loc + 0.3, scale_tril=1.5 * post.scale_tril)
    kl = float(torch.distributions.kl_divergence(q, post))
    assert abs(elbo + kl) < 4 * se_e


def exact_objectives():
    return [
        ELBO(analytic_kl=False, num_particles=3),
        IWAE(5),
        IWAE(5, gradient="stl"),
        IWAE(5, gradient="dreg"),
        MIWAE(2, 3),
        MIWAE(2, 3, gradient="dreg"),
        CIWAE(0.3, 4),
        PIWAE(2, 3),
        RenyiBound(0.5, 4),
        RenyiBound(0.0, 4),
        RenyiBound(2.0, 4),
        RenyiBound(-1.0, 4),
        BetaVAE(IWAE(3), 1.0),
    ]


@pytest.mark.parametrize("objective", exact_objectives(), ids=lambda o: f"{type(o).__name__}")
def test_every_bound_equals_log_marginal_under_the_exact_posterior(lg, objective):
    x = lg.sample(10)
    value = -objective.loss(lg.model, lg.exact_guide, x)
    assert value == pytest.approx(float(lg.log_marginal(x).sum()), abs=1e-6)
    assert float(objective.last_terms.bound) == pytest.approx(float(lg.log_marginal(x).mean()), abs=1e-6)


# --------------------------------------------------------------------------------------------
# gradient estimators
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "objective",
    [IWAE(1, gradient="stl"), IWAE(6, gradient="stl"), IWAE(6, gradient="dreg"), MIWAE(2, 3, gradient="dreg"),
     PIWAE(2, 3, encoder_gradient="dreg")],
    ids=["stl1", "stl6", "dreg6", "miwae-dreg", "piwae-dreg"],
)
def test_stl_and_dreg_guide_gradients_vanish_at_the_exact_posterior(lg, objective):
    x = lg.sample(3)
    guide = ParamGuide(lg, x)  # parameters at the exact posterior of each datapoint
    params = list(guide.parameters())
    _, g = grads(objective, lg.model, guide, params, x, seed=4)
    assert max(float(t.abs().max()) for t in g) < 1e-10
    _, g_std = grads(IWAE(6), lg.model, guide, params, x, seed=4)
    assert max(float(t.abs().max()) for t in g_std) > 1e-2  # the score term does not vanish


def test_dreg_guide_gradient_is_unbiased_for_the_iwae_gradient(lg):
    # 4000 copies of one datapoint, each with its own guide parameters: the gradient rows are
    # independent draws of the per-datapoint gradient estimator.
    n, K = 4000, 4
    x = lg.sample(1).expand(n, -1).contiguous()
    guide = ParamGuide(lg, x, scale=1.6, shift=0.5)
    params = [guide.loc, guide.scale_tril]
    _, g_std = grads(IWAE(K), lg.model, guide, params, x, seed=11)
    _, g_dreg = grads(IWAE(K, gradient="dreg"), lg.model, guide, params, x, seed=12)
    _, g_stl = grads(IWAE(K, gradient="stl"), lg.model, guide, params, x, seed=13)
    for a, b, c in zip(g_std, g_dreg, g_stl):
        a, b, c = a.reshape(n, -1), b.reshape(n, -1), c.reshape(n, -1)
        keep = a.abs().sum(0) > 0  # the upper triangle of scale_tril gets no gradient
        a, b, c = a[:, keep], b[:, keep], c[:, keep]
        se = (a.var(0) / n + b.var(0) / n).sqrt()
        assert bool(((a.mean(0) - b.mean(0)).abs() < 4 * se).all())
        assert bool((a.mean(0).abs() > 4 * a.std(0) / math.sqrt(n)).any())  # a real, non-zero signal
        # the test has the power to see a bias: STL is biased for the IWAE gradient when K > 1
        se_stl = (a.var(0) / n + c.var(0) / n).sqrt()
        assert bool(((a.mean(0) - c.mean(0)).abs() > 4 * se_stl).any())
    # and DReG's encoder gradient is the less noisy one (Tucker et al. 2019)
    assert float(g_dreg[0].var(0).sum()) < 0.5 * float(g_std[0].var(0).sum())


def _per_datapoint_snr(objective, lg, guide, x, seed):
    """Mean over guide-parameter elements of |E g| / std g, the 4000 rows being 4000 independent
    draws of the per-datapoint gradient (one datapoint, a copy of the parameters per row)."""
    _, g = grads(objective, lg.model, guide, [guide.loc, guide.scale_tril], x, seed=seed)
    flat = torch.cat([t.reshape(len(x), -1) for t in g], 1)
    flat = flat[:, flat.abs().sum(0) > 0]  # the upper triangle of scale_tril gets no gradient
    return float((flat.mean(0).abs() / flat.std(0)).mean())


def test_encoder_snr_against_k_standard_falls_dreg_rises_near_the_posterior(lg):
    # Rainforth et al. (2018): the standard IWAE encoder SNR falls as 1/√K; Tucker et al. (2019):
    # DReG's rises with K. Both are statements about the regime where q is close to p(z|x),
    # which a guide 1.2× wider than the exact posterior and shifted by 0.2 is.
    n = 4000
    x = lg.sample(1).expand(n, -1).contiguous()
    near = ParamGuide(lg, x, scale=1.2, shift=0.2)
    std = {k: _per_datapoint_snr(IWAE(k), lg, near, x, seed=k) for k in (1, 10, 100)}
    dreg = {k: _per_datapoint_snr(IWAE(k, gradient="dreg"), lg, near, x, seed=k) for k in (1, 10, 100)}
    assert std[1] > std[10] > std[100]
    assert 0.2 < std[100] / std[10] < 0.45  # 1/√10 = 0.32 (measured 0.30)
    assert dreg[1] < dreg[10] < dreg[100]
    assert dreg[10] > 2 * std[10] and dreg[100] > 2 * std[100]  # measured 8× and 74×
    # far from the posterior the advantage shrinks: what the MNIST models of docs/snr_study.md show
    far = ParamGuide(lg, x, scale=2.0, shift=1.0)
    ratio_far = _per_datapoint_snr(IWAE(10, gradient="dreg"), lg, far, x, 10) / _per_datapoint_snr(IWAE(10), lg, far, x, 10)
    assert 1.0 < ratio_far < 2.0  # measured 1.1


def test_dreg_and_stl_decoder_gradients_equal_the_standard_iwae_gradient():
    vae = small_vae()
    x = torch.randn(6, 4, dtype=torch.float64)
    dec, enc = family_params(vae, "decoder"), family_params(vae, "encoder")
    _, g_std = grads(IWAE(5), vae.model, vae.guide, dec + enc, x, seed=7)
    for gradient in ("stl", "dreg"):
        _, g = grads(IWAE(5, gradient=gradient), vae.model, vae.guide, dec + enc, x, seed=7)
        for a, b in zip(g[: len(dec)], g_std[: len(dec)]):
            assert torch.allclose(a, b, atol=1e-10)
        assert max(float((a - b).abs().max()) for a, b in zip(g[len(dec):], g_std[len(dec):])) > 1e-4


def test_piwae_decoder_gets_iwae_mk_and_encoder_gets_miwae_gradient():
    vae = small_vae()
    x = torch.randn(6, 4, dtype=torch.float64)
    dec, enc = family_params(vae, "decoder"), family_params(vae, "encoder")
    M, K = 3, 2
    v_p, g_p = grads(PIWAE(M, K), vae.model, vae.guide, dec + enc, x, seed=9)
    v_i, g_i = grads(IWAE(M * K), vae.model, vae.guide, dec + enc, x, seed=9)
    _, g_m = grads(MIWAE(M, K), vae.model, vae.guide, dec + enc, x, seed=9)
    assert v_p.item() == pytest.approx(v_i.item(), abs=1e-10)  # PIWAE reports IWAE-(M·K)
    for a, b in zip(g_p[: len(dec)], g_i[: len(dec)]):
        assert torch.allclose(a, b, atol=1e-10)
    for a, b in zip(g_p[len(dec):], g_m[len(dec):]):
        assert torch.allclose(a, b, atol=1e-10)
    assert max(float((a - b).abs().max()) for a, b in zip(g_i[len(dec):], g_m[len(dec):])) > 1e-4


def test_miwae_and_ciwae_reduce_to_iwae_and_elbo(lg):
    x = lg.sample(8)
    guide = lg.scaled_guide(1.5, 0.3)
    iw6 = loss_at(IWAE(6), lg.model, guide, x, seed=1)
    assert loss_at(MIWAE(1, 6), lg.model, guide, x, seed=1) == pytest.approx(iw6, abs=1e-10)
    assert loss_at(CIWAE(0.0, 6), lg.model, guide, x, seed=1) == pytest.approx(iw6, abs=1e-10)
    elbo6 = loss_at(ELBO(num_particles=6, analytic_kl=False), lg.model, guide, x, seed=1)
    assert loss_at(MIWAE(6, 1), lg.model, guide, x, seed=1) == pytest.approx(elbo6, abs=1e-10)
    assert loss_at(CIWAE(1.0, 6), lg.model, guide, x, seed=1) == pytest.approx(elbo6, abs=1e-10)
    mixed = loss_at(CIWAE(0.25, 6), lg.model, guide, x, seed=1)
    assert mixed == pytest.approx(0.25 * elbo6 + 0.75 * iw6, abs=1e-9)
    # MIWAE(2, 3) is the mean of two IWAE-3 bounds on the same draws
    obj = MIWAE(2, 3)
    m = loss_at(obj, lg.model, guide, x, seed=1)
    lw = obj.last_log_weights
    manual = -0.5 * (torch.logsumexp(lw[:3], 0) + torch.logsumexp(lw[3:], 0) - 2 * math.log(3)).sum()
    assert m == pytest.approx(float(manual), abs=1e-10)


def test_stop_parameters_keeps_the_sample_path_through_parameter_free_transforms():
    # q = N(m, s) written as Normal(0, 1) pushed through AffineTransform(m, s): the STL gradient
    # must equal the one of the plain Normal (a stale transform cache would lose the z path).
    m = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([1.2, 0.7], dtype=torch.float64, requires_grad=True)
    base = dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0)
    affine = dist.TransformedDistribution(base, [dist.transforms.AffineTransform(m, s)])
    torch.manual_seed(0)
    z = affine.rsample()
    g_affine = torch.autograd.grad(stop_parameters(affine, z).log_prob(z).sum(), (m, s))
    plain = dist.Normal(m, s)
    z2 = m + s * affine.transforms[0].inv(z).detach()  # the same noise
    g_plain = torch.autograd.grad(stop_parameters(plain, z2).log_prob(z2).sum(), (m, s))
    for a, b in zip(g_affine, g_plain):
        assert torch.allclose(a, b, atol=1e-12)
    assert float(g_plain[1].abs().max()) > 1e-3


# --------------------------------------------------------------------------------------------
# minibatches and the three ways to train
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "objective",
    [IWAE(3), IWAE(3, gradient="dreg"), RenyiBound(0.5, 3), PIWAE(2, 2), FreeBits(IWAE(3), 0.5, groups="site")],
    ids=["iwae", "dreg", "renyi", "piwae", "freebits"],
)
def test_minibatch_bound_is_scaled_to_the_data_set(lg, objective):
    x = lg.sample(8)
    guide = lg.scaled_guide(1.2, 0.1)
    full = loss_at(objective, lg.model, guide, x, seed=3)
    scaled = loss_at(objective, lg.model, guide, x, seed=3, num_data=100)
    assert scaled == pytest.approx(100 / 8 * full, rel=1e-12)
    assert full == pytest.approx(-8 * float(objective.last_terms.bound), rel=1e-12)


@pytest.mark.parametrize(
    "objective", [IWAE(4, gradient="dreg"), RenyiBound(0.5, 4), PIWAE(2, 2)], ids=["iwae", "renyi", "piwae"]
)
def test_svi_with_pyro_optim_takes_the_sgd_step(objective):
    vae = small_vae()
    x = torch.randn(5, 4, dtype=torch.float64)
    params = list(vae.parameters())
    expected_loss, expected_g = grads(objective, vae.model, vae.guide, params, x, seed=21)
    before = [p.detach().clone() for p in params]
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.SGD({"lr": 0.01}), loss=objective)
    pyro.set_rng_seed(21)
    loss = svi.step(x)
    assert loss == pytest.approx(expected_loss.item(), rel=1e-12)
    for p, b, g in zip(params, before, expected_g):
        assert torch.allclose(p.detach(), b - 0.01 * g, atol=1e-12)


def test_objective_module_with_torch_optim_takes_the_sgd_step():
    vae = small_vae()
    x = torch.randn(5, 4, dtype=torch.float64)
    objective = IWAE(4, gradient="dreg")
    params = list(vae.parameters())
    expected_loss, expected_g = grads(objective, vae.model, vae.guide, params, x, seed=22)
    before = [p.detach().clone() for p in params]
    loss_module = objective(vae.model, vae.guide)
    assert isinstance(loss_module, nn.Module)
    opt = torch.optim.SGD(vae.parameters(), lr=0.01)
    opt.zero_grad()
    pyro.set_rng_seed(22)
    loss = loss_module(x)
    loss.backward()
    opt.step()
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-12)
    for p, b, g in zip(params, before, expected_g):
        assert torch.allclose(p.detach(), b - 0.01 * g, atol=1e-12)


# --------------------------------------------------------------------------------------------
# β, warm-up, free bits
# --------------------------------------------------------------------------------------------


def test_beta_vae_on_the_elbo_is_reconstruction_minus_beta_kl():
    vae = small_vae()
    x = torch.randn(6, 4, dtype=torch.float64)
    elbo = ELBO()
    loss_at(elbo, vae.model, vae.guide, x, seed=2)
    rec, kl = float(elbo.last_terms.reconstruction), float(elbo.last_terms.kl)
    assert elbo.kl_sites == {"z": "analytic"}
    beta = BetaVAE(ELBO(), beta=3.0)
    value = loss_at(beta, vae.model, vae.guide, x, seed=2)
    assert value == pytest.approx(-6 * (rec - 3.0 * kl), rel=1e-12)
    assert float(beta.last_terms.kl) == pytest.approx(kl, rel=1e-12)  # reported unweighted
    assert float(beta.last_terms.bound) == pytest.approx(rec - 3.0 * kl, rel=1e-12)
    # the handler alone does the same for Pyro's own ELBO
    pyro.set_rng_seed(2)
    pyro_value = pyro.infer.TraceMeanField_ELBO().loss(scale_latents(vae.model, 3.0), scale_latents(vae.guide, 3.0), x)
    assert pyro_value == pytest.approx(value, rel=1e-10)


def test_beta_scales_prior_and_guide_inside_the_importance_weights(lg):
    x = lg.sample(5)
    guide = lg.scaled_guide(1.4, 0.2)
    objective = BetaVAE(IWAE(4), beta=0.3)
    value = loss_at(objective, lg.model, guide, x, seed=6)
    pyro.set_rng_seed(6)
    tr = IWAE(4).traces(lg.model, guide, x)
    z = tr.guide_trace.nodes["z"]
    lq = z["fn"].log_prob(z["value"])
    lp = tr.model_trace.nodes["z"]["fn"].log_prob(z["value"])
    obs = tr.model_trace.nodes["x"]
    lx = obs["fn"].log_prob(obs["value"])
    logw = lx + 0.3 * (lp - lq)  # (K, B)
    expected = -(torch.logsumexp(logw, 0) - math.log(4)).sum()
    assert value == pytest.approx(float(expected), abs=1e-10)


def test_kl_warmup_ramps_beta_on_training_calls_only():
    vae = small_vae()
    x = torch.randn(4, 4, dtype=torch.float64)
    warm = KLWarmup(ELBO(), warmup_steps=4)
    assert warm.beta == 0.0
    first = warm.differentiable_loss(vae.model, vae.guide, x)  # β = 0: reconstruction only
    assert warm.last_beta == 0.0 and warm.step == 1
    assert first.item() == pytest.approx(-4 * float(warm.last_terms.reconstruction), rel=1e-12)
    warm.loss(vae.model, vae.guide, x)  # evaluation: no step
    assert warm.step == 1 and warm.beta == 0.25
    warm.set_step(3)
    v = loss_at(warm, vae.model, vae.guide, x, seed=5)
    assert v == pytest.approx(loss_at(BetaVAE(ELBO(), 0.75), vae.model, vae.guide, x, seed=5), rel=1e-12)
    warm.set_step(10)
    assert warm.beta == 1.0


def _diag_normal_kl(guide: ParamGuide) -> torch.Tensor:
    """Analytic KL(N(m, s²) ‖ N(0, 1)) per datapoint and dimension, (B, d)."""
    m, s = guide.loc, guide.log_scale.exp()
    return 0.5 * (s**2 + m**2 - 1.0) - guide.log_scale


def test_free_bits_clamps_each_dimension_and_cancels_its_gradient(lg):
    x = lg.sample(6)
    guide = ParamGuide(lg, x, kind="diag", scale=1.2, shift=0.1)
    kl = _diag_normal_kl(guide).detach()
    kl_bar = kl.mean(0)  # per dimension
    lam = float(kl_bar.mean())  # between the two dimensions' KLs: one is clamped, one is not
    low = int(kl_bar.argmin())
    assert kl_bar.min() < lam < kl_bar.max()
    params = list(guide.parameters())
    fb = FreeBits(ELBO(), threshold=lam)
    v_fb, g_fb = grads(fb, lg.model, guide, params, x, seed=8)
    v_e, g_e = grads(ELBO(), lg.model, guide, params, x, seed=8)
    assert v_fb.item() == pytest.approx(v_e.item() + 6 * (lam - float(kl_bar[low])), rel=1e-12)
    assert torch.allclose(fb.last_group_kl["z"], kl_bar, atol=1e-12)
    assert fb.kl_sites == {"z": "analytic"}
    # the loss's gradient is the ELBO loss's without the clamped dimension's KL
    g_ref = torch.autograd.grad(_diag_normal_kl(guide)[:, low].sum(), params)
    for a, b, c in zip(g_fb, g_e, g_ref):
        assert torch.allclose(a, b - c, atol=1e-10)
    # β-weighting composes in either order: N (rec − β Σ_j max(λ, KL̄_j))
    rec = float(fb.last_terms.reconstruction)
    expected = -6 * (rec - 0.5 * float(torch.clamp(kl_bar, min=lam).sum()))
    for objective in (BetaVAE(FreeBits(ELBO(), lam), 0.5), FreeBits(BetaVAE(ELBO(), 0.5), lam)):
        assert loss_at(objective, lg.model, guide, x, seed=8) == pytest.approx(expected, rel=1e-12)


def test_free_bits_per_site_and_monte_carlo_kl(lg):
    x = lg.sample(6)
    guide = lg.scaled_guide(1.3, 0.2)  # a full-covariance guide: one group per site
    fb = FreeBits(IWAE(3), threshold=50.0, groups="site")
    value = loss_at(fb, lg.model, guide, x, seed=1)
    base = loss_at(IWAE(3), lg.model, guide, x, seed=1)
    assert fb.kl_sites == {"z": "monte carlo"}  # no closed form for MultivariateNormal vs Normal
    assert value == pytest.approx(base + 6 * (50.0 - float(fb.last_group_kl["z"][0])), rel=1e-12)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def global_latent_model(x, num_data=None):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
    with data_plate(x, num_data):
        pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x[:, :2])


def global_latent_guide(x, num_data=None):
    pyro.sample("mu", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))


def test_bad_counts_and_orders_are_errors_naming_the_fix():
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
        IWAE(num_particles=0)
    with pytest.raises(ValueError, match="num_outer must be an integer >= 1"):
        MIWAE(0, 3)
    with pytest.raises(ValueError, match="num_inner must be an integer >= 1"):
        PIWAE(2, 0)
    with pytest.raises(ValueError, match=r"num_outer \* num_inner = 2 \* 3 = 6; omit num_particles"):
        MIWAE(2, 3, num_particles=5)
    with pytest.raises(ValueError, match="use pyro_vae.objectives.ELBO for alpha = 1"):
        RenyiBound(alpha=1.0, num_particles=4)
    with pytest.raises(ValueError, match="gradient must be one of"):
        IWAE(4, gradient="reinforce")
    with pytest.raises(ValueError, match="gradient must be one of"):
        CIWAE(0.5, 4, gradient="dreg")
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
        CIWAE(1.5, 4)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        BetaVAE(ELBO(), -1.0)
    with pytest.raises(ValueError, match="warmup_steps must be an integer >= 1"):
        KLWarmup(ELBO(), 0)
    with pytest.raises(ValueError, match="groups must be 'dim'"):
        FreeBits(ELBO(), 0.1, groups="layer")
    with pytest.raises(TypeError, match="wraps a pyro_vae objective"):
        BetaVAE(pyro.infer.Trace_ELBO(), 2.0)


def test_particle_count_changed_after_construction_is_an_error(lg):
    objective = MIWAE(2, 3)
    objective.num_particles = 5
    with pytest.raises(ValueError, match="got 5 particles but num_outer \\* num_inner = 2 \\* 3"):
        objective.loss(lg.model, lg.exact_guide, lg.sample(2))


def test_non_reparameterized_guide_is_an_error(lg):
    def guide(x, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("z", dist.Poisson(torch.ones(len(x), 2, dtype=x.dtype)).to_event(1))

    with pytest.raises(ValueError, match="needs reparameterized guide samples.*site 'z'.*no rsample"):
        IWAE(3).loss(lg.model, guide, lg.sample(2))


@pytest.mark.parametrize(
    "objective", [IWAE(3), RenyiBound(0.5, 3), FreeBits(ELBO(), 0.1)], ids=["iwae", "renyi", "freebits"]
)
def test_latent_outside_the_data_plate_is_a_plate_error(objective):
    with pytest.raises(PlateError, match="'mu'.*outside the 'data' plate"):
        objective.loss(global_latent_model, global_latent_guide, torch.zeros(3, 4))


def test_stl_and_dreg_refuse_flow_guides_and_hierarchical_guides(lg):
    vae = small_vae(encoder=pv.encoders.IAFEncoder(4, 2, hidden=(8,)))
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="'z'.*nn.Modules.*gradient='standard'"):
        IWAE(3, gradient="dreg").differentiable_loss(vae.model, vae.guide, x)
    assert math.isfinite(IWAE(3).differentiable_loss(vae.model, vae.guide, x).item())  # standard works

    shift = torch.zeros(2, dtype=torch.float64, requires_grad=True)

    def model(x, num_data=None):
        with data_plate(x, num_data):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z2 @ lg.W.T, 1.0).to_event(1), obs=x)

    def guide(x, num_data=None):
        with data_plate(x, num_data):
            z1 = pyro.sample("z1", dist.Normal(shift.expand(len(x), 2), 1.0).to_event(1))
            pyro.sample("z2", dist.Normal(z1 + 1.0, 1.0).to_event(1))

    x = lg.sample(3)
    for objective in (IWAE(3, gradient="stl"), PIWAE(2, 2)):
        with pytest.raises(NotImplementedError, match="'z2'.*depends on the sample of 'z1'.*gradient='standard'"):
            objective.differentiable_loss(model, guide, x)
    assert math.isfinite(IWAE(3).differentiable_loss(model, guide, x).item())


def test_free_bits_per_dimension_needs_a_factorized_guide(lg):
    with pytest.raises(NotImplementedError, match="factorize.*MultivariateNormal.*groups='site'"):
        FreeBits(ELBO(analytic_kl=False), 0.1).loss(lg.model, lg.exact_guide, lg.sample(2))
