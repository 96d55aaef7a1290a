"""The evidence lower bound with closed-form KL wherever one is registered and valid."""

from __future__ import annotations

import dataclasses
import warnings

import torch

from ..program import EnumeratedParticles, LatentSite, Particles, PlateError, latent_kl
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
        self._order_probe: dict[str, bool] = {}  # per site: does p depend on draws the guide makes later?

    def _kl(self, site: LatentSite) -> torch.Tensor:
        """KL(q ‖ p) of one latent site reduced to ``(K|1, B|1)``, unscaled; records the method."""
        analytic = self.analytic_kl and self.kl_sites.get(site.name) != "monte carlo"
        if analytic and not site.closed_form_ok and site.order_probe is not None:
            # the draw order forbids the closed form; a replay says whether p really depends on those draws
            depends = self._order_probe.get(site.name)
            if depends is None:
                depends = self._order_probe[site.name] = bool(site.order_probe())
            if not depends:
                site = dataclasses.replace(site, closed_form_ok=True)
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

    def _loss(self, particles: Particles | EnumeratedParticles) -> tuple[torch.Tensor, Terms]:
        if particles.enumerated:
            return self._enumerated_loss(particles)
        K, B, ds = particles.num_particles, particles.batch_size, particles.data_scale
        kl_sum = None  # Σ_b mean_k of the per-datapoint KL terms, relative-scaled
        global_total = particles.global_log_lik() if particles.global_sites() else None  # scaled, summed
        for kl, scale, in_plate in self._kl_terms(particles):
            if in_plate:
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

    def _kl_terms(self, particles: Particles):
        """Each KL-side term of the bound as ``(kl, scale, in_plate)``, ``kl`` a ``(K|1, B|1)`` tensor
        that enters as −scale · kl: a latent site's KL (closed form where valid); an auxiliary guide
        site's log q; an enumerated site's −log p(y) at this branch's value."""
        beta = particles.beta
        for f in particles.fixed:
            yield -f.log_prob, beta * f.scale, f.in_plate
        for site in particles.latents:
            if site.p is None:
                yield site.reduce(site.q.log_prob(site.value)), beta * site.q_scale, site.in_plate
            else:
                yield self._kl(site), beta * site.p_scale, site.in_plate

    def _enumerated_loss(self, particles: EnumeratedParticles) -> tuple[torch.Tensor, Terms]:
        """Σ_c q(y_c | x) (ELBO_c − β log q(y_c | x)) per datapoint, as TraceEnum_ELBO sums it."""
        if particles.global_sites():
            raise PlateError(
                f"ELBO with enumerated sites {particles.names}: site {particles.global_sites()[0]!r} sits outside the "
                f"{particles.plate_name!r} plate, and a global site cannot be shared by the branches of a per-datapoint "
                "sum. Fix: keep every site of an enumerated program inside the data plate, or train it with "
                "pyro.infer.TraceEnum_ELBO"
            )
        B, ds = particles.batch_size, particles.data_scale
        q = particles.q_enum().mean(1)  # (C, B): q(y_c | x) does not depend on the particles
        bound = rec = None
        for c, branch in enumerate(particles.branches):
            local = _per_datapoint(branch, self)
            log_qc = particles.log_q_enum[c].expand(-1, B).mean(0)
            b_c = q[c] * (local[0] - particles.beta * log_qc)
            r_c = q[c] * local[1]
            bound = b_c if bound is None else bound + b_c
            rec = r_c if rec is None else rec + r_c
        bound_sum = ds * bound.sum()
        with torch.no_grad():
            terms = Terms(bound=bound.sum() / B, reconstruction=rec.sum() / B, kl=(rec - bound).sum() / B)
        return -bound_sum, terms


def _per_datapoint(particles: Particles, elbo: ELBO) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-datapoint ``(B,)`` ELBO and reconstruction term of a record whose sites are all local."""
    B = particles.batch_size

    def mean_k(t: torch.Tensor) -> torch.Tensor:  # (K|1, B|1) -> (B,)
        return t.expand(B) if t.dim() == 0 else t.expand(t.shape[0], B).mean(0)

    rec = mean_k(particles.log_lik)
    bound = rec
    for kl, scale, _ in elbo._kl_terms(particles):
        bound = bound - scale * mean_k(kl)
    return bound, rec


def _sum_mean_k(t: torch.Tensor, K: int, B: int) -> torch.Tensor:
    """Σ_b mean_k of a (K|1, B|1) tensor that broadcasts to (K, B)."""
    if t.dim() == 0:
        return t * B
    total = t.sum()
    n = (K if t.shape[0] == K else 1) * (1 if t.shape[-1] == B else 1.0 / B)
    return total if n == 1 else total / n


__all__ = ["ELBO"]
