"""Per-datapoint, vectorized-particle traces of any Pyro model/guide pair (moved).

The trace plumbing lives in :mod:`pyro_vae.program` (site predicates, per-datapoint reduction,
the :class:`~pyro_vae.program.Particles` record and its producers); this module keeps the old
import path working.
"""

from .program import (  # noqa: F401
    PARTICLE_PLATE,
    ParticleTraces,
    PlateError,
    guess_max_plate_nesting,
    log_weights,
    particle_traces,
    site_log_prob,
)

__all__ = [
    "ParticleTraces",
    "PlateError",
    "PARTICLE_PLATE",
    "guess_max_plate_nesting",
    "particle_traces",
    "site_log_prob",
    "log_weights",
]
