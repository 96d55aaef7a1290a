"""Measured proposals for the library, timed by the suite next to the library's current code.

* :data:`ProposedELBO` and :data:`proposed_train_step` were proposals for ``objectives/elbo.py``
  (a default-components branch of ``ELBO._fast_loss`` without distribution objects) and
  ``train/fit.py`` (the gradient norm only when clipping or asked for). Both have been adopted,
  so they are now the library's own ``ELBO`` and ``train_step``; the names stay so the suite's
  "proposed" rows (and ``docs/benchmarks.md`` written before the adoption) keep their meaning.
* :class:`ProposedELBOOneDNN` — a further, not adopted, step: the same ELBO with the encoder's
  and decoder's MLP bodies through oneDNN's matmul (:func:`pyro_vae.objectives.iwae.run_net`,
  as the IWAE and log-likelihood fast paths already do).
* :class:`ProposedBetaVAE`, :class:`ProposedKLWarmup`, :class:`ProposedFreeBits` — a proposal for
  ``objectives/weighting.py``: the KL-weighting wrappers have no ``_fast_loss`` and always trace.
  When they wrap a plain :class:`~pyro_vae.objectives.ELBO` of the library's default components,
  these compute the weighted (or clamped) ELBO from the ELBO's default-components branch
  (:func:`elbo_default_parts`, that branch with the KL kept per latent dimension) — the same
  draws, numbers and ``last_terms``; anything else traces as today. Wrapping
  :class:`ProposedELBOOneDNN` instead of ``ELBO()`` adds its oneDNN matmuls.

``tests/test_fast_paths.py`` checks that the ELBO proposals compute what the traced path computes,
``tests/test_hand_objectives.py`` the wrapper proposals.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pyro.infer.util import is_validation_enabled

from pyro_vae.objectives import ELBO, BetaVAE, FreeBits, KLWarmup, Terms
from pyro_vae.objectives.iwae import bernoulli_logits, run_net
from pyro_vae.train.fit import train_step

#: adopted: the library's ELBO (its default-components branch was this proposal)
ProposedELBO = ELBO
#: adopted: the library's train_step (gradient norm only when clipping or ``grad_norm=True``)
proposed_train_step = train_step


class ProposedELBOOneDNN(ELBO):
    """:class:`pyro_vae.objectives.ELBO` with the MLP bodies of its default-components branch
    through oneDNN's matmul."""

    _run_net = staticmethod(run_net)


# -- fast paths for the KL-weighting wrappers of the ELBO ----------------------------------------------
def elbo_default_parts(elbo: ELBO, vae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``ELBO._default_components_branch`` keeping the KL per datapoint and latent dimension:
    ``(Σ_b E_q log p(x_b|z), KL (B, L))``, or ``None`` where that branch does not apply.

    The same operations in the same order as the branch (same draws, same numbers); the library
    change is to return ``kl`` unsummed from the branch and sum it in ``ELBO._fast_loss``.
    """
    from pyro_vae.encoders import _MIN_SCALE, DiagNormalEncoder
    from pyro_vae.priors import StandardNormalPrior

    K = elbo.num_particles
    mods = vae._modules
    enc, dec, prior = mods["encoder"], mods["decoder"], mods["prior"]
    if not (type(enc) is DiagNormalEncoder and type(prior) is StandardNormalPrior and elbo.analytic_kl
            and elbo.kl_sites.get("z") != "monte carlo"):
        return None
    h = elbo._run_net(enc.net, x if enc.input_scale == 1.0 else x * enc.input_scale)
    loc, log_scale = h[..., : enc.latent_dim], h[..., enc.latent_dim : 2 * enc.latent_dim]
    sd = log_scale.exp() + _MIN_SCALE
    if is_validation_enabled() and not bool(((loc == loc).all() & (sd > 0).all())):
        return None
    eps = torch.empty((K, *loc.shape), dtype=loc.dtype, device=loc.device).normal_()
    z = loc + eps * sd
    zz = z if K > 1 else z[0]
    net = bernoulli_logits(dec)
    if net is not None:
        logits = elbo._run_net(net, zz)
        rec = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    else:
        rec = dec(zz).log_prob(x)
    kl = 0.5 * (loc.square() + sd.square() - 1.0) - sd.log()  # (B, L): KL(N(loc, sd²) ‖ N(0, 1)) per dim
    elbo.kl_sites["z"] = "analytic"
    return (rec.sum() if K == 1 else rec.sum() / K), kl


def _plain_elbo(objective: Any) -> bool:
    """A library ELBO, or a subclass that changes only how the networks run (``_run_net``)."""
    cls = type(objective)
    return isinstance(objective, ELBO) and all(
        getattr(cls, name) is getattr(ELBO, name) for name in ("_loss", "_fast_loss", "_default_components_branch", "_kl")
    )


def _fast_inputs(wrapper: Any, x: torch.Tensor, num_data: int | None) -> float | None:
    """N / B if ``wrapper`` wraps a plain library ELBO and the call is valid, else ``None``."""
    if not _plain_elbo(wrapper.objective) or (num_data is not None and num_data < x.shape[0]):
        return None
    return 1.0 if num_data is None else num_data / x.shape[0]


class _FastLatentScaled:
    """``_fast_loss`` for :class:`BetaVAE` / :class:`KLWarmup` of a plain ELBO: N/B Σ_b (rec_b − β KL_b)."""

    def _fast_loss(self, vae: Any, x: torch.Tensor, num_data: int | None) -> tuple[torch.Tensor, Terms] | None:
        scale = _fast_inputs(self, x, num_data)
        parts = None if scale is None else elbo_default_parts(self.objective, vae, x)
        if parts is None:
            return None  # trace (the warm-up counter has not advanced)
        rec_sum, kl = parts
        beta = self._current_beta()  # advances KLWarmup's counter, as _programs does
        self.last_beta = beta
        kl_sum = kl.sum()
        B = x.shape[0]
        bound_sum = scale * (rec_sum - beta * kl_sum)
        terms = Terms(bound=(bound_sum / (scale * B)).detach(), reconstruction=(rec_sum / B).detach(),
                      kl=(kl_sum / B).detach())
        return -bound_sum, terms


class ProposedBetaVAE(_FastLatentScaled, BetaVAE):
    """:class:`pyro_vae.objectives.BetaVAE` with a fast path for a plain ELBO."""


class ProposedKLWarmup(_FastLatentScaled, KLWarmup):
    """:class:`pyro_vae.objectives.KLWarmup` with a fast path for a plain ELBO."""


class ProposedFreeBits(FreeBits):
    """:class:`pyro_vae.objectives.FreeBits` with a fast path for a plain ELBO:
    −N · (mean_b rec_b − Σ_j max(λ, KL̄_j)), written as the ELBO loss plus N · Σ_j max(0, λ − KL̄_j)
    as :meth:`FreeBits._loss` does."""

    def _fast_loss(self, vae: Any, x: torch.Tensor, num_data: int | None) -> tuple[torch.Tensor, Terms] | None:
        scale = _fast_inputs(self, x, num_data)
        if scale is None or not self.analytic_kl:
            return None
        parts = elbo_default_parts(self.objective, vae, x)
        if parts is None:
            return None
        rec_sum, kl = parts
        B = x.shape[0]
        kl_sum = kl.sum()
        groups = kl if self.groups == "dim" else kl.sum(-1, keepdim=True)
        kl_bar = groups.mean(0)
        penalty = torch.clamp(self.threshold - kl_bar, min=0.0).sum()
        self.kl_sites["z"] = "analytic"
        self.last_group_kl = {"z": kl_bar.detach()}
        bound_sum = scale * (rec_sum - kl_sum)
        n_total = scale * B
        terms = Terms(bound=(bound_sum / n_total - penalty).detach(), reconstruction=(rec_sum / B).detach(),
                      kl=(kl_sum / B).detach())
        return -bound_sum + n_total * penalty, terms


__all__ = [
    "ProposedELBO",
    "ProposedELBOOneDNN",
    "proposed_train_step",
    "elbo_default_parts",
    "ProposedBetaVAE",
    "ProposedKLWarmup",
    "ProposedFreeBits",
]
