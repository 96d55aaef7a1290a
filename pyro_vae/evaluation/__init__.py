"""Held-out evaluation: importance-sampled log-likelihood per datapoint, bits per dimension."""

from .log_likelihood import LogLikelihood, bits_per_dim, log_likelihood, plan_chunks

__all__ = ["LogLikelihood", "log_likelihood", "bits_per_dim", "plan_chunks"]
