"""The logging callbacks: LogMetrics, LogHyperParams, LogConfig, LogHistograms, LogVisualization, LogTraces, LogEvents.

All are detached, read-only callbacks: under the :class:`asyncloop.ActorRunner` they get a snapshot of what
they read, taken after the callbacks that write it ran, and their backends' I/O happens in the logger's own
worker thread while training goes on. Under the :class:`asyncloop.LinearRunner` they run inline on the
training thread. Either way the same values are logged. Each flushes its backends at ``FitEnd`` and closes them
when the run ends, however it ends.

Every logging callback takes ``detached=``: ``True`` (the default: its own thread), ``"process"`` (a spawned worker
process, so that building TensorBoard protobufs or rows never competes with training for the GIL; the backends
are pickled to it and write the same files, e.g. ``LogMetrics(TensorBoardBackend("runs/a"), detached="process")``;
see docs/actors.md) or ``False`` (inline, awaited).

Tags (group and name, as TensorBoard shows them):

=====================  =========================================================  =================================
callback               tag                                                        index
=====================  =========================================================  =================================
LogMetrics             ``Step/<Phase>/Metrics/<name>``                            ``history[phase].steps``
                       ``Epoch/<Phase>/Metrics/<name>``                           ``history[phase].epochs``
LogHyperParams         ``Step/HParams/<name>`` (training steps only)              training steps
LogConfig              ``HParams/config`` (FitBegin), ``HParams/final`` (FitEnd)  completed training steps
LogHistograms          ``Step/Histograms/Weights/<parameter name>``               training steps
LogVisualization       ``Step/Visualization``                                     training steps
LogTraces              ``Step/<Phase>/Traces/<name>``                             the trace's index
LogEvents              ``Events/<Phase>/<EventName>``                             the phase's steps
=====================  =========================================================  =================================

``<Phase>`` is the phase's class name (``TrainingPhase``, ``ValidationPhase``); the index is the one the value
was recorded at (Metrics and Traces push at the phase's completed step count, so step ``k`` of a phase is
logged at ``k``, starting at 1).

Fixes to FluxTraining's loggers: LogMetrics and LogTraces log only the values recorded since they last logged
(FluxTraining re-logged the last value of every key at every step); LogHyperParams logs in training steps only
(FluxTraining also logged at validation steps, with validation indices, mixing the x-axis); LogHistograms and
LogVisualization count only training steps for ``freq`` (FluxTraining's throttle also counted validation steps).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .._callback import Callback, Handler, on
from ..callbacks._conditional import FrequencyThrottle
from ..callbacks._metrics import Metrics
from ..callbacks._recorder import Recorder
from ..callbacks._scheduler import Scheduler
from ..callbacks._traces import Traces
from ..events import EpochEnd, Event, FitBegin, FitEnd, StepEnd
from ..loggables import Histogram, Image, Loggable, RuntimeEvent, Value
from ..phases import AbstractTrainingPhase, FitPhase, Phase, TrainingPhase
from .._access import Read
from ._backend import LoggerBackend, log_to
from ._hparams import HParams, flatten_config, optimizer_hparams


def _check_backends(owner: str, backends: Sequence[Any]) -> tuple[LoggerBackend, ...]:
    if not backends:
        raise ValueError(f"{owner} needs at least one LoggerBackend, e.g. {owner}(TensorBoardBackend('runs'))")
    for backend in backends:
        if isinstance(backend, LoggerBackend):
            continue
        if isinstance(backend, type) and issubclass(backend, LoggerBackend):
            raise TypeError(f"{owner} takes backend instances: pass {backend.__name__}(...), not the class")
        raise TypeError(f"{owner} takes LoggerBackend instances such as TensorBoardBackend('runs'), got {backend!r}")
    return tuple(backends)


def _check_freq(owner: str, freq: Any) -> FrequencyThrottle | None:
    if freq is None:
        return None
    if isinstance(freq, bool) or not isinstance(freq, int) or freq < 1:
        raise ValueError(f"{owner} freq must be an int >= 1 (log every freq-th training step) or None, got {freq!r}")
    return FrequencyThrottle(freq, StepEnd)


def _number(value: Any) -> int | float | None:
    try:
        return Value(value).data
    except TypeError:
        return None


def _check_detached(owner: str, detached: Any) -> bool | str:
    if detached is True or detached is False or detached == "process":
        return detached
    raise ValueError(
        f'{owner} detached must be True (its own thread), "process" (a worker process) or False (inline), '
        f"got {detached!r}"
    )


class _Logger(Callback):
    """Shared by the logging callbacks: backends, flushing at ``FitEnd``, closing at teardown.

    ``detached`` (every logging callback takes it): ``True`` (the default) handles events on the logger's own
    thread under the :class:`asyncloop.ActorRunner`; ``"process"`` in a spawned worker process, so that building
    TensorBoard protobufs or CSV rows never competes with training for the GIL (the backends are pickled to it
    and write the same files); ``False`` runs it inline. Under the ``LinearRunner`` all three run inline.
    """

    detached = True
    rank_zero_only = True  # distributed: rank 0 alone acts (docs/distributed.md)

    def __init__(self, *backends: LoggerBackend, detached: bool | str = True) -> None:
        self.backends = _check_backends(type(self).__name__, backends)
        self.detached = _check_detached(type(self).__name__, detached)  # type: ignore[misc]

    def log(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...]) -> None:
        log_to(self.backends, loggable, name, index, group)

    def _shared(self) -> tuple[LoggerBackend, ...]:
        """The backends: detached loggers that share one take their events in turn, in the loop's order
        (``asyncloop.runners._delivery.shared_resources``)."""
        return self.backends

    @on(FitEnd)
    def fit_end(self, event: FitEnd, phase: Phase, learner: Any) -> None:
        for backend in self.backends:
            backend.flush()

    def teardown(self, learner: Any) -> None:
        """Close every backend (idempotent), also after a failed or cancelled fit."""
        error: Exception | None = None
        for backend in self.backends:
            try:
                backend.close()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.backends))})"


class _Captured:
    """What a logger's ``snapshot`` hands its handlers under every runner: an index and the values to log.

    With ``copy=True`` (a detached actor) ``items`` is a snapshot; inline it is the live object (nothing cloned).
    """

    __slots__ = ("index", "items")

    def __init__(self, index: int, items: Any) -> None:
        self.index, self.items = index, items


class _LastValues:
    """The last ``(index, value)`` of every series of a ``SeriesHistory``: all a series logger reads.

    O(number of series) to take and to pickle, where a snapshot of the history itself pickles every value ever
    recorded (a process actor's snapshot crosses a pipe at every event). The values are shared, as a history's
    snapshot shares them: the series are append-only.
    """

    __slots__ = ("_last",)

    def __init__(self, series: Any) -> None:
        self._last = {name: series.last(name) for name in series.keys()}

    def keys(self) -> list[str]:
        return list(self._last)

    def last(self, name: str) -> tuple[int, Any]:
        return self._last[name]

    def __getstate__(self) -> dict[str, tuple[int, Any]]:
        return self._last

    def __setstate__(self, state: dict[str, tuple[int, Any]]) -> None:
        self._last = state


def _phase_series(learner: Any, key: str, phase: Phase) -> Any:
    """``learner.cbstate[key][phase]`` if it exists (without creating it in the phase dict), else None."""
    histories = learner.cbstate.get(key)
    return histories[phase] if histories is not None and phase in histories else None


class _SeriesLogger(_Logger):
    """Logs the values of per-phase series histories recorded since it last logged them.

    ``_sources`` maps the event types it handles to the ``cbstate`` key it reads then. Its snapshot is the last
    value of each of that one phase's series (O(number of series)), not a copy of everything it may read;
    inline, the live series.
    """

    _sources: tuple[tuple[type[Event], str], ...] = ()

    def __init__(self, *backends: LoggerBackend, detached: bool | str = True) -> None:
        super().__init__(*backends, detached=detached)
        self._logged: dict[tuple[str, Phase, str], Any] = {}

    def init(self, learner: Any) -> None:
        self._logged = {}

    @on(FitBegin)
    def fit_begin(self, event: FitBegin, phase: Phase, learner: Any) -> None:
        # A fit may resume from an earlier checkpoint (a rewind): its indices are logged again. Reset here, in
        # a handler, so that a detached logger resets in event order, after the previous fit's last values.
        self._logged = {}

    def _source(self, event: Event) -> str | None:
        return next((key for cls, key in self._sources if isinstance(event, cls)), None)

    def snapshot(self, event: Event, phase: Phase, learner: Any, *, copy: bool = True) -> Any:
        key = self._source(event)
        series = _phase_series(learner, key, phase) if key is not None else None
        return _Captured(0, _LastValues(series) if copy and series is not None else series)

    def _log_new(self, series: Any, phase: Phase, unit: str, category: str) -> None:
        if series is None:
            return
        group = (unit, type(phase).__name__, category)
        logged = self._logged
        for name in series.keys():
            index, value = series.last(name)
            key = (unit, phase, name)
            if logged.get(key) == index:
                continue
            logged[key] = index
            number = _number(value)
            if number is not None and isinstance(index, int):
                self.log(Value(number), name, index, group)


class LogMetrics(_SeriesLogger):
    """Log step and epoch metrics (``cbstate.metrics_step`` / ``metrics_epoch``) to one or more backends.

    At every ``StepEnd`` it logs the metric values recorded in that step as ``Step/<Phase>/Metrics/<name>`` at
    the step index; at every ``EpochEnd`` the epoch values as ``Epoch/<Phase>/Metrics/<name>`` at the epoch
    index. Non-numeric values are skipped. Throttle it with ``throttle(LogMetrics(...), StepEnd, freq=10)``;
    ``detached="process"`` logs from a worker process (see the module docstring).

    Example::

        learner = Learner(model, loss_fn, callbacks=[Metrics(accuracy), LogMetrics(TensorBoardBackend("runs/a"))])
    """

    state_access = {"cbstate": {"history": Read(), "metrics_step": Read(), "metrics_epoch": Read()}}
    optional_reads = ("metrics_step", "metrics_epoch")  # without Metrics there is nothing to log
    run_after = (Recorder, Metrics)
    _sources = ((StepEnd, "metrics_step"), (EpochEnd, "metrics_epoch"))

    @on(StepEnd)
    def step_end(self, event: StepEnd, phase: Phase, learner: Any) -> None:
        self._log_new(learner.items, phase, "Step", "Metrics")

    @on(EpochEnd)
    def epoch_end(self, event: EpochEnd, phase: Phase, learner: Any) -> None:
        self._log_new(learner.items, phase, "Epoch", "Metrics")


class LogTraces(_SeriesLogger):
    """Log the step traces of :class:`asyncloop.Traces` (``cbstate.trace_history``) to one or more backends.

    At every ``StepEnd`` it logs the traces recorded since it last logged, as ``Step/<Phase>/Traces/<name>`` at
    the trace's index. Non-numeric traces are skipped.
    """

    state_access = {"cbstate": {"history": Read(), "trace_history": Read()}}
    _sources = ((StepEnd, "trace_history"),)

    run_after = (Recorder, Traces)

    @on(StepEnd)
    def step_end(self, event: StepEnd, phase: Phase, learner: Any) -> None:
        self._log_new(learner.items, phase, "Step", "Traces")


class LogHyperParams(_Logger):
    """Log the hyperparameters (``cbstate.hyperparams``, kept by :class:`asyncloop.Scheduler`) at every training step.

    Each hyperparameter's current value is logged as ``Step/HParams/<name>`` (e.g. ``Step/HParams/LearningRate``)
    at the training step index, so it lines up with ``Step/TrainingPhase/Metrics/Loss``. Validation steps log
    nothing: hyperparameters only change while training.

    Example::

        Learner(model, loss_fn, callbacks=[Scheduler({LearningRate: schedule}), LogHyperParams(backend)])
    """

    state_access = {"cbstate": {"history": Read(), "hyperparams": Read()}}
    optional_reads = ("hyperparams",)  # without a Scheduler it warns once (NOTHING_TO_LOG) and logs nothing

    run_after = (Recorder, Scheduler)

    #: The warning for a fit that has no ``cbstate.hyperparams`` (no Scheduler): given once per LogHyperParams.
    NOTHING_TO_LOG = (
        "LogHyperParams has nothing to log: cbstate.hyperparams is missing because no Scheduler is in the "
        "learner's callbacks. Add a Scheduler (e.g. Scheduler({LearningRate: schedule})) to log hyperparameters "
        "as they change, or use LogConfig(config, backend) to log the optimizer's hyperparameters once"
    )

    def __init__(self, *backends: LoggerBackend, detached: bool | str = True) -> None:
        super().__init__(*backends, detached=detached)
        self._warned = False

    def snapshot(self, event: Event, phase: Phase, learner: Any, *, copy: bool = True) -> Any:
        if not isinstance(event, StepEnd):
            return None  # FitEnd only flushes
        hyperparams = learner.cbstate.get("hyperparams")
        if hyperparams is None and not self._warned:
            self._warned = True  # on the training thread: the warning points at no actor thread
            warnings.warn(self.NOTHING_TO_LOG, UserWarning, stacklevel=2)
        if copy and hyperparams:
            hyperparams = _LastValues(hyperparams)
        return _Captured(learner.cbstate.history[phase].steps, hyperparams)

    @on(StepEnd, AbstractTrainingPhase)
    def step_end(self, event: StepEnd, phase: Phase, learner: Any) -> None:
        index, hyperparams = learner.index, learner.items
        if not hyperparams:
            return
        for name in hyperparams.keys():
            number = _number(hyperparams.last(name)[1])
            if number is not None:
                self.log(Value(number), name, index, ("Step", "HParams"))


def _final_metrics(learner: Any) -> dict[str, float]:
    """The last epoch value of every numeric metric of every phase, keyed ``"<Phase>/<name>"``."""
    final: dict[str, float] = {}
    for phase, series in (learner.cbstate.get("metrics_epoch") or {}).items():
        for name in series.keys():
            number = _number(series.last(name)[1])
            if number is not None:
                final[f"{type(phase).__name__}/{name}"] = float(number)
    return final


def _training_steps(learner: Any) -> int:
    history = learner.cbstate.get("history")
    key = TrainingPhase()
    return history[key].steps if history is not None and key in history else 0


class LogConfig(_Logger):
    """Log the run's configuration and the optimizer's hyperparameters once per fit (Lightning's
    ``save_hyperparameters``), and the final metrics at its end.

    At ``FitBegin`` it logs an :class:`~asyncloop.logging.HParams` with ``config`` flattened (nested dicts become
    ``a/b`` keys, values that are not numbers, bools or strings become their ``str``) plus, with
    ``optimizer=True``, every param group's hyperparameters as the fit starts (``optimizer/type``,
    ``optimizer/lr``, ``optimizer/momentum``, ``optimizer/betas``, ``optimizer/weight_decay``...; several groups:
    ``optimizer/0/lr``...). At ``FitEnd`` it logs the same values with the final epoch metrics of every phase
    (``"ValidationPhase/Loss"``). Backends: TensorBoard's HParams plugin, an event-log record of kind
    ``"hparams"``, rows of a CSV backend's sidecar file (``runs.hparams.csv``); see docs/logging.md.

    The configuration is read and flattened here, so a config that is not a mapping, or two keys that flatten
    to one name, fail at once, not when the fit starts. The values are copied: changing the dict later
    changes nothing.

    Example::

        config = {"lr": 0.1, "batch_size": 64, "model": {"width": 128, "depth": 4}}
        Learner(model, loss_fn, optimizer=SGD(model.parameters(), lr=0.1), callbacks=[LogConfig(config, backend)])
    """

    state_access = {"optimizer": Read(), "cbstate": {"history": Read(), "metrics_epoch": Read()}}
    optional_reads = ("metrics_epoch",)  # without Metrics it logs the config alone
    run_after = (Recorder, Metrics, Scheduler)

    def __init__(
        self, config: Mapping[str, Any], *backends: LoggerBackend, optimizer: bool = True, detached: bool | str = True
    ) -> None:
        if isinstance(config, LoggerBackend):
            raise TypeError(
                f"LogConfig takes the config dict first, then the backends: LogConfig({{'lr': 0.1}}, backend); "
                f"got {config!r} first (use LogConfig({{}}, backend) to log the optimizer's hyperparameters only)"
            )
        self.config = flatten_config(config, what="LogConfig's config")
        super().__init__(*backends, detached=detached)
        self.optimizer = bool(optimizer)
        self._hparams: dict[str, Any] = dict(self.config)

    def snapshot(self, event: Event, phase: Phase, learner: Any, *, copy: bool = True) -> Any:
        # Built on the training thread; the HParams is a fresh object nobody else changes, for both runners.
        if isinstance(event, FitBegin):
            values = dict(self.config)
            if self.optimizer:
                values.update({k: v for k, v in optimizer_hparams(learner.optimizer).items() if k not in values})
            self._hparams = values
            return _Captured(_training_steps(learner), HParams(values))
        return _Captured(_training_steps(learner), HParams(self._hparams, _final_metrics(learner)))

    @on(FitBegin)
    def fit_begin(self, event: FitBegin, phase: Phase, learner: Any) -> None:
        self.log(learner.items, "config", learner.index, ("HParams",))

    @on(FitEnd)
    def fit_end(self, event: FitEnd, phase: Phase, learner: Any) -> None:
        self.log(learner.items, "final", learner.index, ("HParams",))
        super().fit_end(event, phase, learner)

    def __repr__(self) -> str:
        return f"LogConfig({len(self.config)} values, {', '.join(map(repr, self.backends))})"


class _Throttled(_Logger):
    """A logger of training steps with its own ``freq`` counter (which counts training steps only)."""

    def __init__(self, *backends: LoggerBackend, freq: int | None = 100, detached: bool | str = True) -> None:
        super().__init__(*backends, detached=detached)
        self.freq = freq
        self._throttle = _check_freq(type(self).__name__, freq)

    def handler(self, event: type[Event], phase: type[Phase]) -> Handler | None:
        found = super().handler(event, phase)
        if found is None or self._throttle is None or not issubclass(event, StepEnd):
            return found
        return Handler(found.fn, found.is_async, self._throttle.should_run)


class LogHistograms(_Throttled):
    """Log a histogram of every model parameter every ``freq`` training steps (``freq=None``: every step).

    Each parameter is logged as ``Step/Histograms/Weights/<parameter name>`` (e.g. ``.../0.weight``) at the
    training step index, on training steps 1, freq+1, 2*freq+1, ... Under the ActorRunner the snapshot clones
    only the parameter tensors (not the whole model), and the histograms are computed in the logger's thread.
    """

    state_access = {"model": Read(), "cbstate": {"history": Read()}}
    run_after = (Recorder,)

    def snapshot(self, event: Event, phase: Phase, learner: Any, *, copy: bool = True) -> Any:
        if not isinstance(event, StepEnd):
            return None  # FitEnd only flushes
        model = learner.model
        params: tuple[tuple[str, torch.Tensor], ...] = ()
        if isinstance(model, torch.nn.Module):
            with torch.no_grad():
                params = tuple((n, p.detach().clone() if copy else p.detach()) for n, p in model.named_parameters())
        return _Captured(learner.cbstate.history[phase].steps, params)

    @on(StepEnd, AbstractTrainingPhase)
    def step_end(self, event: StepEnd, phase: Phase, learner: Any) -> None:
        for name, tensor in learner.items:
            self.log(Histogram(tensor), name, learner.index, ("Step", "Histograms", "Weights"))


class LogVisualization(_Throttled):
    """Log ``Image(visfn(learner.step))`` every ``freq`` training steps (``freq=None``: every step).

    ``visfn`` gets the step state (``xs``, ``ys``, ``preds``, ``loss``) and returns an image: an ``(H, W, C)``
    array or tensor, or an :class:`asyncloop.loggables.Image` (e.g. ``Image(x, dataformats="CHW")``). It is
    logged as ``Step/Visualization`` at the training step index. Under the ActorRunner ``visfn`` runs in the
    logger's thread, on a snapshot of the step.

    Example::

        LogVisualization(lambda step: step.xs[0], TensorBoardBackend("runs/a"), freq=50)
    """

    state_access = {"step": Read(), "cbstate": {"history": Read()}}
    run_after = (Recorder,)

    def __init__(
        self, visfn: Callable[[Any], Any], *backends: LoggerBackend, freq: int | None = 100,
        detached: bool | str = True,
    ) -> None:
        if not callable(visfn) or isinstance(visfn, LoggerBackend):
            raise TypeError(
                f"LogVisualization takes visfn(step) first, then the backends: "
                f"LogVisualization(visfn, backend, ...); got {visfn!r}"
            )
        super().__init__(*backends, freq=freq, detached=detached)
        self.visfn = visfn

    @on(StepEnd, AbstractTrainingPhase)
    def step_end(self, event: StepEnd, phase: Phase, learner: Any) -> None:
        image = self.visfn(learner.step)
        if not isinstance(image, Loggable):
            image = Image(image)
        self.log(image, "Visualization", learner.cbstate.history[phase].steps, ("Step",))


def _counters(history: Any, phase: Phase) -> tuple[int, int, int]:
    key = TrainingPhase() if isinstance(phase, FitPhase) else phase
    if history is None or key not in history:
        return 0, 0, 0
    h = history[key]
    return h.epochs, h.steps, h.steps_epoch


class LogEvents(_Logger):
    """Log every runtime event (or those of the types in ``events``) as a :class:`~asyncloop.loggables.RuntimeEvent`.

    Meant for the event log and the live stream (TensorBoard and CSV skip these records): a subscriber sees
    ``EpochBegin``, ``StepEnd``, ..., ``FitEnd`` as they happen, with the phase's completed epochs and steps.
    Cheap: the snapshot is the event's name, its phase and three counters. Name ``Events/<Phase>/<Event>``.
    It runs after the other loggers, so on a shared backend an event's record comes after the values logged
    for that event (``FitEnd`` is the fit's last record), under the ActorRunner too.

    Example::

        LogEvents(EventLogBackend("run.alog"), events=(EpochEnd, FitEnd))
    """

    state_access = {"cbstate": {"history": Read()}}
    run_after = (Recorder, LogMetrics, LogHyperParams, LogConfig, LogHistograms, LogVisualization, LogTraces)

    def __init__(
        self, *backends: LoggerBackend, events: Sequence[type[Event]] | None = None, detached: bool | str = True
    ) -> None:
        super().__init__(*backends, detached=detached)
        if events is not None:
            events = tuple(events)
            bad = [e for e in events if not (isinstance(e, type) and issubclass(e, Event))]
            if bad or not events:
                raise TypeError(f"events must be a non-empty tuple of Event classes such as StepEnd, got {events!r}")
        self.events: tuple[type[Event], ...] | None = events

    def _wanted(self, event: type[Event]) -> bool:
        return self.events is None or issubclass(event, self.events)

    def handler(self, event: type[Event], phase: type[Phase]) -> Handler | None:
        if not self._wanted(event) and not issubclass(event, FitEnd):
            return None
        return super().handler(event, phase)

    def snapshot(self, event: Event, phase: Phase, learner: Any, *, copy: bool = True) -> Any:
        return _Captured(0, _counters(learner.cbstate.get("history"), phase))

    def _log_event(self, event: Event, phase: Phase, learner: Any) -> None:
        epochs, steps, steps_epoch = learner.items
        name, phase_name = type(event).__name__, type(phase).__name__
        loggable = RuntimeEvent(name, phase_name, epochs=epochs, steps=steps, steps_epoch=steps_epoch)
        self.log(loggable, name, steps, ("Events", phase_name))

    @on(Event)
    def on_event(self, event: Event, phase: Phase, learner: Any) -> None:
        self._log_event(event, phase, learner)

    @on(FitEnd)
    def fit_end(self, event: FitEnd, phase: Phase, learner: Any) -> None:
        if self._wanted(FitEnd):
            self._log_event(event, phase, learner)
        super().fit_end(event, phase, learner)
