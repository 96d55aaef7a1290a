"""The VAE as a Pyro program: ``model(x)`` declares p(z) p_θ(x|z), ``guide(x)`` declares q_φ(z|x).

Both run inside ``pyro.plate("data", size=num_data, subsample=...)`` so that a minibatch bound
is scaled to the whole data set; the latent site is ``"z"`` and the observed site ``"x"``.
Parameters live in the component modules (no global parameter store): train with a torch
optimizer over ``vae.parameters()``, or with :class:`pyro.infer.SVI` and ``pyro.optim`` (the
model and guide announce their parameters to Pyro's handlers, so ``SVI`` finds them).
"""

from __future__ import annotations

import weakref
from typing import Iterator

import pyro
import torch
from pyro.nn import PyroModule
from pyro.poutine.runtime import am_i_wrapped, effectful
from torch import nn
from torch.distributions import constraints

from .decoders import Decoder
from .encoders import Encoder
from .priors import Prior, StandardNormalPrior

#: name of the data plate every model/guide pair in this library uses
DATA_PLATE = "data"


def _announce(fn):  # the same "fake param statement" PyroModule uses with module-local params
    return effectful(type="param")(fn)


def declare_params(prefix: str, module: nn.Module) -> None:
    """Emit a Pyro ``param`` message per parameter of ``module`` (no global store involved).

    Only does work when a Pyro handler is active, so plain calls stay free. This is what lets
    ``pyro.infer.SVI`` with a ``pyro.optim`` optimizer find parameters that live in modules.
    """
    if not am_i_wrapped():
        return
    for name, p in module.named_parameters(prefix=prefix):
        if not p.requires_grad:
            continue
        if "unconstrained" not in p.__dict__:
            p.unconstrained = weakref.ref(p)  # what SVI calls to reach the leaf tensor
        _announce(lambda *_, **__: p)(name, p, constraint=constraints.real, name=name)


def data_plate(x: torch.Tensor, num_data: int | None) -> pyro.plate:
    """The ``"data"`` plate for a minibatch ``x`` drawn from ``num_data`` datapoints.

    The bound is scaled by ``num_data / len(x)``; ``num_data=None`` means ``x`` is the whole set.
    """
    batch = x.shape[0]
    if num_data is None or num_data == batch:
        return pyro.plate(DATA_PLATE, batch, dim=-1)
    if num_data < batch:
        raise ValueError(f"num_data={num_data} is smaller than the minibatch ({batch}); pass the data set size")
    return pyro.plate(DATA_PLATE, num_data, subsample=torch.arange(batch, device=x.device), dim=-1)


class VAE(PyroModule):
    """A variational autoencoder built from an encoder, a decoder and a prior.

    Example:
        >>> import pyro_vae as pv
        >>> vae = pv.VAE(
        ...     encoder=pv.encoders.DiagNormalEncoder(x_dim=784, latent_dim=10),
        ...     decoder=pv.decoders.BernoulliDecoder(latent_dim=10, x_dim=784),
        ... )
        >>> loss = pv.objectives.ELBO()(vae.model, vae.guide)(torch.bernoulli(torch.rand(4, 784)))
        >>> loss.shape
        torch.Size([])

    References:
        Kingma, Welling (2014). Auto-encoding variational Bayes. ICLR.
        Rezende, Mohamed, Wierstra (2014). Stochastic backpropagation and approximate inference
        in deep generative models. ICML.
    """

    #: ``model`` / ``guide`` are exactly the program of ``encoder``, ``decoder`` and ``prior`` (one
    #: latent site ``z`` in the ``"data"`` plate, one observed site ``x``), so objectives may read
    #: them from the components without tracing (:func:`pyro_vae.program.from_vae`). A subclass
    #: that overrides ``model`` or ``guide`` is traced unless it declares ``component_program = True``.
    component_program: bool = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "component_program" not in vars(cls) and ("model" in vars(cls) or "guide" in vars(cls)):
            cls.component_program = False

    def __init__(self, encoder: Encoder, decoder: Decoder, prior: Prior | None = None) -> None:
        super().__init__()
        if prior is None:
            prior = StandardNormalPrior(encoder.latent_dim)
        dims = {"encoder": encoder.latent_dim, "decoder": decoder.latent_dim, "prior": prior.latent_dim}
        if len(set(dims.values())) != 1:
            raise ValueError(f"latent_dim differs between components: {dims}; build them with one latent_dim")
        if encoder.x_dim != decoder.x_dim:
            raise ValueError(
                f"encoder.x_dim={encoder.x_dim} but decoder.x_dim={decoder.x_dim}; both must equal the data's features"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.latent_dim = encoder.latent_dim
        self.x_dim = encoder.x_dim
        prior.check()

    # -- the probabilistic program ------------------------------------------------------------
    def model(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """p(z) p_θ(x|z) for a minibatch ``x`` of shape ``(B, x_dim)``."""
        declare_params("decoder", self.decoder)
        declare_params("prior", self.prior)
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.decoder(z), obs=x)

    def guide(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """q_φ(z|x) for a minibatch ``x`` of shape ``(B, x_dim)``."""
        declare_params("encoder", self.encoder)
        with data_plate(x, num_data):
            return pyro.sample("z", self.encoder(x))

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:  # noqa: D102
        return self.model(x, num_data)

    # -- conveniences -------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior means E_q[z|x] (Monte Carlo with 64 draws when the guide has no closed-form mean)."""
        q = self.encoder(x)
        try:
            return q.mean
        except NotImplementedError:
            return q.sample((64,)).mean(0)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z = E_q[z|x])."""
        return self.decoder(self.encode(x)).mean

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Draw z ~ p(z), then the mean of p(x|z) (``mean=True``) or a draw from it."""
        z = self.prior().sample((num_samples,))
        px = self.decoder(z)
        return px.mean if mean else px.sample()

    def component_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(family, parameter)`` pairs: family is ``"encoder"``, ``"decoder"`` or ``"prior"``."""
        seen: set[int] = set()
        for family in ("encoder", "decoder", "prior"):
            for p in getattr(self, family).parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield family, p


__all__ = ["VAE", "DATA_PLATE", "data_plate", "declare_params"]
