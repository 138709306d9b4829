"""Tests for asyncloop.logging._tensorboard: real event files, read back with TensorBoard's own reader."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trio
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from asyncloop import (
    ActorRunner,
    Callback,
    Checkpointer,
    CustomCallback,
    EpochBegin,
    LinearRunner,
    LogConfig,
    LogMetrics,
    Metrics,
    Read,
    Recorder,
    StepEnd,
    TensorBoardBackend,
    TrainingPhase,
    ValidationPhase,
    fit,
    log_to,
    on,
    test_learner,
    validate,
)
from asyncloop.loggables import Audio, Histogram, Image, RuntimeEvent, Text, Value

RUNNERS = [pytest.param(LinearRunner, id="linear"), pytest.param(ActorRunner, id="actor")]


def read_run(logdir: Path) -> EventAccumulator:
    """Every event of every event file in ``logdir``, as TensorBoard loads them."""
    accumulator = EventAccumulator(
        str(logdir), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0, "audio": 0}
    )
    accumulator.Reload()
    return accumulator


def steps_of(accumulator: EventAccumulator, tag: str) -> list[int]:
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [event.step for event in accumulator.Scalars(tag)]


class TestTensorBoardBackend:
    async def test_validate_after_fit_keeps_the_fits_points(self, tmp_path: Path) -> None:
        """validate() after a fit logs EvaluationPhase steps from 1; that is not the fit restarting, so none of the
        fit's training-step points is dropped (before: steps 5-8 of a 2 x 4-step fit vanished)."""
        backend = TensorBoardBackend(tmp_path / "run")
        learner = test_learner(Recorder(), Metrics(), LogMetrics(backend), n_batches=4)
        await fit(learner, 2)
        await validate(learner)
        await validate(learner)
        backend.close()
        assert steps_of(read_run(tmp_path / "run"), "Step/TrainingPhase/Metrics/Loss") == list(range(1, 9))

    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_metrics_match_history(self, tmp_path: Path, runner: Any) -> None:
        """Tags, steps and values read back with TensorBoard equal the learner's metric history."""
        backend = TensorBoardBackend(tmp_path / "run")
        learner = test_learner(Recorder(), Metrics(), LogMetrics(backend), n_batches=4, runner=runner())
        await fit(learner, 2)
        run = read_run(tmp_path / "run")
        assert sorted(run.Tags()["scalars"]) == [
            "Epoch/TrainingPhase/Metrics/Loss",
            "Epoch/ValidationPhase/Metrics/Loss",
            "Step/TrainingPhase/Metrics/Loss",
            "Step/ValidationPhase/Metrics/Loss",
        ]
        cbstate = learner.cbstate
        for phase in (TrainingPhase(), ValidationPhase()):
            for unit, histories in (("Step", cbstate.metrics_step), ("Epoch", cbstate.metrics_epoch)):
                events = run.Scalars(f"{unit}/{type(phase).__name__}/Metrics/Loss")
                assert [e.step for e in events] == histories[phase].indices("Loss")
                assert [e.value for e in events] == pytest.approx(histories[phase].values("Loss"), rel=1e-6)
        assert [e.step for e in run.Scalars("Step/TrainingPhase/Metrics/Loss")] == list(range(1, 9))

    def test_resumed_opening_purges_replayed_steps(self, tmp_path: Path) -> None:
        """An opening whose first training-step point is past step 1 (a resume) hides the earlier files' later steps."""
        train = ("Step", "TrainingPhase", "Metrics")
        first = TensorBoardBackend(tmp_path)
        for step in range(1, 7):
            log_to(first, Value(step), "Loss", step, train)
        first.close()
        time.sleep(1.05)  # event files sort by their second: the resumed one comes after, as in a real resume
        resumed = TensorBoardBackend(tmp_path)  # a new process resuming from a checkpoint at step 3
        log_to(resumed, Value(0.5), "Loss", 2, ("Epoch", "TrainingPhase", "Metrics"))  # not a step: no purge yet
        for step in (4, 5):
            log_to(resumed, Value(10 * step), "Loss", step, train)
        resumed.close()
        run = read_run(tmp_path)
        assert [(e.step, e.value) for e in run.Scalars("Step/TrainingPhase/Metrics/Loss")] == [
            (1, 1), (2, 2), (3, 3), (4, 40), (5, 50)]

    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_resume_after_a_crash_mid_epoch_logs_each_step_once(self, tmp_path: Path, runner: Any) -> None:
        """A fit that crashes mid-epoch and resumes from its last checkpoint shows each training step once."""

        class Crash(Callback):
            state_access = {"cbstate": {"history": Read()}}

            @on(StepEnd, TrainingPhase)
            def crash(self, event: StepEnd, phase: TrainingPhase, learner: Any) -> None:
                if learner.cbstate.history[phase].steps == 6:
                    # a crash drops the events detached actors have not handled yet: under the ActorRunner, give
                    # the checkpointer and the logger time to handle epoch 1 first, as a real crash later would
                    time.sleep(0.3)
                    raise RuntimeError("power cut")

        logdir, folder = tmp_path / "tb", tmp_path / "checkpoints"
        crashing = test_learner(Recorder(), Metrics(), Checkpointer(folder), LogMetrics(TensorBoardBackend(logdir)),
                                Crash(), n_batches=4, runner=runner())
        with pytest.raises(RuntimeError, match="power cut"):
            await fit(crashing, 2)
        await trio.sleep(1.05)  # event files sort by their second, as a later process's do
        resumed = test_learner(Recorder(), Metrics(), Checkpointer(folder), LogMetrics(TensorBoardBackend(logdir)),
                               n_batches=4, runner=runner())
        await fit(resumed, 1, resume=folder)  # from the checkpoint of epoch 1 (step 4): replays steps 5 and 6
        run = read_run(logdir)
        assert steps_of(run, "Step/TrainingPhase/Metrics/Loss") == list(range(1, 9))
        assert steps_of(run, "Epoch/TrainingPhase/Metrics/Loss") == [1, 2]
        losses = resumed.cbstate.metrics_step[TrainingPhase()]
        assert losses.indices("Loss") == list(range(1, 9))  # steps 1-4 from the checkpoint, 5-8 trained now
        assert [e.value for e in run.Scalars("Step/TrainingPhase/Metrics/Loss")] == pytest.approx(
            losses.values("Loss"), rel=1e-6)

    def test_fresh_opening_keeps_earlier_files(self, tmp_path: Path) -> None:
        """An opening that starts at step 1, or one given purge_step, adds no purge of its own."""
        train = ("Step", "TrainingPhase", "Metrics")
        for kwargs in ({}, {}, {"purge_step": 100}):
            backend = TensorBoardBackend(tmp_path, **kwargs)
            for step in (1, 2):
                log_to(backend, Value(step), "Loss", step, train)
            backend.close()
        assert steps_of(read_run(tmp_path), "Step/TrainingPhase/Metrics/Loss") == [1, 2, 1, 2, 1, 2]

    async def test_closed_when_fit_returns(self, tmp_path: Path) -> None:
        """The event file is flushed and closed by the time fit returns."""
        backend = TensorBoardBackend(tmp_path)
        await fit(test_learner(Recorder(), Metrics(), LogMetrics(backend), n_batches=2), 1)
        assert not backend.is_open
        assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 1

    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_failed_fit_leaves_closed_readable_file(self, tmp_path: Path, runner: Any) -> None:
        """A fit that fails still closes the writer; the file holds whole events up to the failure."""

        def boom(learner: Any) -> None:
            raise ValueError("boom")

        backend = TensorBoardBackend(tmp_path)
        learner = test_learner(
            Recorder(), Metrics(), LogMetrics(backend), CustomCallback(boom, EpochBegin, ValidationPhase),
            n_batches=4, runner=runner(),
        )
        with pytest.raises(ValueError, match=r"^boom"):
            await fit(learner, 3)
        assert not backend.is_open
        steps = steps_of(read_run(tmp_path), "Step/TrainingPhase/Metrics/Loss")
        if runner is LinearRunner:
            assert steps == [1, 2, 3, 4]
        else:  # an actor may drop the events still queued when the fit failed
            assert steps == list(range(1, len(steps) + 1)) and len(steps) <= 4

    @pytest.mark.parametrize("runner", RUNNERS)
    async def test_cancelled_fit_leaves_closed_readable_file(self, tmp_path: Path, runner: Any) -> None:
        """A fit cancelled from outside still closes the writer; the file is readable."""
        backend = TensorBoardBackend(tmp_path)
        learner = test_learner(Recorder(), Metrics(), LogMetrics(backend), n_batches=4, runner=runner())
        history = learner.cbstate.history[TrainingPhase()]
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fit, learner, 100_000)
                while history.steps < 3:
                    await trio.sleep(0.005)
                nursery.cancel_scope.cancel()
        assert not backend.is_open
        steps = steps_of(read_run(tmp_path), "Step/TrainingPhase/Metrics/Loss")
        assert steps == list(range(1, len(steps) + 1))
        assert len(steps) < 100_000 * 4

    def test_every_loggable_kind(self, tmp_path: Path) -> None:
        """Text, images, histograms, audio and scalars get TensorBoard's own summaries; runtime events are skipped."""
        backend = TensorBoardBackend(tmp_path)
        log_to(backend, Value(0.5), "Loss", 1, ("Step", "TrainingPhase", "Metrics"))
        log_to(backend, Text("hello"), "Note", 1, "Step")
        log_to(backend, Image(np.zeros((4, 6, 3))), "Picture", 2, "Step")
        log_to(backend, Histogram(torch.arange(10.0)), "w", 3, ("Step", "Histograms", "Weights"))
        log_to(backend, Histogram([float("nan")]), "empty", 3, ("Step", "Histograms", "Weights"))
        log_to(backend, Audio(np.zeros(80), sample_rate=8000), "Sound", 4)
        log_to(backend, RuntimeEvent("StepEnd", "TrainingPhase"), "StepEnd", 5, ("Events", "TrainingPhase"))
        backend.close()
        run = read_run(tmp_path)
        tags = run.Tags()
        assert tags["scalars"] == ["Step/TrainingPhase/Metrics/Loss"]
        assert tags["images"] == ["Step/Picture"]
        assert (run.Images("Step/Picture")[0].width, run.Images("Step/Picture")[0].height) == (6, 4)
        assert tags["histograms"] == ["Step/Histograms/Weights/w"]
        assert run.Histograms("Step/Histograms/Weights/w")[0].histogram_value.num == 10
        assert run.Histograms("Step/Histograms/Weights/w")[0].step == 3
        assert tags["audio"] == ["Sound"]
        assert run.Tensors("Step/Note/text_summary")[0].tensor_proto.string_val == [b"hello"]

    def test_reopens_after_close(self, tmp_path: Path) -> None:
        """close is idempotent; logging again opens a second event file, read as the same run."""
        backend = TensorBoardBackend(tmp_path)
        log_to(backend, Value(1.0), "x", 1)
        backend.close()
        backend.close()
        log_to(backend, Value(2.0), "x", 2)
        backend.close()
        assert len(os.listdir(tmp_path)) == 2
        assert [(e.step, e.value) for e in read_run(tmp_path).Scalars("x")] == [(1, 1.0), (2, 2.0)]

    def test_overwrite_removes_old_event_files(self, tmp_path: Path) -> None:
        """overwrite=True deletes the event files already in logdir when it first opens it."""
        old = TensorBoardBackend(tmp_path)
        log_to(old, Value(1.0), "x", 1)
        old.close()
        new = TensorBoardBackend(tmp_path, overwrite=True)
        log_to(new, Value(2.0), "x", 7)
        new.close()
        assert [(e.step, e.value) for e in read_run(tmp_path).Scalars("x")] == [(7, 2.0)]

    def test_flush_writes_without_closing(self, tmp_path: Path) -> None:
        """flush makes everything logged so far readable while the writer stays open."""
        backend = TensorBoardBackend(tmp_path, flush_secs=3600)
        log_to(backend, Value(3.0), "x", 1)
        backend.flush()
        assert backend.is_open
        assert [e.value for e in read_run(tmp_path).Scalars("x")] == [3.0]
        backend.close()

    def test_opens_lazily(self, tmp_path: Path) -> None:
        """Nothing is created before the first value is logged."""
        backend = TensorBoardBackend(tmp_path / "later")
        backend.flush()
        backend.close()
        assert not (tmp_path / "later").exists()
        assert repr(backend) == f"TensorBoardBackend({str(tmp_path / 'later')!r})"


class TestHParams:
    async def test_hparams_plugin(self, tmp_path: Path) -> None:
        """LogConfig's HParams become the HParams plugin's session start (the values), experiment (the final
        metrics' tags) and session end, in the run's own event file, with the final metrics as scalars."""
        learner = test_learner(Recorder(), Metrics(), LogConfig({"a": 1, "m": {"s": "x"}}, TensorBoardBackend(tmp_path),
                                                                 optimizer=False), n_batches=2)
        await fit(learner, 1)
        assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 1
        run = read_run(tmp_path)
        content = run.PluginTagToContent("hparams")
        assert set(content) == {"_hparams_/session_start_info", "_hparams_/experiment", "_hparams_/session_end_info"}
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        assert start.session_start_info.hparams["a"].number_value == 1
        assert start.session_start_info.hparams["m/s"].string_value == "x"
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert {m.name.tag for m in experiment.metric_infos} == {"HParams/TrainingPhase/Loss",
                                                                 "HParams/ValidationPhase/Loss"}
        loss = learner.cbstate.metrics_epoch[ValidationPhase()].last("Loss")[1]
        assert run.Scalars("HParams/ValidationPhase/Loss")[0].value == pytest.approx(loss)
