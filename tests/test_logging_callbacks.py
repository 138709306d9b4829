"""Tests for asyncloop.logging._callbacks: the Log* callbacks (metrics, hyperparameters, histograms, images, ...)."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest
import torch
import trio
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from asyncloop import (
    ActorRunner,
    CustomCallback,
    EpochEnd,
    FitBegin,
    FitEnd,
    LearningRate,
    LinearRunner,
    LogConfig,
    LoggerBackend,
    LogHistograms,
    LogHyperParams,
    LogMetrics,
    LogTraces,
    LogVisualization,
    Metric,
    Metrics,
    Read,
    Recorder,
    Scheduler,
    StepEnd,
    TensorBoardBackend,
    Traces,
    TrainingPhase,
    ValidationPhase,
    Write,
    accesses,
    accuracy,
    fit,
    test_learner,
    throttle,
)
from asyncloop.loggables import Histogram, Image, Loggable, RuntimeEvent, Value
from asyncloop._checkpoint import save_checkpoint
from asyncloop.logging import CSVBackend, EventLogBackend, HParams, LogEvents, read_events
from matchers import exact

RUNNERS = [pytest.param(LinearRunner, id="linear"), pytest.param(ActorRunner, id="actor")]
LOGGERS = (LogMetrics, LogHyperParams, LogHistograms, LogVisualization, LogTraces, LogEvents)


class Recording(LoggerBackend):
    """Remembers every call, with the thread it came from."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, tuple[str, ...], Loggable]] = []
        self.threads: set[threading.Thread] = set()
        self.flushed = self.closed = 0

    def log_to(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...] = ()) -> None:
        self.threads.add(threading.current_thread())
        self.calls.append(("/".join(group), name, index, group, loggable))

    def flush(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        self.closed += 1

    def tags(self) -> list[tuple[str, int]]:
        return [(f"{group}/{name}", index) for group, name, index, _, _ in self.calls]


def index_of(learner: Any, cls: type) -> int:
    return next(i for i, cb in enumerate(learner.callbacks) if isinstance(getattr(cb, "wrapped", cb), cls))


def runs_before(learner: Any, first: type, then: type) -> bool:
    return nx.has_path(learner.graph, index_of(learner, first), index_of(learner, then))


class TestSeedCases:
    """FluxTraining's logging tests (#23-#26), with a real TensorBoard backend and warnings as errors."""

    @pytest.fixture(autouse=True)
    def _no_warnings(self) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield

    async def test_23_log_metrics(self, tmp_path: Path) -> None:
        """Seed #23: LogMetrics(TensorBoardBackend) with Metrics(accuracy) and Recorder fits one epoch."""
        await fit(test_learner(LogMetrics(TensorBoardBackend(tmp_path)), Metrics(accuracy), Recorder()), 1)
        run = EventAccumulator(str(tmp_path))
        run.Reload()
        assert "Step/TrainingPhase/Metrics/Accuracy" in run.Tags()["scalars"]

    async def test_24_log_hyperparams(self, tmp_path: Path) -> None:
        """Seed #24: LogHyperParams with an empty Scheduler fits one epoch."""
        await fit(test_learner(LogHyperParams(TensorBoardBackend(tmp_path)), Recorder(), Scheduler()), 1)

    async def test_25_log_histograms(self, tmp_path: Path) -> None:
        """Seed #25: LogHistograms(freq=5) fits five epochs."""
        await fit(test_learner(LogHistograms(TensorBoardBackend(tmp_path), freq=5), Recorder(), Scheduler()), 5)
        run = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
        run.Reload()
        assert [e.step for e in run.Histograms("Step/Histograms/Weights/c")] == list(range(1, 81, 5))

    async def test_26_log_visualization(self, tmp_path: Path) -> None:
        """Seed #26: LogVisualization of a random 50x50 RGB image, freq=5, fits five epochs."""
        backend = TensorBoardBackend(tmp_path)
        visualize = LogVisualization(lambda step: torch.rand(50, 50, 3), backend, freq=5)
        await fit(test_learner(visualize, Recorder(), Scheduler()), 5)
        run = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
        run.Reload()
        images = run.Images("Step/Visualization")
        assert len(images) == 16 and (images[0].width, images[0].height) == (50, 50)


class TestLoggers:
    @pytest.mark.parametrize("cls", LOGGERS)
    def test_detached_and_read_only(self, cls: type) -> None:
        """Every logger is a detached actor that only reads."""
        assert cls.detached is True
        assert accesses(cls.state_access, Write()) == []

    @pytest.mark.parametrize("cls", LOGGERS)
    def test_needs_a_backend(self, cls: type) -> None:
        """A logger without a backend is refused, with an example."""
        args: tuple[Any, ...] = (lambda step: step.xs,) if cls is LogVisualization else ()
        name = cls.__name__
        with pytest.raises(
            ValueError,
            match=rf"^{name} needs at least one LoggerBackend, e\.g\. {name}\(TensorBoardBackend\('runs'\)\)$",
        ):
            cls(*args)

    @pytest.mark.parametrize("cls", LOGGERS)
    def test_refuses_non_backends(self, cls: type) -> None:
        """Something that is not a LoggerBackend (or a backend class) is refused."""
        args: tuple[Any, ...] = (lambda step: step.xs,) if cls is LogVisualization else ()
        name = cls.__name__
        with pytest.raises(
            TypeError,
            match=rf"^{name} takes LoggerBackend instances such as TensorBoardBackend\('runs'\), got 'runs/'$",
        ):
            cls(*args, "runs/")
        with pytest.raises(
            TypeError,
            match=rf"^{name} takes backend instances: pass TensorBoardBackend\(\.\.\.\), not the class$",
        ):
            cls(*args, TensorBoardBackend)

    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_backends_never_run_on_the_event_loop(self, runner: Any) -> None:
        """Backends are called from worker threads, never from the trio loop's thread; flushed and closed once."""
        backend = Recording()
        learner = test_learner(Recorder(), Metrics(), LogMetrics(backend), LogEvents(backend), n_batches=2,
                               runner=runner())
        await fit(learner, 1)
        assert backend.calls and threading.main_thread() not in backend.threads
        assert (backend.flushed, backend.closed) == (2, 2)

    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_closed_after_a_failed_fit(self, runner: Any) -> None:
        """Backends are closed when the fit fails (teardown), though FitEnd never came."""

        def boom(learner: Any) -> None:
            raise ValueError("boom")

        backend = Recording()
        learner = test_learner(Recorder(), Metrics(), LogMetrics(backend), CustomCallback(boom, EpochEnd),
                               n_batches=2, runner=runner())
        with pytest.raises(ValueError, match=r"^boom"):
            await fit(learner, 1)
        assert (backend.flushed, backend.closed) == (0, 1)

    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_closed_after_a_cancelled_fit(self, runner: Any) -> None:
        """Backends are closed when the fit is cancelled from outside."""
        backend = Recording()
        learner = test_learner(Recorder(), Metrics(), LogMetrics(backend), n_batches=2, runner=runner())
        with trio.move_on_after(0.2) as scope:
            await fit(learner, 10**6)
        assert scope.cancelled_caught
        assert backend.closed == 1


class TestLogMetrics:
    async def test_logs_each_value_once(self) -> None:
        """Each step and epoch value is logged once, at its own index (FluxTraining re-logged every key)."""
        backend = Recording()
        await fit(test_learner(Recorder(), Metrics(), LogMetrics(backend), n_batches=3), 2)
        expected = []
        for epoch in (1, 2):
            for phase in ("TrainingPhase", "ValidationPhase"):
                expected += [(f"Step/{phase}/Metrics/Loss", 3 * (epoch - 1) + k) for k in (1, 2, 3)]
                expected += [(f"Epoch/{phase}/Metrics/Loss", epoch)]
        assert backend.tags() == expected

    async def test_values_are_the_history(self) -> None:
        """The logged values are the learner's metric values."""
        backend = Recording()
        learner = test_learner(Recorder(), Metrics(), LogMetrics(backend), n_batches=3)
        await fit(learner, 1)
        logged = [c[4].data for c in backend.calls if c[0] == "Step/ValidationPhase/Metrics"]
        assert logged == learner.cbstate.metrics_step[ValidationPhase()].values("Loss")
        assert all(isinstance(c[4], Value) for c in backend.calls)

    async def test_phase_restricted_metric(self) -> None:
        """A metric computed only in validation is logged only there."""
        backend = Recording()
        await fit(test_learner(Recorder(), Metrics(Metric(accuracy, phase=ValidationPhase)), LogMetrics(backend),
                               n_batches=2), 1)
        names = {(group, name) for group, name, *_ in backend.calls}
        assert ("Step/TrainingPhase/Metrics", "Accuracy") not in names
        assert ("Step/ValidationPhase/Metrics", "Accuracy") in names
        assert ("Epoch/ValidationPhase/Metrics", "Accuracy") in names

    async def test_throttled(self) -> None:
        """Throttled with throttle(), it logs the newest values at the steps it runs."""
        backend = Recording()
        await fit(test_learner(Recorder(), Metrics(), throttle(LogMetrics(backend), StepEnd, freq=2), n_batches=4), 1)
        assert [t for t in backend.tags() if t[0].startswith("Step/")] == [
            ("Step/TrainingPhase/Metrics/Loss", 1), ("Step/TrainingPhase/Metrics/Loss", 3),
            ("Step/ValidationPhase/Metrics/Loss", 1), ("Step/ValidationPhase/Metrics/Loss", 3)]

    async def test_without_metrics(self) -> None:
        """Without a Metrics callback there is nothing to log, and no error."""
        backend = Recording()
        await fit(test_learner(Recorder(), LogMetrics(backend), n_batches=2), 1)
        assert backend.calls == []

    def test_runs_after_metrics(self) -> None:
        """LogMetrics runs after Recorder and Metrics, so it sees this step's values."""
        learner = test_learner(LogMetrics(Recording()), Metrics(), Recorder())
        assert runs_before(learner, Metrics, LogMetrics) and runs_before(learner, Recorder, LogMetrics)
        assert repr(LogMetrics(Recording())) == "LogMetrics(Recording())"


class TestResume:
    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_values_are_logged_again_after_a_rewind(self, tmp_path: Path, runner: Any) -> None:
        """A fit resumed from an earlier checkpoint in the same process logs the epochs and steps it redoes again."""
        log = tmp_path / "run.alog"
        traces = Traces({"loss2": lambda learner: learner.step.loss ** 2}, TrainingPhase)
        backend = EventLogBackend(log, run="r")
        learner = test_learner(Recorder(), Metrics(), traces, LogMetrics(backend), LogTraces(backend), n_batches=1,
                               runner=runner())
        await fit(learner, 2)
        save_checkpoint(learner, tmp_path / "epoch2.pt")
        await fit(learner, 1)  # epoch 3: the last index logged is the first the resumed fit redoes
        await fit(learner, 2, resume=tmp_path / "epoch2.pt")
        values = [(r["group"][0], r["group"][1], r["group"][2], r["index"])
                  for r in read_events(log) if r["kind"] == "value"]
        for unit, category in (("Epoch", "Metrics"), ("Step", "Metrics"), ("Step", "Traces")):
            logged = [i for u, phase, c, i in values if (u, phase, c) == (unit, "TrainingPhase", category)]
            assert logged == [1, 2, 3, 3, 4], (unit, category)


class TestLogHyperParams:
    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_training_steps_only(self, runner: Any) -> None:
        """Hyperparameters are logged at every training step with the value used in it, never in validation."""
        backend = Recording()
        learner = test_learner(Recorder(), Scheduler({LearningRate: lambda t: 1.0 / t}), LogHyperParams(backend),
                               n_batches=3, runner=runner())
        await fit(learner, 2)
        assert [(c[0], c[1], c[2], c[4].data) for c in backend.calls] == [
            ("Step/HParams", "LearningRate", k, 1.0 / k) for k in range(1, 7)]
        assert learner.optimizer.param_groups[0]["lr"] == 1.0 / 6

    async def test_without_scheduler(self) -> None:
        """Without hyperparameters nothing is logged (and it warns: see TestLogHyperParamsWarning)."""
        backend = Recording()
        with pytest.warns(UserWarning, match="^LogHyperParams has nothing to log"):
            await fit(test_learner(Recorder(), LogHyperParams(backend), n_batches=2), 1)
        assert backend.calls == []

    def test_runs_after_scheduler(self) -> None:
        """LogHyperParams runs after the Scheduler."""
        learner = test_learner(LogHyperParams(Recording()), Scheduler({LearningRate: lambda t: 0.1}), Recorder())
        assert runs_before(learner, Scheduler, LogHyperParams)


class TestLogHistograms:
    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_freq_counts_training_steps_only(self, runner: Any) -> None:
        """With freq=5 it logs training steps 1, 6, 11 (FluxTraining's throttle also counted validation steps)."""
        backend = Recording()
        weights: list[float] = []
        watch = CustomCallback(lambda learner: weights.append(learner.model.c.detach().item()), StepEnd, TrainingPhase,
                               access={"model": Read()})
        learner = test_learner(Recorder(), LogHistograms(backend, freq=5), watch, n_batches=4, runner=runner())
        await fit(learner, 3)
        assert backend.tags() == [("Step/Histograms/Weights/c", k) for k in (1, 6, 11)]
        histograms = [c[4] for c in backend.calls]
        assert all(isinstance(h, Histogram) for h in histograms)
        assert [h.data.tolist() for h in histograms] == [[weights[k - 1]] for k in (1, 6, 11)]

    async def test_every_step(self) -> None:
        """freq=None logs every training step; names are the model's parameter names."""
        backend = Recording()
        learner = test_learner(Recorder(), LogHistograms(backend, freq=None), n_batches=2)
        learner.model = torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.Linear(2, 1))
        learner.data = learner.data.__class__(training=[(torch.ones(4, 1), torch.ones(4, 1))] * 2)
        await fit(learner, 1)
        assert sorted({name for _, name, *_ in backend.calls}) == ["0.bias", "0.weight", "1.bias", "1.weight"]
        assert sorted({index for _, _, index, *_ in backend.calls}) == [1, 2]

    def test_snapshot_clones_only_the_parameters(self) -> None:
        """For detached runs the snapshot holds clones of the parameters, not a copy of the model."""
        logger = LogHistograms(Recording())
        learner = test_learner(Recorder(), logger)
        captured = logger.snapshot(StepEnd(), TrainingPhase(), learner)
        (name, tensor), = captured.items
        assert name == "c" and tensor.data_ptr() != learner.model.c.data_ptr()
        assert torch.equal(tensor, learner.model.c.detach())
        assert logger.snapshot(FitEnd(), TrainingPhase(), learner) is None

    @pytest.mark.parametrize("freq", [0, -1, 1.5, True])
    def test_bad_freq(self, freq: Any) -> None:
        """freq is an int >= 1 or None."""
        with pytest.raises(
            ValueError,
            match=rf"^LogHistograms freq must be an int >= 1 \(log every freq-th training step\) or None, got "
                  rf"{freq!r}$",
        ):
            LogHistograms(Recording(), freq=freq)


class TestLogVisualization:
    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_images_of_training_steps(self, runner: Any) -> None:
        """visfn gets the step state; its image is logged as Step/Visualization every freq training steps."""
        backend = Recording()
        seen: list[set[str]] = []

        def visfn(step: Any) -> Any:
            seen.append(set(step.keys()))
            return step.xs.reshape(2, 4, 1) / 100

        learner = test_learner(Recorder(), LogVisualization(visfn, backend, freq=3), n_batches=4, runner=runner())
        await fit(learner, 2)
        assert backend.tags() == [("Step/Visualization", k) for k in (1, 4, 7)]
        assert all(isinstance(c[4], Image) and c[4].data.shape == (2, 4, 1) for c in backend.calls)
        assert all({"xs", "ys", "preds", "loss"} <= keys for keys in seen)

    async def test_visfn_may_return_an_image(self) -> None:
        """An Image returned by visfn is logged as it is (e.g. channels-first)."""
        backend = Recording()
        visualize = LogVisualization(lambda step: Image(np.ones((3, 2, 2)), dataformats="CHW"), backend, freq=None)
        await fit(test_learner(Recorder(), visualize, n_batches=2), 1)
        assert [c[4].data.shape for c in backend.calls] == [(2, 2, 3), (2, 2, 3)]

    def test_visfn_comes_first(self) -> None:
        """visfn must be callable and come before the backends."""
        message = (r"^LogVisualization takes visfn\(step\) first, then the backends: "
                   r"LogVisualization\(visfn, backend, \.\.\.\); got ")
        with pytest.raises(TypeError, match=message + r"Recording\(\)$"):
            LogVisualization(Recording(), Recording())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=message + r"'image'$"):
            LogVisualization("image", Recording())  # type: ignore[arg-type]


class TestLogTraces:
    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_logs_the_traces(self, runner: Any) -> None:
        """Traces are logged as Step/<Phase>/Traces/<name> with the traced values, once each."""
        backend = Recording()
        traces = Traces({"loss2": lambda learner: learner.step.loss ** 2}, TrainingPhase)
        learner = test_learner(Recorder(), traces, LogTraces(backend), n_batches=3, runner=runner())
        await fit(learner, 2)
        assert backend.tags() == [("Step/TrainingPhase/Traces/loss2", k) for k in range(1, 7)]
        assert [c[4].data for c in backend.calls] == learner.cbstate.trace_history[TrainingPhase()].values("loss2")

    def test_runs_after_traces(self) -> None:
        """LogTraces runs after Traces."""
        learner = test_learner(LogTraces(Recording()), Traces({"x": lambda learner: 1.0}), Recorder())
        assert runs_before(learner, Traces, LogTraces)


EVENTS_OF_ONE_STEP_FIT = [
    ("FitBegin", "FitPhase", 0), ("EpochBegin", "TrainingPhase", 0), ("StepBegin", "TrainingPhase", 0),
    ("LossBegin", "TrainingPhase", 0), ("BackwardBegin", "TrainingPhase", 0), ("BackwardEnd", "TrainingPhase", 0),
    ("StepEnd", "TrainingPhase", 1), ("EpochEnd", "TrainingPhase", 1), ("EpochBegin", "ValidationPhase", 0),
    ("StepBegin", "ValidationPhase", 0), ("LossBegin", "ValidationPhase", 0), ("StepEnd", "ValidationPhase", 1),
    ("EpochEnd", "ValidationPhase", 1), ("FitEnd", "FitPhase", 1),
]


class TestLogEvents:
    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_every_event(self, runner: Any) -> None:
        """Every runtime event is logged, in order, with the phase's counters (fit events: training's)."""
        backend = Recording()
        await fit(test_learner(Recorder(), LogEvents(backend), n_batches=1, runner=runner()), 1)
        events = [c[4] for c in backend.calls]
        assert all(isinstance(e, RuntimeEvent) for e in events)
        assert [(e.event, e.phase, e.steps) for e in events] == EVENTS_OF_ONE_STEP_FIT
        assert [c[3] for c in backend.calls][:2] == [("Events", "FitPhase"), ("Events", "TrainingPhase")]
        assert events[-1].epochs == 1

    async def test_selected_events(self) -> None:
        """With events=..., only those are logged; backends are still flushed at FitEnd."""
        backend = Recording()
        await fit(test_learner(Recorder(), LogEvents(backend, events=(EpochEnd,)), n_batches=2), 2)
        assert [(c[1], c[3][1]) for c in backend.calls] == [
            ("EpochEnd", "TrainingPhase"), ("EpochEnd", "ValidationPhase")] * 2
        assert backend.flushed == 1

    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_after_the_other_loggers(self, runner: Any) -> None:
        """On a shared backend an event's record follows the values logged for it; FitEnd comes last."""
        backend = Recording()
        learner = test_learner(Recorder(), Metrics(), LogEvents(backend, events=(StepEnd, FitEnd)), LogMetrics(backend),
                               n_batches=3, runner=runner())
        assert runs_before(learner, LogMetrics, LogEvents)
        await fit(learner, 2)
        tags = backend.tags()
        assert tags[-1] == ("Events/FitPhase/FitEnd", 6)
        for phase in ("TrainingPhase", "ValidationPhase"):
            for k in range(1, 7):
                assert tags.index((f"Step/{phase}/Metrics/Loss", k)) < tags.index((f"Events/{phase}/StepEnd", k))

    def test_bad_events(self) -> None:
        """events must name Event classes."""
        with pytest.raises(
            TypeError,
            match=r"^events must be a non-empty tuple of Event classes such as StepEnd, got \('StepEnd',\)$",
        ):
            LogEvents(Recording(), events=("StepEnd",))  # type: ignore[arg-type]


def strip(record: dict) -> dict:
    """A record without what differs between two runs of the same fit (time, run name)."""
    return {k: v for k, v in record.items() if k not in ("t", "run")}


class TestSameLogsOnBothRunners:
    async def test_identical_event_logs(self, tmp_path: Path) -> None:
        """For the same seeded run, ActorRunner writes the same records as LinearRunner, logger by logger."""
        logs: dict[str, dict[str, list[dict]]] = {}
        for runner in (LinearRunner, ActorRunner):
            torch.manual_seed(0)
            folder = tmp_path / runner.__name__
            folder.mkdir()

            def backend(name: str, folder: Path = folder) -> EventLogBackend:
                return EventLogBackend(folder / f"{name}.alog")

            learner = test_learner(
                Recorder(),
                Metrics(),
                Scheduler({LearningRate: lambda t: 1e-3 / t}),
                Traces({"loss2": lambda learner: learner.step.loss ** 2}),
                LogMetrics(backend("metrics")),
                LogHyperParams(backend("hparams")),
                LogHistograms(backend("histograms"), freq=3),
                LogVisualization(lambda step: step.preds.reshape(2, 4, 1) / 400, backend("images"), freq=4),
                LogTraces(backend("traces")),
                LogEvents(backend("events")),
                n_batches=8,
                runner=runner(),
            )
            await fit(learner, 3)
            logs[runner.__name__] = {
                path.stem: [strip(r) for r in read_events(path) if r["kind"] not in ("open", "close")]
                for path in sorted(folder.iterdir())
            }
        linear, actor = logs["LinearRunner"], logs["ActorRunner"]
        assert sorted(linear) == ["events", "histograms", "hparams", "images", "metrics", "traces"]
        assert {name: len(records) for name, records in linear.items()} == {
            "events": 2 + 3 * (2 + 8 * 5) + 3 * (2 + 8 * 3), "histograms": 8, "hparams": 24, "images": 6,
            "metrics": 3 * 2 * (8 + 1), "traces": 48}
        assert actor == linear


class TestLogConfig:
    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_config_at_fit_begin_and_final_metrics_at_fit_end(self, runner: Any) -> None:
        """LogConfig logs the flattened config with the optimizer's hyperparameters at FitBegin, and the same
        values with every phase's final epoch metrics at FitEnd."""
        backend = Recording()
        learner = test_learner(Recorder(), Metrics(), LogConfig({"batch": 8, "model": {"width": 4}}, backend),
                               n_batches=2, lr=0.01, runner=runner())
        await fit(learner, 2)
        assert [(c[0], c[1], c[2]) for c in backend.calls] == [("HParams", "config", 0), ("HParams", "final", 4)]
        start, end = backend.calls[0][4], backend.calls[1][4]
        assert isinstance(start, HParams) and start.metrics is None
        assert start.hparams["batch"] == 8 and start.hparams["model/width"] == 4
        assert start.hparams["optimizer/lr"] == 0.01
        assert start.hparams["optimizer/type"] == type(learner.optimizer).__name__
        assert end.hparams == start.hparams
        final = learner.cbstate.metrics_epoch
        assert end.metrics == {f"{type(p).__name__}/Loss": pytest.approx(final[p].last("Loss")[1])
                               for p in (TrainingPhase(), ValidationPhase())}
        assert backend.flushed == 1

    async def test_without_the_optimizer(self) -> None:
        """optimizer=False logs the config alone."""
        backend = Recording()
        await fit(test_learner(Recorder(), LogConfig({"a": 1}, backend, optimizer=False), n_batches=1), 1)
        assert backend.calls[0][4].hparams == {"a": 1}

    def test_config_comes_first(self) -> None:
        """A backend passed where the config goes is a TypeError saying the order."""
        with pytest.raises(TypeError, match=exact(
                "LogConfig takes the config dict first, then the backends: LogConfig({'lr': 0.1}, backend); got "
                "Recording() first (use LogConfig({}, backend) to log the optimizer's hyperparameters only)")):
            LogConfig(Recording())  # type: ignore[arg-type]

    def test_bad_config(self) -> None:
        """A config that is not a mapping fails when the callback is built."""
        with pytest.raises(TypeError, match="^LogConfig's config must be a dict"):
            LogConfig(["lr"], Recording())  # type: ignore[arg-type]

    async def test_event_log_record(self, tmp_path: Path) -> None:
        """In the event log the config is a record of kind 'hparams' whose value holds hparams and metrics."""
        path = tmp_path / "run.alog"
        await fit(test_learner(Recorder(), Metrics(), LogConfig({"lr": 0.1}, EventLogBackend(path)), n_batches=1), 1)
        records = [r for r in read_events(path) if r["kind"] == "hparams"]
        assert [(r["name"], r["group"], r["value"]["metrics"] is None) for r in records] == [
            ("config", ["HParams"], True), ("final", ["HParams"], False)]
        assert records[0]["value"]["hparams"]["lr"] == 0.1
        assert set(records[1]["value"]["metrics"]) == {"TrainingPhase/Loss", "ValidationPhase/Loss"}


class SlowRecording(Recording):
    """A Recording whose writes of ``slow`` loggables (by type) take ``seconds``, and which notes overlapping
    calls."""

    def __init__(self, slow: type, seconds: float) -> None:
        super().__init__()
        self.slow, self.seconds, self.busy, self.overlapped = slow, seconds, False, False

    def log_to(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...] = ()) -> None:
        import time

        self.overlapped |= self.busy
        self.busy = True
        try:
            if isinstance(loggable, self.slow):
                time.sleep(self.seconds)
            super().log_to(loggable, name, index, group)
        finally:
            self.busy = False


class TestSharedBackend:
    async def test_detached_loggers_write_a_shared_backend_in_the_loops_order(self) -> None:
        """Detached loggers that share a backend write it one at a time and in the order the LinearRunner does,
        even when one logger's writes are slow: LogConfig's FitBegin record (slowed down) comes before
        LogMetrics's first value, and a second backend shared transitively orders a third logger too."""
        orders = {}
        for runner in (LinearRunner, ActorRunner):
            torch.manual_seed(0)
            a, b = SlowRecording(HParams, 0.05), SlowRecording(RuntimeEvent, 0.002)
            learner = test_learner(
                Recorder(), Metrics(), LogConfig({"lr": 0.01}, a), LogMetrics(a, b),
                LogEvents(b, events=(FitBegin, EpochEnd, FitEnd)), n_batches=4, runner=runner())
            await fit(learner, 2)
            orders[runner.__name__] = (a.tags(), b.tags())
            assert not a.overlapped and not b.overlapped
        assert orders["LinearRunner"][0][0] == ("HParams/config", 0)
        assert orders["ActorRunner"] == orders["LinearRunner"]

    async def test_loggers_in_worker_processes_take_their_turns_too(self, tmp_path: Path) -> None:
        """Process loggers sharing an event log (each writes through its own copy of the backend) write its
        records in the loop's order: the slow FitBegin config first, then the step values, then the final
        record."""
        path = tmp_path / "run.alog"
        backend = EventLogBackend(path)
        learner = test_learner(
            Recorder(), Metrics(), LogConfig({"lr": 0.01}, backend, detached="process"),
            LogMetrics(backend, detached="process"), n_batches=4, runner=ActorRunner())
        await fit(learner, 1)
        kinds = [(r["kind"], r.get("name")) for r in read_events(path) if r["kind"] not in ("open", "close")]
        assert kinds[0] == ("hparams", "config") and kinds[-1] == ("hparams", "final")
        assert set(kinds[1:-1]) == {("value", "Loss")}


class TestLogHyperParamsWarning:
    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_warns_once_without_a_scheduler(self, runner: Any) -> None:
        """Without a Scheduler (no cbstate.hyperparams) LogHyperParams warns once, saying what to add."""
        logger = LogHyperParams(Recording())
        with pytest.warns(UserWarning) as caught:
            await fit(test_learner(Recorder(), logger, n_batches=3, runner=runner()), 2)
        assert [str(w.message) for w in caught if w.category is UserWarning] == [LogHyperParams.NOTHING_TO_LOG]
        assert LogHyperParams.NOTHING_TO_LOG == (
            "LogHyperParams has nothing to log: cbstate.hyperparams is missing because no Scheduler is in the "
            "learner's callbacks. Add a Scheduler (e.g. Scheduler({LearningRate: schedule})) to log hyperparameters "
            "as they change, or use LogConfig(config, backend) to log the optimizer's hyperparameters once")

    async def test_no_warning_with_a_scheduler(self) -> None:
        """With a Scheduler, even an empty one, there is no warning."""
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            await fit(test_learner(Recorder(), Scheduler(), LogHyperParams(Recording()), n_batches=2), 1)


def _tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _csv_rows(path: Path) -> list[list[str]]:
    import csv

    with open(path, newline="") as f:
        return [row[:-1] for row in csv.reader(f)]  # without the time column


class TestProcessPlacement:
    async def test_a_logger_in_a_worker_process_writes_the_same_files(self, tmp_path: Path) -> None:
        """LogMetrics(..., detached="process") writes the same TensorBoard scalars, CSV rows and event-log records
        as the thread-detached logger, and its backends are closed when the fit ends."""
        written = {}
        for placement in (True, "process"):
            torch.manual_seed(0)
            folder = tmp_path / str(placement)
            logger = LogMetrics(TensorBoardBackend(folder / "tb"), CSVBackend(folder / "m.csv", run="r"),
                                EventLogBackend(folder / "m.alog", run="r"), detached=placement)
            runner = ActorRunner()
            learner = test_learner(Recorder(), Metrics(), logger, n_batches=6, runner=runner)
            await fit(learner, 2)
            runner.shutdown()
            written[placement] = (
                _tensorboard_scalars(folder / "tb"),
                _csv_rows(folder / "m.csv"),
                [strip(r) for r in read_events(folder / "m.alog") if r["kind"] not in ("open", "close")],
                [r["kind"] for r in read_events(folder / "m.alog")][-1],
            )
        thread, process = written[True], written["process"]
        assert len(thread[0]["Step/TrainingPhase/Metrics/Loss"]) == 12 and len(thread[1]) == 1 + 2 * 2 * (6 + 1)
        assert process == thread
        assert process[3] == "close"

    def test_detached_must_be_true_false_or_process(self) -> None:
        """Another detached value is rejected with a message listing the three choices."""
        with pytest.raises(ValueError, match=exact(
                'LogMetrics detached must be True (its own thread), "process" (a worker process) or False (inline), '
                "got 'thread'")):
            LogMetrics(Recording(), detached="thread")
