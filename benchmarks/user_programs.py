"""A user-written Pyro program against the library's own VAE of the same architecture.

``python -m benchmarks.user_programs [--quick] [--only loglik train] [--md PATH] [--json PATH]``
prints the tables (and writes them to ``--md``; every number, the command and the machine to
``--json``). Issue #11, item 3: a user's program should cost at most 1.3× the library's VAE.
``docs/user_programs.md`` / ``.json`` hold the runs before and after the traced-path patch.

The two contenders compute the same model with the same weights:

* **library**: ``pv.VAE(DiagNormalEncoder(784, 50, hidden=(400,)), BernoulliDecoder(50, 784,
  hidden=(400,)))``, evaluated by the component producer (``program.from_vae``, no tracing);
* **user program**: :class:`UserVAE`, written the way Pyro's ``examples/vae/vae.py`` teaches —
  ``torch.nn.Linear`` layers (``fc1``, ``fc21``, ``fc22``), ``pyro.module("decoder", ...)``,
  ``pyro.plate("data", N)``, a latent site ``"latent"`` and an observed site ``"obs"`` — with
  the library's weights copied in. It has no ``component_program`` declaration, so every
  pyro_vae function traces it (``program.traced_particles``).

The user program differs from the tutorial in two places only, both so the numbers can be
compared to float rounding: the likelihood is ``Bernoulli(logits=...)`` (the tutorial's
``Bernoulli(sigmoid(...))`` is the same density, rounded differently) and σ = exp(h) + 1e-5
(the library encoder's floor).

Measured, each as a ratio to the library in the same process, interleaved, median of repeats
(:mod:`benchmarks._timing`), torch on one thread:

* ``log_likelihood`` on 500 held-out digits with K = 500 (``--quick``: 100 digits, K = 100);
* one training step at batch 128 with ``pv.objectives.ELBO()`` and ``pv.objectives.IWAE(5)``
  (``zero_grad``, ``differentiable_loss``, ``backward``, ``torch.optim.Adam``: the step
  ``pv.fit`` takes, without its bookkeeping).

Extra contenders locate the gap: the library VAE with ``settings.onednn = "off"`` (torch's
matmul, the one a user's ``nn.Linear`` runs: the fair floor, since a user's layers cannot use
:func:`pyro_vae._kernels.linear`), the library VAE forced through the traced producer
(``fast_path=False`` / ``use_fast_path = False``: tracing alone), and the user's own networks
in plain torch without Pyro (:func:`plain_log_weights`, :func:`plain_loss`: what the same user
would write by hand with ``torch.distributions``, one pass per chunk).

Before timing, agreement is checked: the same seed gives the same log-likelihoods and losses
(to float rounding, far inside Monte Carlo error), so the table times the same computation.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyro_vae as pv

X_DIM, HIDDEN, LATENT = 784, 400, 50
MIN_SCALE = 1e-5  # the library encoder's floor on σ
#: the issue's target: a user-written program costs at most this many times the library's VAE
TARGET = 1.3


# -- the user's program (Pyro's examples/vae/vae.py, with the library's architecture) --------------
class Encoder(nn.Module):
    """x -> (z_loc, z_scale), as in Pyro's VAE example."""

    def __init__(self, z_dim: int = LATENT, hidden_dim: int = HIDDEN) -> None:
        super().__init__()
        self.fc1 = nn.Linear(X_DIM, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        x = x.reshape(-1, X_DIM)
        hidden = self.softplus(self.fc1(x))
        z_loc = self.fc21(hidden)
        z_scale = torch.exp(self.fc22(hidden)) + MIN_SCALE
        return z_loc, z_scale


class Decoder(nn.Module):
    """z -> Bernoulli logits of the 784 pixels, as in Pyro's VAE example (logits, not sigmoid)."""

    def __init__(self, z_dim: int = LATENT, hidden_dim: int = HIDDEN) -> None:
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, X_DIM)
        self.softplus = nn.Softplus()

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        hidden = self.softplus(self.fc1(z))
        return self.fc21(hidden)


class UserVAE(nn.Module):
    """A VAE written as a Pyro user writes one (``model`` / ``guide`` with ``pyro.module``)."""

    def __init__(self, z_dim: int = LATENT, hidden_dim: int = HIDDEN) -> None:
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x: torch.Tensor) -> None:  # noqa: D102
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            logits = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x.reshape(-1, X_DIM))

    def guide(self, x: torch.Tensor) -> None:  # noqa: D102
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    @classmethod
    def like(cls, vae: pv.VAE) -> "UserVAE":
        """A user program holding a copy of ``vae``'s weights (the encoder's 2·50 head split in two)."""
        m = cls()
        enc, dec = vae.encoder.net, vae.decoder.net
        with torch.no_grad():
            m.encoder.fc1.weight.copy_(enc[0].weight)
            m.encoder.fc1.bias.copy_(enc[0].bias)
            m.encoder.fc21.weight.copy_(enc[2].weight[:LATENT])
            m.encoder.fc21.bias.copy_(enc[2].bias[:LATENT])
            m.encoder.fc22.weight.copy_(enc[2].weight[LATENT:])
            m.encoder.fc22.bias.copy_(enc[2].bias[LATENT:])
            m.decoder.fc1.weight.copy_(dec[0].weight)
            m.decoder.fc1.bias.copy_(dec[0].bias)
            m.decoder.fc21.weight.copy_(dec[2].weight)
            m.decoder.fc21.bias.copy_(dec[2].bias)
        return m


def library_vae(seed: int = 0) -> pv.VAE:
    """The library's default VAE, 784-400-50 softplus, Bernoulli likelihood (fresh seeded weights)."""
    torch.manual_seed(seed)
    return pv.VAE(pv.encoders.DiagNormalEncoder(X_DIM, LATENT, hidden=(HIDDEN,)),
                  pv.decoders.BernoulliDecoder(LATENT, X_DIM, hidden=(HIDDEN,)))


# -- the user's networks in plain torch (no Pyro) --------------------------------------------------------
def plain_log_weights(user: UserVAE, x: torch.Tensor, K: int) -> torch.Tensor:
    """(K, B) log weights from the user's own modules and torch.distributions, no Pyro: what a
    traced program computes, minus everything tracing adds."""
    loc, scale = user.encoder(x)
    q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    z = q.rsample((K,))
    px = torch.distributions.Independent(torch.distributions.Bernoulli(logits=user.decoder(z), validate_args=False), 1)
    pz = torch.distributions.Independent(torch.distributions.Normal(torch.zeros_like(loc), torch.ones_like(scale)), 1)
    return px.log_prob(x) + pz.log_prob(z) - q.log_prob(z)


@torch.no_grad()
def plain_log_likelihood(user: UserVAE, x: torch.Tensor, K: int, memory_budget: float = 1 << 30) -> torch.Tensor:
    """Per-datapoint log (1/K) Σ w with :func:`plain_log_weights`, chunked as ``pv.log_likelihood`` chunks."""
    from pyro_vae.evaluation.log_likelihood import plan_chunks

    points, samples = plan_chunks(x.shape[0], K, X_DIM, memory_budget)
    out = []
    for lo in range(0, x.shape[0], points):
        xb = x[lo : lo + points]
        lw = torch.cat([plain_log_weights(user, xb, min(samples, K - d)) for d in range(0, K, samples)])
        out.append(torch.logsumexp(lw.double(), 0) - math.log(K))
    return torch.cat(out)


def plain_loss(user: UserVAE, x: torch.Tensor, K: int, iwae: bool) -> torch.Tensor:
    """The negative minibatch bound of the user's networks without Pyro: the ELBO with the
    closed-form KL (K = 1) or IWAE-K."""
    if not iwae:
        loc, scale = user.encoder(x)
        q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
        p = torch.distributions.Independent(torch.distributions.Normal(torch.zeros_like(loc), torch.ones_like(scale)), 1)
        z = q.rsample()
        px = torch.distributions.Independent(torch.distributions.Bernoulli(logits=user.decoder(z), validate_args=False), 1)
        return -(px.log_prob(x) - torch.distributions.kl_divergence(q, p)).sum()
    lw = plain_log_weights(user, x, K)
    return -(torch.logsumexp(lw, 0) - math.log(K)).sum()


# -- steps ---------------------------------------------------------------------------------------------
def pyro_step(model: Callable, guide: Callable, params, objective) -> Callable[[torch.Tensor], float]:
    """One training step as ``pv.fit`` takes it: zero_grad, differentiable_loss, backward, Adam."""
    opt = torch.optim.Adam(list(params), lr=1e-3)

    def step(x: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        loss = objective.differentiable_loss(model, guide, x)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def plain_step(user: UserVAE, K: int, iwae: bool) -> Callable[[torch.Tensor], float]:
    """The same step on :func:`plain_loss` (no Pyro)."""
    opt = torch.optim.Adam(user.parameters(), lr=1e-3)

    def step(x: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        loss = plain_loss(user, x, K, iwae)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def _torch_matmul_step(step: Callable[[torch.Tensor], float]) -> Callable[[torch.Tensor], float]:
    def run(x: torch.Tensor) -> float:
        return _torch_matmul(lambda: step(x))()

    return run


def _traced(objective):
    objective.use_fast_path = False
    return objective


# -- agreement -------------------------------------------------------------------------------------------
def agreement(vae: pv.VAE, user: UserVAE, x: torch.Tensor, train: torch.Tensor, K: int, seed: int = 1) -> dict[str, Any]:
    """Same weights, same seed: the log-likelihoods and the losses of both programs.

    ``max_abs_diff`` of the per-datapoint log-likelihoods is float rounding when both draw the
    same numbers; ``mc_stderr`` is the Monte Carlo standard error of one estimate (from the
    library's ESS), the scale a mere statistical agreement would be judged on.
    """
    torch.manual_seed(seed)
    lib = pv.log_likelihood(vae.model, vae.guide, x, num_samples=K)
    torch.manual_seed(seed)
    usr = pv.log_likelihood(user.model, user.guide, x, num_samples=K)
    # Monte Carlo error of log p̂ ≈ sqrt((K / ESS - 1) / K) (delta method on the weights' mean)
    mc = torch.sqrt((K / lib.ess.double() - 1).clamp(min=0) / K)
    out: dict[str, Any] = {
        "loglik": {
            "K": K, "N": int(x.shape[0]),
            "library_mean": lib.mean, "user_mean": usr.mean,
            "max_abs_diff": float((lib.per_datapoint - usr.per_datapoint).abs().max()),
            "mc_stderr_median": float(mc.median()),
        }
    }
    xb = train[:128]
    for name, make in (("ELBO", lambda: pv.objectives.ELBO()), ("IWAE(5)", lambda: pv.objectives.IWAE(5))):
        torch.manual_seed(seed)
        a = float(make().differentiable_loss(vae.model, vae.guide, xb).detach())
        torch.manual_seed(seed)
        b = float(make().differentiable_loss(user.model, user.guide, xb).detach())
        out[name] = {"library_loss": a, "user_loss": b, "rel_diff": abs(a - b) / abs(a)}
    return out


# -- the benchmark ---------------------------------------------------------------------------------------
def _timed(fns: dict[str, Callable[[], object]], baseline: str, repeats: int, block: float, warmup: int = 2):
    from benchmarks._timing import interleaved

    return interleaved(fns, baseline, repeats=repeats, min_block_seconds=block, warmup=warmup)


def _torch_matmul(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``pyro_vae.settings.onednn = "off"``: the library's layers then use
    torch's matmul, the one a user's ``nn.Linear`` uses (the fair floor for a user's program)."""
    from pyro_vae import settings

    def run() -> object:
        before = settings.onednn
        settings.onednn = "off"
        try:
            return fn()
        finally:
            settings.onednn = before

    return run


def _rows(case: str, t, target_for: set[str], extra: dict) -> list[dict]:
    rows = []
    for name in t.seconds:
        if name == t.baseline:
            continue
        r = {
            "case": case, "contender": name, "baseline": t.baseline,
            "ratio": t.ratio[name], "ratio_lo": t.ratio_lo[name], "ratio_hi": t.ratio_hi[name],
            "ms": 1e3 * t.seconds[name], "baseline_ms": 1e3 * t.seconds[t.baseline], "repeats": t.repeats,
            "target": f"≤ {TARGET:.1f}×" if name in target_for else None,
            "met": (t.ratio[name] <= TARGET) if name in target_for else None,
            **extra,
        }
        rows.append(r)
    return rows


LIB = "library VAE (component producer)"
LIB_TORCH = "library VAE, torch's matmul (settings.onednn = \"off\")"
LIB_TRACED = "library VAE, traced"
USER = "user program (traced)"
PLAIN = "user's networks in plain torch (no Pyro, one pass per chunk)"


def run(cfg: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Agreement, then the log-likelihood and training-step timings."""
    from benchmarks.run import _batches, _cycle, _data

    pyro.enable_validation(True)
    data = _data()
    heldout, train = data["heldout"][: cfg.num_data], data["train"]
    vae = library_vae()
    user = UserVAE.like(vae)
    log("agreement")
    result: dict[str, Any] = {"agreement": agreement(vae, user, heldout[: min(100, cfg.num_data)], train, cfg.K)}
    rows: list[dict] = []

    K, N = cfg.K, cfg.num_data
    if "loglik" in cfg.only:
        case = f"log_likelihood, {N} digits, K={K}"
        log(case)
        lib_ll = lambda: pv.log_likelihood(vae.model, vae.guide, heldout, num_samples=K)  # noqa: E731
        fns = {
            LIB: lib_ll,
            LIB_TORCH: _torch_matmul(lib_ll),
            LIB_TRACED: lambda: pv.log_likelihood(vae.model, vae.guide, heldout, num_samples=K, fast_path=False),
            USER: lambda: pv.log_likelihood(user.model, user.guide, heldout, num_samples=K),
            PLAIN: lambda: plain_log_likelihood(user, heldout, K),
        }
        rows += _rows(case, _timed(fns, LIB, cfg.repeats, cfg.block, warmup=1), {USER},
                      {"kind": "loglik", "K": K, "N": N})

    B = 128
    train_cases = (("ELBO", lambda: pv.objectives.ELBO(), 1), ("IWAE(K=5)", lambda: pv.objectives.IWAE(5), 5))
    for label, make, iw_k in train_cases if "train" in cfg.only else ():
        case = f"training step, {label}, batch {B}"
        log(case)
        v2, v3, v4 = (copy.deepcopy(vae) for _ in range(3))
        u2, u3 = copy.deepcopy(user), copy.deepcopy(user)
        steps = {
            LIB: pyro_step(v2.model, v2.guide, v2.parameters(), make()),
            LIB_TORCH: _torch_matmul_step(pyro_step(v4.model, v4.guide, v4.parameters(), make())),
            LIB_TRACED: pyro_step(v3.model, v3.guide, v3.parameters(), _traced(make())),
            USER: pyro_step(u2.model, u2.guide, u2.parameters(), make()),
            PLAIN: plain_step(u3, iw_k, iwae=label != "ELBO"),
        }
        nxt = _cycle(_batches(train, B))
        fns = {n: (lambda f=f: f(nxt())) for n, f in steps.items()}
        rows += _rows(case, _timed(fns, LIB, cfg.repeats, cfg.block), {USER},
                      {"kind": "train", "objective": label, "batch": B})
    result["rows"] = rows
    return result


def markdown(result: dict[str, Any]) -> str:
    """The tables of ``result`` (what they mean: docs/user_programs.md's text, written by hand)."""
    m = result["machine"]
    load = ", ".join(f"{v:.1f}" for v in m["loadavg_at_start"]) if m.get("loadavg_at_start") else "n/a"
    lines = [
        "# User-written program vs the library's VAE",
        "",
        f"`{result['command']}`, {m['date']}, {result['wall_seconds'] / 60:.1f} min; {m['cpu']}, {m['cpu_count']} cores "
        f"(load average {load} at the start); torch {m['torch']}, pyro-ppl {m['pyro']}, "
        f"**{m['torch_threads']} torch thread**; pyro_vae from `{result['pyro_vae_path']}`.",
        "",
        "## Timings (time / library VAE, median of interleaved repeats, range in brackets)",
        "",
        "| case | contender | time / library (range) | ms (library ms) | target | met |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in result["rows"]:
        met = "" if r["met"] is None else ("**yes**" if r["met"] else "**no**")
        lines.append(f"| {r['case']} | {r['contender']} | {r['ratio']:.2f}× ({r['ratio_lo']:.2f}–{r['ratio_hi']:.2f}) | "
                     f"{r['ms']:.1f} ({r['baseline_ms']:.1f}) | {r['target'] or ''} | {met} |")
    a = result["agreement"]
    ll = a["loglik"]
    lines += [
        "",
        "## Same weights, same seed: the same numbers",
        "",
        "| quantity | library | user program | difference | Monte Carlo scale |",
        "|---|---:|---:|---:|---:|",
        f"| mean log p(x), {ll['N']} digits, K={ll['K']} | {ll['library_mean']:.4f} | {ll['user_mean']:.4f} | "
        f"max per datapoint {ll['max_abs_diff']:.2e} | median MC stderr {ll['mc_stderr_median']:.3f} |",
    ]
    for name in ("ELBO", "IWAE(5)"):
        r = a[name]
        lines.append(f"| {name} loss, batch 128 | {r['library_loss']:.3f} | {r['user_loss']:.3f} | "
                     f"relative {r['rel_diff']:.1e} | |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:  # noqa: D103
    p = argparse.ArgumentParser(prog="python -m benchmarks.user_programs", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="100 digits, K=100, fewer repeats")
    p.add_argument("--num-data", dest="num_data_arg", type=int, default=None, help="held-out digits for log_likelihood (default 500)")
    p.add_argument("--num-samples", type=int, default=None, help="K of log_likelihood (default 500)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--only", nargs="+", choices=("loglik", "train"), default=["loglik", "train"], help="run only these")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 9; --quick 5)")
    p.add_argument("--md", type=Path, default=None, help="write the tables here too")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison and write the report."""
    from benchmarks.run import machine

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = build_parser().parse_args(argv)
    cfg.num_data, cfg.K = (100, 100) if cfg.quick else (500, 500)
    cfg.num_data = cfg.num_data if cfg.num_data_arg is None else cfg.num_data_arg
    cfg.K = cfg.K if cfg.num_samples is None else cfg.num_samples
    cfg.repeats = cfg.repeats or (5 if cfg.quick else 9)
    cfg.block = 0.12 if cfg.quick else 0.25
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    result: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.user_programs", *argv]),
        "machine": machine(cfg.threads),
        "pyro_vae_path": str(Path(pv.__file__).resolve().parent),
    }
    result.update(run(cfg, log))
    result["wall_seconds"] = time.perf_counter() - t0
    text = markdown(result)
    print(text)
    if cfg.json is not None:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    if cfg.md is not None:
        cfg.md.parent.mkdir(parents=True, exist_ok=True)
        cfg.md.write_text(text, encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
