"""Checkpointer: save the full training state after every epoch, durably and without stalling training."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._callback import Callback, on
from .._checkpoint import training_state
from .._checkpoint_files import write_latest
from .._durable import fsync_dir, save_file
from .._exceptions import CheckpointError
from ..events import EpochBegin, EpochEnd, Event, FitEnd
from ..phases import AbstractTrainingPhase, Phase, TrainingPhase
from .._access import Read
from ._monitor import monitored_epoch_value


_MODES = ("min", "max")
EXTENSION = ".pt"


@dataclass(frozen=True)
class _Job:
    """What the writer needs: produced on the training thread, consumed by the (detached) handler."""

    path: Path
    state: dict[str, Any]
    remove: tuple[str, ...]


def _format_value(value: float | None) -> str:
    return "nan" if value is None else repr(float(value))


class Checkpointer(Callback):
    """Save a checkpoint of the full training state after every epoch into ``folder``.

    Files are named ``checkpoint_epoch_{epoch:03d}_{monitor}_{value}.pt``, e.g.
    ``checkpoint_epoch_007_loss_0.1234.pt`` (``epoch`` counts completed training epochs, across fits and
    resumes; ``value`` is the monitored metric, ``repr``-formatted: a loss of ``1e5`` reads ``100000.0``). A file
    named ``latest`` holds the name of the newest checkpoint; pass the folder or a file to ``fit(..., resume=)``
    or :meth:`asyncloop.Learner.load_checkpoint` to go on from there.

    A checkpoint holds everything a fit needs to continue exactly: model and optimizer state, every stateful
    callback's ``state_dict()`` (the scheduler's position, early-stopping state, this callback's list of files),
    the ``cbstate`` histories (epoch/step counters, metrics, hyperparameters) and the RNG states. It is taken
    when the epoch is over, validation included: at the next training ``EpochBegin``, or at ``FitEnd`` after the
    last epoch (also when early stopping ended the fit).

    ``keep_top_k=k`` keeps only the ``k`` best checkpoints by ``monitor`` (``mode="min"``: lowest is best) and
    always the most recent one, even when it is the worst; the default keeps all. ``monitor`` names a metric
    :class:`asyncloop.Metrics` records for ``phase`` (default: the training loss, as FluxTraining; use
    ``phase=ValidationPhase`` for validation metrics). An unknown name is an error at the first checkpoint.

    Durability: each file is written to a temporary file in ``folder``, flushed, fsynced and renamed, and the
    folder is fsynced; only then does ``latest`` move and are pruned files deleted. A crash leaves complete files
    only, and files this callback did not write are never deleted. Files load with ``weights_only=True``.

    Detached: under :class:`asyncloop.ActorRunner` the training thread only copies the state (tensors cloned)
    and training goes on while a worker thread writes it. Its inbox holds at most 4 events, so at most two
    pending checkpoints are held in memory; the loop waits if writing falls further behind.

    Example::

        learner = Learner(model, loss_fn, data=data, callbacks=[Checkpointer("ckpt", keep_top_k=3)])
        trio.run(fit, learner, 10)
        # later, in a new process, with the learner built the same way:
        trio.run(functools.partial(fit, learner, 5, resume="ckpt"))
    """

    state_access = {"model": Read(), "optimizer": Read(), "cbstate": Read(), "callbacks": Read()}
    detached = True
    inbox_size = 4

    def __init__(
        self,
        folder: str | os.PathLike[str],
        keep_top_k: int | None = None,
        *,
        monitor: str = "Loss",
        mode: str = "min",
        phase: type[Phase] = TrainingPhase,
    ) -> None:
        if keep_top_k is not None and (
            isinstance(keep_top_k, bool) or not isinstance(keep_top_k, int) or keep_top_k < 1
        ):
            raise ValueError(f"Checkpointer: keep_top_k must be None or an int >= 1, got {keep_top_k!r}")
        if not isinstance(monitor, str) or not re.search(r"[A-Za-z0-9]", monitor):
            raise TypeError(f"Checkpointer: monitor must be a metric name such as 'Loss', got {monitor!r}")
        if mode not in _MODES:
            raise ValueError(f"Checkpointer: mode must be 'min' or 'max', got {mode!r}")
        if not (isinstance(phase, type) and issubclass(phase, Phase)):
            raise TypeError(f"Checkpointer: phase must be a Phase class such as ValidationPhase, got {phase!r}")
        self.folder = Path(folder)
        _check_folder(self.folder)
        self.keep_top_k = keep_top_k
        self.monitor = monitor
        self.mode = mode
        self.phase = phase()
        self._tag = re.sub(r"[^A-Za-z0-9]+", "_", monitor).strip("_").lower()
        self._pending: int | None = None
        self._saved: list[tuple[int, float | None, str]] = []

    # -- decisions (training thread) -------------------------------------------------------------------------
    def snapshot(self, event: Event, phase: Phase, learner: Any, *, copy: bool = True) -> _Job | None:
        """On the training thread: decide whether a checkpoint is due and take the state it needs (cloned when
        ``copy``: a detached write happens while training goes on)."""
        return self._plan(event, phase, learner, clone=copy)

    def _plan(self, event: Event, phase: Phase, learner: Any, clone: bool) -> _Job | None:
        if isinstance(event, EpochEnd):
            history = learner.cbstate.get("history")
            if history is None:
                raise RuntimeError(
                    "Checkpointer numbers checkpoints by the epochs the Recorder counts, and there is no Recorder; "
                    "add Recorder() (a default callback)"
                )
            self._pending = history[phase].epochs
            return None
        if self._pending is None:
            return None
        epoch, self._pending = self._pending, None
        value = monitored_epoch_value(learner.cbstate, self.phase, self.monitor, who="Checkpointer")
        name = f"checkpoint_epoch_{epoch:03d}_{self._tag}_{_format_value(value)}{EXTENSION}"
        entries = [e for e in self._saved if e[2] != name] + [(epoch, value, name)]
        kept = self._retain(entries)
        remove = tuple(e[2] for e in entries if e not in kept)
        self._saved = kept
        return _Job(self.folder / name, training_state(learner, clone=clone), remove)

    def _rank(self, entry: tuple[int, float | None, str]) -> tuple[int, float, int]:
        epoch, value, _ = entry
        if value is None or value != value:  # missing or NaN: worst
            return (1, 0.0, epoch)
        return (0, value if self.mode == "min" else -value, epoch)

    def _retain(self, entries: list[tuple[int, float | None, str]]) -> list[tuple[int, float | None, str]]:
        if self.keep_top_k is None:
            return entries
        best = sorted(entries, key=self._rank)[: self.keep_top_k]
        return [e for e in entries if e in best or e is entries[-1]]

    # -- writing (a worker thread under ActorRunner, inline under LinearRunner) ------------------------------
    @on(EpochEnd, AbstractTrainingPhase)
    @on(EpochBegin, AbstractTrainingPhase)
    @on(FitEnd)
    def checkpoint(self, event: Event, phase: Phase, job: _Job | None) -> None:
        if job is not None:
            self._write(job)

    def _write(self, job: _Job) -> None:
        try:
            save_file(job.state, job.path)
            write_latest(self.folder, job.path.name)
        except OSError as exc:
            raise CheckpointError(
                f"Checkpointer could not write {job.path}: {exc.strerror or exc}; earlier checkpoints are untouched"
            ) from exc
        if job.remove:
            for name in job.remove:
                try:
                    (self.folder / name).unlink()
                except FileNotFoundError:
                    pass
            fsync_dir(self.folder)

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def paths(self) -> list[Path]:
        """The checkpoints this callback keeps, oldest first (written once ``fit`` has returned)."""
        return [self.folder / name for _, _, name in self._saved]

    @property
    def best(self) -> Path | None:
        """The kept checkpoint with the best monitored value (the earliest among equals), or ``None``."""
        if not self._saved:
            return None
        return self.folder / min(self._saved, key=self._rank)[2]

    def state_dict(self) -> dict[str, Any]:
        return {"saved": [list(e) for e in self._saved]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._saved = [(int(e), None if v is None else float(v), str(n)) for e, v, n in state["saved"]]
        self._pending = None

    def __repr__(self) -> str:
        top = "" if self.keep_top_k is None else f", keep_top_k={self.keep_top_k}"
        return f"Checkpointer({str(self.folder)!r}{top})"


def _check_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".asyncloop-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CheckpointError(
            f"Checkpointer cannot write to {folder}: {exc.strerror or exc}; pass a folder it can create and write to"
        ) from exc
