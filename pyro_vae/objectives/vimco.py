"""VIMCO: the K-sample importance-weighted bound with a score-function gradient for the guide
sites that cannot be reparameterized (discrete latents), with per-particle leave-one-out baselines.

The estimator
-------------
For a datapoint x and K particles z_1, ..., z_K ~ q_φ(z | x), write the log weights
log w_k = log p_θ(x, z_k) − log q_φ(z_k | x) and the bound

    L̂ = log (1/K) Σ_k w_k,        E[L̂] = IWAE-K(x) ≤ log p(x).

Split each particle into its reparameterized part (z_k = z_φ(ε_k), e.g. a Normal) and its
non-reparameterized part h_k (a Categorical, a Bernoulli), drawn from q_φ(h_k | x, ...). The
gradient of E[L̂] has two parts (Williams 1992; Mnih & Rezende 2016, eq. 4):

    ∇ E[L̂] = E[ Σ_k w̃_k ∇ log w_k  +  L̂ · Σ_k ∇ log q_φ(h_k | x) ],      w̃_k = w_k / Σ_j w_j.

The first term is the reparameterized IWAE gradient (through the z path, the explicit θ and
φ dependence of log p and log q); the second is the score function of the discrete draws, and
its learning signal L̂ is the same for every particle: a high-variance estimator (``baseline=
"none"``). VIMCO subtracts from particle k's signal a baseline built from the *other*
particles only, so the estimator stays unbiased (E[b_k ∇ log q(h_k)] = 0 when b_k does not
depend on h_k):

    L̂_{−k} = log (1/K) ( Σ_{j≠k} w_j + exp( (1/(K−1)) Σ_{j≠k} log w_j ) ),

i.e. L̂ with log w_k replaced by the mean of the other log weights (the geometric mean of the
other weights stands in for w_k), and the learning signal of particle k becomes

    L̂ − L̂_{−k}        (detached; per particle k and per datapoint).

The signal measures how much particle k contributes to the bound, and it is ~0 for a particle
whose weight is typical: the variance of the score term falls roughly by the ratio of the
squares of the two signals (measured in ``docs/vimco.md``).

Everything is per datapoint: the K particles of datapoint b only enter the signals of
datapoint b. The surrogate whose gradient is the estimator is

    Σ_b [ Σ_k w̃_kb (log p − log q)_kb  +  Σ_k signal_kb · log q_φ(h_kb | x_b) ],

with w̃ and the signals detached; the loss is its negative, scaled by N/B under subsampling.
The score term uses the sampling density of h (unscaled by ``poutine.scale`` / β: the
identity ∇E_q[f] = E_q[f ∇ log q] is about the distribution the draws came from; masks apply).

Which one should I use?
-----------------------
* A discrete latent with few values that you can sum out exactly (a class label): enumerate
  it (``infer={"enumerate": "parallel"}``) — an exact sum has no variance at all; VIMCO refuses
  such sites.
* A discrete latent that cannot be enumerated (many binary units, a combinatorial structure),
  trained with a multi-sample bound: ``VIMCO(K)``. Its gradient is unbiased for IWAE-K and its
  variance is far below the plain score function's (``baseline="none"``, kept for that
  comparison). On a fully reparameterized program VIMCO is :class:`~pyro_vae.objectives.IWAE`
  (``gradient="standard"``) in value and gradient; use IWAE there, with ``gradient="dreg"``.
* With K = 1 there is no leave-one-out baseline: use Pyro's ``TraceGraph_ELBO`` (the ELBO's
  score function with learned baselines).

Example:
    >>> import pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         y = pyro.sample("y", dist.Categorical(logits=torch.zeros(3)))
    ...         pyro.sample("x", dist.Normal(2.0 * y.float(), 0.5), obs=x)
    >>> def guide(x):
    ...     logits = pyro.param("logits", torch.zeros(3))
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("y", dist.Categorical(logits=logits))
    >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}),
    ...                      loss=pv.objectives.VIMCO(num_particles=5))
    >>> x = torch.full((8,), 4.0)                       # every datapoint says y = 2
    >>> for _ in range(100):
    ...     _ = svi.step(x)
    >>> int(pyro.param("logits").argmax())
    2

References:
    Mnih, Rezende (2016). Variational inference for Monte Carlo objectives. ICML.
    Burda, Grosse, Salakhutdinov (2016). Importance weighted autoencoders. ICLR.
    Williams (1992). Simple statistical gradient-following algorithms for connectionist
    reinforcement learning. Machine Learning 8.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..program import Particles, PlateError
from .base import Terms, log_mean_exp
from .iwae import ImportanceObjective, _check_count

#: learning-signal baselines of :class:`VIMCO`
BASELINES = ("vimco", "none")


def leave_one_out_bounds(logw: torch.Tensor) -> torch.Tensor:
    """L̂_{−k} per particle and datapoint, ``(K, B)``, from ``(K, B)`` log weights (K ≥ 2):
    log (1/K) Σ_j w_j with log w_k replaced by the mean of the other K − 1 log weights."""
    K = logw.shape[0]
    others_mean = (logw.sum(0, keepdim=True) - logw) / (K - 1)  # (K, B)
    # row k of `rep` is the K log weights with entry k replaced by others_mean[k]
    rep = logw.unsqueeze(0).expand(K, *logw.shape).clone()  # (K, K, B)
    idx = torch.arange(K, device=logw.device)
    rep[idx, idx] = others_mean
    return torch.logsumexp(rep, dim=1) - math.log(K)


def _enumerated(particles: Particles, name: str) -> Any:
    """The ``infer["enumerate"]`` setting of a site in the guide or the model, else None."""
    traces = particles.traces
    if traces is None:  # the component producer: a plain VAE, no enumeration
        return None
    for trace in (traces.guide_trace, traces.model_trace):
        site = trace.nodes.get(name)
        if site is not None and (site.get("infer") or {}).get("enumerate"):
            return site["infer"]["enumerate"]
    return None


class VIMCO(ImportanceObjective):
    """The K-sample importance-weighted bound, per datapoint,

        L̂(x) = log (1/K) Σ_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x),

    trained with the reparameterization trick on reparameterized guide sites and the VIMCO
    leave-one-out score-function estimator on the others (discrete latents). The value is
    IWAE-K's; see the module docstring for the estimator, and "Which one should I use?".

    Args:
        num_particles: K (vectorized); ≥ 2 for ``baseline="vimco"``.
        baseline: ``"vimco"`` — particle k's learning signal is L̂ − L̂_{−k} (Mnih & Rezende's
            geometric-mean leave-one-out baseline); ``"none"`` — the plain score function, signal
            L̂ for every particle (unbiased, high variance; for comparisons).
        **kwargs: the other objectives' keywords (``max_plate_nesting``, ``plate_name``,
            ``vectorize_particles``, ...; see :class:`~pyro_vae.objectives.Objective`).

    Non-reparameterized guide sites must sit in the data plate (their signals are per
    datapoint) and must not be marked for enumeration (the ELBO / IWAE sum those out exactly).

    Implementing another baseline:
        Subclass and override :meth:`learning_signals` (detached ``(K, B)`` log weights in,
        ``(K, B)`` signals out). A baseline for particle k must not depend on particle k's draw,
        or the estimator is biased (``tests/test_vimco.py`` detects one that does).

    Example:
        >>> import pyro_vae as pv
        >>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)),
        ...              pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
        >>> x = torch.zeros(3, 4)
        >>> pyro.set_rng_seed(1); a = pv.objectives.VIMCO(8).loss(vae.model, vae.guide, x)
        >>> pyro.set_rng_seed(1); b = pv.objectives.IWAE(8).loss(vae.model, vae.guide, x)
        >>> a == b                                         # no discrete site: it is IWAE-8
        True

    References:
        Mnih, Rezende (2016). Variational inference for Monte Carlo objectives. ICML.
    """

    requires_rsample = False

    def __init__(self, num_particles: int, baseline: str = "vimco", **kwargs: Any) -> None:
        K = _check_count("num_particles", num_particles)
        if baseline not in BASELINES:
            raise ValueError(f"VIMCO baseline must be one of {BASELINES}, got {baseline!r}")
        if baseline == "vimco" and K < 2:
            raise ValueError(
                f"VIMCO needs num_particles >= 2 (its baseline for particle k is built from the other particles), "
                f"got {K}. Fix: use num_particles >= 2, or pyro.infer.TraceGraph_ELBO for a one-sample "
                "score-function estimator"
            )
        super().__init__(num_particles=K, **kwargs)
        self.baseline = baseline
        self._built_particles = K

    def _check_particles(self, particles: Particles) -> None:
        if particles.num_particles != self._built_particles:
            raise ValueError(
                f"VIMCO got {particles.num_particles} particles but was built with num_particles="
                f"{self._built_particles}; build a new objective instead of changing num_particles"
            )
        if getattr(particles, "enumerated", False):
            raise ValueError(
                f"guide sites {list(particles.names)} are marked for enumeration; VIMCO estimates the gradient of "
                "sampled discrete sites and does not enumerate. Enumerated sites are summed out exactly by "
                "pyro_vae's ELBO / IWAE (or pyro.infer.TraceEnum_ELBO). Fix: use one of those, or drop the "
                "'enumerate' mark to have VIMCO sample the site"
            )
        for site in particles.latents:
            how = _enumerated(particles, site.name)
            if how:
                raise ValueError(
                    f"site {site.name!r} is marked for enumeration (infer={{'enumerate': {how!r}}}); VIMCO "
                    "estimates the gradient of sampled discrete sites and does not enumerate. Enumerated sites "
                    "are summed out exactly by pyro_vae's ELBO / IWAE (or pyro.infer.TraceEnum_ELBO). Fix: use "
                    "one of those, or drop the 'enumerate' mark to have VIMCO sample the site"
                )
            if not site.in_plate and not getattr(site.q, "has_rsample", False):
                raise PlateError(
                    f"guide site {site.name!r} is not reparameterized ({type(site.q).__name__}) and sits outside "
                    f"the {particles.plate_name!r} plate: a global discrete latent. VIMCO's learning signals are "
                    f"per datapoint, so it needs such sites inside `pyro.plate({particles.plate_name!r}, ...)`. "
                    "Fix: make the site local, or train with pyro.infer.TraceGraph_ELBO"
                )

    def _combine(self, logw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bound = log_mean_exp(logw, dim=0)
        c = torch.softmax(logw, dim=0)
        return bound, c, c

    def learning_signals(self, logw: torch.Tensor) -> torch.Tensor:
        """Per-particle learning signals ``(K, B)`` of the score term, from detached ``(K, B)`` log
        weights: L̂ − L̂_{−k} (``"vimco"``) or L̂ (``"none"``)."""
        bound = log_mean_exp(logw, dim=0)
        if self.baseline == "none":
            return bound.expand_as(logw)
        return bound - leave_one_out_bounds(logw)

    def score_log_q(self, particles: Particles) -> torch.Tensor | None:
        """Σ over the non-reparameterized guide sites in the data plate of log q(h | ·), ``(K, B)``
        (unscaled, masked, differentiable in the guide's parameters); ``None`` if there are none."""
        total = None
        for site in particles.latents:
            if site.in_plate and not getattr(site.q, "has_rsample", False):
                t = site.reduce(site.q.log_prob(site.value))
                total = t if total is None else total + t
        if total is None:
            return None
        K, B = particles.num_particles, particles.batch_size
        return total.expand(K, B)

    def _loss(self, particles: Particles) -> tuple[torch.Tensor, Terms]:
        # the reparameterized part, the explicit θ / φ dependence and the value: IWAE's
        loss, terms = super()._loss(particles)
        if not torch.is_grad_enabled():
            return loss, terms
        log_q_h = self.score_log_q(particles)
        if log_q_h is None or not log_q_h.requires_grad:
            return loss, terms
        signals = self.learning_signals(self.last_log_weights).detach()
        score = (signals * log_q_h).sum()
        return loss - particles.data_scale * (score - score.detach()), terms


__all__ = ["VIMCO", "BASELINES", "leave_one_out_bounds"]
