"""Experiments over the library: :func:`compare_objectives` and its :class:`ComparisonResult`.

=====================  =====================================================================
module                 holds
=====================  =====================================================================
``compare``            :func:`compare_objectives`: one model trained per objective, measured
``result``             :class:`ComparisonResult` and :data:`COLUMNS`: tables, JSON, figures
``memory``             the peak-memory probe (fresh subprocesses, CPU)
=====================  =====================================================================

The measurements themselves are library functions (``pv.log_likelihood``,
``pv.diagnostics.vae_gradient_snr``, ``pv.diagnostics.latent_diagnostics``, ...); this package
only runs them side by side on identically seeded runs. ``pyro-vae compare`` is the CLI.
"""

from .compare import ACTIVE_UNIT_THRESHOLD, compare_objectives
from .result import COLUMNS, ComparisonResult

__all__ = ["compare_objectives", "ComparisonResult", "COLUMNS", "ACTIVE_UNIT_THRESHOLD"]
