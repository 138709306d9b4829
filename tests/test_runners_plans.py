"""asyncloop.runners._plans and the capture hook: what plans return, what handlers receive under each runner."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
import trio

import asyncloop as al
from matchers import exact
from asyncloop.state import Protected


def learner(*callbacks: al.Callback, runner: al.runners.Runner, **kw: Any) -> al.Learner:
    torch.manual_seed(0)
    return al.test_learner(*callbacks, runner=runner, **kw)


RUNNERS = [al.LinearRunner, al.ActorRunner]


class Sync(al.Callback):
    @al.on(al.StepEnd)
    def h(self, event, phase, learner) -> None:
        pass


class Async(al.Callback):
    @al.on(al.StepEnd)
    async def h(self, event, phase, learner) -> None:
        await trio.lowlevel.checkpoint()


class TestPlans:
    @pytest.mark.parametrize("runner", RUNNERS)
    def test_a_sync_plan_returns_none(self, runner: type[al.runners.Runner]) -> None:
        """A plan of sync handlers is a plain function returning None: no coroutine on the hot path."""
        lrn = learner(Sync(), runner=runner(), n_batches=1)
        plan = lrn.runner.plan(al.StepEnd, al.TrainingPhase)
        assert plan is not None and not inspect.iscoroutinefunction(plan)
        assert plan(al.StepEnd(), al.TrainingPhase()) is None
        assert lrn.runner.statistics()[0].events == 1

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_an_async_plan_returns_an_awaitable(self, runner: type[al.runners.Runner]) -> None:
        """A plan with an async handler returns an awaitable that runs it."""
        lrn = learner(Sync(), Async(), runner=runner(), n_batches=1)
        plan = lrn.runner.plan(al.StepEnd, al.TrainingPhase)
        assert plan is not None
        trio.run(lambda: plan(al.StepEnd(), al.TrainingPhase()))  # type: ignore[arg-type,return-value]
        assert [s.events for s in lrn.runner.statistics()] == [1, 1]

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_no_handler_no_plan(self, runner: type[al.runners.Runner]) -> None:
        """An event nobody handles has no plan (the loop skips it)."""
        lrn = learner(Sync(), runner=runner(), n_batches=1)
        assert lrn.runner.plan(al.LossBegin, al.TrainingPhase) is None


class Captures(al.Callback):
    """A callback whose capture hook returns a marker: ("copy" or "live", the training step count)."""

    state_access = {"cbstate": {"history": al.Read()}}
    run_after = (al.Recorder,)

    def __init__(self, detached: bool) -> None:
        self.detached = detached  # type: ignore[misc]
        self.calls: list[bool] = []
        self.received: list[Any] = []

    def snapshot(self, event, phase, learner, *, copy: bool = True) -> Any:
        self.calls.append(copy)
        return ("copy" if copy else "live", learner.cbstate.history[phase].steps)

    @al.on(al.StepEnd, al.TrainingPhase)
    def h(self, event, phase, learner) -> None:
        self.received.append(learner)


class TestCaptureHook:
    @pytest.mark.parametrize(
        "runner, detached, kind",
        [(al.LinearRunner, False, "live"), (al.LinearRunner, True, "live"), (al.ActorRunner, False, "live"),
         (al.ActorRunner, True, "copy")],
    )
    def test_handlers_receive_what_the_hook_returns(self, runner, detached: bool, kind: str) -> None:
        """Under both runners a handler receives the hook's result: a copy for a detached actor, else live."""
        cb = Captures(detached)
        trio.run(al.fit, learner(al.Recorder(), cb, runner=runner(), n_batches=3), 1)
        assert cb.received == [(kind, 1), (kind, 2), (kind, 3)]
        assert cb.calls == [kind == "copy"] * 3  # called once per handled event, after the condition

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_a_condition_runs_before_the_hook(self, runner) -> None:
        """A throttled callback's hook runs only for the events its condition lets through."""
        cb = Captures(detached=runner is al.ActorRunner)
        throttled = al.throttle(cb, al.StepEnd, freq=2)
        trio.run(al.fit, learner(al.Recorder(), throttled, runner=runner(), n_batches=5), 1)
        assert [steps for _, steps in cb.received] == [1, 3, 5]
        assert len(cb.calls) == 3

    def test_linear_runner_passes_live_uncloned_state(self) -> None:
        """Under the LinearRunner a default (detached) callback gets the runner's cached protected view of the
        live learner: the same object every event, the live parameters, nothing cloned."""
        seen: list[Any] = []

        class Reader(al.Callback):
            state_access = {"model": al.Read()}
            detached = True

            @al.on(al.StepEnd, al.TrainingPhase)
            def h(self, event, phase, learner) -> None:
                seen.append((learner, learner.model.c.data_ptr()))

        lrn = learner(Reader(), runner=al.LinearRunner(), n_batches=3)
        trio.run(al.fit, lrn, 1)
        views = {id(view) for view, _ in seen}
        assert len(seen) == 3 and len(views) == 1 and isinstance(seen[0][0], Protected)
        assert {ptr for _, ptr in seen} == {lrn.model.c.data_ptr()}

    def test_default_hook(self) -> None:
        """The default hook: a protected copy with copy=True, a protected view of the live learner without."""

        class Reader(al.Callback):
            state_access = {"model": al.Read()}

        lrn = learner(runner=al.LinearRunner())
        copied = Reader().snapshot(al.StepEnd(), al.TrainingPhase(), lrn, copy=True)
        live = Reader().snapshot(al.StepEnd(), al.TrainingPhase(), lrn, copy=False)
        assert isinstance(copied, Protected) and isinstance(live, Protected)
        assert copied.model.c.data_ptr() != lrn.model.c.data_ptr()
        assert live.model.c.data_ptr() == lrn.model.c.data_ptr()

    def test_an_override_without_copy_is_refused_at_class_definition(self) -> None:
        """A capture hook that does not take ``copy`` is a TypeError saying the signature to use."""
        with pytest.raises(TypeError, match=exact(
            "Legacy.snapshot must take copy: define snapshot(self, event, phase, learner, *, copy=True) "
            "and copy the state only when copy is true"
        )):

            class Legacy(al.Callback):
                def snapshot(self, event, phase, learner):
                    return "legacy"

    def test_a_condition_forwards_copy_to_the_wrapped_hook(self) -> None:
        """ConditionalCallback's hook is the wrapped callback's, for both values of copy."""
        cb = Captures(detached=True)
        lrn = learner(al.Recorder(), runner=al.LinearRunner())
        wrapper = al.throttle(cb, al.StepEnd, freq=2)
        assert wrapper.snapshot(al.StepEnd(), al.TrainingPhase(), lrn, copy=False) == ("live", 0)
        assert wrapper.snapshot(al.StepEnd(), al.TrainingPhase(), lrn) == ("copy", 0)
