"""The fast paths give the traced path's numbers: IWAE-family losses and gradients, the
log-likelihood estimator, and the proposals the benchmark suite measures.

A plain :class:`pyro_vae.VAE` outside Pyro handlers skips tracing (``Objective._fast_loss``,
``pyro_vae.evaluation._fast``). Each test runs the same seed through the fast and the traced
path (``use_fast_path = False`` / ``fast_path=False``) and compares to 1e-5. Nothing here is
timed; the benchmarks (``python -m benchmarks.run``) measure speed.
"""

from __future__ import annotations

import sys
import warnings

import pyro
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

import pyro_vae as pv
from benchmarks.proposals import ProposedELBO, ProposedELBOOneDNN, proposed_train_step
from pyro_vae.evaluation import _fast
from pyro_vae.objectives import CIWAE, ELBO, IWAE, MIWAE, PIWAE, ImportanceObjective, RenyiBound
from pyro_vae.objectives import iwae as iwae_module
from pyro_vae.objectives.iwae import bernoulli_log_prob

X_DIM, LATENT, HIDDEN = 12, 3, (16,)
TOL = dict(rtol=1e-5, atol=1e-5)


def make_vae(encoder: str = "diag", decoder: str = "bernoulli", prior: str = "standard", seed: int = 0) -> pv.VAE:
    torch.manual_seed(seed)
    enc = {
        "diag": lambda: pv.encoders.DiagNormalEncoder(X_DIM, LATENT, hidden=HIDDEN),
        "lowrank": lambda: pv.encoders.LowRankNormalEncoder(X_DIM, LATENT, hidden=HIDDEN),
        "iaf": lambda: pv.encoders.IAFEncoder(X_DIM, LATENT, hidden=HIDDEN),
    }[encoder]()
    dec = {
        "bernoulli": lambda: pv.decoders.BernoulliDecoder(LATENT, X_DIM, hidden=HIDDEN),
        "gaussian": lambda: pv.decoders.GaussianDecoder(LATENT, X_DIM, hidden=HIDDEN),
        "logistic": lambda: pv.decoders.DiscretizedLogisticDecoder(LATENT, X_DIM, hidden=HIDDEN),
    }[decoder]()
    pri = {
        "standard": lambda: None,
        "diagonal": lambda: pv.priors.DiagonalGaussianPrior(LATENT),
        "vamp": lambda: pv.priors.VampPrior(pv.encoders.DiagNormalEncoder(X_DIM, LATENT, hidden=HIDDEN), 4),
    }[prior]()
    return pv.VAE(enc, dec, pri)


def make_x(decoder: str = "bernoulli", n: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if decoder == "bernoulli":
        return torch.bernoulli(torch.full((n, X_DIM), 0.3), generator=g)
    if decoder == "logistic":
        return torch.randint(0, 256, (n, X_DIM), generator=g).float()
    return torch.randn(n, X_DIM, generator=g)


def run(objective, vae, x, fast: bool, seed: int = 3, **kwargs):
    """(loss, grads, last_terms, last_log_weights) of one call on the fast or the traced path."""
    objective.use_fast_path = fast
    params = list(vae.parameters())
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(vae.model, vae.guide, x, **kwargs)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
    return loss.detach(), grads, objective.last_terms, getattr(objective, "last_log_weights", None)


def assert_same(a, b) -> None:
    loss_a, grads_a, terms_a, lw_a = a
    loss_b, grads_b, terms_b, lw_b = b
    torch.testing.assert_close(loss_a, loss_b, **TOL)
    for ga, gb in zip(grads_a, grads_b):
        # gradients are compared relative to their own scale (entries near 0 have rounding noise)
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5 * (1.0 + float(gb.abs().max())))
    for ta, tb in zip(terms_a, terms_b):
        torch.testing.assert_close(ta, tb, **TOL)
    if lw_b is not None:
        torch.testing.assert_close(lw_a, lw_b, **TOL)


OBJECTIVES = {
    "iwae": lambda: IWAE(5),
    "iwae-stl": lambda: IWAE(5, gradient="stl"),
    "iwae-dreg": lambda: IWAE(5, gradient="dreg"),
    "miwae-dreg": lambda: MIWAE(2, 3, gradient="dreg"),
    "piwae": lambda: PIWAE(2, 3),
    "piwae-dreg": lambda: PIWAE(2, 3, encoder_gradient="dreg"),
    "ciwae-stl": lambda: CIWAE(0.3, 4, gradient="stl"),
    "renyi": lambda: RenyiBound(0.5, 4),
}


# --------------------------------------------------------------------------------------------
# IWAE family: fast path == traced path
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian"])
def test_importance_objectives_fast_path_equals_traced_path(name, decoder):
    vae, x = make_vae(decoder=decoder), make_x(decoder)
    fast = run(OBJECTIVES[name](), vae, x, fast=True, num_data=50)
    traced = run(OBJECTIVES[name](), vae, x, fast=False, num_data=50)
    assert_same(fast, traced)


@pytest.mark.parametrize(
    "encoder,prior,gradient",
    [(e, p, g) for e, p in [("lowrank", "standard"), ("diag", "vamp"), ("diag", "diagonal")] for g in ("standard", "dreg")]
    + [("iaf", "standard", "standard")],  # DReG refuses flow guides: tested with the errors below
)
def test_iwae_fast_path_with_other_guides_and_priors(encoder, prior, gradient):
    vae, x = make_vae(encoder=encoder, prior=prior), make_x()
    assert_same(run(IWAE(4, gradient=gradient), vae, x, fast=True), run(IWAE(4, gradient=gradient), vae, x, fast=False))


def test_iwae_fast_path_in_float64_agrees_to_rounding():
    vae, x = make_vae().double(), make_x().double()
    a = run(IWAE(6, gradient="dreg"), vae, x, fast=True, num_data=20)
    b = run(IWAE(6, gradient="dreg"), vae, x, fast=False, num_data=20)
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-12)
    for ga, gb in zip(a[1], b[1]):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-10)


def test_iwae_fast_path_does_not_trace(monkeypatch):
    def no_tracing(*args, **kwargs):
        raise AssertionError("the fast path must not trace")

    vae, x = make_vae(), make_x()
    expected = run(IWAE(5, gradient="dreg"), vae, x, fast=False)
    monkeypatch.setattr(ImportanceObjective, "traces", no_tracing)
    assert_same(run(IWAE(5, gradient="dreg"), vae, x, fast=True), expected)


def test_dreg_exact_routing_for_decoders_that_are_not_row_wise():
    """A decoder module outside the row-wise list keeps the exact D − ⟨∂D/∂z, z⟩ routing."""

    class Scaled(nn.Module):  # row-wise in fact, but unknown to the fast path
        def forward(self, h):
            return 1.5 * h

    vae, x = make_vae(), make_x()
    vae.decoder.net.append(Scaled())
    assert not iwae_module._is_row_wise(vae.decoder)
    assert iwae_module._is_row_wise(make_vae(prior="vamp").prior) is False  # VampPrior: the encoder inside
    assert iwae_module._is_row_wise(make_vae().decoder) and iwae_module._is_row_wise(make_vae().prior)
    for name in ("iwae-dreg", "piwae", "miwae-dreg"):
        assert_same(run(OBJECTIVES[name](), vae, x, fast=True), run(OBJECTIVES[name](), vae, x, fast=False))


def test_routing_ratio_refuses_zero_model_weights_under_positive_sample_weights():
    c_model = torch.tensor([[0.5, 0.0], [0.5, 1.0]])
    ok = iwae_module._routing_ratio(c_model, c_model.square())
    torch.testing.assert_close(ok, torch.tensor([[0.5, 0.0], [0.5, 1.0]]))
    assert iwae_module._routing_ratio(c_model, torch.tensor([[0.5, 0.1], [0.5, 0.9]])) is None


def test_fast_path_is_skipped_inside_handlers_and_for_overridden_loss(monkeypatch):
    vae, x = make_vae(), make_x()
    called = []
    monkeypatch.setattr(ImportanceObjective, "_fast_loss", lambda self, *a: called.append(1) or None)
    with poutine.block():  # any handler
        IWAE(3).differentiable_loss(vae.model, vae.guide, x)
    assert not called
    monkeypatch.undo()

    class Custom(IWAE):
        def _loss(self, traces):
            loss, terms = super()._loss(traces)
            return 2 * loss, terms

    a = run(Custom(3), vae, x, fast=True)
    b = run(Custom(3), vae, x, fast=False)
    assert_same(a, b)  # the override is honoured: both paths trace


def test_fast_path_keeps_the_traced_errors():
    vae, x = make_vae(), make_x()
    for fast in (True, False):
        obj = IWAE(3)
        obj.use_fast_path = fast
        with pytest.raises(ValueError, match="num_data"):
            obj.differentiable_loss(vae.model, vae.guide, x, num_data=2)
        obj = MIWAE(2, 2)
        obj.use_fast_path = fast
        obj.num_particles = 5
        with pytest.raises(ValueError, match="num_outer"):
            obj.differentiable_loss(vae.model, vae.guide, x)
    flow = make_vae(encoder="iaf")
    for fast in (True, False):
        obj = IWAE(3, gradient="dreg")
        obj.use_fast_path = fast
        with pytest.raises(NotImplementedError, match="gradient='standard'"):
            obj.differentiable_loss(flow.model, flow.guide, x)
        # without gradients nothing is stopped, and both paths give the bound
    with torch.no_grad():
        a = [run_loss(IWAE(3, gradient="dreg"), flow, x, fast) for fast in (True, False)]
    torch.testing.assert_close(a[0], a[1], **TOL)


def run_loss(objective, vae, x, fast):
    objective.use_fast_path = fast
    pyro.set_rng_seed(5)
    return objective.differentiable_loss(vae.model, vae.guide, x)


def test_iwae_with_one_particle_still_equals_the_elbo_on_the_fast_path():
    vae, x = make_vae(decoder="gaussian").double(), make_x("gaussian").double()
    e = run(ELBO(analytic_kl=False), vae, x, fast=True)
    i = run(IWAE(1), vae, x, fast=True)
    torch.testing.assert_close(e[0], i[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(e[1], i[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# the fused Bernoulli log-density
# --------------------------------------------------------------------------------------------
def test_bernoulli_log_prob_value_and_gradients_match_the_distribution():
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(3, 5, 9, generator=g, dtype=torch.float64)).requires_grad_()
    x = torch.bernoulli(torch.full((5, 9), 0.4, dtype=torch.float64), generator=g).requires_grad_()
    w = torch.randn(3, 5, generator=g, dtype=torch.float64)
    ref = torch.distributions.Bernoulli(logits=logits, validate_args=False).log_prob(x).sum(-1)
    got = bernoulli_log_prob(logits, x)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad((ref * w).sum(), (logits, x))
    gb = torch.autograd.grad((got * w).sum(), (logits, x))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # no autograd node without gradients
        torch.testing.assert_close(bernoulli_log_prob(logits, x), ref.detach(), rtol=1e-12, atol=1e-12)
    # the compiled kernel's formula (evaluated eagerly here: compiling takes seconds)
    torch.testing.assert_close(_fast._bernoulli_exact(logits.detach(), x.detach()), ref.detach(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# log-likelihood: fast path == traced path
# --------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def fresh_fast_state(monkeypatch):
    """Every test starts with the oneDNN check and the compiled kernel forgotten, and with oneDNN
    used for any matrix size (the tests' matrices are tiny; the production threshold is 64 rows)."""
    monkeypatch.setattr(iwae_module, "ONEDNN_MIN_ROWS", 1)
    _fast.reset()
    yield
    _fast.reset()


def ll(vae, x, fast: bool, seed: int = 11, **kwargs) -> pv.LogLikelihood:
    pyro.set_rng_seed(seed)
    return pv.log_likelihood(vae.model, vae.guide, x, fast_path=fast, **kwargs)


def assert_same_ll(a: pv.LogLikelihood, b: pv.LogLikelihood) -> None:
    assert isinstance(a, pv.LogLikelihood) and a.num_samples == b.num_samples
    torch.testing.assert_close(a.per_datapoint, b.per_datapoint, **TOL)
    torch.testing.assert_close(a.ess, b.ess, rtol=1e-4, atol=1e-4)
    assert abs(a.mean - b.mean) <= 1e-5 * (1 + abs(b.mean))


@pytest.mark.parametrize(
    "encoder,decoder,prior",
    [
        ("diag", "bernoulli", "standard"),
        ("lowrank", "bernoulli", "vamp"),
        ("iaf", "bernoulli", "standard"),
        ("diag", "gaussian", "diagonal"),
        ("diag", "logistic", "standard"),
    ],
)
@pytest.mark.parametrize("budget", [1 << 30, 20_000])  # one chunk; many chunks and blocks with tails
def test_log_likelihood_fast_path_equals_traced_path(encoder, decoder, prior, budget, fresh_fast_state):
    vae, x = make_vae(encoder, decoder, prior), make_x(decoder, n=9)
    a = ll(vae, x, True, num_samples=37, memory_budget=budget)
    b = ll(vae, x, False, num_samples=37, memory_budget=budget)
    assert_same_ll(a, b)


def test_log_likelihood_fast_path_with_a_conv_decoder(fresh_fast_state):
    torch.manual_seed(0)
    vae = pv.VAE(
        pv.encoders.DiagNormalEncoder(784, 2, hidden=(8,)),
        pv.decoders.BernoulliDecoder(2, 784, network="conv"),
    )
    x = torch.bernoulli(torch.full((3, 784), 0.2), generator=torch.Generator().manual_seed(0))
    assert_same_ll(ll(vae, x, True, num_samples=5), ll(vae, x, False, num_samples=5))


def test_log_likelihood_fast_path_runs_several_decoder_blocks(monkeypatch, fresh_fast_state):
    vae, x = make_vae(), make_x(n=5)
    expected = ll(vae, x, False, num_samples=23)
    monkeypatch.setattr(_fast, "BLOCK_BYTES", 1)  # one row block per sample: 23 blocks per chunk
    assert _fast.block_rows(X_DIM, 16, 1 << 30, torch.device("cpu")) == 1
    assert_same_ll(ll(vae, x, True, num_samples=23), expected)


def test_log_likelihood_fast_path_does_not_trace(monkeypatch, fresh_fast_state):
    module = sys.modules["pyro_vae.evaluation.log_likelihood"]  # the package exports a function of that name
    vae, x = make_vae(), make_x()
    expected = ll(vae, x, False, num_samples=10)
    monkeypatch.setattr(module, "particle_traces", lambda *a, **k: (_ for _ in ()).throw(AssertionError("traced")))
    assert_same_ll(ll(vae, x, True, num_samples=10), expected)


def test_log_likelihood_traces_when_the_fast_path_cannot_reproduce_the_draws(monkeypatch, fresh_fast_state):
    calls = []
    monkeypatch.setattr(_fast, "log_weights_chunk", lambda *a, **k: calls.append(1))
    vae, x = make_vae(), make_x()
    vae.decoder.net.insert(1, nn.Dropout(0.1))  # draws random numbers in training mode
    vae.train()
    ll(vae, x, True, num_samples=4)
    pv.log_likelihood(vae.model, vae.guide, x, num_samples=4, num_data=x.shape[0])  # extra model arguments
    with poutine.block():  # inside a handler
        pv.log_likelihood(vae.model, vae.guide, x, num_samples=4)
    assert not calls
    vae.eval()
    with pytest.raises(AttributeError):  # now the (patched, None-returning) fast path runs
        ll(vae, x, True, num_samples=4)
    assert calls


def test_fast_path_decoder_blocks_respect_the_memory_budget():
    for budget in (1e4, 1e6, 2**31):
        rows = _fast.block_rows(784, 400, budget, torch.device("cpu"))
        assert rows >= 1
        assert rows == 1 or rows * 4 * (784 + 400) * 2 <= max(budget / 4, 1)
        assert rows * 4 * (784 + 400) * 2 <= _fast.BLOCK_BYTES


# --------------------------------------------------------------------------------------------
# fallbacks: oneDNN matmul and torch.compile
# --------------------------------------------------------------------------------------------
def test_onednn_is_used_for_large_matrices_only(monkeypatch, fresh_fast_state):
    monkeypatch.setattr(iwae_module, "ONEDNN_MIN_ROWS", 64)
    layer = nn.Linear(7, 5)
    assert not iwae_module._onednn_usable(torch.randn(63, 7), layer)
    assert iwae_module._onednn_usable(torch.randn(64, 7), layer) == (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def test_onednn_linear_matches_torch_linear(fresh_fast_state):
    layer = nn.Linear(7, 5)
    h = torch.randn(11, 7)
    with torch.no_grad():
        torch.testing.assert_close(iwae_module.fast_linear(h, layer), nn.functional.linear(h, layer.weight, layer.bias), **TOL)
        layer64 = nn.Linear(7, 5).double()  # float64: torch's matmul
        torch.testing.assert_close(iwae_module.fast_linear(h.double(), layer64), layer64(h.double()))
    # with gradients: the oneDNN backward gives F.linear's gradients
    h.requires_grad_(True)
    w = torch.randn(11, 5)
    ga = torch.autograd.grad((iwae_module.fast_linear(h, layer) * w).sum(), (h, layer.weight, layer.bias))
    gb = torch.autograd.grad((nn.functional.linear(h, layer.weight, layer.bias) * w).sum(), (h, layer.weight, layer.bias))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, **TOL)


def test_onednn_can_be_switched_off_by_the_environment(monkeypatch, fresh_fast_state):
    monkeypatch.setenv("PYRO_VAE_ONEDNN", "0")
    calls = []
    monkeypatch.setattr(iwae_module, "_OneDNNLinear", None)  # would fail if used
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1), raising=False)
    vae, x = make_vae(), make_x()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same_ll(ll(vae, x, True, num_samples=8), ll(vae, x, False, num_samples=8))
        assert_same(run(IWAE(4), vae, x, fast=True), run(IWAE(4), vae, x, fast=False))
    assert not calls and iwae_module._onednn["ok"] is False


def test_onednn_failure_warns_once_and_falls_back(monkeypatch, fresh_fast_state):
    vae, x = make_vae(), make_x()
    expected = ll(vae, x, False, num_samples=16)
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        pytest.skip("this torch has no oneDNN linear op")

    def broken(*args, **kwargs):
        raise RuntimeError("simulated oneDNN failure")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken)
    with pytest.warns(RuntimeWarning, match="oneDNN matmul unavailable") as record:
        a = ll(vae, x, True, num_samples=16)
        b = ll(vae, x, True, num_samples=16)
    assert len([w for w in record if "oneDNN" in str(w.message)]) == 1
    assert_same_ll(a, expected)
    assert_same_ll(b, expected)


def test_onednn_wrong_results_are_caught_on_first_use(monkeypatch, fresh_fast_state):
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        pytest.skip("this torch has no oneDNN linear op")
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: real(*a) + 1.0)
    vae, x = make_vae(), make_x()
    expected = ll(vae, x, False, num_samples=8)
    with pytest.warns(RuntimeWarning, match="differs"):
        assert_same_ll(ll(vae, x, True, num_samples=8), expected)


@pytest.mark.parametrize("where", ["torch.compile", "first call"])
def test_compile_failure_warns_once_and_falls_back_to_eager(where, monkeypatch, fresh_fast_state):
    vae, x = make_vae(), make_x()
    expected = ll(vae, x, False, num_samples=12)

    def failing_kernel(*args, **kwargs):
        raise RuntimeError("simulated inductor failure")

    if where == "torch.compile":
        monkeypatch.setattr(torch, "compile", lambda *a, **k: failing_kernel())
    else:
        monkeypatch.setattr(torch, "compile", lambda fn, **k: failing_kernel)
    with pytest.warns(RuntimeWarning, match="torch.compile failed") as record:
        a = ll(vae, x, True, num_samples=12, compile=True)
        b = ll(vae, x, True, num_samples=12, compile=True)
    assert len([w for w in record if "torch.compile" in str(w.message)]) == 1
    assert_same_ll(a, expected)
    assert_same_ll(b, expected)


def test_compiled_kernel_is_used_for_full_blocks_when_compile_works(monkeypatch, fresh_fast_state):
    """The compile plumbing with a stand-in compiler (the real one takes seconds)."""
    used = []

    def fake_compile(fn, **kwargs):
        assert kwargs.get("dynamic") is False
        return lambda *a: used.append(a[0].shape) or fn(*a)

    monkeypatch.setattr(torch, "compile", fake_compile)
    vae, x = make_vae(), make_x()
    expected = ll(vae, x, False, num_samples=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same_ll(ll(vae, x, True, num_samples=12, compile=True), expected)
    assert used


# --------------------------------------------------------------------------------------------
# the measured proposals (benchmarks/proposals.py) compute what the current code computes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("proposal", [ProposedELBO, ProposedELBOOneDNN])
@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian"])
def test_proposed_elbo_equals_the_current_and_the_traced_elbo(proposal, num_particles, decoder):
    vae, x = make_vae(decoder=decoder), make_x(decoder)
    a = run(proposal(num_particles), vae, x, fast=True, num_data=40)
    b = run(ELBO(num_particles), vae, x, fast=True, num_data=40)
    c = run(ELBO(num_particles), vae, x, fast=False, num_data=40)
    assert_same(a, b)
    assert_same(a, c)


def test_proposed_elbo_falls_back_for_other_components_and_bad_parameters():
    vae, x = make_vae(prior="diagonal"), make_x()
    assert_same(run(ProposedELBO(), vae, x, fast=True), run(ELBO(), vae, x, fast=False))
    vae = make_vae()
    with torch.no_grad():
        vae.encoder.net[0].weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="constraint"):
        ProposedELBO().differentiable_loss(vae.model, vae.guide, x)


def test_proposed_train_step_equals_train_step_but_for_the_grad_norm():
    """train_step (adopted from the proposal) computes the norm only when asked or clipping."""
    from functools import partial

    from pyro_vae.train.fit import train_step

    infos = []
    for step in (partial(train_step, grad_norm=True), proposed_train_step):
        vae, x = make_vae(), make_x()
        obj = ELBO()
        opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
        pyro.set_rng_seed(0)
        loss_fn = lambda *a, **k: obj.differentiable_loss(vae.model, vae.guide, *a, **k)  # noqa: E731
        info = step(loss_fn, list(vae.parameters()), opt, (x,), {"num_data": 50}, 50, None, lambda: obj.last_terms)
        infos.append((info, [p.detach().clone() for p in vae.parameters()]))
    (a, pa), (b, pb) = infos
    assert a.loss == b.loss and a.reconstruction == b.reconstruction and a.kl == b.kl
    assert a.grad_norm > 0 and b.grad_norm != b.grad_norm  # nan: not computed
    for u, v in zip(pa, pb):
        assert torch.equal(u, v)
