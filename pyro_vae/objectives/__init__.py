"""Objectives: bounds on log p(x) as :class:`pyro.infer.ELBO` subclasses.

Which one should I use? :class:`ELBO` (closed-form KL when available) is the default and the
cheapest. See ``docs/objectives.md`` for the importance-weighted family.

Every objective works three ways::

    SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=objective)   # Pyro
    loss_module = objective(vae.model, vae.guide)                               # torch / Lightning
    pyro_vae.fit(vae, objective, data)                                          # our trainer
"""

from .base import Objective, Terms, log_mean_exp
from .elbo import ELBO

__all__ = ["Objective", "Terms", "ELBO", "log_mean_exp"]
