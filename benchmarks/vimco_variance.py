"""Gradient variance of VIMCO against the plain score function (and, where possible, the exact gradient).

Two measurements, each at K = 2, 5, 10 (``--ks``):

* **small**: the test model of ``tests/test_vimco.py`` — a label y ∈ {0, 1, 2} with prior
  (0.5, 0.3, 0.2), x | y ~ Normal(μ_y, 1) with μ = (−2, 0, 2.5), two datapoints x = (0.3, 2.0) and a
  guide q(y | x_b) = Categorical(logits_b) with fixed logits. The exact gradient of E[IWAE-K] with
  respect to the six logits comes from enumerating all 3^K particle tuples; each estimator's mean,
  per-parameter variance and bias (in standard errors) come from ``--replicates`` independent
  estimates (one vectorized call on R copies of each datapoint, one logits row per copy).
* **digits**: a VAE with 16 Bernoulli latents (prior Bernoulli(1/2), MLP encoder and Bernoulli
  decoder, 64-32-16 / 16-32-64 tanh) on the embedded scikit-learn digits (statically binarized),
  where 2^16 = 65,536 values per datapoint make enumeration impractical. After ``--train-steps``
  Adam steps of VIMCO(5) on minibatches of 64, the encoder gradient is drawn ``--repeats`` times on
  one fixed minibatch of 32 digits for each estimator; reported is the per-element variance
  averaged over the encoder's parameters, and its ratio. (The decoder's gradient is the same
  reparameterized-free explicit term under both estimators.)

Both estimators are unbiased for the same gradient; the variance ratio is the saving.

Usage::

    python -m benchmarks.vimco_variance                   # ~1 min on one core; prints markdown tables
    python -m benchmarks.vimco_variance --json /tmp/vimco.json --replicates 2000 --repeats 50   # quicker
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import shlex
import sys
import time
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyro_vae as pv
from pyro_vae.objectives import VIMCO

F64 = torch.float64
MU = torch.tensor([-2.0, 0.0, 2.5], dtype=F64)
LOG_PI = torch.tensor([0.5, 0.3, 0.2], dtype=F64).log()
X = torch.tensor([0.3, 2.0], dtype=F64)
LOGITS = torch.tensor([[0.2, -0.1, 0.4], [-0.5, 0.3, 0.1]], dtype=F64)
ESTIMATORS = ("vimco", "none")


# -- small model: exact gradient by enumeration -----------------------------------------------------
def small_model(x, logits):
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Categorical(logits=LOG_PI))
        pyro.sample("x", dist.Normal(MU[y], 1.0), obs=x)


def small_guide(x, logits):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Categorical(logits=logits))


def exact_gradient(K: int) -> torch.Tensor:
    """∇_logits E[IWAE-K], (2, 3), by summing over all 3^K particle tuples."""
    ys = torch.tensor(list(itertools.product(range(3), repeat=K)))
    rows = []
    for b in range(len(X)):
        lg = LOGITS[b].clone().requires_grad_()
        lq = torch.log_softmax(lg, -1)
        lw = LOG_PI[ys] + torch.distributions.Normal(MU[ys], 1.0).log_prob(X[b]) - lq[ys]
        expected = (lq[ys].sum(-1).exp() * (torch.logsumexp(lw, -1) - math.log(K))).sum()
        rows.append(torch.autograd.grad(expected, lg)[0])
    return torch.stack(rows)


def small_estimates(K: int, baseline: str, R: int) -> torch.Tensor:
    """(R, 2, 3) independent gradient estimates."""
    logits = LOGITS.repeat(R, 1).requires_grad_()
    loss = VIMCO(K, baseline=baseline).differentiable_loss(small_model, small_guide, X.repeat(R), logits)
    return torch.autograd.grad(-loss, logits)[0].reshape(R, len(X), 3)


def run_small(ks: list[int], R: int) -> list[dict[str, Any]]:
    rows = []
    for K in ks:
        exact = exact_gradient(K)
        out: dict[str, Any] = {"K": K, "exact": exact.flatten().tolist()}
        for baseline in ESTIMATORS:
            pyro.set_rng_seed(K)
            g = small_estimates(K, baseline, R)
            out[baseline] = {
                "mean": g.mean(0).flatten().tolist(),
                "variance": g.var(0).flatten().tolist(),
                "bias_z": ((g.mean(0) - exact) / (g.std(0) / math.sqrt(R))).flatten().tolist(),
            }
        rows.append(out)
    return rows


# -- digits: 16 Bernoulli latents -------------------------------------------------------------------
class BernoulliVAE(nn.Module):
    """h ∈ {0,1}^16 per digit: p(h) = Bernoulli(1/2), p(x | h) Bernoulli, q(h | x) Bernoulli."""

    def __init__(self, x_dim: int = 64, latent: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))

    def model(self, x, num_data=None):
        pyro.module("bvae", self)
        with pv.vae.data_plate(x, num_data):
            h = pyro.sample("h", dist.Bernoulli(x.new_full((self.latent,), 0.5)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(h)).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        pyro.module("bvae", self)
        with pv.vae.data_plate(x, num_data):
            pyro.sample("h", dist.Bernoulli(logits=self.encoder(x)).to_event(1))


def run_digits(ks: list[int], repeats: int, train_steps: int) -> list[dict[str, Any]]:
    data = pv.data.load_dataset("sklearn-digits", binarize="static", seed=0).train
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = BernoulliVAE(data.shape[1])
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=VIMCO(5))
    gen = torch.Generator().manual_seed(0)
    for _ in range(train_steps):
        idx = torch.randint(0, len(data), (64,), generator=gen)
        svi.step(data[idx], num_data=len(data))
    batch = data[:32]
    params = list(vae.encoder.parameters())
    rows = []
    for K in ks:
        out: dict[str, Any] = {"K": K}
        for baseline in ESTIMATORS:
            obj = VIMCO(K, baseline=baseline)
            pyro.set_rng_seed(100 + K)
            grads, bounds = [], []
            for _ in range(repeats):
                loss = obj.differentiable_loss(vae.model, vae.guide, batch)
                grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(-loss, params)]))
                bounds.append(float(obj.last_terms.bound))
            g = torch.stack(grads)
            out[baseline] = {"mean_variance": float(g.var(0).mean()), "mean_abs_gradient": float(g.mean(0).abs().mean()),
                             "bound": sum(bounds) / len(bounds)}
        rows.append(out)
    return rows


# -- tables ---------------------------------------------------------------------------------------
def small_table(rows: list[dict[str, Any]]) -> str:
    names = [f"logit[{b},{c}]" for b in range(2) for c in range(3)]
    lines = ["| K | parameter | exact gradient | VIMCO mean (bias, SE) | VIMCO variance | score-function mean (bias, SE) "
             "| score-function variance | variance ratio VIMCO / SF |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for i, n in enumerate(names):
            v, s = r["vimco"], r["none"]
            lines.append(
                f"| {r['K']} | {n} | {r['exact'][i]:+.4f} | {v['mean'][i]:+.4f} ({v['bias_z'][i]:+.1f}) | "
                f"{v['variance'][i]:.4f} | {s['mean'][i]:+.4f} ({s['bias_z'][i]:+.1f}) | {s['variance'][i]:.3f} | "
                f"{v['variance'][i] / s['variance'][i]:.4f} |")
    return "\n".join(lines)


def digits_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| K | IWAE-K bound (nats) | encoder gradient variance, VIMCO | score function | ratio VIMCO / SF |",
             "|---|---|---|---|---|"]
    for r in rows:
        v, s = r["vimco"], r["none"]
        lines.append(f"| {r['K']} | {v['bound']:.2f} | {v['mean_variance']:.4g} | {s['mean_variance']:.4g} | "
                     f"{v['mean_variance'] / s['mean_variance']:.2e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--replicates", type=int, default=20_000, help="estimates per K and estimator (small model)")
    parser.add_argument("--repeats", type=int, default=200, help="gradients per K and estimator (digits)")
    parser.add_argument("--train-steps", type=int, default=300, help="VIMCO(5) Adam steps before the digits measurement")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--json", default=None, help="also write every number here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "command": "python -m benchmarks.vimco_variance " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "pyro": pyro.__version__,
        "small": run_small(args.ks, args.replicates),
    }
    if not args.skip_digits:
        result["digits"] = run_digits(args.ks, args.repeats, args.train_steps)
    result["seconds"] = time.perf_counter() - t0
    print(f"command: `{result['command']}` ({result['seconds']:.0f} s, torch {result['torch']}, pyro {result['pyro']})\n")
    print(small_table(result["small"]))
    if "digits" in result:
        print()
        print(digits_table(result["digits"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
