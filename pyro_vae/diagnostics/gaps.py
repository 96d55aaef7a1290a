"""Inference gaps (Cremer, Li & Duvenaud 2018): how much of log p(x) − ELBO is amortization.

For a datapoint x the gap between the evidence and the amortized bound splits as

    log p(x) − ELBO[q_φ(z|x)] =  (log p(x) − ELBO[q*])          approximation gap
                               + (ELBO[q*] − ELBO[q_φ(z|x)])     amortization gap

where q* is the best member of the guide's *own family* for this one datapoint. q* is found by
local refinement: every Gaussian latent site of the guide gets free per-datapoint parameters,
initialised at the encoder's output, and a multi-sample ELBO is maximised with Adam. The
gradient is the "sticking the landing" estimator (Roeder, Wu & Duvenaud 2017): the score term
of log q is dropped, which keeps the estimator unbiased and makes it exactly zero when q is
the posterior, so an exact guide stays put.

Supported guide sites: ``Normal`` (any ``.to_event``), ``MultivariateNormal`` and
``LowRankMultivariateNormal`` — which covers the diagonal and low-rank Normal encoders and any
hand-written Gaussian guide. Flows (e.g. :class:`~pyro_vae.encoders.IAFEncoder`) are refused:
their family is defined by the conditioning network, so "the best q in the family for this
datapoint" has no per-datapoint parameterisation without rewriting the flow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints
from tqdm import tqdm  # plain tqdm: tqdm.auto warns in notebooks without ipywidgets

from ..program import PlateError, density_changed, is_latent, log_weights, particle_traces
from ..vae import DATA_PLATE
from ._common import (
    DEFAULT_MEMORY_BUDGET,
    DiagnosticWarning,
    Pair,
    check_budget,
    check_positive,
    chunk_plan,
    in_plate,
    index_list,
    make_pair,
    resolve,
    warn,
)
from .importance import KHAT_OK, _check_num_samples, finish, stream_weights, tail_length


# --------------------------------------------------------------------------------------------
# per-datapoint Gaussian families
# --------------------------------------------------------------------------------------------


class _StickingTheLanding(dist.TorchDistribution):
    """Samples with the live parameters, scores with detached ones (the STL gradient estimator)."""

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, live: dist.TorchDistribution, frozen: dist.TorchDistribution) -> None:
        self.live, self.frozen = live, frozen
        super().__init__(live.batch_shape, live.event_shape, validate_args=False)

    @constraints.dependent_property
    def support(self):  # type: ignore[override]
        return self.live.support

    def expand(self, batch_shape, _instance=None):  # noqa: D102
        with torch.enable_grad():  # plates broadcast inside the guide's no_grad block
            return _StickingTheLanding(self.live.expand(batch_shape), self.frozen.expand(batch_shape))

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: D102
        with torch.enable_grad():  # the guide body runs under no_grad; the draw must not
            return self.live.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.frozen.log_prob(value)

    @property
    def mean(self) -> torch.Tensor:  # noqa: D102
        return self.live.mean


@dataclass
class GaussianSite:
    """Free per-datapoint parameters of one Gaussian guide site and how to rebuild it."""

    name: str
    family: str  # "normal" | "multivariate_normal" | "low_rank_multivariate_normal"
    event_dims: int  # reinterpreted batch dims (Normal only)
    params: list[torch.Tensor]

    @classmethod
    def from_fn(cls, name: str, fn: Any) -> "GaussianSite":
        d, reinterpreted = fn, 0
        while isinstance(d, torch.distributions.Independent):
            reinterpreted += d.reinterpreted_batch_ndims
            d = d.base_dist
        batch = tuple(fn.batch_shape)
        if isinstance(d, torch.distributions.Normal):
            full = batch + tuple(fn.event_shape)
            loc = d.loc.detach().expand(full).clone()
            log_scale = d.scale.detach().expand(full).log().clone()
            return cls(name, "normal", reinterpreted, [loc, log_scale])
        if isinstance(d, torch.distributions.LowRankMultivariateNormal) and reinterpreted == 0:
            k = d.cov_factor.shape[-1]
            loc = d.loc.detach().expand(batch + d.event_shape).clone()
            factor = d.cov_factor.detach().expand(batch + d.event_shape + (k,)).clone()
            log_diag = d.cov_diag.detach().expand(batch + d.event_shape).log().clone()
            return cls(name, "low_rank_multivariate_normal", 0, [loc, factor, log_diag])
        if isinstance(d, torch.distributions.MultivariateNormal) and reinterpreted == 0:
            tril = d.scale_tril.detach().expand(batch + d.event_shape + d.event_shape)
            loc = d.loc.detach().expand(batch + d.event_shape).clone()
            off = torch.tril(tril, -1).clone()
            log_diag = torch.diagonal(tril, dim1=-2, dim2=-1).log().clone()
            return cls(name, "multivariate_normal", 0, [loc, off, log_diag])
        raise TypeError(
            f"inference_gaps refines Gaussian guide sites (Normal, MultivariateNormal, LowRankMultivariateNormal, "
            f"optionally .to_event); site {name!r} is a {type(fn).__name__}"
            + (f" of {type(d).__name__}" if d is not fn else "")
            + ". Flow guides such as IAFEncoder have no per-datapoint parameterisation of their family; "
            "measure their amortization with a Gaussian encoder or compare bounds with importance_diagnostics"
        )

    def build(self, detach: bool = False) -> dist.TorchDistribution:
        p = [t.detach() for t in self.params] if detach else self.params
        if self.family == "normal":
            d = dist.Normal(p[0], p[1].exp())
            return d.to_event(self.event_dims) if self.event_dims else d
        if self.family == "multivariate_normal":
            tril = torch.tril(p[1], -1) + torch.diag_embed(p[2].exp())
            return dist.MultivariateNormal(p[0], scale_tril=tril)
        return dist.LowRankMultivariateNormal(p[0], p[1], p[2].exp())

    def distribution(self) -> dist.TorchDistribution:
        with torch.enable_grad():  # called from inside the guide, which runs under no_grad
            return _StickingTheLanding(self.build(), self.build(detach=True))

    def rows(self, lo: int, hi: int) -> "GaussianSite":
        """The same site for datapoints ``lo:hi`` (the data dim is the first batch dim)."""
        return GaussianSite(self.name, self.family, self.event_dims, [t[lo:hi] for t in self.params])


class _SiteSwap(Messenger):
    """Record (``sites is None``) or replace the distributions of latent guide sites.

    Sits between the guide's own plates (already applied to ``fn``) and any outer particle plate
    (applied after), so recorded and replacement distributions have the guide's batch shape.
    """

    def __init__(self, plate_name: str, sites: dict[str, GaussianSite] | None = None) -> None:
        super().__init__()
        self.plate_name = plate_name
        self.sites = sites
        self.recorded: dict[str, Any] = {}

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or site_is_subsample(msg):
            return
        name = msg["name"]
        if self.sites is None:
            if not in_plate(msg, self.plate_name):
                raise PlateError(
                    f"guide site {name!r} sits outside the {self.plate_name!r} plate: the guide is not amortized "
                    "over the data plate, so there is no per-datapoint posterior to refine. Fix: inference gaps are "
                    "defined for models whose latents are all local; condition the global site on a point estimate "
                    f"(pyro.poutine.condition(model, data={{{name!r}: value}}) and the same for the guide) to measure "
                    "the gaps of the local latents given it"
                )
            self.recorded[name] = msg["fn"]
            return
        site = self.sites.get(name)
        if site is None:
            raise ValueError(f"guide site {name!r} appeared after refinement started; the guide's sites must not change")
        new = site.distribution()
        want = tuple(msg["fn"].batch_shape)
        if tuple(new.batch_shape) != want and _broadcasts_to(tuple(new.batch_shape), want):
            # a hierarchical guide's site carries the particle dim of the draws it depends on; the refined
            # (mean-field) site depends on nothing, so it is the same for every particle
            new = new.expand(want)
        if tuple(new.batch_shape) != want:
            raise ValueError(
                f"site {name!r}: refined parameters have batch shape {tuple(new.batch_shape)} but the guide built "
                f"{tuple(msg['fn'].batch_shape)}; refined guides are tied to the datapoints they were fitted on"
            )
        msg["fn"] = new


def _structured_guide(cp: Any, xb: torch.Tensor) -> bool:
    """Does some guide site's distribution depend on another guide site's draw? (The guide run twice
    on forked random streams; a site whose log-density at the same value changes depends on a draw.)"""
    with torch.random.fork_rng(devices=[]), torch.no_grad(), poutine.block():
        torch.manual_seed(2**31 - 41)
        t1 = poutine.trace(cp.guide).get_trace(*cp.call_args(xb), **cp.kwargs)
        t2 = poutine.trace(cp.guide).get_trace(*cp.call_args(xb), **cp.kwargs)
    return any(density_changed(site, t2.nodes[name]) for name, site in t1.nodes.items()
               if is_latent(site) and name in t2.nodes)


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == torch.Size(target)
    except RuntimeError:
        return False


class RefinedGuide:
    """A guide with free per-datapoint Gaussian parameters, for a fixed chunk of datapoints.

    Runs the original guide (for its plates and site names) without gradients, swapping each
    latent site's distribution for the refined one.
    """

    def __init__(self, guide: Callable, sites: dict[str, GaussianSite], plate_name: str) -> None:
        self.guide, self.sites, self.plate_name = guide, sites, plate_name

    def parameters(self) -> list[torch.Tensor]:
        return [p for s in self.sites.values() for p in s.params]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with _SiteSwap(self.plate_name, self.sites), torch.no_grad():
            return self.guide(*args, **kwargs)

    @classmethod
    def initialise(cls, pair: Pair, xb: torch.Tensor) -> "RefinedGuide":
        rec = _SiteSwap(pair.plate_name)
        with rec, torch.no_grad():
            pair.guide(*pair.call_args(xb), **pair.kwargs)
        if not rec.recorded:
            raise PlateError(f"the guide has no latent sample site in the {pair.plate_name!r} plate; nothing to refine")
        sites = {name: GaussianSite.from_fn(name, fn) for name, fn in rec.recorded.items()}
        for s in sites.values():
            for p in s.params:
                p.requires_grad_(True)
        return cls(pair.guide, sites, pair.plate_name)


# --------------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceGaps:
    """Per-datapoint bounds and gaps (tensors ``(N,)``, float64, nats).

    ``amortized_elbo`` is the ELBO of the guide as given; ``refined_elbo`` the ELBO after
    per-datapoint refinement; ``log_likelihood`` the importance-sampled log p(x) (``num_samples``
    draws) with the refined guide as proposal — for a structured guide (a site's q depends on
    another site's draw, q(z1 | x, z2), which the mean-field refinement cannot represent), per
    datapoint the larger of that and the amortized guide's estimate (each a stochastic lower
    bound) — whose Pareto k̂ is ``log_likelihood_khat``. ``*_se`` are Monte Carlo standard errors;
    ``history`` the mean training ELBO per refinement step.
    """

    amortized_elbo: torch.Tensor
    refined_elbo: torch.Tensor
    log_likelihood: torch.Tensor
    amortized_elbo_se: torch.Tensor
    refined_elbo_se: torch.Tensor
    log_likelihood_khat: torch.Tensor
    history: torch.Tensor = field(repr=False)
    num_steps: int = 0
    num_samples: int = 0
    families: dict[str, str] = field(default_factory=dict)

    @property
    def amortization_gap(self) -> torch.Tensor:
        """ELBO[q*] − ELBO[q_φ(z|x)] per datapoint."""
        return self.refined_elbo - self.amortized_elbo

    @property
    def approximation_gap(self) -> torch.Tensor:
        """log p(x) − ELBO[q*] per datapoint."""
        return self.log_likelihood - self.refined_elbo

    @property
    def inference_gap(self) -> torch.Tensor:
        """log p(x) − ELBO[q_φ(z|x)] = amortization + approximation gap."""
        return self.log_likelihood - self.amortized_elbo

    @staticmethod
    def _mean_se(t: torch.Tensor) -> tuple[float, float]:
        n = t.numel()
        return float(t.mean()), float(t.std() / math.sqrt(n)) if n > 1 else math.nan

    @property
    def mean_amortization_gap(self) -> tuple[float, float]:
        """(mean, standard error over datapoints) of the amortization gap."""
        return self._mean_se(self.amortization_gap)

    @property
    def mean_approximation_gap(self) -> tuple[float, float]:
        """(mean, standard error over datapoints) of the approximation gap."""
        return self._mean_se(self.approximation_gap)

    def summary(self) -> str:
        am, am_se = self.mean_amortization_gap
        ap, ap_se = self.mean_approximation_gap
        n = self.amortized_elbo.numel()
        return "\n".join(
            [
                f"Inference gaps over {n} datapoints ({self.num_steps} refinement steps, K={self.num_samples}):",
                f"  log p(x)           {float(self.log_likelihood.mean()):10.3f}",
                f"  refined ELBO       {float(self.refined_elbo.mean()):10.3f}",
                f"  amortized ELBO     {float(self.amortized_elbo.mean()):10.3f}",
                f"  approximation gap  {ap:10.3f} ± {ap_se:.3f}",
                f"  amortization gap   {am:10.3f} ± {am_se:.3f}",
            ]
        )

    def __str__(self) -> str:
        return self.summary()


# --------------------------------------------------------------------------------------------
# the function
# --------------------------------------------------------------------------------------------


def inference_gaps(
    model: Any,
    guide: Any = None,
    x: Any = None,
    *,
    num_steps: int = 300,
    lr: float = 0.02,
    num_particles: int = 10,
    num_samples: int = 2000,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    max_plate_nesting: int | None = None,
    plate_name: str = DATA_PLATE,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    progress: bool = False,
) -> InferenceGaps:
    """Amortization and approximation gaps per datapoint, by local refinement of the guide.

    Call as ``inference_gaps(vae, x)``, ``inference_gaps((model, guide), x)`` or
    ``inference_gaps(model, guide, x)``. Each latent guide site must be Gaussian (see the module
    docstring) and sit in the data plate. Steps:

    1. the guide's distributions on ``x`` give initial per-datapoint parameters (loc and
       log-scale; loc, strictly-lower triangle and log-diagonal of ``scale_tril``; or loc,
       covariance factor and log-diagonal);
    2. Adam (learning rate ``lr``, cosine-decayed to 0) maximises Σ_i ELBO_i with
       ``num_particles`` draws per datapoint for ``num_steps`` steps — datapoints are
       independent, so this is N separate optimisations run as one vectorized problem.
       The decay matters: near the optimum the STL gradient is almost noise-free and Adam,
       being scale-free, would otherwise keep stepping by ~``lr``; with too few steps
       (well under ~100) the refined ELBO can sit a little below the optimum;
    3. ``num_samples`` draws per datapoint evaluate the amortized and the refined ELBO, and
       log p(x) by importance sampling with the refined guide as proposal.

    Datapoints are processed in chunks sized from ``memory_budget`` (training and evaluation).

    Warns:
        DiagnosticWarning: the refinement lowered the ELBO for many datapoints (raise
            ``num_steps`` or lower ``lr``), or the log p(x) estimate has k̂ > 0.7 for some
            datapoints (their approximation gap is underestimated).

    Example:
        >>> from pyro_vae.testing import LinearGaussian
        >>> lg = LinearGaussian(x_dim=5, latent_dim=2)
        >>> g = inference_gaps(lg.model, lg.exact_guide, lg.sample(3), num_steps=100, num_samples=100)  # exact: no gap
        >>> abs(g.mean_amortization_gap[0]) < 1e-3 and abs(g.mean_approximation_gap[0]) < 1e-3
        True

    References:
        Cremer, Li, Duvenaud (2018). Inference suboptimality in variational autoencoders. ICML.
        Roeder, Wu, Duvenaud (2017). Sticking the landing. NeurIPS.
    """
    m, g, x = resolve(model, guide, x, "inference_gaps")
    num_steps = int(num_steps)
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    num_particles = check_positive("num_particles", num_particles)
    num_samples = check_positive("num_samples", num_samples)
    memory_budget = check_budget(memory_budget)
    _check_num_samples(num_samples)
    pair = make_pair(m, g, x, model_args, model_kwargs, plate_name, max_plate_nesting)
    n = x.shape[0]
    # a refined guide is tied to its chunk of datapoints, and its evaluation below must not split
    # the chunk again: size chunks for the larger of the training and evaluation sample counts
    chunks, _ = chunk_plan(x, max(num_particles, num_samples), memory_budget)
    history = torch.zeros(num_steps, dtype=torch.float64)
    keep = tail_length(num_samples) + 1
    out = {k: torch.empty(n, dtype=torch.float64) for k in ("am", "am_se", "re", "re_se", "ll", "khat")}
    families: dict[str, str] = {}
    bar = tqdm(total=len(chunks) * num_steps, desc="refining q", disable=not progress, leave=False)
    structured = None  # does a guide site's distribution depend on another site's draw? (decided once)
    for lo, hi in chunks:
        xb = x[lo:hi]
        cp = pair.at(lo, hi)  # per-datapoint arguments sliced with x
        refined = RefinedGuide.initialise(cp, xb)
        families.update({name: s.family for name, s in refined.sites.items()})
        params = refined.parameters()
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(num_steps, 1), eta_min=0.0)
        for step in range(num_steps):
            tr = particle_traces(cp.model, refined, cp.call_args(xb), cp.kwargs, num_particles,
                                 cp.max_plate_nesting, cp.plate_name)
            elbo = log_weights(tr, pair.plate_name).mean(0)  # (B,)
            if not bool(torch.isfinite(elbo).all()):
                raise FloatingPointError(
                    f"refinement step {step}: non-finite ELBO for datapoints "
                    f"{index_list(~torch.isfinite(elbo.detach()))} (offset {lo}); lower lr"
                )
            grads = torch.autograd.grad(-elbo.sum(), params, allow_unused=True)
            for p, gr in zip(params, grads):
                p.grad = gr if gr is not None else torch.zeros_like(p)
            opt.step()
            sched.step()
            history[step] += float(elbo.detach().sum())
            bar.update()
        for p in params:
            p.requires_grad_(False)
        acc_am = stream_weights(cp, cp.guide, xb, num_samples, memory_budget, keep)
        out["am"][lo:hi], out["am_se"][lo:hi] = acc_am.elbo()
        acc_re = stream_weights(cp, refined, xb, num_samples, memory_budget, keep)
        r = finish(acc_re, 0, memory_budget)
        out["re"][lo:hi], out["re_se"][lo:hi] = r.elbo, r.elbo_se
        # log p(x): with the refined guide as proposal; for a structured guide (a site's q depends on
        # another site's draw: q(z1 | x, z2)), which the mean-field refinement cannot represent, the
        # larger of that and the amortized guide's estimate (each a stochastic lower bound)
        am = finish(acc_am, 0, memory_budget, warn_nonfinite=False)
        if structured is None:
            structured = _structured_guide(cp, xb)
        refined_better = r.log_likelihood >= am.log_likelihood if structured else torch.ones_like(r.khat, dtype=torch.bool)
        out["ll"][lo:hi] = torch.where(refined_better, r.log_likelihood, am.log_likelihood)
        out["khat"][lo:hi] = torch.where(refined_better, r.khat, am.khat)
    bar.close()
    result = InferenceGaps(
        amortized_elbo=out["am"],
        refined_elbo=out["re"],
        log_likelihood=out["ll"],
        amortized_elbo_se=out["am_se"],
        refined_elbo_se=out["re_se"],
        log_likelihood_khat=out["khat"],
        history=history / n,
        num_steps=num_steps,
        num_samples=num_samples,
        families=families,
    )
    worse = result.amortization_gap < -3 * torch.sqrt(result.amortized_elbo_se**2 + result.refined_elbo_se**2) - 1e-9
    if int(worse.sum()) > max(1, 0.1 * n):
        warn(
            f"refinement lowered the ELBO beyond Monte Carlo error for datapoints {index_list(worse)}; the optimiser "
            f"diverged or did not converge (lr={lr}, num_steps={num_steps}): lower lr or raise num_steps",
            DiagnosticWarning,
        )
    unreliable = result.log_likelihood_khat > KHAT_OK
    if bool(unreliable.any()):
        warn(
            f"the log p(x) estimate (refined guide as proposal, K={num_samples}) has Pareto k̂ > 0.7 for datapoints "
            f"{index_list(unreliable)}: there log p(x) and so the approximation gap are underestimated",
            DiagnosticWarning,
        )
    return result


__all__ = ["InferenceGaps", "inference_gaps", "RefinedGuide", "GaussianSite"]
