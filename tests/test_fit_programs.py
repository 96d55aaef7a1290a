"""``pv.fit`` on hand-written Pyro programs (issue 11, observations 4 and 8).

Programs written as Pyro's examples write them: ``model(x)`` / ``guide(x)`` with
``pyro.plate("data", x.shape[0])`` and no ``num_data`` keyword. For such programs an objective's
loss is the minibatch bound (not scaled to N), so the History's per-datapoint numbers must be that
bound divided by the batch size (observation 4: they were divided by N, B/N too small). A program
with an enumerated discrete guide site trained with Pyro's ``TraceEnum_ELBO`` must validate with
that objective (observation 8: validation always used pyro_vae's ELBO, which refuses the site).
"""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_vae as pv

D, Z, H = 12, 2, 16  # data, latent and hidden sizes
N, B = 200, 50  # data set and batch size: B/N = 1/4, far outside Monte Carlo error


def bernoulli_data(n: int = N, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(4, D, generator=g)
    return torch.bernoulli(probs[torch.randint(0, 4, (n,), generator=g)], generator=g)


class Encoder(nn.Module):
    def __init__(self, inp: int = D) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inp, H), nn.Softplus())
        self.loc, self.scale = nn.Linear(H, Z), nn.Linear(H, Z)

    def forward(self, x: torch.Tensor):
        h = self.net(x)
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-3


class BernoulliVAE(nn.Module):
    """Pyro's ``examples/vae/vae.py`` in small: ``pyro.module``, a sized data plate, no num_data."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.decoder = nn.Sequential(nn.Linear(Z, H), nn.Softplus(), nn.Linear(H, D))

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), x.new_ones(Z)).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def reference_bound(model, guide, x: torch.Tensor, particles: int = 200) -> float:
    """-Trace_ELBO().loss / len(x): the ELBO per datapoint, Pyro's own estimate."""
    with torch.no_grad():
        return -pyro.infer.Trace_ELBO(num_particles=particles).loss(model, guide, x) / x.shape[0]


OBJECTIVES = {
    "pv.ELBO": lambda: pv.objectives.ELBO(),
    "pv.IWAE": lambda: pv.objectives.IWAE(num_particles=5),
    "pyro.Trace_ELBO": lambda: pyro.infer.Trace_ELBO(),
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_train_elbo_is_per_datapoint_without_num_data(name: str) -> None:
    """Observation 4: the History's train_elbo is the bound per datapoint, not B/N of it."""
    x = bernoulli_data()
    torch.manual_seed(0)
    vae = BernoulliVAE()
    # the bound on all of x after every step: the epoch's mean, computed independently of fit
    after_step: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "do not take a num_data keyword"
        h = pv.fit(vae.model, OBJECTIVES[name](), x, guide=vae.guide, epochs=1, batch_size=B, lr=1e-3,
                   progress=False, tensorboard=False,
                   on_step=lambda info, s: after_step.append(reference_bound(vae.model, vae.guide, x, 20)))
    row = h.epochs[-1]
    independent = sum(after_step) / len(after_step)
    assert len(after_step) == N // B
    assert -20 < independent < -3  # a real bound of a few nats per pixel group, far from B/N of it
    # within Monte Carlo error (the epoch's minibatch estimates vs. the full-data bound)
    slack = 1.5 if name == "pv.IWAE" else 0.0  # IWAE-5 is tighter than the ELBO by a fraction of a nat
    assert independent - 1.0 <= row["train_elbo"] <= independent + 1.0 + slack, (row, independent)
    assert row["train_loss"] == pytest.approx(-row["train_elbo"])
    if name.startswith("pv."):  # reconstruction and KL are reported per datapoint, and add up to the bound
        assert -row["reconstruction"] + row["kl"] == pytest.approx(-independent, abs=1.0 + slack)
        assert row["kl"] > 0


def test_train_elbo_matches_the_library_vae() -> None:
    """The same architecture as a pyro_vae.VAE (scaled with num_data) reports the same order of bound."""
    x = bernoulli_data()
    torch.manual_seed(0)
    lib = pv.VAE(pv.encoders.DiagNormalEncoder(D, Z, hidden=(H,)), pv.decoders.BernoulliDecoder(Z, D, hidden=(H,)))
    h_lib = pv.fit(lib, train=x, epochs=1, batch_size=B, progress=False, tensorboard=False)
    torch.manual_seed(0)
    vae = BernoulliVAE()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        h = pv.fit(vae.model, None, x, guide=vae.guide, epochs=1, batch_size=B, progress=False, tensorboard=False)
    ratio = h.epochs[-1]["train_elbo"] / h_lib.epochs[-1]["train_elbo"]
    assert 0.6 < ratio < 1.6, (h.epochs[-1], h_lib.epochs[-1])


# ---- observation 8: an enumerated discrete site, trained and validated with TraceEnum_ELBO ---------
C = 3  # classes


def one_hot(y: torch.Tensor) -> torch.Tensor:
    return nn.functional.one_hot(y.long(), C).to(torch.get_default_dtype())


class M2(nn.Module):
    """Pyro's ``ss_vae_M2`` in small (unsupervised half): y ~ Categorical, z ~ Normal, x | y, z."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(D, H), nn.Softplus(), nn.Linear(H, C))
        self.encoder = Encoder(D + C)
        self.decoder = nn.Sequential(nn.Linear(Z + C, H), nn.Softplus(), nn.Linear(H, D))

    @staticmethod
    def _cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
        return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], -1)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("m2", self)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(C)))
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), x.new_ones(Z)).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=self.decoder(self._cat(z, one_hot(y)))).to_event(1), obs=x)

    @pyro.infer.config_enumerate
    def guide(self, x: torch.Tensor) -> None:
        pyro.module("m2", self)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=self.classifier(x)))
            loc, scale = self.encoder(self._cat(x, one_hot(y)))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def test_traceenum_trains_and_validates_with_itself() -> None:
    """Observation 8: validation uses the user's TraceEnum_ELBO, per datapoint."""
    x, val = bernoulli_data(), bernoulli_data(60, seed=2)
    torch.manual_seed(0)
    m2 = M2()
    objective = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    rng_before_val: list[torch.Tensor] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        h = pv.fit(m2.model, objective, x, val, guide=m2.guide, epochs=2, batch_size=B, progress=False,
                   tensorboard=False, on_step=lambda info, s: rng_before_val.append(torch.get_rng_state()))
    assert len(h.epochs) == 2
    val_elbo = h.epochs[-1]["val_elbo"]
    assert math.isfinite(val_elbo)
    # the same draws validation made (nothing draws between the last step and validation)
    torch.set_rng_state(rng_before_val[-1])
    with torch.no_grad():
        expected = -pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(m2.model, m2.guide, val) / val.shape[0]
    assert val_elbo == pytest.approx(expected, rel=1e-5)
    # and it is the bound per datapoint (a fresh estimate agrees within Monte Carlo error)
    with torch.no_grad():
        fresh = -pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, num_particles=50).loss(m2.model, m2.guide, val)
    assert val_elbo == pytest.approx(fresh / val.shape[0], abs=1.0)
    assert h.epochs[-1]["train_elbo"] == pytest.approx(val_elbo, abs=2.0)  # per datapoint too, same order


def test_pyro_vae_elbo_sums_the_enumerated_site_as_traceenum_does() -> None:
    """pyro_vae's ELBO sums the enumerated label exactly: it equals TraceEnum_ELBO in expectation,
    and fit trains and validates M2 with it (the validation bound is pyro_vae's ELBO, per datapoint)."""
    x = bernoulli_data(10)
    m2 = M2()
    with torch.no_grad():
        ours = torch.tensor([pv.objectives.ELBO(num_particles=20).loss(m2.model, m2.guide, x) for _ in range(30)])
        ref = torch.tensor([pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, num_particles=20, vectorize_particles=True)
                            .loss(m2.model, m2.guide, x) for _ in range(30)])
    se = math.sqrt(float(ours.var() + ref.var()) / 30)
    assert abs(float(ours.mean() - ref.mean())) <= 5 * se + 1e-3
    val = bernoulli_data(20, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no num_data keyword
        h = pv.fit(m2.model, pv.objectives.ELBO(), x, val, guide=m2.guide, epochs=2, batch_size=5, progress=False,
                   tensorboard=False)
    assert math.isfinite(h.epochs[-1]["val_elbo"])
