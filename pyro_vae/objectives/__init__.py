"""Objectives: bounds on log p(x) as :class:`pyro.infer.ELBO` subclasses.

Which one should I use? :class:`ELBO` (closed-form KL when available) is the default and the
cheapest. :class:`IWAE` tightens the bound with K particles combined per datapoint; train its
encoder with ``gradient="dreg"`` (or use :class:`PIWAE`), whose encoder gradient does not lose
its signal as K grows. :class:`RenyiBound` interpolates between IWAE (α = 0) and the ELBO
(α → 1). :class:`MIWAE` and :class:`CIWAE` are the other bounds of Rainforth et al. (2018).
:class:`BetaVAE`, :class:`KLWarmup` and :class:`FreeBits` wrap any of them to reweight the KL.
A discrete latent with a few values: mark it for enumeration and the ELBO and the standard-gradient
importance-weighted bounds sum it out
exactly; one you cannot enumerate: :class:`VIMCO` (the IWAE bound with leave-one-out
score-function gradients).
See ``docs/objectives.md`` for the importance-weighted family.

Every objective works three ways::

    SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=objective)   # Pyro
    loss_module = objective(vae.model, vae.guide)                               # torch / Lightning
    pyro_vae.fit(vae, objective, data)                                          # our trainer
"""

from .base import Objective, Terms, log_mean_exp
from .elbo import ELBO
from .iwae import CIWAE, IWAE, MIWAE, PIWAE, ImportanceObjective
from .renyi import RenyiBound
from .vimco import VIMCO
from .weighting import BetaVAE, FreeBits, KLWarmup, ObjectiveWrapper, find_warmup, scale_latents

__all__ = [
    "Objective",
    "Terms",
    "ELBO",
    "log_mean_exp",
    "ImportanceObjective",
    "IWAE",
    "MIWAE",
    "CIWAE",
    "PIWAE",
    "RenyiBound",
    "VIMCO",
    "ObjectiveWrapper",
    "BetaVAE",
    "KLWarmup",
    "FreeBits",
    "scale_latents",
    "find_warmup",
]
