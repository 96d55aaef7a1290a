"""Importance-sampled log-likelihood, one estimate per datapoint.

    log p(x_i) ≈ log (1/K) Σ_k p(x_i, z_ik) / q(z_ik | x_i),   z_ik ~ q(z | x_i)

for any Pyro model/guide pair whose datapoints sit in a ``"data"`` plate, vectorized over
datapoints and samples and chunked so the working memory stays under a budget.

The log weights of each chunk come from the :class:`~pyro_vae.program.Particles` record: traced
for any program (:func:`~pyro_vae.program.traced_particles`), or read from a plain
:class:`~pyro_vae.VAE`'s components (its unmodified ``model``/``guide``, outside Pyro handlers;
:func:`~pyro_vae.program.from_vae`), which makes the same draws and gives the same estimates to
float rounding. On that path the encoder runs once per datapoint chunk and the decoder on row
blocks of ``settings.block_bytes`` of activations, so each block's hidden units and logits are
still in cache when its log-density reads them. ``fast_path=False`` always traces.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import torch
from tqdm import tqdm  # plain tqdm: tqdm.auto warns in notebooks without ipywidgets

from .. import _kernels
from ..data import as_data, model_dtype
from ..program import WeightAccumulator, data_args, from_vae, guess_max_plate_nesting, plain_vae, traced_log_weights
from ..vae import DATA_PLATE

#: Blocks of the traced path hold this many times the component path's rows (a traced block pays
#: a fixed cost for Pyro's handlers that a component block does not).
_TRACED_BLOCK_FACTOR = 4

#: Working-memory estimate per (sample, datapoint, feature): ~8 float32 temporaries
#: (decoder output, log-prob and their autograd-free intermediates).
_BYTES_PER_ELEMENT = 32


class LogLikelihood(NamedTuple):
    """Per-datapoint estimates and their summary.

    ``per_datapoint`` has shape ``(N,)``; ``mean`` is their average and ``stderr`` its standard
    error across datapoints (std / √N). ``ess`` is the importance-sampling effective sample size
    per datapoint, (Σw)² / Σw², a check on the estimate (small ESS: the guide is a poor proposal).
    """

    per_datapoint: torch.Tensor
    mean: float
    stderr: float
    num_samples: int
    ess: torch.Tensor

    def __str__(self) -> str:
        return f"log p(x) ≈ {self.mean:.2f} ± {self.stderr:.2f} nats (K={self.num_samples}, N={len(self.per_datapoint)})"


def plan_chunks(num_data: int, num_samples: int, x_dim: int, memory_budget: float) -> tuple[int, int]:
    """Choose ``(datapoints_per_chunk, samples_per_chunk)`` so one chunk fits ``memory_budget`` bytes."""
    per_pair = max(1, x_dim) * _BYTES_PER_ELEMENT
    pairs = max(1, int(memory_budget // per_pair))
    samples = min(num_samples, pairs)
    points = max(1, min(num_data, pairs // samples))
    return points, samples


@torch.no_grad()
def log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args: Any,
    num_samples: int = 5000,
    memory_budget: float = 1 << 30,
    max_plate_nesting: int | None = None,
    plate_name: str = DATA_PLATE,
    progress: bool = False,
    fast_path: bool = True,
    compile: bool = False,
    per_datapoint: Sequence[int | str] | None = None,
    method: str = "is",
    ais_options: dict | None = None,
    **kwargs: Any,
) -> LogLikelihood:
    """Estimate log p(x_i) for every row of ``x`` by importance sampling from the guide.

    Args:
        model, guide: a Pyro pair called as ``model(x_chunk, *args, **kwargs)`` whose sample
            sites all sit in ``pyro.plate(plate_name, len(x_chunk))`` (the first argument is the
            data; rows are datapoints). ``VAE.model`` / ``VAE.guide`` qualify, and so does any
            hand-written pair of that shape, e.g. a conditional VAE ``model(xs, ys)``.
            Arguments whose leading dimension is ``len(x)`` are per-datapoint: every chunk gets
            their rows with the rows of x.
        x: data, shape ``(N, ...)``: a tensor or numpy array of any real dtype (bool and integer data
            are converted to floating, :func:`pyro_vae.data.as_data`; for a plain VAE to its parameter
            dtype, and its width and the decoder's support are checked as :func:`pyro_vae.fit` does).
        num_samples: K, importance samples per datapoint.
        memory_budget: bytes the working set of one chunk may use (default 1 GiB); chunks over
            datapoints and samples are sized from it (see :func:`plan_chunks`).
        progress: show a progress bar over chunks.
        fast_path: for a plain :class:`~pyro_vae.VAE`, skip tracing (same draws, same estimates
            to float rounding; see the module docstring). ``False`` always traces.
        compile: on the fast path with a Bernoulli decoder, sum the log-density over pixels with
            one ``torch.compile`` kernel (compiling takes seconds to tens of seconds once per
            process and pays only for long evaluations; see ``docs/performance.md``). Falls back
            to the eager kernel, with one warning, if compilation fails.
        per_datapoint: more per-datapoint arguments, by position in ``args`` (0 = the first
            after x) or keyword name; each must have ``len(x)`` rows (else ``ValueError``).
        method: ``"is"`` (importance sampling from the guide, the default) or ``"ais"``: annealed
            importance sampling, :func:`pyro_vae.evaluation.ais` (x, args, ``per_datapoint``,
            ``plate_name``, ``max_plate_nesting``, ``memory_budget`` and ``progress`` are passed on;
            ``num_samples``, ``fast_path`` and ``compile`` are not used). The returned
            :class:`LogLikelihood` then holds AIS's per-datapoint log p̂(x) (a stochastic lower
            bound), its mean and standard error, ``num_samples`` = the number of chains and ``ess``
            = the ESS of the chain weights; call ``ais`` itself for k̂, acceptance rates and step sizes.
        ais_options: keywords of :func:`pyro_vae.evaluation.ais` for ``method="ais"`` (``num_steps``,
            ``num_chains``, ``schedule``, ``init``, ``num_leapfrog``, ``step_size``, ``mass``, ``seed``, …).

    Returns:
        :class:`LogLikelihood` with per-datapoint estimates, mean, standard error and ESS.

    Example:
        >>> import pyro_vae as pv
        >>> vae = pv.VAE(pv.encoders.DiagNormalEncoder(4, 2, hidden=(8,)),
        ...              pv.decoders.GaussianDecoder(2, 4, hidden=(8,)))
        >>> ll = pv.log_likelihood(vae.model, vae.guide, torch.zeros(5, 4), num_samples=100)
        >>> ll.per_datapoint.shape
        torch.Size([5])

    References:
        Burda, Grosse, Salakhutdinov (2016). Importance weighted autoencoders. ICLR.
    """
    if method not in ("is", "ais"):
        raise ValueError(f"unknown method {method!r}; choose 'is' (importance sampling) or 'ais' (annealed importance sampling)")
    if ais_options is not None and method != "ais":
        raise ValueError("ais_options only apply to method='ais'; pass method='ais' or drop ais_options")
    if method == "ais":
        from .annealing import ais

        options = {"memory_budget": memory_budget, **(ais_options or {})}
        res = ais(model, guide, x, *args, per_datapoint=per_datapoint, plate_name=plate_name,
                  max_plate_nesting=max_plate_nesting, progress=progress, **options, **kwargs)
        return LogLikelihood(res.per_datapoint.float(), res.mean, res.stderr, res.num_chains, res.ess.float())
    # ---- argument checks, before any work: the data as fit() takes and checks them --------------
    checked = plain_vae(model, guide)
    x = as_data(x, model_dtype(checked) if checked is not None else None, name="x")
    if checked is not None:  # shape (N, x_dim), finite values, the likelihood's support: as fit does
        checked.decoder.check_data(x, "x")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if x.shape[0] == 0:
        raise ValueError("x is empty: log_likelihood needs at least one datapoint")
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be positive bytes, got {memory_budget}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf; clean or impute those values before evaluating")
    n = x.shape[0]
    x_dim = int(x[0].numel())
    points, samples = plan_chunks(n, num_samples, x_dim, memory_budget)
    vae = checked if fast_path else None
    if (
        vae is not None
        and plate_name == DATA_PLATE
        and not args
        and all(k == "num_data" and v is None for k, v in kwargs.items())
        and not _random_in_training(vae)
    ):
        return _fast_log_likelihood(vae, x, num_samples, memory_budget, points, samples, progress, compile)
    extra = data_args(n, args, kwargs, per_datapoint)
    if max_plate_nesting is None:
        a1, k1 = extra.chunk(0, 1)
        max_plate_nesting = guess_max_plate_nesting(model, guide, (x[:1], *a1), k1)

    # the model replayed on particle blocks (traced_log_weights: the same draws, the decoder's
    # activations still in cache for the log-density); its hidden layers are guessed as wide as
    # x, and each traced block costs ~1-3 ms of Pyro machinery, so blocks are bigger than the
    # component path's (docs/user_programs.md measures the choice)
    rows = _TRACED_BLOCK_FACTOR * block_rows(x_dim, x_dim, memory_budget, x.device)

    def traced_weights(xb: torch.Tensor, chunk: tuple[tuple, dict], k: int) -> torch.Tensor:
        a, kw = chunk
        return traced_log_weights(model, guide, (xb, *a), kw, k, max_plate_nesting, plate_name,
                                  block_particles=max(1, rows // max(xb.shape[0], 1)))

    return _accumulate(x, num_samples, points, samples, progress, extra.chunk, traced_weights)


def _random_in_training(vae) -> bool:
    """A module that draws random numbers in training mode (dropout) is active: the component
    path runs the encoder once per datapoint chunk, so it would not reproduce the traced draws."""
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training for m in vae.modules())


def block_rows(x_dim: int, widths: int, memory_budget: float, device: torch.device) -> int:
    """Rows (sample × datapoint pairs) per decoder block: ``settings.block_bytes`` of activations
    (each counted twice for temporaries) on CPU, bigger launches on GPUs."""
    per_row = 4 * (x_dim + widths) * 2
    target = _kernels.settings.block_bytes if device.type == "cpu" else 1 << 28
    return max(1, int(min(target, memory_budget / 4) // per_row))


def _widths(decoder: torch.nn.Module) -> int:
    return sum(m.out_features for m in decoder.modules() if isinstance(m, torch.nn.Linear))


def _fast_log_likelihood(vae, x, num_samples, memory_budget, points, samples, progress, compile) -> LogLikelihood:
    """The component path: the traced path's chunks and draws, without tracing."""
    rows = block_rows(int(x[0].numel()), _widths(vae.decoder), memory_budget, x.device)

    def fast_weights(xb: torch.Tensor, q, k: int) -> torch.Tensor:
        return from_vae(vae, xb, k, q=q, block_rows=rows).log_weights

    # the encoder runs once per datapoint chunk
    with _kernels.compiled_bernoulli(compile):
        return _accumulate(x, num_samples, points, samples, progress, lambda lo, hi: vae.encoder(x[lo:hi]),
                           fast_weights)


def _accumulate(
    x: torch.Tensor,
    num_samples: int,
    points: int,
    samples: int,
    progress: bool,
    prepare: Callable[[int, int], Any],
    weights: Callable[[torch.Tensor, Any, int], torch.Tensor],
) -> LogLikelihood:
    """Per-datapoint log (1/K) Σ w and ESS over datapoint chunks of ``points`` rows and sample
    chunks of ``samples`` draws; ``weights(x[lo:hi], prepare(lo, hi), k)`` gives ``(k, b)`` log weights."""
    n = x.shape[0]
    acc = WeightAccumulator(n, num_samples, keep=0)
    chunks = [(i, min(i + points, n)) for i in range(0, n, points)]
    bar = tqdm(total=len(chunks) * math.ceil(num_samples / samples), desc="log-likelihood", disable=not progress, leave=False)
    for lo, hi in chunks:
        xb = x[lo:hi]
        state = prepare(lo, hi)
        done = 0
        while done < num_samples:
            k = min(samples, num_samples - done)
            acc.update(lo, hi, weights(xb, state, k))  # (k, b)
            done += k
            bar.update()
    bar.close()
    return _summary(acc.log_likelihood(), acc.ess(), num_samples)


def _summary(out: torch.Tensor, ess: torch.Tensor, num_samples: int) -> LogLikelihood:
    n = out.shape[0]
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise FloatingPointError(
            f"{bad} datapoints got a non-finite log-likelihood estimate (a weight was 0 or inf); "
            "check that the data lie in the likelihood's support and the guide's scale is positive"
        )
    mean = float(out.mean())
    stderr = float(out.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return LogLikelihood(out.float(), mean, stderr, num_samples, ess.float())


def bits_per_dim(log_likelihood_nats: float, num_dims: int) -> float:
    """Convert a log-likelihood in nats per datapoint to bits per dimension: −ll / (D · ln 2)."""
    return -log_likelihood_nats / (num_dims * math.log(2.0))
