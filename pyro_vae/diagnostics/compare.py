"""Model comparison on held-out data, in the style of ``az.compare``.

For models m = 1..M and held-out datapoints x_1..x_N, each model's per-datapoint
log-likelihood ℓ_mi = log p̂_m(x_i) (importance sampled, :func:`importance_diagnostics`) gives

    elpd_m = Σ_i ℓ_mi,        se_m = √(N · Var_i ℓ_mi),
    elpd_diff_m = elpd_best − elpd_m,   dse_m = √(N · Var_i (ℓ_best,i − ℓ_mi))   (paired),

the same formulas ArviZ uses for PSIS-LOO, here on a test set (nothing is left out: the data
are held out already). The paired standard error is the one to read: a difference of a few
``dse`` is meaningful even when the ``se`` of each model are much larger, because per-datapoint
difficulty is shared. ``mc_se`` is the Monte Carlo error of elpd from finite K (delta method,
√Σ_i (1/ESS_i − 1/K)); k̂ > 0.7 on any datapoint sets ``warning`` — there the estimate is
unreliable and, being a stochastic lower bound, too low.

``rank_by="ais"`` scores the models given as programs by annealed importance sampling
(:func:`pyro_vae.evaluation.ais`) on the first ``ais_subset`` datapoints instead, whose
bias does not depend on the guide being a good importance proposal (k̂ is still reported, from
importance sampling on the same datapoints). A ranking by importance sampling with k̂ > 0.7
somewhere is marked uncertified (``df.attrs["certified"]``), with the exact call that certifies
it (``df.attrs["certify"]``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import torch

from ..evaluation import LogLikelihood
from ..program import data_args
from ..vae import DATA_PLATE
from ._common import DEFAULT_MEMORY_BUDGET, DiagnosticWarning
from .importance import KHAT_OK, ImportanceDiagnostics, importance_diagnostics


class KhatWarning(DiagnosticWarning):
    """Some datapoints have Pareto k̂ > 0.7: their log-likelihood estimates are unreliable."""


def _per_datapoint(name: str, entry: Any, x: Any, num_samples: int, memory_budget: float, plate_name: str,
                   max_plate_nesting: int | None, progress: bool, model_args: tuple = (),
                   model_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None, float, int]:
    """(log-likelihoods, k̂ or None, Monte Carlo variance of the sum, K) for one entry."""
    if isinstance(entry, ImportanceDiagnostics):
        d = entry
    elif isinstance(entry, LogLikelihood):
        ll = entry.per_datapoint.double()
        mc = float((1.0 / entry.ess.double() - 1.0 / entry.num_samples).clamp(min=0).sum())
        return ll, None, mc, entry.num_samples
    elif isinstance(entry, torch.Tensor) and entry.dim() == 1:
        return entry.double(), None, 0.0, 0
    else:
        if x is None:
            raise ValueError(f"model {name!r} is given as a model, so compare_models needs the held-out data x")
        d = importance_diagnostics(entry, x, num_samples=num_samples, memory_budget=memory_budget,
                                   plate_name=plate_name, max_plate_nesting=max_plate_nesting, progress=progress,
                                   model_args=model_args, model_kwargs=model_kwargs)
    ess = d.ess.clamp(min=1e-300)
    mc = float((1.0 / ess - 1.0 / d.num_samples).clamp(min=0).sum())
    return d.log_likelihood, d.khat, mc, d.num_samples


#: the call printed where an importance-sampled ranking is uncertified
CERTIFY_CALL = 'compare_models(models, x, rank_by="ais", ais_subset={subset})'


def _is_ais_result(entry: Any) -> bool:
    """An :class:`~pyro_vae.evaluation.ais.AISResult` (duck-typed: the module may be absent)."""
    return all(hasattr(entry, a) for a in ("per_datapoint", "chain_stderr", "num_chains", "log_weights"))


def _ais_per_datapoint(name: str, entry: Any, x: Any, ais_subset: int | None, ais_options: Mapping[str, Any],
                       num_samples: int, memory_budget: float, plate_name: str, max_plate_nesting: int | None,
                       progress: bool, model_args: tuple = (),
                       model_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None, float, int, str]:
    """(AIS log-likelihoods, IS k̂ on the same datapoints or None, MC variance of the sum, K, method)."""
    if _is_ais_result(entry):
        se = entry.chain_stderr.double()
        return entry.per_datapoint.double(), None, float((se * se).sum()), int(entry.num_chains), "ais"
    if isinstance(entry, (ImportanceDiagnostics, LogLikelihood)) or (isinstance(entry, torch.Tensor) and entry.dim() == 1):
        ll, khat, mc, k = _per_datapoint(name, entry, x, num_samples, memory_budget, plate_name, max_plate_nesting,
                                         progress, model_args, model_kwargs)
        return ll, khat, mc, k, "given"
    if x is None:
        raise ValueError(f"model {name!r} is given as a model, so compare_models needs the held-out data x")
    from ..evaluation.annealing import ais

    from ._common import resolve

    m, g, xs = resolve(entry, x, None, "compare_models")  # a VAE or a (model, guide) pair, and the data
    n = xs.shape[0] if ais_subset is None else min(ais_subset, xs.shape[0])
    a, kw = data_args(xs.shape[0], tuple(model_args), dict(model_kwargs or {})).chunk(0, n)  # rows follow x
    xs = xs[:n]
    res = ais(m, g, xs, *a, memory_budget=memory_budget, plate_name=plate_name, max_plate_nesting=max_plate_nesting,
              progress=progress, **dict(ais_options), **kw)
    khat = importance_diagnostics(m, g, xs, num_samples=num_samples, memory_budget=memory_budget,
                                  plate_name=plate_name, max_plate_nesting=max_plate_nesting, model_args=a,
                                  model_kwargs=kw).khat
    se = res.chain_stderr.double()
    return res.per_datapoint.double(), khat, float((se * se).sum()), int(res.num_chains), "ais"


def compare_models(
    models: Mapping[str, Any],
    x: Any = None,
    *,
    num_samples: int = 1000,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    max_plate_nesting: int | None = None,
    plate_name: str = DATA_PLATE,
    progress: bool = False,
    rank_by: str = "is",
    ais_subset: int | None = None,
    ais_options: Mapping[str, Any] | None = None,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
):
    """Rank models by held-out elpd, with standard errors and paired differences.

    Args:
        models: name → a VAE, a ``(model, guide)`` pair, an :class:`ImportanceDiagnostics`, a
            :class:`~pyro_vae.LogLikelihood` or a ``(N,)`` tensor of per-datapoint
            log-likelihoods (all on the same datapoints, in the same order).
        x: the held-out data (needed for VAEs and pairs).
        num_samples: importance samples per datapoint for models given as programs (with
            ``rank_by="ais"``: for their k̂ on the AIS datapoints).
        rank_by: ``"is"`` (importance sampling, the default) or ``"ais"``: models given as programs
            are scored by :func:`pyro_vae.evaluation.ais` on the first ``ais_subset``
            datapoints (precomputed entries, including an ``AISResult``, are taken as given and
            must cover the same datapoints).
        ais_subset: datapoints AIS scores (the first ones; ``None``: all of ``x``).
        ais_options: keyword arguments of :func:`~pyro_vae.evaluation.ais` (``num_steps``,
            ``num_chains``, ``num_leapfrog``, ``seed``, ...).
        model_args: the programs' positional arguments after x (``model(xs, ys)``); those with
            one row per datapoint are sliced with x.
        model_kwargs: their keyword arguments, likewise.

    Returns:
        pandas.DataFrame: best model first, with columns ``rank``, ``elpd``, ``se``, ``elpd_diff``,
            ``dse``, ``mc_se``, ``elpd_per_datapoint``, ``khat_max``, ``khat_bad`` (the share of
            datapoints with k̂ > 0.7), ``warning``, ``num_samples`` (K, or chains for AIS) and
            ``method`` (``"is"``, ``"ais"`` or ``"given"``); ``df.attrs`` holds ``num_data``,
            ``scale="log"``, ``rank_by``, ``certified`` (``False`` when ranking by importance
            sampling with k̂ > 0.7 on some datapoint of some model) and, when uncertified,
            ``certify``: the call that ranks by AIS instead. Render it with :func:`markdown_table`.

    Warns:
        KhatWarning: a model has datapoints with k̂ > 0.7 (named with their share; when ranking
            by importance sampling, with the call that certifies the ranking).

    Example:
        >>> import torch
        >>> df = compare_models({"a": torch.tensor([-1.0, -2.0, -1.5]), "b": torch.tensor([-1.2, -2.5, -1.6])})
        >>> list(df.index), round(float(df.loc["b", "elpd_diff"]), 3)
        (['a', 'b'], 0.8)
    """
    import pandas as pd

    if not models:
        raise ValueError("compare_models needs at least one model")
    if rank_by not in ("is", "ais"):
        raise ValueError(f"rank_by must be 'is' (importance sampling) or 'ais' (annealed importance sampling), "
                         f"got {rank_by!r}")
    if ais_subset is not None and (isinstance(ais_subset, bool) or not isinstance(ais_subset, int) or ais_subset < 1):
        raise ValueError(f"ais_subset must be a positive integer (datapoints scored by AIS) or None, got {ais_subset!r}")
    if rank_by != "ais" and (ais_options or ais_subset is not None):
        raise ValueError("ais_subset and ais_options apply to rank_by='ais' only")
    lls: dict[str, torch.Tensor] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name, entry in models.items():
        if rank_by == "ais":
            ll, khat, mc_var, k, method = _ais_per_datapoint(str(name), entry, x, ais_subset, ais_options or {},
                                                             num_samples, memory_budget, plate_name,
                                                             max_plate_nesting, progress, model_args, model_kwargs)
        else:
            ll, khat, mc_var, k = _per_datapoint(str(name), entry, x, num_samples, memory_budget, plate_name,
                                                 max_plate_nesting, progress, model_args, model_kwargs)
            method = "is" if khat is not None or isinstance(entry, LogLikelihood) else "given"
        if not bool(torch.isfinite(ll).all()):
            raise ValueError(
                f"model {name!r} has non-finite log-likelihoods for {int((~torch.isfinite(ll)).sum())} datapoints; "
                "inspect them with importance_diagnostics before comparing"
            )
        lls[str(name)] = ll
        bad = float((khat > KHAT_OK).double().mean()) if khat is not None else math.nan
        rows[str(name)] = {
            "khat_max": float(khat.max()) if khat is not None else math.nan,
            "khat_bad": bad,
            "warning": bool(khat is not None and bad > 0),
            "mc_se": math.sqrt(mc_var),
            "num_samples": k,
            "method": method,
        }
    sizes = {name: ll.numel() for name, ll in lls.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"models were scored on different numbers of datapoints: {sizes}")
    n = next(iter(sizes.values()))
    elpd = {name: float(ll.sum()) for name, ll in lls.items()}
    order = sorted(elpd, key=lambda k: -elpd[k])
    best = lls[order[0]]
    out = {}
    for rank, name in enumerate(order):
        ll = lls[name]
        diff = best - ll
        out[name] = {
            "rank": rank,
            "elpd": elpd[name],
            "se": float(ll.std() * math.sqrt(n)) if n > 1 else math.nan,
            "elpd_diff": float(diff.sum()),
            "dse": float(diff.std() * math.sqrt(n)) if n > 1 else math.nan,
            "elpd_per_datapoint": elpd[name] / n,
            **rows[name],
        }
    df = pd.DataFrame.from_dict(out, orient="index")
    df.index.name = "model"
    uncertified = rank_by == "is" and any(rows[name]["warning"] for name in order)
    df.attrs.update({"num_data": n, "scale": "log", "rank_by": rank_by, "certified": not uncertified})
    certify = CERTIFY_CALL.format(subset=min(n, 50))
    if uncertified:
        df.attrs["certify"] = certify
    for name in order:
        if rows[name]["warning"]:
            how = (f"; the ranking is uncertified: certify it with {certify}" if rank_by == "is" else
                   "; the ranking uses AIS for the models given as programs")
            warnings.warn(
                f"model {name!r}: {100 * rows[name]['khat_bad']:.1f}% of datapoints have Pareto k̂ > 0.7, so its "
                "importance-sampled log-likelihood is unreliable there (biased low); raise num_samples or improve "
                f"its guide before trusting the comparison{how}",
                KhatWarning,
                stacklevel=2,
            )
    return df


def markdown_table(df: Any, floatfmt: str = ".2f", index: bool = True) -> str:
    """A :class:`pandas.DataFrame` as a GitHub-flavoured markdown table (no ``tabulate`` needed).

    Example:
        >>> import pandas as pd
        >>> print(markdown_table(pd.DataFrame({"a": [1.0]}, index=["m"])))
        |  | a |
        |---|---:|
        | m | 1.00 |
    """
    import numpy as np

    def fmt(v: Any) -> str:
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        if isinstance(v, (float, np.floating)):
            if math.isnan(v):
                return "–"
            return format(float(v), floatfmt)
        return str(v).replace("|", "\\|")

    cols = [str(c) for c in df.columns]
    numeric = [df[c].dtype.kind in "iuf" for c in df.columns]
    head = ([str(df.index.name or "")] if index else []) + cols
    align = (["---"] if index else []) + ["---:" if num else "---" for num in numeric]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for label, row in zip(df.index, df.itertuples(index=False)):
        cells = ([fmt(label)] if index else []) + [fmt(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["compare_models", "markdown_table", "KhatWarning", "CERTIFY_CALL"]
