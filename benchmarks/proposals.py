"""Measured proposals for the library, timed by the suite next to the library's current code.

* :data:`ProposedELBO` and :data:`proposed_train_step` were proposals for ``objectives/elbo.py``
  (a default-components branch of ``ELBO._fast_loss`` without distribution objects) and
  ``train/fit.py`` (the gradient norm only when clipping or asked for). Both have been adopted,
  so they are now the library's own ``ELBO`` and ``train_step``; the names stay so the suite's
  "proposed" rows (and ``docs/benchmarks.md`` written before the adoption) keep their meaning.
* :class:`ProposedELBOOneDNN` — a further, not adopted, step: the same ELBO with the encoder's
  and decoder's MLP bodies through oneDNN's matmul (:func:`pyro_vae.objectives.iwae.run_net`,
  as the IWAE and log-likelihood fast paths already do).
* The KL-weighting wrappers' fast path (``BetaVAE``, ``KLWarmup``, ``FreeBits`` around a plain
  ELBO of the default components) was proposed here and is adopted (``objectives/weighting.py``).

``tests/test_fast_paths.py`` checks that the ELBO proposals compute what the traced path computes.
"""

from __future__ import annotations

from pyro_vae.objectives import ELBO
from pyro_vae.objectives.iwae import run_net
from pyro_vae.train.fit import train_step

#: adopted: the library's ELBO (its default-components branch was this proposal)
ProposedELBO = ELBO
#: adopted: the library's train_step (gradient norm only when clipping or ``grad_norm=True``)
proposed_train_step = train_step


class ProposedELBOOneDNN(ELBO):
    """:class:`pyro_vae.objectives.ELBO` with the MLP bodies of its default-components branch
    through oneDNN's matmul."""

    _run_net = staticmethod(run_net)


__all__ = [
    "ProposedELBO",
    "ProposedELBOOneDNN",
    "proposed_train_step",
]
