"""The log-likelihood fast path for a plain :class:`~pyro_vae.VAE` (no tracing).

:func:`pyro_vae.log_likelihood` hands a plain VAE here. The estimate is the traced path's, draw
for draw: the same chunks over datapoints and samples (:func:`~pyro_vae.evaluation.plan_chunks`),
the same ``z = q.rsample((k,))`` per chunk, the same ``log p(z) + log p(x|z) − log q(z|x)`` per
(sample, datapoint). What changes is how the ``(k, b, x_dim)`` decoder output is computed:

* the encoder runs once per datapoint chunk (not once per sample chunk);
* the decoder runs on row blocks of a few MB of activations (:data:`BLOCK_BYTES`), so each block's
  hidden units and logits stay in the CPU cache between the matmul that writes them and the
  elementwise work that reads them (on one core a 784-wide Bernoulli log-density costs
  ~1 ns/element from cache and 5–13 ns from memory);
* the linear layers of an :class:`~pyro_vae.nn.MLP` decoder use oneDNN's matmul on CPU float32
  (:func:`pyro_vae.objectives.iwae.fast_linear`), which runs AVX-512 kernels where torch's
  default float32 CPU matmul (MKL) may not — on AMD Zen CPUs about half the time per matmul;
  checked against ``F.linear`` on first use and abandoned (with one warning) if it is missing
  or disagrees;
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
from torch import nn

from ..nn import MLP
from ..objectives.iwae import _bernoulli_value, _onednn, bernoulli_logits, decoder_distribution, decoder_output

#: budget of one decoder row block, bytes, counting each activation (hidden units and outputs)
#: twice for temporaries: ~4 MB of activations, within a core's L2 plus its share of L3, so a
#: block's matmul output is still cached when the log-density reads it (measured: 2-8 MiB are
#: equally good on a Zen 5 core; a whole chunk per block is 1.5-2x slower)
BLOCK_BYTES = 8 << 20

_state: dict[str, object] = {"compiled": None, "compile_failed": False}


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


def _bernoulli(logits: torch.Tensor, x: torch.Tensor, compile: bool) -> torch.Tensor:
    if compile:
        kernel = _compiled_kernel()
        # one static-shape kernel: compiled for the first block shape seen (the common block size);
        # other shapes (a chunk's last block, the last datapoint chunk) run the eager kernel
        shape = (tuple(logits.shape), tuple(x.shape), logits.dtype)
        if kernel is not None and _state.setdefault("compiled_shape", shape) == shape:
            try:
                return kernel(logits, x)
            except Exception as e:  # compilation happens on the first call
                _compile_failed(e)
    return _bernoulli_value(logits, x)


def reset() -> None:
    """Forget the oneDNN check and the compiled kernel (tests; after changing torch settings)."""
    _state.clear()
    _state.update(compiled=None, compile_failed=False)
    _onednn["ok"] = None


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
    prior = vae.prior()
    decoder = vae.decoder
    logits_net = bernoulli_logits(decoder)
    ks = max(1, rows // b)
    out = torch.empty((k, b), dtype=z.dtype, device=z.device)
    # a flow guide's log q(z) uses the transform's cached inverse for the very tensor rsample
    # returned: score the whole chunk at once there (a slice would recompute the inverse)
    log_q_all = q.log_prob(z) if isinstance(q, torch.distributions.TransformedDistribution) else None
    for lo in range(0, k, ks):
        zs = z[lo : lo + ks]
        body = decoder_output(decoder, zs)  # an MLP body through oneDNN; None for other decoders
        if logits_net is not None:
            log_lik = _bernoulli(body if body is not None else logits_net(zs), x, compile)
        elif body is not None:
            log_lik = decoder_distribution(decoder, body).log_prob(x)
        else:
            log_lik = decoder(zs).log_prob(x)
        # per block too: the (k, b, latent) temporaries of the densities stay small and cached
        log_q = q.log_prob(zs) if log_q_all is None else log_q_all[lo : lo + zs.shape[0]]
        out[lo : lo + zs.shape[0]] = log_lik + prior.log_prob(zs) - log_q  # traces.log_weights' order
    return out


def usable(vae) -> bool:
    """Whether the fast path reproduces the traced path's draws for ``vae``: no module that
    draws random numbers in training mode (dropout) may be active."""
    return not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training for m in vae.modules())


__all__ = ["log_weights_chunk", "block_rows", "usable", "reset", "BLOCK_BYTES"]
