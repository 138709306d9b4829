"""Tests for asyncloop.callbacks._custom: CustomCallback runs a function on one event type."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from asyncloop import (
    CancelFittingException,
    CustomCallback,
    EpochBegin,
    Event,
    ProtectedError,
    Read,
    Recorder,
    StepBegin,
    StepEnd,
    TrainingPhase,
    ValidationPhase,
    epoch,
    fit,
    test_learner,
)
from matchers import exact


class TestCustomCallback:
    def test_basic(self) -> None:
        """Seed #8: a CustomCallback on StepBegin runs once per step of a 16-batch training epoch."""
        count = {"x": 0}

        def increment(learner: Any) -> None:
            count["x"] += 1

        trio.run(epoch, test_learner(CustomCallback(increment, StepBegin)), TrainingPhase())
        assert count["x"] == 16

    def test_interrupt(self) -> None:
        """Seed #9: CancelFittingException at the first StepEnd stops epoch() before the Recorder counts the step."""
        # No edge orders the two, so the later-registered CustomCallback runs first (reverse registration).

        def stop(learner: Any) -> None:
            raise CancelFittingException("test")

        learner = test_learner(Recorder(), CustomCallback(stop, StepEnd, TrainingPhase))
        with pytest.raises(CancelFittingException, match=exact("test")):
            trio.run(epoch, learner, TrainingPhase())
        history = learner.cbstate.history[TrainingPhase()]
        assert (history.epochs, history.steps) == (0, 0)

    def test_phase_filter(self) -> None:
        """With a phase, the function runs only in phases of that type."""
        phases: list[str] = []
        cb = CustomCallback(lambda learner: phases.append("v"), StepEnd, ValidationPhase)
        trio.run(fit, test_learner(cb, n_batches=2), 1)
        assert phases == ["v", "v"]

    def test_event_base_class_matches_every_event(self) -> None:
        """An event base class matches all its subclasses: CustomCallback(fn, Event) sees every event."""
        seen: list[int] = []
        trio.run(epoch, test_learner(CustomCallback(lambda _: seen.append(1), Event), n_batches=1), TrainingPhase())
        assert len(seen) == 7

    def test_async_function(self) -> None:
        """fn may be async; it is awaited at the event."""
        seen: list[int] = []

        async def record(learner: Any) -> None:
            await trio.sleep(0)
            seen.append(1)

        trio.run(epoch, test_learner(CustomCallback(record, EpochBegin), n_batches=1), TrainingPhase())
        assert seen == [1]

    def test_access_grants_state(self) -> None:
        """fn sees the learner through the access tree: declared state is readable, the rest is protected."""
        losses: list[float] = []
        errors: list[str] = []

        def peek(learner: Any) -> None:
            losses.append(learner.step.loss.item())
            try:
                learner.model
            except ProtectedError as exc:
                errors.append(str(exc))

        cb = CustomCallback(peek, StepEnd, access={"step": {"loss": Read()}})
        trio.run(epoch, test_learner(cb, n_batches=2), ValidationPhase())
        assert len(losses) == 2
        assert errors == ["Read access to Learner.model disallowed."] * 2
        assert cb.state_access == {"step": {"loss": Read()}}

    def test_no_access_by_default(self) -> None:
        """Without access, fn can read nothing from the learner."""
        cb = CustomCallback(lambda learner: learner.step, StepEnd)
        assert cb.state_access == {}
        with pytest.raises(ProtectedError, match=r"^Read access to Learner\.step disallowed\.\n"):
            trio.run(epoch, test_learner(cb, n_batches=1), TrainingPhase())

    def test_name(self) -> None:
        """The name shows the function and the event."""

        def hook(learner: Any) -> None:
            pass

        assert CustomCallback(hook, StepEnd).name == "CustomCallback(hook, StepEnd)"

    def test_bad_arguments(self) -> None:
        """CustomCallback checks its function, event class and phase class."""
        with pytest.raises(TypeError, match=exact("CustomCallback needs a function fn(learner) first, got StepEnd()")):
            CustomCallback(StepEnd(), StepEnd)  # type: ignore[arg-type]
        with pytest.raises(
            TypeError, match=exact("CustomCallback event must be an Event class such as StepEnd, got StepEnd()")
        ):
            CustomCallback(print, StepEnd())  # type: ignore[arg-type]
        with pytest.raises(
            TypeError,
            match=exact("CustomCallback phase must be a Phase class such as TrainingPhase, got TrainingPhase()"),
        ):
            CustomCallback(print, StepEnd, TrainingPhase())  # type: ignore[arg-type]

    def test_handler_lookup(self) -> None:
        """handler() matches the configured event and phase types only."""
        cb = CustomCallback(print, StepEnd, ValidationPhase)
        assert cb.handler(StepEnd, ValidationPhase) is not None
        assert cb.handler(StepEnd, TrainingPhase) is None
        assert cb.handler(StepBegin, ValidationPhase) is None
