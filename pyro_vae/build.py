"""Build components, a VAE and an objective from a :class:`~pyro_vae.config.Config`.

The name -> factory tables live in :mod:`pyro_vae.registry` (re-exported here); adding a
component to the config and the CLI is one line there.
"""

from __future__ import annotations

import pyro.infer
import torch

from . import objectives as O
from .config import Config
from .registry import DECODERS, ENCODERS, OBJECTIVES, PRIORS
from .vae import VAE


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
