"""The programs the benchmark suite races: pyro_vae, hand-written PyTorch, Pyro's tutorial VAE, pythae.

Every contender is built with the *same network* and, before timing starts, the *same weights*
(copied from the pyro_vae model), so the suite times implementations, not architectures:

* ``NETS["softplus"]``: 784-400-2·50 encoder, 50-400-784 decoder, softplus (the library default,
  ``benchmarks/reference_vae.py``);
* ``NETS["tanh"]``: 784-200-200-2·50 encoder, 50-200-200-784 decoder, tanh (Burda et al. 2016).

The encoder gives q(z|x) = N(μ, diag σ²), σ = exp(h) + 1e-5; the decoder gives Bernoulli logits;
the prior is N(0, I).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

import pyro_vae as pv
from pyro_vae.nn import activation


class MLP(nn.Sequential):
    """The hand-written contenders' network: plain ``torch.nn.Linear`` layers (torch's default
    matmul, no pyro_vae kernel), leading (particle, batch) dims folded into one matrix dim — the
    faster way to write it by hand. The same state-dict keys as :class:`pyro_vae.nn.MLP`."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int, act: str) -> None:
        widths = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), activation(act)]
        layers.append(nn.Linear(widths[-1], out_dim))
        super().__init__(*layers)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.dim() == 2:
            return super().forward(x)
        lead = x.shape[:-1]
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(*lead, self.out_dim)

X_DIM = 784
LATENT = 50
MIN_SCALE = 1e-5
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Net:
    name: str
    hidden: tuple[int, ...]
    activation: str

    @property
    def label(self) -> str:  # noqa: D102
        h = "-".join(str(w) for w in self.hidden)
        return f"784-{h}-{LATENT} {self.activation}"


NETS = {
    "softplus": Net("softplus", (400,), "softplus"),
    "tanh": Net("tanh", (200, 200), "tanh"),
}


# -- pyro_vae ------------------------------------------------------------------------------------------
def library_vae(net: Net, seed: int = 0) -> pv.VAE:
    """The pyro_vae model every other contender copies its weights from."""
    torch.manual_seed(seed)
    return pv.VAE(
        pv.encoders.DiagNormalEncoder(X_DIM, LATENT, hidden=net.hidden, activation=net.activation),
        pv.decoders.BernoulliDecoder(LATENT, X_DIM, hidden=net.hidden, activation=net.activation),
        pv.priors.StandardNormalPrior(LATENT),
    )


# -- hand-written PyTorch ------------------------------------------------------------------------------
class HandVAE(nn.Module):
    """A VAE written directly in PyTorch (no Pyro, no distributions objects): the baseline.

    ``elbo`` is the single-sample ELBO with the closed-form KL (as ``benchmarks/reference_vae.py``);
    ``iwae_loss`` the IWAE-K surrogate with the standard gradient; ``dreg_loss`` the DReG surrogate
    (Tucker et al. 2019), written the cheapest way we know: one backward pass, a gradient hook on
    z squaring the weights along the sample path.
    """

    def __init__(self, net: Net) -> None:
        super().__init__()
        self.encoder = MLP(X_DIM, net.hidden, 2 * LATENT, net.activation)
        self.decoder = MLP(LATENT, net.hidden, X_DIM, net.activation)

    @classmethod
    def like(cls, vae: pv.VAE, net: Net) -> "HandVAE":
        """A copy of the weights of ``vae``."""
        m = cls(net)
        m.encoder.load_state_dict(vae.encoder.net.state_dict())
        m.decoder.load_state_dict(vae.decoder.net.state_dict())
        return m

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        h = self.encoder(x)
        return h[..., :LATENT], h[..., LATENT:].exp() + MIN_SCALE

    @staticmethod
    def log_px(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Single-sample ELBO per datapoint, closed-form KL."""
        loc, scale = self.encode(x)
        z = loc + scale * torch.randn_like(loc)
        kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1.0) - scale.log()).sum(-1)
        return self.log_px(self.decoder(z), x) - kl

    def _log_w(self, x: torch.Tensor, K: int, stop_q: bool):
        loc, scale = self.encode(x)
        eps = torch.randn((K, *loc.shape), dtype=loc.dtype)
        z = loc + scale * eps
        log_p = self.log_px(self.decoder(z), x) - 0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        if stop_q:
            loc_, scale_ = loc.detach(), scale.detach()
            log_q = (-0.5 * (((z - loc_) / scale_).pow(2) + LOG_2PI) - scale_.log()).sum(-1)
        else:  # (z - loc) / scale = eps: the total derivative of log q, the cheapest way
            log_q = (-0.5 * (eps.pow(2) + LOG_2PI) - scale.log()).sum(-1)
        return z, log_p - log_q

    def iwae_loss(self, x: torch.Tensor, K: int, num_data: int) -> torch.Tensor:
        """−(N/B) Σ_b IWAE-K(x_b); its gradient is the standard IWAE gradient."""
        _, lw = self._log_w(x, K, stop_q=False)
        return -(num_data / x.shape[0]) * (torch.logsumexp(lw, 0) - math.log(K)).sum()

    def dreg_loss(self, x: torch.Tensor, K: int, num_data: int) -> torch.Tensor:
        """Surrogate whose gradient is DReG for the encoder and standard IWAE for the decoder."""
        z, lw = self._log_w(x, K, stop_q=True)
        w = torch.softmax(lw.detach(), 0)
        z.register_hook(lambda g: g * w.unsqueeze(-1))  # w along the sample path: w² in total
        bound = torch.logsumexp(lw.detach(), 0) - math.log(K)
        surrogate = (w * lw).sum()
        return -(num_data / x.shape[0]) * (bound.sum() + surrogate - surrogate.detach())


def hand_step(model: HandVAE, opt: torch.optim.Optimizer, loss_fn: Callable[[torch.Tensor], torch.Tensor]):
    """One hand-written training step (what a PyTorch user writes, logging the loss)."""

    def step(x: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


# -- Pyro's tutorial VAE ---------------------------------------------------------------------------------
class TutorialVAE(nn.Module):
    """Pyro's VAE tutorial (pyro.ai/examples/vae.html) with the benchmark's networks: ``pyro.module``
    registration, ``pyro.plate("data")``, sigmoid probabilities for the Bernoulli likelihood,
    trained with ``SVI`` + ``Trace_ELBO`` (or ``RenyiELBO``) + ``pyro.optim.Adam``."""

    def __init__(self, net: Net) -> None:
        super().__init__()
        self.encoder = MLP(X_DIM, net.hidden, 2 * LATENT, net.activation)
        self.decoder = MLP(LATENT, net.hidden, X_DIM, net.activation)

    @classmethod
    def like(cls, vae: pv.VAE, net: Net) -> "TutorialVAE":  # noqa: D102
        m = cls(net)
        m.encoder.load_state_dict(vae.encoder.net.state_dict())
        m.decoder.load_state_dict(vae.decoder.net.state_dict())
        return m

    def model(self, x: torch.Tensor) -> None:  # noqa: D102
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], LATENT)))
            z_scale = x.new_ones(torch.Size((x.shape[0], LATENT)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = torch.sigmoid(self.decoder(z))
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:  # noqa: D102
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            pyro.sample("latent", dist.Normal(h[..., :LATENT], h[..., LATENT:].exp() + MIN_SCALE).to_event(1))


def tutorial_svi(vae: pv.VAE, net: Net, loss: pyro.infer.ELBO | None = None) -> Callable[[torch.Tensor], float]:
    """``svi.step`` of the tutorial VAE with weights copied from ``vae``."""
    pyro.clear_param_store()
    tut = TutorialVAE.like(vae, net)
    svi = pyro.infer.SVI(tut.model, tut.guide, pyro.optim.Adam({"lr": 1e-3}), loss=loss or pyro.infer.Trace_ELBO())
    return svi.step


# -- pythae (optional: pip install pyro_vae[bench]) -------------------------------------------------------
def pythae_version() -> str | None:
    """pythae's version if it imports, else ``None``."""
    try:
        import pythae  # noqa: F401
    except Exception:  # not installed, or broken against this torch / pydantic
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pythae")
    except PackageNotFoundError:
        return "unknown"


def _pythae_nets(vae: pv.VAE, net: Net):
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            BaseEncoder.__init__(self)
            self.net = MLP(X_DIM, net.hidden, 2 * LATENT, net.activation)

        def forward(self, x):
            h = self.net(x)
            # pythae's std is exp(log_var / 2): log_var = 2 log σ reproduces σ = exp(h) + 1e-5
            return ModelOutput(embedding=h[..., :LATENT], log_covariance=2 * torch.log(h[..., LATENT:].exp() + MIN_SCALE))

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            BaseDecoder.__init__(self)
            self.net = MLP(LATENT, net.hidden, X_DIM, net.activation)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))  # pythae's "bce" wants probabilities

    enc, dec = Encoder(), Decoder()
    enc.net.load_state_dict(vae.encoder.net.state_dict())
    dec.net.load_state_dict(vae.decoder.net.state_dict())
    return enc, dec


def pythae_iwae(vae: pv.VAE, net: Net, K: int):
    """pythae's ``IWAE`` (Bernoulli likelihood: ``reconstruction_loss="bce"``) with our networks."""
    from pythae.models import IWAE, IWAEConfig

    enc, dec = _pythae_nets(vae, net)
    cfg = IWAEConfig(input_dim=(X_DIM,), latent_dim=LATENT, reconstruction_loss="bce", number_samples=K)
    return IWAE(cfg, encoder=enc, decoder=dec)


def pythae_vae(vae: pv.VAE, net: Net):
    """pythae's ``VAE`` (for ``get_nll``) with our networks and weights."""
    from pythae.models import VAE, VAEConfig

    enc, dec = _pythae_nets(vae, net)
    return VAE(VAEConfig(input_dim=(X_DIM,), latent_dim=LATENT, reconstruction_loss="bce"), encoder=enc, decoder=dec)


def pythae_step(model: Any, opt: torch.optim.Optimizer) -> Callable[[torch.Tensor], float]:
    """One step the way pythae's trainer takes it: ``model({"data": x}).loss``, backward, step."""

    def step(x: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        loss = model({"data": x}).loss
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


__all__ = [
    "NETS",
    "Net",
    "library_vae",
    "HandVAE",
    "hand_step",
    "TutorialVAE",
    "tutorial_svi",
    "pythae_version",
    "pythae_iwae",
    "pythae_vae",
    "pythae_step",
]
