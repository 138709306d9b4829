"""CSVBackend: one row per logged number, for spreadsheets and ``pandas.read_csv``."""

from __future__ import annotations

import csv
import os
import time
from typing import IO, Any

from ..loggables import Loggable, Value
from ._backend import LazyResource, LoggerBackend, default_run_name


#: The header of every file :class:`CSVBackend` writes.
CSV_COLUMNS = ("run", "phase", "unit", "index", "name", "value", "tag", "time")


class CSVBackend(LoggerBackend):
    """Append one CSV row per logged :class:`~asyncloop.loggables.Value`; other loggables are skipped.

    Columns (:data:`CSV_COLUMNS`):

    * ``run`` -- the run name (``run=``, default a fresh :func:`default_run_name`), so several fits can share a file;
    * ``phase`` -- for groups of three parts ``(unit, phase, category)``, the middle one (``"TrainingPhase"``),
      else empty (e.g. hyperparameters, grouped ``("Step", "HParams")``);
    * ``unit`` -- ``"step"`` or ``"epoch"`` when the group starts with ``"Step"``/``"Epoch"``, else empty;
    * ``index`` -- the step or epoch number; ``name`` -- e.g. ``"Loss"``; ``value`` -- the number;
    * ``tag`` -- group and name joined by ``/`` as in TensorBoard (tells a trace from a metric of the same name);
    * ``time`` -- Unix seconds when the row was written.

    ``pandas.read_csv(path)`` reads the file. The file and its folder are created when the first row is logged;
    an existing file is appended to if it has this header (else
    ``ValueError``); every row is flushed as it is written, so the file can be read while training runs.
    """

    def __init__(self, path: str | os.PathLike[str], *, run: str | None = None) -> None:
        if run is not None and not isinstance(run, str):
            raise TypeError(f"run must be a str or None, got {run!r}")
        self.path = os.fspath(path)
        self.run = run if run is not None else default_run_name()
        self._out: LazyResource[tuple[IO[str], Any]] = LazyResource(self._open, flush=_flush, close=_close)

    def _open(self) -> tuple[IO[str], Any]:
        """The file opened for appending (its header checked, or written) and a ``csv.writer`` on it."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        exists = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if exists:
            with open(self.path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            if header is None or tuple(header) != CSV_COLUMNS:
                raise ValueError(
                    f"{self.path} exists and its header is not {','.join(CSV_COLUMNS)}; "
                    f"log to a new file or move this one away"
                )
        file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
        writer = csv.writer(file)
        if not exists:
            writer.writerow(CSV_COLUMNS)
        return file, writer

    def log_to(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...] = ()) -> None:
        if not isinstance(loggable, Value):
            return
        unit = group[0].lower() if group and group[0] in ("Step", "Epoch") else ""
        phase = group[1] if len(group) == 3 else ""
        row = (self.run, phase, unit, index, name, loggable.data, "/".join((*group, name)), time.time())
        with self._out.lock:
            file, writer = self._out.use()
            writer.writerow(row)
            file.flush()

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        """Close the file (idempotent; the next ``log_to`` reopens it for appending)."""
        self._out.close()

    def __repr__(self) -> str:
        return f"CSVBackend({self.path!r}, run={self.run!r})"


def _flush(out: tuple[IO[str], Any]) -> None:
    out[0].flush()


def _close(out: tuple[IO[str], Any]) -> None:
    out[0].close()
