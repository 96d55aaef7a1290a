"""Latent diagnostics: KL per dimension, active units, mutual information, posterior collapse.

* **KL per dimension** — E_x KL(q(z_u|x) ‖ p(z_u)) between the 1-D marginals of the guide and
  the prior for each latent dimension u. Closed form when both marginals are Normal (diagonal,
  full or low-rank Gaussian guides against Normal priors); a Monte Carlo average of
  log q(z_u|x) − log p(z_u) when the prior's marginals are mixtures of Normals (mixture and
  VampPrior with Gaussian components); otherwise (flows) the KL between moment-matched
  Normal marginals, an approximation. ``kl_method`` says which was used.
* **Total KL** — E_x KL(q(z|x) ‖ p(z)) of the joint: closed form where ``kl_divergence`` is
  registered, else Monte Carlo (``total_kl_method``). Not the sum of the per-dim KLs unless
  q and p are both diagonal.
* **Active units** (Burda et al. 2016) — dimension u is active when Cov_x(E_q[z_u|x]) > 0.01:
  the posterior mean moves with the datapoint.
* **Mutual information** I(x; z) under the encoder's joint q(x, z) = p_data(x) q(z|x)
  (Hoffman & Johnson 2016): E_x KL(q(z|x) ‖ q(z)) with the aggregate posterior
  q(z) = (1/N) Σ_j q(z|x_j) over the N datapoints given, estimated with draws z ~ q(z|x_i).
  It is at most log N (a datapoint cannot carry more information than its index).
* **Collapse** — ``collapsed`` when no unit is active or I(x; z) is below ``collapse_threshold``
  nats: q(z|x) barely depends on x and the decoder models the data without z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyro.distributions as dist
import torch
from torch.distributions import kl_divergence

from ..distributions import UniformMixture
from ..program import density_changed, is_latent, latent_kl, traced_particles
from ..vae import DATA_PLATE
from ._common import (
    DEFAULT_MEMORY_BUDGET,
    check_budget,
    check_positive,
    chunk_plan,
    latent_sites,
    make_pair,
    resolve,
    row_chunks,
    trace_guide,
    trace_model_on,
)

_BYTES = 32  # working bytes per (sample, datapoint, datapoint, latent) element of the MI estimate


def _unwrap(d: Any) -> Any:
    while isinstance(d, torch.distributions.Independent):
        d = d.base_dist
    return d


def normal_marginals(d: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(loc, scale) of every 1-D marginal of a Gaussian distribution with event shape ``(L,)``, else None."""
    base = _unwrap(d)
    shape = tuple(d.batch_shape) + tuple(d.event_shape)
    if isinstance(base, torch.distributions.Normal):
        return base.loc.expand(shape), base.scale.expand(shape)
    if isinstance(base, (torch.distributions.MultivariateNormal, torch.distributions.LowRankMultivariateNormal)):
        return base.loc.expand(shape), base.variance.expand(shape).sqrt()
    return None


def _mixture_marginals(d: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(log weights (…, C), loc (…, C, L), scale (…, C, L)) for mixtures of Gaussians, else None."""
    if isinstance(d, torch.distributions.MixtureSameFamily):
        nm = normal_marginals(d.component_distribution)
        if nm is None:
            return None
        logits = d.mixture_distribution.logits
        return torch.log_softmax(logits, -1), nm[0], nm[1]
    if isinstance(d, UniformMixture):
        nm = normal_marginals(d.components)
        if nm is None:
            return None
        c = d.num_components
        logw = torch.full(nm[0].shape[:-1], -math.log(c), dtype=nm[0].dtype, device=nm[0].device)
        return logw, nm[0], nm[1]
    return None


def _marginal_log_prob(d: Any, values: torch.Tensor) -> torch.Tensor | None:
    """log density of each 1-D marginal of ``d`` at ``values`` (…, B, L), or None if unavailable."""
    nm = normal_marginals(d)
    if nm is not None:
        return dist.Normal(nm[0], nm[1]).log_prob(values)
    mix = _mixture_marginals(d)
    if mix is not None:
        logw, loc, scale = mix  # (B, C), (B, C, L)
        lp = dist.Normal(loc, scale).log_prob(values.unsqueeze(-2))  # (…, B, C, L)
        return torch.logsumexp(lp + logw.unsqueeze(-1), dim=-2)
    return None


def _moments(d: Any, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        mean, var = d.mean, d.variance
        if bool(torch.isfinite(mean).all() and torch.isfinite(var).all()):
            return mean, var
    except (NotImplementedError, AttributeError):
        pass
    s = d.sample((num_samples,))
    return s.mean(0), s.var(0)


def _gauss_kl(m1: torch.Tensor, s1: torch.Tensor, m2: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    return torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


@dataclass(frozen=True)
class LatentDiagnostics:
    """Latent-space summary over N datapoints for one latent site with L dimensions.

    Attributes:
        kl_per_dim: ``(L,)`` E_x KL(q(z_u|x) ‖ p(z_u)), nats; ``kl_method`` how it was computed.
        total_kl: E_x KL(q(z|x) ‖ p(z)) of the joint, nats; ``total_kl_method`` how.
        kl_per_datapoint: ``(N,)`` KL(q(z|x_i) ‖ p(z)).
        activity: ``(L,)`` Cov_x(E_q[z_u|x]); ``active`` = activity > ``active_threshold``.
        posterior_mean: ``(N, L)`` E_q[z|x_i]; ``posterior_variance`` ``(N, L)`` Var_q[z_u|x_i].
        mutual_information: I(x; z) estimate, nats; at most ``log N`` (``mi_upper_bound``).
        collapsed: True when no unit is active or I(x; z) < ``collapse_threshold``.
        explanation: one paragraph saying what the numbers mean for this model.
    """

    site: str
    kl_per_dim: torch.Tensor
    kl_method: str
    total_kl: float
    total_kl_method: str
    kl_per_datapoint: torch.Tensor = field(repr=False)
    activity: torch.Tensor = field(repr=False)
    active: torch.Tensor = field(repr=False)
    posterior_mean: torch.Tensor = field(repr=False)
    posterior_variance: torch.Tensor = field(repr=False)
    mutual_information: float = 0.0
    mutual_information_se: float = 0.0
    mi_upper_bound: float = 0.0
    active_threshold: float = 0.01
    collapse_threshold: float = 0.01
    collapsed: bool = False
    explanation: str = ""

    @property
    def latent_dim(self) -> int:
        return int(self.kl_per_dim.shape[0])

    @property
    def num_active(self) -> int:
        """Number of active units (Burda et al. 2016)."""
        return int(self.active.sum())

    @property
    def inactive_dims(self) -> list[int]:
        return torch.nonzero(~self.active).reshape(-1).tolist()

    def table(self):
        """Per-dimension table (:class:`pandas.DataFrame`): KL, activity, active."""
        import pandas as pd

        return pd.DataFrame(
            {"kl": self.kl_per_dim.numpy(), "activity": self.activity.numpy(), "active": self.active.numpy()},
            index=pd.Index(range(self.latent_dim), name="dim"),
        )

    def summary(self) -> str:
        return "\n".join(
            [
                f"Latent site {self.site!r}: {self.num_active}/{self.latent_dim} active units "
                f"(Cov_x E_q[z_u] > {self.active_threshold:g})",
                f"  KL(q‖p) {self.total_kl:.3f} nats ({self.total_kl_method}); per dim ({self.kl_method}): "
                + " ".join(f"{v:.2f}" for v in self.kl_per_dim.tolist()[:16])
                + (" ..." if self.latent_dim > 16 else ""),
                f"  I(x; z) ≈ {self.mutual_information:.3f} ± {self.mutual_information_se:.3f} nats "
                f"(upper bound log N = {self.mi_upper_bound:.2f})",
                "  " + self.explanation,
            ]
        )

    def __str__(self) -> str:
        return self.summary()


def _explain(num_active: int, latent_dim: int, mi: float, mi_max: float, kl: float, collapsed: bool,
             inactive: list[int], mi_threshold: float) -> str:
    if collapsed:
        return (
            f"Posterior collapse: {num_active} of {latent_dim} units are active and I(x; z) ≈ {mi:.3f} nats "
            f"(KL to the prior {kl:.3f} nats), so q(z|x) barely depends on x and the decoder models the data "
            "without using z. Remedies: KL warm-up or free bits, a weaker (less autoregressive) decoder, "
            "a lower learning rate for the decoder, or a smaller latent_dim."
        )
    parts = [f"{num_active} of {latent_dim} units are active; I(x; z) ≈ {mi:.3f} nats (at most log N = {mi_max:.2f})."]
    if inactive:
        shown = ", ".join(str(i) for i in inactive[:12]) + (", ..." if len(inactive) > 12 else "")
        parts.append(
            f"Dims [{shown}] are inactive: their posterior mean does not move with x and their KL is near 0 — "
            "the model uses fewer dimensions than latent_dim (common and harmless; a partial collapse)."
        )
    if mi > 0.9 * mi_max:
        parts.append("I(x; z) is close to log N: the estimate is saturated; use more datapoints for a tighter value.")
    if not inactive and mi >= mi_threshold:
        parts.append("No sign of posterior collapse.")
    return " ".join(parts)


def latent_diagnostics(
    model: Any,
    guide: Any = None,
    x: Any = None,
    *,
    site: str | None = None,
    num_samples: int = 64,
    num_mi_samples: int = 8,
    active_threshold: float = 0.01,
    collapse_threshold: float = 0.01,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    max_plate_nesting: int | None = None,
    plate_name: str = DATA_PLATE,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
) -> LatentDiagnostics:
    """KL per dimension, active units, I(x; z) and a collapse flag for one latent site.

    Call as ``latent_diagnostics(vae, x)``, ``latent_diagnostics((model, guide), x)`` or
    ``latent_diagnostics(model, guide, x)``. The site (``"z"`` for a :class:`~pyro_vae.VAE`,
    the only latent site by default) must have event shape ``(L,)``, sit in the data plate,
    and its guide distribution must depend on x only (not on other latent draws), so that
    q(z|x_j) can be evaluated at draws for another datapoint.

    Args:
        site: latent site to diagnose (required when the guide has several).
        num_samples: draws per datapoint for Monte Carlo KLs and moments (where no closed form).
        num_mi_samples: draws z ~ q(z|x_i) per datapoint in the I(x; z) estimate.
        active_threshold: Cov_x(E_q[z_u|x]) above which a unit is active (Burda et al.: 0.01).
        collapse_threshold: I(x; z) in nats below which the posterior counts as collapsed.

    The I(x; z) estimate costs N² · ``num_mi_samples`` · L density terms, chunked under
    ``memory_budget``; use a few thousand datapoints at most.

    Example:
        >>> from pyro_vae.testing import LinearGaussian
        >>> lg = LinearGaussian(x_dim=5, latent_dim=2)
        >>> d = latent_diagnostics(lg.model, lg.exact_guide, lg.sample(50))
        >>> d.num_active, d.kl_method
        (2, 'closed form')

    References:
        Burda, Grosse, Salakhutdinov (2016). Importance weighted autoencoders. ICLR.
        Hoffman, Johnson (2016). ELBO surgery: yet another way to carve up the variational
        evidence lower bound. NIPS Workshop on Advances in Approximate Bayesian Inference.
    """
    m, g, x = resolve(model, guide, x, "latent_diagnostics")
    num_samples = check_positive("num_samples", num_samples)
    num_mi_samples = check_positive("num_mi_samples", num_mi_samples)
    memory_budget = check_budget(memory_budget)
    n = x.shape[0]
    if n < 2:
        raise ValueError("latent_diagnostics needs at least 2 datapoints (activity is a covariance over x); "
                         "use a few hundred for a useful I(x; z)")
    pair = make_pair(m, g, x, model_args, model_kwargs, plate_name, max_plate_nesting)
    chunks, _ = chunk_plan(x, 1, memory_budget)

    qs: list[Any] = []  # guide distributions per chunk, batch (B,)
    means, variances, kl_dim, kl_point = [], [], [], []
    methods: set[str] = set()
    total_methods: set[str] = set()
    name = site
    with torch.no_grad():
        for lo, hi in chunks:
            xb = x[lo:hi]
            cp = pair.at(lo, hi)  # per-datapoint arguments sliced with x
            gt = trace_guide(cp, xb)
            sites = latent_sites(gt, plate_name)
            if name is None:
                if len(sites) != 1:
                    raise ValueError(
                        f"the guide has {len(sites)} latent sites ({[s['name'] for s in sites]}); pick one with site="
                    )
                name = sites[0]["name"]
            if name not in gt.nodes:
                raise ValueError(f"no guide site named {name!r}; latent sites are {[s['name'] for s in sites]}")
            q = gt.nodes[name]["fn"]
            if len(q.event_shape) != 1 or tuple(q.batch_shape) != (hi - lo,):
                raise ValueError(
                    f"latent_diagnostics needs site {name!r} to have batch shape (B,) = ({hi - lo},) and a 1-D event "
                    f"(latent_dim,); got batch {tuple(q.batch_shape)}, event {tuple(q.event_shape)}. Fix: declare the "
                    f"latent with one event dim (.to_event(1)) in a data plate at dim=-1 (a data plate at another dim, "
                    "or a latent inside a second plate, adds batch dims); importance_diagnostics and inference_gaps "
                    "take any plate layout"
                )
            mt = trace_model_on(cp, xb, gt)
            p = mt.nodes[name]["fn"]
            if lo == 0:
                prior_depends = _depends_on_draws(cp, xb, name, gt, mt)
            mean, var = _moments(q, num_samples)
            means.append(mean.double().cpu())
            variances.append(var.double().cpu())
            if prior_depends:
                # p(z | parents) changes with the guide's draws of other latents: the site's KL term of
                # the ELBO, E_q[log q(z|x) − log p(z|parents)], averaged over joint draws of the guide
                kd, kp, method = _joint_kl(cp, xb, name, num_samples)
                methods.add(method)
                total_methods.add(method)
            else:
                kd, method = _kl_per_dim(q, p, num_samples)
                methods.add(method)
                kp = _closed_form_kl(q, p)
                if kp is not None:
                    total_methods.add("closed form")
                else:
                    z = q.sample((num_samples,))
                    kp = (q.log_prob(z) - p.log_prob(z)).mean(0)
                    total_methods.add(f"monte carlo ({num_samples} draws)")
            kl_dim.append(kd.double().cpu())
            kl_point.append(kp.double().cpu().expand(hi - lo))
            qs.append(q)
        mean = torch.cat(means)
        activity = mean.var(0)  # unbiased, over datapoints
        active = activity > active_threshold
        kl_per_dim = torch.cat(kl_dim).mean(0)
        kl_pd = torch.cat(kl_point)
        mi, mi_se = _mutual_information(qs, chunks, num_mi_samples, memory_budget)
    mi_max = math.log(n)
    collapsed = int(active.sum()) == 0 or mi < collapse_threshold
    inactive = torch.nonzero(~active).reshape(-1).tolist()
    total = float(kl_pd.mean())
    return LatentDiagnostics(
        site=str(name),
        kl_per_dim=kl_per_dim,
        kl_method=" + ".join(sorted(methods)),
        total_kl=total,
        total_kl_method=" + ".join(sorted(total_methods)),
        kl_per_datapoint=kl_pd,
        activity=activity,
        active=active,
        posterior_mean=mean,
        posterior_variance=torch.cat(variances),
        mutual_information=mi,
        mutual_information_se=mi_se,
        mi_upper_bound=mi_max,
        active_threshold=active_threshold,
        collapse_threshold=collapse_threshold,
        collapsed=collapsed,
        explanation=_explain(int(active.sum()), int(mean.shape[1]), mi, mi_max, total, collapsed, inactive,
                             collapse_threshold),
    )


def _depends_on_draws(cp: Any, xb: torch.Tensor, name: str, gt: Any, mt: Any) -> bool:
    """Whether the site's prior p(z | parents) depends on other latent draws; raises if its guide
    distribution q does (then q(z|x) of one datapoint is not a distribution to diagnose).

    Decided by running the guide again on a fresh random stream and comparing both densities at the
    same value: a distribution built from x and parameters alone gives the same numbers.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2**31 - 17)  # any stream other than the caller's; forked, so the caller's is untouched
        gt2 = trace_guide(cp, xb)
        mt2 = trace_model_on(cp, xb, gt2)
    if density_changed(gt.nodes[name], gt2.nodes[name]):
        others = [n for n, site in gt.nodes.items() if is_latent(site) and n != name]
        raise ValueError(
            f"latent_diagnostics needs the guide's distribution of site {name!r} to depend on x only, but it changes "
            f"with the guide's draws of other latents ({others}): q({name}|x) of one datapoint is a mixture over them, "
            "and a KL or a posterior moment computed for one draw would depend on the seed. Fix: diagnose a site the "
            "guide draws from x alone (site=...), or use importance_diagnostics / inference_gaps, which take any guide"
        )
    return density_changed(mt.nodes[name], mt2.nodes[name])


def _joint_kl(cp: Any, xb: torch.Tensor, name: str, num_samples: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Per-dimension ``(B, L)`` and total ``(B,)`` KL terms of a site whose prior depends on other
    latents: E over ``num_samples`` joint guide draws of KL(q(z|x) ‖ p(z|parents)) — closed form per
    draw where the parents were drawn before z by the guide, else log q − log p."""
    particles = traced_particles(cp.model, cp.guide, cp.call_args(xb), cp.kwargs, num_samples, cp.max_plate_nesting,
                                 cp.plate_name)
    site = next(s for s in particles.latents if s.name == name)
    total, how = latent_kl(site)
    B = xb.shape[0]
    total = total.expand(num_samples, B).mean(0)
    try:
        per_dim, _ = latent_kl(site, per_dim=True)
        per_dim = per_dim.expand(num_samples, B, per_dim.shape[-1]).mean(0)
    except NotImplementedError:  # not factorized: the total only
        per_dim = torch.full((B, int(site.q.event_shape[0])), math.nan, dtype=total.dtype)
    kind = "closed form per draw" if how == "analytic" else "monte carlo"
    return per_dim, total, f"{kind}, averaged over {num_samples} joint draws (the prior depends on other latents)"


def _as_mvn(d: Any) -> Any:
    """A Gaussian with event shape (L,) as a MultivariateNormal, else None."""
    base = _unwrap(d)
    if isinstance(base, torch.distributions.MultivariateNormal):  # LowRank is not a subclass
        return base
    if isinstance(base, torch.distributions.LowRankMultivariateNormal):
        return dist.MultivariateNormal(base.loc, covariance_matrix=base.covariance_matrix)
    if isinstance(base, torch.distributions.Normal) and len(d.event_shape) == 1:
        shape = tuple(d.batch_shape) + tuple(d.event_shape)
        return dist.MultivariateNormal(base.loc.expand(shape), scale_tril=torch.diag_embed(base.scale.expand(shape)))
    return None


def _closed_form_kl(q: Any, p: Any) -> torch.Tensor | None:
    """KL(q ‖ p) in closed form: registered, or both Gaussian (compared as full-covariance Normals)."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        pass
    qm, pm = _as_mvn(q), _as_mvn(p)
    if qm is None or pm is None:
        return None
    return kl_divergence(qm, pm)


def _kl_per_dim(q: Any, p: Any, num_samples: int) -> tuple[torch.Tensor, str]:
    """(B, L) KL between 1-D marginals, and the method used."""
    qn, pn = normal_marginals(q), normal_marginals(p)
    if qn is not None and pn is not None:
        loc_p, scale_p = (t.expand_as(qn[0]) for t in pn)
        return _gauss_kl(qn[0], qn[1], loc_p, scale_p), "closed form"
    if qn is not None:
        z = dist.Normal(qn[0], qn[1]).sample((num_samples,))  # (S, B, L): draws of every marginal
        lp = _marginal_log_prob(p, z)
        if lp is not None:
            lq = dist.Normal(qn[0], qn[1]).log_prob(z)
            return (lq - lp).mean(0), f"monte carlo ({num_samples} draws)"
    mq, vq = _moments(q, num_samples)
    mp, vp = _moments(p, num_samples)
    mp, vp = mp.expand_as(mq), vp.expand_as(vq)
    return _gauss_kl(mq, vq.sqrt(), mp, vp.sqrt()), "moment-matched Normal marginals (approximation)"


def _mutual_information(qs: list[Any], chunks: list[tuple[int, int]], num_draws: int,
                        memory_budget: float) -> tuple[float, float]:
    """E_i [log q(z_i|x_i) − log (1/N) Σ_j q(z_i|x_j)], z_i ~ q(z|x_i), and its standard error."""
    n = chunks[-1][1]
    latent = int(qs[0].event_shape[0])
    # rows of (i) and columns of (j) per block so that num_draws · rows · cols · L elements fit
    side = max(1, int(math.sqrt(memory_budget / (_BYTES * num_draws * max(latent, 1)))))
    per_point = torch.empty(n, dtype=torch.float64)
    for qi, (lo, hi) in zip(qs, chunks):
        z = qi.sample((num_draws,))  # (S, Bi, L)
        own = qi.log_prob(z).double()  # (S, Bi)
        for rlo, rhi in row_chunks(hi - lo, side):
            zi = z[:, rlo:rhi]  # (S, bi, L)
            lse = torch.full(zi.shape[:2], -math.inf, dtype=torch.float64, device=z.device)
            for qj, (jlo, jhi) in zip(qs, chunks):
                for clo, chi in row_chunks(jhi - jlo, side):
                    qsub = _rows(qj, clo, chi)
                    v = zi.unsqueeze(-2).expand(zi.shape[0], zi.shape[1], chi - clo, latent)
                    lp = qsub.log_prob(v).double()  # (S, bi, bj)
                    lse = torch.logaddexp(lse, torch.logsumexp(lp, dim=-1))
            agg = lse - math.log(n)
            per_point[lo + rlo : lo + rhi] = (own[:, rlo:rhi] - agg).mean(0).cpu()
    mi = float(per_point.mean())
    se = float(per_point.std() / math.sqrt(n)) if n > 1 else 0.0
    return mi, se


def _rows(q: Any, lo: int, hi: int) -> Any:
    """The batch rows ``lo:hi`` of a distribution with batch shape ``(B,)``."""
    if lo == 0 and hi == q.batch_shape[0]:
        return q
    try:
        return _slice_distribution(q, lo, hi)
    except (TypeError, NotImplementedError, AttributeError):
        raise ValueError(
            f"cannot take rows of a {type(q).__name__} to estimate I(x; z) in blocks; raise memory_budget "
            "so the whole set fits one block"
        ) from None


def _slice_distribution(q: Any, lo: int, hi: int) -> Any:
    if isinstance(q, torch.distributions.Independent):
        return torch.distributions.Independent(_slice_distribution(q.base_dist, lo, hi), q.reinterpreted_batch_ndims)
    if isinstance(q, torch.distributions.Normal):
        return dist.Normal(q.loc[lo:hi], q.scale[lo:hi])
    if isinstance(q, torch.distributions.LowRankMultivariateNormal):
        return dist.LowRankMultivariateNormal(q.loc[lo:hi], q.cov_factor[lo:hi], q.cov_diag[lo:hi])
    if isinstance(q, torch.distributions.MultivariateNormal):
        return dist.MultivariateNormal(q.loc[lo:hi], scale_tril=q.scale_tril[lo:hi])
    raise NotImplementedError


__all__ = ["LatentDiagnostics", "latent_diagnostics", "normal_marginals"]
