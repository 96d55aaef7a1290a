"""The conformance programs: small versions of what Pyro's examples teach, written as users write them.

Each entry of :data:`PROGRAMS` builds a fresh :class:`Program` (seeded modules, embedded data):
a Pyro ``model``/``guide`` pair, the data ``x`` and the per-datapoint arguments ``args`` it is
called with (``model(x, *args)``), what the program is (the capability flags) and, where one
exists, the exact per-datapoint log p(x) (:meth:`Program.exact_log_px`, float64, written
independently of the library: linear-Gaussian pieces marginalize in closed form).

=================  =============================================================================
``vae``            Pyro's ``examples/vae/vae.py``: ``pyro.module``, site ``"latent"``, observed
                   site ``"obs"`` with ``obs=x.reshape(-1, D)`` (x arrives as 2×3 "images"),
                   Bernoulli decoder MLP. No closed form (the reference is importance sampling).
``cvae``           Pyro's ``examples/cvae``: ``model(xs, ys)``, a size-less ``pyro.plate("data")``,
                   a prior network p(z|xs), a recognition network q(z|xs, ys), the likelihood of
                   the hidden pixels only — written broadcast-safe with ``.mask(xs == -1)``.
                   Linear-Gaussian decoder: exact log p(ys_hidden | xs).
``cvae_indexing``  The same program written as Pyro's cvae writes it: boolean-mask indexing
                   ``loc[xs == -1].view(batch_size, -1)`` — not broadcast-safe under a leading
                   particle dimension. Same exact values as ``cvae`` (same seed, same weights).
``m2``             Pyro's ``examples/vae/ss_vae_M2.py`` (unsupervised half): a OneHotCategorical
                   ``y`` enumerated in the guide (``config_enumerate``), z, x | y, z. Linear-Gaussian
                   decoder: exact log p(x) = logsumexp_y log p(y) N(x; b_y, W Wᵀ + σ²I).
``two_layer``      p: z2 → z1 → x, q: x → z1 → z2 (bottom-up; the closed-form-KL trap: p(z1|z2)
                   depends on a sample the guide draws *after* z1). All linear: exact log p(x).
``global_scale``   A global noise scale ``sigma`` ~ LogNormal outside the data plate (guide: a
                   LogNormal with ``pyro.param`` s), local z inside. No per-datapoint log p(x).
``param_decoder``  Decoder and encoder weights as ``pyro.param`` (no ``nn.Module``); one param
                   declared inside the data plate. Linear-Gaussian: exact log p(x).
``nested``         Nested plates (``data`` at dim −2, ``features`` at dim −1), a ``pyro.factor``
                   on z inside the data plate, and missing entries of x masked with
                   ``poutine.mask``. Exact log of the (unnormalized, factor included) marginal.
=================  =============================================================================

Sizes are small on purpose (D ≤ 6 features, ≤ 3 latent dims, N = 12 datapoints).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch import nn

N = 12  # datapoints
D = 6  # features
Z = 2  # latent dims
H = 8  # hidden units
C = 3  # classes of m2
SIGMA = 0.5  # likelihood scale of the linear-Gaussian decoders


@dataclass
class Program:
    """One conformance program and what it is.

    Capabilities (what a function may rely on):
        ``data_plate``: datapoints sit in ``pyro.plate("data")``;
        ``all_local``: every sample site sits in the data plate (per-datapoint weights exist);
        ``enumerated``: guide sites marked for parallel enumeration (discrete);
        ``broadcast_safe``: the program runs under a leading particle plate;
        ``reparameterized``: every guide site has ``rsample``;
        ``closed_form_kl_valid``: every site's closed-form KL(q ‖ p) equals E[log q − log p]
        (false where p's parents are drawn by the guide after the site);
        ``hierarchical_guide``: a guide site's distribution depends on another guide sample.
    """

    name: str
    model: Callable
    guide: Callable
    x: torch.Tensor
    args: tuple = ()
    data_plate: bool = True
    all_local: bool = True
    enumerated: tuple[str, ...] = ()
    broadcast_safe: bool = True
    reparameterized: bool = True
    closed_form_kl_valid: bool = True
    hierarchical_guide: bool = False
    max_plate_nesting: int = 1
    obs_sites: tuple[str, ...] = ("obs",)
    latent_sites: tuple[str, ...] = ("z",)
    global_sites: tuple[str, ...] = ()
    #: guide sites whose distribution depends on another guide sample (q(z | x, y))
    dependent_guide_sites: tuple[str, ...] = ()
    #: the observed site's value is the data argument x (possibly reshaped); False: another argument
    observes_x: bool = True
    #: exact per-datapoint log p(x_i | args_i), float64, or None where there is no closed form
    exact: Callable[[], torch.Tensor] | None = None
    modules: list = field(default_factory=list)
    #: repeats of an objective's loss in the value checks (more for programs whose bound varies more)
    repeats: int = 8

    def exact_log_px(self) -> torch.Tensor | None:
        if self.exact is None:
            return None
        with torch.no_grad():
            return self.exact()

    def take(self, index) -> tuple[torch.Tensor, tuple]:
        """x and the per-datapoint arguments of the datapoints ``index`` selects."""
        return self.x[index], tuple(a[index] for a in self.args)

    @property
    def num_data(self) -> int:
        return self.x.shape[0]


def _mvn_log_prob(x: torch.Tensor, loc: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    return torch.distributions.MultivariateNormal(loc.double(), covariance_matrix=cov.double()).log_prob(x.double())


def _bcat(*ts: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dim after broadcasting the batch dims (enumeration, particles)."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in ts))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in ts], -1)


class _Encoder(nn.Module):
    """Pyro's vae.py encoder: one hidden layer, (loc, scale)."""

    def __init__(self, d_in: int, z: int, hidden: int = H) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc21 = nn.Linear(hidden, z)
        self.fc22 = nn.Linear(hidden, z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = nn.functional.softplus(self.fc1(x))
        return self.fc21(h), torch.exp(0.5 * self.fc22(h))


# ---- 1. plain VAE (examples/vae/vae.py) --------------------------------------------------------
class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(Z, H)
        self.fc21 = nn.Linear(H, D)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc21(nn.functional.softplus(self.fc1(z))))


class VAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder(D, Z)
        self.decoder = _Decoder()

    def model(self, x: torch.Tensor) -> torch.Tensor:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], Z)))
            z_scale = x.new_ones(torch.Size((x.shape[0], Z)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x.reshape(-1, D))
            return loc_img

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x.reshape(-1, D))
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def vae() -> Program:
    torch.manual_seed(1)
    net = VAE()
    g = torch.Generator().manual_seed(11)
    x = torch.bernoulli(torch.full((N, 2, 3), 0.4), generator=g)  # 2×3 "images"
    return Program("vae", net.model, net.guide, x, latent_sites=("latent",), modules=[net])


# ---- 2./3. CVAE (examples/cvae) ----------------------------------------------------------------
class CVAE(nn.Module):
    """p(z | xs) by a prior net, q(z | xs, ys) by a recognition net, a linear generation net; the
    likelihood covers the hidden pixels (xs == -1) only."""

    def __init__(self, indexing: bool) -> None:
        super().__init__()
        self.prior_net = _Encoder(D, Z)
        self.recognition_net = _Encoder(2 * D, Z)
        self.generation_net = nn.Linear(Z, D)
        self.indexing = indexing

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        pyro.module("generation_net", self)
        batch_size = xs.shape[0]
        with pyro.plate("data"):
            prior_loc, prior_scale = self.prior_net(xs)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            loc = self.generation_net(zs)
            if ys is not None:
                if self.indexing:  # as Pyro's cvae: not broadcast-safe
                    mask_loc = loc[(xs == -1).view(-1, D)].view(batch_size, -1)
                    mask_ys = ys[xs == -1].view(batch_size, -1)
                    pyro.sample("y", dist.Normal(mask_loc, SIGMA).to_event(1), obs=mask_ys)
                else:
                    pyro.sample("y", dist.Normal(loc, SIGMA).mask(xs == -1).to_event(1), obs=ys)
            else:
                pyro.deterministic("y", loc.detach())
            return loc

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        pyro.module("generation_net", self)
        with pyro.plate("data"):
            if ys is None:
                loc, scale = self.prior_net(xs)
            else:
                loc, scale = self.recognition_net(torch.cat([xs, ys], -1))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def exact(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """log p(ys[hidden] | xs), one datapoint at a time."""
        W, b = self.generation_net.weight.double(), self.generation_net.bias.double()
        out = []
        for x, y in zip(xs, ys):
            m, s = self.prior_net(x[None])
            m, s = m[0].double(), s[0].double()
            h = x == -1
            cov = W[h] @ torch.diag(s**2) @ W[h].T + SIGMA**2 * torch.eye(int(h.sum()), dtype=torch.float64)
            out.append(_mvn_log_prob(y[h], W[h] @ m + b[h], cov))
        return torch.stack(out)


def _cvae(indexing: bool) -> Program:
    torch.manual_seed(2)
    net = CVAE(indexing)
    g = torch.Generator().manual_seed(12)
    ys = torch.randn(N, D, generator=g)
    hidden = torch.stack([torch.randperm(D, generator=g)[: D // 2] for _ in range(N)])  # 3 hidden per row
    mask = torch.zeros(N, D, dtype=torch.bool).scatter_(1, hidden, True)
    xs = torch.where(mask, torch.full_like(ys, -1.0), ys)
    name = "cvae_indexing" if indexing else "cvae"
    return Program(name, net.model, net.guide, xs, (ys,), broadcast_safe=not indexing, obs_sites=("y",), observes_x=False,
                   exact=lambda: net.exact(xs, ys), modules=[net])


def cvae() -> Program:
    return _cvae(indexing=False)


def cvae_indexing() -> Program:
    return _cvae(indexing=True)


# ---- 4. M2 (examples/vae/ss_vae_M2.py), unsupervised ----------------------------------------------
class M2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder_y = nn.Sequential(nn.Linear(D, H), nn.Softplus(), nn.Linear(H, C), nn.Softmax(-1))
        self.encoder_z = _Encoder(D + C, Z)
        self.decoder = nn.Linear(Z + C, D)

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        options = dict(dtype=xs.dtype, device=xs.device)
        with pyro.plate("data"):
            prior_loc = torch.zeros(batch_size, Z, **options)
            prior_scale = torch.ones(batch_size, Z, **options)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = torch.ones(batch_size, C, **options) / (1.0 * C)
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            loc = self.decoder(_bcat(zs, ys))
            pyro.sample("x", dist.Normal(loc, SIGMA).to_event(1), obs=xs)

    @pyro.infer.config_enumerate
    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            if ys is None:
                alpha = self.encoder_y(xs)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            loc, scale = self.encoder_z(_bcat(xs, ys))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def exact(self, xs: torch.Tensor) -> torch.Tensor:
        W = self.decoder.weight.double()
        Wz, Wy, b = W[:, :Z], W[:, Z:], self.decoder.bias.double()
        cov = Wz @ Wz.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
        per_class = torch.stack([_mvn_log_prob(xs, Wy[:, c] + b, cov) for c in range(C)])  # (C, N)
        return torch.logsumexp(per_class - math.log(C), 0)


def m2() -> Program:
    torch.manual_seed(4)
    net = M2()
    g = torch.Generator().manual_seed(14)
    xs = torch.randn(N, D, generator=g)
    return Program("m2", net.model, net.guide, xs, enumerated=("y",), reparameterized=False, obs_sites=("x",),
                   latent_sites=("z", "y"), dependent_guide_sites=("z",), exact=lambda: net.exact(xs), modules=[net])


# ---- 5. two stochastic layers, bottom-up guide ---------------------------------------------------
S1 = 0.7  # scale of p(z1 | z2)


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p_z1 = nn.Linear(Z, Z)  # p(z1 | z2) = N(A z2 + c, S1)
        self.p_x = nn.Linear(Z, D)  # p(x | z1) = N(W z1 + b, SIGMA)
        self.q_z1 = _Encoder(D, Z)  # q(z1 | x)
        self.q_z2 = _Encoder(Z, Z)  # q(z2 | z1)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("two_layer", self)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(self.p_z1(z2), S1).to_event(1))
            pyro.sample("obs", dist.Normal(self.p_x(z1), SIGMA).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("two_layer", self)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(*self.q_z1(x)).to_event(1))
            pyro.sample("z2", dist.Normal(*self.q_z2(z1)).to_event(1))

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        A, c = self.p_z1.weight.double(), self.p_z1.bias.double()
        W, b = self.p_x.weight.double(), self.p_x.bias.double()
        cov1 = A @ A.T + S1**2 * torch.eye(Z, dtype=torch.float64)
        cov = W @ cov1 @ W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
        return _mvn_log_prob(x, W @ c + b, cov)


def two_layer() -> Program:
    torch.manual_seed(5)
    net = TwoLayer()
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(15))
    return Program("two_layer", net.model, net.guide, x, closed_form_kl_valid=False, hierarchical_guide=True,
                   latent_sites=("z2", "z1"), dependent_guide_sites=("z2",), exact=lambda: net.exact(x), modules=[net])


# ---- 6. a global latent outside the data plate ----------------------------------------------------
class GlobalScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(Z, D)
        self.encoder = _Encoder(D, Z)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("global_scale", self)
        sigma = pyro.sample("sigma", dist.LogNormal(x.new_tensor(-0.5), 0.3))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(self.decoder(z), sigma.unsqueeze(-1)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("global_scale", self)
        loc = pyro.param("sigma_loc", torch.tensor(-0.6))
        scale = pyro.param("sigma_scale", torch.tensor(0.2), constraint=dist.constraints.positive)
        pyro.sample("sigma", dist.LogNormal(loc, scale))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*self.encoder(x)).to_event(1))


def global_scale() -> Program:
    torch.manual_seed(6)
    net = GlobalScale()
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(16))
    return Program("global_scale", net.model, net.guide, x, all_local=False, global_sites=("sigma",),
                   latent_sites=("sigma", "z"), modules=[net])


# ---- 7. a pyro.param decoder ------------------------------------------------------------------------
class ParamDecoder:
    """Weights as ``pyro.param`` (initial values fixed here, so a cleared param store rebuilds them)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(7)
        self.init = {
            "W": 0.5 * torch.randn(D, Z, generator=g),
            "b": 0.3 * torch.randn(D, generator=g),
            "enc_W": 0.3 * torch.randn(Z, D, generator=g),
            "enc_log_scale": torch.full((Z,), -0.5),
        }

    def model(self, x: torch.Tensor) -> None:
        W = pyro.param("W", self.init["W"].clone())
        with pyro.plate("data", x.shape[0]):
            b = pyro.param("b", self.init["b"].clone())  # declared inside the plate, as users do
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(z @ W.T + b, SIGMA).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        enc_W = pyro.param("enc_W", self.init["enc_W"].clone())
        log_scale = pyro.param("enc_log_scale", self.init["enc_log_scale"].clone())
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ enc_W.T, log_scale.exp()).to_event(1))

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        store = pyro.get_param_store()
        W = (store["W"] if "W" in store else self.init["W"]).detach().double()
        b = (store["b"] if "b" in store else self.init["b"]).detach().double()
        return _mvn_log_prob(x, b, W @ W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64))


def param_decoder() -> Program:
    net = ParamDecoder()
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(17))
    return Program("param_decoder", net.model, net.guide, x, exact=lambda: net.exact(x), modules=[net])


# ---- 8. nested plates, pyro.factor, a masked site --------------------------------------------------
SHRINK = 0.5  # the factor's strength: factor(z) = −SHRINK/2 · |z|²


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(Z, D)
        self.encoder = _Encoder(2 * D, Z)

    def model(self, x: torch.Tensor, observed: torch.Tensor) -> None:
        pyro.module("nested", self)
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1, Z), 1.0).to_event(1))
            pyro.factor("shrink", -0.5 * SHRINK * (z**2).sum(-1))
            loc = self.decoder(z[..., 0, :])
            with pyro.plate("features", D, dim=-1), poutine.mask(mask=observed):
                pyro.sample("obs", dist.Normal(loc, SIGMA), obs=x)

    def guide(self, x: torch.Tensor, observed: torch.Tensor) -> None:
        pyro.module("nested", self)
        with pyro.plate("data", x.shape[0], dim=-2):
            loc, scale = self.encoder(torch.cat([x * observed, observed.to(x.dtype)], -1))
            pyro.sample("z", dist.Normal(loc.unsqueeze(-2), scale.unsqueeze(-2)).to_event(1))

    def exact(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        W, b = self.decoder.weight.double(), self.decoder.bias.double()
        out = []
        for xi, oi in zip(x, observed):
            Wo = W[oi]
            cov = Wo @ Wo.T / (1 + SHRINK) + SIGMA**2 * torch.eye(int(oi.sum()), dtype=torch.float64)
            out.append(_mvn_log_prob(xi[oi], b[oi], cov) - 0.5 * Z * math.log(1 + SHRINK))
        return torch.stack(out)


def nested() -> Program:
    torch.manual_seed(8)
    net = Nested()
    g = torch.Generator().manual_seed(18)
    x = torch.randn(N, D, generator=g)
    observed = torch.rand(N, D, generator=g) > 0.3
    observed[:, 0] = True  # every datapoint observes something
    x = torch.where(observed, x, torch.zeros_like(x))
    return Program("nested", net.model, net.guide, x, (observed,), max_plate_nesting=2,
                   obs_sites=("obs", "shrink"), exact=lambda: net.exact(x, observed), modules=[net])


# ---- 9-12. the library's structured models (pyro_vae.models), small -----------------------------------
def _binary(seed: int) -> torch.Tensor:
    return (torch.rand(N, D, generator=torch.Generator().manual_seed(seed)) > 0.5).to(torch.get_default_dtype())


def _pretrained(net: nn.Module, x: torch.Tensor, args: tuple = (), steps: int = 300) -> nn.Module:
    """A few hundred Adam steps of the ELBO on the program's own data (its guide then is a usable
    proposal, as after training; at random initialization the weights are too heavy-tailed for the
    per-datapoint tolerances). Seeded; run once per program build."""
    import pyro_vae as pv

    import warnings

    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    elbo = pv.objectives.ELBO(num_particles=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the bottom-up model's Monte Carlo KL notice
        for _ in range(steps):
            opt.zero_grad()
            elbo.differentiable_loss(net.model, net.guide, x, *args).backward()
            opt.step()
    pyro.clear_param_store()
    return net


def hvae_bottom_up() -> Program:
    from pyro_vae.models import HierarchicalVAE

    torch.manual_seed(9)
    x = _binary(19)
    net = _pretrained(HierarchicalVAE(D, latent_dims=(3, 2), hidden=((8,), (8,)), inference="bottom_up"), x)
    return Program("hvae_bottom_up", net.model, net.guide, x, closed_form_kl_valid=False,
                   hierarchical_guide=True, obs_sites=("x",), latent_sites=("z2", "z1"), dependent_guide_sites=("z2",),
                   modules=[net], repeats=32)


def hvae_top_down() -> Program:
    from pyro_vae.models import HierarchicalVAE

    torch.manual_seed(10)
    x = _binary(20)
    net = _pretrained(HierarchicalVAE(D, latent_dims=(3, 2), hidden=((8,), (8,)), inference="top_down"), x)
    return Program("hvae_top_down", net.model, net.guide, x, hierarchical_guide=True, obs_sites=("x",),
                   latent_sites=("z2", "z1"), dependent_guide_sites=("z1",), modules=[net], repeats=32)


def cvae_model() -> Program:
    from pyro_vae.models import ConditionalVAE, one_hot

    torch.manual_seed(11)
    c = one_hot(torch.arange(N) % 3, 3)
    x = _binary(21)
    net = _pretrained(ConditionalVAE(D, 3, latent_dim=2, hidden=(8,)), x, (c,))
    return Program("cvae_model", net.model, net.guide, x, (c,), obs_sites=("x",), modules=[net], repeats=32)


def m2_model() -> Program:
    from pyro_vae.models import SemiSupervisedVAE

    torch.manual_seed(12)
    x = _binary(22)
    net = _pretrained(SemiSupervisedVAE(D, 3, latent_dim=2, hidden=(8,)), x)
    return Program("m2_model", net.model, net.guide, x, enumerated=("y",), reparameterized=False,
                   obs_sites=("x",), latent_sites=("z", "y"), dependent_guide_sites=("z",), modules=[net], repeats=32)


PROGRAMS: dict[str, Callable[[], Program]] = {
    "vae": vae,
    "cvae": cvae,
    "cvae_indexing": cvae_indexing,
    "m2": m2,
    "two_layer": two_layer,
    "global_scale": global_scale,
    "param_decoder": param_decoder,
    "nested": nested,
    "hvae_bottom_up": hvae_bottom_up,
    "hvae_top_down": hvae_top_down,
    "cvae_model": cvae_model,
    "m2_model": m2_model,
}

__all__ = ["Program", "PROGRAMS", "N", "D", "Z"]
