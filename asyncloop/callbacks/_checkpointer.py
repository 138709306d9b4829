"""Checkpointer: save the full training state after every epoch, durably and without stalling training."""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._callback import Callback, Handler, on
from .._checkpoint import training_state
from .._snapshots import TensorPool
from .._checkpoint_files import LATEST, write_latest
from .._durable import describe_write_error, fsync_dir, save_file
from .._exceptions import CheckpointError
from ..events import EpochBegin, EpochEnd, Event, FitEnd, StepEnd
from ..phases import AbstractTrainingPhase, Phase, TrainingPhase
from .._access import Read
from ._monitor import latest_monitored_value, monitor_missing_error


_MODES = ("min", "max")

#: Metric names (lower-case substrings) known to grow as the model gets better: ``mode=None`` infers ``"max"``.
GROWING_METRICS = (
    "accuracy", "acc", "f1", "fbeta", "precision", "recall", "auc", "auroc", "average_precision", "iou",
    "jaccard", "dice", "r2", "specificity", "sensitivity",
)


def infer_mode(monitor: str, mode: str | None, who: str) -> str:
    """``mode`` itself when given; for ``None``, ``"max"`` if ``monitor`` names a metric known to grow
    (:data:`GROWING_METRICS`: accuracy, f1, precision, recall, auc, ...) else ``"min"``. A name containing
    ``loss`` or ``error`` is always ``"min"`` (``DiceLoss``)."""
    if mode is None:
        lowered = monitor.lower()
        if "loss" in lowered or "error" in lowered:
            return "min"
        return "max" if any(word in lowered for word in GROWING_METRICS) else "min"
    if mode not in _MODES:
        raise ValueError(f"{who}: mode must be 'min' or 'max', got {mode!r}")
    return mode
EXTENSION = ".pt"

_VALUE = r"-?(?:inf|nan|[0-9]+(?:\.[0-9]+)?(?:e[+-][0-9]+)?)"  # repr(float(value))
#: The names a Checkpointer gives its checkpoints: ``checkpoint_epoch_{epoch:03d}_{monitor}_{value}.pt``.
CHECKPOINT_NAME = re.compile(rf"checkpoint_epoch_[0-9]{{3,}}_[a-z0-9]+(?:_[a-z0-9]+)*_{_VALUE}\.pt")
#: Step checkpoints (``every_n_steps``): ``checkpoint_step_{steps:07d}.pt``, ``steps`` counting training steps.
STEP_NAME = re.compile(r"checkpoint_step_[0-9]{7,}\.pt")
#: The checkpoint ``save_last=True`` keeps: always the newest state.
LAST = "last.pt"
#: Its temporaries: ``.{checkpoint name}.XXXXXXXX.tmp`` and ``.latest.XXXXXXXX.tmp`` (written by ``atomic_write``
#: with ``tempfile.mkstemp``), and the ``.asyncloop-probe-XXXXXXXX`` its folder check makes.
TEMPORARY_NAME = re.compile(
    rf"\.(?:{CHECKPOINT_NAME.pattern}|{STEP_NAME.pattern}|{re.escape(LAST)}|{LATEST})\.[a-z0-9_]{{8}}\.tmp"
    r"|\.asyncloop-probe-[a-z0-9_]{8}"
)
#: When this process imported asyncloop: a temporary last modified before then belongs to no live writer here.
_STARTED = time.time()


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Delete the temporaries that Checkpointers killed mid-write (SIGKILL, power loss) left in ``folder``.

    Deleted: regular files (not symlinks, not folders) named exactly as a Checkpointer's temporaries
    (:data:`TEMPORARY_NAME`) and last modified before this process imported asyncloop. A temporary being written
    now, by this process or by another run that wrote to it since, is newer and stays; every other file stays.
    Best effort: a file that cannot be deleted is left. Returns the names deleted.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not TEMPORARY_NAME.fullmatch(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or info.st_mtime >= _STARTED:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    if removed:
        fsync_dir(folder)
    return removed


@dataclass(frozen=True)
class _Job:
    """What the writer needs: produced on the training thread, consumed by the (detached) handler."""

    path: Path
    state: dict[str, Any]
    remove: tuple[str, ...]
    last: bool = False
    #: The copied tensors by path (a detached copy): handed back to the pool once written.
    buffers: dict[Any, Any] | None = None


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

    ``keep_top_k=k`` keeps only the ``k`` best checkpoints by ``monitor`` (``mode="min"``: lowest is best;
    ``mode="max"``: highest; the default ``mode=None`` infers ``"max"`` for metrics known to grow, whose name
    contains accuracy, acc, f1, fbeta, precision, recall, auc, iou, jaccard, dice, r2, specificity or
    sensitivity, and ``"min"`` for anything else and for any name containing loss or error) and
    always the most recent one, even when it is the worst; the default keeps all. ``monitor`` names a metric
    :class:`asyncloop.Metrics` records for ``phase`` (default: the training loss, as FluxTraining; use
    ``phase=ValidationPhase`` for validation metrics). An unknown name is an error at the first checkpoint.

    Which phase's values: ``phase`` stands for its kind. The value is read under ``phase()`` itself when it
    recorded metrics, else under the one phase of the same kind (any ``AbstractTrainingPhase`` for a training
    class, any ``AbstractValidationPhase`` for a validation class) that ran, so ``phase=ValidationPhase`` follows
    a custom validation phase given to ``fit(phases=...)``. It is that phase's latest recorded value: with
    ``fit(val_every_n_epochs=n)`` an epoch without validation carries the last validation value, and epochs
    before the first validation are not saved. A monitor no such phase recorded during the whole fit is a
    ``ValueError`` at ``FitEnd`` naming the monitor, the phases it looked in and the metrics that exist (no
    ``nan`` file names); without :class:`asyncloop.Metrics` it is an error at the first checkpoint.

    Step checkpoints: ``every_n_steps=n`` also saves ``checkpoint_step_{steps:07d}.pt`` after every ``n``-th
    training step (``steps`` counts training steps across fits, as the Recorder does). Only the newest step
    checkpoint is kept (a rolling recovery point; ``keep_top_k`` ranks epoch checkpoints only). ``save_last=True``
    also writes ``last.pt`` with every checkpoint (epoch or step): always the newest state. ``latest`` names the
    newest checkpoint of either kind. A resume from a step checkpoint taken mid-epoch restores the state of that
    step and starts a *new* epoch: the interrupted epoch is not counted as done, so it runs again from its first
    batch (``fit(..., until_epoch=)`` then still ends at the same epoch number).

    Durability: each file is written to a temporary file in ``folder``, flushed, fsynced and renamed, and the
    folder is fsynced; only then does ``latest`` move and are pruned files deleted. A crash leaves complete files
    only. A write that fails (a full disk) ends the fit with :class:`asyncloop.CheckpointError` naming the file
    and the cause; earlier checkpoints and ``latest`` are as they were. Files load with ``weights_only=True``.

    What it deletes: pruning deletes only names of its own scheme (``checkpoint_epoch_..._{value}.pt``) directly
    inside ``folder``; a loaded state listing other names (``../x``, an absolute path, ``latest``) has them
    dropped with a warning. Building it, and loading its state (a resume), deletes the stale temporaries a
    killed writer left in ``folder`` (see :func:`remove_stale_temporaries`), nothing else.

    Detached: under :class:`asyncloop.ActorRunner` the training thread only copies the state (tensors cloned)
    and training goes on while a worker thread writes it. Its inbox holds at most 4 events, so at most two
    pending checkpoints are held in memory; the loop waits if writing falls further behind. Pitfall: once a
    copy is written its tensors are kept until the next checkpoint and the next copy goes into them (copying
    into memory already mapped is ~5x faster than a fresh clone, docs/performance.md), so a detached
    Checkpointer holds one copy of the model and optimizer state between checkpoints during a fit (dropped
    when the fit ends).

    Example::

        learner = Learner(model, loss_fn, data=data, callbacks=[Checkpointer("ckpt", keep_top_k=3)])
        trio.run(fit, learner, 10)
        # later, in a new process, with the learner built the same way:
        trio.run(functools.partial(fit, learner, 5, resume="ckpt"))
    """

    state_access = {"model": Read(), "optimizer": Read(), "cbstate": Read(), "callbacks": Read()}
    detached = True
    rank_zero_only = True  # distributed: rank 0 alone acts (docs/distributed.md)
    inbox_size = 4

    def __new__(cls, *args: Any, every_n_steps: int | None = None, **kwargs: Any) -> Checkpointer:
        if every_n_steps is not None and cls is Checkpointer:
            cls = _StepCheckpointer
        return super().__new__(cls)

    def __init__(
        self,
        folder: str | os.PathLike[str],
        keep_top_k: int | None = None,
        *,
        monitor: str = "Loss",
        mode: str | None = None,
        phase: type[Phase] = TrainingPhase,
        every_n_steps: int | None = None,
        save_last: bool = False,
    ) -> None:
        if keep_top_k is not None and (
            isinstance(keep_top_k, bool) or not isinstance(keep_top_k, int) or keep_top_k < 1
        ):
            raise ValueError(f"Checkpointer: keep_top_k must be None or an int >= 1, got {keep_top_k!r}")
        if not isinstance(monitor, str) or not re.search(r"[A-Za-z0-9]", monitor):
            raise TypeError(f"Checkpointer: monitor must be a metric name such as 'Loss', got {monitor!r}")
        mode = infer_mode(monitor, mode, "Checkpointer")
        if not (isinstance(phase, type) and issubclass(phase, Phase)):
            raise TypeError(f"Checkpointer: phase must be a Phase class such as ValidationPhase, got {phase!r}")
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1
        ):
            raise ValueError(f"Checkpointer: every_n_steps must be None or an int >= 1, got {every_n_steps!r}")
        if not isinstance(save_last, bool):
            raise TypeError(f"Checkpointer: save_last must be True or False, got {save_last!r}")
        self.every_n_steps = every_n_steps
        self.save_last = save_last
        self._step_saved: str | None = None
        self.folder = Path(folder)
        _check_folder(self.folder)
        self.keep_top_k = keep_top_k
        self.monitor = monitor
        self.mode = mode
        self.phase = phase()
        self._tag = re.sub(r"[^A-Za-z0-9]+", "_", monitor).strip("_").lower()
        self._pending: int | None = None
        self._saved: list[tuple[int, float | None, str]] = []
        self._warned = False
        self._pool = TensorPool()
        remove_stale_temporaries(self.folder)

    # -- decisions (training thread) -------------------------------------------------------------------------
    def snapshot(self, event: Event, phase: Phase, learner: Any, *, copy: bool = True) -> _Job | None:
        """On the training thread: decide whether a checkpoint is due and take the state it needs (cloned when
        ``copy``: a detached write happens while training goes on)."""
        return self._plan(event, phase, learner, clone=copy)

    def _plan(self, event: Event, phase: Phase, learner: Any, clone: bool) -> _Job | None:
        if isinstance(event, StepEnd):
            return self._plan_step(phase, learner, clone)
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
        cbstate = learner.cbstate
        if "metrics_epoch" not in cbstate:
            raise RuntimeError(
                f"Checkpointer names checkpoints by the monitored metric {self.monitor!r} that Metrics records, and "
                f"there is no Metrics; add Metrics() (a default callback)"
            )
        value = latest_monitored_value(cbstate, type(self.phase), self.monitor, who="Checkpointer")
        if value is None:
            if isinstance(event, FitEnd):
                raise monitor_missing_error(cbstate, type(self.phase), self.monitor, who="Checkpointer")
            return None  # the monitored phase has not run yet (validation every N epochs): later epochs are saved
        epoch, self._pending = self._pending, None
        name = f"checkpoint_epoch_{epoch:03d}_{self._tag}_{_format_value(value)}{EXTENSION}"
        entries = [e for e in self._saved if e[2] != name] + [(epoch, value, name)]
        kept = self._retain(entries)
        remove = tuple(e[2] for e in entries if e not in kept)
        self._saved = kept
        return self._job(self.folder / name, learner, clone, remove)

    def _plan_step(self, phase: Phase, learner: Any, clone: bool) -> _Job | None:
        steps = learner.cbstate.history[phase].steps
        if self.every_n_steps is None or steps % self.every_n_steps:
            return None
        name = f"checkpoint_step_{steps:07d}{EXTENSION}"
        previous, self._step_saved = self._step_saved, name
        remove = (previous,) if previous is not None and previous != name else ()
        return self._job(self.folder / name, learner, clone, remove)

    def _job(self, path: Path, learner: Any, clone: bool, remove: tuple[str, ...]) -> _Job:
        if not clone:
            return _Job(path, training_state(learner, clone=False), remove, self.save_last)
        pool = self._pool
        pool.begin()
        try:
            state = training_state(learner, clone=True, pool=pool)
        finally:
            buffers = pool.end()
        return _Job(path, state, remove, self.save_last, buffers)

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
            self._write(job, recycle=not isinstance(event, FitEnd))
        if isinstance(event, FitEnd):
            self._pool.clear()  # no copy outlives the fit

    def _write(self, job: _Job, recycle: bool = True) -> None:
        try:
            self._save(job)
        finally:
            if recycle:
                self._pool.recycle(job.buffers)  # written (or failed): nothing reads the copy any more

    def _save(self, job: _Job) -> None:
        target = job.path
        try:
            save_file(job.state, job.path)
            if job.last:
                target = self.folder / LAST
                save_file(job.state, target)
            target = self.folder / LATEST
            write_latest(self.folder, job.path.name)
        except (OSError, RuntimeError, CheckpointError) as exc:
            cause = exc.__cause__ if isinstance(exc, CheckpointError) and exc.__cause__ is not None else exc
            raise CheckpointError(
                f"Checkpointer could not write {target}: {describe_write_error(cause)}; earlier checkpoints and "
                f"{LATEST!r} are as they were; free disk space (or fix the folder), then resume from {self.folder}"
            ) from cause
        if job.remove:
            for name in job.remove:
                self._delete(name)
            fsync_dir(self.folder)

    def _owns(self, name: Any) -> bool:
        """Whether ``name`` is a checkpoint name of its scheme that resolves directly inside its folder."""
        if not isinstance(name, str) or not (CHECKPOINT_NAME.fullmatch(name) or STEP_NAME.fullmatch(name)):
            return False
        try:
            return (self.folder / name).resolve().parent == self.folder.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            return False

    def _delete(self, name: str) -> None:
        """Prune the checkpoint ``name``, if it is one of its own (else warn, once, and leave it)."""
        if not self._owns(name):
            self._warn_once(
                f"Checkpointer does not delete {name!r}: it is not a checkpoint it writes in {self.folder}; "
                f"further such names are skipped without a warning"
            )
            return
        try:
            (self.folder / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._warn_once(f"Checkpointer could not delete {self.folder / name}: {exc.strerror or exc}; it is left")

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, stacklevel=3)

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
        return {"saved": [list(e) for e in self._saved], "step_saved": self._step_saved}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take over the list of kept checkpoints from ``state`` (a resume), and delete stale temporaries.

        Names that are not of its scheme directly inside its folder (``../x``, an absolute path, ``latest``: a
        crafted or edited checkpoint) are dropped with one warning, so that pruning can never delete them.
        """
        saved = state["saved"]
        if not isinstance(saved, (list, tuple)) or not all(isinstance(e, (list, tuple)) and len(e) == 3 for e in saved):
            raise ValueError(
                f"Checkpointer: 'saved' must be a list of [epoch, value, name] entries, got {saved!r:.200}"
            )
        entries = [(int(e), None if v is None else float(v), n) for e, v, n in saved]
        foreign = [n for _, _, n in entries if not self._owns(n)]
        if foreign:
            warnings.warn(
                f"Checkpointer: the state it loaded lists files it does not write in {self.folder}: "
                f"{', '.join(map(repr, foreign))}; they are dropped from its list and never deleted "
                f"(was the checkpoint altered?)",
                stacklevel=2,
            )
        self._saved = [e for e in entries if self._owns(e[2])]
        step_saved = state.get("step_saved")  # absent in checkpoints of versions without every_n_steps
        self._step_saved = step_saved if self._owns(step_saved) else None
        self._pending = None
        remove_stale_temporaries(self.folder)

    def __repr__(self) -> str:
        top = "" if self.keep_top_k is None else f", keep_top_k={self.keep_top_k}"
        return f"Checkpointer({str(self.folder)!r}{top})"


class _StepCheckpointer(Checkpointer):
    """A :class:`Checkpointer` with ``every_n_steps``: it also handles training ``StepEnd`` (a plain one does not,
    so that it costs nothing per step). Only the due steps reach it: the others are skipped on the training thread
    before any snapshot, so under the ``ActorRunner`` a write that lasts many steps never fills its inbox with
    the steps in between (they would make training wait for the write)."""

    _steps_seen = 0  # training steps done, as the Recorder counts them (set at each training EpochBegin)

    def handler(self, event: type[Event], phase: type[Phase]) -> Handler | None:
        found = super().handler(event, phase)
        if found is None or not issubclass(event, StepEnd):
            return found
        return Handler(found.fn, found.is_async, self._step_due)

    def _step_due(self, event: Event, phase: Phase) -> bool:
        self._steps_seen += 1
        return self._steps_seen % self.every_n_steps == 0  # type: ignore[operator]

    def snapshot(self, event: Event, phase: Phase, learner: Any, *, copy: bool = True) -> _Job | None:
        if isinstance(event, EpochBegin):
            history = learner.cbstate.get("history")
            self._steps_seen = history[phase].steps if history is not None else 0
        return super().snapshot(event, phase, learner, copy=copy)

    @on(StepEnd, AbstractTrainingPhase)
    def step_checkpoint(self, event: Event, phase: Phase, job: _Job | None) -> None:
        if job is not None:
            self._write(job)


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


# Checkpoints key callbacks' state by class name: a step checkpointer's state loads into a plain one and back.
_StepCheckpointer.__name__ = _StepCheckpointer.__qualname__ = "Checkpointer"
