"""Before/after: this checkout's training steps and log-likelihood against another checkout's.

``python -m benchmarks.before_after --old PATH`` (PATH: a checkout of the code to compare with,
e.g. ``git worktree add /tmp/old <commit>``). Each measurement runs in a fresh child process
that imports pyro_vae from one checkout and times the library against a hand-written PyTorch
baseline *in the same process* (interleaved blocks, median of repeats, one thread); the parent
alternates old and new children, so both see the same mix of machine load. The reported
before/after number is ``(new / baseline) / (old / baseline)``: below 1 is faster than before.

Cases: the default ELBO step (784-400-50 softplus and 784-200-200-50 tanh, batch 32 and 128,
against a hand-written ELBO step), every importance-weighted objective at K = 50 (or M·K = 5·10),
batch 128 (against a hand-written IWAE-50 step), and ``log_likelihood`` with K = 5000 on 100
digits (no gradients, against a hand-written vectorized evaluator). Writes
``docs/benchmarks_before_after.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    ("elbo", "softplus", 32), ("elbo", "softplus", 128), ("elbo", "tanh", 32), ("elbo", "tanh", 128),
    ("iwae", "softplus", 128), ("iwae_dreg", "softplus", 128), ("iwae_stl", "softplus", 128),
    ("miwae_dreg", "softplus", 128), ("piwae", "softplus", 128), ("ciwae", "softplus", 128),
    ("renyi", "softplus", 128), ("loglik", "softplus", 100),
]
NETS = {"softplus": ((400,), "softplus"), "tanh": ((200, 200), "tanh")}


# -- the child: one checkout, one case ---------------------------------------------------------------
def _child(case: str, net: str, batch: int, repeats: int) -> dict:
    import pyro
    import torch
    import torch.nn.functional as F
    from torch import nn

    import pyro_vae as pv

    torch.set_num_threads(1)
    pyro.enable_validation(True)
    hidden, act = NETS[net]
    torch.manual_seed(0)
    vae = pv.VAE(pv.encoders.DiagNormalEncoder(784, 50, hidden=hidden, activation=act),
                 pv.decoders.BernoulliDecoder(50, 784, hidden=hidden, activation=act))
    acts = {"softplus": nn.Softplus, "tanh": nn.Tanh}

    def torch_mlp(src: nn.Module) -> nn.Sequential:  # plain torch layers, the same weights
        layers = []
        for m in src:
            if isinstance(m, nn.Linear):
                lin = nn.Linear(m.in_features, m.out_features)
                lin.load_state_dict({"weight": m.weight.detach().clone(), "bias": m.bias.detach().clone()})
                layers.append(lin)
            else:
                layers.append(acts[act]())
        return nn.Sequential(*layers)

    enc, dec = torch_mlp(vae.encoder.net), torch_mlp(vae.decoder.net)

    def run(net_: nn.Module, h: torch.Tensor) -> torch.Tensor:
        lead = h.shape[:-1]
        out = net_(h.reshape(-1, h.shape[-1]))
        return out.reshape(*lead, out.shape[-1])

    g = torch.Generator().manual_seed(1)
    N = 5000
    x = torch.bernoulli(torch.rand(batch, 784, generator=g))

    def hand_logw(K: int) -> torch.Tensor:
        h = run(enc, x)
        loc, scale = h[..., :50], h[..., 50:].exp() + 1e-5
        eps = torch.randn((K, *loc.shape))
        z = loc + scale * eps
        log_px = -F.binary_cross_entropy_with_logits(run(dec, z), x.expand(K, *x.shape), reduction="none").sum(-1)
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
        log_q = (-0.5 * (eps.pow(2) + math.log(2 * math.pi)) - scale.log()).sum(-1)
        return log_px + log_pz - log_q

    hand_params = list(enc.parameters()) + list(dec.parameters())
    hand_opt = torch.optim.Adam(hand_params, lr=1e-3)
    lib_params = list(vae.parameters())
    lib_opt = torch.optim.Adam(lib_params, lr=1e-3)

    def hand_step() -> None:
        hand_opt.zero_grad(set_to_none=True)
        if case == "elbo":
            h = run(enc, x)
            loc, scale = h[..., :50], h[..., 50:].exp() + 1e-5
            z = loc + scale * torch.randn_like(loc)
            rec = -F.binary_cross_entropy_with_logits(run(dec, z), x, reduction="none").sum(-1)
            kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1.0) - scale.log()).sum(-1)
            loss = -(N / batch) * (rec - kl).sum()
        else:  # the IWAE-50 step: the common baseline of every importance-weighted case
            lw = hand_logw(50)
            loss = -(N / batch) * (torch.logsumexp(lw, 0) - math.log(50)).sum()
        loss.backward()
        hand_opt.step()

    O = pv.objectives
    objective = {
        "elbo": lambda: O.ELBO(), "iwae": lambda: O.IWAE(50), "iwae_dreg": lambda: O.IWAE(50, gradient="dreg"),
        "iwae_stl": lambda: O.IWAE(50, gradient="stl"), "miwae_dreg": lambda: O.MIWAE(5, 10, gradient="dreg"),
        "piwae": lambda: O.PIWAE(5, 10), "ciwae": lambda: O.CIWAE(0.5, 50), "renyi": lambda: O.RenyiBound(0.5, 50),
        "loglik": lambda: None,
    }[case]()

    def lib_step() -> None:
        lib_opt.zero_grad(set_to_none=True)
        loss = objective.differentiable_loss(vae.model, vae.guide, x, num_data=N)
        loss.backward()
        lib_opt.step()

    if case == "loglik":
        xs = torch.bernoulli(torch.rand(batch, 784, generator=g))
        K = 5000

        @torch.no_grad()
        def hand_ll() -> None:  # vectorized eager evaluator, 100-sample chunks
            for lo in range(0, K, 100):
                h = run(enc, xs)
                loc, scale = h[..., :50], h[..., 50:].exp() + 1e-5
                eps = torch.randn((100, *loc.shape))
                z = loc + scale * eps
                log_px = -F.binary_cross_entropy_with_logits(run(dec, z), xs.expand(100, *xs.shape),
                                                             reduction="none").sum(-1)
                log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
                log_q = (-0.5 * (eps.pow(2) + math.log(2 * math.pi)) - scale.log()).sum(-1)
                _ = log_px + log_pz - log_q

        def lib_ll() -> None:
            pv.log_likelihood(vae.model, vae.guide, xs, num_samples=K, memory_budget=2 * 2**30)

        fns = {"hand": hand_ll, "lib": lib_ll}
    else:
        fns = {"hand": hand_step, "lib": lib_step}
    for f in fns.values():  # warm up (lazy kernel set-up, the first-use kernel measurement)
        for _ in range(3):
            f()
    ratios, secs = [], {k: [] for k in fns}
    for r in range(repeats):
        for name in (["hand", "lib"] if r % 2 == 0 else ["lib", "hand"]):
            n = 0
            t0 = time.perf_counter()
            while True:
                fns[name]()
                n += 1
                if time.perf_counter() - t0 > (0.6 if case == "loglik" else 0.3):
                    break
            secs[name].append((time.perf_counter() - t0) / n)
        ratios.append(secs["lib"][-1] / secs["hand"][-1])
    return {"ratio": statistics.median(ratios), "lib_s": statistics.median(secs["lib"]),
            "hand_s": statistics.median(secs["hand"]), "pyro_vae": str(Path(pv.__file__).parent)}


def _run_child(checkout: Path, case: tuple, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", *map(str, case), "--repeats", str(repeats)],
        env=env, cwd=str(checkout), capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.before_after", description=__doc__.split("\n")[0])
    p.add_argument("--old", type=Path, help="a checkout of the code to compare with")
    p.add_argument("--rounds", type=int, default=3, help="old/new child pairs per case (alternating)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats inside each child")
    p.add_argument("--only", nargs="+", help="case names (elbo, iwae, ..., loglik)")
    p.add_argument("--md", type=Path, default=ROOT / "docs" / "benchmarks_before_after.md")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks_before_after.json")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.child[0], a.child[1], int(a.child[2]), a.repeats)))
        return {}
    if a.old is None or not (a.old / "pyro_vae" / "__init__.py").exists():
        p.error("--old must name a checkout that contains pyro_vae/ (e.g. git worktree add /tmp/old <commit>)")
    rows = []
    for case in CASES:
        if a.only and case[0] not in a.only:
            continue
        old, new = [], []
        for r in range(a.rounds):
            for which in (("old", "new") if r % 2 == 0 else ("new", "old")):
                res = _run_child(a.old if which == "old" else ROOT, case, a.repeats)
                (old if which == "old" else new).append(res)
        for res, where in ((old, a.old), (new, ROOT)):  # each child imported the checkout it was meant to
            if any(Path(x["pyro_vae"]).resolve() != (Path(where) / "pyro_vae").resolve() for x in res):
                raise RuntimeError(f"a child imported pyro_vae from {res[0]['pyro_vae']}, not {where}")
        ro, rn = statistics.median(x["ratio"] for x in old), statistics.median(x["ratio"] for x in new)
        row = {"case": case[0], "net": case[1], "batch": case[2], "old_ratio": ro, "new_ratio": rn,
               "before_after": rn / ro, "old_ms": 1e3 * statistics.median(x["lib_s"] for x in old),
               "new_ms": 1e3 * statistics.median(x["lib_s"] for x in new),
               "hand_ms": 1e3 * statistics.median(x["hand_s"] for x in old + new)}
        rows.append(row)
        print(f"{case}: old {ro:.3f}x, new {rn:.3f}x of the baseline; after/before {rn / ro:.3f}", flush=True)
    result = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
                         f"python {platform.python_version()}", "old": str(a.old), "rows": rows}
    a.json.write_text(json.dumps(result, indent=1) + "\n")
    a.md.write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    base = {"elbo": "hand-written ELBO step", "loglik": "hand-written vectorized evaluator"}
    lines = [
        "# Before and after: training steps and log-likelihood",
        "",
        f"{result['date']}; {result['machine']}; one torch thread; old = `{result['old']}`. "
        "Written by `python -m benchmarks.before_after` (method in its docstring and docs/performance.md).",
        "",
        "| case | network | batch | baseline | old / baseline | new / baseline | new / old | old ms | new ms | baseline ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['case']} | {r['net']} | {r['batch']} | {base.get(r['case'], 'hand-written IWAE-50 step')} | "
            f"{r['old_ratio']:.3f}× | {r['new_ratio']:.3f}× | {r['before_after']:.3f}× | {r['old_ms']:.2f} | "
            f"{r['new_ms']:.2f} | {r['hand_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
