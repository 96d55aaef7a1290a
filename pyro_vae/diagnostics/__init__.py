"""Per-datapoint diagnostics for any Pyro model/guide pair with a data plate.

Which one should I use?

=================================  ===========================================================
question                            function
=================================  ===========================================================
Can the amortized posterior be      :func:`importance_diagnostics` / :func:`psis_khat` — Pareto k̂
trusted for *this* datapoint?       and ESS of p(x, z)/q(z|x) per datapoint, bands at 0.5 / 0.7
How much of the bound's gap is      :func:`inference_gaps` — amortization and approximation gaps
the encoder's fault?                (Gaussian guides), by per-datapoint refinement
Does the model use its latents?     :func:`latent_diagnostics` — KL per dim, active units,
                                    I(x; z), posterior-collapse flag
Is q(z|x) calibrated?               :func:`sbc` — simulation-based calibration rank histograms
Does the model reproduce the data?  :func:`predictive_check` — prior / posterior predictive checks
Which model predicts held-out       :func:`compare_models` — elpd table with paired SEs, k̂ warnings
data best?
How noisy is an objective's         :func:`vae_gradient_snr` / :func:`gradient_snr` — signal-to-
gradient?                           noise ratio E g / std g of encoder and decoder weights
ArviZ plots and summaries           :func:`to_inference_data` (+ :func:`elpd_data` for ``az.plot_khat``)
=================================  ===========================================================

Every per-datapoint function is called as ``f(vae, x)``, ``f((model, guide), x)`` or
``f(model, guide, x)``, is vectorized over datapoints and samples, and keeps each chunk's working
set under ``memory_budget`` bytes (default 1 GiB). See ``docs/diagnostics.md`` for how to read them.
"""

from ._common import DiagnosticWarning, NonFiniteWeightWarning, SampleSizeWarning
from .arviz_export import elpd_data, to_inference_data
from .checks import STATISTICS, PredictiveCheck, SBCResult, StatisticCheck, predictive_check, sbc
from .compare import KhatWarning, compare_models, markdown_table
from .figures import kl_per_dim_plot, ppc_plot, sbc_plot
from .gaps import InferenceGaps, inference_gaps
from .importance import (
    KHAT_GOOD,
    KHAT_OK,
    ImportanceDiagnostics,
    importance_diagnostics,
    khat_threshold,
    pareto_khat,
    psis_khat,
    samples_needed,
    tail_length,
)
from .latent import LatentDiagnostics, latent_diagnostics
from .snr import GradientMoments, gradient_moments, gradient_snr, summarize_snr, vae_gradient_snr

__all__ = [
    # importance
    "psis_khat",
    "importance_diagnostics",
    "ImportanceDiagnostics",
    "pareto_khat",
    "khat_threshold",
    "tail_length",
    "samples_needed",
    "KHAT_GOOD",
    "KHAT_OK",
    # gaps
    "inference_gaps",
    "InferenceGaps",
    # latent
    "latent_diagnostics",
    "LatentDiagnostics",
    # gradient SNR
    "vae_gradient_snr",
    "gradient_snr",
    "gradient_moments",
    "GradientMoments",
    "summarize_snr",
    # ArviZ
    "to_inference_data",
    "elpd_data",
    # comparison
    "compare_models",
    "markdown_table",
    # workflow
    "predictive_check",
    "PredictiveCheck",
    "StatisticCheck",
    "STATISTICS",
    "sbc",
    "SBCResult",
    # figures
    "kl_per_dim_plot",
    "sbc_plot",
    "ppc_plot",
    # warnings
    "DiagnosticWarning",
    "SampleSizeWarning",
    "NonFiniteWeightWarning",
    "KhatWarning",
]
