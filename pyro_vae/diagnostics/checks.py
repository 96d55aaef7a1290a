"""Workflow checks: prior and posterior predictive checks, simulation-based calibration.

**Predictive checks** compare test statistics T of the data with their distribution under
replicated data: x_rep ~ p(x | z) with z ~ q(z|x_i) (posterior predictive, one replicate set per
draw) or z ~ p(z) (prior predictive). The default statistics suit images and counts:

* ``mean`` — mean intensity of a datapoint (mean over its features);
* ``variance`` — pixel variance within a datapoint (variance over its features);
* ``zeros`` — share of features equal to 0 (background pixels, zero counts);

plus **per-pixel calibration**: for every feature d the observed mean over the data set against
its replicated distribution (a per-pixel posterior-predictive p-value), and a reliability
curve of the predicted mean E[x_rep,id] against the observed x_id in bins. The posterior
predictive p-value of a statistic is P(T(x_rep) ≥ T(x)) (ties count half): values near 0 or
1 say the model does not reproduce that aspect of the data.

**Simulation-based calibration** (Talts et al. 2018) of the *amortized* posterior: draw
z ~ p(z) and x ~ p(x|z), then L draws from q(z|x), and record the rank of the true z_u among
them for each latent dimension u. If q(z|x) is the exact posterior the ranks are uniform on
{0, …, L}; a chi-square test per dimension (Bonferroni-combined) measures the departure.
Ties between the truth and guide draws (discrete latents) are broken uniformly at random:
rank = #{draws < truth} + U{0, …, #{draws == truth}}, with torch's RNG (``pyro.set_rng_seed``
makes it reproducible), so an exact posterior over a discrete latent has uniform ranks too.
Ranks piled at the ends mean q is too narrow; in the middle, too wide; on one side, biased.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pyro.poutine as poutine
import torch

from ..vae import DATA_PLATE
from ._common import (
    DEFAULT_MEMORY_BUDGET,
    SampleSizeWarning,
    check_budget,
    check_positive,
    chunk_plan,
    flat_values,
    latent_sites,
    make_pair,
    observed_sites,
    resolve,
    sample_chunks,
    trace_guide,
    trace_model_on,
    trace_prior,
    warn,
)

#: a statistic maps data ``(..., N, D)`` (features flattened) to one number per datapoint ``(..., N)``
Statistic = Callable[[torch.Tensor], torch.Tensor]

STATISTICS: dict[str, Statistic] = {
    "mean": lambda v: v.mean(-1),
    "variance": lambda v: v.var(-1, unbiased=False),
    "zeros": lambda v: (v == 0).to(v.dtype).mean(-1),
}


def _ppp(replicated: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """P(T_rep > T_obs) + ½ P(T_rep = T_obs) over dim 0."""
    return (replicated > observed).double().mean(0) + 0.5 * (replicated == observed).double().mean(0)


@dataclass(frozen=True)
class StatisticCheck:
    """One test statistic: per-datapoint values observed ``(N,)`` and replicated ``(S, N)``."""

    name: str
    observed: torch.Tensor
    replicated: torch.Tensor

    @property
    def ppp(self) -> torch.Tensor:
        """Per-datapoint predictive p-value P(T(x_rep,i) ≥ T(x_i)), ``(N,)``."""
        return _ppp(self.replicated, self.observed)

    @property
    def observed_total(self) -> float:
        """The statistic of the data set: the mean over datapoints."""
        return float(self.observed.mean())

    @property
    def replicated_total(self) -> torch.Tensor:
        """The data-set statistic of each replicated data set, ``(S,)``."""
        return self.replicated.mean(1)

    @property
    def ppp_total(self) -> float:
        """Predictive p-value of the data-set statistic."""
        return float(_ppp(self.replicated_total, torch.tensor(self.observed_total, dtype=self.replicated.dtype)))


@dataclass(frozen=True)
class PredictiveCheck:
    """Result of :func:`predictive_check` (tensors float64 on the CPU).

    Attributes:
        kind: ``"posterior"`` or ``"prior"``.
        statistics: name → :class:`StatisticCheck`.
        pixel_observed: ``(D,)`` observed mean of each feature over the data set.
        pixel_replicated: ``(S, D)`` the same for each replicated data set.
        calibration: per bin of predicted mean: ``predicted``, ``observed`` and ``count``
            (``(num_bins,)`` each); ``calibration_error`` the count-weighted mean |observed − predicted|.
        replicated_examples: ``(E, D)`` one replicate of the first E datapoints (for figures).
    """

    kind: str
    num_samples: int
    statistics: dict[str, StatisticCheck]
    pixel_observed: torch.Tensor = field(repr=False)
    pixel_replicated: torch.Tensor = field(repr=False)
    calibration: dict[str, torch.Tensor] = field(repr=False)
    calibration_error: float = 0.0
    observed_examples: torch.Tensor = field(default_factory=lambda: torch.empty(0), repr=False)
    replicated_examples: torch.Tensor = field(default_factory=lambda: torch.empty(0), repr=False)

    @property
    def pixel_ppp(self) -> torch.Tensor:
        """Per-feature predictive p-value of its data-set mean, ``(D,)``."""
        return _ppp(self.pixel_replicated, self.pixel_observed)

    @property
    def pixel_outside(self) -> float:
        """Share of features whose mean has a p-value outside [0.025, 0.975]."""
        p = self.pixel_ppp
        return float(((p < 0.025) | (p > 0.975)).double().mean())

    def table(self):
        """One row per statistic: observed, replicated mean and sd, p-value (:class:`pandas.DataFrame`)."""
        import pandas as pd

        rows = {
            name: {
                "observed": s.observed_total,
                "replicated_mean": float(s.replicated_total.mean()),
                "replicated_sd": float(s.replicated_total.std()) if s.replicated.shape[0] > 1 else 0.0,
                "ppp": s.ppp_total,
                "datapoints_ppp_outside_95": float(((s.ppp < 0.025) | (s.ppp > 0.975)).double().mean()),
            }
            for name, s in self.statistics.items()
        }
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("statistic")

    def summary(self) -> str:
        lines = [f"{self.kind.capitalize()} predictive check (S={self.num_samples} replicates):"]
        for name, s in self.statistics.items():
            lines.append(
                f"  {name:10s} observed {s.observed_total:10.4g}  replicated {float(s.replicated_total.mean()):10.4g} "
                f"± {float(s.replicated_total.std()) if s.replicated.shape[0] > 1 else 0.0:.3g}  p = {s.ppp_total:.3f}"
            )
        lines.append(
            f"  per-pixel calibration: {100 * self.pixel_outside:.1f}% of features outside the central 95%; "
            f"reliability error {self.calibration_error:.4g}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _observed_site(trace: Any, xb: torch.Tensor, plate_name: str, name: str | None) -> str:
    sites = observed_sites(trace, plate_name)
    if name is not None:
        if name not in [s["name"] for s in sites]:
            raise ValueError(f"no observed site named {name!r}; observed sites are {[s['name'] for s in sites]}")
        return name
    match = [s for s in sites if tuple((s.get("infer") or {}).get("obs", s["value"]).shape) == tuple(xb.shape)]
    if len(match) == 1:
        return match[0]["name"]
    if len(sites) == 1:
        return sites[0]["name"]
    raise ValueError(f"several observed sites ({[s['name'] for s in sites]}); name the one that holds x with obs_site=")


def _check_observes_argument(cp: Any, xb: torch.Tensor, name: str) -> None:
    """SBC feeds the simulated value of the observed site back as the model's first argument: that
    is right only if the site observes that argument (x itself, or x reshaped)."""
    obs = poutine.trace(cp.model).get_trace(*cp.call_args(xb), **cp.kwargs).nodes[name]["value"]
    same = obs.numel() == xb.numel() and torch.equal(obs.reshape(xb.shape).to(xb.dtype), xb)
    if not same:
        raise ValueError(
            f"sbc simulates x from the model and gives it back as the model's first argument, but the observed site "
            f"{name!r} does not observe that argument (its value is not x, nor x reshaped: shape "
            f"{tuple(obs.shape)} vs {tuple(xb.shape)}). Fix: call the model with what it observes first "
            "(for a conditional model p(y | x) write model(ys, xs) and pass the inputs as model_args), or name the "
            "site that observes the first argument with obs_site="
        )


def predictive_check(
    model: Any,
    guide: Any = None,
    x: Any = None,
    *,
    kind: str = "posterior",
    num_samples: int = 100,
    statistics: Mapping[str, Statistic] | None = None,
    num_bins: int = 10,
    num_examples: int = 8,
    obs_site: str | None = None,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    max_plate_nesting: int | None = None,
    plate_name: str = DATA_PLATE,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
) -> PredictiveCheck:
    """Posterior (``kind="posterior"``) or prior (``kind="prior"``) predictive check of ``x``.

    Call as ``predictive_check(vae, x)``, ``predictive_check((model, guide), x)`` or
    ``predictive_check(model, guide, x)``. The observed site is sampled anew with
    ``poutine.uncondition`` (the guide is not used for ``kind="prior"``); ``num_samples``
    replicates per datapoint, chunked under ``memory_budget``.

    Args:
        statistics: name → function from data ``(..., N, D)`` to ``(..., N)``; default
            :data:`STATISTICS` (mean intensity, pixel variance, share of zeros).
        num_bins: bins of the reliability curve (equal width over the predicted means).
        num_examples: replicated datapoints kept for figures.
        obs_site: the observed site holding x (needed only if there are several).

    Example:
        >>> from pyro_vae.testing import LinearGaussian
        >>> lg = LinearGaussian(x_dim=5, latent_dim=2)
        >>> c = predictive_check(lg.model, lg.exact_guide, lg.sample(20), num_samples=50)
        >>> sorted(c.statistics)
        ['mean', 'variance', 'zeros']

    References:
        Gelman, Meng, Stern (1996). Posterior predictive assessment of model fitness via realized
        discrepancies. Statistica Sinica.
    """
    if kind not in ("posterior", "prior"):
        raise ValueError(f"kind must be 'posterior' or 'prior', got {kind!r}")
    m, g, x = resolve(model, guide, x, "predictive_check")
    num_samples = check_positive("num_samples", num_samples)
    num_bins = check_positive("num_bins", num_bins)
    memory_budget = check_budget(memory_budget)
    stats = dict(STATISTICS if statistics is None else statistics)
    if not stats:
        raise ValueError("statistics is empty; give at least one name → function")
    pair = make_pair(m, g, x, model_args, model_kwargs, plate_name, max_plate_nesting)
    n = x.shape[0]
    chunks, per = chunk_plan(x, num_samples, memory_budget)
    replicated = {k: torch.empty(num_samples, n, dtype=torch.float64) for k in stats}
    observed_rows: list[torch.Tensor] = []  # the observed site's values (not x: a CVAE observes ys)
    pixel_sum = pred_mean = None
    examples = None
    name = obs_site
    with torch.no_grad():
        for lo, hi in chunks:
            xb = x[lo:hi]
            cp = pair.at(lo, hi)  # per-datapoint arguments sliced with x
            obs_trace = poutine.trace(cp.model).get_trace(*cp.call_args(xb), **cp.kwargs)
            if name is None:
                name = _observed_site(obs_trace, xb, plate_name, None)
            elif name not in obs_trace.nodes:
                _observed_site(obs_trace, xb, plate_name, name)  # raises naming the observed sites
            obs = flat_values(obs_trace.nodes[name], None, hi - lo, plate_name).double().cpu()  # (B, D)
            observed_rows.append(obs)
            d = obs.shape[-1]
            if pixel_sum is None:
                pixel_sum = torch.zeros(num_samples, d, dtype=torch.float64)
                pred_mean = torch.zeros(n, d, dtype=torch.float64)
            for s0, k in sample_chunks(num_samples, per):
                if kind == "posterior":
                    gt = trace_guide(cp, xb, k)
                    mt = trace_model_on(cp, xb, gt, k, uncondition=True)
                else:
                    mt = trace_prior(cp, xb, k)
                rep = flat_values(mt.nodes[name], k, hi - lo, plate_name).double().cpu()  # (k, B, D)
                for key, fn in stats.items():
                    replicated[key][s0 : s0 + k, lo:hi] = fn(rep)
                pixel_sum[s0 : s0 + k] += rep.sum(1)
                pred_mean[lo:hi] += rep.sum(0)
                if examples is None:
                    examples = rep[0, :num_examples].clone()
    xf = torch.cat(observed_rows)
    observed = {k: torch.as_tensor(fn(xf)).double() for k, fn in stats.items()}
    for k, v in observed.items():
        if tuple(v.shape) != (n,):
            raise ValueError(f"statistic {k!r} must map (N, D) data to (N,) values; got shape {tuple(v.shape)}")
    pred_mean /= num_samples
    calibration, error = _reliability(pred_mean, xf, num_bins)
    return PredictiveCheck(
        kind=kind,
        num_samples=num_samples,
        statistics={k: StatisticCheck(k, observed[k], replicated[k]) for k in stats},
        pixel_observed=xf.mean(0),
        pixel_replicated=pixel_sum / n,
        calibration=calibration,
        calibration_error=error,
        observed_examples=xf[:num_examples].clone(),
        replicated_examples=examples if examples is not None else torch.empty(0),
    )


def _reliability(pred: torch.Tensor, obs: torch.Tensor, num_bins: int) -> tuple[dict[str, torch.Tensor], float]:
    p, o = pred.reshape(-1), obs.reshape(-1)
    lo, hi = float(p.min()), float(p.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = torch.linspace(lo, hi, num_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(p, edges[1:-1])
    count = torch.bincount(idx, minlength=num_bins).double()
    psum = torch.bincount(idx, weights=p, minlength=num_bins)
    osum = torch.bincount(idx, weights=o, minlength=num_bins)
    safe = count.clamp(min=1)
    predicted, observed = psum / safe, osum / safe
    error = float((count * (observed - predicted).abs()).sum() / count.sum())
    keep = count > 0
    return {"predicted": predicted[keep], "observed": observed[keep], "count": count[keep],
            "edges": edges}, error


# --------------------------------------------------------------------------------------------
# simulation-based calibration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SBCResult:
    """Ranks of the true latents among L guide draws, ``(N, P)``, and their uniformity test.

    Attributes:
        ranks: ``(num_simulations, P)`` integers in 0..L; P counts every latent number.
        labels: ``P`` names, ``"z[0]"``, ``"z[1]"``, ...
        counts: ``(num_bins, P)`` rank histogram.
        pvalues: ``(P,)`` chi-square uniformity p-value per dimension.
        pvalue: the Bonferroni-combined p-value min(1, P · min pvalues).
        mean_rank: ``(P,)`` mean rank / L − ½: > 0 means q(z|x) sits below the truth (biased low).
    """

    ranks: torch.Tensor
    labels: list[str]
    num_posterior_samples: int
    num_bins: int
    counts: torch.Tensor
    pvalues: torch.Tensor
    pvalue: float
    mean_rank: torch.Tensor

    @property
    def num_simulations(self) -> int:
        return int(self.ranks.shape[0])

    def summary(self) -> str:
        worst = int(torch.argmin(self.pvalues))
        return (
            f"SBC over {self.num_simulations} simulations, L={self.num_posterior_samples} guide draws, "
            f"{self.num_bins} bins: combined p = {self.pvalue:.3g} (worst {self.labels[worst]}: "
            f"p = {float(self.pvalues[worst]):.3g}, mean rank offset {float(self.mean_rank[worst]):+.3f})"
        )

    def __str__(self) -> str:
        return self.summary()


def _tie_broken_ranks(post: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """#{draws < truth} + U{0, …, #{draws == truth}} over dim 0, on the CPU.

    Discrete latents tie with their guide draws; counting only strict inequalities would pile
    the ranks low even for the exact posterior. Breaking ties uniformly at random (Talts et al.
    2018, Sec. 4.1) makes the ranks uniform on {0, …, L} for the exact posterior. The uniform
    draws come from torch's global RNG (seeded by ``pyro.set_rng_seed``), and only when a tie
    occurs, so continuous latents use no extra random numbers.
    """
    below = (post < truth).sum(0).cpu()
    ties = (post == truth).sum(0).cpu()
    if bool(ties.any()):
        u = torch.rand(ties.shape, dtype=torch.float64)
        below = below + torch.minimum((u * (ties + 1)).floor().long(), ties)
    return below


def _bins_for(num_ranks: int, wanted: int) -> int:
    for b in range(min(wanted, num_ranks), 0, -1):
        if num_ranks % b == 0:
            return b
    return 1


def sbc(
    model: Any,
    guide: Any = None,
    x: Any = None,
    *,
    num_simulations: int = 500,
    num_posterior_samples: int = 99,
    num_bins: int = 20,
    obs_site: str | None = None,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    max_plate_nesting: int | None = None,
    plate_name: str = DATA_PLATE,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
) -> SBCResult:
    """Simulation-based calibration of the amortized posterior q(z|x).

    Call as ``sbc(vae, x)``, ``sbc((model, guide), x)`` or ``sbc(model, guide, x)``; ``x`` is only
    a template for the model's data argument (its rows are repeated to ``num_simulations``; the
    observed values are resampled with ``poutine.uncondition``). For each simulation:
    z ~ p(z), x ~ p(x|z), then ``num_posterior_samples`` (L) draws from q(z|x) and the rank of
    each true latent number among them. Ties (discrete latents: the truth equals some draws) are
    broken uniformly at random, rank = #{draws < truth} + U{0, …, #{draws == truth}}, drawn from
    torch's global RNG like the simulations themselves, so ``pyro.set_rng_seed`` makes the ranks
    reproducible; without it an exact discrete posterior would show ranks piled low (p ≈ 0).

    ``num_bins`` is rounded down to a divisor of L + 1 so every bin covers as many ranks. A
    chi-square test per dimension checks uniformity; fewer than 5 simulations per bin warns
    (:class:`SampleSizeWarning`).

    Example:
        >>> from pyro_vae.testing import LinearGaussian
        >>> lg = LinearGaussian(x_dim=5, latent_dim=2)
        >>> r = sbc(lg.model, lg.exact_guide, lg.sample(1), num_simulations=100, num_bins=10)
        >>> r.ranks.shape
        torch.Size([100, 2])

    References:
        Talts, Betancourt, Simpson, Vehtari, Gelman (2018). Validating Bayesian inference
        algorithms with simulation-based calibration. arXiv:1804.06788.
    """
    from scipy.stats import chisquare

    m, g, x = resolve(model, guide, x, "sbc")
    num_simulations = check_positive("num_simulations", num_simulations)
    L = check_positive("num_posterior_samples", num_posterior_samples)
    num_bins = check_positive("num_bins", num_bins)
    memory_budget = check_budget(memory_budget)
    pair = make_pair(m, g, x, model_args, model_kwargs, plate_name, max_plate_nesting)
    rows = torch.arange(num_simulations) % x.shape[0]
    template = x[rows]
    pair = pair.take(rows)  # per-datapoint arguments follow the template's rows
    chunks, _ = chunk_plan(template, L, memory_budget)
    ranks_list, labels = [], None
    name = obs_site
    with torch.no_grad():
        for lo, hi in chunks:
            tb = template[lo:hi]
            cp = pair.at(lo, hi)
            pt = trace_prior(cp, tb)
            if name is None:
                name = _observed_site(pt, tb, plate_name, None)
            if lo == 0:
                _check_observes_argument(cp, tb, name)
            x_sim = pt.nodes[name]["value"].reshape(tb.shape)  # the model observes x, or a reshape of x
            sites = latent_sites(pt, plate_name, who="model")
            truth = torch.cat([flat_values(s, None, hi - lo, plate_name) for s in sites], dim=-1)  # (B, P)
            gt = trace_guide(cp, x_sim.to(x.dtype) if x.is_floating_point() else x_sim, L)
            draws = []
            for s in sites:
                if s["name"] not in gt.nodes:
                    raise ValueError(f"model latent {s['name']!r} has no guide site; SBC ranks every model latent")
                draws.append(flat_values(gt.nodes[s["name"]], L, hi - lo, plate_name))
            post = torch.cat(draws, dim=-1)  # (L, B, P)
            ranks_list.append(_tie_broken_ranks(post, truth.unsqueeze(0)))
            if labels is None:
                labels = [f"{s['name']}[{i}]" for s in sites for i in range(flat_values(s, None, hi - lo, plate_name).shape[-1])]
    ranks = torch.cat(ranks_list)
    bins = _bins_for(L + 1, num_bins)
    if num_simulations < 5 * bins:
        warn(
            f"SBC with {num_simulations} simulations and {bins} bins expects {num_simulations / bins:.1f} ranks per bin; "
            f"the chi-square test needs at least 5: use num_simulations >= {5 * bins} (or fewer bins)",
            SampleSizeWarning,
        )
    which = ranks * bins // (L + 1)  # (N, P)
    counts = torch.stack([torch.bincount(which[:, p], minlength=bins) for p in range(which.shape[1])], dim=1)
    pvals = torch.tensor([float(chisquare(counts[:, p].numpy()).pvalue) for p in range(counts.shape[1])],
                         dtype=torch.float64)
    combined = float(min(1.0, len(pvals) * float(pvals.min())))
    return SBCResult(
        ranks=ranks,
        labels=labels or [],
        num_posterior_samples=L,
        num_bins=bins,
        counts=counts,
        pvalues=pvals,
        pvalue=combined,
        mean_rank=ranks.double().mean(0) / L - 0.5,
    )


__all__ = ["predictive_check", "PredictiveCheck", "StatisticCheck", "STATISTICS", "sbc", "SBCResult"]
