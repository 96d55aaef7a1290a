"""The traced producer's speed paths give the numbers of the plain path.

* ``program.log_prob`` (the fused Bernoulli log-density for a user's own ``Bernoulli(...).to_event``)
  against torch's ``Bernoulli.log_prob`` — value and gradients — and the cases it must leave alone;
* ``program.traced_log_weights`` (the model replayed on particle blocks) against
  ``traced_particles(...).log_weights`` with the same seed, on programs of several shapes;
* ``log_likelihood`` of a user-written VAE against the library VAE with copied weights.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_vae as pv
from pyro_vae.program import PlateError, log_prob, traced_log_weights, traced_particles


# -- the fused log-density -----------------------------------------------------------------------------
def _torch_ref(logits, x, n):
    d = torch.distributions.Bernoulli(logits=logits, validate_args=False)
    return torch.distributions.Independent(d, n).log_prob(x)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("x_shape", [(3, 4, 5), (4, 5)])  # x broadcast against (particles, batch) logits
def test_log_prob_bernoulli_matches_torch_value_and_gradient(n, x_shape):
    logits = torch.randn(3, 4, 5, requires_grad=True)
    x = torch.bernoulli(torch.full(x_shape, 0.5))
    got = log_prob(dist.Bernoulli(logits=logits, validate_args=False).to_event(n), x)
    ref = _torch_ref(logits, x, n)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5)
    g_got, = torch.autograd.grad(got.sum(), logits)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g_got, g_ref, atol=1e-6)


def test_log_prob_bernoulli_from_probs_matches_torch():
    probs = torch.sigmoid(torch.randn(6, 5))
    x = torch.bernoulli(torch.full((6, 5), 0.5))
    got = log_prob(dist.Bernoulli(probs, validate_args=False).to_event(1), x)
    ref = torch.distributions.Independent(torch.distributions.Bernoulli(probs=probs), 1).log_prob(x)
    assert torch.allclose(got, ref, atol=1e-5)


def test_log_prob_leaves_overridden_and_masked_densities_alone():
    class Tilted(dist.Bernoulli):
        def log_prob(self, value):
            return super().log_prob(value) + 1.0

    logits, x = torch.randn(4, 5), torch.ones(4, 5)
    own = Tilted(logits=logits, validate_args=False).to_event(1)
    assert torch.allclose(log_prob(own, x), _torch_ref(logits, x, 1) + 5.0, atol=1e-5)
    mask = torch.tensor([True, False, True, False])
    masked = dist.Bernoulli(logits=logits, validate_args=False).to_event(1).mask(mask)
    assert torch.allclose(log_prob(masked, x), torch.where(mask, _torch_ref(logits, x, 1), torch.zeros(())), atol=1e-5)
    plain = dist.Bernoulli(logits=logits, validate_args=False)  # no event dim: elementwise, torch's own
    assert torch.equal(log_prob(plain, x), plain.log_prob(x))


def test_log_prob_keeps_the_argument_check():
    d = dist.Bernoulli(logits=torch.zeros(2, 3), validate_args=True).to_event(1)
    with pytest.raises(ValueError, match="support"):
        log_prob(d, torch.full((2, 3), 0.5))


# -- blocked replay -----------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.lin = nn.Linear(i, o)

    def forward(self, h):
        return self.lin(h)


def _vae_pair(sized=True):
    enc, dec = _Net(6, 4), _Net(2, 6)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0] if sized else None):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=dec(z), validate_args=False).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0] if sized else None):
            h = enc(x)
            pyro.sample("z", dist.Normal(h[..., :2], h[..., 2:].exp()).to_event(1))

    return model, guide


def _two_level_pair():
    def model(x, y):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2, 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(z1.sum(-1, keepdim=True) + y, 1.0).to_event(1), obs=x)

    def guide(x, y):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x.mean(-1, keepdim=True).expand(-1, 2), 0.8).to_event(1))
            pyro.sample("z2", dist.Normal(0.5 * z1, 0.9).to_event(1))
            pyro.sample("aux", dist.Normal(torch.zeros(x.shape[0]), 1.0), infer={"is_auxiliary": True})

    return model, guide


@pytest.mark.parametrize("block", [1, 3, 7, 20])
@pytest.mark.parametrize("which", ["vae", "vae, plate without size", "two levels, extra argument, auxiliary site"])
def test_blocked_replay_gives_the_unblocked_weights(which, block):
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    args: tuple = (x,)
    if which == "vae":
        model, guide = _vae_pair()
    elif which == "vae, plate without size":
        model, guide = _vae_pair(sized=False)
    else:
        model, guide = _two_level_pair()
        args = (x, torch.randn(5, 1))
    torch.manual_seed(3)
    ref = traced_particles(model, guide, args, {}, 20, 1).log_weights
    torch.manual_seed(3)
    got = traced_log_weights(model, guide, args, {}, 20, 1, block_particles=block)
    assert got.shape == (20, 5)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-6)
    assert float((got - ref).abs().max().detach()) <= 1e-4


def test_blocked_replay_refuses_a_global_latent():
    def model(x):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(g, 1.0), obs=x)

    def guide(x):
        pyro.sample("g", dist.Normal(0.0, 1.0))

    with pytest.raises(PlateError, match="'g'"):
        traced_log_weights(model, guide, (torch.zeros(4),), {}, 10, 1, block_particles=3)


# -- a user-written VAE against the library's ------------------------------------------------------------
def test_user_program_log_likelihood_equals_the_library_vae_with_copied_weights(monkeypatch):
    from benchmarks.user_programs import UserVAE

    monkeypatch.setattr(pv.settings, "block_bytes", 1 << 18)  # small blocks: the traced path replays ~11 particles at a time

    torch.manual_seed(0)
    vae = pv.VAE(pv.encoders.DiagNormalEncoder(784, 50, hidden=(400,)),
                 pv.decoders.BernoulliDecoder(50, 784, hidden=(400,)))
    user = UserVAE.like(vae)
    x = torch.bernoulli(torch.full((7, 784), 0.3))
    torch.manual_seed(1)
    lib = pv.log_likelihood(vae.model, vae.guide, x, num_samples=300)
    torch.manual_seed(1)
    usr = pv.log_likelihood(user.model, user.guide, x, num_samples=300)
    assert torch.allclose(usr.per_datapoint, lib.per_datapoint, atol=1e-3)
