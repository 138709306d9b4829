"""Files on disk: atomic, durable writes and safe loading.

* :func:`atomic_write` -- temporary file in the same folder, flush, fsync, rename, fsync the folder: a crash
  leaves the old file or the new one, never a torn one; the file gets the permissions ``open`` would give it
  (``0o666`` less the umask), not the temporary file's ``0o600`` (but a crash, e.g. SIGKILL, mid-write leaves the hidden
  temporary ``.{name}.XXXXXXXX.tmp``; :class:`asyncloop.Checkpointer` removes its own stale ones).
* :func:`save_file` / :func:`load_file` -- plain data (dicts, lists, tuples, numbers, strings, tensors) through
  ``torch.save`` / ``torch.load(..., weights_only=True)``: loading a file never runs code from it. A failed write
  (a full disk) and a file that cannot be loaded raise :class:`CheckpointError` naming the file and the cause.
* :func:`open_regular` -- open a file for reading without ever blocking on a FIFO or a device.

Knows nothing about what is saved; :mod:`asyncloop._checkpoint` and :mod:`asyncloop._model_io` decide that.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import stat
import tempfile
import zipfile
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


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells (Linux's ``/proc/self/status``); else
    set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically: ``write(file)`` into a temporary file next to it, fsync, rename, fsync the folder.

    The file's permissions are ``0o666`` less the umask, as for a file made by ``open`` (the temporary file is
    ``0o600`` until then). On any error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~current_umask())
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


def describe_write_error(exc: BaseException) -> str:
    """The cause of a failed write, in words: the ``OSError`` behind it if there is one, else the error itself.

    torch reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc...]`` with the ``OSError``
    (``No space left on device``, ``File too large``) as its context; that ``OSError`` is what a user needs.
    """
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        error = pending.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, OSError):
            return error.strerror or str(error) or type(error).__name__
        pending.extend(e for e in (error.__cause__, error.__context__) if e is not None)
    return f"{type(exc).__name__}: {exc}"


def save_file(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`); ``obj`` should be plain data.

    A failed write (a full disk, a file size limit, a folder gone) raises :class:`CheckpointError` naming
    ``path`` and the cause (chained as ``__cause__``); ``path`` is left as it was and no temporary file stays.
    """
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(
            f"could not write {path}: {describe_write_error(exc)}; the file is as it was; free disk space (or fix "
            f"the folder) and save again"
        ) from exc


_KINDS = (
    (stat.S_ISDIR, "folder"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def open_regular(path: Path, refuse: Callable[[str], CheckpointError]) -> IO[bytes]:
    """Open ``path`` for reading in binary mode if it is a regular file; else raise ``refuse(kind)``.

    Never blocks: the file is opened with ``O_NONBLOCK`` (a FIFO without a writer, which a plain ``open``
    waits on forever, opens at once) and checked with ``fstat`` before anything is read. ``kind`` is
    ``"folder"``, ``"FIFO"``, ``"socket"``, ``"character device"``, ``"block device"`` or ``"special file"``.
    ``OSError`` (a missing file, no permission) propagates.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise refuse(_kind(mode))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_CORRUPT = "the file is truncated or corrupted; load an earlier checkpoint instead"
_CODE_HINT = "load it with torch.load(weights_only=False) yourself only if you trust where it came from"
#: Largest pickle :func:`_code_in_pickle` reads to find out whether a refused file needs code.
_SCAN_LIMIT = 64 * 1024 * 1024
_IMPORTS = {"GLOBAL", "INST", "STACK_GLOBAL"}


def _pickle_bytes(f: IO[bytes]) -> bytes:
    """The pickle in the open file ``f``: its ``data.pkl`` if it is a torch zip file, else the file (bounded)."""
    f.seek(0)
    if zipfile.is_zipfile(f):
        with zipfile.ZipFile(f) as archive:
            name = next((n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"), None)
            if name is None:
                return b""
            with archive.open(name) as member:
                return member.read(_SCAN_LIMIT)
    f.seek(0)
    return f.read(_SCAN_LIMIT)


def _safe_globals() -> set[str]:
    """The globals torch's ``weights_only`` unpickler allows (``"torch.Size"``...); empty if torch hides them."""
    try:
        from torch import _weights_only_unpickler

        return set(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError, TypeError):  # a private API: other torch versions may differ
        return set()


def _code_in_pickle(f: IO[bytes]) -> str | None:
    """The first global the pickle in the open file ``f`` imports that torch does not allow
    (``"posix.system"``; ``""`` if unknown), or None if there is none.

    Parses the opcodes only (``pickletools.genops``): nothing is imported or called.
    """
    try:
        data = _pickle_bytes(f)
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    safe = _safe_globals()
    recent: list[str | None] = []  # what the opcodes pushed, as far as STACK_GLOBAL's two names are concerned
    memo: dict[int, str | None] = {}
    ops = pickletools.genops(io.BytesIO(data))
    while True:
        try:
            opcode, arg, _ = next(ops)
        except (StopIteration, ValueError):  # the end, or bytes that are no pickle (from here on)
            return None
        if opcode.name in _IMPORTS:
            if opcode.name == "STACK_GLOBAL":
                names = recent[-2:]
                known = len(names) == 2 and None not in names
                name = ".".join(names) if known else ""  # type: ignore[arg-type]
            else:
                name = str(arg).replace(" ", ".")
            if name not in safe:
                return name
            recent.append(None)
        elif opcode.name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = recent[-1] if recent else None
        elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(int(arg)))
        elif opcode.stack_after:  # FRAME, PROTO and the like push nothing
            recent.append(arg if isinstance(arg, str) else None)


_GLOBAL = re.compile(r"GLOBAL (\S+)")


def _needs_code(f: IO[bytes], message: str) -> str | None:
    """Why torch's ``weights_only`` unpickler refused the file ``f`` (already open: a path could have been
    swapped for a FIFO since): the global it needed (``""`` if unknown), or None if it did not need code (the
    bytes are no pickle it can read: a corrupted file)."""
    found = _GLOBAL.search(message)
    if found:
        return found.group(1).rstrip(".")
    if "call reduce" in message or "Can only create new object" in message or "Can only build" in message:
        return ""
    if "Unsupported operand" in message:  # a pickle protocol torch does not parse, or garbage: look inside
        return _code_in_pickle(f)
    return None


def load_file(path: str | os.PathLike[str]) -> Any:
    """Load ``path`` safely (``torch.load(weights_only=True)``, tensors on the CPU) and return its contents.

    A missing, truncated or corrupted file, a folder, a FIFO or device (never opened for a blocking read), or a
    file that holds objects needing code to load (nothing in it runs) raises :class:`CheckpointError` naming the
    file and what to do; nothing on disk is changed.
    """
    path = Path(path)

    def refuse(kind: str) -> CheckpointError:
        if kind == "folder":
            return CheckpointError(f"{path} is a folder, not a checkpoint file")
        return CheckpointError(f"{path} is a {kind}, not a checkpoint file; pass the path of a checkpoint file")

    try:
        f = open_regular(path, refuse)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except IsADirectoryError:
        raise refuse("folder") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}; check that the file is readable") from exc
    with f:
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            code = _needs_code(f, str(exc))
            if code is None:
                raise CheckpointError(f"cannot load {path}: {_CORRUPT}") from exc
            what = f" ({code})" if code else ""
            raise CheckpointError(
                f"cannot load {path}: it holds objects that need code to load{what}, and asyncloop loads only "
                f"plain data and tensors, so nothing in it ran; {_CODE_HINT}"
            ) from exc
        except Exception as exc:
            raise CheckpointError(f"cannot load {path}: {_CORRUPT}") from exc
