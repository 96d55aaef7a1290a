"""The two producers of the Particles record agree, and the kernels inside the components
give the unfused numbers.

A plain :class:`pyro_vae.VAE` outside Pyro handlers is read from its components
(:func:`pyro_vae.program.from_vae`); any other program is traced
(:func:`pyro_vae.program.from_traces`). Each test runs the same seed through both
(``use_fast_path = False`` / ``fast_path=False``) and compares to 1e-5 (float32) or rounding
(float64). ``tests/test_contracts.py`` does the same for every objective × component. Nothing
here is timed; the benchmarks (``python -m benchmarks.run``) measure speed.
"""

from __future__ import annotations

import importlib
import sys
import warnings

import pyro
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

import pyro_vae as pv
from pyro_vae import _kernels, program
from pyro_vae._kernels import bernoulli_log_prob
from pyro_vae.objectives import CIWAE, ELBO, IWAE, MIWAE, PIWAE, ImportanceObjective, RenyiBound
from pyro_vae.objectives import iwae as iwae_module

LL_MODULE = importlib.import_module("pyro_vae.evaluation.log_likelihood")  # the package exports a function of that name

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


def test_dreg_exact_routing_for_decoders_that_are_not_declared_row_wise():
    """A decoder module not declared row-wise keeps the exact D − ⟨∂D/∂z, z⟩ routing."""

    class Scaled(nn.Module):  # row-wise in fact, but not declared
        def forward(self, h):
            return 1.5 * h

    vae, x = make_vae(), make_x()
    vae.decoder.net.append(Scaled())
    assert not program.rows_independent(vae.decoder)
    assert program.rows_independent(make_vae().decoder)
    for name in ("iwae-dreg", "piwae", "miwae-dreg"):
        assert_same(run(OBJECTIVES[name](), vae, x, fast=True), run(OBJECTIVES[name](), vae, x, fast=False))


class _MixingDecoder(pv.decoders.BernoulliDecoder):
    """Mixes the rows of z (each row's logits depend on the batch mean): overrides ``forward``
    without declaring ``row_wise``, so routing must not use the per-row hook."""

    def forward(self, z):
        return super().forward(z + z.mean(dim=-2, keepdim=True))


class _DeclaredDecoder(pv.decoders.BernoulliDecoder):
    row_wise = True

    def forward(self, z):
        return super().forward(2.0 * z)


def test_row_wise_is_a_declaration_about_forward_that_overrides_must_repeat():
    assert not program.rows_independent(_MixingDecoder(LATENT, X_DIM, hidden=HIDDEN))
    assert program.rows_independent(_DeclaredDecoder(LATENT, X_DIM, hidden=HIDDEN))


def test_dreg_with_a_row_mixing_decoder_equals_the_traced_exact_routing_in_float64():
    """The failing case of the old class-name whitelist: a library-module decoder subclass that
    mixes rows. Its DReG gradients on the component path must equal the traced exact routing."""
    torch.manual_seed(0)
    vae = pv.VAE(pv.encoders.DiagNormalEncoder(X_DIM, LATENT, hidden=HIDDEN),
                 _MixingDecoder(LATENT, X_DIM, hidden=HIDDEN)).double()
    x = make_x().double()
    for make in (lambda: IWAE(5, gradient="dreg"), lambda: PIWAE(2, 3, encoder_gradient="dreg")):
        a, b = run(make(), vae, x, fast=True), run(make(), vae, x, fast=False)
        torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-12)
        for ga, gb in zip(a[1], b[1]):
            torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-9)


def test_routing_ratio_refuses_zero_model_weights_under_positive_sample_weights():
    c_model = torch.tensor([[0.5, 0.0], [0.5, 1.0]])
    ok = iwae_module._routing_ratio(c_model, c_model.square())
    torch.testing.assert_close(ok, torch.tensor([[0.5, 0.0], [0.5, 1.0]]))
    assert iwae_module._routing_ratio(c_model, torch.tensor([[0.5, 0.1], [0.5, 0.9]])) is None


def test_component_path_is_skipped_inside_handlers_and_overrides_keep_it(monkeypatch):
    vae, x = make_vae(), make_x()
    called = []
    real = program.from_vae
    monkeypatch.setattr(sys.modules["pyro_vae.objectives.base"], "from_vae",
                        lambda *a, **k: called.append(1) or real(*a, **k))
    with poutine.block():  # any handler: traced
        IWAE(3).differentiable_loss(vae.model, vae.guide, x)
    assert not called

    class Custom(IWAE):  # an override of _loss keeps the component path: the bound is written once
        def _loss(self, particles):
            loss, terms = super()._loss(particles)
            return 2 * loss, terms

    a = run(Custom(3), vae, x, fast=True)
    assert called
    b = run(Custom(3), vae, x, fast=False)
    assert_same(a, b)
    torch.testing.assert_close(a[0], 2 * run(IWAE(3), vae, x, fast=True)[0], **TOL)


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
    torch.testing.assert_close(_kernels._bernoulli_exact(logits.detach(), x.detach()), ref.detach(), rtol=1e-12, atol=1e-12)
    # the decoder's distribution uses the kernel, and behaves as Bernoulli(logits).to_event(1) otherwise
    d = pv.distributions.BernoulliLogits.from_logits(logits.detach())
    torch.testing.assert_close(d.log_prob(x.detach()), ref.detach(), rtol=1e-12, atol=1e-12)
    assert d.event_shape == (9,) and d.batch_shape == (3, 5) and d.expand((2, 3, 5)).log_prob(x.detach()).shape == (2, 3, 5)
    assert isinstance(pv.decoders.BernoulliDecoder(2, 9)(torch.zeros(4, 2)), pv.distributions.BernoulliLogits)


# --------------------------------------------------------------------------------------------
# log-likelihood: fast path == traced path
# --------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def fresh_fast_state(monkeypatch):
    """Every test starts with the oneDNN check and the compiled kernel forgotten, and with oneDNN
    used for any matrix size (the tests' matrices are tiny; the production threshold is 64 rows)."""
    monkeypatch.setattr(_kernels.settings, "onednn_min_rows", 1)
    _kernels.reset()
    yield
    _kernels.reset()


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
    monkeypatch.setattr(_kernels.settings, "block_bytes", 1)  # one row block per sample: 23 blocks per chunk
    assert LL_MODULE.block_rows(X_DIM, 16, 1 << 30, torch.device("cpu")) == 1
    assert_same_ll(ll(vae, x, True, num_samples=23), expected)


def test_log_likelihood_fast_path_does_not_trace(monkeypatch, fresh_fast_state):
    vae, x = make_vae(), make_x()
    expected = ll(vae, x, False, num_samples=10)
    monkeypatch.setattr(LL_MODULE, "traced_log_weights", lambda *a, **k: (_ for _ in ()).throw(AssertionError("traced")))
    assert_same_ll(ll(vae, x, True, num_samples=10), expected)


def test_log_likelihood_traces_when_the_fast_path_cannot_reproduce_the_draws(monkeypatch, fresh_fast_state):
    calls = []
    monkeypatch.setattr(LL_MODULE, "from_vae", lambda *a, **k: calls.append(1))
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
        rows = LL_MODULE.block_rows(784, 400, budget, torch.device("cpu"))
        assert rows >= 1
        assert rows == 1 or rows * 4 * (784 + 400) * 2 <= max(budget / 4, 1)
        assert rows * 4 * (784 + 400) * 2 <= _kernels.settings.block_bytes


# --------------------------------------------------------------------------------------------
# fallbacks: oneDNN matmul and torch.compile
# --------------------------------------------------------------------------------------------
def test_onednn_is_used_for_large_matrices_only(monkeypatch, fresh_fast_state):
    monkeypatch.setattr(_kernels.settings, "onednn_min_rows", 64)
    w = torch.randn(5, 7)
    assert not _kernels._onednn_applies(torch.randn(63, 7), w)
    assert _kernels._onednn_applies(torch.randn(64, 7), w) == (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )
    assert not _kernels._onednn_applies(torch.randn(64, 7).double(), w.double())


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_onednn_linear_matches_torch_linear(mode, monkeypatch, fresh_fast_state):
    monkeypatch.setattr(_kernels.settings, "onednn", mode)
    layer = pv.nn.Linear(7, 5)
    h = torch.randn(11, 7)
    with torch.no_grad():
        torch.testing.assert_close(layer(h), nn.functional.linear(h, layer.weight, layer.bias), **TOL)
        layer64 = pv.nn.Linear(7, 5).double()  # float64: torch's matmul
        torch.testing.assert_close(layer64(h.double()), nn.functional.linear(h.double(), layer64.weight, layer64.bias))
    # with gradients: the oneDNN backward gives F.linear's gradients
    h.requires_grad_(True)
    w = torch.randn(11, 5)
    ga = torch.autograd.grad((layer(h) * w).sum(), (h, layer.weight, layer.bias))
    gb = torch.autograd.grad((nn.functional.linear(h, layer.weight, layer.bias) * w).sum(), (h, layer.weight, layer.bias))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, **TOL)
    if mode == "auto" and _kernels._state["onednn_ok"]:  # the first use of each shape was measured
        report = _kernels.report()
        assert report and all(r["chosen"] in ("torch", "onednn") and r["torch"] > 0 and r["onednn"] > 0
                              for r in report.values())


def test_auto_mode_keeps_the_measured_faster_kernel(monkeypatch, fresh_fast_state):
    """The choice follows the measurement: a kernel made slow is not chosen."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        pytest.skip("this torch has no oneDNN linear op")
    import time as _time

    real = torch.ops.mkldnn._linear_pointwise

    def slow(*a):
        _time.sleep(0.002)
        return real(*a)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", slow)
    layer = pv.nn.Linear(7, 5)
    with torch.no_grad():
        layer(torch.randn(16, 7))
    assert list(_kernels.report().values())[0]["chosen"] == "torch"


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="auto"):
        _kernels.settings.onednn = "fast"
    with pytest.raises(ValueError, match="block_bytes"):
        _kernels.settings.block_bytes = 0
    assert pv.settings is _kernels.settings


def test_onednn_can_be_switched_off(monkeypatch, fresh_fast_state):
    monkeypatch.setattr(_kernels.settings, "onednn", "off")
    calls = []
    monkeypatch.setattr(_kernels, "_OneDNNLinear", None)  # would fail if used
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1), raising=False)
    vae, x = make_vae(), make_x()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same_ll(ll(vae, x, True, num_samples=8), ll(vae, x, False, num_samples=8))
        assert_same(run(IWAE(4), vae, x, fast=True), run(IWAE(4), vae, x, fast=False))
    assert not calls


def test_environment_variable_sets_onednn_off(monkeypatch):
    monkeypatch.setenv("PYRO_VAE_ONEDNN", "0")
    assert _kernels.Settings().onednn == "off"
    monkeypatch.setenv("PYRO_VAE_ONEDNN", "1")
    assert _kernels.Settings().onednn == "auto"


def test_onednn_failure_warns_once_and_falls_back(monkeypatch, fresh_fast_state):
    vae, x = make_vae(), make_x()
    expected = ll(vae, x, False, num_samples=16)
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        pytest.skip("this torch has no oneDNN linear op")

    def broken(*args, **kwargs):
        raise RuntimeError("simulated oneDNN failure")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken)
    _kernels.reset()
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
    vae, x = make_vae(), make_x()
    monkeypatch.setattr(_kernels.settings, "onednn", "off")
    expected = ll(vae, x, False, num_samples=8)
    monkeypatch.setattr(_kernels.settings, "onednn", "auto")
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: real(*a) + 1.0)
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


class _OverridingVAE(pv.VAE):
    """Overrides the program: its objectives must trace it (no component_program declaration)."""

    def model(self, x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.decoder(2.0 * z), obs=x)


class _DeclaredVAE(pv.VAE):
    component_program = True  # a subclass that changes nothing about the program may say so

    def encode(self, x):
        return super().encode(x)


def test_a_vae_subclass_that_overrides_the_program_is_traced_and_a_declared_one_is_not(monkeypatch):
    assert pv.VAE.component_program and not _OverridingVAE.component_program and _DeclaredVAE.component_program
    torch.manual_seed(0)
    parts = (pv.encoders.DiagNormalEncoder(X_DIM, LATENT, hidden=HIDDEN), pv.decoders.BernoulliDecoder(LATENT, X_DIM, hidden=HIDDEN))
    over, declared = _OverridingVAE(*parts), _DeclaredVAE(*parts)
    x = make_x()
    assert program.plain_vae(over.model, over.guide) is None
    assert program.plain_vae(declared.model, declared.guide) is declared
    # the override is honoured: the loss is that of z -> 2z, equal on both "paths" (both trace)
    assert_same(run(IWAE(3), over, x, fast=True), run(IWAE(3), over, x, fast=False))
    assert not torch.allclose(run(IWAE(3), over, x, fast=True)[0], run(IWAE(3), declared, x, fast=True)[0])


def test_nan_encoder_output_is_refused_by_name_under_validation_on_both_paths():
    vae, x = make_vae(), make_x()
    with torch.no_grad():
        vae.encoder.net[0].weight.fill_(float("nan"))
    for fast in (True, False):
        obj = ELBO()
        obj.use_fast_path = fast
        with pytest.raises(ValueError, match="DiagNormalEncoder returned NaN parameters.*constraint"):
            obj.differentiable_loss(vae.model, vae.guide, x)
