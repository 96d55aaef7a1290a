"""Shared test registries: every objective, and every component buildable at a chosen ``x_dim``.

``OBJECTIVES`` is the one registry of objectives for the tests: a factory per readable name,
every concrete objective class of :mod:`pyro_vae.objectives` at least once
(``tests/test_contracts.py::test_objective_registry_covers_every_exported_objective`` fails
until a new one gets a line). Factories build a *fresh* objective on each call: objectives keep
per-call state (``last_terms``, ``kl_sites``, the step counter of :class:`KLWarmup`).

``PRIORS`` / ``ENCODERS`` / ``DECODERS`` mirror the registries of ``tests/test_components.py``
(same ids, same classes, same settings; a test checks that they stay in step), but each factory
takes ``x_dim`` so that MLP components can be paired with the conv ones (built for 784 pixels).
"""

from __future__ import annotations

from typing import Callable

import torch

from pyro_vae import decoders as D
from pyro_vae import encoders as E
from pyro_vae import objectives as O
from pyro_vae import priors as P

LATENT = 3
X_DIM = 5
HIDDEN = (16,)
IMAGE = 784  # conv components are built for flat 28x28 images

# --------------------------------------------------------------------------------------------
# objectives: one line per configuration
# --------------------------------------------------------------------------------------------

OBJECTIVES: dict[str, Callable[[], O.Objective]] = {
    "elbo": lambda: O.ELBO(),
    "elbo_k3": lambda: O.ELBO(num_particles=3),
    "elbo_mc": lambda: O.ELBO(analytic_kl=False),
    "elbo_mc_k3": lambda: O.ELBO(num_particles=3, analytic_kl=False),
    "iwae": lambda: O.IWAE(4),
    "iwae_stl": lambda: O.IWAE(4, gradient="stl"),
    "iwae_dreg": lambda: O.IWAE(4, gradient="dreg"),
    "miwae": lambda: O.MIWAE(2, 2),
    "miwae_stl": lambda: O.MIWAE(2, 2, gradient="stl"),
    "miwae_dreg": lambda: O.MIWAE(2, 2, gradient="dreg"),
    "ciwae": lambda: O.CIWAE(0.5, 4),
    "ciwae_stl": lambda: O.CIWAE(0.5, 4, gradient="stl"),
    "piwae": lambda: O.PIWAE(2, 2),
    "piwae_dreg": lambda: O.PIWAE(2, 2, encoder_gradient="dreg"),
    "renyi": lambda: O.RenyiBound(0.5, 4),
    "vimco": lambda: O.VIMCO(4),
    "beta_elbo": lambda: O.BetaVAE(O.ELBO(), 2.0),
    "beta_iwae": lambda: O.BetaVAE(O.IWAE(4), 0.5),
    "warmup_elbo": lambda: O.KLWarmup(O.ELBO(), 10),
    "warmup_iwae_dreg": lambda: O.KLWarmup(O.IWAE(4, gradient="dreg"), 10),
    "freebits_elbo_dim": lambda: O.FreeBits(O.ELBO(), 0.1, groups="dim"),
    "freebits_elbo_site": lambda: O.FreeBits(O.ELBO(), 0.1, groups="site"),
    "freebits_iwae": lambda: O.FreeBits(O.IWAE(4), 0.1),
}

#: exported classes that are bases to implement objectives with, not objectives themselves
ABSTRACT_OBJECTIVES = (O.Objective, O.ImportanceObjective, O.ObjectiveWrapper)


def objective_chain(objective: O.Objective) -> list[O.Objective]:
    """The objective and every objective it wraps (through the public ``.objective``)."""
    chain = [objective]
    while isinstance(getattr(chain[-1], "objective", None), O.Objective):
        chain.append(chain[-1].objective)
    return chain


def set_fast_path(objective: O.Objective, on: bool) -> O.Objective:
    """Set ``use_fast_path`` on the objective and on every objective it wraps."""
    for o in objective_chain(objective):
        o.use_fast_path = on
    return objective


# --------------------------------------------------------------------------------------------
# components, as factories of x_dim (conv ones need x_dim == IMAGE)
# --------------------------------------------------------------------------------------------

PRIORS: dict[str, Callable[[int], P.Prior]] = {
    "standard_normal": lambda x_dim: P.StandardNormalPrior(LATENT),
    "diagonal_gaussian": lambda x_dim: P.DiagonalGaussianPrior(LATENT),
    "mixture_gaussian": lambda x_dim: P.MixtureGaussianPrior(LATENT, num_components=4),
    "vamp_diag": lambda x_dim: P.VampPrior(E.DiagNormalEncoder(x_dim, LATENT, hidden=HIDDEN), 4),
    "vamp_iaf": lambda x_dim: P.VampPrior(E.IAFEncoder(x_dim, LATENT, hidden=HIDDEN, context_dim=4), 4),
    "flow": lambda x_dim: P.FlowPrior(LATENT, num_flows=2),
}

ENCODERS: dict[str, Callable[[int], E.Encoder]] = {
    "diag_normal_mlp": lambda x_dim: E.DiagNormalEncoder(x_dim, LATENT, hidden=HIDDEN),
    "diag_normal_conv": lambda x_dim: E.DiagNormalEncoder(x_dim, LATENT, hidden=HIDDEN, network="conv"),
    "low_rank_normal": lambda x_dim: E.LowRankNormalEncoder(x_dim, LATENT, rank=2, hidden=HIDDEN),
    "iaf": lambda x_dim: E.IAFEncoder(x_dim, LATENT, hidden=HIDDEN, context_dim=4),
}

DECODERS: dict[str, Callable[[int], D.Decoder]] = {
    "bernoulli": lambda x_dim: D.BernoulliDecoder(LATENT, x_dim, hidden=HIDDEN),
    "continuous_bernoulli": lambda x_dim: D.ContinuousBernoulliDecoder(LATENT, x_dim, hidden=HIDDEN),
    "gaussian_fixed": lambda x_dim: D.GaussianDecoder(LATENT, x_dim, hidden=HIDDEN, scale=0.3),
    "gaussian_learned": lambda x_dim: D.GaussianDecoder(LATENT, x_dim, hidden=HIDDEN),
    "discretized_logistic": lambda x_dim: D.DiscretizedLogisticDecoder(LATENT, x_dim, hidden=HIDDEN),
    "poisson": lambda x_dim: D.PoissonDecoder(LATENT, x_dim, hidden=HIDDEN),
    "negative_binomial": lambda x_dim: D.NegativeBinomialDecoder(LATENT, x_dim, hidden=HIDDEN),
    "bernoulli_conv": lambda x_dim: D.BernoulliDecoder(LATENT, x_dim, network="conv"),
    "discretized_logistic_conv": lambda x_dim: D.DiscretizedLogisticDecoder(LATENT, x_dim, network="conv"),
}

#: components whose network is convolutional: they only exist at x_dim == IMAGE
CONV = {"diag_normal_conv", "bernoulli_conv", "discretized_logistic_conv"}


# --------------------------------------------------------------------------------------------
# valid data per likelihood (BAD_DATA in test_components.py has the invalid counterparts)
# --------------------------------------------------------------------------------------------


def _uint8(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    x = torch.randint(0, 256, shape, generator=g).float()
    x[0, 0], x[-1, -1] = 0.0, 255.0  # the edge bins, which hold the tails' mass
    return x


#: a valid minibatch for each likelihood: ``DATA[type(decoder)](shape, generator)``
DATA: dict[type, Callable[[tuple[int, ...], torch.Generator], torch.Tensor]] = {
    D.BernoulliDecoder: lambda shape, g: torch.bernoulli(torch.full(shape, 0.4), generator=g),
    D.ContinuousBernoulliDecoder: lambda shape, g: torch.rand(shape, generator=g),
    D.GaussianDecoder: lambda shape, g: torch.randn(shape, generator=g),
    D.DiscretizedLogisticDecoder: _uint8,
    D.PoissonDecoder: lambda shape, g: torch.randint(0, 12, shape, generator=g).float(),
    D.NegativeBinomialDecoder: lambda shape, g: torch.randint(0, 12, shape, generator=g).float(),
}


def valid_data(decoder: D.Decoder, batch: int, seed: int = 1) -> torch.Tensor:
    """A ``(batch, x_dim)`` minibatch in the support of ``decoder``'s likelihood (checked)."""
    g = torch.Generator().manual_seed(seed)
    x = DATA[type(decoder)]((batch, decoder.x_dim), g)
    decoder.check_data(x)
    return x
