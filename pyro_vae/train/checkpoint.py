"""Atomic, safe checkpoints.

Writes go to a temporary file in the same directory, are flushed to disk, then renamed over
the target (``os.replace`` is atomic on POSIX and Windows), and the directory is fsynced so the
rename itself survives a power cut: a crash leaves either the old checkpoint or the new one, never a
half-written file (at worst a ``.NAME.*.tmp`` file, which the next ``pyro-vae train`` on the run
removes). Files are created with the permissions the umask gives (``0666 & ~umask``), like any
other file the user writes. Loading uses ``weights_only=True``, so
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


#: suffix of the temporary files of :func:`atomic_write_bytes` (``.NAME.<8 random characters>.tmp``)
TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_and_sync(f: Any, data: bytes, target: Path) -> None:
    """Write and flush ``data`` to the temp file of ``target`` (the place tests inject faults: ENOSPC, EROFS)."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so that renames inside it are durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename + fsync of the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp creates 0600
            except (OSError, AttributeError):  # pragma: no cover - e.g. Windows
                pass
            _write_and_sync(f, data, path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


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
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError, IndexError,
            KeyError, UnicodeDecodeError, ImportError) as e:  # torch raises any of these for a damaged file
        raise CheckpointError(
            f"{path} is not a readable pyro_vae checkpoint (corrupt, truncated, or it stores objects that "
            f"safe loading refuses): {(str(e).splitlines() or [type(e).__name__])[0][:200]}. Retrain, or restore the file from a backup"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a pyro_vae checkpoint (missing format tag {FORMAT!r}); "
            "point at a run directory written by pyro_vae"
        )
    version = state.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path} has a malformed format version ({version!r}); the file is damaged: retrain, "
                              "or restore it from a backup")
    if version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this pyro_vae "
            f"understands ({VERSION}); upgrade pyro_vae"
        )
    model = state.get("model", {})
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise CheckpointError(f"{path} has a malformed 'model' entry (not a mapping of names to tensors); the file is "
                              "damaged: retrain, or restore it from a backup")
    return state


__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "TEMP_SUFFIX",
    "FORMAT",
    "VERSION",
]
