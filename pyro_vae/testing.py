"""Analytic reference models for checking estimators: the linear-Gaussian VAE (probabilistic PCA).

    z ~ N(0, I_d),   x | z ~ N(W z + b, σ² I_D)

has the closed-form marginal  x ~ N(b, W Wᵀ + σ² I)  and posterior
q*(z|x) = N(Σ Wᵀ (x − b) / σ², Σ) with Σ = (I + Wᵀ W / σ²)⁻¹. With q* as guide every bound
(ELBO, IWAE-K, Rényi) equals log p(x) exactly, and importance weights are constant.

Example:
    >>> lg = LinearGaussian(x_dim=5, latent_dim=2)
    >>> x = lg.sample(10)
    >>> import pyro_vae as pv
    >>> ll = pv.log_likelihood(lg.model, lg.exact_guide, x, num_samples=10)
    >>> bool(torch.allclose(ll.per_datapoint.double(), lg.log_marginal(x), atol=1e-4))
    True
"""

from __future__ import annotations

from typing import Callable

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .vae import data_plate


class LinearGaussian(nn.Module):
    """Probabilistic PCA with fixed, seeded parameters and its exact posterior.

    Args:
        x_dim: D, observed dimension.
        latent_dim: d, latent dimension.
        noise_scale: σ.
        seed: seeds W and b (drawn from N(0, 1) with a private generator).
    """

    def __init__(self, x_dim: int = 5, latent_dim: int = 2, noise_scale: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x_dim, self.latent_dim = x_dim, latent_dim
        self.register_buffer("W", torch.randn(x_dim, latent_dim, generator=g, dtype=torch.float64))
        self.register_buffer("b", torch.randn(x_dim, generator=g, dtype=torch.float64))
        self.register_buffer("sigma", torch.tensor(float(noise_scale), dtype=torch.float64))

    # -- closed forms ---------------------------------------------------------------------------
    def marginal(self) -> dist.MultivariateNormal:
        """p(x) = N(b, W Wᵀ + σ² I)."""
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.x_dim, dtype=self.W.dtype)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per row, shape ``(N,)``."""
        return self.marginal().log_prob(x.to(self.W.dtype))

    def posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """Exact p(z|x) per row (batch shape ``(N,)``)."""
        x = x.to(self.W.dtype)
        s2 = self.sigma**2
        precision = torch.eye(self.latent_dim, dtype=self.W.dtype) + self.W.T @ self.W / s2
        cov = torch.linalg.inv(precision)
        mean = (x - self.b) @ self.W @ cov.T / s2
        return dist.MultivariateNormal(mean, covariance_matrix=cov)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num_samples`` rows of x from the model (default: a generator seeded with 1)."""
        g = generator if generator is not None else torch.Generator().manual_seed(1)
        z = torch.randn(num_samples, self.latent_dim, generator=g, dtype=self.W.dtype)
        eps = torch.randn(num_samples, self.x_dim, generator=g, dtype=self.W.dtype)
        return z @ self.W.T + self.b + self.sigma * eps

    # -- the Pyro program -----------------------------------------------------------------------
    def model(self, x: torch.Tensor, num_data: int | None = None) -> None:
        """p(z) p(x|z) inside the ``"data"`` plate."""
        x = x.to(self.W.dtype)
        with data_plate(x, num_data):
            z = pyro.sample(
                "z",
                dist.Normal(torch.zeros(self.latent_dim, dtype=x.dtype), torch.ones(self.latent_dim, dtype=x.dtype)).to_event(1),
            )
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def exact_guide(self, x: torch.Tensor, num_data: int | None = None) -> None:
        """The exact posterior as guide."""
        with data_plate(x, num_data):
            pyro.sample("z", self.posterior(x))

    def scaled_guide(self, scale: float, shift: float = 0.0) -> Callable[..., None]:
        """A guide N(μ* + shift, scale² Σ*): wider (scale > 1), narrower (< 1) or biased (shift ≠ 0)."""

        def guide(x: torch.Tensor, num_data: int | None = None) -> None:
            post = self.posterior(x)
            with data_plate(x, num_data):
                pyro.sample("z", dist.MultivariateNormal(post.loc + shift, scale_tril=scale * post.scale_tril))

        return guide


class GaussianMixture:
    """A discrete label over a linear-Gaussian latent, summed in closed form:

        y ~ Cat(π),   z ~ N(0, 1),   x | y, z ~ N(z + μ_y, σ²)

    so p(x | y) = N(x; μ_y, 1 + σ²), log p(x) = log Σ_y π_y N(x; μ_y, 1 + σ²), and the exact posterior
    is p(y | x) ∝ π_y N(x; μ_y, 1 + σ²) with p(z | x, y) = N((x − μ_y) / (1 + σ²), σ² / (1 + σ²)).
    :meth:`exact_guide` marks y for enumeration: with it every bound that sums y exactly equals log p(x).

    Example:
        >>> gm = GaussianMixture()
        >>> x = torch.tensor([0.3, -1.2])
        >>> import pyro_vae as pv
        >>> ll = pv.log_likelihood(gm.model, gm.exact_guide, x, num_samples=3)
        >>> bool(torch.allclose(ll.per_datapoint.double(), gm.log_marginal(x).double(), atol=1e-5))
        True
    """

    def __init__(self, weights: tuple = (0.2, 0.5, 0.3), means: tuple = (-2.0, 0.0, 1.5), sigma: float = 0.7) -> None:
        self.pi = torch.tensor(weights)
        self.mu = torch.tensor(means)
        self.sigma = float(sigma)

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.pi))
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + self.mu[y], self.sigma), obs=x)

    def label_logits(self, x: torch.Tensor) -> torch.Tensor:
        """log π_y + log N(x; μ_y, 1 + σ²), ``(N, C)``: the exact posterior of y up to a constant."""
        return self.pi.log() + dist.Normal(self.mu, (1.0 + self.sigma**2) ** 0.5).log_prob(x.unsqueeze(-1))

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per datapoint."""
        return torch.logsumexp(self.label_logits(x), -1)

    def exact_guide(self, x: torch.Tensor) -> None:
        """The exact posterior as guide, y marked for enumeration."""
        prec = 1.0 + 1.0 / self.sigma**2
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=self.label_logits(x)), infer={"enumerate": "parallel"})
            pyro.sample("z", dist.Normal((x - self.mu[y]) / self.sigma**2 / prec, prec**-0.5))


__all__ = ["LinearGaussian", "GaussianMixture"]
