"""Build components, a VAE and an objective from a :class:`~pyro_vae.config.Config`.

Each registry maps a config name to a factory; adding a component to the CLI is one line.
"""

from __future__ import annotations

from typing import Any, Callable

import pyro.infer
import torch

from . import decoders as D
from . import encoders as E
from . import objectives as O
from . import priors as P
from .config import Config
from .vae import VAE

_Factory = Callable[..., Any]


def _net_kwargs(c: Config, image_shape: tuple[int, ...] | None) -> dict[str, Any]:
    return {"hidden": tuple(c.hidden), "activation": c.activation, "network": c.network, "image_shape": image_shape}


def _enc_kwargs(c: Config, image_shape: tuple[int, ...] | None) -> dict[str, Any]:
    # 8-bit data: the likelihood scores integers, the encoder network sees [0, 1]
    return {**_net_kwargs(c, image_shape), "input_scale": 1.0 / 255.0 if c.pixel_scale == "uint8" else 1.0}


ENCODERS: dict[str, _Factory] = {
    "diag_normal": lambda c, x_dim, shp: E.DiagNormalEncoder(x_dim, c.latent_dim, **_enc_kwargs(c, shp)),
    "low_rank_normal": lambda c, x_dim, shp: E.LowRankNormalEncoder(x_dim, c.latent_dim, rank=c.encoder_rank, **_enc_kwargs(c, shp)),
    "iaf": lambda c, x_dim, shp: E.IAFEncoder(x_dim, c.latent_dim, num_flows=c.num_flows, **_enc_kwargs(c, shp)),
}

DECODERS: dict[str, _Factory] = {
    "bernoulli": lambda c, x_dim, shp: D.BernoulliDecoder(c.latent_dim, x_dim, **_net_kwargs(c, shp)),
    "continuous_bernoulli": lambda c, x_dim, shp: D.ContinuousBernoulliDecoder(c.latent_dim, x_dim, **_net_kwargs(c, shp)),
    "gaussian": lambda c, x_dim, shp: D.GaussianDecoder(
        c.latent_dim, x_dim, scale=c.gaussian_scale if c.gaussian_scale > 0 else None, **_net_kwargs(c, shp)
    ),
    "discretized_logistic": lambda c, x_dim, shp: D.DiscretizedLogisticDecoder(c.latent_dim, x_dim, **_net_kwargs(c, shp)),
    "poisson": lambda c, x_dim, shp: D.PoissonDecoder(c.latent_dim, x_dim, **_net_kwargs(c, shp)),
    "negative_binomial": lambda c, x_dim, shp: D.NegativeBinomialDecoder(c.latent_dim, x_dim, **_net_kwargs(c, shp)),
}


def _vamp(c: Config, encoder: E.Encoder, init: torch.Tensor | None, unit: bool) -> P.Prior:
    return P.VampPrior(encoder, num_pseudo_inputs=c.prior_components, init=init, unit_interval=unit)


PRIORS: dict[str, _Factory] = {
    "standard_normal": lambda c, enc, init, unit: P.StandardNormalPrior(c.latent_dim),
    "diagonal_gaussian": lambda c, enc, init, unit: P.DiagonalGaussianPrior(c.latent_dim),
    "mixture_gaussian": lambda c, enc, init, unit: P.MixtureGaussianPrior(c.latent_dim, c.prior_components),
    "vamp": _vamp,
    "flow": lambda c, enc, init, unit: P.FlowPrior(c.latent_dim, num_flows=c.num_flows),
}

OBJECTIVES: dict[str, _Factory] = {
    "elbo": lambda c: O.ELBO(num_particles=c.num_particles),
    "iwae": lambda c: O.IWAE(num_particles=c.num_particles),
    "iwae_stl": lambda c: O.IWAE(num_particles=c.num_particles, gradient="stl"),
    "dreg": lambda c: O.IWAE(num_particles=c.num_particles, gradient="dreg"),
    "renyi": lambda c: O.RenyiBound(alpha=c.renyi_alpha, num_particles=c.num_particles),
    "miwae": lambda c: O.MIWAE(num_outer=c.num_outer, num_inner=c.num_particles),
    "ciwae": lambda c: O.CIWAE(beta=c.ciwae_beta, num_particles=c.num_particles),
    "piwae": lambda c: O.PIWAE(num_outer=c.num_outer, num_inner=c.num_particles, encoder_gradient="dreg"),
}


def build_vae(config: Config, x_dim: int, image_shape: tuple[int, ...] | None = None,
              train: torch.Tensor | None = None) -> VAE:
    """Build the VAE a config describes for data with ``x_dim`` features.

    ``train`` (optional) seeds the VampPrior's pseudo-inputs with training rows (fixed choice).
    """
    torch.manual_seed(config.seed)  # initial weights depend on the seed only
    shape = image_shape if config.network == "conv" else None
    encoder = ENCODERS[config.encoder](config, x_dim, shape)
    decoder = DECODERS[config.decoder](config, x_dim, shape)
    init = None
    unit = config.pixel_scale == "unit"
    if config.prior == "vamp" and train is not None:
        g = torch.Generator().manual_seed(config.seed)
        idx = torch.randperm(train.shape[0], generator=g)[: config.prior_components]
        init = train[idx].float()
        if init.shape[0] < config.prior_components:
            init = None
        elif unit:
            init = init * 0.98 + 0.01
    prior = PRIORS[config.prior](config, encoder, init, unit)
    return VAE(encoder, decoder, prior)


def build_objective(config: Config) -> pyro.infer.ELBO:
    """The training objective a config names, wrapped in β / warm-up / free bits when asked."""
    objective = OBJECTIVES[config.objective](config)
    if config.free_bits > 0:
        objective = O.FreeBits(objective, config.free_bits)
    if config.kl_warmup_steps > 0:
        objective = O.KLWarmup(objective, config.kl_warmup_steps, beta_end=config.kl_beta)
    elif config.kl_beta != 1.0:
        objective = O.BetaVAE(objective, config.kl_beta)
    return objective


__all__ = ["ENCODERS", "DECODERS", "PRIORS", "OBJECTIVES", "build_vae", "build_objective"]
