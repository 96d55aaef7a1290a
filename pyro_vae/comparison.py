"""Former home of the objective comparison; kept so that old imports (and pickles) keep working.

Where things moved:

* :func:`compare` -> :func:`pyro_vae.compare_objectives` (:mod:`pyro_vae.experiments.compare`;
  ``pv.compare`` is the same function), :class:`ComparisonResult` and :data:`COLUMNS` ->
  :mod:`pyro_vae.experiments.result`, the peak-memory probe -> :mod:`pyro_vae.experiments.memory`;
* the gradient-SNR estimator (:func:`gradient_snr`, :func:`gradient_moments`,
  :func:`vae_gradient_snr`, :class:`GradientMoments`, :func:`summarize_snr`) ->
  :mod:`pyro_vae.diagnostics.snr`, exported from :mod:`pyro_vae.diagnostics`;
* active units -> ``pyro_vae.diagnostics.latent_diagnostics(vae, x).num_active``;
* the data of a run (``load_data``, the scored test split) -> :mod:`pyro_vae.runs`.

New code should import from those modules.
"""

from __future__ import annotations

from typing import Any

from .diagnostics.snr import GradientMoments, gradient_moments, gradient_snr, summarize_snr, vae_gradient_snr
from .experiments.compare import ACTIVE_UNIT_THRESHOLD, UNSUPPORTED_KEYS, compare, compare_objectives
from .experiments.result import COLUMNS, ComparisonResult


def active_units(vae: Any, x: Any, threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[int, str]:
    """``(number of active units, how counted)``, as this module used to return: the count is
    ``pyro_vae.diagnostics.latent_diagnostics(vae, x, active_threshold=threshold).num_active``."""
    from .experiments.compare import _active_units

    return _active_units(vae, x, threshold), "pyro_vae.diagnostics.latent_diagnostics"


__all__ = ["compare", "compare_objectives", "ComparisonResult", "COLUMNS", "gradient_snr", "gradient_moments",
           "vae_gradient_snr", "GradientMoments", "summarize_snr", "active_units", "ACTIVE_UNIT_THRESHOLD",
           "UNSUPPORTED_KEYS"]
