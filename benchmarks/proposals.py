"""Measured proposals for files the benchmark suite's owner does not own.

The suite times these next to the library's current code so the proposals come with numbers;
``tests/test_fast_paths.py`` checks that they compute what the current code computes.

* :class:`ProposedELBO` — for ``pyro_vae/objectives/elbo.py``: ``ELBO._fast_loss`` for the
  library's default components (:class:`~pyro_vae.encoders.DiagNormalEncoder` guide,
  :class:`~pyro_vae.priors.StandardNormalPrior`) computes q's location and scale from the
  encoder's heads and the closed-form KL from them, instead of building two validated
  ``Normal(...).to_event(1)`` objects and dispatching ``kl_divergence``; a
  :class:`~pyro_vae.decoders.BernoulliDecoder` likelihood is the binary cross-entropy of the
  decoder's logits, without the ``Bernoulli(...).to_event(1)`` object. The draws and the
  likelihood are bit-for-bit those of the traced path (the same tensor operations in the same
  order); the KL is the same closed form written for N(0, I) (equal to rounding);
  with Pyro validation on, one combined check (loc not NaN, scale > 0) replaces the two
  distributions' constraint checks, and a failing check falls back to the current path, which
  raises the usual error. Any other component falls back to the current path.
* :func:`proposed_train_step` — for ``pyro_vae/train/fit.py``: ``train_step`` without the
  total-gradient-norm computation when no clipping is asked for (``clip_grad_norm_(params, inf)``
  costs a norm per parameter, a stack, a norm and a host sync every step); ``fit`` would compute
  it only when ``grad_clip`` is set or a new ``log_grad_norm=True`` asks for it.
* :class:`ProposedELBOOneDNN` — a further step for ``elbo.py``: the same, with the encoder's and
  decoder's MLP bodies through oneDNN's matmul (:func:`pyro_vae.objectives.iwae.run_net`, as
  the IWAE and log-likelihood fast paths already do).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from pyro.infer.util import is_validation_enabled

from pyro_vae.encoders import _MIN_SCALE, DiagNormalEncoder
from pyro_vae.objectives import ELBO, Terms
from pyro_vae.objectives.iwae import bernoulli_logits, run_net
from pyro_vae.priors import StandardNormalPrior
from pyro_vae.train.fit import StepInfo


class ProposedELBO(ELBO):
    """:class:`pyro_vae.objectives.ELBO` with the proposed ``_fast_loss`` (see module docstring).

    ``onednn = True`` (the :class:`ProposedELBOOneDNN` variant) also runs the encoder's and
    decoder's MLP bodies through :func:`pyro_vae.objectives.iwae.run_net` (oneDNN matmul, as the
    IWAE fast path does) — a further proposal, measured separately.
    """

    onednn: bool = False

    def _fast_loss(self, vae, x: torch.Tensor, num_data: int | None) -> tuple[torch.Tensor, Terms] | None:
        mods = vae._modules  # the components, without PyroModule's attribute lookup
        enc, dec, prior = mods["encoder"], mods["decoder"], mods["prior"]
        if not (
            type(enc) is DiagNormalEncoder
            and type(prior) is StandardNormalPrior
            and self.analytic_kl
            and self.kl_sites.get("z") != "monte carlo"
        ):
            return super()._fast_loss(vae, x, num_data)
        K, B = self.num_particles, x.shape[0]
        if num_data is not None and num_data < B:
            return None  # let the traced path raise its error
        if self.onednn:  # DiagNormalEncoder._heads with the body through oneDNN
            h = run_net(enc.net, x if enc.input_scale == 1.0 else x * enc.input_scale)
            d = enc.latent_dim
            loc, log_scale = h[..., :d], h[..., d : 2 * d]
        else:
            loc, log_scale, _ = enc._heads(x)
        sd = log_scale.exp() + _MIN_SCALE  # DiagNormalEncoder.forward's scale
        if is_validation_enabled() and not bool(((loc == loc).all() & (sd > 0).all())):
            return super()._fast_loss(vae, x, num_data)  # raises Normal's validation error
        # q.rsample((K,)): the same draws (Normal.rsample: empty(shape).normal_(), loc + eps * scale)
        eps = torch.empty((K, *loc.shape), dtype=loc.dtype, device=loc.device).normal_()
        z = loc + eps * sd
        zz = z if K > 1 else z[0]  # K = 1: the decoder on (B, L), as MLP folds (1, B, L) anyway
        net = bernoulli_logits(dec)
        if net is not None:  # Bernoulli(logits).to_event(1).log_prob(x): the same operations, no objects
            logits = run_net(net, zz) if self.onednn else net(zz)
            rec = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        else:
            rec = dec(zz).log_prob(x)  # (K, B) or (B,)
        # KL(N(loc, sd²) ‖ N(0, I)) in closed form (StandardNormalPrior is N(0, I) by definition)
        kl = (0.5 * (loc.square() + sd.square() - 1.0) - sd.log()).sum(-1)
        self.kl_sites["z"] = "analytic"
        scale = 1.0 if num_data is None else num_data / B
        kl_sum = kl.sum()
        rec_sum = rec.sum() if K == 1 else rec.sum() / K
        bound_sum = scale * (rec_sum - kl_sum)
        n_total = scale * B
        terms = Terms(
            bound=(bound_sum / n_total).detach(),
            reconstruction=(rec_sum / B).detach(),
            kl=(kl_sum / B).detach(),
        )
        return -bound_sum, terms


class ProposedELBOOneDNN(ProposedELBO):
    """:class:`ProposedELBO` with the MLP bodies through oneDNN's matmul."""

    onednn = True


def proposed_train_step(
    loss_fn: Callable[..., torch.Tensor],
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    args: tuple,
    kwargs: dict,
    num_data: int,
    grad_clip: float | None = None,
    terms: Callable[[], Any] | None = None,
    grad_norm: bool = False,
) -> StepInfo:
    """``pyro_vae.train.fit.train_step`` computing the gradient norm only when clipping or asked
    (``grad_norm=True``); otherwise ``StepInfo.grad_norm`` is ``nan``."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(*args, **kwargs)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {float(loss.detach())}")
    loss.backward()
    norm = math.nan
    if grad_clip is not None or grad_norm:
        max_norm = grad_clip if grad_clip is not None else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    optimizer.step()
    t = terms() if terms is not None else None
    rec = float(t.reconstruction) if t is not None else math.nan
    kl = float(t.kl) if t is not None else math.nan
    return StepInfo(float(loss.detach()) / num_data, rec, kl, norm)


__all__ = ["ProposedELBO", "ProposedELBOOneDNN", "proposed_train_step"]
