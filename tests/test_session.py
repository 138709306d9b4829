"""Tests for asyncloop._session: a run on its worker thread, concurrency, cancellation, teardown, dispatch."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

from asyncloop import (
    CancelFittingException,
    Callback,
    CustomCallback,
    FitBegin,
    FitResult,
    Recorder,
    StepEnd,
    TrainingPhase,
    epoch,
    fit,
    test_learner,
)
from loops import Boom, SlowSteps, history, raiser
from matchers import exact


# ----------------------------------------------------------------------------------------------------------------
# Concurrency and cancellation
# ----------------------------------------------------------------------------------------------------------------


def worker_threads() -> list[threading.Thread]:
    """The threads currently running an asyncloop loop."""
    return [t for t in threading.enumerate() if t.name == "asyncloop-worker"]


class TestCancellation:
    async def test_cancel_scope_stops_fit_promptly(self) -> None:
        """Cancelling the caller stops the fit within about one step, and leaves no worker thread behind."""
        slow = SlowSteps()
        learner = test_learner(slow, n_batches=50)
        total = 2 * 2 * 50
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await fit(learner, 2)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            while slow.steps < 3:
                await trio.sleep(0.005)
            at_cancel = slow.steps
            scope.cancel()
        assert scope.cancelled_caught
        assert slow.steps <= at_cancel + 5
        assert slow.steps < total / 2
        await trio.testing.wait_all_threads_completed()
        assert worker_threads() == []
        assert trio.testing.active_thread_count() == 0

    async def test_move_on_after(self) -> None:
        """trio.move_on_after around await fit(...) ends the fit early, far fewer steps than asked for."""
        slow = SlowSteps()
        with trio.move_on_after(0.3) as scope:
            await fit(test_learner(slow, n_batches=50), 2)
        assert scope.cancelled_caught
        assert slow.steps < 2 * 2 * 50 / 2
        assert worker_threads() == []

    async def test_learner_usable_after_cancellation(self) -> None:
        """After a cancelled fit the same learner can be fitted again."""
        slow = SlowSteps()
        learner = test_learner(Recorder(), slow, n_batches=50)
        with trio.move_on_after(0.1):
            await fit(learner, 1)
        result = await fit(learner, 1, (learner.data.training[:1], []))
        assert result.epochs == 1

    async def test_two_learners_fit_concurrently(self) -> None:
        """Two fits of different learners run at the same time in one nursery, each with its own results."""
        barrier = threading.Barrier(2, timeout=30)
        learners = [
            test_learner(Recorder(), CustomCallback(lambda _: barrier.wait(), FitBegin), n_batches=2, coeff=c)
            for c in (2.0, 3.0)
        ]
        results: dict[int, FitResult] = {}

        async def run(i: int) -> None:
            results[i] = await fit(learners[i], 2)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, 0)
            nursery.start_soon(run, 1)
        assert [results[i].epochs for i in (0, 1)] == [2, 2]
        assert [history(learner) for learner in learners] == [(2, 4, 2), (2, 4, 2)]

    async def test_second_fit_of_same_learner_is_refused(self) -> None:
        """A second fit of a learner that is already fitting raises RuntimeError; the first one completes."""
        started, release = threading.Event(), threading.Event()

        def hold(_: Any) -> None:
            started.set()
            release.wait(30)

        learner = test_learner(Recorder(), CustomCallback(hold, FitBegin), n_batches=1)
        results: list[FitResult] = []

        async def first() -> None:
            results.append(await fit(learner, 1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            while not started.is_set():
                await trio.sleep(0.001)
            try:
                with pytest.raises(
                    RuntimeError,
                    match=exact(
                        "fit() is already running for this learner; await it before starting another, "
                        "or use a second Learner"
                    ),
                ):
                    await fit(learner, 1)
                with pytest.raises(RuntimeError, match=r"^fit\(\) is already running for this learner"):
                    await epoch(learner, TrainingPhase())
            finally:
                release.set()
        assert results[0].epochs == 1


# ----------------------------------------------------------------------------------------------------------------
# Callback.teardown
# ----------------------------------------------------------------------------------------------------------------


class Closing(Callback):
    """Records every teardown call with the learner it received."""

    def __init__(self, fail: bool = False) -> None:
        self.torn_down: list[Any] = []
        self.fail = fail

    def teardown(self, learner: Any) -> None:
        self.torn_down.append(learner)
        if self.fail:
            raise OSError("cannot close")


class TestTeardown:
    def test_after_success(self) -> None:
        """teardown runs once after a successful fit, with the unprotected learner."""
        cb = Closing()
        learner = test_learner(cb, n_batches=1)
        trio.run(fit, learner, 1)
        assert cb.torn_down == [learner]

    def test_after_stop_and_error(self) -> None:
        """teardown also runs when the fit stops early and when it fails."""
        stop, fail = Closing(), Closing()
        trio.run(fit, test_learner(stop, CustomCallback(raiser(CancelFittingException("x")), StepEnd), n_batches=1), 1)
        with pytest.raises(ValueError):
            trio.run(fit, test_learner(fail, Boom(), n_batches=1), 1)
        assert len(stop.torn_down) == 1
        assert len(fail.torn_down) == 1

    async def test_after_cancellation(self) -> None:
        """teardown runs when the caller cancels the fit."""
        cb = Closing()
        with trio.move_on_after(0.05):
            await fit(test_learner(cb, SlowSteps(), n_batches=50), 1)
        assert len(cb.torn_down) == 1

    def test_teardown_error_is_raised_with_a_note(self) -> None:
        """An error in teardown after an otherwise successful fit is raised, noted with the callback."""
        with pytest.raises(OSError, match=exact("cannot close\nasyncloop: raised by Closing.teardown()")):
            trio.run(fit, test_learner(Closing(fail=True), n_batches=1), 1)

    def test_teardown_error_does_not_hide_the_fit_error(self) -> None:
        """When the fit itself failed, that error is raised, not the teardown's."""
        with pytest.raises(ValueError, match=r"^boom\n"):
            trio.run(fit, test_learner(Closing(fail=True), Boom(), n_batches=1), 1)


class TestDispatcher:
    async def test_one_dispatcher_per_phase_instance(self) -> None:
        """A session keeps one dispatcher per phase instance, and handlers receive the instance dispatched with."""
        from asyncloop import AbstractTrainingPhase, Event, Phase, StepBegin, on
        from asyncloop._session import in_session

        class Tagged(AbstractTrainingPhase):
            def __init__(self, tag: str) -> None:
                self.tag = tag

        class Spy(Callback):
            def __init__(self) -> None:
                self.tags: list[str] = []

            @on(Event, AbstractTrainingPhase)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                self.tags.append(phase.tag)  # type: ignore[attr-defined]

        spy = Spy()
        learner = test_learner(spy, n_batches=1)

        async def body() -> None:
            session = learner.session
            assert session is not None
            a, b = Tagged("a"), Tagged("b")
            first = session.dispatcher(a)
            assert session.dispatcher(a) is first
            second = session.dispatcher(b)
            assert second.phase is b and second is not first
            await second.handle(StepBegin())
            await session.dispatcher(a).handle(StepBegin())

        await in_session(learner, body)
        assert spy.tags == ["b", "a"]

    async def test_plans_hold_each_event_types_plan_and_none_without_a_handler(self) -> None:
        """A dispatcher's ``plans`` hold the plan of each event type it looked up in its phase, ``None`` for exactly
        those without a handler: the built-in steps call the plans themselves and skip the ``None`` ones (each
        plan is looked up once per event type, not per step)."""
        from asyncloop import BackwardBegin, BackwardEnd, EpochBegin, LossBegin, StepBegin, on
        from asyncloop.runners import LinearRunner

        class AtStepEnd(Callback):
            @on(StepEnd, TrainingPhase)
            def h(self, event: Any, phase: Any, learner: Any) -> None:
                pass

        learner = test_learner(AtStepEnd(), n_batches=3)
        compiled: list[Any] = []
        plan = LinearRunner.plan

        def counting(runner: Any, event: Any, phase: Any) -> Any:
            compiled.append((event, phase))
            return plan(runner, event, phase)

        seen: dict[str, Any] = {}

        class Peek(Callback):
            @on(StepEnd, TrainingPhase)
            def h(self, event: Any, phase: Any, view: Any) -> None:
                seen["plans"] = dict(learner.session.dispatcher(phase).plans)  # the learner itself, not the view

        learner.add_callback(Peek())
        LinearRunner.plan = counting  # type: ignore[method-assign]
        try:
            await fit(learner, 1, (learner.data.training, None))
        finally:
            LinearRunner.plan = plan  # type: ignore[method-assign]
        plans = seen["plans"]
        assert {e for e, p in plans.items() if p is None} == {EpochBegin, StepBegin, LossBegin, BackwardBegin, BackwardEnd}
        assert callable(plans[StepEnd])
        steps = [(e, p) for e, p in compiled if e in (StepBegin, LossBegin, BackwardBegin, BackwardEnd, StepEnd)]
        assert len(steps) == 5  # one lookup per event type for the three steps

    async def test_a_request_is_delivered_at_an_event_without_handlers(self) -> None:
        """A control request pending at an event no callback handles is still delivered there: the step that
        skips the dispatch call for a handler-less event still checks for it (here: the next ``StepBegin``,
        before the second step's forward pass)."""
        from asyncloop import on

        class Requests(Callback):
            @on(StepEnd, TrainingPhase)
            def h(self, event: Any, phase: Any, view: Any) -> None:
                # what a detached actor's request does: set on the session, delivered at the loop's next event
                learner.session.control = CancelFittingException("asked between two steps")

        learner = test_learner(Requests(), n_batches=4)
        calls = 0
        forward = learner.model.forward

        def counted(xs: Any) -> Any:
            nonlocal calls
            calls += 1
            return forward(xs)

        learner.model.forward = counted  # type: ignore[method-assign]
        result = await fit(learner, 1, (learner.data.training, None))
        assert result.stopped and str(result.reason) == "asked between two steps"
        assert calls == 1


class TestErrorsComeOutAsThemselves:
    def test_base_exception_in_teardown_still_runs_every_teardown(self) -> None:
        """A teardown raising KeyboardInterrupt/SystemExit does not skip later teardowns; it is re-raised after."""

        class Interrupting(Callback):
            def teardown(self, learner: Any) -> None:
                raise KeyboardInterrupt()

        later = Closing()
        learner = test_learner(Interrupting(), later, n_batches=1)
        with pytest.raises(KeyboardInterrupt):
            trio.run(fit, learner, 1)
        assert later.torn_down == [learner]

    async def test_interrupt_in_a_host_task_is_not_grouped(self) -> None:
        """A KeyboardInterrupt raised in a task of the session's host nursery comes out of fit as itself."""
        from asyncloop import ActorRunner, Event, Phase, StepEnd, on

        box: list[Any] = []

        def interrupt() -> None:
            raise KeyboardInterrupt()

        class Interrupter(Callback):
            detached = True
            blocking = False

            @on(StepEnd, TrainingPhase)
            async def h(self, event: Event, phase: Phase, learner: Any) -> None:
                box[0].session.nursery.start_soon(_raise_async, interrupt)

        learner = test_learner(Interrupter(), SlowSteps(), n_batches=20, runner=ActorRunner())
        box.append(learner)
        with pytest.raises(KeyboardInterrupt) as info:
            await fit(learner, 1)
        assert type(info.value) is KeyboardInterrupt


async def _raise_async(fn: Any) -> None:
    fn()
