"""Training: ``train_step`` (one update), the run state (``state``: history, early stopping,
checkpoints, metrics), ``fit`` (the loop) and atomic checkpoints."""

from .checkpoint import CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint
from .fit import StepInfo, collect_parameters, evaluate_bound, fit, train_step
from .state import History


def __getattr__(name: str):
    # Lightning is optional (extra "scale"): import it only when asked for
    if name in ("fit_distributed", "VAELightningModule"):
        from . import lightning

        return getattr(lightning, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "fit",
    "fit_distributed",
    "VAELightningModule",
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
