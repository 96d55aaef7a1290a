"""The evidence lower bound with closed-form KL wherever one is registered."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from pyro.infer.util import is_validation_enabled
from torch.distributions import kl_divergence

from ..traces import ParticleTraces, site_log_prob
from .base import Objective, Terms


class ELBO(Objective):
    """ELBO = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)), averaged over ``num_particles`` vectorized draws.

    With ``analytic_kl=True`` (default) each latent site whose (guide, prior) pair has a
    registered ``kl_divergence`` uses the closed form; the others use the Monte Carlo estimate
    log q(z|x) − log p(z). Unlike ``pyro.infer.TraceMeanField_ELBO``, which falls back silently,
    the choice is recorded per site in :attr:`kl_sites` (``{"z": "analytic"}``) and a fallback is
    announced once with a warning.

    Global sites (outside the data plate) are allowed and enter the bound once.

    Example:
        >>> import pyro_vae as pv
        >>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)),
        ...              pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
        >>> elbo = pv.objectives.ELBO()
        >>> _ = elbo.loss(vae.model, vae.guide, torch.zeros(3, 4))
        >>> elbo.kl_sites
        {'z': 'analytic'}

    References:
        Kingma, Welling (2014). Auto-encoding variational Bayes. ICLR.
    """

    def __init__(self, num_particles: int = 1, analytic_kl: bool = True, **kwargs) -> None:
        super().__init__(num_particles=num_particles, **kwargs)
        self.analytic_kl = analytic_kl
        #: per latent site: "analytic" or "monte carlo" (filled on first use)
        self.kl_sites: dict[str, str] = {}
        self._warned: set[str] = set()

    def _kl(self, guide_site: dict, model_site: dict) -> torch.Tensor | None:
        if not self.analytic_kl:
            return None
        name = guide_site["name"]
        if self.kl_sites.get(name) == "monte carlo":
            return None
        try:
            kl = kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            self.kl_sites[name] = "monte carlo"
            if name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"ELBO: no closed-form KL registered for site {name!r} "
                    f"({type(guide_site['fn']).__name__} vs {type(model_site['fn']).__name__}); "
                    "using the Monte Carlo estimate log q - log p",
                    RuntimeWarning,
                    stacklevel=4,
                )
            return None
        self.kl_sites[name] = "analytic"
        return kl

    def _fast_loss(self, vae, x: torch.Tensor, num_data: int | None) -> tuple[torch.Tensor, Terms] | None:
        """The same bound as the traced path for a plain VAE, without tracing (same draws).

        The library's default components (diagonal-Normal encoder, N(0, I) prior, Bernoulli
        decoder) take a specialised branch that skips building distribution objects: the same
        tensor operations in the same order (bit-for-bit draws and likelihood; the closed-form
        KL written for N(0, I), equal to rounding). Other components use their distributions.
        """
        K, B = self.num_particles, x.shape[0]
        if num_data is not None and num_data < B:
            return None  # let the traced path raise its error
        scale = 1.0 if num_data is None else num_data / B
        special = self._default_components_branch(vae, x, K)
        if special is not None:
            rec_sum, kl_sum = special[0], special[1].sum()
        else:
            q = vae.encoder(x)
            z = q.rsample((K,))  # the same draws as pyro.sample under a K-particle plate
            rec = vae.decoder(z).log_prob(x)  # (K, B)
            prior = vae.prior()
            kl = None
            if self.analytic_kl and self.kl_sites.get("z") != "monte carlo":
                kl = self._kl({"name": "z", "fn": q}, {"name": "z", "fn": prior})
            if kl is None:
                self.kl_sites.setdefault("z", "monte carlo")
                kl = q.log_prob(z) - prior.log_prob(z)  # (K, B)
                kl_sum = kl.sum() / K
            else:
                kl_sum = kl.sum()
            rec_sum = rec.sum() / K
        bound_sum = scale * (rec_sum - kl_sum)
        n_total = scale * B
        terms = Terms(
            bound=(bound_sum / n_total).detach(),
            reconstruction=(rec_sum / B).detach(),
            kl=(kl_sum / B).detach(),
        )
        return -bound_sum, terms

    @staticmethod
    def _run_net(net: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        """How the default-components branch runs a network body (a hook for matmul back ends)."""
        return net(h)

    def _default_components_branch(self, vae, x: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(Σ_b E_q log p(x_b|z), KL)`` for DiagNormalEncoder + StandardNormalPrior (+ Bernoulli
        likelihood without objects), or ``None`` for any other combination. ``KL`` is the closed
        form per datapoint and latent dimension, ``(B, L)`` (the KL-weighting wrappers use it
        per dimension)."""
        from ..encoders import _MIN_SCALE, DiagNormalEncoder
        from ..priors import StandardNormalPrior
        from .iwae import bernoulli_logits

        mods = vae._modules  # the components, without PyroModule's attribute lookup
        enc, dec, prior = mods["encoder"], mods["decoder"], mods["prior"]
        if not (type(enc) is DiagNormalEncoder and type(prior) is StandardNormalPrior and self.analytic_kl
                and self.kl_sites.get("z") != "monte carlo"):
            return None
        h = self._run_net(enc.net, x if enc.input_scale == 1.0 else x * enc.input_scale)  # enc._heads
        loc, log_scale = h[..., : enc.latent_dim], h[..., enc.latent_dim : 2 * enc.latent_dim]
        sd = log_scale.exp() + _MIN_SCALE  # DiagNormalEncoder.forward's scale
        if is_validation_enabled() and not bool(((loc == loc).all() & (sd > 0).all())):
            return None  # the general path raises Normal's validation error
        # q.rsample((K,)): Normal.rsample draws empty(shape).normal_() then loc + eps * scale
        eps = torch.empty((K, *loc.shape), dtype=loc.dtype, device=loc.device).normal_()
        z = loc + eps * sd
        zz = z if K > 1 else z[0]  # K = 1: the decoder on (B, L), as MLP folds (1, B, L) anyway
        net = bernoulli_logits(dec)
        if net is not None:  # Bernoulli(logits).to_event(1).log_prob(x) without the objects
            logits = self._run_net(net, zz)
            rec = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        else:
            rec = dec(zz).log_prob(x)
        kl = 0.5 * (loc.square() + sd.square() - 1.0) - sd.log()  # KL(N(loc, sd²) ‖ N(0, 1)) per dimension
        self.kl_sites["z"] = "analytic"
        return (rec.sum() if K == 1 else rec.sum() / K), kl

    def _loss(self, traces: ParticleTraces) -> tuple[torch.Tensor, Terms]:
        K = traces.num_particles
        mt, gt = traces.model_trace, traces.guide_trace
        local_rec = torch.zeros(())  # (K, B) per-datapoint terms, unscaled
        local_kl = torch.zeros(())
        global_total = torch.zeros(())  # already scaled, summed
        for name, msite in mt.nodes.items():
            if msite["type"] != "sample" or type(msite["fn"]).__name__ == "_Subsample":
                continue
            scale = msite["scale"]
            if msite["is_observed"]:
                lp, in_plate = site_log_prob(msite, traces, self.plate_name)
                if in_plate:
                    local_rec = local_rec + (scale / traces.data_scale) * lp
                else:
                    global_total = global_total + scale * lp.sum() / K
                continue
            gsite = gt.nodes.get(name)
            if gsite is None:
                raise ValueError(f"latent site {name!r} of the model has no matching site in the guide")
            kl = self._kl(gsite, msite)
            if kl is not None:
                kl_val, in_plate = _reduce_like(kl, gsite, traces, self.plate_name)
            else:
                if name not in self.kl_sites:
                    self.kl_sites[name] = "monte carlo"
                lq, in_plate = site_log_prob(gsite, traces, self.plate_name)
                lp, _ = site_log_prob(msite, traces, self.plate_name)
                kl_val = lq - lp
            if in_plate:
                local_kl = local_kl + (scale / traces.data_scale) * kl_val
            else:
                global_total = global_total - scale * kl_val.sum() / K
        # guide sites with no model counterpart (auxiliary variables) enter as -log q
        for name, gsite in gt.nodes.items():
            if gsite["type"] == "sample" and name not in mt.nodes and type(gsite["fn"]).__name__ != "_Subsample":
                lq, in_plate = site_log_prob(gsite, traces, self.plate_name)
                if in_plate:
                    local_kl = local_kl + lq
                else:
                    global_total = global_total - gsite["scale"] * lq.sum() / K
        per_point = local_rec - local_kl  # (K, B) or (1, B) / scalar
        B = traces.batch_size
        bound_sum = traces.data_scale * _sum_mean_k(per_point, K, B) + global_total
        loss = -bound_sum
        n_total = traces.data_scale * B
        terms = Terms(
            bound=(bound_sum / n_total).detach(),
            reconstruction=(_sum_mean_k(local_rec, K, B) / B).detach(),
            kl=(_sum_mean_k(local_kl, K, B) / B).detach(),
        )
        return loss, terms


def _sum_mean_k(t: torch.Tensor, K: int, B: int) -> torch.Tensor:
    """Σ_b mean_k of a (K|1, B|1) tensor that broadcasts to (K, B)."""
    if t.dim() == 0:
        return t * B
    return t.expand(K, B).sum() / K


def _reduce_like(value: torch.Tensor, site: dict, traces: ParticleTraces, plate_name: str):
    """Reduce a per-site tensor with the site's batch shape (e.g. a KL) to (K, B) like a log-prob."""
    fake = dict(site)
    fake["fn"] = _Constant(value)
    return site_log_prob(fake, traces, plate_name)


class _Constant:
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def log_prob(self, _value: torch.Tensor) -> torch.Tensor:
        return self.value


__all__ = ["ELBO"]
