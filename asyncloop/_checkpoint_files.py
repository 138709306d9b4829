"""Checkpoint folders: the ``latest`` pointer a :class:`asyncloop.Checkpointer` keeps, and reading a checkpoint
given its file or its folder.

``latest`` holds one plain file name (no path separator, not ``.`` or ``..``) of a regular file that resolves
inside the folder. Anything else (``../x``, an absolute path, a symlink leading out, a FIFO or device) is refused
with :class:`CheckpointError` before any checkpoint is opened: a crafted folder cannot make a resume read files
elsewhere or block forever.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._durable import atomic_write, load_file, open_regular
from ._exceptions import CheckpointError

#: Name of the pointer file a :class:`asyncloop.Checkpointer` keeps next to its checkpoints.
LATEST = "latest"

#: Longest ``latest`` file read; a checkpoint name is far shorter.
_MAX_POINTER = 4096


def write_latest(folder: Path, name: str) -> None:
    """Point ``folder``'s ``latest`` file at the checkpoint ``name`` (atomically: readers see the old or the new)."""
    atomic_write(folder / LATEST, lambda f: f.write(f"{name}\n".encode()))


def is_plain_name(name: str) -> bool:
    """Whether ``name`` names a file directly inside a folder: no separator, not ``.``/``..``, no NUL or newline."""
    separators = {"/", os.sep, os.altsep or "/", "\0", "\n", "\r"}
    return 0 < len(name) <= 255 and name not in (".", "..") and not any(c in separators for c in name)


def latest_checkpoint(folder: Path) -> Path:
    """The checkpoint ``folder``'s ``latest`` pointer names, checked to be a plain name resolving inside ``folder``.

    The pointer is read without blocking (a FIFO or device is refused, see :func:`open_regular`). A missing or
    unreadable pointer, or one holding anything but such a name, raises :class:`CheckpointError` naming it and
    what to do. Whether the checkpoint itself exists and is a regular file is :func:`load_file`'s check.
    """
    pointer = folder / LATEST

    def refuse(kind: str) -> CheckpointError:
        return CheckpointError(
            f"{pointer} is a {kind}, not a pointer file; delete it and pass the path of a checkpoint file"
        )

    try:
        with open_regular(pointer, refuse) as f:
            raw = f.read(_MAX_POINTER + 1)
    except FileNotFoundError:
        raise CheckpointError(
            f"{folder} is a folder without a {LATEST!r} pointer file; pass the path of a checkpoint file"
        ) from None
    except OSError as exc:
        raise CheckpointError(
            f"cannot read {pointer}: {exc.strerror or exc}; pass the path of a checkpoint file"
        ) from exc
    name = raw.decode("utf-8", errors="replace").strip()
    if len(raw) > _MAX_POINTER or not is_plain_name(name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise CheckpointError(
            f"{pointer} must hold the name of a checkpoint file in {folder}, but holds {shown!r}; write the name of "
            f"one of its checkpoints there, or pass the path of a checkpoint file"
        )
    path = folder / name
    resolved = path.resolve()
    if resolved.parent != folder.resolve():
        raise CheckpointError(
            f"{pointer} names {name!r}, which leads outside {folder} (to {resolved}); pass the path of that "
            f"checkpoint file itself if you trust it"
        )
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a file written by asyncloop safely (``torch.load(weights_only=True)``) and return its contents.

    A folder means the checkpoint its ``latest`` pointer names (see :func:`latest_checkpoint`: only a plain
    file name inside the folder is followed). A missing, truncated or corrupted file, a FIFO or device, or one
    that needs code to load raises :class:`CheckpointError` naming the file; nothing on disk is changed.
    """
    path = Path(path)
    if path.is_dir():
        path = latest_checkpoint(path)
    return load_file(path)
