"""Low-level kernels that the components use, and the one object that switches them.

Speed lives here and in the components that call it, never in a second copy of an objective:

* :func:`linear` — ``F.linear`` or oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``) on
  CPU float32, used by :class:`pyro_vae.nn.Linear` (so by every :class:`~pyro_vae.nn.MLP`);
* :func:`bernoulli_log_prob` — Σ_d x_d·l_d − softplus(l_d) as one fused autograd node, used by
  :class:`pyro_vae.distributions.BernoulliLogits` (so by every
  :class:`~pyro_vae.decoders.BernoulliDecoder`), with an optional ``torch.compile`` variant for
  long no-gradient evaluations, and a gradient-only variant (:class:`gradient_only`) for callers
  that need ∇ log p but not log p (AIS's inner leapfrog steps). Under ``torch.autocast``,
  :func:`linear` defers to ``F.linear`` so the matmul runs in the autocast dtype.

Which matmul is faster depends on the processor (oneDNN ran about 2x torch's default MKL matmul
on one AMD Zen 5 core, 1.2-1.3x on another AMD EPYC with AVX-512). So the choice is **measured**:
the first time a layer shape is seen in a process (rows bucketed by powers of two), both kernels
run a few times on (at most 4096 rows of) that layer's own tensors (no random numbers are drawn),
and oneDNN is kept for that shape for the rest of the process only if it was at least 5% faster
(within noise, torch's matmul stays the choice, so runs stay reproducible from process to process). The first oneDNN call is also checked against
``F.linear``; a failure or a mismatch switches oneDNN off for the process with one
``RuntimeWarning``. Both kernels give the same numbers to float rounding.

All process-wide switches live in :data:`settings`.

Example:
    >>> from pyro_vae import settings
    >>> settings.onednn in ("auto", "on", "off")
    True
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F


def _env_onednn() -> str:
    return "off" if os.environ.get("PYRO_VAE_ONEDNN", "1").strip() == "0" else "auto"


@dataclass
class Settings:
    """Process-wide kernel switches (one instance: :data:`pyro_vae.settings`).

    Attributes:
        onednn: ``"auto"`` (default: measure both matmuls per layer shape on first use and keep
            the faster), ``"on"`` (always oneDNN where it applies) or ``"off"`` (always
            ``F.linear``). The environment variable ``PYRO_VAE_ONEDNN=0`` sets ``"off"`` at import.
        onednn_min_rows: matrices with fewer rows always use ``F.linear`` (for small matrices
            the autograd node and transposed copies cost more than a faster kernel saves).
        block_bytes: activation budget of one decoder row block in ``log_likelihood`` on CPU
            (a block's matmul output should still be in cache when its log-density reads it).
        measure_repeats: timed repeats per kernel in the first-use measurement.
    """

    onednn: str = field(default_factory=_env_onednn)
    onednn_min_rows: int = 64
    block_bytes: int = 8 << 20
    measure_repeats: int = 3

    def __setattr__(self, name: str, value: object) -> None:
        if name == "onednn" and value not in ("auto", "on", "off"):
            raise ValueError(f"settings.onednn must be 'auto', 'on' or 'off', got {value!r}")
        if name in ("onednn_min_rows", "block_bytes", "measure_repeats") and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"settings.{name} must be an integer >= 1, got {value!r}")
        super().__setattr__(name, value)


#: the process-wide kernel settings
settings = Settings()

#: the first-use measurement times at most this many rows of the call's input
MEASURE_ROWS = 4096
#: oneDNN is chosen only when it measured at least this much faster than torch's matmul
MEASURE_MARGIN = 0.05

# per-process state: whether oneDNN passed its check (None: not tried yet), and the measured
# choice per (in, out, rows bucket, grad) key: True = oneDNN
_state: dict = {"onednn_ok": None, "choice": {}, "timings": {}, "compiled": None, "compile_failed": False}


def reset() -> None:
    """Forget every measurement and check of this process (tests; after changing torch settings)."""
    _state.update(onednn_ok=None, choice={}, timings={}, compiled=None, compile_failed=False)
    _state.pop("compiled_shape", None)
    _state.pop("present", None)


def report() -> dict:
    """What was measured in this process: per layer shape, seconds per call of each kernel and
    the choice (``{"in x out, rows~R, grad": {"torch": s, "onednn": s, "chosen": name}}``)."""
    return {k: dict(v) for k, v in _state["timings"].items()}


# -- linear ----------------------------------------------------------------------------------------
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


def _onednn_present() -> bool:
    if "present" not in _state:  # looked up once per process (torch.ops attribute lookups are slow)
        _state["present"] = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    return _state["present"]


def _onednn_applies(h: torch.Tensor, w: torch.Tensor) -> bool:
    return (
        h.dim() == 2
        and h.shape[0] >= settings.onednn_min_rows
        and settings.onednn != "off"
        and _state["onednn_ok"] is not False
        and h.dtype == torch.float32
        and w.dtype == torch.float32
        and h.device.type == "cpu"
        and w.device.type == "cpu"
        and _onednn_present()
    )


def _onednn(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, grad: bool) -> torch.Tensor:
    if grad:
        return _OneDNNLinear.apply(h, w, b)
    return torch.ops.mkldnn._linear_pointwise(h, w, b, "none", [], "")


def _disable_onednn(why: str) -> None:
    _state["onednn_ok"] = False
    warnings.warn(
        f"pyro_vae kernels: oneDNN matmul unavailable ({why}); using torch's default matmul "
        "(same numbers, slower on some CPUs)",
        RuntimeWarning,
        stacklevel=5,
    )


def _time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _measure(key: tuple, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, grad: bool) -> bool:
    """Time both kernels on copies of this call's tensors (forward, and backward when training),
    on at most ``MEASURE_ROWS`` of its rows; oneDNN must win by ``MEASURE_MARGIN`` to be chosen
    (torch's matmul stays the choice when the two are within noise of each other)."""
    hh, ww = h[:MEASURE_ROWS].detach(), w.detach()
    bb = None if b is None else b.detach()
    if grad:
        hh, ww = hh.requires_grad_(), ww.clone().requires_grad_()

    def run(kernel: Callable) -> Callable[[], object]:
        def go() -> object:
            with torch.enable_grad() if grad else torch.no_grad():
                out = kernel()
                if grad:
                    return torch.autograd.grad(out.sum(), (hh, ww))
                return out

        return go

    torch_fn = run(lambda: F.linear(hh, ww, bb))
    dnn_fn = run(lambda: _onednn(hh, ww, bb, grad))
    torch_fn(), dnn_fn()  # warm both (lazy kernel set-up)
    r = settings.measure_repeats
    t_torch, t_dnn = _time(torch_fn, r), _time(dnn_fn, r)
    chosen = t_dnn < (1.0 - MEASURE_MARGIN) * t_torch
    name = f"{h.shape[1]} x {w.shape[0]}, rows~{1 << max(key[2] - 1, 0)}, {'grad' if grad else 'no grad'}"
    _state["timings"][name] = {"torch": t_torch, "onednn": t_dnn, "chosen": "onednn" if chosen else "torch"}
    return chosen


def linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(h, weight, bias)``, through oneDNN's matmul where it applies and is faster.

    oneDNN applies to 2-D CPU float32 inputs with at least ``settings.onednn_min_rows`` rows;
    with ``settings.onednn == "auto"`` it is used for a layer shape only if the first-use
    measurement found it faster on this machine. Differentiable in all arguments.

    Example:
        >>> h, w, b = torch.randn(128, 20), torch.randn(30, 20), torch.randn(30)
        >>> bool(torch.allclose(linear(h, w, b), F.linear(h, w, b), atol=1e-5))
        True
    """
    if not _onednn_applies(h, weight) or torch.is_autocast_enabled(h.device.type):
        return F.linear(h, weight, bias)  # (under autocast F.linear runs in the autocast dtype)
    grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    h = h.contiguous()
    w = weight.contiguous()
    if _state["onednn_ok"] is None:  # first use in this process: check it against torch's matmul
        try:
            with torch.no_grad():
                out = _onednn(h, w, bias, False)
                ref = F.linear(h, w, bias)
        except Exception as e:  # an op that exists but refuses these inputs
            _disable_onednn(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            return F.linear(h, weight, bias)
        if not bool(torch.isfinite(ref).all()):  # NaN or inf inputs prove nothing: check on a later call
            return F.linear(h, weight, bias)
        tol = 1e-4 * (1.0 + float(ref.abs().max())) if ref.numel() else 0.0
        if out.shape != ref.shape or not bool(((out - ref).abs() <= tol).all()):
            _disable_onednn("its result differs from torch.nn.functional.linear")
            return F.linear(h, weight, bias)
        _state["onednn_ok"] = True
    if settings.onednn == "auto":
        key = (h.shape[1], w.shape[0], int(h.shape[0]).bit_length(), grad)
        use = _state["choice"].get(key)
        if use is None:
            try:
                use = _state["choice"][key] = _measure(key, h, w, bias, grad)
            except Exception as e:
                _disable_onednn(f"{type(e).__name__} while measuring")
                return F.linear(h, weight, bias)
        if not use:
            return F.linear(h, weight, bias)
    try:
        return _onednn(h, w, bias, grad)
    except Exception as e:
        _disable_onednn(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        return F.linear(h, weight, bias)


# -- Bernoulli log-density -------------------------------------------------------------------------
def _broadcast(a: torch.Size, b: torch.Size) -> tuple:
    """The broadcast shape of two shapes (``torch.broadcast_shapes`` imports sympy on first use)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for i, j in zip(a, b):
        if i != j and i != 1 and j != 1:
            raise RuntimeError(f"shapes {a} and {b} do not broadcast")
        out.append(j if i == 1 else i)
    return tuple(out)


def _fills(big: torch.Size, *small: torch.Size) -> bool:
    """Whether every ``small`` shape broadcasts into ``big`` (without Python's general
    ``torch.broadcast_shapes``, which costs more than the kernel on small inputs)."""
    for s in small:
        if s == big:
            continue
        if len(s) > len(big) or any(a != b and a != 1 for a, b in zip(reversed(s), reversed(big))):
            return False
    return True


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
            grad_logits = _bernoulli_grad(logits, x, g)
        if ctx.needs_input_grad[1]:
            grad_x = (logits * g).sum_to_size(x.shape)
        return grad_logits, grad_x


class _BernoulliGradientOnly(torch.autograd.Function):
    """:class:`_BernoulliLogProb`'s gradient without its value (inside :class:`gradient_only`).

    The forward returns NaN (the value is not computed: softplus over every pixel is the
    costliest elementwise pass of a decoder evaluation), so a value read by mistake poisons
    what it touches instead of passing for a number. The backward is the exact (x − σ(l)) · grad
    in the logits' own dtype (bfloat16 under autocast).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(logits, x)
        shape = _broadcast(logits.shape, x.shape)[:-1]
        return torch.full(shape, math.nan, dtype=torch.promote_types(logits.dtype, x.dtype), device=logits.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        logits, x = ctx.saved_tensors
        grad_logits = grad_x = None
        g = grad.unsqueeze(-1).to(logits.dtype)
        if ctx.needs_input_grad[0]:
            grad_logits = _bernoulli_grad(logits, x, g)
        if ctx.needs_input_grad[1]:
            grad_x = (logits * g).sum_to_size(x.shape).to(x.dtype)
        return grad_logits, grad_x


class gradient_only:
    """Context manager: inside it, differentiable :func:`bernoulli_log_prob` calls return NaN in
    place of their value and keep their exact gradient (:class:`_BernoulliGradientOnly`).

    For callers that need ∇ log p and not log p — the inner leapfrog steps of AIS
    (:mod:`pyro_vae.evaluation.annealing`) — and only where the gradient of what they
    differentiate does not depend on the Bernoulli value (sums and constant scales of site
    log-densities; not a logsumexp over enumerated values). No-gradient calls are unaffected.
    """

    def __enter__(self) -> "gradient_only":
        self._before = _state.get("gradient_only", False)
        _state["gradient_only"] = True
        return self

    def __exit__(self, *exc: object) -> None:
        _state["gradient_only"] = self._before


def _bernoulli_grad(logits: torch.Tensor, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(x − σ(l)) · g in the logits' dtype, in one temporary: σ(l), then x − σ(l) written over it
    in one pass, then the product, skipped on CPU when every g is 1 (the gradient of a plain sum)."""
    s = torch.sigmoid(logits)
    if not _fills(s.shape, x.shape, g.shape):
        return ((x - s) * g).sum_to_size(logits.shape)
    torch.sub(x.to(s.dtype), s, out=s)
    if s.device.type != "cpu" or not bool((g == 1).all()):  # (a CUDA check would wait for the device)
        s.mul_(g)
    return s


def _bernoulli_value(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = F.softplus(logits)
    if _fills(t.shape, x.shape):
        t.addcmul_(logits, x, value=-1.0)  # softplus(l) − x·l, in the one temporary
    else:
        t = t - logits * x
    return t.sum(-1).neg_()


def _bernoulli_exact(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_d x·l − softplus(l) as −Σ_d [max(l, 0) − x·l + log1p(exp(−|l|))]: one pass when fused."""
    return -(torch.clamp_min(logits, 0.0) - logits * x + torch.log1p(torch.exp(-logits.abs()))).sum(-1)


def _compile_failed(e: BaseException) -> None:
    _state["compile_failed"] = True
    warnings.warn(
        f"pyro_vae kernels: torch.compile failed ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200] if str(e) else ''}); using the eager kernel (same numbers, a little slower)",
        RuntimeWarning,
        stacklevel=5,
    )


def _compiled_bernoulli(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """The ``torch.compile`` kernel for the first block shape seen; ``None`` for other shapes or
    when compilation is unavailable (then the eager kernel runs)."""
    if _state["compile_failed"]:
        return None
    if _state["compiled"] is None:
        try:
            _state["compiled"] = torch.compile(_bernoulli_exact, dynamic=False, fullgraph=True)
        except Exception as e:  # torch.compile itself unavailable (no compiler, unsupported Python, ...)
            _compile_failed(e)
            return None
    shape = (tuple(logits.shape), tuple(x.shape), logits.dtype)
    if _state.setdefault("compiled_shape", shape) != shape:
        return None
    try:
        return _state["compiled"](logits, x)
    except Exception as e:  # compilation happens on the first call
        _compile_failed(e)
        return None


class compiled_bernoulli:
    """Context manager: inside it (when ``enabled``), no-gradient :func:`bernoulli_log_prob`
    calls use the ``torch.compile`` kernel (``log_likelihood(..., compile=True)``)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def __enter__(self) -> "compiled_bernoulli":
        self._before = _state.get("compile_active", False)
        _state["compile_active"] = self._before or self.enabled
        return self

    def __exit__(self, *exc: object) -> None:
        _state["compile_active"] = self._before


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor, compile: bool | None = None) -> torch.Tensor:
    """log Π_d Bernoulli(x_d | σ(logits_d)) = Σ_d x_d·l_d − softplus(l_d), summed over the last dim.

    The value of ``dist.Bernoulli(logits=logits).to_event(1).log_prob(x)`` up to float rounding,
    with ``x`` broadcast against ``logits``; differentiable in both, as one fused autograd node.
    ``compile=True`` (no gradients only; default: inside :class:`compiled_bernoulli`) uses one
    ``torch.compile`` kernel for the first shape seen, falling back to the eager kernel with one
    warning if compilation fails.

    Example:
        >>> l, x = torch.randn(3, 2, 5), torch.bernoulli(torch.full((2, 5), 0.5))
        >>> ref = torch.distributions.Bernoulli(logits=l).log_prob(x).sum(-1)
        >>> bool(torch.allclose(bernoulli_log_prob(l, x), ref, atol=1e-5))
        True
    """
    if torch.is_grad_enabled() and (logits.requires_grad or x.requires_grad):
        if _state.get("gradient_only", False):
            return _BernoulliGradientOnly.apply(logits, x)
        return _BernoulliLogProb.apply(logits, x)
    if compile if compile is not None else _state.get("compile_active", False):
        out = _compiled_bernoulli(logits, x)
        if out is not None:
            return out
    return _bernoulli_value(logits, x)


__all__ = ["Settings", "settings", "linear", "bernoulli_log_prob", "compiled_bernoulli", "gradient_only", "report", "reset"]
