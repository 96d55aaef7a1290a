"""Bidirectional Monte Carlo (BDMC): a sandwich around log p(x) on data simulated from the model.

For data simulated from the model, z* ~ p(z), x ~ p(x|z*), the latent z* is an exact sample of
the posterior p(z|x). Forward AIS (:func:`pyro_vae.evaluation.ais`) from f_0 to p(x, z) gives a
stochastic **lower** bound on log p(x); reverse AIS — the same chain run backwards from z* at β = 1
down to β = 0 — has weights whose mean is an unbiased estimate of 1/p(x), so

    lower = log (1/C) Σ_c w_c                 (E[lower] ≤ log p(x))
    upper = −log (1/C) Σ_c w_rev,c            (E[upper] ≥ log p(x))

The gap ``upper − lower`` bounds (stochastically) the error of forward AIS with this schedule,
number of temperatures, transitions and initial distribution on data like these: when the gap
is small, forward AIS with the same settings is accurate on this model — on simulated data, and by
extension on real data to the extent that the model fits them (Grosse et al. 2015, 2016; Wu et
al. 2017 use it to certify decoder-based models). The reverse run uses the forward run's frozen
step sizes (tuned in the forward pilot run), so both directions run the same transitions.

Example:
    >>> import pyro_vae as pv
    >>> from pyro_vae.testing import LinearGaussian
    >>> lg = LinearGaussian(x_dim=5, latent_dim=2)
    >>> res = pv.evaluation.bdmc(lg.model, lg.scaled_guide(2.0), torch.zeros(4, 5), num_steps=100,
    ...                          num_chains=16, seed=0)
    >>> exact = float(lg.log_marginal(res.x).mean())
    >>> float(res.lower.mean()) - 0.1 < exact < float(res.upper.mean()) + 0.1, abs(res.mean_gap) < 0.2
    (True, True)

References:
    Grosse, Ghahramani, Adams (2015). Sandwiching the marginal likelihood using bidirectional
    Monte Carlo. arXiv:1511.02543.
    Grosse, Ancha, Roy (2016). Measuring the reliability of MCMC inference with bidirectional
    Monte Carlo. NeurIPS.
    Wu, Burda, Salakhutdinov, Grosse (2017). On the quantitative analysis of decoder-based
    generative models. ICLR.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import pyro.poutine as poutine
import torch

from ..program import PlateError, data_args, guess_max_plate_nesting, is_latent, is_observed, vectorize
from ..vae import DATA_PLATE
from .annealing import AISResult, _check_data, _check_options, _check_step_size, _fork, _result, _run


class BDMCResult(NamedTuple):
    """The BDMC sandwich per simulated datapoint.

    ``x`` ``(N, ...)``: the data simulated from the model; ``lower`` / ``upper`` ``(N,)``: the forward-AIS
    lower bound and the reverse-AIS upper bound on log p(x_i); ``gap`` = upper − lower; ``mean_gap``
    its average; ``forward`` / ``reverse``: the two :class:`~pyro_vae.evaluation.AISResult` s
    (``reverse.per_datapoint`` is the upper bound).
    """

    x: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    gap: torch.Tensor
    mean_gap: float
    forward: AISResult
    reverse: AISResult

    def __str__(self) -> str:
        n = len(self.gap)
        se = float(self.gap.std() / math.sqrt(n)) if n > 1 else math.nan
        f = self.forward
        return (
            f"BDMC on {n} simulated datapoints: {float(self.lower.mean()):.2f} ≤ log p(x) ≤ "
            f"{float(self.upper.mean()):.2f} nats, gap {self.mean_gap:.3f} ± {se:.3f} ({f.num_chains} chains × "
            f"{f.num_steps} {f.schedule} temperatures from the {f.init}, {f.num_leapfrog} leapfrog steps)"
        )


def simulate(model: Callable, x_template: torch.Tensor, args: tuple, kwargs: dict, max_plate_nesting: int,
             plate_name: str = DATA_PLATE) -> tuple[torch.Tensor, dict]:
    """Run ``model`` with its observed site sampled (:func:`pyro.poutine.uncondition`) on ``x_template``;
    return the simulated x (shaped like ``x_template``) and the latents, in the one-chain vectorized layout."""
    one = vectorize(model, 1, max_plate_nesting)
    with torch.no_grad():
        observed_trace = poutine.trace(one).get_trace(x_template, *args, **kwargs)
    observed = [n for n, s in observed_trace.nodes.items() if is_observed(s)]
    in_plate = [n for n in observed if any(f.name == plate_name for f in observed_trace.nodes[n]["cond_indep_stack"])]
    if len(in_plate) != 1 or len(observed) != 1:
        what = "no observed site" if not observed else f"observed sites {observed}"
        raise ValueError(
            f"BDMC simulates x from the model, which needs exactly one observed sample site (the data x) inside "
            f"the {plate_name!r} plate; this model has {what}"
            f"{'' if not observed or in_plate else f' and none of them in the {plate_name!r} plate'}. Fix: observe "
            "x at a single site `pyro.sample('x', ..., obs=x)` inside the data plate, or simulate the data yourself "
            "and run forward AIS (pv.evaluation.ais) on it"
        )
    name = in_plate[0]
    with torch.no_grad():
        trace = poutine.trace(poutine.uncondition(one)).get_trace(x_template, *args, **kwargs)
    site = trace.nodes[name]
    value = site["value"]
    if value.numel() != x_template.numel():
        raise ValueError(
            f"the model's observed site {name!r} simulated a value of shape {tuple(value.shape)}, which does not "
            f"fit x_template's shape {tuple(x_template.shape)}; BDMC needs the observed site to hold x itself"
        )
    x = value.detach().reshape(x_template.shape).to(x_template.dtype)
    latents = {n: s["value"].detach() for n, s in trace.nodes.items() if is_latent(s) and n != name}
    return x, latents


def bdmc(
    model: Callable,
    guide: Callable,
    x_template: torch.Tensor,
    *args: Any,
    num_steps: int = 1000,
    num_chains: int = 16,
    schedule: str = "sigmoid",
    init: str = "guide",
    num_leapfrog: int = 5,
    step_size: float | torch.Tensor | None = None,
    target_accept: float = 0.65,
    pilot_steps: int | None = None,
    mass: str = "identity",
    memory_budget: float = 1 << 30,
    gradient_precision: str = "auto",
    max_plate_nesting: int | None = None,
    plate_name: str = DATA_PLATE,
    per_datapoint: Sequence[int | str] | None = None,
    progress: bool = False,
    seed: int | None = None,
    **kwargs: Any,
) -> BDMCResult:
    """Simulate data from the model and sandwich their log p(x) between forward and reverse AIS.

    ``x_template`` gives the shape and the number N of datapoints (its values are not used, except
    by a model that reads them beyond the observed site). z ~ p(z) and x ~ p(x|z) come from the
    model run with its observed site sampled (:func:`pyro.poutine.uncondition`); the model must
    observe x at exactly one site in the data plate. Every other argument is that of
    :func:`~pyro_vae.evaluation.ais`; the reverse run reuses the forward run's frozen step sizes and
    its gradient precision.

    Returns:
        :class:`BDMCResult`.

    Example:
        >>> import pyro_vae as pv
        >>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)),
        ...              pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
        >>> res = bdmc(vae.model, vae.guide, torch.zeros(3, 4), num_steps=20, num_chains=4, seed=0)
        >>> res.gap.shape
        torch.Size([3])
    """
    _check_options(num_steps, num_chains, schedule, init, num_leapfrog, target_accept, pilot_steps, mass,
                   memory_budget, gradient_precision)
    x_template = _check_data(model, guide, x_template, "bdmc")
    n = x_template.shape[0]
    frozen = _check_step_size(step_size, n)
    extra = data_args(n, args, kwargs, per_datapoint)
    common = dict(num_steps=num_steps, num_chains=num_chains, schedule_kind=schedule, init=init,
                  num_leapfrog=num_leapfrog, target_accept=target_accept, pilot_steps=pilot_steps, mass=mass,
                  memory_budget=memory_budget, plate_name=plate_name, progress=progress)
    with _fork(seed, x_template.device):
        if max_plate_nesting is None:
            a1, k1 = extra.chunk(0, 1)
            max_plate_nesting = guess_max_plate_nesting(model, guide, (x_template[:1], *a1), k1)
        x, latents = simulate(model, x_template, extra.args, extra.kwargs, max_plate_nesting, plate_name)
        axes = _data_axes(model, x, extra, latents, max_plate_nesting, plate_name)

        def exact(lo: int, hi: int) -> dict:
            return {k: v.narrow(axes[k], lo, hi - lo) for k, v in latents.items()}

        fw, fw_acc, steps, used = _run(model, guide, x, extra, frozen=frozen, max_plate_nesting=max_plate_nesting,
                                       desc="BDMC forward", gradient_precision=gradient_precision, **common)
        rv, rv_acc, _, _ = _run(model, guide, x, extra, frozen=steps, max_plate_nesting=max_plate_nesting,
                                exact=exact, desc="BDMC reverse", gradient_precision=used, **common)
    forward = _result(fw, fw_acc, steps, num_steps, num_chains, num_leapfrog, schedule, init, gradient_precision=used)
    reverse = _result(rv, rv_acc, steps, num_steps, num_chains, num_leapfrog, schedule, init, reverse=True,
                      gradient_precision=used)
    gap = reverse.per_datapoint - forward.per_datapoint
    return BDMCResult(x, forward.per_datapoint, reverse.per_datapoint, gap, float(gap.mean()), forward, reverse)


def _data_axes(model: Callable, x: torch.Tensor, extra: Any, latents: dict, max_plate_nesting: int,
               plate_name: str) -> dict:
    """Axis of the datapoints in each simulated latent (one-chain vectorized layout)."""
    n = max_plate_nesting + 1
    with torch.no_grad():
        trace = poutine.trace(vectorize(model, 1, max_plate_nesting)).get_trace(x, *extra.args, **extra.kwargs)
    axes = {}
    for name in latents:
        site = trace.nodes[name]
        frame = next((f for f in site["cond_indep_stack"] if f.name == plate_name), None)
        if frame is None:
            raise PlateError(
                f"latent site {name!r} sits outside the {plate_name!r} plate; BDMC (like AIS) needs every latent "
                f"inside `pyro.plate({plate_name!r}, ...)`"
            )
        axes[name] = n + frame.dim
    return axes


__all__ = ["bdmc", "BDMCResult", "simulate"]
