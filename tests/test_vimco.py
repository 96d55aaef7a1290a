"""VIMCO (``pyro_vae.objectives.VIMCO``) against independent references.

The small model: a label y ∈ {0, 1, 2} with prior π and x | y ~ Normal(μ_y, 1); the guide is
q(y | x_b) = Categorical(logits_b) with the logits passed in as a leaf tensor, one row per
datapoint. With K particles per datapoint the expected bound is a finite sum,

    E[L̂_K](logits_b) = Σ_{(y_1..y_K) ∈ {0,1,2}^K} Π_k q(y_k) · log (1/K) Σ_k w(y_k),

so its exact gradient comes from enumerating all 3^K tuples here, in the test, with autograd
(:func:`exact_gradient`) — no pyro_vae code involved. One objective call on R copies of each
datapoint gives R independent gradient estimates (row b of ∂/∂logits is datapoint b's own
estimate), so the mean, its standard error and the variance come from one vectorized call.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_vae as pv
from pyro_vae.objectives import VIMCO
from pyro_vae.program import PlateError

F64 = torch.float64
MU = torch.tensor([-2.0, 0.0, 2.5], dtype=F64)
LOG_PI = torch.tensor([0.5, 0.3, 0.2], dtype=F64).log()
X = torch.tensor([0.3, 2.0], dtype=F64)  # two distinct datapoints
LOGITS = torch.tensor([[0.2, -0.1, 0.4], [-0.5, 0.3, 0.1]], dtype=F64)  # q(y | x_b), one row each
REPLICATES = 20_000
Z_TOL = 4.5  # standard errors (6 compared components per case)


def model(x, logits):
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Categorical(logits=LOG_PI))
        pyro.sample("x", dist.Normal(MU[y], 1.0), obs=x)


def guide(x, logits, seen=None):
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Categorical(logits=logits))
    if seen is not None:
        seen.append(y)


def log_w_by_hand(x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(x, y) − log q(y | x) with torch.distributions, for y of shape (K, B)."""
    log_q = torch.log_softmax(logits, -1).gather(-1, y.T).T  # (K, B)
    return LOG_PI[y] + torch.distributions.Normal(MU[y], 1.0).log_prob(x) - log_q


def exact_expected_bound(K: int, logits: torch.Tensor, b: int) -> torch.Tensor:
    """E[log (1/K) Σ_k w_k] for datapoint b, summed over all 3^K particle tuples."""
    ys = torch.tensor(list(itertools.product(range(3), repeat=K)))  # (3^K, K)
    lq = torch.log_softmax(logits, -1)
    lw = LOG_PI[ys] + torch.distributions.Normal(MU[ys], 1.0).log_prob(X[b]) - lq[ys]
    bound = torch.logsumexp(lw, -1) - math.log(K)
    return (lq[ys].sum(-1).exp() * bound).sum()


def exact_gradient(K: int) -> torch.Tensor:
    """∇_logits E[L̂_K], (2, 3): one row per distinct datapoint."""
    rows = []
    for b in range(len(X)):
        lg = LOGITS[b].clone().requires_grad_()
        (g,) = torch.autograd.grad(exact_expected_bound(K, lg, b), lg)
        rows.append(g)
    return torch.stack(rows)


def estimates(objective, R: int = REPLICATES) -> torch.Tensor:
    """(R, 2, 3): R independent estimates of ∇_logits of each datapoint's bound."""
    x = X.repeat(R)
    logits = LOGITS.repeat(R, 1).requires_grad_()
    loss = objective.differentiable_loss(model, guide, x, logits)  # −Σ_b bound_b (no subsampling)
    (g,) = torch.autograd.grad(-loss, logits)
    return g.reshape(R, len(X), 3)


def z_scores(objective, K: int) -> torch.Tensor:
    g = estimates(objective)
    se = g.std(0) / math.sqrt(g.shape[0])
    return (g.mean(0) - exact_gradient(K)) / se


class SelfIncludingBaseline(VIMCO):
    """A deliberately wrong VIMCO: particle k's baseline replaces log w_k by the mean of *all*
    K log weights, log w_k included — it depends on particle k's own draw."""

    def learning_signals(self, logw):
        K = logw.shape[0]
        rep = logw.unsqueeze(0).expand(K, *logw.shape).clone()
        idx = torch.arange(K)
        rep[idx, idx] = logw.mean(0).expand(K, -1)
        bound = torch.logsumexp(logw, 0) - math.log(K)
        return bound - (torch.logsumexp(rep, 1) - math.log(K))


# -- (1) unbiasedness against the enumerated exact gradient -------------------------------------------
@pytest.mark.parametrize("K,baseline,vectorized", [
    (3, "vimco", True), (2, "vimco", True), (3, "none", True), (1, "none", True),
    (3, "vimco", False),  # particles one at a time: the stacked record
])
def test_gradient_is_unbiased_for_the_multi_sample_bound(K, baseline, vectorized):
    exact = exact_gradient(K)
    assert float(exact.abs().min()) > 1e-3  # every component is a real test
    z = z_scores(VIMCO(K, baseline=baseline, vectorize_particles=vectorized), K)
    assert float(z.abs().max()) < Z_TOL, (exact, z)


def test_a_baseline_that_depends_on_its_own_particle_is_detected_as_biased():
    """Negative control: the same test rejects an estimator whose baseline includes w_k."""
    z = z_scores(SelfIncludingBaseline(3), 3)
    assert float(z.abs().max()) > 10 * Z_TOL, z


def test_leave_one_out_bounds_by_hand():
    logw = torch.tensor([[0.1, -3.0], [2.0, 0.5], [-1.0, 0.7]], dtype=F64)
    for b in range(2):
        for k in range(3):
            others = [float(logw[j, b]) for j in range(3) if j != k]
            expected = math.log((sum(math.exp(v) for v in others) + math.exp(sum(others) / 2)) / 3)
            assert float(pv.objectives.vimco.leave_one_out_bounds(logw)[k, b]) == pytest.approx(expected, rel=1e-12)


# -- (2) the value is the IWAE bound --------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["vimco", "none"])
def test_value_is_the_log_mean_exp_of_hand_computed_weights(baseline):
    K, R = 4, 3
    seen: list = []
    x, logits = X.repeat(R), LOGITS.repeat(R, 1).requires_grad_()
    obj = VIMCO(K, baseline=baseline)
    loss = obj.differentiable_loss(model, lambda *a: guide(*a, seen=seen), x, logits)
    y = seen[-1]  # (the first run, if any, only guessed the plate nesting)
    assert y.shape == (K, len(x))
    bound = torch.logsumexp(log_w_by_hand(x, logits, y), 0) - math.log(K)
    torch.testing.assert_close(loss.detach(), -bound.sum().detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(obj.last_terms.bound, bound.mean().detach(), rtol=1e-12, atol=1e-12)


def test_value_is_unbiased_for_the_expected_bound():
    """The mean of the per-datapoint bound over replicates is E[L̂_K] (enumerated)."""
    K, R = 3, REPLICATES
    seen: list = []
    x, logits = X.repeat(R), LOGITS.repeat(R, 1)
    with torch.no_grad():
        VIMCO(K).loss(model, lambda *a: guide(*a, seen=seen), x, logits)
    bound = (torch.logsumexp(log_w_by_hand(x, logits, seen[-1]), 0) - math.log(K)).reshape(R, len(X))
    exact = torch.stack([exact_expected_bound(K, LOGITS[b], b) for b in range(len(X))])
    z = (bound.mean(0) - exact) / (bound.std(0) / math.sqrt(R))
    assert float(z.abs().max()) < Z_TOL, z


def _small_vae():
    return pv.VAE(pv.encoders.DiagNormalEncoder(5, 2, hidden=(8,)),
                  pv.decoders.GaussianDecoder(2, 5, hidden=(8,))).to(F64)


@pytest.mark.parametrize("fast", [True, False])
def test_equals_iwae_on_a_reparameterized_program(fast):
    """No discrete site: VIMCO is IWAE-K (gradient="standard") in value and gradient."""
    vae = _small_vae()
    x = torch.randn(4, 5, dtype=F64)
    params = list(vae.parameters())
    out = []
    for obj in (VIMCO(6), pv.objectives.IWAE(6)):
        obj.use_fast_path = fast
        pyro.set_rng_seed(7)
        loss = obj.differentiable_loss(vae.model, vae.guide, x)
        out.append((loss.detach(), torch.autograd.grad(loss, params)))
    (va, ga), (vb, gb) = out
    torch.testing.assert_close(va, vb, rtol=1e-12, atol=1e-12)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# -- (3) variance -----------------------------------------------------------------------------------------
def test_vimco_has_a_much_lower_variance_than_the_plain_score_function():
    var_vimco = estimates(VIMCO(3), 5_000).var(0)
    var_none = estimates(VIMCO(3, baseline="none"), 5_000).var(0)
    ratio = var_vimco / var_none
    # measured ~0.01-0.03 per parameter (docs/vimco.md); a clear margin below 1
    assert float(ratio.max()) < 0.2, ratio


# -- (4) a mixed program trains ---------------------------------------------------------------------------
class Mixed(nn.Module):
    """A reparameterized z ∈ R² and a discrete y ∈ {0, 1, 2} per datapoint, x ∈ R⁴."""

    def __init__(self) -> None:
        super().__init__()
        self.enc_z = nn.Linear(4, 4)
        self.enc_y = nn.Linear(4, 3)
        self.dec = nn.Linear(2 + 3, 4)

    def model(self, x, num_data=None):
        pyro.module("mixed", self)
        with pv.vae.data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(3)))
            h = torch.cat([z, nn.functional.one_hot(y, 3).to(z.dtype)], -1)
            pyro.sample("x", dist.Normal(self.dec(h), 0.5).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        pyro.module("mixed", self)
        loc, log_scale = self.enc_z(x).chunk(2, -1)
        with pv.vae.data_plate(x, num_data):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
            pyro.sample("y", dist.Categorical(logits=self.enc_y(x)))


def _mixed_data(n: int = 64) -> torch.Tensor:
    centres = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    return centres[torch.arange(n) % 3] + 0.3 * torch.randn(n, 4)


def test_mixed_program_every_parameter_gets_a_gradient():
    m, x = Mixed(), _mixed_data(8)
    loss = VIMCO(4).differentiable_loss(m.model, m.guide, x)
    grads = torch.autograd.grad(loss, list(m.parameters()))
    for (name, _), g in zip(m.named_parameters(), grads):
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name


SIGMA_X = 0.7


def mixed_model(x, logits, loc, log_scale):
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Categorical(logits=LOG_PI))
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=F64), 1.0))
        pyro.sample("x", dist.Normal(z + MU[y], SIGMA_X), obs=x)


def mixed_guide(x, logits, loc, log_scale):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Categorical(logits=logits))
        pyro.sample("z", dist.Normal(loc, log_scale.exp()))


def test_mixed_gradient_is_unbiased():
    """A discrete y and a reparameterized z ~ q(z) = Normal(loc, scale) in one particle. Reference:
    y summed over all 3^K tuples exactly, z integrated by M reparameterized draws per tuple
    (autograd through both); its own Monte Carlo error enters the standard error."""
    K, R, M, G = 3, 20_000, 20_000, 20
    LOC = torch.tensor([0.1, 1.2], dtype=F64)
    LOG_SCALE = torch.tensor([-0.3, 0.2], dtype=F64)
    # the estimator: R independent estimates per datapoint (one row of each parameter each)
    leaves = [LOGITS.repeat(R, 1), LOC.repeat(R), LOG_SCALE.repeat(R)]
    leaves = [t.clone().requires_grad_() for t in leaves]
    loss = VIMCO(K).differentiable_loss(mixed_model, mixed_guide, X.repeat(R), *leaves)
    est = torch.cat([g.reshape(R, len(X), -1) for g in torch.autograd.grad(-loss, leaves)], -1)  # (R, 2, 5)
    # the reference, per datapoint: Σ_tuples Π_k q(y_k) · mean over z-draws of L̂
    ys = torch.tensor(list(itertools.product(range(3), repeat=K)))  # (T, K)
    ref_groups = []
    for g in range(G):
        eps = torch.randn(M // G, K, dtype=F64)
        rows = []
        for b in range(len(X)):
            lg, loc, ls = (LOGITS[b].clone().requires_grad_(), LOC[b].clone().requires_grad_(),
                           LOG_SCALE[b].clone().requires_grad_())
            lq_y = torch.log_softmax(lg, -1)
            z = loc + ls.exp() * eps  # (M/G, K)
            N = torch.distributions.Normal
            lw = (LOG_PI[ys][:, None] + N(0.0, 1.0).log_prob(z) + N(z + MU[ys][:, None], SIGMA_X).log_prob(X[b])
                  - lq_y[ys][:, None] - N(loc, ls.exp()).log_prob(z))  # (T, M/G, K)
            bound = torch.logsumexp(lw, -1) - math.log(K)
            expected = (lq_y[ys].sum(-1).exp() * bound.mean(-1)).sum()
            rows.append(torch.cat([t.reshape(-1) for t in torch.autograd.grad(expected, (lg, loc, ls))]))
        ref_groups.append(torch.stack(rows))
    ref_groups = torch.stack(ref_groups)  # (G, 2, 5)
    ref, ref_se = ref_groups.mean(0), ref_groups.std(0) / math.sqrt(G)
    se = torch.sqrt(est.var(0) / R + ref_se**2)
    z = (est.mean(0) - ref) / se
    assert float(ref.abs().min()) > 1e-3, ref
    assert float(z.abs().max()) < Z_TOL, (ref, est.mean(0), z)


def test_mixed_program_trains_with_svi():
    m, x = Mixed(), _mixed_data()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    svi = pyro.infer.SVI(m.model, m.guide, pyro.optim.Adam({"lr": 0.05}), loss=VIMCO(4))
    losses = [svi.step(x) for _ in range(60)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < sum(losses[:10])
    for n, p in m.named_parameters():
        assert not torch.equal(p.detach(), before[n]), f"{n} did not move"


def test_mixed_program_trains_with_fit():
    m, x = Mixed(), _mixed_data()
    h = pv.fit(m.model, VIMCO(4), x[:48], x[48:], guide=m.guide, epochs=3, batch_size=16, progress=False,
               tensorboard=False, val_objective=VIMCO(8))
    assert len(h.epochs) == 3
    for key in ("train_loss", "val_elbo"):
        column = h.column(key)
        assert len(column) == 3 and all(math.isfinite(v) for v in column), (key, column)


def test_kl_weighting_wrappers_compose_with_a_discrete_program():
    """β = 1 under BetaVAE is VIMCO itself (same draws); β ≠ 1 runs and gives finite gradients."""
    m, x = Mixed(), _mixed_data(8)
    out = []
    for obj in (VIMCO(3), pv.objectives.BetaVAE(VIMCO(3), 1.0), pv.objectives.BetaVAE(VIMCO(3), 0.5)):
        pyro.set_rng_seed(5)
        loss = obj.differentiable_loss(m.model, m.guide, x)
        out.append((loss.detach(), torch.autograd.grad(loss, list(m.parameters()))))
    torch.testing.assert_close(out[1][0], out[0][0])
    for a, b in zip(out[1][1], out[0][1]):
        torch.testing.assert_close(a, b)
    assert math.isfinite(float(out[2][0])) and float(out[2][0]) != float(out[0][0])
    assert all(torch.isfinite(g).all() for g in out[2][1])


def test_subsampling_scales_the_whole_estimator():
    """Under a subsampled data plate the loss and every gradient (score term included) are N/B
    times the full-batch ones on the same draws."""
    m, x = Mixed(), _mixed_data(8)
    out = []
    for num_data in (None, 80):
        pyro.set_rng_seed(3)
        loss = VIMCO(3).differentiable_loss(m.model, m.guide, x, num_data=num_data)
        out.append((loss.detach(), torch.autograd.grad(loss, list(m.parameters()))))
    (l1, g1), (l2, g2) = out
    torch.testing.assert_close(l2, 10 * l1)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, 10 * a)


# -- (5) bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [1, 0, -2, 2.5, True])
def test_too_few_particles_are_refused(K):
    with pytest.raises(ValueError, match="num_particles"):
        VIMCO(K)


def test_unknown_baseline_is_refused():
    with pytest.raises(ValueError, match=r"baseline must be one of \('vimco', 'none'\)"):
        VIMCO(4, baseline="mean")


def test_global_discrete_site_is_refused_by_name():
    def model_g(x):
        c = pyro.sample("cluster", dist.Categorical(logits=torch.zeros(3)))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(MU[c], 1.0), obs=x)

    def guide_g(x):
        logits = pyro.param("global_logits", torch.zeros(3, dtype=F64))
        pyro.sample("cluster", dist.Categorical(logits=logits))

    with pytest.raises(PlateError, match=r"guide site 'cluster' is not reparameterized .* outside the 'data' plate"):
        VIMCO(4).differentiable_loss(model_g, guide_g, X)


# program.py's enumeration path replays the conditioned label as observed in the model, which
# Pyro's model/guide check reports as a guide-only site under validation (not VIMCO's doing)
@pytest.mark.filterwarnings("ignore:Found non-auxiliary vars in guide but not model:UserWarning")
def test_enumerated_site_is_refused():
    def guide_e(x, logits):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match=r"'y'.* marked for enumeration.*ELBO / IWAE"):
        VIMCO(4).differentiable_loss(model, guide_e, X, LOGITS)


def test_changed_particle_count_is_refused():
    obj = VIMCO(4)
    obj.num_particles = 5
    with pytest.raises(ValueError, match="built with num_particles=4"):
        obj.differentiable_loss(model, guide, X, LOGITS)
