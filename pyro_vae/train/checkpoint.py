"""Atomic, safe checkpoints.

Writes go to a temporary file in the same directory, are flushed to disk, then renamed over
the target (``os.replace`` is atomic on POSIX and Windows): a crash leaves either the old
checkpoint or the new one, never a half-written file. Loading uses ``weights_only=True``, so
no code stored in a file ever runs; a corrupt or foreign file gets a :class:`CheckpointError`.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "pyro_vae-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, foreign or from an incompatible version."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save a checkpoint dictionary atomically, stamped with the format and version."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, unreadable, not a pyro_vae checkpoint, or from a
            newer format version. The message says which and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first (pyro-vae train) or check the run directory")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        raise CheckpointError(
            f"{path} is not a readable pyro_vae checkpoint (corrupt, truncated, or it stores objects that "
            f"safe loading refuses): {str(e).splitlines()[0][:200]}. Retrain, or restore the file from a backup"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a pyro_vae checkpoint (missing format tag {FORMAT!r}); "
            "point at a run directory written by pyro_vae"
        )
    if int(state.get("version", -1)) > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {state.get('version')}, newer than this pyro_vae "
            f"understands ({VERSION}); upgrade pyro_vae"
        )
    return state


__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write_bytes",
    "atomic_write_text",
    "FORMAT",
    "VERSION",
]
