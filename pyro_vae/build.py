"""Build components, a VAE and an objective from a :class:`~pyro_vae.config.Config`.

The name -> factory tables live in :mod:`pyro_vae.registry` (re-exported here); adding a
component to the config and the CLI is one line there. :func:`build_program` builds what
``model = "hierarchical" | "conditional" | "semisupervised"`` trains (a structured model, its
model/guide pair and the data laid out for it) with one ``fit`` and one ``log_likelihood``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import pyro.infer
import torch
from torch import nn

from . import models as M
from . import objectives as O
from .config import Config, ConfigError
from .data import DataSplits
from .registry import DECODERS, ENCODERS, MODEL_NAMES, OBJECTIVES, PRIORS, Factory  # noqa: F401 (MODEL_NAMES: re-exported)
from .vae import VAE


def _with(c: Config, **changes: Any) -> Config:
    """The config with a few keys changed (no validation: the widths a component's inputs need)."""
    return dataclasses.replace(c, **changes)


def _hierarchical(c: Config, x_dim: int, context_dim: int) -> M.HierarchicalVAE:
    hidden = tuple((w,) * c.layer_depth for w in c.layer_hidden)
    decoder = DECODERS[c.decoder](_with(c, latent_dim=c.latent_dims[0], hidden=list(hidden[0])), x_dim, None)
    return M.HierarchicalVAE(x_dim, tuple(c.latent_dims), hidden, c.activation, c.inference, decoder=decoder)


def _conditional(c: Config, x_dim: int, context_dim: int) -> M.ConditionalVAE:
    encoder = ENCODERS[c.encoder](c, x_dim + context_dim, None)  # reads [x, c]
    decoder = DECODERS[c.decoder](_with(c, latent_dim=c.latent_dim + context_dim), x_dim, None)  # reads [z, c]
    return M.ConditionalVAE(x_dim, context_dim, c.latent_dim, tuple(c.hidden), c.activation,
                            conditional_prior=c.conditional_prior, encoder=encoder, decoder=decoder)


def _semisupervised(c: Config, x_dim: int, num_classes: int) -> M.SemiSupervisedVAE:
    encoder = ENCODERS[c.encoder](c, x_dim + num_classes, None)  # reads [x, one_hot(y)]
    decoder = DECODERS[c.decoder](_with(c, latent_dim=c.latent_dim + num_classes), x_dim, None)  # reads [z, one_hot(y)]
    return M.SemiSupervisedVAE(x_dim, num_classes, c.latent_dim, tuple(c.hidden), c.activation, decoder=decoder,
                               encoder=encoder)


#: ``MODELS[name](config, x_dim, context_dim)`` -> the structured model of ``model = name``
#: (``context_dim``: the conditional VAE's context width, the semi-supervised VAE's number of
#: classes, 0 for the hierarchical VAE); ``model = "vae"`` is :func:`build_vae`
MODELS: dict[str, Factory] = {
    "hierarchical": _hierarchical,
    "conditional": _conditional,
    "semisupervised": _semisupervised,
}


def build_vae(config: Config, x_dim: int, image_shape: tuple[int, ...] | None = None,
              train: torch.Tensor | None = None) -> VAE:
    """Build the VAE a config describes for data with ``x_dim`` features.

    ``train`` (optional) seeds the VampPrior's pseudo-inputs with training rows (fixed choice).
    """
    torch.manual_seed(config.seed)  # initial weights depend on the seed only
    shape = image_shape if config.network == "conv" else None
    encoder = ENCODERS[config.encoder](config, x_dim, shape)
    decoder = DECODERS[config.decoder](config, x_dim, shape)
    init = None
    unit = config.pixel_scale == "unit"
    if config.prior == "vamp" and train is not None:
        g = torch.Generator().manual_seed(config.seed)
        idx = torch.randperm(train.shape[0], generator=g)[: config.prior_components]
        init = train[idx].float()
        if init.shape[0] < config.prior_components:
            init = None
        elif unit:
            init = init * 0.98 + 0.01
    prior = PRIORS[config.prior](config, encoder, init, unit)
    return VAE(encoder, decoder, prior)


def build_objective(config: Config) -> pyro.infer.ELBO:
    """The training objective a config names, wrapped in β / warm-up / free bits when asked.

    ``model = "semisupervised"``: ``pyro.infer.TraceEnum_ELBO`` (its label summed out exactly).
    """
    if config.model == "semisupervised":
        return pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, num_particles=config.num_particles,
                                         vectorize_particles=config.num_particles > 1)
    objective = OBJECTIVES[config.objective](config)
    if config.free_bits > 0:
        objective = O.FreeBits(objective, config.free_bits)
    if config.kl_warmup_steps > 0:
        objective = O.KLWarmup(objective, config.kl_warmup_steps, beta_end=config.kl_beta)
    elif config.kl_beta != 1.0:
        objective = O.BetaVAE(objective, config.kl_beta)
    return objective


@dataclass
class Program:
    """What a config's structured model trains on: the module, the model/guide pair that
    :func:`pyro_vae.fit` and :func:`pyro_vae.log_likelihood` take, and the data laid out for it.

    ``train`` / ``val`` / ``test`` are the tensors the pair is called on: x itself (hierarchical),
    ``[x, c]`` packed (conditional; ``module.packed_model`` splits them), or x with the labels in
    ``train_labels`` etc. (semi-supervised, trained by
    :func:`pyro_vae.models.fit_semisupervised` on ``labelled`` / ``unlabelled`` rows of train).
    ``test`` is binarized once (seeded) when the config binarizes dynamically.
    """

    config: Config
    module: nn.Module
    model: Callable
    guide: Callable
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    labelled: torch.Tensor | None = None  # semi-supervised: labelled row indices of train
    unlabelled: torch.Tensor | None = None

    def fit(self, **fit_kwargs: Any) -> Any:
        """Train with the config's objective, epochs, batch size, optimizer, learning rate and seed.

        Hierarchical and conditional: :func:`pyro_vae.fit` (``fit_kwargs`` are passed on:
        ``run_dir``, ``progress``, ``callbacks``, ...). Semi-supervised:
        :func:`pyro_vae.models.fit_semisupervised` (only ``progress`` is taken).
        """
        c = self.config
        if c.model == "semisupervised":
            from .models import fit_semisupervised

            m = self.module
            return fit_semisupervised(m, self.train[self.labelled], self.train_labels[self.labelled], self.train[self.unlabelled],
                                      val=self.val_binarized(), val_labels=self.val_labels, objective=build_objective(c),
                                      alpha=c.classifier_weight, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
                                      dynamic_binarization=c.binarize == "dynamic", seed=c.seed,
                                      progress=bool(fit_kwargs.get("progress", False)))
        from .train import fit

        kwargs = dict(epochs=c.epochs, batch_size=c.batch_size, optimizer=c.optimizer, lr=c.lr,
                      weight_decay=c.weight_decay, lr_schedule=c.lr_schedule, grad_clip=c.grad_clip or None,
                      patience=c.patience or None, dynamic_binarization=c.binarize == "dynamic", seed=c.seed,
                      device=c.device)
        kwargs.update(fit_kwargs)
        return fit(self.model, build_objective(c), self.train, self.val, guide=self.guide, **kwargs)

    def val_binarized(self) -> torch.Tensor:
        """The validation rows, binarized once (seeded) under dynamic binarization."""
        if self.config.binarize != "dynamic":
            return self.val
        return torch.bernoulli(self.val, generator=torch.Generator().manual_seed(self.config.seed + 1))

    def log_likelihood(self, num_samples: int | None = None, **kwargs: Any) -> Any:
        """:func:`pyro_vae.log_likelihood` of the test rows (``eval_samples`` by default)."""
        from .evaluation import log_likelihood

        self.module.eval()
        n = self.config.eval_samples if num_samples is None else num_samples
        return log_likelihood(self.model, self.guide, self.test, num_samples=n,
                              memory_budget=self.config.eval_memory_mb * 2**20, **kwargs)


def build_model(config: Config, x_dim: int, context_dim: int = 0) -> nn.Module:
    """The structured model ``config.model`` names (``registry.MODELS``), seeded by ``config.seed``."""
    if config.model == "vae":
        raise ConfigError("model = 'vae' is built by build_vae(config, x_dim, ...)")
    torch.manual_seed(config.seed)
    return MODELS[config.model](config, x_dim, context_dim)


def build_program(config: Config, data: DataSplits) -> Program:
    """The structured model of ``config`` and its data (see :class:`Program`).

    Raises:
        ConfigError: the data lack what the model needs (labels, 28x28 images for quadrants).
    """
    from .models import one_hot, split_labelled, split_quadrants

    dynamic = config.binarize == "dynamic"
    fixed = torch.Generator().manual_seed(config.seed)

    def binarized(t: torch.Tensor) -> torch.Tensor:  # the evaluation data: one seeded binarization
        return torch.bernoulli(t, generator=fixed) if dynamic else t

    if config.model == "hierarchical":
        module = build_model(config, data.x_dim)
        return Program(config, module, module.model, module.guide, data.train, data.val, binarized(data.test))
    if data.train_labels is None:
        raise ConfigError(f"model = {config.model!r} needs labels, and {data.name} has none")
    num_classes = int(max(int(data.train_labels.max()), int(data.val_labels.max()), int(data.test_labels.max()))) + 1
    if config.model == "conditional":
        if config.context == "labels":
            parts = [(s, one_hot(l, num_classes)) for s, l in
                     ((data.train, data.train_labels), (data.val, data.val_labels), (data.test, data.test_labels))]
        else:
            if data.image_shape is None or tuple(data.image_shape)[-2:] != (28, 28):
                raise ConfigError(f"context = 'quadrants' needs 28x28 images; {data.name} has image_shape={data.image_shape}")
            parts = [split_quadrants(s, config.visible_quadrants) for s in (data.train, data.val, data.test)]
        module = build_model(config, parts[0][0].shape[1], parts[0][1].shape[1])
        train, val, test = (module.pack(x, c) for x, c in parts)
        return Program(config, module, module.packed_model, module.packed_guide, train, val, binarized(test),
                       data.train_labels, data.val_labels, data.test_labels)
    module = build_model(config, data.x_dim, num_classes)
    lab, unl = split_labelled(data.train_labels, config.labels_per_class, num_classes, seed=config.seed)
    return Program(config, module, module.model, module.guide, data.train, data.val, binarized(data.test),
                   data.train_labels, data.val_labels, data.test_labels, lab, unl)


__all__ = ["ENCODERS", "DECODERS", "PRIORS", "OBJECTIVES", "MODELS", "MODEL_NAMES", "build_vae", "build_objective", "build_model",
           "build_program", "Program"]
