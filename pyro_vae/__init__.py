"""pyro_vae: variational autoencoders as first-class Pyro probabilistic programs.

A Pyro ``model(x)`` declares the prior p(z) and the likelihood p_θ(x|z); a ``guide(x)``
declares the amortized encoder q_φ(z|x). Priors, encoders, decoders and objectives are small
modules that swap in one line; evaluation works on any model/guide pair with a data plate.
"""

from . import data, decoders, diagnostics, distributions, encoders, evaluation, experiments, models, nn, objectives, priors, program, runs
from ._kernels import settings
from .evaluation import LogLikelihood, bits_per_dim, log_likelihood
from .diagnostics import to_inference_data
from .experiments import compare_objectives
from .runs import load_run
from .train import History, fit
from .models import ConditionalVAE, HierarchicalVAE, SemiSupervisedVAE
from .vae import VAE

#: the former name of :func:`compare_objectives` (the same function)
compare = compare_objectives

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "fit_distributed":  # needs the optional Lightning dependency
        from .train.lightning import fit_distributed

        return fit_distributed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "VAE",
    "HierarchicalVAE",
    "ConditionalVAE",
    "SemiSupervisedVAE",
    "models",
    "evaluation",
    "data",
    "diagnostics",
    "to_inference_data",
    "decoders",
    "encoders",
    "experiments",
    "nn",
    "distributions",
    "program",
    "settings",
    "objectives",
    "priors",
    "log_likelihood",
    "bits_per_dim",
    "LogLikelihood",
    "fit",
    "fit_distributed",
    "compare_objectives",
    "compare",
    "load_run",
    "runs",
    "History",
    "__version__",
]
