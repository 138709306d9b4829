"""CSVBackend: one row per logged number, for spreadsheets and ``pandas.read_csv``."""

from __future__ import annotations

import csv
import os
import time
from functools import partial
from typing import IO, Any

from ..loggables import Loggable, Value
from ._backend import LazyResource, LoggerBackend, default_run_name
from ._hparams import HParams


#: The header of every file :class:`CSVBackend` writes.
CSV_COLUMNS = ("run", "phase", "unit", "index", "name", "value", "tag", "time")
#: The header of the configuration sidecar file (:attr:`CSVBackend.hparams_path`).
HPARAMS_COLUMNS = ("run", "stage", "name", "value", "time")


def hparams_path(path: str) -> str:
    """The sidecar file of a CSV log: ``runs.csv`` -> ``runs.hparams.csv`` (``runs`` -> ``runs.hparams.csv``)."""
    root = path[:-4] if path.lower().endswith(".csv") else path
    return f"{root}.hparams.csv"


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

    Configuration and hyperparameters (:class:`asyncloop.logging.HParams`, logged by :class:`asyncloop.LogConfig`)
    go to a sidecar file, :attr:`hparams_path` (``runs.csv`` -> ``runs.hparams.csv``), so that the ``value``
    column of the main file stays numeric. Its columns (:data:`HPARAMS_COLUMNS`) are ``run``, ``stage``
    (``"config"`` for the values logged at ``FitBegin``, ``"final"`` for the final metrics logged at ``FitEnd``),
    ``name`` (``"optimizer/lr"``, ``"ValidationPhase/Loss"``), ``value`` (a number or a string) and ``time``.

    ``pandas.read_csv(path)`` reads the file. The file and its folder are created when the first row is logged;
    an existing file is appended to if it has this header (else
    ``ValueError``); every row is flushed as it is written, so the file can be read while training runs.

    A resumed fit (``fit(..., resume=...)``) appends the rows of the steps it replays again, later in the file;
    keep the last row of each ``(run, tag, index)`` (pandas: ``df.drop_duplicates(["run", "tag", "index"],
    keep="last")``). Give the resumed fit the same ``run=`` to continue the run.
    """

    def __init__(self, path: str | os.PathLike[str], *, run: str | None = None) -> None:
        if run is not None and not isinstance(run, str):
            raise TypeError(f"run must be a str or None, got {run!r}")
        self.path = os.fspath(path)
        self.run = run if run is not None else default_run_name()
        #: The configuration sidecar file (see the class docstring).
        self.hparams_path = hparams_path(self.path)
        self._out: LazyResource[tuple[IO[str], Any]] = LazyResource(
            partial(_open_csv, self.path, CSV_COLUMNS), flush=_flush, close=_close)  # partial: it pickles
        self._hparams: LazyResource[tuple[IO[str], Any]] = LazyResource(
            partial(_open_csv, self.hparams_path, HPARAMS_COLUMNS), flush=_flush, close=_close)

    def _log_hparams(self, loggable: HParams) -> None:
        now = time.time()
        if loggable.metrics is None:
            rows = [(self.run, "config", key, value, now) for key, value in loggable.hparams.items()]
        else:
            rows = [(self.run, "final", key, value, now) for key, value in loggable.metrics.items()]
        with self._hparams.lock:
            file, writer = self._hparams.use()
            writer.writerows(rows)
            file.flush()

    def log_to(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...] = ()) -> None:
        if isinstance(loggable, HParams):
            self._log_hparams(loggable)
            return
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
        self._hparams.flush()

    def close(self) -> None:
        """Close the files (idempotent; the next ``log_to`` reopens them for appending)."""
        try:
            self._out.close()
        finally:
            self._hparams.close()

    def __repr__(self) -> str:
        return f"CSVBackend({self.path!r}, run={self.run!r})"


def _open_csv(path: str, columns: tuple[str, ...]) -> tuple[IO[str], Any]:
    """``path`` opened for appending (its header checked, or written) and a ``csv.writer`` on it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    exists = os.path.exists(path) and os.path.getsize(path) > 0
    if exists:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
        if header is None or tuple(header) != columns:
            raise ValueError(f"{path} exists and its header is not {','.join(columns)}; "
                             f"log to a new file or move this one away")
    file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
    writer = csv.writer(file)
    if not exists:
        writer.writerow(columns)
    return file, writer


def _flush(out: tuple[IO[str], Any]) -> None:
    out[0].flush()


def _close(out: tuple[IO[str], Any]) -> None:
    out[0].close()
