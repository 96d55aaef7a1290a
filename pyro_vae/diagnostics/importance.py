"""Per-datapoint importance diagnostics: Pareto k̂ (PSIS), effective sample size, bands.

For each datapoint x_i the importance weights of the guide as a proposal for the posterior,

    w_ik = p(x_i, z_ik) / q(z_ik | x_i),    z_ik ~ q(z | x_i),   k = 1..K,

are summarised by the shape k̂ of a generalized Pareto distribution fitted to their largest
M = ⌈min(K/5, 3√K)⌉ values (Pareto smoothed importance sampling, Vehtari et al. 2024). k̂
estimates how many moments the weight distribution has (1/k̂): k̂ ≤ 0.5 finite variance, the
importance-sampled log p(x_i) (and the ELBO/IWAE bounds) can be trusted; 0.5 < k̂ ≤ 0.7 finite
mean, usable but slow to converge; k̂ > 0.7 the guide misses posterior mass and no practical K
gives a reliable estimate. Pyro's ``psis_diagnostic`` fits one k̂ to the joint weight of a whole
minibatch; here there is one per datapoint.

The fit (Zhang & Stephens 2009, with the weakly informative prior of Vehtari et al.) runs
vectorized over datapoints. Only datapoints whose largest weights tie (a degenerate tail that
needs ArviZ's strict "greater than the cutoff" rule) are fitted one at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm  # plain tqdm: tqdm.auto warns in notebooks without ipywidgets

from ..program import WeightAccumulator, traced_particles
from ..vae import DATA_PLATE
from ._common import (
    DEFAULT_MEMORY_BUDGET,
    NonFiniteWeightWarning,
    SampleSizeWarning,
    check_budget,
    check_positive,
    chunk_plan,
    index_list,
    make_pair,
    resolve,
    row_chunks,
    sample_chunks,
    warn,
)

#: k̂ band edges: ≤ GOOD is good, (GOOD, OK] is ok, > OK is bad
KHAT_GOOD = 0.5
KHAT_OK = 0.7
#: fewest samples for which a Pareto tail (5 weights) can be fitted at all
MIN_SAMPLES = 25
#: fewest samples for which k̂ ≤ 0.5 can be certified (threshold 1 − 1/log10(K) reaches 0.5)
RELIABLE_SAMPLES = 100
#: samples for which the sample-size-dependent threshold reaches 0.7
FULL_THRESHOLD_SAMPLES = 2154

_TINY_LOG = math.log(torch.finfo(torch.float64).tiny)


def tail_length(num_samples: int) -> int:
    """M = ⌈min(K/5, 3√K)⌉, the number of largest weights the Pareto tail is fitted to."""
    return int(math.ceil(min(0.2 * num_samples, 3.0 * math.sqrt(num_samples))))


def khat_threshold(num_samples: int) -> float:
    """The sample-size-dependent reliability threshold min(1 − 1/log10(K), 0.7) (Vehtari et al. 2024).

    With K draws, importance sampling with k̂ above this value is unreliable even if k̂ < 0.7.
    """
    if num_samples <= 1:
        return -math.inf
    return min(1.0 - 1.0 / math.log10(num_samples), KHAT_OK)


def samples_needed(khat: float) -> float:
    """K for which a k̂ < 1 becomes reliable: 10^(1/(1 − k̂)) (inverse of :func:`khat_threshold`)."""
    if not khat < 1:
        return math.inf
    return 10.0 ** (1.0 / (1.0 - max(khat, 0.0)))


def _gpdfit_rows(x: torch.Tensor) -> torch.Tensor:
    """Zhang–Stephens estimate of the GPD shape k for each row of ``x`` (R, n), ascending, > 0 at the end.

    Identical, row by row, to ``pyro.ops.stats.fit_generalized_pareto`` and ArviZ's ``_gpdfit``,
    including the weakly informative prior k ← (n k + 10 · 0.5) / (n + 10).
    """
    _, n = x.shape
    m = 30 + int(math.sqrt(n))
    j = torch.arange(1, m + 1, dtype=x.dtype, device=x.device)
    b = 1.0 - torch.sqrt(m / (j - 0.5))  # (m,)
    quartile = x[:, int(n / 4 + 0.5) - 1]
    b = b / (3.0 * quartile.unsqueeze(-1)) + 1.0 / x[:, -1:]  # (R, m)
    k = torch.log1p(-b.unsqueeze(-1) * x.unsqueeze(1)).mean(-1)  # (R, m)
    profile = n * (torch.log(-(b / k)) - k - 1.0)
    profile = torch.nan_to_num(profile, nan=-math.inf)
    weights = torch.softmax(profile, dim=-1)
    b_post = (b * weights).sum(-1)
    k_post = torch.log1p(-b_post.unsqueeze(-1) * x).mean(-1)
    return (n * k_post + 10.0 * 0.5) / (n + 10.0)


def _khat_one(top: torch.Tensor) -> float:
    """ArviZ's rule for one datapoint: tail = weights strictly above the cutoff (and log-tiny)."""
    mx = top[0]
    rel = top - mx
    cut = max(float(rel[-1]), _TINY_LOG)
    tail = rel[:-1][rel[:-1] > cut]
    if tail.numel() <= 4:
        return math.inf
    exc = torch.exp(tail.flip(0)) - math.exp(cut)
    return float(_gpdfit_rows(exc.unsqueeze(0))[0])


#: weights whose M + 1 largest agree to within this many units of rounding are constant
_CONSTANT_ULPS = 64


def khat_from_top(top: torch.Tensor, memory_budget: float = DEFAULT_MEMORY_BUDGET,
                  eps: float = torch.finfo(torch.float64).eps) -> torch.Tensor:
    """k̂ per row from the M + 1 largest log weights of each row, sorted descending, ``(N, M + 1)``.

    Conventions (no NaN): a row with an infinite weight, or with only zero weights, gets k̂ = inf;
    a row whose M + 1 largest log weights agree to rounding error (64 ulps of the dtype the
    weights were computed in, ``eps``) gets k̂ = −inf: the weights are constant — the guide is
    the exact posterior — and a Pareto fit to rounding noise would be meaningless.
    """
    top = top.double()
    n, m1 = top.shape
    m = m1 - 1
    k = torch.full((n,), math.nan, dtype=torch.float64, device=top.device)
    mx = top[:, 0]
    k[~torch.isfinite(mx)] = math.inf  # +inf weight, or every weight zero
    ok = torch.isfinite(mx)
    idx = torch.nonzero(ok).reshape(-1)
    if idx.numel():
        rel = top[idx] - mx[idx].unsqueeze(-1)
        cut = rel[:, m].clamp(min=_TINY_LOG)
        exc = (torch.exp(rel[:, :m]) - torch.exp(cut).unsqueeze(-1)).flip(-1)  # ascending
        tol = _CONSTANT_ULPS * eps * mx[idx].abs().clamp(min=1.0)
        const = (exc[:, -1] <= 0) | (-rel[:, m] <= tol)
        k[idx[const]] = -math.inf
        ties = (exc[:, 0] <= 0) & ~const
        regular = ~ties & ~const
        reg_idx = torch.nonzero(regular).reshape(-1)
        # rows per fit so that the (rows, 30 + √M, M) temporaries stay within the budget
        per_row = 8 * 4 * m * (30 + int(math.sqrt(m)))
        for lo, hi in row_chunks(reg_idx.numel(), max(1, int(memory_budget // per_row))):
            sel = reg_idx[lo:hi]
            k[idx[sel]] = _gpdfit_rows(exc[sel])
        for i in torch.nonzero(ties).reshape(-1).tolist():  # degenerate tails: one at a time
            k[idx[i]] = _khat_one(top[idx[i]])
    # a fit that failed numerically (never seen; kept as a guard) reads as "unreliable", not NaN
    return torch.where(torch.isnan(k), torch.full_like(k, math.inf), k)


def pareto_khat(log_weights: torch.Tensor) -> torch.Tensor:
    """Per-column PSIS k̂ of log importance weights ``(K, N)`` (or one k̂ for a ``(K,)`` vector).

    Example:
        >>> lw = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))  # log-normal weights
        >>> pareto_khat(lw).shape
        torch.Size([3])
    """
    lw = torch.as_tensor(log_weights)
    eps = torch.finfo(lw.dtype).eps if lw.is_floating_point() else torch.finfo(torch.float64).eps
    lw = lw.double()
    squeeze = lw.dim() == 1
    if squeeze:
        lw = lw.unsqueeze(-1)
    if lw.dim() != 2:
        raise ValueError(f"log_weights must have shape (K,) or (K, N), got {tuple(lw.shape)}")
    num_samples = lw.shape[0]
    _check_num_samples(num_samples)
    if bool(torch.isnan(lw).any()):
        raise ValueError(f"log_weights contain NaN in columns {index_list(torch.isnan(lw).any(0))}")
    top = torch.topk(lw.T, tail_length(num_samples) + 1, dim=1).values
    k = khat_from_top(top, eps=eps)
    return k[0] if squeeze else k


def _check_num_samples(num_samples: int) -> None:
    if num_samples < MIN_SAMPLES:
        raise ValueError(
            f"k̂ needs at least {MIN_SAMPLES} importance samples per datapoint (a Pareto tail of 5 weights); "
            f"got {num_samples}. Use at least {RELIABLE_SAMPLES} (and {FULL_THRESHOLD_SAMPLES} for the full 0.7 threshold)"
        )
    if num_samples < RELIABLE_SAMPLES:
        warn(
            f"k̂ from {num_samples} samples per datapoint is unstable: its reliability threshold "
            f"1 − 1/log10(K) = {khat_threshold(num_samples):.2f} is below 0.5, so even k̂ ≤ 0.5 cannot be trusted. "
            f"Use at least {RELIABLE_SAMPLES} samples ({FULL_THRESHOLD_SAMPLES} for the 0.7 threshold; Vehtari et al. 2024)",
            SampleSizeWarning,
            stacklevel=4,
        )


# --------------------------------------------------------------------------------------------
# streaming accumulation over sample chunks
# --------------------------------------------------------------------------------------------


def stream_weights(pair: Any, guide: Any, x: torch.Tensor, num_samples: int, memory_budget: float,
                   keep: int, progress: bool = False, desc: str = "importance weights") -> WeightAccumulator:
    """Accumulate log weights of ``guide`` (a proposal for ``pair.model``) over chunks of x and samples."""
    acc = WeightAccumulator(x.shape[0], num_samples, keep)
    chunks, per = chunk_plan(x, num_samples, memory_budget)
    bar = tqdm(total=len(chunks) * math.ceil(num_samples / per), desc=desc, disable=not progress, leave=False)
    with torch.no_grad():
        for lo, hi in chunks:
            xb = x[lo:hi]
            cp = pair.at(lo, hi)  # per-datapoint arguments sliced with x
            for _, k in sample_chunks(num_samples, per):
                acc.update(lo, hi, traced_particles(cp.model, guide, cp.call_args(xb), cp.kwargs, k,
                                                    cp.max_plate_nesting, cp.plate_name).log_weights)
                bar.update()
    bar.close()
    return acc


# --------------------------------------------------------------------------------------------
# the public result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportanceDiagnostics:
    """Per-datapoint importance diagnostics of a guide as proposal (all tensors ``(N,)``, float64).

    Attributes:
        khat: Pareto k̂ per datapoint (inf: an infinite or all-zero weight; −inf: constant weights).
        ess: importance-sampling effective sample size (Σw)²/Σw², between 1 and K.
        log_likelihood: the importance-sampled log p(x_i) (the estimator of
            :func:`pyro_vae.log_likelihood`), from the same weights.
        elbo: the ELBO estimate per datapoint (mean log weight) and ``elbo_se`` its MC error.
        num_samples: K, importance samples per datapoint.
        tail_length: M, the weights the Pareto tail was fitted to.
        threshold: min(1 − 1/log10 K, 0.7): k̂ above it is unreliable at this K.
        worst: indices of the ``num_worst`` datapoints with the largest k̂, worst first.
    """

    khat: torch.Tensor
    ess: torch.Tensor
    log_likelihood: torch.Tensor
    elbo: torch.Tensor
    elbo_se: torch.Tensor
    num_samples: int
    tail_length: int
    threshold: float
    worst: torch.Tensor = field(repr=False)

    @property
    def num_data(self) -> int:
        return int(self.khat.shape[0])

    @property
    def relative_ess(self) -> torch.Tensor:
        """ESS / K per datapoint."""
        return self.ess / self.num_samples

    @property
    def counts(self) -> dict[str, int]:
        """Datapoints per band: good (k̂ ≤ 0.5), ok (0.5 < k̂ ≤ 0.7), bad (k̂ > 0.7, inf included)."""
        k = self.khat
        return {
            "good": int((k <= KHAT_GOOD).sum()),
            "ok": int(((k > KHAT_GOOD) & (k <= KHAT_OK)).sum()),
            "bad": int((k > KHAT_OK).sum()),
        }

    @property
    def shares(self) -> dict[str, float]:
        """Share of datapoints per band (sums to 1)."""
        return {band: c / self.num_data for band, c in self.counts.items()}

    def table(self, num: int = 10):
        """The ``num`` worst datapoints as a :class:`pandas.DataFrame` (index, k̂, ESS, log p(x), ELBO)."""
        import pandas as pd

        order = torch.argsort(self.khat, descending=True)[:num]
        return pd.DataFrame(
            {
                "khat": self.khat[order].numpy(),
                "ess": self.ess[order].numpy(),
                "log_likelihood": self.log_likelihood[order].numpy(),
                "elbo": self.elbo[order].numpy(),
            },
            index=pd.Index(order.numpy(), name="datapoint"),
        )

    def to_elpd_data(self, obs_coords: Any = None):
        """An ArviZ ``ELPDData`` carrying these k̂ (for ``az.plot_khat``) and the held-out elpd.

        ArviZ labels the total ``elpd_loo``; here it is Σ_i log p(x_i) of the diagnosed
        datapoints, importance sampled — an expected log predictive density of held-out data
        when x is a test set. ``p_loo`` has no meaning here and is 0.
        """
        from ._arviz_groups import make_elpd_data  # ArviZ 0.x ELPDData or 1.x ELPDDataLOO

        return make_elpd_data(self.log_likelihood.numpy(), self.khat.numpy(), n_samples=self.num_samples,
                              good_k=self.threshold, obs_coords=obs_coords)

    def summary(self) -> str:
        c, s = self.counts, self.shares
        lines = [
            f"Pareto k̂ over {self.num_data} datapoints (K={self.num_samples}, tail M={self.tail_length}):",
            f"  good  k̂ ≤ 0.5        {c['good']:6d}  {100 * s['good']:5.1f}%",
            f"  ok    0.5 < k̂ ≤ 0.7  {c['ok']:6d}  {100 * s['ok']:5.1f}%",
            f"  bad   k̂ > 0.7        {c['bad']:6d}  {100 * s['bad']:5.1f}%",
            f"  median ESS {float(self.ess.median()):.1f} of {self.num_samples}; "
            f"reliability threshold at this K: {self.threshold:.2f}",
        ]
        if self.num_data:
            w = self.worst[:5].tolist()
            lines.append("  worst: " + ", ".join(f"#{i} (k̂={float(self.khat[i]):.2f})" for i in w))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def importance_diagnostics(
    model: Any,
    guide: Any = None,
    x: Any = None,
    *,
    num_samples: int = 1000,
    num_worst: int = 10,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    max_plate_nesting: int | None = None,
    plate_name: str = DATA_PLATE,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    progress: bool = False,
) -> ImportanceDiagnostics:
    """Pareto k̂, ESS and the importance-sampled log p(x) for every datapoint of ``x``.

    Call as ``importance_diagnostics(vae, x)``, ``importance_diagnostics((model, guide), x)`` or
    ``importance_diagnostics(model, guide, x)``: any Pyro pair whose sample sites all sit in
    the data plate. Vectorized over datapoints and samples and chunked so one chunk's working
    set stays under ``memory_budget`` bytes (:func:`pyro_vae.evaluation.plan_chunks`); only the
    M + 1 largest weights of each datapoint are kept between chunks.

    Args:
        num_samples: K, importance samples per datapoint. At least 25 (a tail of 5 weights);
            fewer than 100 warns (:class:`SampleSizeWarning`); 2154 or more makes the 0.7
            threshold fully reliable.
        num_worst: how many of the worst datapoints to list in ``.worst``.

    Raises:
        PlateError: a site outside the data plate (a guide that is not amortized over it), or
            a model with no data plate.
        ValueError: NaN log weights (named by datapoint), bad arguments.

    Warns:
        NonFiniteWeightWarning: datapoints with an infinite weight or only zero weights (they get
            k̂ = inf and are named).

    Example:
        >>> from pyro_vae.testing import LinearGaussian
        >>> lg = LinearGaussian(x_dim=5, latent_dim=2)
        >>> d = importance_diagnostics(lg.model, lg.scaled_guide(1.5), lg.sample(4), num_samples=200)
        >>> d.khat.shape, d.counts["good"]
        (torch.Size([4]), 4)

    References:
        Vehtari, Simpson, Gelman, Yao, Gabry (2024). Pareto smoothed importance sampling. JMLR.
        Yao, Vehtari, Simpson, Gelman (2018). Yes, but did it work?: evaluating variational inference. ICML.
    """
    m, g, x = resolve(model, guide, x, "importance_diagnostics")
    num_samples = check_positive("num_samples", num_samples)
    memory_budget = check_budget(memory_budget)
    _check_num_samples(num_samples)
    pair = make_pair(m, g, x, model_args, model_kwargs, plate_name, max_plate_nesting)
    M = tail_length(num_samples)
    acc = stream_weights(pair, pair.guide, x, num_samples, memory_budget, M + 1, progress)
    return finish(acc, num_worst, memory_budget)


def finish(acc: WeightAccumulator, num_worst: int, memory_budget: float = DEFAULT_MEMORY_BUDGET,
           warn_nonfinite: bool = True) -> ImportanceDiagnostics:
    """Turn accumulated weights into :class:`ImportanceDiagnostics` (k̂ from the kept top weights)."""
    K = acc.num_samples
    M = tail_length(K)
    khat = khat_from_top(acc.top[:, : M + 1], memory_budget, acc.eps)
    ll = acc.log_likelihood()
    bad_inf = acc.posinf > 0
    bad_zero = acc.lse == -math.inf
    if warn_nonfinite and bool(bad_inf.any()):
        warn(
            f"datapoints {index_list(bad_inf)} got an infinite importance weight (log q(z|x) = −inf at a draw "
            "from q, or p(x, z) = inf, e.g. a likelihood scale of 0): their k̂ is inf and their log p(x) "
            "estimate +inf is meaningless",
            NonFiniteWeightWarning,
            stacklevel=4,
        )
    if warn_nonfinite and bool(bad_zero.any()):
        warn(
            f"datapoints {index_list(bad_zero)} got zero weight from every sample (p(x, z) = 0 wherever q put "
            "its draws, e.g. data outside the likelihood's support): their k̂ is inf and log p(x) is −inf",
            NonFiniteWeightWarning,
            stacklevel=4,
        )
    elbo, elbo_se = acc.elbo()
    order = torch.argsort(torch.nan_to_num(khat, posinf=1e300, neginf=-1e300), descending=True, stable=True)
    return ImportanceDiagnostics(
        khat=khat,
        ess=acc.ess(),
        log_likelihood=ll,
        elbo=elbo,
        elbo_se=elbo_se,
        num_samples=K,
        tail_length=M,
        threshold=khat_threshold(K),
        worst=order[: max(0, int(num_worst))],
    )


def psis_khat(
    model: Any,
    guide: Any = None,
    x: Any = None,
    *,
    num_samples: int = 1000,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    max_plate_nesting: int | None = None,
    plate_name: str = DATA_PLATE,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Pareto k̂ of the importance weights p(x_i, z)/q(z|x_i), one per datapoint, shape ``(N,)``.

    A shortcut for ``importance_diagnostics(...).khat``; see :func:`importance_diagnostics`.

    Example:
        >>> from pyro_vae.testing import LinearGaussian
        >>> lg = LinearGaussian(x_dim=5, latent_dim=2)
        >>> psis_khat(lg.model, lg.scaled_guide(1.5), lg.sample(3), num_samples=200).shape
        torch.Size([3])
    """
    return importance_diagnostics(
        model, guide, x, num_samples=num_samples, memory_budget=memory_budget, max_plate_nesting=max_plate_nesting,
        plate_name=plate_name, model_args=model_args, model_kwargs=model_kwargs, progress=progress,
    ).khat


__all__ = [
    "ImportanceDiagnostics",
    "importance_diagnostics",
    "psis_khat",
    "pareto_khat",
    "khat_threshold",
    "tail_length",
    "samples_needed",
    "KHAT_GOOD",
    "KHAT_OK",
]
