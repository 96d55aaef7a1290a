"""Every objective of pyro_vae on the same model, data and seed: the table of docs/objectives.md.

Trains the default model (784-400-50 softplus, Bernoulli decoder, N(0, I) prior) once per
objective on the embedded MNIST digits and writes the comparison (test log p(x) with paired
differences, test ELBO, PSIS k̂, active units, gradient SNR, time, memory) and its figures.
With the defaults below it takes about an hour on one CPU core; ``--epochs 2 --eval-samples 50``
gives a quick look.

    python examples/compare_objectives.py --out runs/compare_all
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from pyro_vae.experiments import ComparisonResult, compare_objectives

#: label -> config overrides (``objective`` defaults to the label; K = --num-particles unless set)
OBJECTIVES: dict[str, dict[str, Any]] = {
    "elbo": {},
    "elbo-warmup": {"objective": "elbo", "kl_warmup_steps": 640},  # β from 0 to 1 over 16 epochs
    "iwae": {},
    "iwae_stl": {},
    "dreg": {},
    "renyi": {"renyi_alpha": 0.5},
    "ciwae": {"ciwae_beta": 0.5},
    "miwae": {"num_outer": 5, "num_particles": 10},  # M·K = 50 particles, like the others
    "piwae": {"num_outer": 5, "num_particles": 10},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--num-particles", type=int, default=50, help="K of the importance-weighted objectives")
    p.add_argument("--eval-samples", type=int, default=1000, help="K of the test log-likelihood")
    p.add_argument("--khat-samples", type=int, default=1000)
    p.add_argument("--snr-repeats", type=int, default=100)
    p.add_argument("--snr-ks", default="1,10,100")
    p.add_argument("--only", default=None, help="comma-separated labels of OBJECTIVES to run (default: all)")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N digits")
    p.add_argument("--hidden", type=int, default=None, help="hidden width (default: the config's 400)")
    p.add_argument("--latent-dim", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for table.md/csv, result.json and the figures")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--rank-by", choices=("is", "ais"), default="is",
                   help="rank by importance sampling, or by AIS on the first --ais-subset test digits")
    p.add_argument("--ais-subset", type=int, default=50, help="test digits AIS scores (with --rank-by ais)")
    p.add_argument("--ais-steps", type=int, default=1000, help="AIS temperatures (with --rank-by ais)")
    p.add_argument("--ais-chains", type=int, default=16, help="AIS chains per digit (with --rank-by ais)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> ComparisonResult:
    torch.set_num_threads(1)  # small networks: one thread is fastest on a shared machine
    chosen = OBJECTIVES if args.only is None else {k: OBJECTIVES[k] for k in args.only.split(",")}
    base: dict[str, Any] = {"epochs": args.epochs}
    if args.hidden is not None:
        base["hidden"] = [args.hidden]
    if args.latent_dim is not None:
        base["latent_dim"] = args.latent_dim
    result = compare_objectives(
        chosen, base, num_particles=args.num_particles, eval_samples=args.eval_samples,
        khat_samples=args.khat_samples, snr_repeats=args.snr_repeats,
        snr_ks=tuple(int(k) for k in args.snr_ks.split(",") if k), snr_at="iwae" if "iwae" in chosen else None,
        train_limit=args.train_limit, memory=not args.no_memory, out_dir=args.out, progress=not args.quiet,
        **({"rank_by": "ais", "ais_subset": args.ais_subset,
            "ais_options": {"num_steps": args.ais_steps, "num_chains": args.ais_chains}}
           if args.rank_by == "ais" else {}),
    )
    if not args.quiet:
        print(result.to_markdown())
    return result


if __name__ == "__main__":
    main(parse_args())
