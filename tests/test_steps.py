"""Tests for asyncloop._steps: one step skeleton and one epoch skeleton for built-in and custom phases."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import trio

from asyncloop import (
    AbstractTrainingPhase,
    BackwardBegin,
    Callback,
    CancelStepException,
    Event,
    LossBegin,
    Phase,
    PropDict,
    StepBegin,
    TrainingPhase,
    ValidationPhase,
    Write,
    epoch,
    fit,
    on,
    run_step,
    step,
    test_learner,
)


class ControlAt(Callback):
    """At ``at``, asks the running session (through the real learner) to cancel the step, as a detached actor
    does; records every training event it sees."""

    def __init__(self, learner_box: list[Any], at: type[Event]) -> None:
        self.learner_box, self.at, self.seen = learner_box, at, []

    @on(Event, Phase)
    def h(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen.append(type(event).__name__)
        if isinstance(event, self.at):
            self.learner_box[0].session.control = CancelStepException("requested")


class TwoInputPhase(AbstractTrainingPhase):
    """A custom training phase whose batches are dicts, stepped with asyncloop.run_step."""

    async def step(self, learner: Any, batch: Any) -> PropDict:
        async def step_fn(handle: Any, state: PropDict) -> None:
            state.preds = learner.model(state.a + state.b)
            await handle(LossBegin())
            state.loss = (state.preds - state.ys).abs().mean()

        return await run_step(step_fn, learner, self, {"a": batch["a"], "b": batch["b"], "ys": batch["y"]})


class TestStepSkeleton:
    @pytest.mark.parametrize(
        ("phase", "at", "seen"),
        [
            (TrainingPhase(), StepBegin, ["StepBegin"]),
            (TrainingPhase(), LossBegin, ["StepBegin", "LossBegin"]),
            (TrainingPhase(), BackwardBegin, ["StepBegin", "LossBegin", "BackwardBegin"]),
            (ValidationPhase(), StepBegin, ["StepBegin"]),
            (TwoInputPhase(), StepBegin, ["StepBegin"]),
        ],
    )
    def test_control_requests_are_checked_at_every_event(
        self, phase: Phase, at: type[Event], seen: list[str]
    ) -> None:
        """A cancel requested while a step runs takes effect at the step's next event, for every kind of step."""
        box: list[Any] = []
        spy = ControlAt(box, at)
        learner = test_learner(spy, n_batches=1)
        box.append(learner)
        batch = learner.data.training[0]
        if isinstance(phase, TwoInputPhase):
            batch = {"a": batch[0] / 2, "b": batch[0] / 2, "y": batch[1]}
        before = learner.model.c.detach().clone()
        state = trio.run(step, learner, phase, batch)
        assert spy.seen == seen
        assert "StepEnd" not in spy.seen
        assert torch.equal(learner.model.c.detach(), before)  # no optimizer step after the cancel
        assert isinstance(state, PropDict)

    def test_custom_and_builtin_steps_install_and_return_the_state(self) -> None:
        """Built-in and custom steps both install a fresh learner.step and return it."""
        learner = test_learner(n_batches=1)
        xs, ys = learner.data.training[0]
        builtin = trio.run(step, learner, TrainingPhase(), (xs, ys))
        assert learner.step is builtin
        custom = trio.run(step, learner, TwoInputPhase(), {"a": xs / 2, "b": xs / 2, "y": ys})
        assert learner.step is custom and custom is not builtin
        assert set(builtin) == {"xs", "ys", "preds", "loss", "grads"}
        assert set(custom) == {"a", "b", "ys", "preds", "loss"}

    def test_custom_phase_with_dict_batches_runs_under_fit(self) -> None:
        """fit runs a custom step over dict batches through the same skeleton (events in order)."""

        class Spy(Callback):
            def __init__(self) -> None:
                self.seen: list[str] = []

            @on(Event, AbstractTrainingPhase)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                self.seen.append(type(event).__name__)

        spy = Spy()
        learner = test_learner(spy, n_batches=2)
        batches = [{"a": x / 2, "b": x / 2, "y": y} for x, y in learner.data.training]

        trio.run(epoch, learner, TwoInputPhase(), batches)
        assert spy.seen == ["EpochBegin", *["StepBegin", "LossBegin", "StepEnd"] * 2, "EpochEnd"]

    def test_step_state_controls_without_a_fast_path(self) -> None:
        """accumulate=True set at StepBegin skips the optimizer step; the gradient is still computed."""

        class Accumulate(Callback):
            state_access = {"step": {"accumulate": Write()}}

            @on(StepBegin, TrainingPhase)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                learner.step.accumulate = True

        learner = test_learner(Accumulate(), n_batches=1)
        before = learner.model.c.detach().clone()
        state = trio.run(step, learner, TrainingPhase(), learner.data.training[0])
        assert torch.equal(learner.model.c.detach(), before)
        assert learner.model.c.grad is not None and "grads" in state

    def test_epoch_data_is_the_epoch_iterable(self) -> None:
        """An epoch sets learner.epoch_data to the iterable it runs over."""
        learner = test_learner(n_batches=2)
        trio.run(fit, learner, 1)
        assert learner.epoch_data is learner.data.validation

