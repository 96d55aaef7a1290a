"""pyro_vae: variational autoencoders as first-class Pyro probabilistic programs.

A Pyro ``model(x)`` declares the prior p(z) and the likelihood p_θ(x|z); a ``guide(x)``
declares the amortized encoder q_φ(z|x). Priors, encoders, decoders and objectives are small
modules that swap in one line; evaluation works on any model/guide pair with a data plate.
"""

from . import data, decoders, diagnostics, encoders, nn, objectives, priors
from .evaluation import LogLikelihood, bits_per_dim, log_likelihood
from .comparison import compare
from .diagnostics import to_inference_data
from .train import History, fit
from .vae import VAE

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "fit_distributed":  # needs the optional Lightning dependency
        from .train.lightning import fit_distributed

        return fit_distributed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "VAE",
    "data",
    "diagnostics",
    "to_inference_data",
    "decoders",
    "encoders",
    "nn",
    "objectives",
    "priors",
    "log_likelihood",
    "bits_per_dim",
    "LogLikelihood",
    "fit",
    "fit_distributed",
    "compare",
    "History",
    "__version__",
]
