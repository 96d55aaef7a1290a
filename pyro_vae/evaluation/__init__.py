"""Held-out evaluation: log-likelihood per datapoint by importance sampling (IS) or annealed
importance sampling (AIS), the BDMC sandwich on simulated data, bits per dimension."""

from .annealing import AISResult, ais, schedule
from .bidirectional import BDMCResult, bdmc, simulate
from .log_likelihood import LogLikelihood, bits_per_dim, log_likelihood, plan_chunks

__all__ = ["LogLikelihood", "log_likelihood", "bits_per_dim", "plan_chunks", "ais", "AISResult", "schedule", "bdmc",
           "BDMCResult", "simulate"]
