"""The evidence lower bound with closed-form KL wherever one is registered and valid."""

from __future__ import annotations

import warnings

import torch

from ..program import LatentSite, Particles, latent_kl
from .base import Objective, Terms


class ELBO(Objective):
    """ELBO = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)), averaged over ``num_particles`` vectorized draws.

    With ``analytic_kl=True`` (default) each latent site whose (guide, prior) pair has a
    registered ``kl_divergence`` uses the closed form — where it is valid: a closed-form
    KL(q(z_i|·) ‖ p(z_i|pa)) equals the Monte Carlo term in expectation only if the guide draws
    p's parents before z_i (a hierarchical model p: z2 → z1 → x with a bottom-up guide
    q: x → z1 → z2 breaks this for z1). The other sites use the Monte Carlo estimate
    log q(z|x) − log p(z). Unlike ``pyro.infer.TraceMeanField_ELBO``, the choice is recorded per
    site in :attr:`kl_sites` (``{"z": "analytic"}``) and a fallback is announced once with a
    warning that says why.

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

    def _kl(self, site: LatentSite) -> torch.Tensor:
        """KL(q ‖ p) of one latent site reduced to ``(K|1, B|1)``, unscaled; records the method."""
        analytic = self.analytic_kl and self.kl_sites.get(site.name) != "monte carlo"
        kl, method = latent_kl(site, analytic=analytic)
        name = site.name
        if method != "analytic":
            if analytic and name not in self._warned:
                self._warned.add(name)
                if method == "monte carlo (order)":
                    why = (f"the prior of site {name!r} may depend on latents that the guide draws after {name!r}, "
                           "where the closed form is not the expected log q - log p")
                else:
                    why = (f"no closed-form KL registered for site {name!r} "
                           f"({type(site.q).__name__} vs {type(site.p).__name__})")
                warnings.warn(f"ELBO: {why}; using the Monte Carlo estimate log q - log p", RuntimeWarning,
                              stacklevel=5)
            method = "monte carlo"
        self.kl_sites[name] = method
        return kl

    def _loss(self, particles: Particles) -> tuple[torch.Tensor, Terms]:
        K, B, ds = particles.num_particles, particles.batch_size, particles.data_scale
        beta = particles.beta
        kl_sum = None  # Σ_b mean_k of the per-datapoint KL terms, relative-scaled
        global_total = particles.global_log_lik() if particles.global_sites() else None  # scaled, summed
        for site in particles.latents:
            if site.p is None:  # auxiliary guide site: enters as −log q
                kl = site.reduce(site.q.log_prob(site.value))
                scale = beta * site.q_scale
            else:
                kl = self._kl(site)
                scale = beta * site.p_scale
            if site.in_plate:
                term = _sum_mean_k(kl, K, B)
                term = term if (isinstance(scale, float) and scale == 1.0) else scale * term
                kl_sum = term if kl_sum is None else kl_sum + term
            else:
                g = (ds * scale) * kl.sum() / K
                global_total = -g if global_total is None else global_total - g
        rec_sum = _sum_mean_k(particles.log_lik, K, B)
        local = rec_sum if kl_sum is None else rec_sum - kl_sum  # Σ_b of the per-datapoint bound
        bound_sum = local if ds == 1.0 else ds * local
        if global_total is not None:
            bound_sum = bound_sum + global_total
        with torch.no_grad():
            terms = Terms(
                bound=bound_sum / (ds * B),
                reconstruction=rec_sum / B,
                kl=torch.zeros((), dtype=rec_sum.dtype) if kl_sum is None else kl_sum / B,
            )
        return -bound_sum, terms


def _sum_mean_k(t: torch.Tensor, K: int, B: int) -> torch.Tensor:
    """Σ_b mean_k of a (K|1, B|1) tensor that broadcasts to (K, B)."""
    if t.dim() == 0:
        return t * B
    total = t.sum()
    n = (K if t.shape[0] == K else 1) * (1 if t.shape[-1] == B else 1.0 / B)
    return total if n == 1 else total / n


__all__ = ["ELBO"]
