"""How the encoder gradient SNR of standard IWAE and DReG depends on how it is measured.

The objectives harness (:func:`pyro_vae.compare_objectives`) reports one number per estimator and K: the
mean over encoder parameter elements of |E g| / std g over ``R`` gradients on one fixed training
minibatch, at one trained model. Whether DReG's SNR is "at least twice" the standard
estimator's then depends on choices that number hides. This study varies them one at a time on
the embedded MNIST digits (784-400-50 softplus, batch 128, Adam 1e-3, dynamic binarization,
seed 0 — the docs' comparison run):

* **protocol**, at the IWAE-50 model after ``--epochs`` epochs: the harness's minibatch SNR;
  the same with 10× the gradients (is the ``R`` = 100 estimate's noise floor the cause?);
  per single datapoint (mean over 16 digits); a fresh minibatch per gradient (data noise too);
  each summarised three ways over the elements: mean, median, and the global
  ‖E g‖ / √(Σ var g);
* **model**: the ELBO-, IWAE-50- and DReG-50-trained models after ``--epochs`` epochs;
* **training stage**: along a longer IWAE-50 run (``--long-epochs``), from initialisation on.

Both estimators are unbiased for the same IWAE gradient, so at a given model their expected
gradients agree and the SNR ratio is the ratio of their noise. Every SNR uses common random
numbers (the same seed) for the two estimators.

Usage::

    python -m benchmarks.snr_study                 # ~30 min on one core; writes docs/snr_study.{md,json,png}
    python -m benchmarks.snr_study --quick --out /tmp/snr   # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import pyro
import torch

from pyro_vae.build import build_objective, build_vae
from pyro_vae.config import Config
from pyro_vae.diagnostics import GradientMoments, gradient_moments
from pyro_vae.objectives import IWAE
from pyro_vae.runs import load_data
from pyro_vae.train import fit

ESTIMATORS = ("standard", "dreg")
SNR_SEED = 4


def summaries(m: GradientMoments) -> dict[str, float]:
    """Three summaries over elements of the per-element SNR |mean| / std."""
    mean, sd = m.mean(), m.std()
    ok = sd > 0
    snr = mean[ok].abs() / sd[ok]
    return {"mean": float(snr.mean()), "median": float(snr.median()),
            "global": float(mean.norm() / sd.pow(2).sum().sqrt())}


def encoder_moments(vae, k: int, est: str, batch_fn: Callable[[], torch.Tensor], repeats: int,
                    num_data: int) -> GradientMoments:
    """Moments of ``repeats`` encoder gradients of IWAE-k (``est`` gradient), Pyro's RNG seeded."""
    obj = IWAE(num_particles=k, gradient=est)
    enc = [p for name, p in vae.named_parameters() if name.startswith("encoder") and p.requires_grad]
    pyro.set_rng_seed(SNR_SEED)
    loss = lambda: obj.differentiable_loss(vae.model, vae.guide, batch_fn(), num_data=num_data)  # noqa: E731
    return gradient_moments(loss, {"encoder": enc}, repeats)["encoder"]


def snr_pair(vae, k: int, batches: list[Callable[[], torch.Tensor]], repeats: int, num_data: int) -> dict[str, Any]:
    """Standard and DReG SNR summaries (averaged over ``batches``, one SNR estimate each) and ratios."""
    was = vae.training
    vae.eval()
    out: dict[str, Any] = {"K": k}
    with torch.random.fork_rng():
        for est in ESTIMATORS:
            per = [summaries(encoder_moments(vae, k, est, b, repeats, num_data)) for b in batches]
            out[est] = {s: sum(p[s] for p in per) / len(per) for s in per[0]}
    out["ratio"] = {s: out["dreg"][s] / out["standard"][s] for s in out["standard"]}
    vae.train(was)
    return out


def train_model(objective: str, epochs: int, data, marks: set[int], measure: Callable[[Any, int], None],
                progress: bool) -> Any:
    """Train like ``compare`` (fit without validation: same minibatches and binarization), calling
    ``measure(vae, epoch)`` at the epochs in ``marks`` (0 = at initialisation)."""
    cfg = Config(epochs=epochs, objective=objective, num_particles=1 if objective == "elbo" else 50)
    vae = build_vae(cfg, data.x_dim, data.image_shape, data.train)
    if 0 in marks:
        measure(vae, 0)

    def callback(epoch: int, row: dict[str, float]) -> None:
        if epoch in marks:
            measure(vae, epoch)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit(vae, build_objective(cfg), data.train, epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr,
            dynamic_binarization=True, seed=cfg.seed, progress=progress, tensorboard=False, callbacks=[callback])
    return vae


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--long-epochs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=100, help="gradients per SNR estimate")
    ap.add_argument("--ks", default="1,10,100")
    ap.add_argument("--points", type=int, default=16, help="single digits for the per-datapoint SNR")
    ap.add_argument("--trajectory-only", action="store_true",
                    help="only the training-stage part (e.g. with a larger --long-epochs)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (2 epochs, 8 repeats, K=1,4)")
    ap.add_argument("--out", default="docs/snr_study", help="output prefix (.md, .json, .png)")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.long_epochs, args.repeats, args.ks, args.points = 2, 3, 8, "1,4", 2
    ks = [int(k) for k in args.ks.split(",")]
    torch.set_num_threads(1)
    t_start = time.time()
    log = lambda msg: print(f"[{time.time() - t_start:7.1f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    base = Config()
    data = load_data(base)
    train, n = data.train, data.train.shape[0]
    g = torch.Generator().manual_seed(base.seed + 2)  # the harness's SNR minibatch
    fixed = torch.bernoulli(train[torch.randperm(n, generator=g)[:base.batch_size]], generator=g)
    gen = torch.Generator().manual_seed(base.seed + 3)

    def fresh() -> torch.Tensor:
        return torch.bernoulli(train[torch.randperm(n, generator=gen)[:base.batch_size]], generator=gen)

    fixed_fn = lambda: fixed  # noqa: E731
    points = [(lambda i=i: fixed[i:i + 1]) for i in range(args.points)]
    results: dict[str, Any] = {"protocol": [], "models": [], "trajectory": []}
    models: dict[str, Any] = {}
    long_marks = sorted({0, 2, 5, 10, 20, args.epochs, 70, 100, 150, 200, 300, 400, args.long_epochs}
                        & set(range(args.long_epochs + 1)))

    def trajectory_point(vae, epoch: int) -> None:
        for k in [k for k in ks if k > 1]:
            r = snr_pair(vae, k, [fixed_fn], args.repeats, n)
            results["trajectory"].append({"epoch": epoch, **r})
            log(f"iwae run, epoch {epoch}, K={k}: standard {r['standard']['mean']:.3f} dreg "
                f"{r['dreg']['mean']:.3f} ratio {r['ratio']['mean']:.2f}")
        if epoch == args.epochs:
            models["iwae"] = copy.deepcopy(vae)

    log(f"training IWAE-50 for {args.long_epochs} epochs, SNR at epochs {long_marks}")
    train_model("iwae", args.long_epochs, data, set(long_marks), trajectory_point, progress=False)
    for name in () if args.trajectory_only else ("dreg", "elbo"):
        log(f"training {name} for {args.epochs} epochs")
        models[name] = train_model(name, args.epochs, data, set(), lambda v, e: None, progress=False)

    for name in () if args.trajectory_only else ("elbo", "iwae", "dreg"):
        for k in ks:
            r = snr_pair(models[name], k, [fixed_fn], args.repeats, n)
            results["models"].append({"model": name, **r})
            log(f"{name} model K={k}: ratio {r['ratio']}")

    iwae = models["iwae"]
    k_mid = ks[1] if len(ks) > 1 else ks[0]
    for label, batches, repeats, kk in () if args.trajectory_only else (
        (f"fixed minibatch, R = {10 * args.repeats}", [fixed_fn], 10 * args.repeats, [k_mid]),
        (f"single digits (mean over {args.points}), R = {2 * args.repeats}", points, 2 * args.repeats, ks),
        (f"fresh minibatch per gradient, R = {args.repeats}", [fresh], args.repeats, ks),
    ):
        for k in kk:
            r = snr_pair(iwae, k, batches, repeats, n)
            results["protocol"].append({"protocol": label, **r})
            log(f"{label} K={k}: ratio {r['ratio']}")

    results["settings"] = {
        "command": " ".join(["python -m benchmarks.snr_study", *(shlex.quote(a) for a in (argv or sys.argv[1:]))]),
        "epochs": args.epochs, "long_epochs": args.long_epochs, "repeats": args.repeats, "ks": ks,
        "points": args.points, "seconds": round(time.time() - t_start, 1),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, python {platform.python_version()}, torch {torch.__version__}, "
                   f"pyro {pyro.__version__}, 1 torch thread",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(to_markdown(results, args.repeats), encoding="utf-8")
    plot(results, out.with_suffix(".png"))
    log(f"wrote {out}.md, .json, .png")
    return results


def _row(r: dict[str, Any]) -> str:
    s, d, q = r["standard"], r["dreg"], r["ratio"]
    return " | ".join(f"{s[x]:.3f} / {d[x]:.3f} / **{q[x]:.2f}×**" for x in ("mean", "median", "global"))


def to_markdown(res: dict[str, Any], repeats: int) -> str:
    st = res["settings"]
    head = "| standard / DReG / ratio: mean over elements | median | global ‖E g‖/√Σvar |"
    out = ["# Encoder gradient SNR: standard IWAE vs DReG, measured several ways\n",
           f"Written by `{st['command']}` on {st['date']} ({st['seconds']:.0f} s; {st['machine']}). "
           f"Encoder gradients of the IWAE-K bound; unless a row says otherwise the SNR is estimated from "
           f"R = {repeats} gradients on the harness's fixed minibatch of 128 training digits, particles redrawn, "
           "standard and DReG with the same random numbers. Each cell: standard / DReG / DReG ÷ standard.\n"]
    if res["models"]:
        out += [f"## At the model trained with each objective ({st['epochs']} epochs)\n",
                "| model | K " + head, "|---|---:|---|---|---|"]
        out += [f"| {r['model']} | {r['K']} | {_row(r)} |" for r in res["models"]]
        out.append("")
    if res["protocol"]:
        out += [f"## Protocol, at the IWAE-50 model after {st['epochs']} epochs\n",
                "| protocol | K " + head, "|---|---:|---|---|---|"]
        base = [r for r in res["models"] if r["model"] == "iwae"]
        out += [f"| fixed minibatch, R = {repeats} (the harness) | {r['K']} | {_row(r)} |" for r in base]
        out += [f"| {r['protocol']} | {r['K']} | {_row(r)} |" for r in res["protocol"]]
        out.append("")
    if res["trajectory"]:
        out += [f"## Along an IWAE-50 training run ({st['long_epochs']} epochs)\n",
                "| epoch | K " + head, "|---:|---:|---|---|---|"]
        out += [f"| {r['epoch']} | {r['K']} | {_row(r)} |" for r in res["trajectory"]]
    return "\n".join(out) + "\n"


def rewrite(prefix: str) -> None:
    """Re-render ``prefix``.md and .png from ``prefix``.json (no measurement)."""
    res = json.loads(Path(prefix).with_suffix(".json").read_text(encoding="utf-8"))
    Path(prefix).with_suffix(".md").write_text(to_markdown(res, res["settings"]["repeats"]), encoding="utf-8")
    plot(res, Path(prefix).with_suffix(".png"))


def plot(res: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for i, k in enumerate(sorted({r["K"] for r in res["trajectory"]})):
        rows = [r for r in res["trajectory"] if r["K"] == k]
        ep = [r["epoch"] for r in rows]
        for est, style in (("standard", "--"), ("dreg", "-")):
            ax1.plot(ep, [r[est]["mean"] for r in rows], style, color=f"C{i}", marker="o", ms=3, label=f"{est}, K={k}")
        ax2.plot(ep, [r["ratio"]["mean"] for r in rows], color=f"C{i}", marker="o", ms=3, label=f"K={k}")
    ax1.set(xlabel="epoch of IWAE-50 training", ylabel="encoder SNR (mean over elements)")
    ax1.legend(fontsize=7)
    ax2.axhline(2.0, color="grey", lw=0.8, ls=":")
    ax2.set(xlabel="epoch of IWAE-50 training", ylabel="DReG SNR / standard SNR")
    ax2.legend(fontsize=7)
    fig.suptitle("encoder gradient SNR along training (fixed minibatch of 128, common random numbers)", fontsize=9)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
