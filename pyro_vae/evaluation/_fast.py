"""The log-likelihood fast path for a plain :class:`~pyro_vae.VAE` (no tracing).

:func:`pyro_vae.log_likelihood` hands a plain VAE here. The estimate is the traced path's, draw
for draw: the same chunks over datapoints and samples (:func:`~pyro_vae.evaluation.plan_chunks`),
the same ``z = q.rsample((k,))`` per chunk, the same ``log p(z) + log p(x|z) − log q(z|x)`` per
(sample, datapoint). What changes is how the ``(k, b, x_dim)`` decoder output is computed:

* the encoder runs once per datapoint chunk (not once per sample chunk);
* the decoder runs on row blocks of about :data:`BLOCK_BYTES` of activations, so each block's
  hidden units and logits stay in the CPU cache between the matmul that writes them and the
  elementwise work that reads them (on one core a 784-wide Bernoulli log-density costs
  ~1 ns/element from cache and 5–13 ns from memory);
* the linear layers of an :class:`~pyro_vae.nn.MLP` decoder use oneDNN's matmul on CPU float32
  (``torch.ops.mkldnn._linear_pointwise``), which runs AVX-512 kernels where torch's default
  float32 CPU matmul (MKL) may not — on AMD Zen CPUs about half the time per matmul; checked
  against ``F.linear`` on first use and abandoned (with one warning) if it is missing or disagrees;
* a :class:`~pyro_vae.decoders.BernoulliDecoder` likelihood is summed over pixels without the
  binary-cross-entropy temporaries (:func:`~pyro_vae.objectives.iwae.bernoulli_log_prob`), or,
  with ``compile=True``, by one fused ``torch.compile`` kernel (falls back to eager, with one
  warning, when compilation is unavailable or fails).

The results equal the traced path's to float rounding (``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import MLP
from ..objectives.iwae import _bernoulli_value, bernoulli_logits

#: target size of one decoder row block's activations (hidden units + outputs), bytes: about
#: half of a per-core L2 cache, so a block's matmul output is still cached when it is reduced
BLOCK_BYTES = 1 << 20

_state: dict[str, object] = {"onednn": None, "compiled": None, "compile_failed": False}


# -- linear layers ---------------------------------------------------------------------------------
def _onednn_available(x: torch.Tensor) -> bool:
    return (
        _state["onednn"] is not False
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _linear(h: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(h)`` for 2-D ``h``, through oneDNN when available (see module docstring)."""
    w, b = layer.weight, layer.bias
    if not (_onednn_available(h) and w.dtype == torch.float32 and w.device.type == "cpu"):
        return F.linear(h, w, b)
    try:
        out = torch.ops.mkldnn._linear_pointwise(h.contiguous(), w.contiguous(), b, "none", [], "")
    except Exception as e:  # an op that exists but refuses these inputs: use torch's matmul from now on
        _disable_onednn(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        return F.linear(h, w, b)
    if _state["onednn"] is None:  # first use in this process: check it against torch's matmul
        ref = F.linear(h, w, b)
        tol = 1e-4 * (1.0 + float(ref.abs().max())) if ref.numel() else 0.0
        if out.shape != ref.shape or not bool(((out - ref).abs() <= tol).all()):
            _disable_onednn("its result differs from torch.nn.functional.linear")
            return ref
        _state["onednn"] = True
    return out


def _disable_onednn(why: str) -> None:
    _state["onednn"] = False
    warnings.warn(
        f"pyro_vae.log_likelihood: oneDNN matmul unavailable ({why}); using torch's default matmul "
        "(same numbers, slower on some CPUs)",
        RuntimeWarning,
        stacklevel=4,
    )


def _run_net(net: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``net(z)`` for 2-D ``z``; an :class:`~pyro_vae.nn.MLP` layer by layer through :func:`_linear`."""
    if type(net) is not MLP:
        return net(z)
    h = z
    for layer in net:
        h = _linear(h, layer) if type(layer) is nn.Linear else layer(h)
    return h


# -- the Bernoulli kernel ----------------------------------------------------------------------------
def _bernoulli_exact(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_d x·l − softplus(l) as −Σ_d [max(l, 0) − x·l + log1p(exp(−|l|))]: one pass when fused."""
    return -(torch.clamp_min(logits, 0.0) - logits * x + torch.log1p(torch.exp(-logits.abs()))).sum(-1)


def _compiled_kernel() -> Callable | None:
    if _state["compile_failed"]:
        return None
    if _state["compiled"] is None:
        try:
            _state["compiled"] = torch.compile(_bernoulli_exact, dynamic=False, fullgraph=True)
        except Exception as e:  # torch.compile itself unavailable (no compiler, unsupported Python, ...)
            _compile_failed(e)
            return None
    return _state["compiled"]  # type: ignore[return-value]


def _compile_failed(e: BaseException) -> None:
    _state["compile_failed"] = True
    warnings.warn(
        f"pyro_vae.log_likelihood(compile=True): torch.compile failed ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200] if str(e) else ''}); using the eager kernel (same numbers, a little slower)",
        RuntimeWarning,
        stacklevel=5,
    )


def _bernoulli(logits: torch.Tensor, x: torch.Tensor, compile: bool, full_block: bool) -> torch.Tensor:
    if compile and full_block:
        kernel = _compiled_kernel()
        if kernel is not None:
            try:
                return kernel(logits, x)
            except Exception as e:  # compilation happens on the first call
                _compile_failed(e)
    return _bernoulli_value(logits, x)


def reset() -> None:
    """Forget the oneDNN check and the compiled kernel (tests; after changing torch settings)."""
    _state.update(onednn=None, compiled=None, compile_failed=False)


# -- one chunk ----------------------------------------------------------------------------------------
def block_rows(x_dim: int, widths: int, memory_budget: float, device: torch.device) -> int:
    """Rows (sample × datapoint pairs) per decoder block."""
    per_row = 4 * (x_dim + widths) * 2  # activations and one temporary of each, float32
    target = BLOCK_BYTES if device.type == "cpu" else 1 << 28  # GPUs want big launches
    return max(1, int(min(target, memory_budget / 4) // per_row))


def _widths(decoder: nn.Module) -> int:
    net = getattr(decoder, "net", None)
    if isinstance(net, MLP):
        return sum(m.out_features for m in net if isinstance(m, nn.Linear))
    return 0


def log_weights_chunk(vae, q, z: torch.Tensor, x: torch.Tensor, rows: int, compile: bool) -> torch.Tensor:
    """``(k, b)`` log weights log p(z) + log p(x|z) − log q(z|x) for draws ``z`` of shape
    ``(k, b, latent...)`` from ``q = vae.encoder(x)``, the decoder run in blocks of ``rows`` rows."""
    k, b = z.shape[0], z.shape[1]
    log_prior = vae.prior().log_prob(z)
    log_q = q.log_prob(z)
    decoder = vae.decoder
    logits_net = bernoulli_logits(decoder)
    ks = max(1, rows // b)
    parts = []
    for lo in range(0, k, ks):
        zs = z[lo : lo + ks]
        kk = zs.shape[0]
        if logits_net is not None:
            logits = _run_net(logits_net, zs.reshape(kk * b, -1)) if zs.dim() == 3 else logits_net(zs)
            logits = logits.reshape(kk, b, -1)
            parts.append(_bernoulli(logits, x, compile, full_block=kk == ks))
        elif _plain_forward(decoder) and zs.dim() == 3:
            out = _run_net(decoder.net, zs.reshape(kk * b, -1)).reshape(kk, b, -1)
            parts.append(_distribution(decoder, out).log_prob(x))
        else:
            parts.append(decoder(zs).log_prob(x))
    log_lik = parts[0] if len(parts) == 1 else torch.cat(parts)
    return log_lik + log_prior - log_q  # the order of pyro_vae.traces.log_weights


def _plain_forward(decoder: nn.Module) -> bool:
    from ..decoders import Decoder

    return isinstance(decoder, Decoder) and type(decoder).forward is Decoder.forward and type(decoder.net) is MLP


def _distribution(decoder, out: torch.Tensor):
    """What :meth:`pyro_vae.decoders.Decoder.forward` builds from the network output (MLP case)."""
    if decoder.num_params == 1:
        return decoder.distribution(out)
    return decoder.distribution(out.reshape(*out.shape[:-1], decoder.x_dim, decoder.num_params))


def usable(vae) -> bool:
    """Whether the fast path reproduces the traced path's draws for ``vae``: no module that
    draws random numbers in training mode (dropout) may be active."""
    return not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training for m in vae.modules())


__all__ = ["log_weights_chunk", "block_rows", "usable", "reset", "BLOCK_BYTES"]
