"""Name -> factory tables: what each config value of ``encoder``, ``decoder``, ``prior`` and
``objective`` builds.

:mod:`pyro_vae.config` reads the keys (the valid choices), :mod:`pyro_vae.build` calls the
factories. This module imports neither: registering a component is one line here, and the three
modules form no import cycle (``registry`` <- ``config`` <- ``build``).

Every factory takes the run's :class:`~pyro_vae.config.Config` first (only its attributes are
read):

* ``ENCODERS[name](config, x_dim, image_shape)`` -> :class:`~pyro_vae.encoders.Encoder`
* ``DECODERS[name](config, x_dim, image_shape)`` -> :class:`~pyro_vae.decoders.Decoder`
* ``PRIORS[name](config, encoder, init, unit_interval)`` -> :class:`~pyro_vae.priors.Prior`
  (``init``: pseudo-inputs for the VampPrior or ``None``)
* ``OBJECTIVES[name](config)`` -> a ``pyro.infer.ELBO`` (before β / warm-up / free-bits wrappers)
* ``MODEL_NAMES``: the values of the ``model`` key; the structured models' factories are
  :data:`pyro_vae.build.MODELS` (they take their encoder and decoder from ``ENCODERS`` /
  ``DECODERS`` with the widths their inputs need)
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import decoders as D
from . import encoders as E
from . import objectives as O
from . import priors as P

Factory = Callable[..., Any]


def _net_kwargs(c: Any, image_shape: tuple[int, ...] | None) -> dict[str, Any]:
    return {"hidden": tuple(c.hidden), "activation": c.activation, "network": c.network, "image_shape": image_shape}


def _enc_kwargs(c: Any, image_shape: tuple[int, ...] | None) -> dict[str, Any]:
    # 8-bit data: the likelihood scores integers, the encoder network sees [0, 1]
    return {**_net_kwargs(c, image_shape), "input_scale": 1.0 / 255.0 if c.pixel_scale == "uint8" else 1.0}


ENCODERS: dict[str, Factory] = {
    "diag_normal": lambda c, x_dim, shp: E.DiagNormalEncoder(x_dim, c.latent_dim, **_enc_kwargs(c, shp)),
    "low_rank_normal": lambda c, x_dim, shp: E.LowRankNormalEncoder(x_dim, c.latent_dim, rank=c.encoder_rank, **_enc_kwargs(c, shp)),
    "iaf": lambda c, x_dim, shp: E.IAFEncoder(x_dim, c.latent_dim, num_flows=c.num_flows, **_enc_kwargs(c, shp)),
}

DECODERS: dict[str, Factory] = {
    "bernoulli": lambda c, x_dim, shp: D.BernoulliDecoder(c.latent_dim, x_dim, **_net_kwargs(c, shp)),
    "continuous_bernoulli": lambda c, x_dim, shp: D.ContinuousBernoulliDecoder(c.latent_dim, x_dim, **_net_kwargs(c, shp)),
    "gaussian": lambda c, x_dim, shp: D.GaussianDecoder(
        c.latent_dim, x_dim, scale=c.gaussian_scale if c.gaussian_scale > 0 else None, **_net_kwargs(c, shp)
    ),
    "discretized_logistic": lambda c, x_dim, shp: D.DiscretizedLogisticDecoder(c.latent_dim, x_dim, **_net_kwargs(c, shp)),
    "poisson": lambda c, x_dim, shp: D.PoissonDecoder(c.latent_dim, x_dim, **_net_kwargs(c, shp)),
    "negative_binomial": lambda c, x_dim, shp: D.NegativeBinomialDecoder(c.latent_dim, x_dim, **_net_kwargs(c, shp)),
}


def _vamp(c: Any, encoder: E.Encoder, init: torch.Tensor | None, unit: bool) -> P.Prior:
    return P.VampPrior(encoder, num_pseudo_inputs=c.prior_components, init=init, unit_interval=unit)


PRIORS: dict[str, Factory] = {
    "standard_normal": lambda c, enc, init, unit: P.StandardNormalPrior(c.latent_dim),
    "diagonal_gaussian": lambda c, enc, init, unit: P.DiagonalGaussianPrior(c.latent_dim),
    "mixture_gaussian": lambda c, enc, init, unit: P.MixtureGaussianPrior(c.latent_dim, c.prior_components),
    "vamp": _vamp,
    "flow": lambda c, enc, init, unit: P.FlowPrior(c.latent_dim, num_flows=c.num_flows),
}

OBJECTIVES: dict[str, Factory] = {
    "elbo": lambda c: O.ELBO(num_particles=c.num_particles),
    "iwae": lambda c: O.IWAE(num_particles=c.num_particles),
    "iwae_stl": lambda c: O.IWAE(num_particles=c.num_particles, gradient="stl"),
    "dreg": lambda c: O.IWAE(num_particles=c.num_particles, gradient="dreg"),
    "renyi": lambda c: O.RenyiBound(alpha=c.renyi_alpha, num_particles=c.num_particles),
    "miwae": lambda c: O.MIWAE(num_outer=c.num_outer, num_inner=c.num_particles),
    "ciwae": lambda c: O.CIWAE(beta=c.ciwae_beta, num_particles=c.num_particles),
    "piwae": lambda c: O.PIWAE(num_outer=c.num_outer, num_inner=c.num_particles, encoder_gradient="dreg"),
}



#: every value the ``model`` key accepts. ``"vae"`` is built from the four tables above
#: (:func:`pyro_vae.build.build_vae`); the structured models' factories are
#: :data:`pyro_vae.build.MODELS` (they live there because :mod:`pyro_vae.models` trains with
#: :mod:`pyro_vae.train`, which imports :mod:`pyro_vae.config`: here they would close an import cycle)
MODEL_NAMES = ("vae", "hierarchical", "conditional", "semisupervised")

__all__ = ["ENCODERS", "DECODERS", "PRIORS", "OBJECTIVES", "MODEL_NAMES", "Factory"]
