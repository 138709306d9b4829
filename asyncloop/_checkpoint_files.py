"""Checkpoint folders: the ``latest`` pointer a :class:`asyncloop.Checkpointer` keeps, and reading a checkpoint
given its file or its folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._durable import atomic_write, load_file
from ._exceptions import CheckpointError

#: Name of the pointer file a :class:`asyncloop.Checkpointer` keeps next to its checkpoints.
LATEST = "latest"


def write_latest(folder: Path, name: str) -> None:
    """Point ``folder``'s ``latest`` file at the checkpoint ``name`` (atomically: readers see the old or the new)."""
    atomic_write(folder / LATEST, lambda f: f.write(f"{name}\n".encode()))


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a file written by asyncloop safely (``torch.load(weights_only=True)``) and return its contents.

    A folder means the checkpoint its ``latest`` pointer names. A missing, truncated or corrupted file, or one
    that needs code to load, raises :class:`CheckpointError` naming the file; nothing on disk is changed.
    """
    path = Path(path)
    if path.is_dir():
        pointer = path / LATEST
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except OSError:
            raise CheckpointError(
                f"{path} is a folder without a {LATEST!r} pointer file; pass the path of a checkpoint file"
            ) from None
        path = path / name
    return load_file(path)
