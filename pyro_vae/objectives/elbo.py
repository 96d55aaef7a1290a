"""The evidence lower bound with closed-form KL wherever one is registered."""

from __future__ import annotations

import warnings

import torch
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
        """The same bound as the traced path for a plain VAE, without tracing (same draws)."""
        K, B = self.num_particles, x.shape[0]
        if num_data is not None and num_data < B:
            return None  # let the traced path raise its error
        scale = 1.0 if num_data is None else num_data / B
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
