"""Training: ``train_step`` (one update), ``fit`` (the loop), atomic checkpoints."""

from .checkpoint import CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint
from .fit import History, StepInfo, collect_parameters, evaluate_bound, fit, train_step

__all__ = [
    "fit",
    "train_step",
    "evaluate_bound",
    "collect_parameters",
    "History",
    "StepInfo",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write_text",
]
