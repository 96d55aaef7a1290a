"""Importance-weighted bounds, combined per datapoint: IWAE, MIWAE, CIWAE, PIWAE.

For a datapoint x_b and K particles z_kb ~ q(z | x_b) the log importance weights are
log w_kb = log p(x_b, z_kb) − log q(z_kb | x_b) (:func:`pyro_vae.traces.log_weights`), and

    IWAE-K(x_b) = log (1/K) Σ_k w_kb                       (Burda et al. 2016)

Every bound here is a :class:`pyro_vae.objectives.Objective`: ``loss`` / ``differentiable_loss``
return −(N/B) Σ_b bound_b for a minibatch of B out of N datapoints, particles are vectorized,
and ``SVI(model, guide, optim, loss=IWAE(...))`` or ``IWAE(...)(model, guide)`` both work.

Gradient estimators
-------------------
Write A_k = log p_θ(x, z_k) (the model), Q_k = log q_φ(z_k | x) (the guide) and w̃_k the
normalized weights. Every estimator here is a choice of two detached coefficient tensors:

* ``c_model`` weights the gradient of A_k along its *explicit* dependence on parameters
  (decoder, prior — and the encoder too when a VampPrior uses it);
* ``c_sample`` weights the gradient along the *sample path* z_k = z_φ(ε_k) and the explicit
  dependence of log q.

When the two coincide the surrogate is simply Σ_k c_k (A_k − Q_k) (standard, STL). When they
differ (DReG, PIWAE) the surrogate is

    Σ c_sample (A − Q) + D − Σ_sites ⟨∂D/∂z, z⟩,      D = Σ (c_model − c_sample) A,

where ∂D/∂z is taken with ``torch.autograd.grad`` and detached: its sample-path gradient
cancels, so parameters reached through z get the ``c_sample`` gradient and parameters reached
through the model's own computation get the ``c_model`` gradient — without knowing which
parameters belong to the encoder or decoder, for any model/guide pair. The cost is one extra
backward pass from the model's log-density to z.

Sticking the landing (STL) and DReG need log q with the guide's distribution parameters
stopped, log q_φ̄(z). This module rebuilds each guide site's distribution with its tensors
detached (:func:`stop_parameters`) — no second guide pass, any guide callable. That is exact
when the distribution's parameters are plain tensors (Normal, Independent, MultivariateNormal,
LowRankMultivariateNormal, Gamma, StudentT, Laplace, LogNormal and other parameter-free
transforms of those, ...). Two cases cannot be handled this way and raise
``NotImplementedError`` with the fix (use ``gradient="standard"``):

* parameters held inside ``nn.Module`` s of the distribution (normalizing-flow transforms such as
  :class:`pyro_vae.encoders.IAFEncoder`), which detaching tensors cannot reach; and
* hierarchical guides, where one latent's distribution depends on another latent's sample:
  stopping the parameters would also cut the upstream sample path, and the routing above
  would count it twice.

These estimators also assume the guide does not use model parameters (z does not depend
on θ), which holds for amortized encoders.

Fast path
---------
For a plain :class:`~pyro_vae.VAE` called outside Pyro handlers (see
:meth:`pyro_vae.objectives.Objective.differentiable_loss`), :meth:`ImportanceObjective._fast_loss`
skips tracing: it calls the encoder, draws ``z = q.rsample((K,))`` (the draws the traced path
makes), scores ``z`` under the prior, the decoder and q, and hands the ``(K, B)`` log weights to
the same :meth:`~ImportanceObjective._combine`. Loss, ``last_terms``, ``last_log_weights`` and
gradients equal the traced path's to float precision (``tests/test_fast_paths.py``). Three
shortcuts make it cheaper than the traced path without changing the numbers beyond rounding:

* the linear layers of an :class:`~pyro_vae.nn.MLP` decoder body use oneDNN's matmul on CPU
  float32 (:func:`fast_linear`; torch's default MKL matmul runs AVX2 kernels on AMD CPUs);
* a :class:`~pyro_vae.decoders.BernoulliDecoder` likelihood is summed over pixels by
  :func:`bernoulli_log_prob` (one fused autograd node instead of the binary-cross-entropy chain);
* for routed estimators (DReG, PIWAE) the routing D − ⟨∂D/∂z, z⟩ is replaced, when the decoder
  and prior act on each particle and datapoint separately (every module a known row-wise layer:
  linear, convolution, activation, ...), by a gradient hook that rescales ∂/∂z of each
  particle's log p by c_sample / c_model — the same gradient without the extra backward pass.
  Other decoders and priors keep the exact routing.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
import weakref
from typing import Any

import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Transform

from ..traces import ParticleTraces, log_weights
from .base import Objective, Terms, log_mean_exp

_Independent = torch.distributions.Independent
_Normal = torch.distributions.Normal

#: gradient estimators of the importance-weighted bounds
GRADIENTS = ("standard", "stl", "dreg")


# -- pieces of the log weights --------------------------------------------------------------------
def _is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and type(site["fn"]).__name__ != "_Subsample"


def _subtrace(trace: poutine.Trace, keep) -> poutine.Trace:
    out = poutine.Trace()
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and keep(site):
            out.nodes[name] = site
    return out


@dataclasses.dataclass
class WeightParts:
    """The three per-datapoint ``(K, B)`` pieces of log w = log_lik + log_prior − log_q.

    Each has the site scales of :func:`~pyro_vae.traces.log_weights` (a β on latent sites
    multiplies ``log_prior`` and ``log_q``)."""

    log_lik: torch.Tensor
    log_prior: torch.Tensor
    log_q: torch.Tensor

    @property
    def log_weights(self) -> torch.Tensor:  # noqa: D102
        return self.log_lik + self.log_prior - self.log_q


def weight_parts(traces: ParticleTraces, plate_name: str) -> WeightParts:
    """Split the log weights of ``traces`` into observed, latent-model and guide parts."""
    empty = poutine.Trace()
    mt = traces.model_trace
    obs = dataclasses.replace(traces, model_trace=_subtrace(mt, lambda s: s["is_observed"]), guide_trace=empty)
    lat = dataclasses.replace(traces, model_trace=_subtrace(mt, lambda s: not s["is_observed"]), guide_trace=empty)
    gui = dataclasses.replace(traces, model_trace=empty)
    return WeightParts(log_weights(obs, plate_name), log_weights(lat, plate_name), -log_weights(gui, plate_name))


def stopped_log_q(traces: ParticleTraces, plate_name: str, who: str) -> torch.Tensor:
    """log q_φ̄(z) per datapoint, ``(K, B)``: the guide's density with its parameters stopped,
    differentiable along the sample path z only."""
    gt = poutine.Trace()
    for name, site in traces.guide_trace.nodes.items():
        if _is_latent(site):
            site = dict(site, fn=stop_parameters(site["fn"], site["value"], name, who))
        gt.nodes[name] = site
    return -log_weights(dataclasses.replace(traces, model_trace=poutine.Trace(), guide_trace=gt), plate_name)


def stop_parameters(
    fn: Distribution, value: torch.Tensor | None = None, site: str = "?", who: str = "this estimator"
) -> Distribution:
    """A copy of distribution ``fn`` with every tensor it holds detached (nested base
    distributions and parameter-free transforms included; transform caches cleared).

    If ``value`` is given and gradients are on, checks that ``log_prob(value.detach())`` no
    longer depends on any parameter; it still does when parameters live in ``nn.Module`` s
    (normalizing flows), which raises ``NotImplementedError``.
    """
    new = _detached(fn)
    if value is not None and torch.is_grad_enabled() and new.log_prob(value.detach()).requires_grad:
        raise NotImplementedError(
            f"{who} needs log q(z) with the guide's parameters stopped, but the distribution of guide site "
            f"{site!r} ({_describe(fn)}) keeps parameters inside nn.Modules (e.g. normalizing-flow transforms) "
            "that detaching its tensors cannot reach. Fix: use gradient='standard' for this guide, or a guide "
            "family whose parameters are tensors (Normal, MultivariateNormal, LowRankMultivariateNormal)"
        )
    return new


def _describe(fn: Any) -> str:
    names = [type(fn).__name__]
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
        names.append(type(fn).__name__)
    return " of ".join(names)


def _detached(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, weakref.ref):  # Transform._inv: recreated lazily for the copy
        return None
    if isinstance(obj, nn.Module):  # parameters we cannot reach: stop_parameters' probe reports it
        return obj
    if isinstance(obj, (Distribution, Transform)):
        new = copy.copy(obj)
        for key, val in vars(obj).items():
            new.__dict__[key] = _detached(val)
        if isinstance(obj, Transform) and "_cached_x_y" in vars(obj):
            new._cached_x_y = (None, None)  # the cached x keeps the parameter path; recompute x = f⁻¹(z)
        return new
    if type(obj) in (list, tuple):
        return type(obj)(_detached(v) for v in obj)
    return obj


def _sample_values(traces: ParticleTraces) -> list[tuple[str, torch.Tensor]]:
    return [
        (name, site["value"])
        for name, site in traces.guide_trace.nodes.items()
        if _is_latent(site) and site["value"].requires_grad
    ]


def check_single_level(traces: ParticleTraces, who: str) -> None:
    """Raise if a guide latent's sample depends on another guide latent's sample (hierarchical guide)."""
    values = _sample_values(traces)
    if len(values) < 2:
        return
    nodes = {v.grad_fn: name for name, v in values if v.grad_fn is not None}
    for name, v in values:
        if v.grad_fn is None:
            continue
        seen: set = set()
        stack = [n for n, _ in v.grad_fn.next_functions]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in nodes:
                raise NotImplementedError(
                    f"{who}: guide site {name!r} is drawn from a distribution that depends on the sample of "
                    f"{nodes[node]!r} (a hierarchical guide). This estimator stops q's parameters and routes "
                    "gradients along each sample's own path, which is only exact when every latent's "
                    "distribution depends on the data and parameters alone. Fix: use gradient='standard'"
                )
            stack.extend(n for n, _ in node.next_functions)


def _route(D: torch.Tensor, traces: ParticleTraces) -> torch.Tensor:
    """D − Σ ⟨∂D/∂z, z⟩: keeps D's gradient along explicit parameter paths, cancels it along z."""
    return _route_values(D, [v for _, v in _sample_values(traces)])


def _route_values(D: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
    """:func:`_route` for explicit sample tensors."""
    values = [v for v in values if v.requires_grad]
    if not (D.requires_grad and values):
        return D
    grads = torch.autograd.grad(D, values, retain_graph=True, allow_unused=True)
    correction = sum((g * v).sum() for g, v in zip(grads, values) if g is not None)
    return D - correction


# -- fast path helpers -----------------------------------------------------------------------------
class _BernoulliLogProb(torch.autograd.Function):
    """Σ_d [x_d l_d − softplus(l_d)] over the last dim, as one autograd node.

    Forward: softplus(l) − x·l in one temporary, summed. Backward: (x − σ(l)) · grad, in place.
    The binary-cross-entropy chain of ``Bernoulli.log_prob`` keeps several full-size temporaries
    and autograd nodes per call; on a (K, B, D) decoder output that is the bulk of the
    non-matmul time of an IWAE step.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(logits, x)
        return _bernoulli_value(logits, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        logits, x = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        grad_logits = grad_x = None
        if ctx.needs_input_grad[0]:
            s = torch.sigmoid(logits)
            if s.shape == torch.broadcast_shapes(s.shape, x.shape, g.shape):
                grad_logits = s.neg_().add_(x).mul_(g)  # (x − σ(l)) · grad, in place
            else:
                grad_logits = ((x - s) * g).sum_to_size(logits.shape)
        if ctx.needs_input_grad[1]:
            grad_x = (logits * g).sum_to_size(x.shape)
        return grad_logits, grad_x


def _bernoulli_value(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.nn.functional.softplus(logits)
    if t.shape == torch.broadcast_shapes(t.shape, x.shape):
        t.addcmul_(logits, x, value=-1.0)  # softplus(l) − x·l, in the one temporary
    else:
        t = t - logits * x
    return t.sum(-1).neg_()


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log Π_d Bernoulli(x_d | σ(logits_d)) = Σ_d x_d·l_d − softplus(l_d), summed over the last dim.

    The value of ``dist.Bernoulli(logits=logits).to_event(1).log_prob(x)`` (the likelihood of
    :class:`~pyro_vae.decoders.BernoulliDecoder`) up to float rounding, with ``x`` broadcast
    against ``logits``; differentiable in both, as one fused autograd node.

    Example:
        >>> l, x = torch.randn(3, 2, 5), torch.bernoulli(torch.full((2, 5), 0.5))
        >>> ref = torch.distributions.Bernoulli(logits=l).log_prob(x).sum(-1)
        >>> bool(torch.allclose(bernoulli_log_prob(l, x), ref, atol=1e-5))
        True
    """
    if torch.is_grad_enabled() and (logits.requires_grad or x.requires_grad):
        return _BernoulliLogProb.apply(logits, x)
    return _bernoulli_value(logits, x)


def bernoulli_logits(decoder: nn.Module) -> nn.Module | None:
    """The network producing the Bernoulli logits if ``decoder`` is a plain
    :class:`~pyro_vae.decoders.BernoulliDecoder` (``forward``/``distribution`` not overridden),
    else ``None``."""
    from ..decoders import BernoulliDecoder, Decoder

    cls = type(decoder)
    if (
        isinstance(decoder, BernoulliDecoder)
        and cls.forward is Decoder.forward
        and cls.distribution is BernoulliDecoder.distribution
        and decoder.num_params == 1
    ):
        return decoder.net
    return None


# -- oneDNN matmul ------------------------------------------------------------------------------------
#: ``None``: not checked yet in this process; ``True``: checked and used; ``False``: unavailable
_onednn: dict[str, bool | None] = {"ok": None}
#: fewer rows than this use torch's matmul: for small matrices the autograd node and the
#: transposed copies of the backward cost more than the faster kernel saves (measured: a batch-32
#: ELBO step is ~10% slower through oneDNN, a batch-128 one ~25% faster)
ONEDNN_MIN_ROWS = 64


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` with oneDNN's matmul forward and backward (2-D float32 CPU tensors)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(h, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        h, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gh = gw = gb = None
        op = torch.ops.mkldnn._linear_pointwise
        if ctx.needs_input_grad[0]:  # grad @ W  =  grad @ (Wᵀ)ᵀ
            gh = op(grad, weight.t().contiguous(), None, "none", [], "")
        if ctx.needs_input_grad[1]:  # gradᵀ @ h
            gw = op(grad.t().contiguous(), h.t().contiguous(), None, "none", [], "")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gh, gw, gb


def _onednn_usable(h: torch.Tensor, layer: nn.Linear) -> bool:
    if _onednn["ok"] is None and os.environ.get("PYRO_VAE_ONEDNN", "1").strip() == "0":
        _onednn["ok"] = False  # switched off by the user (read once per process)
    w = layer.weight
    return (
        _onednn["ok"] is not False
        and h.dim() == 2
        and h.shape[0] >= ONEDNN_MIN_ROWS
        and h.device.type == "cpu"
        and w.device.type == "cpu"
        and h.dtype == torch.float32
        and w.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def fast_linear(h: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(h)`` for 2-D ``h``, through oneDNN's matmul on CPU float32 (differentiable).

    torch's default float32 CPU matmul is MKL's, which on AMD CPUs runs AVX2 kernels; oneDNN
    (the library torch.compile uses for CPU linear layers) runs AVX-512 where the CPU has it —
    on a Zen 5 core about half the time per matmul. The result equals ``F.linear`` to float
    rounding; the first call in a process checks that, and any failure or mismatch switches to
    ``F.linear`` for the rest of the process with one ``RuntimeWarning``. Set the environment
    variable ``PYRO_VAE_ONEDNN=0`` (before the first call) to always use ``F.linear``.
    """
    w, b = layer.weight, layer.bias
    if not _onednn_usable(h, layer):
        return F.linear(h, w, b)
    h = h.contiguous()
    try:
        if torch.is_grad_enabled() and (h.requires_grad or w.requires_grad or (b is not None and b.requires_grad)):
            out = _OneDNNLinear.apply(h, w.contiguous(), b)
        else:
            out = torch.ops.mkldnn._linear_pointwise(h, w.contiguous(), b, "none", [], "")
    except Exception as e:  # an op that exists but refuses these inputs: torch's matmul from now on
        _disable_onednn(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        return F.linear(h, w, b)
    if _onednn["ok"] is None:  # first use in this process: check it against torch's matmul
        with torch.no_grad():
            ref = F.linear(h, w, b)
            tol = 1e-4 * (1.0 + float(ref.abs().max())) if ref.numel() else 0.0
            good = out.shape == ref.shape and bool(((out - ref).abs() <= tol).all())
        if not good:
            _disable_onednn("its result differs from torch.nn.functional.linear")
            return F.linear(h, w, b)
        _onednn["ok"] = True
    return out


def _disable_onednn(why: str) -> None:
    _onednn["ok"] = False
    warnings.warn(
        f"pyro_vae fast path: oneDNN matmul unavailable ({why}); using torch's default matmul "
        "(same numbers, slower on some CPUs)",
        RuntimeWarning,
        stacklevel=4,
    )


def run_net(net: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``net(z)``; a :class:`~pyro_vae.nn.MLP` runs layer by layer through :func:`fast_linear`
    on its 2-D fold of ``z`` (leading dims restored)."""
    from ..nn import MLP

    if type(net) is not MLP:
        return net(z)
    lead = z.shape[:-1]
    h = z.reshape(-1, z.shape[-1])
    for layer in net:
        h = fast_linear(h, layer) if type(layer) is nn.Linear else layer(h)
    return h.reshape(*lead, h.shape[-1])


def decoder_output(decoder: nn.Module, z: torch.Tensor) -> torch.Tensor | None:
    """``decoder.net(z)`` through :func:`run_net` if ``decoder`` is a library
    :class:`~pyro_vae.decoders.Decoder` with the base ``forward`` and an MLP body, else ``None``."""
    from ..decoders import Decoder
    from ..nn import MLP

    if isinstance(decoder, Decoder) and type(decoder).forward is Decoder.forward and type(decoder.net) is MLP:
        return run_net(decoder.net, z)
    return None


def decoder_distribution(decoder: nn.Module, out: torch.Tensor) -> Distribution:
    """What :meth:`pyro_vae.decoders.Decoder.forward` builds from an MLP body's output."""
    if decoder.num_params == 1:
        return decoder.distribution(out)
    return decoder.distribution(out.reshape(*out.shape[:-1], decoder.x_dim, decoder.num_params))


def decoder_log_prob(decoder: nn.Module, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``decoder(z).log_prob(x)``: an MLP body through :func:`run_net`, and a plain
    :class:`~pyro_vae.decoders.BernoulliDecoder` likelihood through :func:`bernoulli_log_prob`."""
    net = bernoulli_logits(decoder)
    out = decoder_output(decoder, z)
    if net is not None:
        return bernoulli_log_prob(out if out is not None else net(z), x)
    if out is None:
        return decoder(z).log_prob(x)
    return decoder_distribution(decoder, out).log_prob(x)


#: module types that act on each row (particle, datapoint) of their input separately
_ROW_WISE_TYPES: tuple[type, ...] = (
    nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.Upsample, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.LayerNorm, nn.GroupNorm, nn.Dropout,
    nn.Softplus, nn.ReLU, nn.Tanh, nn.ELU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Sigmoid, nn.Softsign,
    nn.Hardtanh, nn.Mish, nn.SELU, nn.CELU, nn.PReLU,
)


def _is_row_wise(module: nn.Module) -> bool:
    """True if every submodule is a known row-wise layer or a pyro_vae component built from them
    (then ∂ log p(x_b, z_kb) / ∂ z_k'b' = 0 for (k', b') ≠ (k, b))."""
    from ..decoders import Decoder
    from ..nn import MLP, ConvDecoderNet, ConvEncoderNet
    from ..priors import DiagonalGaussianPrior, MixtureGaussianPrior, StandardNormalPrior

    ours = (MLP, ConvEncoderNet, ConvDecoderNet, StandardNormalPrior, DiagonalGaussianPrior, MixtureGaussianPrior)
    for m in module.modules():
        if type(m) in _ROW_WISE_TYPES or type(m) in ours:
            continue
        if isinstance(m, Decoder) and type(m).__module__ == Decoder.__module__:
            continue  # the library's decoders: a network then a per-row distribution
        return False
    return True


def _stopped_log_prob(q: Distribution, z: torch.Tensor, who: str) -> torch.Tensor:
    """log q_φ̄(z) with q's parameters stopped (:func:`stop_parameters`; the probe is skipped for
    a diagonal Normal, whose parameters are plain tensors)."""
    if type(q) is _Independent and type(q.base_dist) is _Normal:
        return _detached(q).log_prob(z)
    return stop_parameters(q, z, "z", who).log_prob(z)


# -- the family's base class ----------------------------------------------------------------------
class ImportanceObjective(Objective):
    """Base class of bounds built from per-datapoint importance weights.

    Implementing a new one:
        Override :meth:`_combine`: given detached ``(K, B)`` log weights return the per-datapoint
        bound ``(B,)`` and the detached coefficients ``(c_model, c_sample)``, each ``(K, B)``,
        such that the gradient estimate is Σ c_model ∇_explicit log p + Σ c_sample ∇_path (log p −
        log q) (return the same tensor twice for an ordinary Σ c ∇ log w). Set ``_stop_q`` when
        the sample-path part uses log q with stopped parameters (STL, DReG).

    :attr:`last_log_weights` keeps the detached ``(K, B)`` log weights of the last call.
    """

    _stop_q: bool = False

    def __init__(self, num_particles: int = 1, **kwargs: Any) -> None:
        super().__init__(num_particles=num_particles, **kwargs)
        self.last_log_weights: torch.Tensor | None = None

    def _combine(self, logw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _check_traces(self, traces: ParticleTraces) -> None:
        """Hook for shape checks (e.g. particles = num_outer · num_inner)."""

    def _loss(self, traces: ParticleTraces) -> tuple[torch.Tensor, Terms]:
        self._check_traces(traces)
        who = type(self).__name__
        parts = weight_parts(traces, self.plate_name)
        logw = parts.log_weights
        lw = logw.detach()
        self.last_log_weights = lw
        bound, c_model, c_sample = self._combine(lw)
        surrogate = torch.zeros((), dtype=lw.dtype, device=lw.device)
        if torch.is_grad_enabled() and logw.requires_grad:
            routed = c_model is not c_sample
            if self._stop_q or routed:
                check_single_level(traces, who)
            log_q = stopped_log_q(traces, self.plate_name, who) if self._stop_q else parts.log_q
            log_p = parts.log_lik + parts.log_prior
            surrogate = (c_sample * (log_p - log_q)).sum()
            if routed:
                surrogate = surrogate + _route(((c_model - c_sample) * log_p).sum(), traces)
        loss = -traces.data_scale * (bound.sum() + (surrogate - surrogate.detach()))
        terms = Terms(
            bound=bound.mean().detach(),
            reconstruction=parts.log_lik.detach().mean(),
            kl=(parts.log_q - parts.log_prior).detach().mean(),
        )
        return loss, terms

    def _fast_loss(self, vae: Any, x: torch.Tensor, num_data: int | None) -> tuple[torch.Tensor, Terms] | None:
        """:meth:`_loss` of a plain VAE without tracing: the same draws, weights and surrogate
        (see "Fast path" in the module docstring). ``None`` (trace instead) when a subclass
        overrides :meth:`_loss`, or for inputs the traced path must reject with its own error."""
        if type(self)._loss is not ImportanceObjective._loss:
            return None
        B, K = x.shape[0], self.num_particles
        if num_data is not None and num_data < B:
            return None  # the data plate raises the error
        num_outer = getattr(self, "num_outer", None)
        if num_outer is not None and K != num_outer * self.num_inner:
            return None  # _check_traces raises the error
        q = vae.encoder(x)
        if not getattr(q, "has_rsample", False):
            return None  # _check_reparameterized raises the error
        data_scale = 1.0 if num_data is None else num_data / B
        z = q.rsample((K,))  # the draws of pyro.sample under the K-particle plate
        z_p = z.view_as(z)  # the model's copy of z: its gradient may be rescaled (routing hook)
        log_lik = decoder_log_prob(vae.decoder, z_p, x)
        log_prior = vae.prior().log_prob(z_p)
        grad = torch.is_grad_enabled() and z.requires_grad
        if self._stop_q and grad:
            # log q at stopped parameters has the value of log q: compute it once
            log_q_s = _stopped_log_prob(q, z, type(self).__name__)
            log_q = log_q_s.detach()
        else:
            log_q = log_q_s = q.log_prob(z)
        logw = log_lik + log_prior - log_q  # as WeightParts.log_weights
        lw = logw.detach()
        self.last_log_weights = lw
        bound, c_model, c_sample = self._combine(lw)
        surrogate = torch.zeros((), dtype=lw.dtype, device=lw.device)
        if torch.is_grad_enabled() and logw.requires_grad:
            log_p = log_lik + log_prior
            if c_model is c_sample:
                surrogate = (c_sample * (log_p - log_q_s)).sum()
            else:
                ratio = _routing_ratio(c_model, c_sample) if _is_row_wise(vae.decoder) and _is_row_wise(vae.prior) else None
                if ratio is not None:
                    # explicit parameters of log p get c_model; the sample path gets
                    # c_model · ratio = c_sample through the hook on the model's copy of z
                    r = ratio.reshape(ratio.shape + (1,) * (z.dim() - ratio.dim()))
                    z_p.register_hook(lambda g: g * r)
                    surrogate = (c_model * log_p).sum() - (c_sample * log_q_s).sum()
                else:
                    surrogate = (c_sample * (log_p - log_q_s)).sum()
                    surrogate = surrogate + _route_values(((c_model - c_sample) * log_p).sum(), [z])
        loss = -data_scale * (bound.sum() + (surrogate - surrogate.detach()))
        terms = Terms(
            bound=bound.mean().detach(),
            reconstruction=log_lik.detach().mean(),
            kl=(log_q - log_prior).detach().mean(),
        )
        return loss, terms


def _routing_ratio(c_model: torch.Tensor, c_sample: torch.Tensor) -> torch.Tensor | None:
    """c_sample / c_model where defined (0 where both are 0); ``None`` if some c_model is 0
    where c_sample is not (then the hook cannot route, and the exact routing runs)."""
    pos = c_model > 0
    if not bool((pos | (c_sample == 0)).all()):
        return None
    return torch.where(pos, c_sample / torch.where(pos, c_model, torch.ones_like(c_model)), torch.zeros_like(c_model))


def _check_gradient(gradient: str, allowed: tuple[str, ...] = GRADIENTS) -> str:
    if gradient not in allowed:
        raise ValueError(f"gradient must be one of {allowed}, got {gradient!r}")
    return gradient


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _grouped(lw: torch.Tensor, num_outer: int, squared: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MIWAE bound (1/M) Σ_m log (1/K) Σ_k w_mk and its coefficients (w̃ normalized within groups)."""
    MK, B = lw.shape
    g = lw.reshape(num_outer, MK // num_outer, B)
    bound = log_mean_exp(g, dim=1).mean(0)
    wn = torch.softmax(g, dim=1)
    c = (wn / num_outer).reshape(MK, B)
    c2 = (wn.square() / num_outer).reshape(MK, B) if squared else c
    return bound, c, c2


class MIWAE(ImportanceObjective):
    """Multiply importance-weighted bound: the mean of ``num_outer`` independent IWAE bounds of
    ``num_inner`` particles each,

        MIWAE(x) = (1/M) Σ_m log (1/K) Σ_k w_mk,

    computed with M·K vectorized particles. M = 1 is IWAE-K; K = 1 is the ELBO with M particles.

    Args:
        num_outer: M ≥ 1.
        num_inner: K ≥ 1.
        gradient: ``"standard"`` (reparameterized gradient of the bound), ``"stl"`` (sticking
            the landing: log q with stopped parameters) or ``"dreg"`` (doubly reparameterized,
            per group). See the module docstring for how they are built and their limits.
        num_particles: optional; if given must equal ``num_outer * num_inner``.

    References:
        Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh (2018). Tighter variational bounds are
        not necessarily better. ICML.
    """

    def __init__(
        self,
        num_outer: int,
        num_inner: int,
        gradient: str = "standard",
        num_particles: int | None = None,
        **kwargs: Any,
    ) -> None:
        M, K = _check_count("num_outer", num_outer), _check_count("num_inner", num_inner)
        if num_particles is not None and num_particles != M * K:
            raise ValueError(
                f"num_particles={num_particles!r} but num_outer * num_inner = {M} * {K} = {M * K}; "
                "omit num_particles (it is num_outer * num_inner)"
            )
        super().__init__(num_particles=M * K, **kwargs)
        self.num_outer, self.num_inner = M, K
        self.gradient = _check_gradient(gradient)
        self._stop_q = gradient in ("stl", "dreg")

    def _check_traces(self, traces: ParticleTraces) -> None:
        if traces.num_particles != self.num_outer * self.num_inner:
            raise ValueError(
                f"{type(self).__name__} got {traces.num_particles} particles but num_outer * num_inner = "
                f"{self.num_outer} * {self.num_inner}; do not change num_particles after construction "
                "(build a new objective instead)"
            )

    def _combine(self, lw):  # noqa: D102
        bound, c, c2 = _grouped(lw, self.num_outer, squared=self.gradient == "dreg")
        return bound, c, c2


class IWAE(MIWAE):
    """Importance-weighted bound with K particles, per datapoint:

        IWAE-K(x) = log (1/K) Σ_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x).

    IWAE-1 is the (Monte Carlo KL) ELBO; the bound increases with K towards log p(x).

    Args:
        num_particles: K ≥ 1 (vectorized).
        gradient: ``"standard"`` — Σ_k w̃_k ∇ log w_k (Burda et al.); ``"stl"`` — sticking the
            landing, the same with log q evaluated at stopped parameters so only the sample path
            carries the encoder gradient (Roeder et al.; with K = 1 it is STL for the ELBO);
            ``"dreg"`` — doubly reparameterized: the encoder gets Σ_k w̃_k² ∂log w̃_k/∂z_k ∂z_k/∂φ
            (stopped-parameter log q), the decoder and prior the standard Σ_k w̃_k ∇_θ log w_k
            (Tucker et al.). STL and DReG gradients vanish when the guide is the exact posterior.
            For K > 1 the STL gradient is biased for the IWAE bound (Tucker et al. 2019, §3;
            ``tests/test_objectives.py`` measures the bias); DReG is unbiased.

    Example:
        >>> import pyro_vae as pv
        >>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)),
        ...              pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
        >>> iwae = pv.objectives.IWAE(num_particles=8, gradient="dreg")
        >>> loss = iwae(vae.model, vae.guide)(torch.zeros(3, 4))
        >>> loss.backward()

    References:
        Burda, Grosse, Salakhutdinov (2016). Importance weighted autoencoders. ICLR.
        Roeder, Wu, Duvenaud (2017). Sticking the landing: simple, lower-variance gradient
        estimators for variational inference. NeurIPS.
        Tucker, Lawson, Gu, Maddison (2019). Doubly reparameterized gradient estimators for Monte
        Carlo objectives. ICLR.
    """

    def __init__(self, num_particles: int = 1, gradient: str = "standard", **kwargs: Any) -> None:
        K = _check_count("num_particles", num_particles)
        super().__init__(num_outer=1, num_inner=K, gradient=gradient, **kwargs)


class CIWAE(ImportanceObjective):
    """Combination of the ELBO and IWAE on the same K particles:

        CIWAE_β(x) = β · (1/K) Σ_k log w_k + (1 − β) · log (1/K) Σ_k w_k,   0 ≤ β ≤ 1.

    β = 1 is the (Monte Carlo KL) ELBO with K particles, β = 0 is IWAE-K.

    Args:
        beta: mixing weight β in [0, 1] of the ELBO term (not a KL weight; for β-VAE see
            :class:`pyro_vae.objectives.BetaVAE`).
        num_particles: K ≥ 1.
        gradient: ``"standard"`` or ``"stl"`` (log q at stopped parameters).

    References:
        Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh (2018). Tighter variational bounds are
        not necessarily better. ICML.
    """

    def __init__(self, beta: float, num_particles: int = 1, gradient: str = "standard", **kwargs: Any) -> None:
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"CIWAE beta must lie in [0, 1] (beta=1: ELBO, beta=0: IWAE), got {beta!r}")
        super().__init__(num_particles=_check_count("num_particles", num_particles), **kwargs)
        self.beta = float(beta)
        self.gradient = _check_gradient(gradient, ("standard", "stl"))
        self._stop_q = gradient == "stl"

    def _combine(self, lw):  # noqa: D102
        K = lw.shape[0]
        bound = self.beta * lw.mean(0) + (1.0 - self.beta) * log_mean_exp(lw, dim=0)
        c = self.beta / K + (1.0 - self.beta) * torch.softmax(lw, dim=0)
        return bound, c, c


class PIWAE(MIWAE):
    """Partially importance-weighted autoencoder: one set of M·K particles, two bounds.

    The decoder and prior (every explicit parameter dependence of log p) get the gradient of
    IWAE-(M·K); the encoder (the sample path z and log q) gets the gradient of MIWAE(M, K), whose
    signal-to-noise ratio for the encoder does not vanish as K grows. The reported value (loss and
    ``last_terms.bound``) is IWAE-(M·K). The split is by gradient path, not by parameter list, so
    any model/guide pair works; see the module docstring for the surrogate.

    Args:
        num_outer: M ≥ 1.
        num_inner: K ≥ 1.
        encoder_gradient: estimator of the encoder's MIWAE gradient: ``"standard"`` (as in the
            paper), ``"stl"`` or ``"dreg"``.
        num_particles: optional; if given must equal ``num_outer * num_inner``.

    References:
        Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh (2018). Tighter variational bounds are
        not necessarily better. ICML.
    """

    def __init__(
        self,
        num_outer: int,
        num_inner: int,
        encoder_gradient: str = "standard",
        num_particles: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_outer, num_inner, gradient=encoder_gradient, num_particles=num_particles, **kwargs)
        self.encoder_gradient = self.gradient

    def _combine(self, lw):  # noqa: D102
        _, _, c_sample = _grouped(lw, self.num_outer, squared=self.gradient == "dreg")
        bound = log_mean_exp(lw, dim=0)
        c_model = torch.softmax(lw, dim=0)
        return bound, c_model, c_sample


__all__ = [
    "GRADIENTS",
    "bernoulli_log_prob",
    "fast_linear",
    "ImportanceObjective",
    "WeightParts",
    "IWAE",
    "MIWAE",
    "CIWAE",
    "PIWAE",
    "weight_parts",
    "stopped_log_q",
    "stop_parameters",
    "check_single_level",
]
