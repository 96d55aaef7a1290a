"""Annealed importance sampling (AIS): per-datapoint estimates of log p(x) for any model/guide pair.

AIS (Neal 2001) moves ``C`` chains per datapoint x through a sequence of unnormalized densities

    f_β(z) = q(z|x)^(1−β) · p(x, z)^β      (``init="guide"``, the default: f_0 = q, Z_0 = 1)
    f_β(z) = p(z) · p(x|z)^β               (``init="prior"``:                f_0 = p(z), Z_0 = 1)

at temperatures 0 = β_0 < β_1 < … < β_{T−1} = 1 (f_1 = p(x, z), whose normalizer is Z_1 = p(x)).
Each chain starts at z_0 ~ f_0 and alternates a weight update and a transition that leaves
f_{β_t} invariant (here: one Hamiltonian Monte Carlo step of ``num_leapfrog`` leapfrog steps
with a Metropolis test per chain and datapoint):

    log w = Σ_{t=1}^{T−1} [log f_{β_t}(z_{t−1}) − log f_{β_{t−1}}(z_{t−1})]
          = Σ_{t=1}^{T−1} (β_t − β_{t−1}) · B(z_{t−1}),        z_t ~ HMC_{β_t}(z_{t−1})

with B = log p(x, z) − log q(z|x) (guide start) or B = log p(x|z) (prior start). The weight
is unbiased, E[w] = Z_1 / Z_0 = p(x), for any schedule and any transitions that leave each f_β
invariant, so log p̂(x) = log (1/C) Σ_c w_c is a **stochastic lower bound**: E[log p̂(x)] ≤
log p(x) by Jensen's inequality, with a gap that shrinks as the number of temperatures grows
(and that vanishes when f_0 is the exact posterior: then B ≡ log p(x) and every weight equals it).

**Reverse AIS** (Grosse, Ghahramani, Adams 2015) runs the same chain backwards, from an exact
posterior sample z ~ p(z|x) at β = 1 down to β = 0. Its weight w_rev is an unbiased estimate of
Z_0 / Z_1 = 1/p(x), so −log (1/C) Σ_c w_rev,c is a **stochastic upper bound** on log p(x). Exact
posterior samples are available for data simulated from the model (z ~ p(z), x ~ p(x|z)); the
pair of bounds is bidirectional Monte Carlo (:func:`pyro_vae.evaluation.bdmc`), and its gap
bounds the error of forward AIS with that schedule on that model (Grosse, Ancha, Roy 2016; Wu et al. 2017).

Discrete latents: a guide site marked for enumeration (``config_enumerate``) is summed out
exactly, so the chains move the continuous latents z alone under the marginals
log p(x, z) = log Σ_y p(x, y, z) and log q(z|x) = log Σ_y q(y|x) q(z|x, y) (the program runs once
per value of y at every evaluation).

How it runs:

* **From traces of your program** — no hand-written density. The latents are the model's
  non-observed sample sites; ``log p(x, z)`` and ``log p(z)`` come from tracing ``model`` conditioned
  (:func:`pyro.poutine.condition`) on the chains' values, and ``log q(z|x)`` from the guide
  conditioned on the same values (so structured guides q(z₂|z₁, x) are right). A guide whose
  distributions depend only on x (not on other latents) is traced once per chunk and its
  distributions reused. Every site's log-density is reduced to ``(chains, datapoints)`` with
  :func:`pyro_vae.program.site_log_prob` (summed over other plates, masks and relative scales
  applied), vectorized over datapoints × chains (:func:`pyro_vae.program.vectorize`, the
  chains being the particle plate).
* **Unconstrained space.** Each latent is moved as u with z = T(u), T = ``biject_to(support)``,
  and log |det ∂T/∂u| added to f_β (a β-independent term, so the weights are unchanged).
* **One gradient evaluation per leapfrog step.** log f_β = A + β·B (A = log q + log|J| or
  log p(z) + log|J|), and ∇A and ∇B are kept separately, so the gradient at the end of one
  trajectory is reused at the next trajectory's start and at the next temperature
  (∇ log f_β' = ∇A + β'∇B) — L gradient evaluations per temperature, the log-densities of the
  weight update and of the Metropolis test read off the same passes. The leapfrog is written out
  here rather than calling :func:`pyro.ops.integrator.velocity_verlet` because that integrator
  takes one scalar step size and one summed potential, while AIS needs a step size per datapoint
  and per-chain energies for a Metropolis test per (chain, datapoint).
* **Gradients in bfloat16, densities in full precision** (``gradient_precision``). The leapfrog
  map is reversible and volume-preserving for *any* gradient field that is a fixed function of
  the position, so the proposal may follow a cheaper approximation of ∇ log f_β while the
  Metropolis test and the weight updates use the exact log-densities: each transition still
  leaves f_β invariant and the weights stay unbiased; a worse approximation only lowers the
  acceptance rate. ``"bfloat16"`` computes the gradient under bfloat16 autocast (the program's
  matmuls in bfloat16; on CPUs with AMX about 8× float32's matmul throughput) and evaluates the
  exact densities once per transition, at the proposal, with a float32 forward pass (no backward).
  ``"auto"`` (default) does so for float32 models on such hardware when, at the chains' starting
  points, the bfloat16 gradient is within 5% of the exact one; else ``"full"``. Either way the
  inner leapfrog steps (all but the last) take ∇ log f_β in one backward pass without the
  densities' values (:class:`pyro_vae._kernels.gradient_only` skips the Bernoulli log-density's
  softplus over every pixel; its gradient is exact).
* **Step sizes tuned in a pilot run, then frozen.** A pilot AIS run (``pilot_steps`` temperatures
  of the same schedule, its weights discarded) adapts each datapoint's log step size toward
  ``target_accept`` (Robbins–Monro on the mean Metropolis acceptance probability over chains),
  in up to 10 blocks of temperatures; the scored run then uses the frozen step size of each block.
  **Adapting during the scored run would break the unbiasedness of p̂(x)**: the transitions would
  depend on the chain's own past, so they would no longer leave each f_β invariant.
* **Mass matrix**: identity, or ``mass="guide"`` — diagonal, the inverse of the guide's variance
  at the start (q's stddev per coordinate; for a constrained latent the spread of the chains'
  unconstrained starting values).
* **Chunked** over datapoints under ``memory_budget``; ``seed`` runs on a forked random stream.

Diagnostics per datapoint: the spread of the chain weights (delta-method standard error of
log p̂, ESS = (Σw)²/Σw², Pareto k̂ of the chain weights — NaN with fewer than 25 chains, where
a tail of 5 weights cannot be fitted) and the HMC acceptance rate.

Example:
    >>> import pyro_vae as pv
    >>> from pyro_vae.testing import LinearGaussian
    >>> lg = LinearGaussian(x_dim=5, latent_dim=2)
    >>> x = lg.sample(3)
    >>> res = pv.evaluation.ais(lg.model, lg.scaled_guide(2.0), x, num_steps=100, num_chains=8, seed=0)
    >>> res.log_weights.shape
    torch.Size([3, 8])
    >>> bool((res.per_datapoint - lg.log_marginal(x)).abs().max() < 0.1)
    True

References:
    Neal (2001). Annealed importance sampling. Statistics and Computing 11.
    Grosse, Ghahramani, Adams (2015). Sandwiching the marginal likelihood using bidirectional
    Monte Carlo. arXiv:1511.02543.
    Grosse, Ancha, Roy (2016). Measuring the reliability of MCMC inference with bidirectional
    Monte Carlo. NeurIPS.
    Wu, Burda, Salakhutdinov, Grosse (2017). On the quantitative analysis of decoder-based
    generative models. ICLR.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import pyro
import pyro.poutine as poutine
import torch
from pyro.ops.stats import fit_generalized_pareto
from torch.distributions import biject_to
from tqdm import tqdm  # plain tqdm: tqdm.auto warns in notebooks without ipywidgets

from .. import _kernels
from ..data import as_data, model_dtype
from ..program import (
    PlateError,
    data_args,
    enumerated_assignments,
    enumerated_sites,
    guess_max_plate_nesting,
    is_latent,
    is_observed,
    particle_traces,
    plain_vae,
    reduce_site,
    site_log_prob,
    vectorize,
)
from ..vae import DATA_PLATE

SCHEDULES = ("sigmoid", "geometric", "linear")
INITS = ("guide", "prior")
MASSES = ("identity", "guide")
PRECISIONS = ("auto", "full", "bfloat16")
#: ``gradient_precision="auto"`` keeps bfloat16 gradients only when, at the chains' starting
#: points, they differ from the exact ones by less than this (relative L2 norm, at β = 1)
SURROGATE_TOLERANCE = 0.05
#: the sigmoid schedule's radius δ (Grosse et al. 2015): β̃_t = σ(δ (2t/(T−1) − 1)), rescaled to [0, 1]
SIGMOID_RADIUS = 4.0
#: the geometric schedule's first non-zero temperature
GEOMETRIC_START = 1e-4
#: at most this many temperature blocks get their own frozen step size
MAX_BLOCKS = 10
#: the pilot gives each block at least this many transitions
PILOT_PER_BLOCK = 10
#: fewest chains for which a Pareto k̂ of the chain weights is fitted (a tail of 5 weights)
MIN_KHAT_CHAINS = 25
#: working memory per (chain, datapoint, feature of x): activations kept for the backward pass
_BYTES_PER_ELEMENT = 128
_ADAPT_GAIN = 1.0
_LOG_STEP_BOUNDS = (math.log(1e-6), math.log(1e3))


def schedule(kind: str, num_steps: int) -> torch.Tensor:
    """Annealing temperatures β_0 = 0 < … < β_{T−1} = 1, shape ``(num_steps,)``, float64.

    ``"sigmoid"`` (default): σ(δ (2t/(T−1) − 1)) with δ = 4, rescaled to start at 0 and end at 1
    (Grosse et al. 2015) — dense near both ends; ``"geometric"``: 0, then 10⁻⁴ … 1 geometrically
    spaced (dense near 0); ``"linear"``: evenly spaced.

    Example:
        >>> schedule("linear", 5)
        tensor([0.0000, 0.2500, 0.5000, 0.7500, 1.0000], dtype=torch.float64)
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(map(repr, SCHEDULES))}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2 (β = 0 and β = 1 at least), got {num_steps!r}")
    f64 = torch.float64
    if kind == "linear":
        betas = torch.linspace(0.0, 1.0, num_steps, dtype=f64)
    elif kind == "sigmoid":
        s = torch.sigmoid(torch.linspace(-SIGMOID_RADIUS, SIGMOID_RADIUS, num_steps, dtype=f64))
        betas = (s - s[0]) / (s[-1] - s[0])
    else:
        rest = torch.logspace(math.log10(GEOMETRIC_START), 0.0, num_steps - 1, dtype=f64)
        betas = torch.cat([torch.zeros(1, dtype=f64), rest])
    betas[0], betas[-1] = 0.0, 1.0
    return betas


class AISResult(NamedTuple):
    """Per-datapoint AIS estimates and their diagnostics.

    ``per_datapoint`` ``(N,)``: log p̂(x_i) = log-mean-exp over chains of the chain log weights, a
    stochastic lower bound on log p(x_i) (for a reverse run, see :func:`pyro_vae.evaluation.bdmc`,
    a stochastic upper bound). ``mean`` / ``stderr``: their average and its standard error over
    datapoints (std/√N). ``log_weights`` ``(N, C)`` float64: the chain log weights (for a reverse
    run −log w_rev, each an upper bound on average). ``chain_stderr`` ``(N,)``: delta-method
    standard error of log p̂(x_i) from the spread of the chain weights, sd(w)/(√C · mean(w)) (NaN
    for one chain). ``ess`` ``(N,)``: (Σw)²/Σw² over chains. ``khat`` ``(N,)``: Pareto k̂ of the
    chain weights (NaN with fewer than 25 chains; −inf when the weights are all equal).
    ``accept_rate`` ``(N,)``: mean Metropolis acceptance probability over the scored run.
    ``step_size`` ``(num_blocks, N)``: the frozen step sizes of the scored run, one row per block
    of temperatures (transition t of T − 1 uses row ⌊t · num_blocks / (T − 1)⌋).
    ``gradient_precision``: the leapfrog's gradients, ``"full"`` (the model's dtype) or
    ``"bfloat16"`` (the densities of the weights and of the Metropolis test are always full).
    """

    per_datapoint: torch.Tensor
    mean: float
    stderr: float
    log_weights: torch.Tensor
    chain_stderr: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    accept_rate: torch.Tensor
    step_size: torch.Tensor
    num_steps: int
    num_chains: int
    num_leapfrog: int
    schedule: str
    init: str
    gradient_precision: str = "full"

    def __str__(self) -> str:
        n = len(self.per_datapoint)
        return (
            f"AIS log p(x) ≈ {self.mean:.2f} ± {self.stderr:.2f} nats (N={n}; {self.num_chains} chains × "
            f"{self.num_steps} {self.schedule} temperatures from the {self.init}, {self.num_leapfrog} leapfrog "
            f"steps, {self.gradient_precision} gradients; acceptance {float(self.accept_rate.mean()):.2f}, median chain ESS "
            f"{float(self.ess.median()):.1f}, mean chain SE {float(self.chain_stderr.mean()):.3f})"
        )


# --------------------------------------------------------------------------------------------
# the annealed target, from traces of the program
# --------------------------------------------------------------------------------------------
@dataclass
class _Site:
    """One latent site: its transform to unconstrained space and where the rows sit in its value."""

    name: str
    transform: Any
    real: bool  # identity transform (support is the reals)
    data_axis: int  # axis of the datapoints in the site's value (and in u)
    site: dict  # the model's site at the initial trace (mask, plates)
    guide_site: dict | None


@dataclass
class _State:
    """Chains' positions and the two parts of log f_β = A + β·B with their gradients."""

    u: dict
    A: torch.Tensor  # (C, b)
    B: torch.Tensor  # (C, b)
    gA: dict
    gB: dict


def _sum_rows(t: torch.Tensor, data_axis: int) -> torch.Tensor:
    """Sum every axis of ``t`` but the chain axis (0) and ``data_axis``: ``(C|1, b)``."""
    others = tuple(d for d in range(1, t.dim()) if d != data_axis)
    return t.sum(dim=others) if others else t


class _Target:
    """log f_β(u) = A(u) + β B(u) of one chunk of datapoints for ``num_chains`` chains."""

    def __init__(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, num_chains: int,
                 max_plate_nesting: int, plate_name: str, init: str) -> None:
        self.args, self.kwargs, self.init, self.plate_name = args, kwargs, init, plate_name
        self.num_chains = num_chains
        self.model = vectorize(model, num_chains, max_plate_nesting)
        self.guide = vectorize(guide, num_chains, max_plate_nesting)
        with torch.no_grad():
            self.traces = tr = particle_traces(model, guide, args, kwargs, num_chains, max_plate_nesting, plate_name)
        self.batch_size = tr.batch_size
        self.scale = 1.0 / tr.data_scale
        mt, gt = tr.model_trace, tr.guide_trace
        self.observed = [n for n, s in mt.nodes.items() if is_observed(s)]
        # discrete guide sites marked for enumeration are summed out exactly in both densities
        self.enum = [n for n in enumerated_sites(gt) if n in mt.nodes]
        self.enum_values = enumerated_assignments(gt, self.enum)
        names = [n for n, s in mt.nodes.items() if is_latent(s) and n not in self.enum]
        for name, s in gt.nodes.items():
            if is_latent(s) and name not in mt.nodes:
                raise ValueError(
                    f"guide site {name!r} has no counterpart in the model (an auxiliary variable); AIS anneals "
                    "between the guide and the model over the model's latents, so every guide latent must be a "
                    "model latent. Fix: remove it from the guide, or integrate it out inside the guide"
                )
        for name in names:
            if name not in gt.nodes:
                raise ValueError(
                    f"latent site {name!r} of the model has no matching site in the guide; AIS needs the guide to "
                    "draw every latent of the model (for init='guide' it is the starting distribution)"
                )
        for name in [*names, *self.enum, *self.observed]:
            _, in_plate = reduce_site(torch.zeros(()), mt.nodes[name], tr, plate_name)
            if not in_plate:
                raise PlateError(
                    f"sample site {name!r} sits outside the {plate_name!r} plate, so it is shared by all datapoints "
                    f"and per-datapoint AIS estimates are undefined. Fix: move it inside `pyro.plate({plate_name!r}, "
                    "...)` (a local latent), or fix global latents at a point estimate before evaluating"
                )
        n = tr.num_dims
        self.sites: list[_Site] = []
        for name in names:
            ms, gs = mt.nodes[name], gt.nodes[name]
            for s, who in ((ms, "model"), (gs, "guide")):
                support = s["fn"].support
                if support.is_discrete:
                    raise ValueError(
                        f"latent site {name!r} is discrete ({type(s['fn']).__name__} in the {who}); AIS moves the "
                        "latents with Hamiltonian Monte Carlo and needs every other latent to be continuous. Fix: "
                        "mark the guide's site for enumeration (pyro.infer.config_enumerate, or "
                        "infer={'enumerate': 'parallel'}) to sum it out exactly, as log_likelihood does"
                    )
            transform = _unconstraining(ms["fn"].support, gs["fn"].support)
            if transform is None:
                raise ValueError(
                    f"latent site {name!r} has support {ms['fn'].support} with no bijection to unconstrained space "
                    "(torch.distributions.biject_to); AIS runs HMC in unconstrained space. Fix: reparametrize the "
                    "site with a distribution whose support torch can map to the reals"
                )
            frame = next(f for f in ms["cond_indep_stack"] if f.name == plate_name)
            value = ms["value"]
            event = len(ms["fn"].event_shape)
            if value.dim() - event != n or value.shape[0] != num_chains:
                raise ValueError(
                    f"latent site {name!r} has value shape {tuple(value.shape)}, not (chains, …, datapoints, …) "
                    f"with {n} batch dims; declare its batch dims with plates or .to_event()"
                )
            data_axis = n + frame.dim
            if value.shape[data_axis] != self.batch_size:
                raise ValueError(
                    f"latent site {name!r} has {value.shape[data_axis]} rows along the {plate_name!r} plate, "
                    f"expected one per datapoint ({self.batch_size}); AIS needs a latent per datapoint"
                )
            self.sites.append(_Site(name, transform, _is_identity(transform), data_axis, ms, gs))
        self.guide_fns = self._cached_guide() if init == "guide" and not self.enum else None
        #: the leapfrog's gradients under bfloat16 autocast (set by :func:`_choose_precision`)
        self.bfloat16 = False
        self.device_type = tr.model_trace.nodes[self.sites[0].name]["value"].device.type if self.sites else "cpu"

    # -- the guide: traced once when its distributions depend on x alone ---------------------------
    def _cached_guide(self) -> dict | None:
        gt = self.traces.guide_trace
        with torch.enable_grad():
            leaves = {s.name: gt.nodes[s.name]["value"].detach().requires_grad_(True) for s in self.sites}
            g2 = poutine.trace(poutine.condition(self.guide, data=leaves)).get_trace(*self.args, **self.kwargs)
            for s in self.sites:
                lp = g2.nodes[s.name]["fn"].log_prob(leaves[s.name].detach())
                if lp.requires_grad:
                    grads = torch.autograd.grad(lp.sum(), list(leaves.values()), retain_graph=True, allow_unused=True)
                    if any(g is not None for g in grads):
                        return None  # q(z_i | other latents): replay the guide at every evaluation
        # q depends on x (and parameters) alone: keep its distributions, built without a graph
        values = {s.name: gt.nodes[s.name]["value"].detach() for s in self.sites}
        with torch.no_grad(), pyro.validation_enabled(False):  # HMC proposals may leave the support: rejected
            g3 = poutine.trace(poutine.condition(self.guide, data=values)).get_trace(*self.args, **self.kwargs)
        return {s.name: g3.nodes[s.name]["fn"] for s in self.sites}

    # -- evaluation ------------------------------------------------------------------------------------
    def _terms(self, trace: Any, names: Sequence[str], sites: dict | None = None) -> torch.Tensor:
        total = None
        for name in names:
            site = trace.nodes[name]
            lp, _ = site_log_prob(site, self.traces, self.plate_name)
            scale = site["scale"] * self.scale
            lp = lp if scale == 1.0 else lp * scale
            total = lp if total is None else total + lp
        return total

    def _log_q(self, z: dict) -> torch.Tensor:
        if self.guide_fns is None:
            gt = poutine.trace(poutine.condition(self.guide, data=z)).get_trace(*self.args, **self.kwargs)
            return self._terms(gt, [s.name for s in self.sites])
        total = None
        for s in self.sites:
            gs = s.guide_site
            lp = reduce_site(self.guide_fns[s.name].log_prob(z[s.name]), gs, self.traces, self.plate_name)[0]
            scale = gs["scale"] * self.scale
            lp = lp if scale == 1.0 else lp * scale
            total = lp if total is None else total + lp
        return total

    def _enumerated(self, z: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """log p(z), log p(x | z) and log q(z | x) with the enumerated sites y summed out exactly:
        log p(z) = log Σ_y p(y, z), log p(x, z) = log Σ_y p(x, y, z), log q(z|x) = log Σ_y q(y|x) q(z|x, y)."""
        cont = [s.name for s in self.sites]
        prior, joint, q = [], [], []
        for values in self.enum_values:
            data = {**z, **values}
            mt = poutine.trace(poutine.condition(self.model, data=data)).get_trace(*self.args, **self.kwargs)
            lp = self._terms(mt, [*cont, *self.enum])
            ll = self._terms(mt, self.observed)
            prior.append(lp)
            joint.append(lp if ll is None else lp + ll)
            if self.init == "guide":
                gt = poutine.trace(poutine.condition(self.guide, data=data)).get_trace(*self.args, **self.kwargs)
                q.append(self._terms(gt, [*cont, *self.enum]))
        log_prior = torch.logsumexp(torch.stack(torch.broadcast_tensors(*prior)), 0)
        log_joint = torch.logsumexp(torch.stack(torch.broadcast_tensors(*joint)), 0)
        log_q = torch.logsumexp(torch.stack(torch.broadcast_tensors(*q)), 0) if q else None
        return log_prior, log_joint - log_prior, log_q

    def to_unconstrained(self, z: dict) -> dict:
        return {s.name: (z[s.name] if s.real else s.transform.inv(z[s.name])).detach() for s in self.sites}

    def _densities(self, leaves: dict) -> tuple:
        """log q(z|x) (None for a prior start), log p(z), log p(x|z) and log |det ∂T/∂u| (None when
        every latent is real) at the unconstrained values ``leaves``."""
        n = self.traces.num_dims
        z, log_jac = {}, None
        for s in self.sites:
            leaf = leaves[s.name]
            if s.real:
                z[s.name] = leaf
                continue
            zs = s.transform(leaf)
            z[s.name] = zs
            j = s.transform.log_abs_det_jacobian(leaf, zs)
            if j.dim() > n:
                j = j.reshape(*j.shape[:n], -1).sum(-1)
            j = reduce_site(j, s.site, self.traces, self.plate_name)[0]
            log_jac = j if log_jac is None else log_jac + j
        if self.enum:
            log_prior, log_lik, log_q = self._enumerated(z)
        else:
            mt = poutine.trace(poutine.condition(self.model, data=z)).get_trace(*self.args, **self.kwargs)
            log_prior = self._terms(mt, [s.name for s in self.sites])
            log_lik = self._terms(mt, self.observed)
            log_q = self._log_q(z) if self.init == "guide" else None
        if log_lik is None:
            log_lik = torch.zeros_like(log_prior)
        return log_q, log_prior, log_lik, log_jac

    def _split(self, log_q: Any, log_prior: torch.Tensor, log_lik: torch.Tensor, log_jac: Any) -> tuple:
        """A and B of log f_β = A + β·B, each ``(C, b)``."""
        if self.init == "guide":
            A = log_q if log_jac is None else log_q + log_jac
            B = log_prior + log_lik - log_q
        else:
            A = log_prior if log_jac is None else log_prior + log_jac
            B = log_lik
        C, b = self.num_chains, self.batch_size
        return A.detach().expand(C, b), B.detach().expand(C, b)

    def _gradients(self, parts: tuple, leaves: dict, beta: float | None = None) -> Any:
        """∇A and ∇B with respect to each leaf: the backward passes of the disjoint parts; with
        ``beta``, ∇(A + β·B) alone, in one backward pass."""
        log_q, log_prior, log_lik, log_jac = parts
        if beta is not None:
            if self.init == "guide":
                f = (1.0 - beta) * log_q + beta * (log_prior + log_lik)
            else:
                f = log_prior + beta * log_lik
            return _grads(f if log_jac is None else f + log_jac, leaves, last=True)
        if self.init == "guide":
            g_q = _grads(log_q, leaves)
            g_joint = _grads(log_prior + log_lik, leaves, last=log_jac is None)
            g_jac = _grads(log_jac, leaves, last=True) if log_jac is not None else None
            gA = {k: g_q[k] + (g_jac[k] if g_jac is not None else 0.0) for k in leaves}
            gB = {k: g_joint[k] - g_q[k] for k in leaves}
        else:
            A = log_prior if log_jac is None else log_prior + log_jac
            gA, gB = _grads(A, leaves), _grads(log_lik, leaves, last=True)
        return gA, gB

    def evaluate(self, u: dict) -> _State:
        """A, B and their exact gradients at ``u``: one forward pass of the program and the backward
        passes of its disjoint parts (together one gradient evaluation)."""
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(True) for k, v in u.items()}
            parts = self._densities(leaves)
            gA, gB = self._gradients(parts, leaves)
        A, B = self._split(*parts)
        return _State({k: v.detach() for k, v in leaves.items()}, A, B, gA, gB)

    def gradient(self, u: dict, beta: float | None = None) -> Any:
        """∇A and ∇B at ``u`` without the values A and B: the leapfrog's gradient field (with
        ``beta``: ∇ log f_β = ∇A + β∇B alone, one backward pass instead of two).

        With ``self.bfloat16`` the program runs under bfloat16 autocast (matmuls in bfloat16): a
        deterministic approximation of the exact gradient. The leapfrog map stays reversible and
        volume-preserving for any gradient field that is a fixed function of the position, and
        the Metropolis test uses exact log-densities (:meth:`values`), so each transition still
        leaves f_β invariant and the AIS weights stay unbiased; a worse approximation only lowers
        the acceptance rate. Without enumerated sites the Bernoulli log-density's value is
        skipped (:class:`pyro_vae._kernels.gradient_only`); its gradient is exact.
        """
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            if not self.enum:  # with enumeration a logsumexp's gradient depends on the values
                stack.enter_context(_kernels.gradient_only())
            if self.bfloat16:
                stack.enter_context(torch.autocast(self.device_type, dtype=torch.bfloat16))
            leaves = {k: v.detach().requires_grad_(True) for k, v in u.items()}
            # (autograd returns each leaf's gradient in the leaf's dtype, also under autocast)
            return self._gradients(self._densities(leaves), leaves, beta)

    def values(self, u: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact A and B at ``u`` (no gradients): the Metropolis test's and the weights' densities."""
        with torch.no_grad():
            return self._split(*self._densities(u))

    def start(self, u: dict) -> _State:
        """The chains' state at ``u``: exact A and B, and the gradient field of :meth:`gradient`."""
        if not self.bfloat16:
            return self.evaluate(u)
        A, B = self.values(u)
        gA, gB = self.gradient(u)
        return _State({k: v.detach() for k, v in u.items()}, A, B, gA, gB)

    # -- the chains' starting points --------------------------------------------------------------------
    def initial(self, exact: dict | None = None) -> dict:
        """Unconstrained starting values: draws from f_0, or ``exact`` values (1 chain, b rows) for every chain."""
        if exact is not None:
            z = {s.name: exact[s.name].expand_as(s.site["value"]).clone() for s in self.sites}
        elif self.init == "guide":
            with torch.no_grad():
                gt = poutine.trace(self.guide).get_trace(*self.args, **self.kwargs)
            z = {s.name: gt.nodes[s.name]["value"] for s in self.sites}
        else:
            with torch.no_grad(), poutine.block():
                mt = poutine.trace(self.model).get_trace(*self.args, **self.kwargs)
            z = {s.name: mt.nodes[s.name]["value"] for s in self.sites}
        return self.to_unconstrained(z)

    def inverse_mass(self, kind: str, u: dict) -> dict:
        """Per-site inverse mass (the variance each coordinate's momentum is scaled by)."""
        if kind == "identity":
            return {s.name: None for s in self.sites}
        out = {}
        gt = self.traces.guide_trace
        for s in self.sites:
            var = None
            if s.real:
                try:
                    var = gt.nodes[s.name]["fn"].stddev.detach() ** 2
                    var = var.expand_as(u[s.name])
                except (NotImplementedError, RuntimeError):
                    var = None
            if var is None:  # the spread of the guide's draws, unconstrained
                ug = s.transform.inv(gt.nodes[s.name]["value"]).detach()
                var = ug.var(0, keepdim=True) if ug.shape[0] > 1 else torch.ones_like(ug[:1])
                var = var.expand_as(u[s.name])
            tiny = torch.finfo(var.dtype).tiny
            out[s.name] = torch.where(torch.isfinite(var) & (var > 0), var, torch.ones_like(var)).clamp(min=tiny)
        return out

    def rows(self, t: torch.Tensor, site: _Site, like: torch.Tensor) -> torch.Tensor:
        """A per-(chain|1, datapoint) tensor ``(C|1, b)`` shaped to broadcast against ``like`` (a site's u)."""
        shape = [1] * like.dim()
        shape[0], shape[site.data_axis] = t.shape[0], t.shape[1]
        return t.reshape(shape)


def _unconstraining(*supports: Any) -> Any:
    """``biject_to`` of the first support torch can map (a mixture's support is its components'),
    or None."""
    for support in supports:
        while support is not None:
            try:
                return biject_to(support)
            except NotImplementedError:
                support = getattr(support, "base_constraint", None)
    return None


def _is_identity(transform: Any) -> bool:
    from torch.distributions.transforms import identity_transform

    base = transform
    while hasattr(base, "base_transform"):  # IndependentTransform of the identity
        base = base.base_transform
    return base == identity_transform


def _grads(out: torch.Tensor | None, leaves: dict, last: bool = False) -> dict:
    """∇ of Σ out with respect to each leaf (zeros where it does not depend on it)."""
    if out is None or not out.requires_grad:
        return {k: torch.zeros_like(v) for k, v in leaves.items()}
    grads = torch.autograd.grad(out.sum(), list(leaves.values()), retain_graph=not last, allow_unused=True)
    return {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(leaves.items(), grads)}


# --------------------------------------------------------------------------------------------
# HMC and the annealing loop
# --------------------------------------------------------------------------------------------
def _kinetic(target: _Target, r: dict, inv_mass: dict) -> torch.Tensor:
    total = None
    for s in target.sites:
        e = r[s.name] * r[s.name] if inv_mass[s.name] is None else r[s.name] * r[s.name] * inv_mass[s.name]
        e = _sum_rows(e, s.data_axis)
        total = e if total is None else total + e
    return 0.5 * total


def _hmc(target: _Target, state: _State, beta: float, eps: torch.Tensor, inv_mass: dict,
         num_leapfrog: int) -> tuple[_State, torch.Tensor]:
    """One HMC step on log f_β per (chain, datapoint), step size ``eps`` ``(b,)``; returns the new
    state and the Metropolis acceptance probability ``(C, b)``."""
    sites = target.sites
    eps_rows = eps.to(state.A.dtype).reshape(1, -1)
    step = {s.name: target.rows(eps_rows, s, state.u[s.name]) for s in sites}
    r = {}
    for s in sites:
        noise = torch.randn_like(state.u[s.name])
        m = inv_mass[s.name]
        r[s.name] = noise if m is None else noise / m.sqrt()
    h0 = -(state.A + beta * state.B) + _kinetic(target, r, inv_mass)
    grad = {k: state.gA[k] + beta * state.gB[k] for k in state.u}
    u = state.u
    r = {k: r[k] + 0.5 * step[k] * grad[k] for k in r}
    for i in range(num_leapfrog):
        u = {k: u[k] + step[k] * (r[k] if inv_mass[k] is None else inv_mass[k] * r[k]) for k in u}
        last = i == num_leapfrog - 1
        if not last:  # the inner steps need only ∇ log f_β
            grad = target.gradient(u, beta)
        else:  # the end point's two gradient terms are carried to the next temperature
            if target.bfloat16:
                gA, gB = target.gradient(u)
            else:  # exact values and gradients in one pass
                new = target.evaluate(u)
                gA, gB = new.gA, new.gB
            grad = {k: gA[k] + beta * gB[k] for k in u}
        half = 0.5 if last else 1.0
        r = {k: r[k] + half * step[k] * grad[k] for k in r}
    if target.bfloat16:  # the Metropolis test and the weights use the exact densities
        A1, B1 = target.values(u)
        new = _State({k: v.detach() for k, v in u.items()}, A1, B1, gA, gB)
    h1 = -(new.A + beta * new.B) + _kinetic(target, r, inv_mass)
    log_accept = (h0 - h1).nan_to_num(nan=-math.inf, posinf=-math.inf)
    accept_prob = log_accept.clamp(max=0.0).exp()
    accept = torch.rand_like(log_accept).log() < log_accept  # (C, b)

    def pick(a: torch.Tensor, b_: torch.Tensor, s: _Site) -> torch.Tensor:
        return torch.where(target.rows(accept, s, a), a, b_)

    out = _State(
        {s.name: pick(new.u[s.name], state.u[s.name], s) for s in sites},
        torch.where(accept, new.A, state.A),
        torch.where(accept, new.B, state.B),
        {s.name: pick(new.gA[s.name], state.gA[s.name], s) for s in sites},
        {s.name: pick(new.gB[s.name], state.gB[s.name], s) for s in sites},
    )
    return out, accept_prob


def _block(t: int, num_temps: int, num_blocks: int) -> int:
    """Block of the transition at temperature index t (1 … T−2) of a T-temperature schedule."""
    return min(num_blocks - 1, (t - 1) * num_blocks // max(1, num_temps - 1))


def _anneal(target: _Target, state: _State, betas: torch.Tensor, step_of: Callable[[int], torch.Tensor],
            inv_mass: dict, num_leapfrog: int, bar: Any, adapt: Callable[[int, torch.Tensor], None] | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the chains through ``betas``; returns the chain log weights ``(C, b)`` float64 and the
    mean acceptance probability per datapoint ``(b,)``. ``step_of(t)`` gives the step sizes of
    the transition at temperature index t; ``adapt(t, accept_prob)`` (pilot only) updates them."""
    C, b = state.A.shape
    log_w = torch.zeros(C, b, dtype=torch.float64, device=state.A.device)
    accepted = torch.zeros(b, dtype=torch.float64, device=state.A.device)
    num = len(betas)
    bl = [float(v) for v in betas]
    for t in range(1, num):
        log_w += (bl[t] - bl[t - 1]) * state.B.double()
        if t < num - 1:  # a transition after the last weight update cannot change the estimate
            state, prob = _hmc(target, state, bl[t], step_of(t), inv_mass, num_leapfrog)
            accepted += prob.double().mean(0)
            if adapt is not None:
                adapt(t, prob)
        bar.update()
    return log_w, accepted / max(1, num - 2)


def _pilot(target: _Target, betas: torch.Tensor, inv_mass: dict, num_leapfrog: int, target_accept: float,
           num_blocks: int, bar: Any, init_step: float) -> torch.Tensor:
    """Tune a log step size per datapoint along a pilot run; return the frozen ``(num_blocks, b)`` step sizes."""
    b = target.batch_size
    state = target.start(target.initial())
    log_eps = torch.full((b,), math.log(init_step), dtype=torch.float64)
    num = len(betas)
    history: list[list[torch.Tensor]] = [[] for _ in range(num_blocks)]

    def adapt(t: int, prob: torch.Tensor) -> None:
        nonlocal log_eps
        history[_block(t, num, num_blocks)].append(log_eps.clone())
        log_eps = (log_eps + _ADAPT_GAIN * (prob.double().mean(0).cpu() - target_accept)).clamp(*_LOG_STEP_BOUNDS)

    _anneal(target, state, betas, lambda t: log_eps.exp(), inv_mass, num_leapfrog, bar, adapt)
    frozen = torch.empty(num_blocks, b, dtype=torch.float64)
    last = log_eps
    for j in range(num_blocks):
        h = history[j]
        if h:
            tail = torch.stack(h[len(h) // 2:] + [last if j == num_blocks - 1 else h[-1]])
            frozen[j] = tail.mean(0)
        else:
            frozen[j] = frozen[j - 1] if j else last
    return frozen.exp()


# --------------------------------------------------------------------------------------------
# checks and the public function
# --------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def _check_options(num_steps: int, num_chains: int, schedule_kind: str, init: str, num_leapfrog: int,
                   target_accept: float, pilot_steps: int | None, mass: str, memory_budget: float,
                   gradient_precision: str = "auto") -> None:
    _check_int("num_steps", num_steps, 2)
    _check_int("num_chains", num_chains, 1)
    _check_int("num_leapfrog", num_leapfrog, 1)
    if schedule_kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule_kind!r}; choose one of {', '.join(map(repr, SCHEDULES))}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose 'guide' (start from q(z|x)) or 'prior' (start from p(z))")
    if mass not in MASSES:
        raise ValueError(f"unknown mass {mass!r}; choose 'identity' or 'guide' (diagonal from the guide's scale)")
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"target_accept must lie strictly between 0 and 1, got {target_accept!r}")
    if pilot_steps is not None:
        _check_int("pilot_steps", pilot_steps, 3)
    if not memory_budget > 0:
        raise ValueError(f"memory_budget must be positive bytes, got {memory_budget!r}")
    if gradient_precision not in PRECISIONS:
        raise ValueError(
            f"unknown gradient_precision {gradient_precision!r}; choose 'auto' (bfloat16 where the hardware has "
            "fast bfloat16 matmuls and the gradients agree), 'full' (the model's dtype) or 'bfloat16'"
        )


def _fast_bfloat16(device_type: str) -> bool:
    """Whether this device multiplies bfloat16 matrices much faster than float32 (CPU: AMX
    tiles; CUDA: compute capability 8.0 or later)."""
    try:
        if device_type == "cuda":
            return bool(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8)
        if device_type == "cpu":
            caps = getattr(torch.cpu, "get_capabilities", None)
            return bool(caps is not None and caps().get("amx_bf16", False))
    except Exception:  # an old or unusual torch build: no claim of speed
        return False
    return False


def _surrogate_error(exact: _State, gA: dict, gB: dict) -> float:
    """Relative L2 error of the approximate gradient of log f_1 = A + B against the exact one."""
    num = den = 0.0
    for k in exact.gA:
        g = (exact.gA[k] + exact.gB[k]).double()
        d = (gA[k] + gB[k]).double() - g
        num += float((d * d).sum())
        den += float((g * g).sum())
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


def _choose_precision(target: _Target, state0: _State, requested: str) -> str:
    """Switch ``target`` to bfloat16 gradients when requested (or, for ``"auto"``, when they pay
    and agree with the exact ones at ``state0``); return the precision used."""
    if requested == "full":
        return "full"
    dtypes = {v.dtype for v in state0.u.values()}
    if requested == "auto":
        if dtypes != {torch.float32} or not _fast_bfloat16(target.device_type):
            return "full"
    elif dtypes != {torch.float32}:
        raise ValueError(
            f"gradient_precision='bfloat16' needs float32 latents (autocast leaves {sorted(map(str, dtypes))} "
            "computations as they are); use gradient_precision='full', or convert the model and data to float32"
        )
    elif target.device_type not in ("cpu", "cuda"):
        raise ValueError(f"gradient_precision='bfloat16' runs on CPU or CUDA, not {target.device_type!r}; "
                         "use gradient_precision='full'")
    target.bfloat16 = True
    try:
        gA, gB = target.gradient(state0.u)
    except Exception as e:
        target.bfloat16 = False
        if requested == "auto":
            return "full"
        raise RuntimeError(
            f"the program failed under bfloat16 autocast ({type(e).__name__}: {e}); use gradient_precision='full'"
        ) from e
    err = _surrogate_error(state0, gA, gB)
    if requested == "auto" and not err < SURROGATE_TOLERANCE:
        target.bfloat16 = False
        return "full"
    if not math.isfinite(err):
        target.bfloat16 = False
        raise ValueError(
            "the bfloat16 gradient of the annealed log-density is not finite at the chains' starting points "
            "(a bfloat16 overflow in the program); use gradient_precision='full'"
        )
    return "bfloat16"


def _check_step_size(step_size: Any, n: int) -> torch.Tensor | None:
    """A user's step size as ``(num_blocks, N)`` float64."""
    if step_size is None:
        return None
    s = torch.as_tensor(step_size, dtype=torch.float64).detach().cpu()
    if s.dim() == 0:
        s = s.expand(1, n)
    elif s.dim() == 1 and s.shape[0] == n:
        s = s.unsqueeze(0)
    elif not (s.dim() == 2 and s.shape[1] == n):
        raise ValueError(
            f"step_size must be a positive number, a tensor of one step size per datapoint ({n},), or per "
            f"temperature block and datapoint (num_blocks, {n}) as AISResult.step_size holds; "
            f"got shape {tuple(s.shape)}"
        )
    if not bool(torch.isfinite(s).all() and (s > 0).all()):
        raise ValueError("step_size must be finite and positive")
    return s.clone()


def _check_data(model: Callable, guide: Callable, x: Any, who: str) -> torch.Tensor:
    checked = plain_vae(model, guide)
    x = as_data(x, model_dtype(checked) if checked is not None else None, name="x")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x is empty: {who} needs at least one datapoint (rows of x are datapoints)")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"x contains {bad} NaN or infinite values; drop or impute those rows before {who}")
    if checked is not None:
        checked.decoder.check_data(x, "x")
    return x


def _chunk_rows(n: int, num_chains: int, x: torch.Tensor, memory_budget: float) -> int:
    per_pair = max(1, int(x[0].numel())) * _BYTES_PER_ELEMENT
    return max(1, min(n, int(memory_budget // (per_pair * num_chains))))


def _fork(seed: int | None, device: torch.device):
    if seed is None:
        return _NoFork()
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    return _Seeded(seed, devices)


class _NoFork:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class _Seeded:
    def __init__(self, seed: int, devices: list) -> None:
        self.fork = torch.random.fork_rng(devices=devices)
        self.seed = seed

    def __enter__(self) -> None:
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> Any:
        return self.fork.__exit__(*exc)


def ais(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
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
) -> AISResult:
    """Estimate log p(x_i) for every row of ``x`` by annealed importance sampling (see the module docstring).

    Args:
        model: a Pyro model called as ``model(x_chunk, *args, **kwargs)`` whose sample sites all
            sit in ``pyro.plate(plate_name, ...)`` and whose latents are continuous, except discrete
            guide sites marked for enumeration, which are summed out exactly in p and in q
            (log p(x, z) = log Σ_y p(x, y, z), log q(z|x) = log Σ_y q(y|x) q(z|x, y); an unmarked
            discrete latent raises ``ValueError``). Arguments with ``len(x)`` rows are per-datapoint.
        guide: its guide, called the same way.
        x: data ``(N, ...)``; rows are datapoints.
        num_steps: T, the number of temperatures (≥ 2) of the scored run.
        num_chains: C, independent chains per datapoint.
        schedule: ``"sigmoid"`` (default), ``"geometric"`` or ``"linear"`` (:func:`schedule`).
        init: ``"guide"`` (start from q(z|x), path q^(1−β) p(x, z)^β) or ``"prior"`` (start from p(z),
            path p(z) p(x|z)^β).
        num_leapfrog: leapfrog steps of the one HMC step per temperature.
        step_size: skip the pilot run and use these step sizes: a number, one per datapoint ``(N,)``,
            or ``(num_blocks, N)`` (an earlier result's ``step_size``).
        target_accept: the Metropolis acceptance rate the pilot run tunes the step sizes toward.
        pilot_steps: temperatures of the pilot run (default ``max(num_steps // 10, 50)``). Step sizes
            are tuned there and **frozen** for the scored run: adapting them during the scored run
            would break the unbiasedness of p̂(x).
        mass: ``"identity"`` or ``"guide"`` (diagonal, from the guide's scale at the start).
        memory_budget: bytes one chunk of datapoints may use (chunks are sized from x's width).
        gradient_precision: the leapfrog's gradients: ``"full"`` (the model's dtype), ``"bfloat16"``
            (the program's gradient under bfloat16 autocast: matmuls in bfloat16) or ``"auto"``
            (default: bfloat16 for float32 models on hardware with fast bfloat16 matmuls — CPUs
            with AMX, CUDA GPUs of compute capability ≥ 8 — when at the first chunk's starting
            points they differ from the exact gradients by less than 5%; else full). The weights
            and the Metropolis test always use the full-precision densities, so either way every
            transition leaves f_β invariant and p̂(x) stays unbiased: an approximate gradient only
            changes which proposals are made (and so the acceptance rate), not what they target.
        max_plate_nesting: guessed from one run of the program when ``None``.
        plate_name: the plate the datapoints sit in.
        per_datapoint: more per-datapoint arguments, by position in ``args`` or keyword name.
        progress: a progress bar over temperatures.
        seed: run on a forked random stream seeded with ``seed`` (reproducible; the caller's
            stream is not advanced).

    Returns:
        :class:`AISResult`.

    Example:
        >>> import pyro_vae as pv
        >>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)),
        ...              pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
        >>> res = ais(vae.model, vae.guide, torch.zeros(3, 4), num_steps=20, num_chains=4, seed=0)
        >>> res.per_datapoint.shape, res.log_weights.shape, res.step_size.shape[1]
        (torch.Size([3]), torch.Size([3, 4]), 3)
    """
    _check_options(num_steps, num_chains, schedule, init, num_leapfrog, target_accept, pilot_steps, mass,
                   memory_budget, gradient_precision)
    x = _check_data(model, guide, x, "ais")
    frozen = _check_step_size(step_size, x.shape[0])
    extra = data_args(x.shape[0], args, kwargs, per_datapoint)
    with _fork(seed, x.device):
        log_w, accept, steps, used = _run(model, guide, x, extra, num_steps=num_steps, num_chains=num_chains,
                                          schedule_kind=schedule, init=init, num_leapfrog=num_leapfrog, frozen=frozen,
                                          target_accept=target_accept, pilot_steps=pilot_steps, mass=mass,
                                          memory_budget=memory_budget, max_plate_nesting=max_plate_nesting,
                                          plate_name=plate_name, progress=progress,
                                          gradient_precision=gradient_precision)
    return _result(log_w, accept, steps, num_steps, num_chains, num_leapfrog, schedule, init,
                   gradient_precision=used)


def _run(model: Callable, guide: Callable, x: torch.Tensor, extra: Any, *, num_steps: int, num_chains: int,
         schedule_kind: str, init: str, num_leapfrog: int, frozen: torch.Tensor | None, target_accept: float,
         pilot_steps: int | None, mass: str, memory_budget: float, max_plate_nesting: int | None, plate_name: str,
         progress: bool, exact: Callable[[int, int], dict] | None = None, desc: str = "AIS",
         gradient_precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Chain log weights ``(N, C)``, acceptance ``(N,)``, frozen step sizes ``(num_blocks, N)`` and the
    gradient precision used (chosen at the first chunk, kept for the others).

    With ``exact`` (reverse AIS) the chains of datapoints lo:hi start at ``exact(lo, hi)`` and run
    from β = 1 down to β = 0; their log weights estimate −log p(x)."""
    n = x.shape[0]
    if max_plate_nesting is None:
        a1, k1 = extra.chunk(0, 1)
        max_plate_nesting = guess_max_plate_nesting(model, guide, (x[:1], *a1), k1)
    betas = schedule(schedule_kind, num_steps)
    pilot_n = pilot_steps if pilot_steps is not None else max(num_steps // 10, 50)
    num_blocks = frozen.shape[0] if frozen is not None else max(1, min(MAX_BLOCKS, (pilot_n - 2) // PILOT_PER_BLOCK))
    pilot_betas = schedule(schedule_kind, pilot_n)
    rows = _chunk_rows(n, num_chains, x, memory_budget)
    chunks = [(lo, min(lo + rows, n)) for lo in range(0, n, rows)]
    per_chunk = (num_steps - 1) + (0 if frozen is not None else pilot_n - 1)
    bar = tqdm(total=len(chunks) * per_chunk, desc=desc, disable=not progress, leave=False)
    out_w, out_acc, out_eps = [], [], []
    reverse = exact is not None
    run_betas = betas.flip(0) if reverse else betas
    for lo, hi in chunks:
        a, kw = extra.chunk(lo, hi)
        target = _Target(model, guide, (x[lo:hi], *a), kw, num_chains, max_plate_nesting, plate_name, init)
        with pyro.validation_enabled(False):  # extreme HMC proposals must not trip support checks
            state0 = target.evaluate(target.initial(exact(lo, hi) if reverse else None))
            _check_gradients(target, state0)
            gradient_precision = _choose_precision(target, state0, gradient_precision)
            state0 = target.start(state0.u)
            inv_mass = target.inverse_mass(mass, state0.u)
            if frozen is None:
                init_step = 0.5 if mass == "guide" else 0.1
                eps = _pilot(target, pilot_betas, inv_mass, num_leapfrog, target_accept, num_blocks, bar, init_step)
            else:
                eps = frozen[:, lo:hi]
            nb = eps.shape[0]
            if reverse:  # the transition at reverse index t runs at forward temperature index T−1−t
                step_of = lambda t: eps[_block(num_steps - 1 - t, num_steps, nb)]  # noqa: E731
            else:
                step_of = lambda t: eps[_block(t, num_steps, nb)]  # noqa: E731
            log_w, acc = _anneal(target, state0, run_betas, step_of, inv_mass, num_leapfrog, bar)
        out_w.append(log_w.T.cpu())
        out_acc.append(acc.cpu())
        out_eps.append(eps)
    bar.close()
    if gradient_precision == "auto":  # (no chunk ran)
        gradient_precision = "full"
    return torch.cat(out_w), torch.cat(out_acc), torch.cat(out_eps, dim=1), gradient_precision


def _check_gradients(target: _Target, state: _State) -> None:
    for s in target.sites:
        ga, gb = state.gA[s.name], state.gB[s.name]
        if not bool((torch.isfinite(ga) & torch.isfinite(gb)).all()):
            raise ValueError(
                f"the annealed log-density has a non-finite gradient with respect to latent site {s.name!r} at the "
                "chains' starting points; AIS needs a log-density differentiable in every latent (check the site's "
                "distribution and the model's parameters for NaN)"
            )


def _log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(log_w, dim=1) - math.log(log_w.shape[1])


def _diagnostics(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chain standard error of log-mean-exp, ESS and Pareto k̂ of ``(N, C)`` log weights."""
    n, c = log_w.shape
    w = torch.exp(log_w - log_w.max(dim=1, keepdim=True).values)
    ess = w.sum(1) ** 2 / (w * w).sum(1)
    se = w.std(1) / (math.sqrt(c) * w.mean(1)) if c > 1 else torch.full((n,), math.nan, dtype=torch.float64)
    return se, ess, _khat(log_w)


def _khat(log_w: torch.Tensor) -> torch.Tensor:
    """Pareto k̂ of each row's chain weights, following ``pyro.infer.importance.psis_diagnostic``
    (tail of the M = ⌈min(C/5, 3√C)⌉ largest weights, ``pyro.ops.stats.fit_generalized_pareto``).
    NaN with fewer than 25 chains; −inf when a row's weights are all equal (to rounding); +inf
    when fewer than 5 weights exceed the cutoff (ties)."""
    n, c = log_w.shape
    out = torch.full((n,), math.nan, dtype=torch.float64)
    if c < MIN_KHAT_CHAINS:
        return out
    m = int(math.ceil(min(0.2 * c, 3.0 * math.sqrt(c))))
    eps = 64 * torch.finfo(torch.float32).eps
    for i in range(n):
        lw = torch.sort(log_w[i] - log_w[i].max()).values
        if not bool(torch.isfinite(lw).all()):
            out[i] = math.inf
            continue
        if float(-lw[0]) <= eps * max(1.0, float(log_w[i].abs().max())):
            out[i] = -math.inf
            continue
        cut = max(math.log(1e-15), float(lw[-m - 1]))
        tail = lw[lw > cut]
        if tail.numel() < 5:
            out[i] = math.inf
            continue
        out[i] = float(fit_generalized_pareto(tail.exp() - math.exp(cut))[0])
    return out


def _result(log_w: torch.Tensor, accept: torch.Tensor, steps: torch.Tensor, num_steps: int, num_chains: int,
            num_leapfrog: int, schedule_kind: str, init: str, reverse: bool = False,
            gradient_precision: str = "full") -> AISResult:
    if bool(torch.isnan(log_w).any()):
        bad = torch.nonzero(torch.isnan(log_w).any(1)).reshape(-1).tolist()
        raise FloatingPointError(
            f"AIS log weights are NaN for datapoints {bad[:10]}: the model or guide returned a NaN log-density "
            "at the chains' states (a NaN network output, a zero scale); check the parameters and the data"
        )
    se, ess, khat = _diagnostics(log_w)
    est = _log_mean_exp(log_w)
    stored = log_w
    if reverse:  # reverse weights estimate 1/p(x): report the upper bound −log mean w_rev
        est, stored = -est, -log_w
    n = est.shape[0]
    mean = float(est.mean())
    stderr = float(est.std() / math.sqrt(n)) if n > 1 else math.nan
    return AISResult(est, mean, stderr, stored, se, ess, khat, accept, steps, num_steps, num_chains, num_leapfrog,
                     schedule_kind, init, gradient_precision)


__all__ = ["ais", "schedule", "AISResult", "SCHEDULES", "INITS", "MASSES", "PRECISIONS"]
