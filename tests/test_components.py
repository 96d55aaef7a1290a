"""Contract tests for every prior, encoder and decoder, plus hand-computed likelihoods.

One contract test per family, parametrized over a registry of *every* component: adding a
component is one registry line (``test_registry_covers_every_exported_component`` fails
until it is added). The contract: shapes for several batch shapes, support of samples, a
non-zero finite gradient for every parameter, ``rsample`` gradients, a normalized density,
save/load round-trip, and ``check``/``check_data`` errors that name the fix.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

import pyro_vae
from pyro_vae import decoders as D
from pyro_vae import encoders as E
from pyro_vae import priors as P
from pyro_vae.data import DataError
from pyro_vae.distributions import DiscretizedLogistic

LATENT = 3
X_DIM = 5
HIDDEN = (16,)
IMAGE = 784  # conv components are built for flat 28x28 images
BATCH_SHAPES = [(), (4,), (2, 3)]

# --------------------------------------------------------------------------------------------
# registries: one line per component
# --------------------------------------------------------------------------------------------

PRIORS = [
    pytest.param(lambda: P.StandardNormalPrior(LATENT), id="standard_normal"),
    pytest.param(lambda: P.DiagonalGaussianPrior(LATENT), id="diagonal_gaussian"),
    pytest.param(lambda: P.MixtureGaussianPrior(LATENT, num_components=4), id="mixture_gaussian"),
    pytest.param(lambda: P.VampPrior(E.DiagNormalEncoder(X_DIM, LATENT, hidden=HIDDEN), 4), id="vamp_diag"),
    pytest.param(lambda: P.VampPrior(E.IAFEncoder(X_DIM, LATENT, hidden=HIDDEN, context_dim=4), 4), id="vamp_iaf"),
    pytest.param(lambda: P.FlowPrior(LATENT, num_flows=2), id="flow"),
]

ENCODERS = [
    pytest.param(lambda: E.DiagNormalEncoder(X_DIM, LATENT, hidden=HIDDEN), id="diag_normal_mlp"),
    pytest.param(lambda: E.DiagNormalEncoder(IMAGE, LATENT, hidden=HIDDEN, network="conv"), id="diag_normal_conv"),
    pytest.param(lambda: E.LowRankNormalEncoder(X_DIM, LATENT, rank=2, hidden=HIDDEN), id="low_rank_normal"),
    pytest.param(lambda: E.IAFEncoder(X_DIM, LATENT, hidden=HIDDEN, context_dim=4), id="iaf"),
]

DECODERS = [
    pytest.param(lambda: D.BernoulliDecoder(LATENT, X_DIM, hidden=HIDDEN), id="bernoulli"),
    pytest.param(lambda: D.ContinuousBernoulliDecoder(LATENT, X_DIM, hidden=HIDDEN), id="continuous_bernoulli"),
    pytest.param(lambda: D.GaussianDecoder(LATENT, X_DIM, hidden=HIDDEN, scale=0.3), id="gaussian_fixed"),
    pytest.param(lambda: D.GaussianDecoder(LATENT, X_DIM, hidden=HIDDEN), id="gaussian_learned"),
    pytest.param(lambda: D.DiscretizedLogisticDecoder(LATENT, X_DIM, hidden=HIDDEN), id="discretized_logistic"),
    pytest.param(lambda: D.PoissonDecoder(LATENT, X_DIM, hidden=HIDDEN), id="poisson"),
    pytest.param(lambda: D.NegativeBinomialDecoder(LATENT, X_DIM, hidden=HIDDEN), id="negative_binomial"),
    pytest.param(lambda: D.BernoulliDecoder(LATENT, IMAGE, network="conv"), id="bernoulli_conv"),
    pytest.param(lambda: D.DiscretizedLogisticDecoder(LATENT, IMAGE, network="conv"), id="discretized_logistic_conv"),
]

#: data outside each decoder's support and words its error message must contain (the fix)
BAD_DATA = {
    D.BernoulliDecoder: (0.5, ("binarize", "continuous likelihood")),
    D.ContinuousBernoulliDecoder: (1.5, ("[0, 1]", "pixel_scale='unit'")),
    D.DiscretizedLogisticDecoder: (12.5, ("0..255", "pixel_scale='uint8'")),
    D.PoissonDecoder: (-1.0, ("non-negative integer counts", "raw counts")),
    D.NegativeBinomialDecoder: (2.5, ("non-negative integer counts", "raw counts")),
}


def _factories(registry):
    return [p.values[0] for p in registry]


def test_registry_covers_every_exported_component():
    """A new exported prior/encoder/decoder must get a registry line (and so the contract)."""
    for module, base, registry in ((P, P.Prior, PRIORS), (E, E.Encoder, ENCODERS), (D, D.Decoder, DECODERS)):
        exported = {getattr(module, n) for n in module.__all__}
        concrete = {c for c in exported if isinstance(c, type) and issubclass(c, base) and c is not base}
        covered = {type(f()) for f in _factories(registry)}
        assert concrete - covered == set(), f"add a registry line for {sorted(c.__name__ for c in concrete - covered)}"
    # each support-restricted decoder has a bad-data example
    for cls in BAD_DATA:
        assert cls.support_error is not D.Decoder.support_error


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _perturb(module: torch.nn.Module, seed: int = 123) -> None:
    """Move every parameter away from its (possibly seeded) initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _assert_all_grads(module: torch.nn.Module, what: str) -> None:
    params = list(module.named_parameters())
    for name, p in params:
        assert p.grad is not None, f"{what}: no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), f"{what}: non-finite gradient in {name}"
        assert p.grad.abs().sum() > 0, f"{what}: zero gradient in {name}"


def _roundtrip(module: torch.nn.Module, factory, tmp_path, outputs) -> None:
    """torch.save(state_dict) -> torch.load(weights_only=True) into a fresh module: same outputs."""
    _perturb(module)
    module.eval()
    path = tmp_path / "state.pt"
    torch.save(module.state_dict(), path)
    torch.manual_seed(999)  # a fresh module with different random initial weights
    fresh = factory()
    with torch.no_grad():
        before = outputs(fresh)
    if any(True for _ in module.parameters()):
        assert not torch.allclose(before, outputs(module)), "fresh module already matches; the test proves nothing"
    fresh.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        assert torch.equal(outputs(fresh), outputs(module))


def _log_normalizer(d: dist.TorchDistribution, num: int = 20_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-sampled log ∫ p(z) dz (per batch member) and its Monte Carlo SE.

    The proposal is a Normal with the distribution's sample mean and twice its sample standard
    deviation, so it is wider than every part of ``d`` and the weights stay bounded.
    """
    with torch.no_grad():
        draws = d.sample((2000,))
        proposal = dist.Normal(draws.mean(0), 2 * draws.std(0) + 1e-3).to_event(1)
        z = proposal.sample((num,))
        lw = d.log_prob(z) - proposal.log_prob(z)
    lse, lse2 = torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0)
    ess = torch.exp(2 * lse - lse2)
    return lse - math.log(num), torch.sqrt(1.0 / ess - 1.0 / num)


# --------------------------------------------------------------------------------------------
# priors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", PRIORS)
def test_prior_contract(factory, tmp_path):
    prior = factory()
    assert prior.latent_dim == LATENT
    d = prior.check()
    assert d.batch_shape == () and d.event_shape == (LATENT,)

    # shapes for several sample shapes; samples lie in the support
    for shape in BATCH_SHAPES:
        z = d.sample(shape)
        assert z.shape == shape + (LATENT,)
        assert torch.isfinite(z).all() and d.support.check(z).all()
        lp = d.log_prob(z)
        assert lp.shape == shape and torch.isfinite(lp).all()
        if d.has_rsample:
            assert d.rsample(shape).shape == shape + (LATENT,)
    assert d.log_prob(torch.randn(2, 3, LATENT)).shape == (2, 3)

    # a normalized density: ∫ p(z) dz = 1 within Monte Carlo error
    _perturb(prior, seed=7)
    log_z, se = _log_normalizer(prior())
    assert abs(float(log_z)) < 5 * float(se) + 2e-3, (float(log_z), float(se))
    assert float(se) < 0.05

    # gradients: every parameter (and the input z) from log p(z)
    z = torch.randn(6, LATENT, requires_grad=True)
    prior.zero_grad()
    prior().log_prob(z).sum().backward()
    _assert_all_grads(prior, type(prior).__name__)
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    if prior().has_rsample and any(True for _ in prior.parameters()):  # rsample carries gradients to every parameter
        prior.zero_grad()
        prior().rsample((8,)).pow(2).sum().backward()
        _assert_all_grads(prior, f"{type(prior).__name__}.rsample")

    # a parameter update is seen by the next forward() at the very same z (no stale caches),
    # and the same z can be differentiated twice
    if any(True for _ in prior.parameters()):
        z_same = torch.randn(5, LATENT)
        before = prior().log_prob(z_same).detach()
        prior().log_prob(z_same).sum().backward()
        _perturb(prior, seed=11)
        after = prior().log_prob(z_same)
        after.sum().backward()
        assert not torch.allclose(before, after.detach())

    # save / load
    z_fixed = torch.randn(7, LATENT)
    _roundtrip(prior, factory, tmp_path, lambda m: m().log_prob(z_fixed))


def test_prior_closed_forms():
    zero = torch.zeros(LATENT)
    assert P.StandardNormalPrior(LATENT)().log_prob(zero).item() == pytest.approx(-0.5 * LATENT * math.log(2 * math.pi))
    prior = P.DiagonalGaussianPrior(LATENT)
    with torch.no_grad():
        prior.loc.fill_(1.0)
        prior.log_scale.fill_(math.log(2.0))
    expected = LATENT * (-0.5 * 0.25 - math.log(2.0) - 0.5 * math.log(2 * math.pi))
    assert prior().log_prob(zero).item() == pytest.approx(expected, rel=1e-6)
    # a one-component mixture is its component
    mix = P.MixtureGaussianPrior(LATENT, num_components=1)
    z = torch.randn(4, LATENT)
    ref = dist.Normal(mix.locs[0], 1.0).to_event(1).log_prob(z)
    assert torch.allclose(mix().log_prob(z), ref, atol=1e-6)
    # a VampPrior with one pseudo-input is the encoder's posterior at it
    enc = E.DiagNormalEncoder(X_DIM, LATENT, hidden=HIDDEN)
    vamp = P.VampPrior(enc, num_pseudo_inputs=1)
    assert torch.allclose(vamp().log_prob(z), enc(vamp.inputs()[0]).log_prob(z), atol=1e-6)


class _BatchedPrior(P.Prior):
    def forward(self):
        return dist.Normal(torch.zeros(2, self.latent_dim), 1.0)  # forgot .to_event(1)


def test_prior_check_names_the_fix():
    with pytest.raises(ValueError, match=r"to_event\(1\)"):
        _BatchedPrior(LATENT).check()
    with pytest.raises(ValueError, match="positive integer"):
        P.StandardNormalPrior(0)
    with pytest.raises(ValueError, match="num_components"):
        P.MixtureGaussianPrior(LATENT, num_components=0)
    with pytest.raises(ValueError, match=r"init must have shape \(3, 5\)"):
        P.VampPrior(E.DiagNormalEncoder(X_DIM, LATENT, hidden=HIDDEN), 3, init=torch.rand(3, 4))


# --------------------------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ENCODERS)
def test_encoder_contract(factory, tmp_path):
    enc = factory()
    assert enc.latent_dim == LATENT

    # shapes for several batch shapes; rsample in the support
    for shape in BATCH_SHAPES:
        x = torch.rand(shape + (enc.x_dim,))
        q = enc.check(x)
        assert q.batch_shape == shape and q.event_shape == (LATENT,)
        assert q.has_rsample
        z = q.rsample()
        assert z.shape == shape + (LATENT,)
        assert torch.isfinite(z).all() and q.support.check(z).all()
        lp = q.log_prob(z)
        assert lp.shape == shape and torch.isfinite(lp).all()
        assert q.rsample((5,)).shape == (5,) + shape + (LATENT,)

    x = torch.rand(4, enc.x_dim)
    # gradients from log q(z|x) at fixed z reach every parameter
    z_fixed = torch.randn(4, LATENT)
    enc.zero_grad()
    enc(x).log_prob(z_fixed).sum().backward()
    _assert_all_grads(enc, f"{type(enc).__name__}.log_prob")
    # rsample gradients (the reparameterization path alone) reach every parameter
    enc.zero_grad()
    enc(x).rsample((3,)).pow(2).sum().backward()
    _assert_all_grads(enc, f"{type(enc).__name__}.rsample")

    # a parameter update is seen by the next forward() at the very same (x, z)
    before = enc(x).log_prob(z_fixed).detach()
    _perturb(enc, seed=11)
    assert not torch.allclose(before, enc(x).log_prob(z_fixed).detach())

    # a normalized density at two datapoints
    _perturb(enc, seed=7)
    log_z, se = _log_normalizer(enc(torch.rand(2, enc.x_dim)))
    assert (log_z.abs() < 5 * se + 2e-3).all(), (log_z, se)
    assert (se < 0.05).all()

    # save / load
    _roundtrip(enc, factory, tmp_path, lambda m: m(x).log_prob(z_fixed))


def test_encoder_check_names_the_fix():
    enc = E.DiagNormalEncoder(X_DIM, LATENT, hidden=HIDDEN)
    with pytest.raises(ValueError, match=r"expects x_dim=5 features, got 7"):
        enc.check(torch.rand(4, 7))

    class Flat(E.DiagNormalEncoder):
        def forward(self, x):
            return dist.Normal(torch.zeros(x.shape[:-1] + (LATENT,)), 1.0)  # forgot .to_event(1)

    with pytest.raises(ValueError, match=r"expected \(4,\) and \(3,\)"):
        Flat(X_DIM, LATENT, hidden=HIDDEN).check(torch.rand(4, X_DIM))
    with pytest.raises(ValueError, match="conv encoder needs x_dim=784"):
        E.DiagNormalEncoder(X_DIM, LATENT, network="conv")
    with pytest.raises(ValueError, match="rank must be >= 1"):
        E.LowRankNormalEncoder(X_DIM, LATENT, rank=0)
    with pytest.raises(ValueError, match="unknown network 'rnn'"):
        E.DiagNormalEncoder(X_DIM, LATENT, network="rnn")


def test_diag_normal_encoder_is_the_reparameterized_gaussian():
    enc = E.DiagNormalEncoder(X_DIM, LATENT, hidden=HIDDEN)
    x = torch.rand(4, X_DIM)
    out = enc.net(x)
    loc, scale = out[:, :LATENT], out[:, LATENT:].exp() + 1e-5
    torch.manual_seed(5)
    z = enc(x).rsample()
    torch.manual_seed(5)
    eps = torch.randn(4, LATENT)
    assert torch.allclose(z, loc + scale * eps, atol=1e-6)


# --------------------------------------------------------------------------------------------
# decoders
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", DECODERS)
def test_decoder_contract(factory, tmp_path):
    dec = factory()
    assert dec.latent_dim == LATENT

    # shapes for several batch shapes; samples pass check_data after flattening
    for shape in BATCH_SHAPES:
        p = dec(torch.randn(shape + (LATENT,)))
        assert p.batch_shape == shape and p.event_shape == (dec.x_dim,)
        x = p.sample()
        assert x.shape == shape + (dec.x_dim,)
        assert p.support.check(x).all()
        dec.check_data(x.reshape(-1, dec.x_dim))
        lp = p.log_prob(x)
        assert lp.shape == shape and torch.isfinite(lp).all()
        assert p.mean.shape == shape + (dec.x_dim,)

    # gradients from log p(x|z) reach every parameter and z
    z = torch.randn(4, LATENT, requires_grad=True)
    x = dec(z).sample()
    dec.zero_grad()
    dec(z).log_prob(x).sum().backward()
    _assert_all_grads(dec, type(dec).__name__)
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0

    # check_data refuses wrong shapes, non-finite values and (per likelihood) the wrong support
    with pytest.raises(DataError, match="flatten images"):
        dec.check_data(torch.zeros(4, dec.x_dim + 1))
    with pytest.raises(DataError, match="flatten images"):
        dec.check_data(torch.zeros(4, 1, dec.x_dim))
    bad = x.detach().clone()
    bad[1, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        dec.check_data(bad, name="training data")
    if type(dec) in BAD_DATA:
        value, words = BAD_DATA[type(dec)]
        bad = x.detach().clone()
        bad[0, 0] = value
        with pytest.raises(DataError) as err:
            dec.check_data(bad, name="training data")
        assert str(err.value).startswith("training data: ")
        for word in words:
            assert word in str(err.value)

    # save / load
    z_fixed = torch.randn(3, LATENT)
    x_fixed = dec(z_fixed).sample().detach()
    _roundtrip(dec, factory, tmp_path, lambda m: m(z_fixed).log_prob(x_fixed))


def test_bernoulli_decoder_refuses_grey_pixels_and_names_the_fix():
    dec = D.BernoulliDecoder(LATENT, X_DIM, hidden=HIDDEN)
    grey = torch.rand(10, X_DIM)
    with pytest.raises(DataError) as err:
        dec.check_data(grey)
    msg = str(err.value)
    assert "binarize" in msg and "continuous likelihood" in msg and "not a likelihood" in msg
    dec.check_data((grey > 0.5).float())  # binarized data is accepted
    D.ContinuousBernoulliDecoder(LATENT, X_DIM, hidden=HIDDEN).check_data(grey)


def test_decoder_constructor_errors():
    with pytest.raises(ValueError, match="scale must be positive"):
        D.GaussianDecoder(LATENT, X_DIM, scale=0.0)
    with pytest.raises(ValueError, match="must be positive"):
        D.BernoulliDecoder(0, X_DIM)


def _mlp_params(dec, z):
    out = dec.net(z)
    return out.reshape(*out.shape[:-1], dec.x_dim, dec.num_params) if dec.num_params > 1 else out


def test_bernoulli_log_prob_by_hand():
    dec = D.BernoulliDecoder(LATENT, X_DIM, hidden=HIDDEN)
    z, x = torch.randn(6, LATENT), torch.bernoulli(torch.rand(6, X_DIM))
    logits = dec.net(z)
    expected = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    assert torch.allclose(dec(z).log_prob(x), expected, atol=1e-5)


@pytest.mark.parametrize("scale", [0.3, None])
def test_gaussian_log_prob_by_hand(scale):
    dec = D.GaussianDecoder(LATENT, X_DIM, hidden=HIDDEN, scale=scale)
    if scale is None:
        with torch.no_grad():
            dec.log_scale.copy_(torch.linspace(-1.0, 1.0, X_DIM))
    z, x = torch.randn(6, LATENT), torch.randn(6, X_DIM)
    mu = dec.net(z).double()
    sigma = torch.full((X_DIM,), 0.3, dtype=torch.float64) if scale else torch.linspace(-1.0, 1.0, X_DIM).double().exp()
    expected = (-0.5 * ((x.double() - mu) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(dec(z).log_prob(x).double(), expected, atol=1e-4)


def test_poisson_log_prob_by_hand():
    dec = D.PoissonDecoder(LATENT, X_DIM, hidden=HIDDEN)
    z = torch.randn(6, LATENT)
    x = torch.tensor([0.0, 1.0, 3.0, 10.0, 40.0]).expand(6, X_DIM)
    log_rate = dec.net(z).double()
    expected = (x * log_rate - log_rate.exp() - torch.lgamma(x.double() + 1)).sum(-1)
    assert torch.allclose(dec(z).log_prob(x).double(), expected, atol=1e-4)


def test_negative_binomial_log_prob_by_hand():
    dec = D.NegativeBinomialDecoder(LATENT, X_DIM, hidden=HIDDEN)
    with torch.no_grad():
        dec.log_total_count.copy_(torch.linspace(-1.0, 2.0, X_DIM))
    z = torch.randn(6, LATENT)
    x = torch.tensor([0.0, 1.0, 3.0, 10.0, 40.0]).double()
    r, logits = dec.log_total_count.double().exp(), dec.net(z).double()
    expected = (
        torch.lgamma(x + r) - torch.lgamma(r) - torch.lgamma(x + 1) + r * F.logsigmoid(-logits) + x * F.logsigmoid(logits)
    ).sum(-1)
    assert torch.allclose(dec(z).log_prob(x.float()).double(), expected, atol=1e-4)
    assert torch.allclose(dec(z).mean.double(), r * logits.exp(), rtol=1e-5)  # the documented mean


def test_continuous_bernoulli_log_prob_by_hand():
    dec = D.ContinuousBernoulliDecoder(LATENT, X_DIM, hidden=HIDDEN)
    z, x = torch.randn(6, LATENT), torch.rand(6, X_DIM)
    lam = torch.sigmoid(dec.net(z).double())
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    expected = (log_c + x * lam.log() + (1 - x) * (1 - lam).log()).sum(-1)
    assert torch.allclose(dec(z).log_prob(x).double(), expected, atol=1e-4)


# -- discretized logistic ---------------------------------------------------------------------

BINS = torch.arange(256.0)
LOCS = [-50.0, 0.0, 0.3, 100.0, 127.5, 200.7, 255.0, 400.0]
SCALES = [1e-2, 0.1, 0.5, 1.0, 3.0, 10.0, 100.0, 1e4]


def _bin_mass_float64(loc, scale, v=BINS) -> torch.Tensor:
    """P(x = v) as a direct CDF difference in float64, taken in whichever tail it does not cancel
    in (σ(a) − σ(b) below the location, σ(−b) − σ(−a) above it); edge bins hold the mass beyond."""
    loc, scale, v = (torch.as_tensor(t, dtype=torch.float64) for t in (loc, scale, v))
    a, b = (v + 0.5 - loc) / scale, (v - 0.5 - loc) / scale
    mid = torch.where(v > loc, torch.sigmoid(-b) - torch.sigmoid(-a), torch.sigmoid(a) - torch.sigmoid(b))
    return torch.where(v <= 0, torch.sigmoid(a), torch.where(v >= 255, torch.sigmoid(-b), mid))


@pytest.mark.parametrize("loc", LOCS)
def test_discretized_logistic_is_normalized_and_exact(loc):
    for scale in SCALES:
        d = DiscretizedLogistic(torch.full((256,), loc), torch.full((256,), scale))
        lp = d.log_prob(BINS).double()
        assert torch.isfinite(lp).all()
        assert abs(float(lp.exp().sum()) - 1.0) < 1e-4, (loc, scale)
        ref = _bin_mass_float64(loc, scale)
        body = ref > 1e-3
        assert torch.allclose(lp[body].exp(), ref[body], rtol=1e-4, atol=0), (loc, scale)
        # the tails too: every bin with representable mass, relative to the size of log P
        tail = ref > 1e-300
        err = (lp[tail] - ref[tail].log()).abs() / (1.0 + ref[tail].log().abs())
        assert err.max() < 1e-4, (loc, scale, float(err.max()), float(BINS[tail][err.argmax()]))


def test_discretized_logistic_gradients_are_finite_at_extremes():
    loc = torch.tensor([0.0, 127.5, 255.0, 300.0, -20.0], requires_grad=True)
    scale = torch.tensor([1e-2, 1e4, 0.1, 1.0, 1e-2], requires_grad=True)
    x = torch.tensor([0.0, 3.0, 128.0, 255.0, 200.0])
    DiscretizedLogistic(loc, scale).log_prob(x).sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()
    assert (loc.grad != 0).all()


def test_discretized_logistic_decoder_log_prob_by_hand():
    dec = D.DiscretizedLogisticDecoder(LATENT, X_DIM, hidden=HIDDEN)
    z = torch.randn(4, LATENT)
    x = torch.tensor([0.0, 1.0, 100.0, 254.0, 255.0]).expand(4, X_DIM)
    params = _mlp_params(dec, z).double()
    loc = 255 * torch.sigmoid(params[..., 0])
    scale = F.softplus(params[..., 1] + 2.0) + 1e-2
    expected = _bin_mass_float64(loc, scale, x).log().sum(-1)
    assert torch.isfinite(expected).all()
    assert torch.allclose(dec(z).log_prob(x).double(), expected, atol=1e-4)


# --------------------------------------------------------------------------------------------
# the VAE: every encoder x every prior
# --------------------------------------------------------------------------------------------

VAE_ENCODERS = [p for p in ENCODERS if p.id != "diag_normal_conv"]
VAE_PRIORS = [p for p in PRIORS if p.id != "vamp_iaf"]
_ID = {p.values[0]: p.id for p in ENCODERS + PRIORS}
ANALYTIC_KL = {("diag_normal_mlp", "standard_normal"), ("diag_normal_mlp", "diagonal_gaussian")}


@pytest.mark.parametrize("prior_factory", VAE_PRIORS)
@pytest.mark.parametrize("encoder_factory", VAE_ENCODERS)
def test_vae_builds_and_trains_for_every_encoder_and_prior(encoder_factory, prior_factory):
    enc_id, prior_id = _ID[encoder_factory], _ID[prior_factory]
    vae = pyro_vae.VAE(encoder_factory(), D.BernoulliDecoder(LATENT, X_DIM, hidden=HIDDEN), prior_factory())
    x = torch.bernoulli(torch.rand(6, X_DIM))
    elbo = pyro_vae.objectives.ELBO()
    if (enc_id, prior_id) in ANALYTIC_KL:
        loss = elbo(vae.model, vae.guide)(x)
        assert elbo.kl_sites == {"z": "analytic"}
    else:
        with pytest.warns(RuntimeWarning, match="no closed-form KL"):
            loss = elbo(vae.model, vae.guide)(x)
        assert elbo.kl_sites == {"z": "monte carlo"}
    assert loss.shape == () and torch.isfinite(loss)
    loss_value = float(loss.detach())
    # the loss is -ELBO summed over the batch: reconstruction ≤ 0 nats for binary data, KL ≥ 0 in expectation
    assert loss_value > 0
    loss.backward()
    _assert_all_grads(vae, f"VAE({enc_id}, {prior_id})")
    families = {family for family, _ in vae.component_parameters()}
    assert {"encoder", "decoder"} <= families


def test_vae_refuses_mismatched_components():
    enc = E.DiagNormalEncoder(X_DIM, LATENT, hidden=HIDDEN)
    dec = D.BernoulliDecoder(LATENT, X_DIM, hidden=HIDDEN)
    with pytest.raises(ValueError, match="latent_dim differs"):
        pyro_vae.VAE(enc, D.BernoulliDecoder(LATENT + 1, X_DIM, hidden=HIDDEN))
    with pytest.raises(ValueError, match="latent_dim differs"):
        pyro_vae.VAE(enc, dec, P.StandardNormalPrior(LATENT + 1))
    with pytest.raises(ValueError, match=r"encoder.x_dim=5 but decoder.x_dim=6"):
        pyro_vae.VAE(enc, D.BernoulliDecoder(LATENT, X_DIM + 1, hidden=HIDDEN))
    with pytest.raises(ValueError, match="latent_dim differs"):
        pyro_vae.VAE(enc, dec, P.VampPrior(E.DiagNormalEncoder(X_DIM, LATENT + 1, hidden=HIDDEN), 2))
