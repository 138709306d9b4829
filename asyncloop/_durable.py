"""Files on disk: atomic, durable writes and safe loading.

* :func:`atomic_write` -- temporary file in the same folder, flush, fsync, rename, fsync the folder: a crash
  leaves the old file or the new one, never a torn one.
* :func:`save_file` / :func:`load_file` -- plain data (dicts, lists, tuples, numbers, strings, tensors) through
  ``torch.save`` / ``torch.load(..., weights_only=True)``: loading a file never runs code from it.

Knows nothing about what is saved; :mod:`asyncloop._checkpoint` and :mod:`asyncloop._model_io` decide that.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from ._exceptions import CheckpointError


def _fsync(fd: int) -> None:
    # One place to fsync, so that tests can slow it down or make it fail.
    os.fsync(fd)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``folder`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        _fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically: ``write(file)`` into a temporary file next to it, fsync, rename, fsync the folder.

    On any error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            _fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def save_file(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`); ``obj`` should be plain data."""
    atomic_write(path, lambda f: torch.save(obj, f))


_CORRUPT = "the file is truncated or corrupted; load an earlier checkpoint instead"


def load_file(path: Path) -> Any:
    """Load ``path`` safely (``torch.load(weights_only=True)``, tensors on the CPU) and return its contents.

    A missing, truncated or corrupted file, a folder, or a file that needs code to load raises
    :class:`CheckpointError` naming the file; nothing on disk is changed.
    """
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file") from None
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise CheckpointError(f"cannot load {path}: {_CORRUPT}") from exc
        raise CheckpointError(
            f"cannot load {path}: it holds objects that need code to load, and asyncloop loads only plain data "
            f"and tensors; it was not written by asyncloop"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"cannot load {path}: {_CORRUPT}") from exc
