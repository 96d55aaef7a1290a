"""The hand-written baselines of the benchmark section ``objectives`` compute the library's bounds.

``benchmarks/hand_objectives.py`` holds a plain-PyTorch version of every objective the section
times (:data:`benchmarks.hand_objectives.CASES`). With the same seed, each must return the loss of
the library's ``objective.differentiable_loss(vae.model, vae.guide, x, num_data=N)`` and the same
gradient for every parameter — otherwise the benchmark would time two different things. The
comparisons run in float64 on a small network (tight tolerances) and in float32 on the benchmark's
784-400-50 network. Negative controls check that the comparison can fail: a neighbouring bound
(another K, β, α, step, layout or gradient estimator) does not pass. Nothing here is timed.
"""

from __future__ import annotations

import pytest
import torch

import pyro_vae as pv
from benchmarks import hand_objectives as ho
from benchmarks import models
from pyro_vae.objectives import CIWAE, ELBO, IWAE, MIWAE, PIWAE, BetaVAE, FreeBits, KLWarmup, RenyiBound

N = 100  # data set size: the losses are scaled by N / B
TINY = models.Net("tiny", (16,), "softplus")
RTOL64 = 1e-8
RTOL32 = 1e-4
CASES = {c.label: c for c in ho.CASES}


def tiny(dtype: torch.dtype = torch.float64) -> tuple[pv.VAE, models.HandVAE]:
    """A 784-16-50 VAE (the hand-written model's fixed sizes) and its hand-written copy."""
    torch.manual_seed(0)
    vae = pv.VAE(
        pv.encoders.DiagNormalEncoder(models.X_DIM, models.LATENT, hidden=TINY.hidden, activation=TINY.activation),
        pv.decoders.BernoulliDecoder(models.LATENT, models.X_DIM, hidden=TINY.hidden, activation=TINY.activation),
        pv.priors.StandardNormalPrior(models.LATENT),
    ).to(dtype)
    return vae, models.HandVAE.like(vae, TINY).to(dtype)


def batch(B: int = 6, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((B, models.X_DIM), 0.3), generator=g).to(dtype)


def lib_run(objective, vae: pv.VAE, x: torch.Tensor, seed: int):
    """(loss, gradients) of the library objective, named like the hand-written model's parameters."""
    torch.manual_seed(seed)
    loss = objective.differentiable_loss(vae.model, vae.guide, x, num_data=N)
    names, params = zip(*vae.named_parameters())
    grads = torch.autograd.grad(loss, params)
    return loss.detach(), {n.replace(".net.", "."): g for n, g in zip(names, grads)}


def hand_run(loss_fn, hand: models.HandVAE, x: torch.Tensor, seed: int):
    torch.manual_seed(seed)
    loss = loss_fn(x)
    names, params = zip(*hand.named_parameters())
    return loss.detach(), dict(zip(names, torch.autograd.grad(loss, params)))


def assert_same(a, b, rtol: float, only: str | None = None) -> None:
    """Same loss (unless ``only``) and gradients (of the parameters whose name starts with ``only``),
    each gradient relative to its own scale."""
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert grads_a.keys() == grads_b.keys()
    if only is None:
        torch.testing.assert_close(loss_a, loss_b, rtol=rtol, atol=0.0)
    for name in grads_a:
        if only is None or name.startswith(only):
            scale = float(grads_b[name].abs().max())
            torch.testing.assert_close(grads_a[name], grads_b[name], rtol=rtol, atol=rtol * scale, msg=name)


def assert_nontrivial(run) -> None:
    """Every parameter gets a nonzero gradient (so matching gradients means something)."""
    for name, g in run[1].items():
        assert float(g.abs().max()) > 0.0, f"gradient of {name} is zero"


def setup(case: ho.Case, hand: models.HandVAE, step: int = 2500):
    """The library objective and the hand-written loss of ``case``; warm-ups start mid-ramp (β > 0)."""
    objective, loss_fn = case.library(), case.hand(hand, N)
    if isinstance(objective, KLWarmup):
        objective.set_step(step)
        loss_fn.step = step
    return objective, loss_fn


def test_cases_cover_every_objective():
    built = {type(c.library()) for c in ho.CASES}
    assert built == {IWAE, MIWAE, PIWAE, CIWAE, RenyiBound, BetaVAE, KLWarmup, FreeBits}
    assert any(c.quick for c in ho.CASES) and not all(c.quick for c in ho.CASES)


@pytest.mark.parametrize("label", list(CASES))
def test_hand_written_equals_library(label):
    vae, hand = tiny()
    x = batch()
    objective, loss_fn = setup(CASES[label], hand)
    for seed in (1, 2):  # two steps: stateful objectives (warm-up) advance in step
        lib, hw = lib_run(objective, vae, x, seed), hand_run(loss_fn, hand, x, seed)
        assert_nontrivial(hw)
        assert_same(hw, lib, RTOL64)
    if isinstance(objective, KLWarmup):
        assert objective.step == loss_fn.step == 2502


@pytest.mark.parametrize("label", list(CASES))
def test_hand_written_equals_library_benchmark_network(label):
    """float32, the section's 784-400-50 softplus network (oneDNN matmuls in the library's IWAE path)."""
    net = models.NETS["softplus"]
    vae = models.library_vae(net)
    hand = models.HandVAE.like(vae, net)
    x = batch(4, torch.float32)
    objective, loss_fn = setup(CASES[label], hand)
    lib, hw = lib_run(objective, vae, x, 5), hand_run(loss_fn, hand, x, 5)
    assert_nontrivial(hw)
    assert_same(hw, lib, RTOL32)


# -- the comparison can fail --------------------------------------------------------------------------
NEIGHBOURS = [  # (case, a different library objective, what must differ)
    ('IWAE(50, gradient="stl")', lambda: IWAE(50), "gradients"),  # same value, standard gradient
    ('IWAE(50, gradient="stl")', lambda: IWAE(50, gradient="dreg"), "gradients"),
    ('IWAE(50, gradient="stl")', lambda: IWAE(49, gradient="stl"), "loss"),
    ("MIWAE(num_outer=5, num_inner=10)", lambda: IWAE(50), "loss"),
    ("MIWAE(num_outer=5, num_inner=10)", lambda: MIWAE(num_outer=10, num_inner=5), "loss"),
    ("PIWAE(num_outer=5, num_inner=10)", lambda: IWAE(50), "gradients"),  # same value, encoder differs
    ("PIWAE(num_outer=5, num_inner=10)", lambda: MIWAE(num_outer=5, num_inner=10), "loss"),
    ("PIWAE(num_outer=5, num_inner=10)", lambda: PIWAE(num_outer=10, num_inner=5), "gradients"),
    ("CIWAE(beta=0.5, num_particles=50)", lambda: CIWAE(beta=0.4, num_particles=50), "loss"),
    ("RenyiBound(alpha=0.5, num_particles=50)", lambda: RenyiBound(alpha=0.4, num_particles=50), "loss"),
    ("BetaVAE(ELBO(), beta=4)", lambda: BetaVAE(ELBO(), beta=3.9), "loss"),
    ("BetaVAE(ELBO(), beta=4)", lambda: ELBO(), "loss"),
    (f"KLWarmup(ELBO(), warmup_steps={ho.WARMUP_STEPS})", lambda: KLWarmup(ELBO(), warmup_steps=ho.WARMUP_STEPS // 2), "loss"),
    (f"FreeBits(ELBO(), threshold={ho.FREE_BITS})", lambda: ELBO(), "loss"),
    (f"FreeBits(ELBO(), threshold={ho.FREE_BITS})", lambda: FreeBits(ELBO(), threshold=ho.FREE_BITS, groups="site"), "loss"),
]


@pytest.mark.parametrize("label, other, differs", NEIGHBOURS, ids=[f"{n[0]}-vs-{i}" for i, n in enumerate(NEIGHBOURS)])
def test_a_different_bound_does_not_pass(label, other, differs):
    vae, hand = tiny()
    x = batch()
    _, loss_fn = setup(CASES[label], hand)
    objective = other()
    if isinstance(objective, KLWarmup):
        objective.set_step(2500)
    hw, lib = hand_run(loss_fn, hand, x, 1), lib_run(objective, vae, x, 1)
    if differs == "gradients":  # the value is the same bound: only the estimator differs
        torch.testing.assert_close(hw[0], lib[0], rtol=RTOL64, atol=0.0)
    with pytest.raises(AssertionError):
        assert_same(hw, lib, RTOL32)  # not even at the float32 tolerance


def test_miwae_layout_is_outer_major():
    """Grouping the M·K particles inner-major (particle k of every group adjacent) is a different bound."""
    import math

    vae, hand = tiny()
    x = batch()
    M, K = 5, 10

    def inner_major(x):
        _, lw = hand._log_w(x, M * K, stop_q=False)
        g = lw.view(K, M, -1)  # groups along dim 1: the wrong layout
        return -(N / x.shape[0]) * (torch.logsumexp(g, 0) - math.log(K)).mean(0).sum()

    lib = lib_run(MIWAE(num_outer=M, num_inner=K), vae, x, 1)
    assert_same(hand_run(lambda x: ho.miwae_loss(hand, x, M, K, N), hand, x, 1), lib, RTOL64)
    with pytest.raises(AssertionError):
        assert_same(hand_run(inner_major, hand, x, 1), lib, RTOL32)


def test_piwae_splits_iwae_and_miwae_gradients():
    """PIWAE's decoder gradient is IWAE-(M·K)'s, its encoder gradient MIWAE(M, K)'s (and they differ)."""
    vae, hand = tiny()
    x = batch()
    piwae = hand_run(lambda x: ho.piwae_loss(hand, x, 5, 10, N), hand, x, 1)
    iwae = hand_run(lambda x: hand.iwae_loss(x, 50, N), hand, x, 1)
    miwae = hand_run(lambda x: ho.miwae_loss(hand, x, 5, 10, N), hand, x, 1)
    assert_same(piwae, iwae, RTOL64, only="decoder")
    assert_same(piwae, miwae, RTOL64, only="encoder")
    with pytest.raises(AssertionError):
        assert_same(piwae, iwae, RTOL32, only="encoder")
    with pytest.raises(AssertionError):
        assert_same(piwae, miwae, RTOL32, only="decoder")
    # and the library's IWAE / MIWAE agree with the hand-written ones used here
    assert_same(iwae, lib_run(IWAE(50), vae, x, 1), RTOL64)


@pytest.mark.parametrize("quantile", [0.25, 0.5, 0.75])
def test_free_bits_with_some_dimensions_clamped(quantile):
    """A threshold between the dimensions' minibatch KLs: some are clamped, some are not."""
    vae, hand = tiny()
    x = batch()
    with torch.no_grad():
        kl_bar = ho._elbo_terms(hand, x)[1].mean(0)
    lam = float(kl_bar.quantile(quantile))
    assert 0 < int((kl_bar < lam).sum()) < kl_bar.numel()
    hw = hand_run(lambda x: ho.free_bits_loss(hand, x, lam, N), hand, x, 1)
    assert_nontrivial(hw)
    assert_same(hw, lib_run(FreeBits(ELBO(), threshold=lam), vae, x, 1), RTOL64)
    with pytest.raises(AssertionError):
        assert_same(hw, lib_run(ELBO(), vae, x, 1), RTOL32)


def test_kl_warmup_starts_at_zero():
    """At step 0 both use β = 0: the encoder gets the reconstruction gradient only."""
    vae, hand = tiny()
    x = batch()
    case = CASES[f"KLWarmup(ELBO(), warmup_steps={ho.WARMUP_STEPS})"]
    objective, loss_fn = setup(case, hand, step=0)
    assert_same(hand_run(loss_fn, hand, x, 1), lib_run(objective, vae, x, 1), RTOL64)
    assert_same(hand_run(lambda x: ho.beta_elbo_loss(hand, x, 0.0, N), hand, x, 1),
                lib_run(BetaVAE(ELBO(), beta=0.0), vae, x, 1), RTOL64)


# -- the fast path of the KL-weighting wrappers (objectives/weighting.py) --------------------------------
WRAPPERS = [
    lambda: BetaVAE(ELBO(), beta=4.0),
    lambda: BetaVAE(ELBO(num_particles=3), beta=0.5),
    lambda: KLWarmup(ELBO(), warmup_steps=10),
    lambda: FreeBits(ELBO(), threshold=0.25),
    lambda: FreeBits(ELBO(), threshold=20.0, groups="site"),
    lambda: FreeBits(ELBO(num_particles=2), threshold=0.1),
]


def _no_tracing(objective):
    def fail(*a, **k):
        raise AssertionError("the fast path traced")

    objective.traces = fail
    return objective


def _traced(objective):
    objective.use_fast_path = False
    return objective


@pytest.mark.parametrize("make", WRAPPERS)
def test_wrapper_fast_path_equals_the_traced_wrapper(make):
    vae, hand = tiny()
    x = batch()
    cur, new = _traced(make()), _no_tracing(make())
    for seed in (1, 2, 3):
        a, b = lib_run(new, vae, x, seed), lib_run(cur, vae, x, seed)
        assert_nontrivial(a)
        assert_same(a, b, RTOL64)
        for ta, tb in zip(new.last_terms, cur.last_terms):
            torch.testing.assert_close(ta, tb, rtol=RTOL64, atol=1e-12)
        assert getattr(new, "last_beta", None) == getattr(cur, "last_beta", None)
        assert getattr(new, "step", None) == getattr(cur, "step", None)
        if isinstance(cur, FreeBits):
            assert new.kl_sites == cur.kl_sites == {"z": "analytic"}
            torch.testing.assert_close(new.last_group_kl["z"], cur.last_group_kl["z"], rtol=RTOL64, atol=0.0)


def test_wrapper_fast_path_matches_the_hand_written_baselines():
    vae, hand = tiny()
    x = batch()
    for case, objective in [("BetaVAE(ELBO(), beta=4)", BetaVAE(ELBO(), beta=4.0)),
                            (f"FreeBits(ELBO(), threshold={ho.FREE_BITS})", FreeBits(ELBO(), threshold=ho.FREE_BITS))]:
        _, loss_fn = setup(CASES[case], hand)
        assert_same(hand_run(loss_fn, hand, x, 1), lib_run(_no_tracing(objective), vae, x, 1), RTOL64)


def test_every_wrapper_reads_the_components_and_equals_the_traced_wrapper():
    """Any wrapped objective of a plain VAE reads the record from the components, without
    tracing, and equals the traced wrapper (the warm-up counter advances once per call)."""
    vae, _ = tiny()
    x = batch()
    for make in (lambda: KLWarmup(IWAE(5), warmup_steps=10), lambda: FreeBits(ELBO(analytic_kl=False), 0.1),
                 lambda: FreeBits(ELBO(), 0.1, analytic_kl=False), lambda: BetaVAE(BetaVAE(ELBO(), 2.0), 2.0)):
        fast, traced = make(), _traced(make())
        calls = []
        original = fast.traces
        fast.traces = lambda *a, **k: calls.append(1) or original(*a, **k)
        assert_same(lib_run(fast, vae, x, 1), lib_run(traced, vae, x, 1), RTOL64)
        assert calls == []  # no tracing: the component producer
        assert getattr(fast, "step", None) == getattr(traced, "step", None)
    torch.manual_seed(0)
    other = pv.VAE(pv.encoders.DiagNormalEncoder(models.X_DIM, 2, hidden=(8,)),
                   pv.decoders.BernoulliDecoder(2, models.X_DIM, hidden=(8,)),
                   pv.priors.DiagonalGaussianPrior(2)).double()
    cur, new = _traced(KLWarmup(ELBO(), warmup_steps=10)), KLWarmup(ELBO(), warmup_steps=10)
    assert_same(lib_run(new, other, x, 1), lib_run(cur, other, x, 1), RTOL64)
    assert new.step == cur.step == 1


