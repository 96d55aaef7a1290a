"""Per-datapoint log importance weights from vectorized particle traces (:mod:`pyro_vae.traces`).

Every expected value is computed by hand from the traced latent values and the components'
own distributions, never by the code under test.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import pyro_vae as pv
from pyro_vae.traces import PlateError, guess_max_plate_nesting, log_weights, particle_traces, site_log_prob

B, D, LATENT, K = 8, 5, 3, 7


@pytest.fixture
def vae() -> pv.VAE:
    return pv.VAE(
        pv.encoders.DiagNormalEncoder(D, LATENT, hidden=(16,)),
        pv.decoders.GaussianDecoder(LATENT, D, hidden=(16,), scale=0.5),
    )


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(B, D)


def _vae_parts(vae, x, traces):
    """(log p(z), log p(x|z), log q(z|x)), each (K, B), from the traced z by hand."""
    z = traces.guide_trace.nodes["z"]["value"]
    assert torch.equal(traces.model_trace.nodes["z"]["value"], z)
    return vae.prior().log_prob(z), vae.decoder(z).log_prob(x), vae.encoder(x).log_prob(z)


@pytest.mark.parametrize("num_particles", [1, K])
def test_log_weights_shape_and_value(vae, x, num_particles):
    assert guess_max_plate_nesting(vae.model, vae.guide, (x,), {}) == 1
    tr = particle_traces(vae.model, vae.guide, (x,), {}, num_particles, 1)
    assert (tr.num_particles, tr.batch_size, tr.data_scale, tr.num_dims) == (num_particles, B, 1.0, 2)
    assert tr.guide_trace.nodes["z"]["value"].shape == (num_particles, B, LATENT)
    lw = log_weights(tr)
    assert lw.shape == (num_particles, B)
    lp_z, lp_x, lq_z = _vae_parts(vae, x, tr)
    assert torch.allclose(lw, lp_z + lp_x - lq_z, atol=1e-5)
    # different particles are different draws
    if num_particles > 1:
        assert lw.std(0).min() > 0


def test_num_particles_must_be_positive(vae, x):
    with pytest.raises(ValueError, match="num_particles must be >= 1"):
        particle_traces(vae.model, vae.guide, (x,), {}, 0, 1)


# --------------------------------------------------------------------------------------------
# nested plates
# --------------------------------------------------------------------------------------------

W = torch.linspace(-1.0, 1.0, D)  # x_bd ~ N(z_b * w_d, 0.5²) with a scalar latent per datapoint


def _guide_scalar(x, mask=None, data_dim=-1):
    with pyro.plate("data", len(x), dim=data_dim):
        loc = x.mean(-1)
        pyro.sample("z", dist.Normal(loc if data_dim == -1 else loc.unsqueeze(-1), 0.8))


def _model_event(x, mask=None):
    with pyro.plate("data", len(x), dim=-1):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with poutine.mask(mask=True if mask is None else mask):
            pyro.sample("x", dist.Normal(z.unsqueeze(-1) * W, 0.5).to_event(1), obs=x)


def _model_pixels_inner(x, mask=None):  # "pixels" (dim -1) inside "data" (dim -2)
    with pyro.plate("data", len(x), dim=-2):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("pixels", x.shape[-1], dim=-1), poutine.mask(mask=True if mask is None else mask):
            pyro.sample("x", dist.Normal(z * W, 0.5), obs=x)


def _model_pixels_outer_dim(x, mask=None):  # "data" at dim -1, "pixels" at dim -2: x is stored transposed
    with pyro.plate("data", len(x), dim=-1):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("pixels", x.shape[-1], dim=-2), poutine.mask(mask=True if mask is None else mask):
            pyro.sample("x", dist.Normal(z * W.unsqueeze(-1), 0.5), obs=x.T)


def _by_hand(tr, x, mask=None):
    """log p(z) + Σ_d [mask] log N(x_d | z w_d, 0.5²) − log q(z|x), shape (K, B)."""
    z = tr.guide_trace.nodes["z"]["value"].reshape(tr.num_particles, -1)  # (K, B)
    lp_x = dist.Normal(z.unsqueeze(-1) * W, 0.5).log_prob(x)  # (K, B, D)
    if mask is not None:
        lp_x = lp_x * torch.as_tensor(mask, dtype=lp_x.dtype)
    lq = dist.Normal(x.mean(-1), 0.8).log_prob(z)
    return dist.Normal(0.0, 1.0).log_prob(z) + lp_x.sum(-1) - lq


@pytest.mark.parametrize(
    "model, data_dim",
    [(_model_pixels_inner, -2), (_model_pixels_outer_dim, -1)],
    ids=["pixels_inside_data", "data_at_dim_-1"],
)
def test_nested_plate_sites_are_summed_over_the_inner_plate(x, model, data_dim):
    def guide(x, mask=None):
        _guide_scalar(x, data_dim=data_dim)

    assert guess_max_plate_nesting(model, guide, (x,), {}) == 2
    tr = particle_traces(model, guide, (x,), {}, K, 2)
    lp, in_plate = site_log_prob(tr.model_trace.nodes["x"], tr)
    assert in_plate and lp.shape == (K, B)
    lw = log_weights(tr)
    assert lw.shape == (K, B)
    assert torch.allclose(lw, _by_hand(tr, x), atol=1e-5)

    # the same numbers as the flat model with .to_event(1), given the same draws
    pyro.set_rng_seed(3)
    nested = log_weights(particle_traces(model, guide, (x,), {}, K, 2))
    pyro.set_rng_seed(3)
    flat = log_weights(particle_traces(_model_event, _guide_scalar, (x,), {}, K, 1))
    assert torch.allclose(nested, flat, atol=1e-5)


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------


def test_datapoint_mask_drops_the_likelihood_of_masked_points(vae, x):
    mask = torch.tensor([True, False, True, True, False, True, True, True])

    def model(x):
        with poutine.mask(mask=mask):
            vae.model(x)

    tr = particle_traces(model, vae.guide, (x,), {}, K, 1)
    lp_z, lp_x, lq_z = _vae_parts(vae, x, tr)
    lw = log_weights(tr)
    # masked datapoints keep neither their likelihood nor their prior: only −log q remains
    assert torch.allclose(lw[:, mask], (lp_z + lp_x - lq_z)[:, mask], atol=1e-5)
    assert torch.allclose(lw[:, ~mask], -lq_z[:, ~mask], atol=1e-5)


@pytest.mark.parametrize(
    "model, data_dim, transpose",
    [(_model_pixels_inner, -2, False), (_model_pixels_outer_dim, -1, True)],
    ids=["pixels_inside_data", "data_at_dim_-1"],
)
def test_pixel_mask_in_a_nested_plate(x, model, data_dim, transpose):
    mask = torch.rand(B, D) > 0.4
    assert 0 < int(mask.sum()) < B * D

    def guide(x, mask=None):
        _guide_scalar(x, data_dim=data_dim)

    tr = particle_traces(model, guide, (x,), {"mask": mask.T if transpose else mask}, K, 2)
    assert torch.allclose(log_weights(tr), _by_hand(tr, x, mask), atol=1e-5)


def test_boolean_mask_false_drops_the_site(x):
    """``poutine.mask(mask=False)`` (a Python bool, allowed by Pyro) drops the site entirely."""
    tr = particle_traces(_model_event, _guide_scalar, (x,), {"mask": False}, K, 1)
    assert tr.model_trace.nodes["x"]["mask"] is False
    lw = log_weights(tr)
    z = tr.guide_trace.nodes["z"]["value"]
    expected = dist.Normal(0.0, 1.0).log_prob(z) - dist.Normal(x.mean(-1), 0.8).log_prob(z)
    assert torch.allclose(lw, expected, atol=1e-5)
    tr = particle_traces(_model_event, _guide_scalar, (x,), {"mask": True}, K, 1)
    assert torch.allclose(log_weights(tr), _by_hand(tr, x), atol=1e-5)


# --------------------------------------------------------------------------------------------
# scales: subsampling and poutine.scale
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_data", [None, B, 40])
def test_data_scale_is_num_data_over_batch(vae, x, num_data):
    tr = particle_traces(vae.model, vae.guide, (x,), {"num_data": num_data}, K, 1)
    expected = (num_data or B) / B
    assert tr.data_scale == expected and tr.batch_size == B
    assert tr.model_trace.nodes["x"]["scale"] == expected  # Pyro scaled the sites ...
    # ... but the per-datapoint weights are not: they equal the unsubsampled ones, same draws
    pyro.set_rng_seed(5)
    lw = log_weights(particle_traces(vae.model, vae.guide, (x,), {"num_data": num_data}, K, 1))
    pyro.set_rng_seed(5)
    lw_full = log_weights(particle_traces(vae.model, vae.guide, (x,), {}, K, 1))
    assert torch.equal(lw, lw_full)


def test_num_data_smaller_than_the_batch_is_refused(vae, x):
    with pytest.raises(ValueError, match="num_data=4 is smaller than the minibatch"):
        vae.model(x, num_data=4)


@pytest.mark.parametrize("num_data", [None, 40])
def test_poutine_scale_is_relative_to_the_subsample_scale(vae, x, num_data):
    scaled_model = poutine.scale(vae.model, scale=2.0)
    tr = particle_traces(scaled_model, vae.guide, (x,), {"num_data": num_data}, K, 1)
    data_scale = (num_data or B) / B
    assert tr.data_scale == data_scale
    assert tr.model_trace.nodes["x"]["scale"] == pytest.approx(2.0 * data_scale)
    assert tr.guide_trace.nodes["z"]["scale"] == pytest.approx(data_scale)
    lp_z, lp_x, lq_z = _vae_parts(vae, x, tr)
    assert torch.allclose(log_weights(tr), 2.0 * (lp_z + lp_x) - lq_z, atol=1e-4)


def test_poutine_scale_on_a_single_site_and_on_the_guide(vae, x):
    def model(x, num_data=None):
        with pv.vae.data_plate(x, num_data):
            z = pyro.sample("z", vae.prior())
            with poutine.scale(scale=0.5):  # e.g. a tempered likelihood
                pyro.sample("x", vae.decoder(z), obs=x)

    guide = poutine.scale(vae.guide, scale=3.0)
    tr = particle_traces(model, guide, (x,), {"num_data": 40}, K, 1)
    lp_z, lp_x, lq_z = _vae_parts(vae, x, tr)
    assert torch.allclose(log_weights(tr), lp_z + 0.5 * lp_x - 3.0 * lq_z, atol=1e-4)


def test_per_datapoint_tensor_scale(vae, x):
    weights = torch.linspace(0.5, 2.0, B)

    def model(x):
        with poutine.scale(scale=weights):
            vae.model(x)

    tr = particle_traces(model, vae.guide, (x,), {}, K, 1)
    lp_z, lp_x, lq_z = _vae_parts(vae, x, tr)
    assert torch.allclose(log_weights(tr), weights * (lp_z + lp_x) - lq_z, atol=1e-4)


# --------------------------------------------------------------------------------------------
# plate errors
# --------------------------------------------------------------------------------------------


def test_global_latent_raises_plate_error(x):
    def model(x):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(g.unsqueeze(-1).expand(g.shape + (D,)), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("g", dist.Normal(0.5, 1.0))

    tr = particle_traces(model, guide, (x,), {}, K, 1)
    _, in_plate = site_log_prob(tr.model_trace.nodes["g"], tr)
    assert not in_plate
    with pytest.raises(PlateError, match=r"'g' sits outside the 'data' plate.*move it inside"):
        log_weights(tr)


def test_missing_or_sequential_data_plate_raises_plate_error(x):
    def model(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.unsqueeze(-1), 1.0).to_event(2), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0).to_event(1))

    with pytest.raises(PlateError, match=r"no sample site sits in a plate named 'data'"):
        particle_traces(model, guide, (x,), {}, K, 0)

    def seq_model(x):
        for i in pyro.plate("data", len(x)):
            z = pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))
            pyro.sample(f"x_{i}", dist.Normal(z.unsqueeze(-1) * torch.ones(D), 1.0).to_event(1), obs=x[i])

    def seq_guide(x):
        for i in pyro.plate("data", len(x)):
            pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))

    with pytest.raises(PlateError, match="must be vectorized"):
        particle_traces(seq_model, seq_guide, (x,), {}, K, 0)
