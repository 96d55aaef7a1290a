"""Structured VAEs as first-class Pyro programs: each has ``model`` / ``guide`` methods with its
datapoints in ``pyro.plate("data")``, so :func:`pyro_vae.fit`, every objective,
:func:`pyro_vae.log_likelihood`, the diagnostics and :func:`pyro_vae.to_inference_data` take it
like any other program.

Which one should I use?

* :class:`HierarchicalVAE` — two or more stochastic layers z_1 .. z_L; ``inference="bottom_up"``
  is the IWAE paper's two-layer model, ``"top_down"`` the ladder VAE (usually the better bound
  and more active units in the upper layers).
* :class:`ConditionalVAE` — generate x given a context c given with every datapoint (one-hot
  labels, or the visible quadrants of an image); ``model(x, c)``.
* :class:`SemiSupervisedVAE` — M2: a discrete label, observed for a few datapoints and summed
  out exactly for the rest; train with :func:`fit_semisupervised`.

Implementing a new one:
    Write an ``nn.Module`` whose ``model(x, *context, num_data=None)`` and ``guide(...)`` open
    ``pyro_vae.vae.data_plate(x, num_data)`` once, announce their modules with
    ``pyro_vae.vae.declare_params`` and draw every site from a component that returns a
    distribution. Per-datapoint context arguments must have ``len(x)`` rows (then
    ``log_likelihood`` and the diagnostics slice them with x); refuse others with an error that
    names the argument.
"""

from .conditional import (
    ConditionalNormal,
    ConditionalVAE,
    broadcast_cat,
    check_context,
    check_labels,
    merge_quadrants,
    one_hot,
    quadrant_mask,
    split_quadrants,
)
from .hierarchical import INFERENCE, HierarchicalVAE, precision_weighted
from .semisupervised import (
    Classifier,
    SemiSupervisedHistory,
    SemiSupervisedVAE,
    accuracy,
    fit_classifier,
    fit_semisupervised,
    semisupervised_digits,
    split_labelled,
)

__all__ = [
    "HierarchicalVAE",
    "ConditionalVAE",
    "SemiSupervisedVAE",
    "Classifier",
    "ConditionalNormal",
    "INFERENCE",
    "accuracy",
    "broadcast_cat",
    "check_context",
    "check_labels",
    "fit_classifier",
    "fit_semisupervised",
    "merge_quadrants",
    "one_hot",
    "precision_weighted",
    "quadrant_mask",
    "semisupervised_digits",
    "split_labelled",
    "split_quadrants",
    "SemiSupervisedHistory",
]
