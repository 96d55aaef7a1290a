"""Conformance suite: every program of ``conformance_programs.py`` through every objective,
``pv.log_likelihood``, every diagnostic, ``pv.to_inference_data`` and a one-epoch ``pv.fit``,
checked against references written here, never against the library itself (issue 11, item 2).

References (all independent of pyro_vae):

* **exact** log p(x) per datapoint where the program marginalizes in closed form
  (``Program.exact_log_px``: linear-Gaussian pieces, exact enumeration of m2's class);
* **the test's own importance sampler** (:class:`Reference`): one datapoint at a time, the guide
  traced under a particle plate of this file, the model replayed on it, every site's masked and
  scaled ``log_prob`` summed (``poutine.trace`` + ``compute_log_prob``). From its per-datapoint
  weights come the importance-weighted bounds in expectation (groups of K weights), with Monte
  Carlo standard errors. It is itself checked against ``pyro.infer.RenyiELBO`` and
  ``pyro.infer.Trace_ELBO`` (:func:`test_reference_sampler_agrees_with_pyro`);
* **Pyro's ELBOs**: ``Trace_ELBO`` (``TraceEnum_ELBO`` for enumerated programs) for K = 1 bounds
  in expectation, and for the expected ELBO gradient;
* **exact enumeration** of a discrete site: the site conditioned on each value.

Cell outcomes. A cell either checks a value against its reference (within 5 Monte Carlo
standard errors), or — where a program is outside what a function supports — asserts a clear
error that names the site/argument and the fix (:func:`refusal`). Cells where today's library is
wrong (a wrong number, a raw error from deep in user code, an unclear message) are marked
``xfail(strict=True)`` in :data:`KNOWN_BUGS` with a one-line reason: the suite passes now, and
turns red when the bug is fixed (then remove the mark). ``docs/conformance.md`` is the table.
"""

from __future__ import annotations

import atexit
import inspect
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.util import site_is_subsample

import pyro_vae as pv
from pyro_vae import diagnostics as DG
from pyro_vae import objectives as O
from conformance_programs import PROGRAMS, Program
from registries import ABSTRACT_OBJECTIVES, OBJECTIVES, objective_chain

SE = 5.0  # tolerance in combined Monte Carlo standard errors
NAMES = list(PROGRAMS)
LOCAL = [n for n in NAMES if n != "global_scale"]


@lru_cache(maxsize=None)
def program(name: str) -> Program:
    """A cached program for read-only cells (modules are not trained; the param store is
    rebuilt from fixed initial values after conftest clears it)."""
    return PROGRAMS[name]()


def twin(name: str) -> str:
    """The broadcast-safe program with the same density (references for cvae_indexing)."""
    return "cvae" if name == "cvae_indexing" else name


# =============================================================================================
# the test's own importance sampler
# =============================================================================================
def _sum_to_particles(lp: torch.Tensor, num_dims: int) -> torch.Tensor:
    """A site's log_prob (already masked and scaled) summed over every dim but the particle dim."""
    lp = lp.reshape((1,) * (num_dims - lp.dim()) + tuple(lp.shape))
    return lp.sum(dim=tuple(range(1, num_dims))) if num_dims > 1 else lp


def _per_dim(site: dict, num_dims: int) -> torch.Tensor | None:
    """Per-latent-dimension log-density of an ``Independent(Normal)``-like site, (S, Z)."""
    fn, value = site["fn"], site["value"]
    if not isinstance(fn, torch.distributions.Independent) or fn.reinterpreted_batch_ndims != 1:
        return None
    lp = fn.base_dist.log_prob(value)  # (..., Z)
    if site["mask"] is not None and site["mask"] is not True:
        lp = lp * torch.as_tensor(site["mask"]).unsqueeze(-1)
    lp = lp.reshape((1,) * (num_dims + 1 - lp.dim()) + tuple(lp.shape))
    return lp.sum(dim=tuple(range(1, num_dims)))


def sample_weights(prog: Program, x: torch.Tensor, args: tuple, S: int) -> dict[str, Any]:
    """``S`` particles of the program on (x, args), drawn under this file's own particle plate.

    Returns ``obs`` (S,) Σ observed log p, ``lat`` (S,) Σ latent log p − log q (joint over the
    given datapoints), and ``kl_dim``: per latent site the (S, Z) per-dimension log q − log p.
    """
    n = prog.max_plate_nesting + 1

    def vec(fn: Callable) -> Callable:
        def wrapped(*a):
            with pyro.plate("_reference_particles", S, dim=-n):
                return fn(*a)

        return wrapped

    with torch.no_grad():
        gt = poutine.trace(vec(prog.guide)).get_trace(x, *args)
        mt = poutine.trace(poutine.replay(vec(prog.model), trace=gt)).get_trace(x, *args)
        gt.compute_log_prob()
        mt.compute_log_prob()
    obs = torch.zeros(S, dtype=torch.float64)
    lat = torch.zeros(S, dtype=torch.float64)
    kl_dim = {}
    for name, site in mt.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp = _sum_to_particles(site["log_prob"], n).double().expand(S)
        if site["is_observed"]:
            obs = obs + lp
            continue
        g = gt.nodes[name]
        lat = lat + lp - _sum_to_particles(g["log_prob"], n).double().expand(S)
        pq, pp = _per_dim(g, n), _per_dim(site, n)
        if pq is not None and pp is not None:
            kl_dim[name] = (pq - pp).double().expand(S, -1)
    return {"obs": obs, "lat": lat, "kl_dim": kl_dim}


class Reference:
    """Per-datapoint weights of the test's sampler (one datapoint at a time) and Pyro's ELBO."""

    S_POINT = 4096  # particles per datapoint
    S_BATCH = 2048  # particles of the whole batch (joint, for programs with global sites)

    def __init__(self, prog: Program) -> None:
        self.prog = prog
        self.N = prog.num_data
        pyro.set_rng_seed(123)
        with pyro.validation_enabled(False):  # the reference's own speed; the library runs validated
            self._sample(prog)
        self.trace_elbo = pyro_elbo(prog)

    def _sample(self, prog: Program) -> None:
        if prog.all_local:
            per = [sample_weights(prog, *prog.take(slice(i, i + 1)), self.S_POINT) for i in range(self.N)]
            self.obs = torch.stack([p["obs"] for p in per])  # (N, S)
            self.lat = torch.stack([p["lat"] for p in per])
            self.kl_dim = {k: torch.stack([p["kl_dim"][k] for p in per]) for k in per[0]["kl_dim"]}  # (N, S, Z)
        batch = sample_weights(prog, prog.x, prog.args, self.S_BATCH)
        self.batch_obs, self.batch_lat = batch["obs"], batch["lat"]

    # -- bounds in expectation, summed over the batch: (mean, standard error) --------------------
    def grouped(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], K: int) -> tuple[float, float]:
        """E[Σ_b fn(obs_b, lat_b)] over groups of K particles per datapoint."""
        G = self.S_POINT // K
        obs = self.obs[:, : G * K].reshape(self.N, G, K)
        lat = self.lat[:, : G * K].reshape(self.N, G, K)
        per_group = fn(obs, lat).sum(0)  # (G,)
        return float(per_group.mean()), float(per_group.std() / math.sqrt(G))

    def batch(self, beta: float) -> tuple[float, float]:
        """E[Σ observed + β Σ (log p − log q)] of the whole batch (an ELBO with latent weight β)."""
        v = self.batch_obs + beta * self.batch_lat
        return float(v.mean()), float(v.std() / math.sqrt(v.numel()))

    def log_px(self, S: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-datapoint IS estimate of log p(x) with S samples, and the delta-method SE of an
        S-sample estimate (its bias is about −SE²/2)."""
        lw = self.obs + self.lat
        S = S or lw.shape[1]
        est = torch.logsumexp(lw, 1) - math.log(lw.shape[1])
        w = torch.exp(lw - lw.max(1, keepdim=True).values)
        rel_var = w.var(1) / w.mean(1) ** 2
        return est, torch.sqrt(rel_var / S)

    def elbo_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-datapoint ELBO and its SE from this sampler."""
        lw = self.obs + self.lat
        return lw.mean(1), lw.std(1) / math.sqrt(lw.shape[1])

    def kl(self, site: str) -> torch.Tensor:
        """Per-datapoint, per-dimension E[log q − log p] of a site, (N, Z)."""
        return self.kl_dim[site].mean(1)


def pyro_elbo(prog: Program, repeats: int = 8, particles: int = 250) -> tuple[float, float]:
    """−Trace_ELBO (TraceEnum_ELBO for enumerated programs) of the batch: mean and SE."""
    Elbo = pyro.infer.TraceEnum_ELBO if prog.enumerated else pyro.infer.Trace_ELBO
    elbo = Elbo(num_particles=particles, vectorize_particles=True, max_plate_nesting=prog.max_plate_nesting)
    with torch.no_grad(), pyro.validation_enabled(False):
        v = torch.tensor([-elbo.loss(prog.model, prog.guide, prog.x, *prog.args) for _ in range(repeats)])
    return float(v.mean()), float(v.std() / math.sqrt(repeats))


@lru_cache(maxsize=None)
def reference(name: str) -> Reference:
    return Reference(program(twin(name)))


def log_px_total(name: str) -> tuple[float, float]:
    """Σ log p(x): exact where the program has a closed form, else the reference's K=4096 estimate
    (mean, standard error)."""
    exact = program(name).exact_log_px()
    if exact is not None:
        return float(exact.sum()), 0.0
    est, est_se = reference(name).log_px()
    return float(est.sum()), float(est_se.pow(2).sum().sqrt())


def lme(t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.logsumexp(t, dim) - math.log(t.shape[dim])


# =============================================================================================
# expectations: references per objective, refusals, known library bugs
# =============================================================================================
LAMBDA = 0.1  # the free-bits threshold of the registry


def _penalty(ref: Reference, groups: str) -> float:
    """B · Σ_groups max(0, λ − KL̄_g): the free-bits correction, from this sampler's KLs."""
    total = 0.0
    for site in ref.kl_dim:
        kl = ref.kl(site).mean(0)  # KL̄ per dim, averaged over the batch
        kl = kl.sum(-1, keepdim=True) if groups == "site" else kl
        total += float(torch.clamp(LAMBDA - kl, min=0).sum())
    return ref.N * total


def _minus(ms: tuple[float, float], c: float) -> tuple[float, float]:
    return ms[0] - c, ms[1]


#: registry name → reference (mean, SE) of Σ_b bound_b, i.e. of −loss
BOUND_REFERENCE: dict[str, Callable[[Reference], tuple[float, float]]] = {
    "elbo": lambda r: r.trace_elbo,
    "elbo_k3": lambda r: r.trace_elbo,
    "elbo_mc": lambda r: r.trace_elbo,
    "elbo_mc_k3": lambda r: r.trace_elbo,
    "iwae": lambda r: r.grouped(lambda o, l: lme(o + l), 4),
    "iwae_stl": lambda r: r.grouped(lambda o, l: lme(o + l), 4),
    "iwae_dreg": lambda r: r.grouped(lambda o, l: lme(o + l), 4),
    "miwae": lambda r: r.grouped(lambda o, l: lme(o + l), 2),
    "miwae_stl": lambda r: r.grouped(lambda o, l: lme(o + l), 2),
    "miwae_dreg": lambda r: r.grouped(lambda o, l: lme(o + l), 2),
    "ciwae": lambda r: r.grouped(lambda o, l: 0.5 * (o + l).mean(-1) + 0.5 * lme(o + l), 4),
    "ciwae_stl": lambda r: r.grouped(lambda o, l: 0.5 * (o + l).mean(-1) + 0.5 * lme(o + l), 4),
    "piwae": lambda r: r.grouped(lambda o, l: lme(o + l), 4),
    "piwae_dreg": lambda r: r.grouped(lambda o, l: lme(o + l), 4),
    "renyi": lambda r: r.grouped(lambda o, l: lme(0.5 * (o + l)) / 0.5, 4),
    "beta_elbo": lambda r: r.batch(2.0),
    "beta_iwae": lambda r: r.grouped(lambda o, l: lme(o + 0.5 * l), 4),
    "warmup_elbo": lambda r: r.batch(0.0),  # β = 0 at step 0 (loss() does not advance the step)
    "warmup_iwae_dreg": lambda r: r.grouped(lambda o, l: lme(o), 4),
    "freebits_elbo_dim": lambda r: _minus(r.trace_elbo, _penalty(r, "dim")),
    "freebits_elbo_site": lambda r: _minus(r.trace_elbo, _penalty(r, "site")),
    "freebits_iwae": lambda r: _minus(r.grouped(lambda o, l: lme(o + l), 4), _penalty(r, "dim")),
    "vimco": lambda r: r.grouped(lambda o, l: lme(o + l), 4),
}

#: objectives that need per-datapoint weights or KLs (refuse a global latent)
PER_DATAPOINT = {k for k in OBJECTIVES if not (k.startswith("elbo") or k in ("beta_elbo", "warmup_elbo"))}
#: objectives whose estimator stops q's parameters or routes gradients (refuse a hierarchical guide)
ROUTED = {"iwae_stl", "iwae_dreg", "miwae_stl", "miwae_dreg", "ciwae_stl", "piwae_dreg", "warmup_iwae_dreg",
          "piwae", "miwae"}


def num_particles(objective: O.Objective) -> int:
    return objective_chain(objective)[-1].num_particles


# what a clear refusal must say: the site (or argument) and a fix
GLOBAL_REFUSAL = r"'sigma'[\s\S]*(Fix|fix|move it inside)"
ENUM_REFUSAL = r"'y'[\s\S]*(TraceEnum_ELBO|Fix)"
BROADCAST_REFUSAL = r"(?i)(broadcast|particle dim|vectoriz)[\s\S]*(fix|num_particles|num_samples|sequential)"
HIERARCHICAL_REFUSAL = r"'z[12]'[\s\S]*gradient='standard'"


@dataclass
class Refusal:
    types: tuple
    pattern: str


def refusal(prog: Program, objective_name: str | None, k: int) -> Refusal | None:
    """The clear error a legitimate refusal must raise, or None if the cell must work.

    ``objective_name`` None: a per-datapoint function (log_likelihood, diagnostics) with k samples."""
    if not prog.all_local and (objective_name is None or objective_name in PER_DATAPOINT):
        return Refusal((ValueError,), GLOBAL_REFUSAL)
    return None


def may_refuse(prog: Program, objective_name: str | None, k: int) -> Refusal | None:
    """A refusal that is allowed but not required ("works, or says clearly why not")."""
    if prog.enumerated and (objective_name is not None):
        return Refusal((ValueError, NotImplementedError), ENUM_REFUSAL)
    if not prog.broadcast_safe and k > 1:
        return Refusal((ValueError, NotImplementedError, RuntimeError), BROADCAST_REFUSAL)
    return None


#: (cell id) → reason: cells where today's library is wrong. Filled from today's run; the
#: strict mark makes the suite fail once the bug is fixed (then remove the line).
KNOWN_BUGS: dict[str, str] = {
}


def mark(cell: str) -> list:
    reason = KNOWN_BUGS.get(cell)
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


def cells(prefix: str, items: list) -> list:
    out = []
    for it in items:
        cid = "-".join(str(i) for i in it) if isinstance(it, tuple) else str(it)
        out.append(pytest.param(*(it if isinstance(it, tuple) else (it,)), id=cid, marks=mark(f"{prefix}[{cid}]")))
    return out


#: ``CONFORMANCE_OUTCOMES=path pytest tests/test_conformance.py`` writes what each cell did
#: (works / refuses, with the first line of the message) as JSON: docs/conformance.md is built from it
OUTCOMES: dict[str, str] = {}
if os.environ.get("CONFORMANCE_OUTCOMES"):
    atexit.register(lambda: open(os.environ["CONFORMANCE_OUTCOMES"], "w").write(json.dumps(OUTCOMES, indent=1)))


def _record(what: str) -> None:
    cell = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
    OUTCOMES[cell] = what if cell not in OUTCOMES or what.startswith("refuses") else OUTCOMES[cell]


def run_cell(fn: Callable[[], Any], must: Refusal | None, may: Refusal | None) -> Any:
    """Run ``fn``; a required refusal must happen with its message, an allowed one may.

    Returns the result, or None if the cell (legitimately) refused."""
    if must is not None:
        with pytest.raises(must.types, match=must.pattern) as e:
            fn()
        _record(f"refuses: {type(e.value).__name__}: {str(e.value)[:160]}")
        return None
    if may is None:
        out = fn()
        _record("works")
        return out
    try:
        out = fn()
        _record("works")
        return out
    except may.types as e:
        assert re.search(may.pattern, str(e)), f"refusal without the site and the fix: {type(e).__name__}: {e}"
        _record(f"refuses: {type(e).__name__}: {str(e)[:160]}")
        return None


def quiet() -> warnings.catch_warnings:
    """Ignore the announced notices (Monte Carlo KL fallback, num_data, diagnostics' sample sizes);
    every other warning stays an error."""
    w = warnings.catch_warnings()
    w.__enter__()
    warnings.filterwarnings("ignore", category=RuntimeWarning, message="ELBO:")
    # the announced fallback to sequential particles for a program that is not broadcast-safe
    warnings.filterwarnings("ignore", category=RuntimeWarning, message=r".*failed when run with \d+ vectorized particles")
    warnings.filterwarnings("ignore", category=DG.DiagnosticWarning)
    warnings.filterwarnings("ignore", category=UserWarning, message=".*num_data.*")
    return w


@pytest.fixture
def no_notices():
    w = quiet()
    yield
    w.__exit__(None, None, None)


# =============================================================================================
# the reference itself, against Pyro
# =============================================================================================
@pytest.mark.parametrize("name", [n for n in LOCAL if n != "cvae_indexing"])
def test_reference_sampler_agrees_with_pyro(name: str) -> None:
    """The test's sampler: its ELBO equals Trace_ELBO (TraceEnum_ELBO), its IWAE-4 equals
    Σ_b RenyiELBO(α=0, K=4) on each datapoint alone, and its log p(x) the exact one."""
    prog, ref = program(name), reference(name)
    m, se = ref.grouped(lambda o, l: (o + l).mean(-1), 1)
    assert abs(m - ref.trace_elbo[0]) < SE * math.hypot(se, ref.trace_elbo[1]) + 0.05, (m, ref.trace_elbo)
    if not prog.enumerated:  # RenyiELBO does not enumerate; checked on the first P datapoints (cost)
        P, reps = 2, 25
        renyi = pyro.infer.RenyiELBO(alpha=0.0, num_particles=4, max_plate_nesting=prog.max_plate_nesting)
        with torch.no_grad(), pyro.validation_enabled(False):
            vals = torch.tensor([[-renyi.loss(prog.model, prog.guide, prog.x[i : i + 1], *(a[i : i + 1] for a in prog.args))
                                  for i in range(P)] for _ in range(reps)]).sum(1)
        G = ref.S_POINT // 4
        mine = lme((ref.obs + ref.lat)[:P].reshape(P, G, 4)).sum(0)
        m4, se4 = float(mine.mean()), float(mine.std()) / math.sqrt(G)
        assert abs(m4 - float(vals.mean())) < SE * math.hypot(se4, float(vals.std()) / math.sqrt(reps)) + 0.05
    exact = prog.exact_log_px()
    if exact is not None:
        est, se_i = ref.log_px()
        assert torch.all((est - exact).abs() < SE * se_i + 0.05), (est, exact)


def test_exact_enumeration_of_m2_class() -> None:
    """m2: log p(x) by conditioning y on each class (importance sampling z | y with the guide's
    q(z | x, y)) equals the closed form."""
    prog = program("m2")
    C = 3
    per_class = []
    pyro.set_rng_seed(5)
    for c in range(C):
        lw = []
        for i in range(prog.num_data):
            y = torch.nn.functional.one_hot(torch.tensor([c]), C).float()  # datapoint i has class c
            cond = Program("m2|y", poutine.condition(prog.model, data={"y": y}),
                           poutine.condition(prog.guide, data={"y": y}), prog.x[i : i + 1])
            with pyro.validation_enabled(False):
                s = sample_weights(cond, cond.x, (), 4096)
            lw.append(s["obs"] + s["lat"])  # log p(x, y=c, z) − log q(z | x, y=c): y is observed in both
        per_class.append(lme(torch.stack(lw)))  # log p(x_i, y=c)
    total = torch.logsumexp(torch.stack(per_class), 0)
    assert torch.allclose(total, prog.exact_log_px().to(total.dtype), atol=0.15), (total, prog.exact_log_px())


# =============================================================================================
# objectives
# =============================================================================================
R = 8  # repeats of the library's loss


@pytest.mark.usefixtures("no_notices")
@pytest.mark.parametrize("name,objective", cells("test_objective", [(n, o) for n in NAMES for o in OBJECTIVES]))
def test_objective(name: str, objective: str) -> None:
    """The objective's value in expectation equals its reference bound; its gradient is finite
    and reaches every parameter — or the program is refused with the site and the fix."""
    prog = program(name)
    obj = OBJECTIVES[objective]()
    K = num_particles(obj)
    must, may = refusal(prog, objective, K), may_refuse(prog, objective, K)

    repeats = max(R, prog.repeats)

    def values() -> torch.Tensor:
        return torch.tensor([-obj.loss(prog.model, prog.guide, prog.x, *prog.args) for _ in range(repeats)])

    v = run_cell(values, must, may)
    if v is None:
        return
    assert torch.isfinite(v).all()
    m, se = float(v.mean()), float(v.std() / math.sqrt(repeats))
    if prog.enumerated and not objective.startswith("elbo"):
        # summed out by the library: a bound on Σ log p(x) (exact, or the reference's K=4096 estimate);
        # β / warm-up weightings of the latents are not bounds on it
        if not objective.startswith(("beta_", "warmup_")):
            top, top_se = log_px_total(name)
            assert m <= top + SE * math.hypot(se, top_se) + 0.05
        return
    ref_m, ref_se = BOUND_REFERENCE[objective](reference(name))
    assert abs(m - ref_m) < SE * math.hypot(se, ref_se) + 0.05, f"{objective} on {name}: {m:.3f} ± {se:.3f} vs {ref_m:.3f} ± {ref_se:.3f}"
    exact = prog.exact_log_px()
    if exact is not None and objective not in ("beta_elbo", "warmup_elbo", "warmup_iwae_dreg"):
        assert m <= float(exact.sum()) + SE * se + 0.05  # a lower bound on log p(x)


@pytest.mark.usefixtures("no_notices")
@pytest.mark.parametrize("name,objective", cells("test_objective_gradient", [(n, o) for n in NAMES for o in OBJECTIVES]))
def test_objective_gradient(name: str, objective: str) -> None:
    """differentiable_loss back-propagates a finite gradient into every parameter of the program,
    or refuses clearly (a hierarchical guide under an estimator that stops q's parameters)."""
    prog = program(name)
    obj = OBJECTIVES[objective]()
    K = num_particles(obj)
    must, may = refusal(prog, objective, K), may_refuse(prog, objective, K)
    if must is None and may is None and prog.hierarchical_guide and objective in ROUTED:
        may = Refusal((NotImplementedError,), HIERARCHICAL_REFUSAL)

    def grads():
        loss = obj.differentiable_loss(prog.model, prog.guide, prog.x, *prog.args)
        named = dict(pyro.get_param_store().named_parameters())  # unconstrained leaves
        for m in prog.modules:  # a PyroModule's parameters live on the module, not in the store
            for n, p in (m.named_parameters() if isinstance(m, torch.nn.Module) else ()):
                if p.requires_grad and all(p is not q for q in named.values()):
                    named[f"{type(m).__name__}.{n}"] = p
        names, params = zip(*named.items())
        return loss, torch.autograd.grad(loss, params, allow_unused=True), names

    out = run_cell(grads, must, may)
    if out is None:
        return
    loss, gs, names = out
    assert torch.isfinite(loss)
    missing = [n for n, g in zip(names, gs) if g is None]
    if prog.enumerated and not objective.startswith(("elbo", "beta_elbo", "warmup_elbo", "freebits_elbo")):
        # an importance-weighted bound with y summed out exactly no longer depends on q(y | x)
        missing = [n for n in missing if "encoder_y" not in n and "classifier" not in n]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(g).all() for g in gs if g is not None)


# =============================================================================================
# log-likelihood
# =============================================================================================
S_LL = 1000


def _ll_reference(name: str, S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact log p(x) where there is one (else the test's IS estimate), and the per-datapoint
    tolerance of an S-sample importance estimate."""
    prog, ref = program(name), reference(name)
    est, se = ref.log_px(S)
    exact = prog.exact_log_px()
    truth = exact.to(est.dtype) if exact is not None else est
    return truth, SE * se + se**2 + 0.05


@pytest.mark.usefixtures("no_notices")
@pytest.mark.parametrize("name", cells("test_log_likelihood", NAMES))
def test_log_likelihood(name: str) -> None:
    """pv.log_likelihood per datapoint equals the exact log p(x) (or the test's IS estimate)."""
    prog = program(name)
    ll = run_cell(lambda: pv.log_likelihood(prog.model, prog.guide, prog.x, *prog.args, num_samples=S_LL),
                  refusal(prog, None, S_LL), may_refuse(prog, None, S_LL))
    if ll is None:
        return
    truth, tol = _ll_reference(name, S_LL)
    err = (ll.per_datapoint.double() - truth).abs()
    assert torch.all(err < tol), f"{name}: |error| {err.tolist()} vs tolerance {tol.tolist()}"


@pytest.mark.usefixtures("no_notices")
@pytest.mark.parametrize("name", cells("test_log_likelihood_chunk_invariance", LOCAL))
def test_log_likelihood_chunk_invariance(name: str) -> None:
    """A datapoint's estimate does not depend on the chunk it was evaluated in: one datapoint
    and a few samples per chunk (tiny memory budget) vs everything in one chunk."""
    prog = program(name)
    k = 200
    may = may_refuse(prog, None, k)
    small = run_cell(lambda: pv.log_likelihood(prog.model, prog.guide, prog.x, *prog.args, num_samples=k,
                                               memory_budget=32 * 6 * 8), None, may)
    if small is None:
        return
    big = pv.log_likelihood(prog.model, prog.guide, prog.x, *prog.args, num_samples=k, memory_budget=1 << 30)
    truth, tol = _ll_reference(name, k)
    for ll in (small, big):
        err = (ll.per_datapoint.double() - truth).abs()
        assert torch.all(err < tol), f"{name}: |error| {err.tolist()} vs tolerance {tol.tolist()}"
    assert torch.all((small.per_datapoint - big.per_datapoint).abs().double() < 2 * tol)


@pytest.mark.usefixtures("no_notices")
@pytest.mark.parametrize("name", cells("test_log_likelihood_one_sample", NAMES))
def test_log_likelihood_one_sample(name: str) -> None:
    """num_samples=1 (no particle dimension needed) works on every local program; its mean
    over datapoints and repeats is the ELBO (Trace_ELBO / N)."""
    prog = program(name)
    must = refusal(prog, None, 1)

    def run():
        return torch.stack([pv.log_likelihood(prog.model, prog.guide, prog.x, *prog.args, num_samples=1).per_datapoint
                            for _ in range(10)])

    v = run_cell(run, must, None)
    if v is None:
        return
    ref_m, ref_se = reference(name).trace_elbo
    total = v.double().sum(1)
    if prog.enumerated:  # y summed out inside the weight: a bound between the ELBO and log p(x)
        se = float(total.std()) / math.sqrt(10)
        top, top_se = log_px_total(name)
        assert ref_m - SE * math.hypot(se, ref_se) - 0.05 <= float(total.mean()) <= top + SE * math.hypot(se, top_se) + 0.05
        return
    assert abs(float(total.mean()) - ref_m) < SE * math.hypot(float(total.std()) / math.sqrt(10), ref_se) + 0.05


# =============================================================================================
# diagnostics
# =============================================================================================
S_DIAG = 500


def _call(fn: Callable, prog: Program, **kw) -> Any:
    return fn(prog.model, prog.guide, prog.x, model_args=prog.args, **kw)


def diag_importance(name: str) -> None:
    """importance_diagnostics: log p̂(x) vs exact, its ELBO vs the sampler's, k̂ per datapoint."""
    prog = program(name)
    res = run_cell(lambda: _call(DG.importance_diagnostics, prog, num_samples=S_DIAG), refusal(prog, None, S_DIAG),
                   may_refuse(prog, None, S_DIAG))
    if res is None:
        return
    truth, tol = _ll_reference(name, S_DIAG)
    assert torch.all((res.log_likelihood.double() - truth).abs() < tol)
    elbo, se = reference(name).elbo_point()
    tol = SE * torch.hypot(se, res.elbo_se.double()) + 0.05
    if prog.enumerated:  # y summed out inside the weight: a bound between the ELBO and log p(x)
        assert torch.all(res.elbo.double() >= elbo - tol) and torch.all(res.elbo.double() <= truth + tol)
    else:
        assert torch.all((res.elbo.double() - elbo).abs() < tol)
    assert res.khat.shape == (prog.num_data,) and torch.isfinite(res.khat).all()


def diag_psis_khat(name: str) -> None:
    """psis_khat per datapoint vs Pyro's psis_diagnostic on each datapoint alone."""
    prog = program(name)
    khat = run_cell(lambda: _call(DG.psis_khat, prog, num_samples=S_DIAG), refusal(prog, None, S_DIAG),
                    may_refuse(prog, None, S_DIAG))
    if khat is None:
        return
    assert khat.shape == (prog.num_data,)
    if not prog.broadcast_safe or prog.enumerated:  # Pyro's psis_diagnostic samples y: another proposal
        return
    ref = torch.tensor([pyro.infer.importance.psis_diagnostic(
        prog.model, prog.guide, *prog.take(slice(i, i + 1))[:1], *prog.take(slice(i, i + 1))[1],
        num_particles=S_DIAG, max_plate_nesting=prog.max_plate_nesting) for i in range(prog.num_data)])
    assert float((khat.double() - ref.double()).abs().mean()) < 0.3, (khat, ref)


def diag_gaps(name: str) -> None:
    """inference_gaps: amortized ELBO vs the sampler's, log p(x) vs exact, refined between."""
    prog = PROGRAMS[name]()  # refinement must not leak into the cached program
    res = run_cell(lambda: _call(DG.inference_gaps, prog, num_steps=20, num_samples=S_DIAG, num_particles=4),
                   refusal(prog, None, S_DIAG), _gaps_may(prog))
    if res is None:
        return
    ref = Reference(prog)
    elbo, se = ref.elbo_point()
    assert torch.all((res.amortized_elbo.double() - elbo).abs() < SE * torch.hypot(se, res.amortized_elbo_se.double()) + 0.05)
    est, se_ll = ref.log_px(S_DIAG)
    exact = prog.exact_log_px()
    truth = exact if exact is not None else est
    assert torch.all((res.log_likelihood.double() - truth).abs() < SE * se_ll + se_ll**2 + 0.05)


def _gaps_may(prog: Program) -> Refusal | None:
    """Refinement needs Gaussian guide sites and samples it can optimize: a discrete site or a
    hierarchical guide may be refused, naming the site."""
    base = may_refuse(prog, None, S_DIAG)
    if prog.enumerated:
        return Refusal((ValueError, NotImplementedError, TypeError), r"'y'[\s\S]*importance_diagnostics")
    if prog.hierarchical_guide:
        return Refusal((ValueError, NotImplementedError), r"(?i)'z[12]'[\s\S]*(hierarch|depends on)")
    return base


def diag_latent(name: str) -> None:
    """latent_diagnostics: KL per dimension of each local continuous site vs the sampler's
    E[log q − log p] (per datapoint, averaged)."""
    prog = program(name)
    ref = reference(name)
    sites = [s for s in prog.latent_sites if s not in prog.global_sites and s not in prog.enumerated]
    for site in sites:
        must = refusal(prog, None, 64)
        if site in prog.dependent_guide_sites:  # q(site | x, other latents): no per-datapoint KL of one draw
            must = Refusal((ValueError, NotImplementedError), rf"'{site}'[\s\S]*Fix")
        may = may_refuse(prog, None, 64)
        if name == "nested":  # a data plate at dim=-2 gives the site batch dims (B, 1): a documented limit
            may = Refusal((ValueError,), rf"'{site}'[\s\S]*batch shape \(B,\)[\s\S]*Fix")
        res = run_cell(lambda: _call(DG.latent_diagnostics, prog, site=site, num_samples=256), must, may)
        if res is None:
            continue
        kl = ref.kl(site)  # (N, Z)
        se = ref.kl_dim[site].std(1).mean(0) / math.sqrt(ref.S_POINT)
        per = res.kl_per_dim.double()
        # the library's own estimate has MC error too (256 samples per datapoint)
        tol = SE * ref.kl_dim[site].std(1).mean(0) / math.sqrt(256 * prog.num_data) + SE * se + 0.02
        assert torch.all((per - kl.mean(0)).abs() < tol), f"{site}: {per.tolist()} vs {kl.mean(0).tolist()} (tol {tol.tolist()})"


def _all_params(prog: Program) -> list[torch.Tensor]:
    """The param store's leaves and, for PyroModules, the modules' own parameters."""
    params = [p for _, p in pyro.get_param_store().named_parameters()]
    for m in prog.modules:
        if isinstance(m, torch.nn.Module):
            params += [p for p in m.parameters() if p.requires_grad and all(p is not q for q in params)]
    return params


def diag_gradient_moments(name: str) -> None:
    """gradient_moments of pv ELBO's differentiable_loss: its mean gradient equals Trace_ELBO's
    (TraceEnum_ELBO's) expected gradient; gradient_snr gives finite numbers."""
    prog = program(name)
    obj = O.ELBO()
    params_fn = lambda: _all_params(prog)  # noqa: E731
    loss_fn = lambda: obj.differentiable_loss(prog.model, prog.guide, prog.x, *prog.args)  # noqa: E731
    first = run_cell(loss_fn, None, may_refuse(prog, "elbo", 1))
    if first is None:
        return
    params = params_fn()
    reps = 40
    moments = DG.gradient_moments(loss_fn, {"all": params}, repeats=reps)["all"]
    Elbo = pyro.infer.TraceEnum_ELBO if prog.enumerated else pyro.infer.Trace_ELBO
    ref = Elbo(num_particles=50, vectorize_particles=prog.broadcast_safe, max_plate_nesting=prog.max_plate_nesting)
    ref_moments = DG.gradient_moments(lambda: ref.differentiable_loss(prog.model, prog.guide, prog.x, *prog.args),
                                      {"all": params}, repeats=10)["all"]
    m, s = moments.mean(), moments.std() / math.sqrt(reps)
    rm, rs = ref_moments.mean(), ref_moments.std() / math.sqrt(10)
    scale = rm.abs().mean()
    bad = (m - rm).abs() > SE * torch.hypot(s, rs) + 0.02 * scale
    assert bad.double().mean() < 0.02, f"{int(bad.sum())}/{bad.numel()} gradient elements disagree with Pyro's"
    snr = DG.gradient_snr(loss_fn, {"all": params}, repeats=4)
    assert math.isfinite(snr["all"])


def diag_predictive(name: str) -> None:
    """predictive_check (posterior and prior): the observed statistics are those of the observed
    site's value (read from the test's own trace), the replicated ones finite."""
    prog = program(name)
    obs_value = _observed_value(prog)
    for kind in ("posterior", "prior"):
        # no per-datapoint weights needed: works with global latents too
        res = run_cell(lambda: _call(DG.predictive_check, prog, kind=kind, num_samples=20), None,
                       may_refuse(prog, None, 20))
        if res is None:
            return
        assert torch.allclose(res.pixel_observed, obs_value.reshape(prog.num_data, -1).double().mean(0), atol=1e-6), \
            "observed statistics are not those of the observed site"
        assert torch.isfinite(res.pixel_replicated).all()


def _observed_value(prog: Program) -> torch.Tensor:
    """The (first) observed site's value in the test's own trace of the model."""
    with torch.no_grad():
        gt = poutine.trace(prog.guide).get_trace(prog.x, *prog.args)
        mt = poutine.trace(poutine.replay(prog.model, trace=gt)).get_trace(prog.x, *prog.args)
    return mt.nodes[prog.obs_sites[0]]["value"]


def diag_sbc(name: str) -> None:
    """sbc: ranks of every local latent dim in 0..L, one row per simulation."""
    prog = program(name)
    must = may = None
    if not prog.observes_x:  # the observed site is another argument: sbc cannot feed its simulations back
        must = Refusal((ValueError, NotImplementedError), r"'y'[\s\S]*(Fix|fix)")
    elif not prog.all_local:  # one global draw shared by the simulated datapoints: may refuse
        may = Refusal((ValueError,), GLOBAL_REFUSAL)
    else:
        may = may_refuse(prog, None, 9)
    res = run_cell(lambda: _call(DG.sbc, prog, num_simulations=20, num_posterior_samples=9, num_bins=5), must, may)
    if res is None:
        return
    assert res.ranks.shape[0] == 20
    assert int(res.ranks.min()) >= 0 and int(res.ranks.max()) <= 9
    for site in prog.latent_sites:
        if site not in prog.enumerated:
            assert any(site in label for label in res.labels), (site, res.labels)


def diag_compare(name: str) -> None:
    """compare_models on two copies of the program: elpd = Σ exact log p(x), difference 0."""
    prog = program(name)
    kw = {"model_args": prog.args} if prog.args else {}
    if prog.args and "model_args" not in inspect.signature(DG.compare_models).parameters:
        pytest.fail("compare_models has no way to pass per-datapoint arguments (model(xs, ys))")
    df = run_cell(lambda: DG.compare_models({"a": (prog.model, prog.guide), "b": (prog.model, prog.guide)}, prog.x,
                                            num_samples=S_DIAG, **kw), refusal(prog, None, S_DIAG),
                  may_refuse(prog, None, S_DIAG))
    if df is None:
        return
    truth, tol = _ll_reference(name, S_DIAG)
    for elpd in df["elpd"]:
        assert abs(float(elpd) - float(truth.sum())) < float(tol.sum())


def diag_to_inference_data(name: str) -> None:
    """to_inference_data: observed_data is the observed site's value, the posterior holds the
    latent sites, and the exported weights give Σ log p̂(x) ≈ Σ exact."""
    from pyro_vae.diagnostics._arviz_groups import group

    prog = program(name)
    idata = run_cell(lambda: _call(pv.to_inference_data, prog, num_samples=200, num_chains=2),
                     refusal(prog, None, 200), may_refuse(prog, None, 200))
    if idata is None:
        return
    observed = group(idata, "observed_data")
    site = prog.obs_sites[0]
    assert site in observed, list(observed)
    assert torch.allclose(torch.as_tensor(observed[site].values).double(), _observed_value(prog).double(), atol=1e-6)
    posterior = group(idata, "posterior")
    for s in prog.latent_sites:
        if s not in prog.enumerated:
            assert s in posterior, (s, list(posterior))
    elpd = DG.elpd_data(idata)
    total = float(elpd["elpd_loo"] if "elpd_loo" in elpd else elpd["elpd"])
    truth, tol = _ll_reference(name, 200)
    assert abs(total - float(truth.sum())) < float(tol.sum())


DIAGNOSTICS: dict[str, Callable[[str], None]] = {
    "importance_diagnostics": diag_importance,
    "psis_khat": diag_psis_khat,
    "inference_gaps": diag_gaps,
    "latent_diagnostics": diag_latent,
    "gradient_moments": diag_gradient_moments,
    "gradient_snr": diag_gradient_moments,
    "predictive_check": diag_predictive,
    "sbc": diag_sbc,
    "compare_models": diag_compare,
    "to_inference_data": diag_to_inference_data,
}
DIAGNOSTIC_CELLS = [(n, d) for n in NAMES for d in DIAGNOSTICS if d != "gradient_snr"]  # snr runs in moments' cell


@pytest.mark.usefixtures("no_notices")
@pytest.mark.parametrize("name,diagnostic", cells("test_diagnostic", DIAGNOSTIC_CELLS))
def test_diagnostic(name: str, diagnostic: str) -> None:
    DIAGNOSTICS[diagnostic](name)


# =============================================================================================
# fit
# =============================================================================================
def _fit_objective(prog: Program):
    return None  # pyro_vae's ELBO, which sums an enumerated label exactly (checked against TraceEnum_ELBO)


@pytest.mark.usefixtures("no_notices")
@pytest.mark.parametrize("name", cells("test_fit", NAMES))
def test_fit(name: str) -> None:
    """One epoch of pv.fit at a negligible learning rate: History's train_elbo is the bound per
    datapoint (Trace_ELBO / N at the initial parameters, within Monte Carlo error), the
    validation bound too."""
    prog = PROGRAMS[name]()
    if prog.args and "model_args" not in inspect.signature(pv.fit).parameters:
        pytest.fail("pv.fit has no way to pass per-datapoint arguments (model(xs, ys))")
    kw = {"model_args": prog.args, "val_args": prog.args} if prog.args else {}
    ref = reference(name)
    h = pv.fit(prog.model, _fit_objective(prog), prog.x, prog.x, guide=prog.guide, epochs=1, batch_size=6, lr=1e-7,
               progress=False, tensorboard=False, **kw)
    row = h.epochs[-1]
    per_datapoint = ref.trace_elbo[0] / prog.num_data
    # train_elbo averages one particle per datapoint over the epoch: the MC error of one particle of the batch, / N
    tol = SE * float((ref.batch_obs + ref.batch_lat).std()) / prog.num_data + 0.05
    assert abs(row["train_elbo"] - per_datapoint) < tol, (row, per_datapoint)
    assert abs(row["val_elbo"] - per_datapoint) < tol, (row, per_datapoint)


@pytest.mark.usefixtures("no_notices")
@pytest.mark.parametrize("name", cells("test_fit_refuses_before_writing", ["global_scale", "m2"]))
def test_fit_refuses_before_writing(name: str, tmp_path) -> None:
    """An objective that cannot run the program is refused before anything is trained or
    written: IWAE on a global latent (names 'sigma'), pv's ELBO on an enumerated site ('y')."""
    prog = PROGRAMS[name]()
    objective = O.IWAE(4) if name == "global_scale" else O.ELBO()
    pattern = GLOBAL_REFUSAL if name == "global_scale" else ENUM_REFUSAL
    run_dir = tmp_path / "run"
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    try:
        pv.fit(prog.model, objective, prog.x, guide=prog.guide, epochs=1, batch_size=6, progress=False,
               tensorboard=False, run_dir=run_dir)
    except (ValueError, NotImplementedError) as e:
        assert re.search(pattern, str(e)), str(e)
        assert not run_dir.exists() or not any(run_dir.iterdir()), sorted(p.name for p in run_dir.iterdir())
        for k, v in before.items():
            assert torch.equal(pyro.get_param_store()[k].detach(), v), f"{k} was trained before the refusal"
        return
    assert name == "m2", "IWAE trained a program with a global latent"


# =============================================================================================
# coverage: a new objective or diagnostic joins the suite
# =============================================================================================
def test_every_objective_class_is_in_the_suite() -> None:
    exported = {getattr(O, n) for n in O.__all__ if isinstance(getattr(O, n), type)
                and issubclass(getattr(O, n), O.Objective)} - set(ABSTRACT_OBJECTIVES)
    covered = {type(o) for f in OBJECTIVES.values() for o in objective_chain(f())}
    assert exported <= covered, f"objectives missing from the conformance suite: {sorted(c.__name__ for c in exported - covered)}"
    assert set(OBJECTIVES) <= set(BOUND_REFERENCE), f"no reference bound for {sorted(set(OBJECTIVES) - set(BOUND_REFERENCE))}"


def test_every_diagnostic_is_in_the_suite() -> None:
    takes_programs = set()
    for n in DG.__all__:
        fn = getattr(DG, n)
        if inspect.isfunction(fn):
            params = inspect.signature(fn).parameters
            if {"model", "guide"} <= set(params) or "models" in params or "loss_fn" in params:
                takes_programs.add(n)
    assert {"importance_diagnostics", "inference_gaps", "latent_diagnostics", "gradient_snr", "gradient_moments",
            "predictive_check", "sbc", "compare_models", "to_inference_data"} <= takes_programs
    missing = takes_programs - set(DIAGNOSTICS)
    assert not missing, f"diagnostics missing from the conformance suite: {sorted(missing)}"
