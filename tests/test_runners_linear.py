"""Tests for asyncloop.runners._linear: the LinearRunner runs every handler inline, one at a time, in order."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
import trio

from asyncloop import (
    Callback,
    EpochEnd,
    Event,
    Learner,
    LinearRunner,
    Phase,
    Read,
    Recorder,
    StepEnd,
    TrainingPhase,
    ValidationPhase,
    epoch,
    fit,
    on,
    test_learner,
)
from asyncloop._callback import Handler


class Tracer(Callback):
    """Appends ``(name, "in"/"out")`` to a shared list around each StepEnd/EpochEnd; the handler is async."""

    def __init__(self, name: str, trace: list[tuple[str, str]]) -> None:
        self._name, self.trace = name, trace

    @property
    def name(self) -> str:
        return self._name

    @on(StepEnd)
    @on(EpochEnd)
    async def h(self, event: Event, phase: Phase, learner: Any) -> None:
        self.trace.append((self._name, "in"))
        await trio.sleep(0.001)
        self.trace.append((self._name, "out"))


def calls(trace: list[tuple[str, str]]) -> list[str]:
    """The names of the callbacks in ``trace`` in the order their handlers started."""
    return [name for name, what in trace if what == "in"]


class TestLinearRunner:
    def test_is_the_default_runner(self) -> None:
        """A Learner without runner= gets a LinearRunner of its own."""
        a, b = test_learner(), test_learner()
        assert isinstance(a.runner, LinearRunner)
        assert a.runner is not b.runner
        assert repr(a.runner) == "LinearRunner()"

    def test_handlers_run_one_at_a_time(self) -> None:
        """Each handler (even an async one that awaits) finishes before the next handler starts."""
        trace: list[tuple[str, str]] = []
        learner = test_learner(Tracer("a", trace), Tracer("b", trace), Tracer("c", trace), n_batches=2)
        trio.run(epoch, learner, TrainingPhase())
        assert trace == [(name, what) for _ in range(3) for name in "cba" for what in ("in", "out")]

    def test_unconstrained_handlers_run_in_reverse_registration_order(self) -> None:
        """Without ordering constraints, the last registered callback handles each event first."""
        trace: list[tuple[str, str]] = []
        learner = test_learner(*(Tracer(n, trace) for n in "abcd"), n_batches=1)
        trio.run(epoch, learner, TrainingPhase())
        assert calls(trace) == list("dcba") * 2

    def test_handlers_follow_the_graph(self) -> None:
        """run_after constraints decide the order in which handlers run."""
        trace: list[tuple[str, str]] = []

        class First(Tracer):
            pass

        class Second(Tracer):
            run_after = (First,)

        class Third(Tracer):
            run_after = (Second,)

        learner = test_learner(Third("3", trace), First("1", trace), Second("2", trace), n_batches=1)
        trio.run(epoch, learner, TrainingPhase())
        assert calls(trace) == ["1", "2", "3"] * 2

    def test_handlers_run_inline_on_the_loop_thread(self) -> None:
        """Every handler runs on the thread that runs the model and the loss."""
        threads: set[int] = set()

        class Where(Callback):
            @on(Event)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                threads.add(threading.get_ident())

        learner = test_learner(Where(), Where(), n_batches=1)
        loss_fn = learner.loss_fn

        def loss(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
            threads.add(threading.get_ident())
            return loss_fn(preds, ys)

        learner.loss_fn = loss
        trio.run(fit, learner, 1)
        assert len(threads) == 1

    def test_error_stops_the_rest_of_the_event(self) -> None:
        """An error in one handler skips the handlers that would run after it for that event."""
        trace: list[tuple[str, str]] = []

        class Fail(Callback):
            @on(StepEnd)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                raise RuntimeError("fail")

        learner = test_learner(Tracer("after", trace), Fail(), n_batches=1)
        with pytest.raises(RuntimeError, match=r"^fail\n"):
            trio.run(epoch, learner, TrainingPhase())
        assert trace == []

    def test_detached_changes_nothing(self) -> None:
        """Under the LinearRunner a detached callback sees live state, in order, and handles every event."""
        seen: list[Any] = []

        class Live(Callback):
            detached = True
            state_access = {"model": Read(), "cbstate": {"history": Read()}}

            @on(StepEnd, TrainingPhase)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                seen.append((learner.model, learner.cbstate.history[phase].steps))

        learner = test_learner(Live(), Recorder(), n_batches=3)
        trio.run(epoch, learner, TrainingPhase())
        assert [model is learner.model for model, _ in seen] == [True] * 3
        assert [steps for _, steps in seen] == [1, 2, 3]

    def test_plans_are_compiled_once_per_callback_set(self) -> None:
        """The runner asks a callback for its handlers once per (event, phase) type, not once per event."""
        asked: list[tuple[type, type]] = []

        class Counting(Callback):
            @on(StepEnd)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

            def handler(self, event: type[Event], phase: type[Phase]) -> Handler | None:
                asked.append((event, phase))
                return super().handler(event, phase)

        learner = test_learner(Counting(), n_batches=2)
        trio.run(fit, learner, 1)
        first = list(asked)
        trio.run(fit, learner, 2)
        assert asked == first
        assert len(set(first)) == len(first)

    def test_plans_follow_a_new_callback_set(self) -> None:
        """After set_callbacks, the new callbacks handle events and the removed ones do not."""
        old: list[tuple[str, str]] = []
        new: list[tuple[str, str]] = []
        learner = test_learner(Tracer("old", old), n_batches=1)
        trio.run(epoch, learner, TrainingPhase())
        learner.set_callbacks([Tracer("new", new)])
        trio.run(epoch, learner, TrainingPhase())
        assert calls(old) == ["old"] * 2
        assert calls(new) == ["new"] * 2

    def test_statistics(self) -> None:
        """FitResult.statistics has one entry per callback, in callback order, counting handled events."""
        trace: list[tuple[str, str]] = []
        learner = test_learner(Tracer("a", trace), Callback(), n_batches=2)
        result = trio.run(fit, learner, 2)
        stats = result.statistics
        assert [s.name for s in stats] == ["a", "Callback"]
        assert [s.events for s in stats] == [2 * (2 * 2 + 2), 0]
        assert stats[0].handler_time > 0
        assert not any(s.detached for s in stats)
        assert (stats[0].peak_lag, stats[0].peak_inbox) == (0, 0)

    def test_sync_handlers_each_get_their_own_time(self) -> None:
        """With several sync handlers for one event, each one's time is its own (the clock is read between them)."""
        import time

        class Slow(Callback):
            @on(StepEnd)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                time.sleep(0.02)

        class Quick(Callback):
            @on(StepEnd)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        class OnlyValidation(Callback):
            @on(StepEnd, ValidationPhase)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        result = trio.run(fit, test_learner(Quick(), Slow(), OnlyValidation(), n_batches=2), 1)
        quick, slow, only_validation = result.statistics
        assert (quick.events, slow.events, only_validation.events) == (4, 4, 2)
        assert slow.handler_time >= 4 * 0.02 and slow.max_handler_time >= 0.02
        assert quick.handler_time < slow.handler_time / 4

    def test_sync_error_names_its_callback_and_skips_the_rest(self) -> None:
        """An error in the first of several sync handlers carries its note; the later ones do not run."""
        ran: list[str] = []

        class Boom(Callback):
            @on(StepEnd)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                raise ValueError("boom")

        class Later(Callback):
            run_after = (Boom,)

            @on(StepEnd)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                ran.append("later")

        learner = test_learner(Later(), Boom(), n_batches=1)
        with pytest.raises(ValueError, match=r"^boom\n") as info:
            trio.run(fit, learner, 1)
        assert info.value.__notes__ == [
            "asyncloop: raised by callback Boom while handling StepEnd() in TrainingPhase()"
        ]
        assert ran == []

    def test_statistics_reset_per_fit(self) -> None:
        """Each fit reports only its own statistics."""
        trace: list[tuple[str, str]] = []
        learner = test_learner(Tracer("a", trace), n_batches=1)
        trio.run(fit, learner, 2)
        assert trio.run(fit, learner, 1).statistics[0].events == 4

    def test_explicit_runner(self) -> None:
        """An explicit LinearRunner() is bound to the learner and used."""
        runner = LinearRunner()
        learner = Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, runner=runner,
                          use_default_callbacks=False)
        assert learner.runner is runner
