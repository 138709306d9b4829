"""The training service's core, free of HTTP: jobs, their fits (ordinary trio tasks) and their live record feeds.

:class:`TrainingService` runs each job's :func:`asyncloop.fit` as a task in its own nursery, so the fits share the
trio loop of whatever else the program does (the HTTP server of :mod:`asyncloop.service`). The torch work runs on
each fit's worker thread (both runners), never on the loop. Every job logs through asyncloop's own logging
callbacks (``LogMetrics``, ``LogEvents``) into an event log on disk and into a :class:`JobFeed`, the in-memory
backend the HTTP event streams read.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import torch
import trio

from .. import _rng
from .._callback import Callback, on
from .._exceptions import CancelFittingException
from .._learner import Learner
from .._training import fit
from ..callbacks._checkpointer import Checkpointer
from ..callbacks._metrics import Metrics, accuracy
from ..callbacks._recorder import Recorder
from ..callbacks._stoponnan import StopOnNaNLoss
from ..events import EpochBegin, EpochEnd, FitBegin, FitEnd, StepBegin
from ..loggables import Loggable
from ..logging._backend import LoggerBackend
from ..logging._callbacks import LogConfig, LogEvents, LogMetrics
from ..logging._eventlog import EventLogBackend
from ..logging._records import make_record
from ..logging._stream_backend import StreamBackend
from ..logging._stream_server import StreamServer
from ..phases import Phase, TrainingPhase, ValidationPhase
from ..runners import ActorRunner, LinearRunner
from ._spec import DIGITS_TRAIN, JobSpec

log = logging.getLogger("asyncloop.service")

#: A job's states. ``queued`` waits for a free slot (``max_running``); the last four are final.
STATES = ("queued", "running", "completed", "stopped", "cancelled", "failed")
FINAL_STATES = frozenset(STATES[2:])

SYNTHETIC_FEATURES = 16
SYNTHETIC_CLASSES = 4


class _ServiceFull(RuntimeError):
    """The service refuses a new job: too many are waiting, or it holds as many jobs as it may."""


class _JobStateError(RuntimeError):
    """The job is not in a state that allows this: cancelling an ended job, deleting a running one."""


class _JobCancelled(CancelFittingException):
    """The reason a cancelled job's fit stopped (``FitResult.reason``)."""


class _CancelOnRequest(Callback):
    """Stop the fit at the next step or epoch once :meth:`request` was called (from any thread).

    Cancelling the fit's trio scope would stop it too, but only once the service's loop gets to deliver the
    cancellation, which on a busy machine can be a few steps later. This awaited callback reads a
    ``threading.Event`` the HTTP handler sets, so the fit ends within one step of the request: ``FitEnd`` fires
    (the loggers record it; the Checkpointer writes only a checkpoint of an epoch whose training was complete),
    and ``fit`` returns ``stopped=True`` with a ``_JobCancelled`` reason.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()

    def request(self) -> None:
        self.requested.set()

    @on(StepBegin)
    def at_step(self, event: StepBegin, phase: Phase, learner: Any) -> None:
        if self.requested.is_set():
            raise _JobCancelled("cancelled by request")

    @on(EpochBegin)
    def at_epoch(self, event: EpochBegin, phase: Phase, learner: Any) -> None:
        self.at_step(event, phase, learner)


class JobFeed(LoggerBackend):
    """A logger backend that keeps a job's records in memory and wakes the event streams that wait for them.

    Each ``log_to`` makes the same record the event log and the live stream make
    (:func:`asyncloop.logging._records.make_record`: ``kind``, ``t``, ``run``, ``seq``, ``name``, ``group``,
    ``index``, ``value``) and appends it; a reader at position ``n`` has seen ``records[:n]``. Called from the
    loggers' threads; readers run on the trio loop the feed was made on. The records are all kept, as long as
    the service holds the job: about 2.5 per training step, so at most about 250,000 for the largest job the
    spec allows (``MAX_STEPS``; about 110 MB at about 450 bytes a record), a few thousand (a few MB) for a
    typical one. ``close`` does nothing: the feed outlives the fit, and :meth:`finish` says no record will come.
    """

    def __init__(self, run: str) -> None:
        self.run = run
        self.records: list[dict[str, Any]] = []
        self.latest: dict[str, float | None] = {}
        self.finished = False
        self._lock = threading.Lock()
        self._token = trio.lowlevel.current_trio_token()
        self._scheduled = False
        self._lot = trio.lowlevel.ParkingLot()

    def log_to(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...] = ()) -> None:
        with self._lock:
            record = make_record(loggable, name, index, group, run=self.run, seq=len(self.records))
            self.records.append(record)
            if record["kind"] == "value" and group[:1] in (("Epoch",), ("Step",)):
                self.latest["/".join((*group, name))] = _finite(record["value"])
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:  # the service is gone; nobody is waiting
            pass

    def _wake(self) -> None:
        with self._lock:
            self._scheduled = False
        self._lot.unpark_all()

    def finish(self) -> None:
        """No more records will come (call on the feed's trio loop): wake every reader so it can end."""
        self.finished = True
        self._lot.unpark_all()

    async def wait(self, position: int) -> None:
        """Return once there are more than ``position`` records or the feed is finished."""
        while len(self.records) <= position and not self.finished:
            await self._lot.park()

    def __repr__(self) -> str:
        return f"JobFeed({self.run!r}, {len(self.records)} records)"


def _finite(value: Any) -> float | None:
    """A number JSON can carry: NaN and infinities become ``None``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def make_data(spec: JobSpec) -> tuple[list, list, int, int]:
    """``(train_batches, valid_batches, n_features, n_classes)`` for ``spec``; nothing is downloaded."""
    generator = torch.Generator().manual_seed(spec.seed)
    if spec.dataset == "digits":
        from sklearn.datasets import load_digits  # shipped inside scikit-learn (the `demo` extra)

        images, labels = load_digits(return_X_y=True)
        xs = torch.as_tensor(images, dtype=torch.float32) / 16.0
        ys = torch.as_tensor(labels, dtype=torch.long)
        order = torch.randperm(len(xs), generator=generator)
        xs, ys = xs[order], ys[order]
        n_train = DIGITS_TRAIN
        n_classes = 10
    else:
        n_classes = SYNTHETIC_CLASSES
        n_train = spec.samples
        n = n_train + max(spec.samples // 4, 1)
        centers = 0.5 * torch.randn(n_classes, SYNTHETIC_FEATURES, generator=generator)  # overlapping classes
        ys = torch.randint(n_classes, (n,), generator=generator)
        xs = centers[ys] + torch.randn(n, SYNTHETIC_FEATURES, generator=generator)
    size = spec.batch_size

    def batches(a: torch.Tensor, b: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(a[i : i + size], b[i : i + size]) for i in range(0, len(a), size)]

    train = batches(xs[:n_train], ys[:n_train])
    valid = batches(xs[n_train:], ys[n_train:])
    return train, valid, xs.shape[1], n_classes


def make_model(spec: JobSpec, n_features: int, n_classes: int) -> torch.nn.Module:
    """An MLP: ``spec.layers`` hidden layers of ``spec.hidden`` units with ReLU, then a linear classifier."""
    layers: list[torch.nn.Module] = []
    width = n_features
    for _ in range(spec.layers):
        layers += [torch.nn.Linear(width, spec.hidden), torch.nn.ReLU()]
        width = spec.hidden
    layers.append(torch.nn.Linear(width, n_classes))
    return torch.nn.Sequential(*layers)


def _warm_up() -> None:
    """Take one Adam step on a throwaway model: torch imports its optimizer machinery (``torch._dynamo``, a few
    seconds) on the first step of the process, and this way the first job does not pay for it."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    torch.nn.functional.cross_entropy(model(torch.zeros(1, 2)), torch.zeros(1, dtype=torch.long)).backward()
    optimizer.step()


class Job:
    """One submitted training run: its spec, its state, its files and its live feed."""

    def __init__(self, job_id: str, spec: JobSpec, folder: Path) -> None:
        self.id = job_id
        self.spec = spec
        self.folder = folder
        self.event_log = folder / "events.alog"
        self.checkpoints = folder / "checkpoints"
        self.state = "queued"
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.error: str | None = None
        self.result: dict[str, Any] | None = None
        self.steps_per_epoch: int | None = None
        self.cancel_requested_at_step: int | None = None
        self.feed = JobFeed(job_id)
        self.scope = trio.CancelScope()
        self.stopper = _CancelOnRequest()
        self.done = trio.Event()
        self._learner: Learner | None = None
        self._progress = (0, 0, 0)
        self._final_files: dict[str, str | None] | None = None

    def progress(self) -> tuple[int, int, int]:
        """``(training epochs, training steps, all steps)`` completed, live from the fit's ``Recorder``."""
        learner = self._learner
        if learner is not None:
            history = learner.cbstate.get("history")
            if history is not None:
                train = history.get(TrainingPhase())  # .get: never insert into the fit's dict from this thread
                valid = history.get(ValidationPhase())
                t_epochs, t_steps = (train.epochs, train.steps) if train is not None else (0, 0)
                self._progress = (t_epochs, t_steps, t_steps + (valid.steps if valid is not None else 0))
        return self._progress

    def checkpoint(self) -> str | None:
        """The newest complete checkpoint (the folder's ``latest``), or ``None``."""
        latest = self.checkpoints / "latest"
        try:
            name = latest.read_text().strip()
        except OSError:
            return None
        path = self.checkpoints / name
        return str(path) if name and path.is_file() else None

    def to_json(self) -> dict[str, Any]:
        epochs, steps, all_steps = self.progress()
        steps_total = None if self.steps_per_epoch is None else self.steps_per_epoch * self.spec.epochs
        cancel = None
        if self.cancel_requested_at_step is not None:
            cancel = {"requested_at_step": self.cancel_requested_at_step,
                      "stopped_at_step": all_steps if self.state in FINAL_STATES else None}
        return {
            "id": self.id,
            "state": self.state,
            "spec": self.spec.to_json(),
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "progress": {"epochs": epochs, "epochs_total": self.spec.epochs, "steps": steps,
                         "steps_total": steps_total},
            "latest": dict(self.feed.latest),
            "records": len(self.feed.records),
            "error": self.error,
            "result": self.result,
            "cancel": cancel,
            **self._files(),
        }

    def _files(self) -> dict[str, str | None]:
        """The event log and newest checkpoint paths (looked up on disk until the job ends, then remembered)."""
        if self._final_files is not None:
            return self._final_files
        files = {"event_log": str(self.event_log) if self.event_log.exists() else None,
                 "checkpoint": self.checkpoint()}
        if self.done.is_set():
            self._final_files = files
        return files


class TrainingService:
    """Run training jobs concurrently as tasks of one trio loop: ``async with TrainingService(folder) as service``.

    ``submit`` starts a job at once when fewer than ``max_running`` run, else queues it (at most ``max_queued``
    wait; more is a ``RuntimeError`` saying so). Each job writes ``folder/<id>/events.alog`` (the event log: read
    it with ``asyncloop log show``) and its checkpoints to ``folder/<id>/checkpoints``; given a ``stream``
    (:class:`asyncloop.StreamServer`) every job is also published there, run name = job id. Leaving the block
    cancels the jobs still queued or running and waits for them (each ends within about one step).

    Cancelling a job stops its fit within one step of the request: an awaited callback raises
    a ``CancelFittingException`` at the next ``StepBegin`` or ``EpochBegin``, so ``FitEnd``
    fires, the loggers flush and close (the event log ends with ``FitEnd`` and its ``close`` record) and the fit
    returns. A queued job, or one still building its data, is cancelled at once; a fit that has not ended
    ``cancel_grace`` seconds after the request (a hung step) has its trio scope cancelled. Checkpoints on disk are
    whole either way (each is written to a temporary file and renamed): the newest is the last complete epoch's,
    or there is none.
    """

    def __init__(self, folder: str | os.PathLike[str], *, max_running: int = 2, max_queued: int = 16,
                 max_jobs: int = 1000, stream: StreamServer | None = None, cancel_grace: float = 10.0) -> None:
        for name, value in (("max_running", max_running), ("max_queued", max_queued), ("max_jobs", max_jobs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(cancel_grace, bool) or not isinstance(cancel_grace, (int, float)) or not cancel_grace > 0:
            raise ValueError(f"cancel_grace must be a positive number of seconds, got {cancel_grace!r}")
        if stream is not None and not isinstance(stream, StreamServer):
            raise TypeError(f"stream must be a StreamServer or None, got {stream!r}")
        self.folder = Path(folder)
        self.max_running, self.max_queued, self.max_jobs = max_running, max_queued, max_jobs
        self.stream = stream
        self.cancel_grace = cancel_grace
        self.started = time.time()
        self._jobs: dict[str, Job] = {}
        self._limiter = trio.CapacityLimiter(max_running)
        self._nursery: trio.Nursery | None = None
        self._next = 1

    async def __aenter__(self) -> TrainingService:
        self.folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in self.folder.iterdir() if (m := re.fullmatch(r"job-(\d+)", p.name))]
        self._next = max(numbers, default=0) + 1  # never reuse an earlier service's folder
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        self._nursery.start_soon(trio.to_thread.run_sync, _warm_up)
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        for job in self._jobs.values():
            job.scope.cancel()
        try:
            return await self._nursery_manager.__aexit__(*exc)
        finally:
            self._nursery = None

    # -- queries ------------------------------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """Every job, oldest first."""
        return list(self._jobs.values())

    def get(self, job_id: str) -> Job:
        """The job ``job_id``; ``KeyError`` if there is none."""
        return self._jobs[job_id]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for job in self._jobs.values():
            counts[job.state] += 1
        return counts

    # -- commands -----------------------------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> Job:
        """Start (or queue) a job for ``spec`` and return it."""
        if self._nursery is None:
            raise RuntimeError("the service is not running; submit inside 'async with TrainingService(...)'")
        counts = self.counts()
        if counts["queued"] >= self.max_queued and counts["running"] >= self.max_running:
            raise _ServiceFull(f"{counts['queued']} jobs are already waiting (at most {self.max_queued}); "
                              f"try again when one has started, or cancel one")
        if len(self._jobs) >= self.max_jobs:
            raise _ServiceFull(f"the service holds {len(self._jobs)} jobs, its limit; delete ended jobs "
                              f"(DELETE /api/jobs/<id>) or start it with a larger max_jobs")
        job_id = f"job-{self._next}"
        self._next += 1
        job = Job(job_id, spec, self.folder / job_id)
        self._jobs[job_id] = job
        self._nursery.start_soon(self._run, job, name=f"asyncloop job {job_id}")
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel the job ``job_id`` (``KeyError``: no such job; ``RuntimeError``: it already ended)."""
        job = self._jobs[job_id]
        if job.state in FINAL_STATES:
            raise _JobStateError(f"job {job_id} already {job.state}; there is nothing to cancel")
        if job.cancel_requested_at_step is None:
            job.cancel_requested_at_step = job.progress()[2]
            job.stopper.request()
            if job._learner is None:  # queued, or still building its data: nothing to stop gracefully
                job.scope.cancel()
            else:  # the fit stops at its next step; cancel it outright if a step hangs
                assert self._nursery is not None
                self._nursery.start_soon(self._cancel_later, job)
        return job

    async def _cancel_later(self, job: Job) -> None:
        with trio.move_on_after(self.cancel_grace):
            await job.done.wait()
        job.scope.cancel()

    def forget(self, job_id: str) -> Job:
        """Drop the ended job ``job_id`` and its in-memory records; its folder stays (``KeyError``: no such job;
        ``RuntimeError``: it has not ended)."""
        job = self._jobs[job_id]
        if not job.done.is_set():
            raise _JobStateError(f"job {job_id} is {job.state}; cancel it first, then delete it once it has ended")
        del self._jobs[job_id]
        return job

    # -- a job's life -------------------------------------------------------------------------------------------
    async def _run(self, job: Job) -> None:
        try:
            with job.scope:
                async with self._limiter:
                    job.state, job.started = "running", time.time()
                    learner = await trio.to_thread.run_sync(self._build, job)
                    job._learner = learner
                    result = await fit(learner, job.spec.epochs)
                    reason = None if result.reason is None else str(result.reason)
                    job.result = {"epochs": result.epochs, "steps": result.steps, "elapsed": result.elapsed,
                                  "stopped": result.stopped, "reason": reason}
                    if isinstance(result.reason, _JobCancelled):
                        job.state = "cancelled"
                    else:
                        job.state = "stopped" if result.stopped else "completed"
            if job.scope.cancelled_caught:
                job.state = "cancelled"
        except Exception as exc:  # one job's failure never reaches the service
            log.exception("job %s failed", job.id)
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            if job.state not in FINAL_STATES:  # the service itself is being cancelled
                job.state = "cancelled"
            job.progress()
            job._learner = None  # free the model and the data; the final progress is kept
            job.finished = time.time()
            job.feed.finish()
            job.done.set()

    def _build(self, job: Job) -> Learner:
        """Build the job's data, model and learner (in a worker thread: loading digits reads a file)."""
        spec = job.spec
        train, valid, n_features, n_classes = make_data(spec)
        job.steps_per_epoch = len(train)
        job.folder.mkdir(parents=True, exist_ok=True)
        backends: list[LoggerBackend] = [job.feed, EventLogBackend(job.event_log, run=job.id)]
        if self.stream is not None:
            backends.append(StreamBackend(self.stream, run=job.id))
        # The initial weights from spec.seed, without disturbing a running fit's random state: its regions take
        # the same lock, and fork_rng puts the global generators back.
        with _rng._LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = make_model(spec, n_features, n_classes)
        return Learner(
            model,
            torch.nn.functional.cross_entropy,
            data=(train, valid),
            optimizer=lambda params: torch.optim.Adam(params, lr=spec.lr),
            callbacks=[
                Recorder(),
                Metrics(accuracy),
                StopOnNaNLoss(),
                job.stopper,
                Checkpointer(job.checkpoints, keep_top_k=1),
                LogConfig(spec.to_json(), *backends),
                LogMetrics(*backends),
                LogEvents(*backends, events=(FitBegin, EpochBegin, EpochEnd, FitEnd)),
            ],
            use_default_callbacks=False,
            runner=ActorRunner() if spec.runner == "actor" else LinearRunner(),
            seed=spec.seed,
        )

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "uptime": time.time() - self.started, "jobs": self.counts(),
                "max_running": self.max_running}

