"""The Particles record on programs beyond the plain VAE, against Pyro's own estimators.

The failing cases first: a hierarchical program whose closed-form KL is invalid (p: z2 → z1 → x,
q: x → z1 → z2) and a data plate declared without a size (as Pyro's cvae and ss_vae examples
do). Pyro's ``Trace_ELBO`` on the same program and seed is the independent reference.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_vae as pv
from pyro_vae import program

X_DIM, Z1, Z2 = 6, 3, 2


class TwoLayer(nn.Module):
    """p(z2) p(z1|z2) p(x|z1) with a bottom-up guide q(z1|x) q(z2|z1), or a top-down one."""

    def __init__(self, top_down: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.top_down = top_down
        self.p1 = nn.Linear(Z2, 2 * Z1)
        self.px = nn.Linear(Z1, X_DIM)
        self.q1 = nn.Linear(X_DIM + (Z2 if top_down else 0), 2 * Z1)
        self.q2 = nn.Linear(Z1 if not top_down else X_DIM, 2 * Z2)

    @staticmethod
    def _normal(h: torch.Tensor, d: int):
        return dist.Normal(h[..., :d], torch.nn.functional.softplus(h[..., d:]) + 0.1).to_event(1)

    def model(self, x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(Z2), 1.0).to_event(1))
            z1 = pyro.sample("z1", self._normal(self.p1(z2), Z1))
            pyro.sample("x", dist.Normal(self.px(z1), 1.0).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            if self.top_down:
                z2 = pyro.sample("z2", self._normal(self.q2(x), Z2))
                xx = torch.cat([x.expand(z2.shape[:-1] + x.shape[-1:]), z2], -1)
                pyro.sample("z1", self._normal(self.q1(xx), Z1))
            else:
                z1 = pyro.sample("z1", self._normal(self.q1(x), Z1))
                pyro.sample("z2", self._normal(self.q2(z1), Z2))


def _mean_elbo(objective_loss, n: int = 2000) -> float:
    vals = []
    for s in range(n):
        pyro.set_rng_seed(s)
        vals.append(objective_loss())
    return float(torch.tensor(vals).mean())


def test_bottom_up_hierarchical_elbo_falls_back_to_monte_carlo_and_matches_trace_elbo():
    """The closed form for z1 would use p(z1|z2) at a z2 drawn after z1: silently wrong. The ELBO
    must use the Monte Carlo term there (and say so), and then equal Pyro's Trace_ELBO."""
    m = TwoLayer(top_down=False)
    x = torch.randn(5, X_DIM)
    elbo = pv.objectives.ELBO()
    with pytest.warns(RuntimeWarning, match="guide draws after 'z1'"):
        elbo.loss(m.model, m.guide, x)
    assert elbo.kl_sites == {"z2": "analytic", "z1": "monte carlo"}
    # draw for draw with every KL in Monte Carlo form
    pyro.set_rng_seed(1)
    ours = pv.objectives.ELBO(analytic_kl=False).loss(m.model, m.guide, x)
    pyro.set_rng_seed(1)
    ref = pyro.infer.Trace_ELBO().loss(m.model, m.guide, x)
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-4)
    # in expectation with the default (the valid closed form for z2 only lowers the variance)
    mean_ours = _mean_elbo(lambda: elbo.loss(m.model, m.guide, x), 1500)
    mean_ref = _mean_elbo(lambda: pyro.infer.Trace_ELBO().loss(m.model, m.guide, x), 1500)
    assert abs(mean_ours - mean_ref) < 0.02 * abs(mean_ref)
    # negative control: the closed form everywhere (Pyro's TraceMeanField_ELBO) is off by far more
    with pytest.warns(UserWarning):
        mean_wrong = _mean_elbo(lambda: pyro.infer.TraceMeanField_ELBO().loss(m.model, m.guide, x), 300)
    assert abs(mean_wrong - mean_ref) > 5 * abs(mean_ours - mean_ref) + 0.1


def test_top_down_hierarchical_elbo_keeps_the_valid_closed_forms():
    m = TwoLayer(top_down=True)
    x = torch.randn(5, X_DIM)
    elbo = pv.objectives.ELBO()
    elbo.loss(m.model, m.guide, x)
    assert elbo.kl_sites == {"z2": "analytic", "z1": "analytic"}
    # the closed forms are unbiased: equal in expectation to Trace_ELBO (Monte Carlo error ~1%)
    mean_ours = _mean_elbo(lambda: elbo.loss(m.model, m.guide, x), 400)
    mean_ref = _mean_elbo(lambda: pyro.infer.Trace_ELBO().loss(m.model, m.guide, x), 1500)
    assert abs(mean_ours - mean_ref) < 0.03 * abs(mean_ref)


def test_closed_form_ok_follows_the_draw_orders():
    m = TwoLayer(top_down=False)
    p = pv.objectives.ELBO().particles(m.model, m.guide, torch.randn(4, X_DIM))
    assert {s.name: s.closed_form_ok for s in p.latents} == {"z2": True, "z1": False}


def _unsized_pair():
    torch.manual_seed(0)
    dec = nn.Linear(2, X_DIM)
    enc = nn.Linear(X_DIM, 4)

    def model(x):
        with pyro.plate("data"):  # no size, as Pyro's cvae and ss_vae examples write it
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))  # as vae.py
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data"):
            h = enc(x)
            pyro.sample("z", dist.Normal(h[..., :2], h[..., 2:].exp()).to_event(1))

    return model, guide


@pytest.mark.parametrize("make", [lambda: pv.objectives.ELBO(analytic_kl=False), lambda: pv.objectives.IWAE(1),
                                  lambda: pv.objectives.FreeBits(pv.objectives.ELBO(analytic_kl=False), 0.1)])
def test_a_data_plate_without_a_size_gets_the_right_batch_size(make):
    """Before: batch size −1, a bound of the wrong sign, FreeBits subtracting its penalty."""
    model, guide = _unsized_pair()
    x = torch.bernoulli(torch.full((7, X_DIM), 0.3))
    objective = make()
    pyro.set_rng_seed(3)
    loss = objective.loss(model, guide, x)
    pyro.set_rng_seed(3)
    ref = pyro.infer.Trace_ELBO().loss(model, guide, x)
    p = objective.particles(model, guide, x)
    assert p.batch_size == 7 and p.data_scale == 1.0
    assert objective.last_terms.bound < 0
    assert loss >= ref - 1e-4 if isinstance(objective, pv.objectives.FreeBits) else loss == pytest.approx(ref, rel=1e-5)
    assert float(objective.last_terms.bound) == pytest.approx(-loss / 7, rel=1e-5)


def test_log_likelihood_of_an_unsized_plate_matches_quadrature():
    """The latent is 2-D: log p(x) = log ∫ N(z; 0, I) p(x|z) dz by a 300×300 grid on [-7, 7]²."""
    model, guide = _unsized_pair()
    torch.manual_seed(0)
    decoder = nn.Linear(2, X_DIM)  # _unsized_pair builds the same weights from seed 0
    x = torch.bernoulli(torch.full((4, X_DIM), 0.3), generator=torch.Generator().manual_seed(1))
    pyro.set_rng_seed(0)
    ll = pv.log_likelihood(model, guide, x, num_samples=200_000).per_datapoint  # the guide is poor at x[3]
    g = torch.linspace(-7, 7, 300, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        logits = decoder.double()(z)  # (G, D)
        log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_px_z = dist.Bernoulli(logits=logits.unsqueeze(1)).log_prob(x.double()).sum(-1)  # (G, 4)
        cell = float((g[1] - g[0]) ** 2)
        exact = torch.logsumexp(log_pz.unsqueeze(1) + log_px_z, 0) + torch.log(torch.tensor(cell, dtype=torch.float64))
    torch.testing.assert_close(ll.double(), exact, atol=0.05, rtol=0)


def test_rows_independent_refuses_an_undeclared_forward_override():
    class Mixing(pv.nn.MLP):
        def forward(self, x):
            return super().forward(x - x.mean(0, keepdim=True))

    assert program.rows_independent(pv.nn.MLP(3, (4,), 2))
    assert not program.rows_independent(Mixing(3, (4,), 2))
    assert not program.rows_independent(nn.BatchNorm1d(3))


def _cvae():
    """A conditional VAE p(x | z, y), q(z | x, y): y is a per-datapoint argument besides x."""
    torch.manual_seed(0)
    dec = nn.Linear(2 + 3, X_DIM)
    enc = nn.Linear(X_DIM + 3, 4)

    def model(xs, ys):
        with pyro.plate("data", xs.shape[0]):
            z = pyro.sample("z", dist.Normal(xs.new_zeros(xs.shape[0], 2), 1.0).to_event(1))
            h = torch.cat([z, ys.expand(z.shape[:-1] + ys.shape[-1:])], -1)
            pyro.sample("x", dist.Bernoulli(logits=dec(h)).to_event(1), obs=xs)

    def guide(xs, ys):
        with pyro.plate("data", xs.shape[0]):
            h = enc(torch.cat([xs, ys], -1))
            pyro.sample("z", dist.Normal(h[..., :2], h[..., 2:].exp()).to_event(1))

    return model, guide


def test_log_likelihood_slices_per_datapoint_arguments_in_every_chunk():
    """Before: IndexError (the mask of shape [1, D] vs [N, D]) at any N: ys was passed whole."""
    model, guide = _cvae()
    g = torch.Generator().manual_seed(2)
    xs = torch.bernoulli(torch.full((5, X_DIM), 0.4), generator=g)
    ys = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1, 0]), 3).float()
    pyro.set_rng_seed(0)
    ll = pv.log_likelihood(model, guide, xs, ys, num_samples=3000, memory_budget=4000).per_datapoint  # many chunks
    ref = []
    with torch.no_grad():  # independent reference: one datapoint at a time, Pyro's traces directly
        for i in range(5):
            lw = []
            for _ in range(3000):
                tg = pyro.poutine.trace(guide).get_trace(xs[i : i + 1], ys[i : i + 1])
                tm = pyro.poutine.trace(pyro.poutine.replay(model, trace=tg)).get_trace(xs[i : i + 1], ys[i : i + 1])
                lw.append(float(tm.log_prob_sum() - tg.log_prob_sum()))
            ref.append(float(torch.logsumexp(torch.tensor(lw), 0)) - float(torch.log(torch.tensor(3000.0))))
    torch.testing.assert_close(ll, torch.tensor(ref), atol=0.1, rtol=0)


def test_named_per_datapoint_arguments_must_match_the_data():
    model, guide = _cvae()
    xs = torch.bernoulli(torch.full((5, X_DIM), 0.4))
    with pytest.raises(ValueError, match="positional argument 0 after x.*length 4"):
        pv.log_likelihood(model, guide, xs, torch.zeros(4, 3), num_samples=4, per_datapoint=[0])


def test_diagnostics_slice_per_datapoint_arguments_with_x():
    """Before: every diagnostic passed model_args whole (the CVAE's ys) and failed on any chunk.
    Each must now match log_likelihood's per-datapoint estimates on the same program and seed."""
    model, guide = _cvae()
    g = torch.Generator().manual_seed(2)
    xs = torch.bernoulli(torch.full((6, X_DIM), 0.4), generator=g)
    ys = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1, 0, 2]), 3).float()
    pyro.set_rng_seed(0)
    ll = pv.log_likelihood(model, guide, xs, ys, num_samples=2000).per_datapoint
    pyro.set_rng_seed(0)
    diag = pv.diagnostics.importance_diagnostics((model, guide), xs, num_samples=2000, model_args=(ys,),
                                                 memory_budget=4000)  # many chunks
    torch.testing.assert_close(diag.log_likelihood.float(), ll, atol=0.15, rtol=0)
    lat = pv.diagnostics.latent_diagnostics((model, guide), xs, model_args=(ys,), memory_budget=4000)
    assert lat.kl_per_dim.shape == (2,) and bool(torch.isfinite(lat.kl_per_dim).all())
    idata = pv.to_inference_data((model, guide), xs, model_args=(ys,), num_samples=200, memory_budget=40000)
    assert "posterior" in _groups(idata)
    sbc = pv.diagnostics.sbc((model, guide), xs, model_args=(ys,), num_simulations=60, num_posterior_samples=10,
                             memory_budget=40000)
    assert sbc.ranks.shape[0] == 60


def _groups(idata):
    return list(getattr(idata, "groups", lambda: list(idata.children))())
