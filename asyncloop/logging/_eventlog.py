"""The msgpack event log: an append-only file of log records that survives crashes, and its readers.

File format, version 1 (all integers big-endian)::

    header   8 bytes   magic b"\\x89ALG\\r\\n\\x1a\\n"
             2 bytes   format version (uint16), currently 1
             2 bytes   reserved, zero
    record   4 bytes   N, the payload length (uint32), at most MAX_RECORD_SIZE
             N bytes   payload: one msgpack map (see asyncloop.logging._records for its keys)
             4 bytes   CRC-32 (zlib.crc32) of the 4 length bytes and the payload (uint32)
    record   ...

The magic's first byte is not ASCII and it contains CR LF, ^Z and LF, so text-mode copies and truncated
downloads are caught (PNG's trick). A writer appends each record with one ``write`` call; a crash or a kill
mid-write leaves at most one partial record at the end. A write that fails (disk full, file-size limit, quota) is
cut back to the last whole record before the error is raised, so records written later stay readable; if even
that cut fails, the writer stops appending until it is closed. Readers stop at the first record that is incomplete,
longer than ``MAX_RECORD_SIZE``, fails its checksum, or is not a record map: they yield only whole records, in
order, and never raise for the tail. Only a bad header (wrong magic, newer version) is an error,
:class:`EventLogFormatError`. A file that is empty or holds part of the header reads as an empty log.

Reopening a log for appending first cuts a torn tail off (a last record cut short by the end of the file), so
a log always stays a sequence of whole records. A corrupt record with more data after it (a length reaching past
the end of the file is a tail; a whole record anywhere after it is not) is not cut off: appending raises
:class:`EventLogFormatError` and leaves the file as it is.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any, BinaryIO

from .._exceptions import EventLogFormatError
from ..loggables import Loggable
from ._backend import LoggerBackend, default_run_name, is_training_step, training_step_test
from ._records import FORMAT_VERSION, control_record, is_record, make_record, open_value, pack, unpack


MAGIC = b"\x89ALG\r\n\x1a\n"
HEADER = MAGIC + FORMAT_VERSION.to_bytes(2, "big") + b"\x00\x00"
HEADER_SIZE = len(HEADER)
#: The largest payload a record may have (64 MiB); a longer length prefix marks a corrupt tail.
MAX_RECORD_SIZE = 64 * 1024 * 1024


def frame(payload: bytes) -> bytes:
    """``payload`` framed as one record: length, payload, CRC-32 of both."""
    head = len(payload).to_bytes(4, "big")
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + payload + crc.to_bytes(4, "big")


def _check_header(head: bytes, where: str) -> bool:
    """True for a whole valid header, False for a (possibly empty) prefix of one; raise for anything else."""
    if len(head) < HEADER_SIZE:
        if MAGIC.startswith(head[: len(MAGIC)]):
            return False
        raise EventLogFormatError(f"{where} is not an asyncloop event log (bad magic bytes)")
    if head[: len(MAGIC)] != MAGIC:
        raise EventLogFormatError(f"{where} is not an asyncloop event log (bad magic bytes)")
    version = int.from_bytes(head[len(MAGIC) : len(MAGIC) + 2], "big")
    if version != FORMAT_VERSION:
        raise EventLogFormatError(
            f"{where} is an event log of format version {version}; this asyncloop reads version "
            f"{FORMAT_VERSION}, upgrade asyncloop to read it"
        )
    return True


def _next_record(f: IO[bytes]) -> tuple[dict, int] | None:
    """Read one whole record at ``f``'s position: ``(record, bytes used)``, or None (incomplete or invalid)."""
    head = f.read(4)
    if len(head) < 4:
        return None
    size = int.from_bytes(head, "big")
    if size > MAX_RECORD_SIZE:
        return None
    rest = f.read(size + 4)
    if len(rest) < size + 4:
        return None
    payload = rest[:size]
    if zlib.crc32(payload, zlib.crc32(head)) != int.from_bytes(rest[size:], "big"):
        return None
    try:
        record = unpack(payload)
    except ValueError:
        return None
    if not is_record(record):
        return None
    return record, size + 8


class EventLogReader:
    """The whole records of an event log, in order; iteration stops cleanly at a torn or corrupt tail.

    ``source`` is a path or a binary file object positioned at the header. The header is checked here:
    :class:`EventLogFormatError` for a file that is not an event log. After iteration, :attr:`end` is the
    offset just past the last whole record and :attr:`trailing` the number of bytes after it (a torn tail).
    Use it as a context manager, or let iteration run to the end, to close a file it opened.
    """

    def __init__(self, source: str | os.PathLike[str] | BinaryIO) -> None:
        if isinstance(source, (str, os.PathLike)):
            self.name = os.fspath(source)
            self._file: IO[bytes] = open(source, "rb")  # noqa: SIM115 - closed by close()/exhaustion
            self._owned = True
        else:
            self.name = getattr(source, "name", "<stream>")
            self._file = source
            self._owned = False
        self.end = 0
        self.trailing = 0
        try:
            head = self._file.read(HEADER_SIZE)
            self._empty = not _check_header(head, str(self.name))
        except BaseException:
            self.close()
            raise
        self.end = len(head) if not self._empty else 0
        self.trailing = 0 if not self._empty else len(head)
        self._done = self._empty

    def __iter__(self) -> EventLogReader:
        return self

    def __next__(self) -> dict:
        if self._done:
            raise StopIteration
        found = _next_record(self._file)
        if found is None:
            self._finish()
            raise StopIteration
        record, size = found
        self.end += size
        return record

    def _finish(self) -> None:
        self._done = True
        try:
            self._file.seek(0, io.SEEK_END)
            self.trailing = self._file.tell() - self.end
        except (OSError, ValueError):  # pragma: no cover - unseekable stream
            self.trailing = 0
        self.close()

    def close(self) -> None:
        """Close the file if this reader opened it."""
        if self._owned:
            self._file.close()

    def __enter__(self) -> EventLogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(source: str | os.PathLike[str] | BinaryIO) -> EventLogReader:
    """Iterate over the records of an event log: ``for record in read_events("run.alog"): ...``.

    Raises :class:`EventLogFormatError` at once for a file that is not an event log; never for its tail.
    """
    return EventLogReader(source)


def follow(
    path: str | os.PathLike[str],
    *,
    poll_interval: float = 0.1,
    idle_timeout: float | None = None,
    until: Callable[[dict], bool] | None = None,
) -> Iterator[dict]:
    """Yield the records of the event log at ``path`` as they are appended, like ``tail -f``.

    Waits for the file to appear and its header to be written. Polls every ``poll_interval`` seconds. Stops
    after ``idle_timeout`` seconds without a new record (``None``: never), or right after yielding a record
    for which ``until(record)`` is true, e.g. ``until=lambda r: r["kind"] == "close"``. A partial record at the
    end is waited for, not skipped. If the file shrinks below what was read (rewritten from scratch), reading
    starts over at its first record.

    This is a blocking generator: in a trio program, run it in a thread.
    """
    if not poll_interval > 0:
        raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
    where = os.fspath(path)
    last = time.monotonic()

    def idle() -> bool:
        return idle_timeout is not None and time.monotonic() - last > idle_timeout

    f: IO[bytes] | None = None
    pos = 0
    try:
        while True:
            if f is None:
                try:
                    f = open(where, "rb")  # noqa: SIM115
                except FileNotFoundError:
                    if idle():
                        return
                    time.sleep(poll_interval)
                    continue
            if pos == 0:
                f.seek(0)
                if not _check_header(f.read(HEADER_SIZE), where):
                    if idle():
                        return
                    time.sleep(poll_interval)
                    continue
                pos = HEADER_SIZE
            f.seek(pos)
            found = _next_record(f)
            if found is not None:
                record, size = found
                pos += size
                last = time.monotonic()
                yield record
                if until is not None and until(record):
                    return
                continue
            if os.fstat(f.fileno()).st_size < pos:
                pos = 0
                continue
            if idle():
                return
            time.sleep(poll_interval)
    finally:
        if f is not None:
            f.close()


def _scan(f: IO[bytes], run: str) -> tuple[int, int, int | None]:
    """For the log open in ``f`` (header checked by the caller): the offset just past its last whole record, the
    next ``seq`` of ``run`` in it (0 if it has none) and the last training step ``run`` logged a point at (or None).
    """
    f.seek(HEADER_SIZE)
    end, seq, step = HEADER_SIZE, 0, None
    is_training = training_step_test()
    while (found := _next_record(f)) is not None:
        record, size = found
        end += size
        if record["run"] == run:
            seq = max(seq, record["seq"] + 1)
            if record["kind"] not in ("open", "close", "rewind") and is_training(tuple(record["group"])):
                step = record["index"] if step is None else max(step, record["index"])
    return end, seq, step


def _whole_record_at(data: bytes | memoryview, i: int) -> bool:
    """Whether a whole, valid record starts at offset ``i`` of ``data`` (and ends inside it)."""
    if i + 8 > len(data):
        return False
    size = int.from_bytes(data[i : i + 4], "big")
    if i + 8 + size > len(data):
        return False
    payload = data[i + 4 : i + 4 + size]
    if zlib.crc32(payload, zlib.crc32(data[i : i + 4])) != int.from_bytes(data[i + 4 + size : i + 8 + size], "big"):
        return False
    try:
        return is_record(unpack(bytes(payload)))
    except ValueError:
        return False


def _record_starts(limit: int) -> re.Pattern[bytes]:
    """Where a record may start: a length prefix of at most ``limit``, a msgpack map header, and one of the keys
    every record has as the first key (a writer packs ``kind`` first). Matching the key keeps the candidates few:
    checking each one costs a CRC over its claimed length, so candidates found in the random bytes of a torn image
    would make the scan quadratic."""
    top = min(limit >> 24, 255)
    keys = b"|".join(re.escape(bytes([0xA0 + len(k)]) + k.encode()) for k in ("kind", "t", "run", "seq", "name",
                                                                                "group", "index", "value"))
    return re.compile(rb"(?=[\x00-%s][\x00-\xff]{3}(?:[\x80-\x8f]|\xde[\x00-\xff]{2}|\xdf[\x00-\xff]{4})(?:%s))"
                      % (re.escape(bytes([top])), keys), re.DOTALL)


def _is_torn_tail(f: IO[bytes], end: int, size: int) -> bool:
    """Whether the bytes from ``end`` (just past the last whole record) to ``size`` (the end of the file) are at
    most one record that nothing follows: what a writer killed mid-write leaves. Anything else is corruption
    with more data after it, which must not be cut off: a length prefix reaching past the end of the file, or a
    whole record anywhere after ``end`` (one written after a partial record, e.g. by a writer that did not cut
    off what a failed write left)."""
    f.seek(end)
    head = f.read(4)
    if len(head) < 4:
        return True
    length = int.from_bytes(head, "big")
    if length > MAX_RECORD_SIZE or end + length + 8 < size:
        return False
    f.seek(end)
    tail = f.read(size - end)
    view = memoryview(tail)
    starts = (m.start() for m in _record_starts(MAX_RECORD_SIZE).finditer(tail, 1))
    return not any(_whole_record_at(view, i) for i in starts)


class EventLogBackend(LoggerBackend):
    """Append every loggable as a msgpack record to the event log at ``path`` (format: see the module docstring).

    Args:
        path: the log file. It (and its folder) is created if missing; an existing log is appended to
            (``mode="a"``, after cutting off a torn tail) or replaced (``mode="w"``, on the first open only).
            Appending to a file that is not an event log, or to a log with a corrupt record followed by more
            data, raises :class:`EventLogFormatError` and leaves the file as it is.
        run: the run name written in every record; default: a fresh :func:`default_run_name`.
        fsync: also ``os.fsync`` at every :meth:`flush` and :meth:`close` (survives power loss, not just a crash).

    Each opening (the first ``log_to`` after construction or :meth:`close`, normally once per fit) writes an
    ``open`` record and :meth:`close` a ``close`` record, so a log shows each fit's session. ``seq`` counts every
    record of the run in this file: an opening continues from the run's last ``seq`` in the file, also in another
    process (give the same ``run=``); another run in the same file counts from 0. A resumed fit replays the steps
    after its checkpoint: when a session's first training-step point (a ``Step`` group other than
    ``Step/ValidationPhase``) is at or before the last training step its run already has in the file, a
    ``rewind`` record ``{"step": k}`` (index ``k``) comes just before it; a reader keeps, for that run, only the
    records before the rewind whose training step is below ``k``. One writer per file: two backends appending to one path
    interleave whole records but their sessions overlap. Records are written with one unbuffered ``write`` each,
    so another process can :func:`follow` the log live.

    A failed write (disk full, file-size limit, quota: an ``OSError`` from :meth:`log_to`) never leaves a partial
    record behind: the file is cut back to its last whole record, the error raised, and the next ``log_to`` appends
    normally (the lost record takes no ``seq``). If the cut fails too, every later ``log_to`` raises ``OSError``
    saying so, without writing, until :meth:`close` (which then writes no ``close`` record); the next opening cuts
    the partial record off.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, run: str | None = None, mode: str = "a", fsync: bool = False
    ) -> None:
        if mode not in ("a", "w"):
            raise ValueError(f"mode must be 'a' (append) or 'w' (replace), got {mode!r}")
        if run is not None and not isinstance(run, str):
            raise TypeError(f"run must be a str or None, got {run!r}")
        self.path = os.fspath(path)
        self.run = run if run is not None else default_run_name()
        self.fsync = bool(fsync)
        self._replace = mode == "w"
        self._file: IO[bytes] | None = None
        self._seq = 0
        self._session_records = 0
        self._last_step: int | None = None  # the last training step of this run in the file, when it was opened
        self._rewind_checked = False  # whether this session's first training-step point has been seen
        self._stopped: str | None = None  # why appending stopped (a partial record could not be cut off)
        self._lock = threading.Lock()

    # -- writing ---------------------------------------------------------------------------------------------
    def log_to(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...] = ()) -> None:
        with self._lock:
            if self._file is None:
                self._open()
            if not self._rewind_checked and is_training_step(group):
                self._rewind_checked = True
                if self._last_step is not None and index <= self._last_step:
                    self._write({**control_record("rewind", {"step": index}, run=self.run, seq=self._seq),
                                 "index": index})
            self._write(make_record(loggable, name, index, group, run=self.run, seq=self._seq))

    def _write(self, record: dict) -> None:
        if self._stopped is not None:
            raise OSError(self._stopped)
        payload = pack(record)
        if len(payload) > MAX_RECORD_SIZE:
            raise ValueError(
                f"a {record['kind']} record of {len(payload)} bytes exceeds the event log's limit of "
                f"{MAX_RECORD_SIZE} bytes; log a smaller {record['kind']}"
            )
        f = self._file
        assert f is not None
        data = memoryview(frame(payload))
        size = len(data)
        start = os.fstat(f.fileno()).st_size
        try:
            while data:
                written = f.write(data)
                data = data[written:]
        except BaseException as exc:
            self._cut_back(f, start, size, exc)
            raise
        self._seq += 1
        self._session_records += 1

    def _cut_back(self, f: IO[bytes], start: int, size: int, error: BaseException) -> None:
        """After a failed write of a ``size``-byte record that began at offset ``start``: cut off what it left.

        A partial record must never stay in the middle of the log (readers stop there, and reopening might take
        the records after it for a torn tail). If the file cannot be cut back to ``start``, or grew by more than
        this record (another writer), stop appending: every later write raises until :meth:`close`.
        """
        try:
            now = os.fstat(f.fileno()).st_size
            if now == start:
                return
            if not start < now <= start + size:
                raise OSError(f"the file is {now} bytes, the record began at byte {start}: another writer?")
            os.ftruncate(f.fileno(), start)
        except OSError as cut:
            self._stopped = (
                f"{self.path}: a write failed ({error}) and the partial record it left could not be cut off ({cut}); "
                f"this EventLogBackend stopped appending, so no record lands behind it. close() it and log again: "
                f"reopening cuts the partial record off"
            )
            raise OSError(self._stopped) from error

    def _open(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        seq, last_step = 0, None
        if self._replace or not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            with open(self.path, "wb") as f:
                f.write(HEADER)
            self._replace = False
        else:
            with open(self.path, "r+b") as f:
                if not _check_header(f.read(HEADER_SIZE), self.path):
                    f.seek(0)
                    f.truncate()
                    f.write(HEADER)
                end, seq, last_step = _scan(f, self.run)
                size = f.seek(0, io.SEEK_END)
                if size > end:
                    if not _is_torn_tail(f, end, size):
                        raise EventLogFormatError(
                            f"{self.path} has a corrupt record at byte {end}, followed by more data "
                            f"({size - end} bytes to the end of the file); appending would cut that data off, so "
                            f"the file was left as it is. Log with mode='w' to start a new log there, or copy the "
                            f"readable records (read_events() stops at byte {end}) to a new log and append to that"
                        )
                    f.truncate(end)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed by close()
        self._session_records = 0
        self._seq, self._last_step, self._rewind_checked = seq, last_step, False
        try:
            self._write(control_record("open", open_value(), run=self.run, seq=self._seq))
        except BaseException:  # no session without its open record: the next log_to opens afresh
            f, self._file, self._stopped = self._file, None, None
            f.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Records are written unbuffered; with ``fsync=True`` this also forces them to disk."""
        with self._lock:
            if self._file is not None and self.fsync:
                os.fsync(self._file.fileno())

    def close(self) -> None:
        """Write a ``close`` record and close the file (idempotent; the next ``log_to`` reopens it).

        After a failed write that left a partial record (see :meth:`log_to`), no ``close`` record is written; the
        next opening cuts the partial record off.
        """
        with self._lock:
            f = self._file
            if f is None:
                return
            try:
                if self._stopped is None:
                    self._write(control_record("close", {"records": self._session_records + 1}, run=self.run,
                                               seq=self._seq))
                    if self.fsync:
                        os.fsync(f.fileno())
            finally:
                self._file = None
                self._stopped = None
                f.close()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled (a process actor's copy): the copy starts closed, with a lock of its own.
        state = dict(vars(self))
        del state["_lock"]
        state["_file"] = None
        state["_stopped"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EventLogBackend({self.path!r}, run={self.run!r})"
