"""Tests for asyncloop.callbacks._conditional: ConditionalCallback, the throttles and throttle()."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from asyncloop import (
    Callback,
    CallbackCondition,
    CancelStepException,
    ConditionalCallback,
    ConflictResolution,
    CustomCallback,
    EpochEnd,
    FrequencyThrottle,
    History,
    Metrics,
    NoConflict,
    Recorder,
    StepBegin,
    StepEnd,
    TimeThrottle,
    TrainingPhase,
    ValidationPhase,
    Write,
    callback_graph,
    epoch,
    fit,
    test_learner,
    throttle,
)
from matchers import exact


def train(cb: Callback, **kw: Any) -> History:
    """FluxTraining's helper: one training epoch of a test learner with ``cb``; returns the training history."""
    learner = test_learner(cb, **kw)
    trio.run(epoch, learner, TrainingPhase())
    return learner.cbstate.history[TrainingPhase()]


class TestThrottle:
    def test_unthrottled(self) -> None:
        """Seed #5: an unthrottled Recorder counts all 16 steps."""
        assert train(Recorder()).steps == 16

    @pytest.mark.parametrize(("freq", "steps"), [(1, 16), (2, 8), (16, 1)])
    def test_freq(self, freq: int, steps: int) -> None:
        """Seed #6: throttle(Recorder(), StepEnd, freq=k) records occurrences 1, k+1, 2k+1, ..."""
        assert train(throttle(Recorder(), StepEnd, freq=freq)).steps == steps

    @pytest.mark.parametrize(("seconds", "steps"), [(0, 16), (10, 1)])
    def test_seconds(self, seconds: float, steps: int) -> None:
        """Seed #7: seconds=0 lets every step through; seconds=10 only the first."""
        assert train(throttle(Recorder(), StepEnd, seconds=seconds)).steps == steps

    def test_throttled_cancel_step(self) -> None:
        """Seed #20: a CancelStepException throttled to every second StepBegin cancels half the steps."""

        def cancel(learner: Any) -> None:
            raise CancelStepException("test")

        cb = throttle(CustomCallback(cancel, StepBegin, TrainingPhase), StepBegin, freq=2)
        learner = test_learner(cb, Recorder())
        trio.run(epoch, learner, TrainingPhase())
        assert learner.cbstate.history[TrainingPhase()].steps == 8

    def test_other_events_pass(self) -> None:
        """Events other than the throttled type always reach the wrapped callback."""
        history = train(throttle(Recorder(), StepEnd, freq=16))
        assert (history.epochs, history.steps) == (1, 1)

    def test_counter_is_shared_across_phases(self) -> None:
        """The frequency counter counts the event type over all phases (FluxTraining's behaviour)."""
        learner = test_learner(throttle(Recorder(), StepEnd, freq=2), n_batches=3)
        trio.run(fit, learner, 1)
        assert learner.cbstate.history[TrainingPhase()].steps == 2
        assert learner.cbstate.history[ValidationPhase()].steps == 1

    @pytest.mark.parametrize("kwargs", [{}, {"freq": 2, "seconds": 1.0}])
    def test_needs_exactly_one_of_freq_and_seconds(self, kwargs: dict[str, Any]) -> None:
        """throttle with both or neither of freq and seconds is an error."""
        message = "Pass either freq or seconds to throttle, not both and not neither"
        with pytest.raises(ValueError, match=exact(message)):
            throttle(Recorder(), StepEnd, **kwargs)

    def test_builds_the_matching_condition(self) -> None:
        """freq gives a FrequencyThrottle, seconds a TimeThrottle."""
        assert isinstance(throttle(Recorder(), StepEnd, freq=3).condition, FrequencyThrottle)
        assert isinstance(throttle(Recorder(), StepEnd, seconds=1).condition, TimeThrottle)


class TestConditions:
    def test_frequency_throttle_sequence(self) -> None:
        """FrequencyThrottle(3) lets through occurrences 1, 4, 7 of its event and every other event."""
        cond = FrequencyThrottle(3, StepEnd)
        assert [cond.should_run(StepEnd(), TrainingPhase()) for _ in range(7)] == [
            True, False, False, True, False, False, True
        ]
        assert cond.should_run(EpochEnd(), TrainingPhase())

    def test_time_throttle_lets_first_event_through(self) -> None:
        """TimeThrottle lets the first event through and blocks the next within the interval."""
        cond = TimeThrottle(60, StepEnd)
        assert cond.should_run(StepEnd(), TrainingPhase())
        assert not cond.should_run(StepEnd(), TrainingPhase())
        assert cond.should_run(EpochEnd(), TrainingPhase())

    @pytest.mark.parametrize("freq", [0, -1, 1.5, True])
    def test_bad_freq(self, freq: Any) -> None:
        """freq must be an int >= 1."""
        with pytest.raises(ValueError, match=exact(f"freq must be an int >= 1, got {freq!r}")):
            FrequencyThrottle(freq, StepEnd)

    @pytest.mark.parametrize("seconds", [-1, "1", True])
    def test_bad_seconds(self, seconds: Any) -> None:
        """seconds must be a number >= 0."""
        with pytest.raises(ValueError, match=exact(f"seconds must be a number >= 0, got {seconds!r}")):
            TimeThrottle(seconds, StepEnd)

    def test_reprs(self) -> None:
        """The throttles repr with their settings."""
        assert repr(FrequencyThrottle(2, StepEnd)) == "FrequencyThrottle(2, StepEnd)"
        assert repr(TimeThrottle(1, StepEnd)) == "TimeThrottle(1.0, StepEnd)"

    def test_condition_must_implement_should_run(self) -> None:
        """A CallbackCondition subclass without should_run says what to implement."""

        class Never(CallbackCondition):
            pass

        with pytest.raises(NotImplementedError, match=exact("Never must implement should_run(event, phase)")):
            Never().should_run(StepEnd(), TrainingPhase())

    def test_custom_condition(self) -> None:
        """A custom condition decides per event and phase."""

        class OnlyValidation(CallbackCondition):
            def should_run(self, event: Any, phase: Any) -> bool:
                return isinstance(phase, ValidationPhase)

        learner = test_learner(ConditionalCallback(Recorder(), OnlyValidation()), n_batches=2)
        trio.run(fit, learner, 1)
        assert learner.cbstate.history[TrainingPhase()] == History(0, 0, 0)
        assert learner.cbstate.history[ValidationPhase()] == History(1, 2, 2)


class TestConditionalCallback:
    def test_forwards_declarations(self) -> None:
        """The wrapper takes the wrapped callback's state_access, run_after and detached setting."""
        cb = throttle(Metrics(), StepEnd, freq=2)
        assert cb.state_access == Metrics.state_access
        assert cb.run_after == (Recorder,)
        assert cb.detached is False

    def test_other_callbacks_see_through_the_wrapper(self) -> None:
        """run_after = (Recorder,) of another callback orders it after a throttled Recorder."""
        g = callback_graph([Metrics(), throttle(Recorder(), StepEnd, freq=2)])
        assert (1, 0) in g.edges

    def test_forwards_resolve_conflict(self) -> None:
        """The wrapped callback's resolve_conflict answers for the wrapper."""

        class Writer(Callback):
            state_access = {"cbstate": {"x": Write()}}

        class Tolerant(Writer):
            def resolve_conflict(self, other: Callback) -> ConflictResolution:
                return NoConflict()

        wrapped = throttle(Tolerant(), StepEnd, freq=2)
        assert wrapped.resolve_conflict(Writer()) == NoConflict()
        assert list(callback_graph([Writer(), wrapped]).edges) == []

    def test_forwards_init(self) -> None:
        """init is delegated: a throttled Recorder creates cbstate.history."""
        learner = test_learner(throttle(Recorder(), StepEnd, freq=2))
        assert learner.cbstate.history[TrainingPhase()] == History()

    def test_throttled_default_is_not_added_twice(self) -> None:
        """A throttled Recorder counts as the default Recorder, so no second Recorder (and no conflict) appears."""
        learner = test_learner(throttle(Recorder(), StepEnd, freq=2), use_default_callbacks=True)
        assert [cb.name for cb in learner.callbacks] == [
            "ConditionalCallback(Recorder)", "ProgressPrinter", "MetricsPrinter", "StopOnNaNLoss", "Metrics"
        ]

    def test_wrapped_and_name(self) -> None:
        """wrapped is the innermost callback; the name shows it."""
        inner = Recorder()
        cb = throttle(throttle(inner, StepEnd, freq=2), EpochEnd, freq=2)
        assert cb.wrapped is inner
        assert cb.callback.callback is inner
        assert throttle(inner, StepEnd, freq=2).name == "ConditionalCallback(Recorder)"

    def test_inner_sees_through_nested_wrappers(self) -> None:
        """inner is the innermost wrapped callback at every level of nesting, the same object as wrapped."""
        inner = Recorder()
        once = throttle(inner, StepEnd, freq=2)
        twice = throttle(once, EpochEnd, freq=2)
        assert once.inner is inner
        assert twice.inner is inner
        assert twice.wrapped is twice.inner

    def test_wrapped_callback_keeps_run_after_ordering(self) -> None:
        """run_after = (Recorder,) orders a callback after a Recorder wrapped twice (seen through inner)."""
        g = callback_graph([Metrics(), throttle(throttle(Recorder(), StepEnd, freq=2), EpochEnd, freq=3)])
        assert (1, 0) in g.edges

    def test_get_callback_does_not_unwrap(self) -> None:
        """As in FluxTraining, get_callback(Inner) misses a wrapped callback; get_callback of the wrapper finds it."""
        cb = throttle(Recorder(), StepEnd, freq=2)
        learner = test_learner(cb)
        assert learner.get_callback(Recorder) is None
        assert learner.get_callback(ConditionalCallback) is cb

    def test_skipped_events_are_not_counted(self) -> None:
        """Events the condition rejects never reach the wrapped handler (statistics count only forwarded ones)."""
        result = trio.run(fit, test_learner(throttle(Recorder(), StepEnd, freq=4), n_batches=4), 1)
        # two EpochBegin + two EpochEnd + StepEnd occurrences 1 and 5 (of 8, counted over both phases)
        assert result.statistics[0].events == 6

    def test_bad_arguments(self) -> None:
        """ConditionalCallback needs a callback instance and a CallbackCondition."""
        with pytest.raises(TypeError, match=exact("ConditionalCallback wraps a Callback instance, got 3")):
            ConditionalCallback(3, FrequencyThrottle(2, StepEnd))  # type: ignore[arg-type]
        with pytest.raises(
            TypeError, match=exact("condition must be a CallbackCondition such as FrequencyThrottle, got 2")
        ):
            ConditionalCallback(Recorder(), 2)  # type: ignore[arg-type]
