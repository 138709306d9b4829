"""asyncloop.runners._delivery: detached actors' async handlers, errors and accounting."""

from __future__ import annotations

import pytest
import trio

import asyncloop as al

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def learner(*callbacks: al.Callback, **kw) -> al.Learner:
    return al.test_learner(*callbacks, runner=al.ActorRunner(), **kw)


class TestAsyncDetachedHandlers:
    async def test_error_ends_the_fit_with_a_note_naming_the_callback(self) -> None:
        """An error raised by an async handler of a detached callback ends the fit with that error, unwrapped,
        with a note naming the detached callback and the event."""

        class AsyncBoom(al.Callback):
            detached = True

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            async def boom(self, event, phase, learner) -> None:
                await trio.lowlevel.checkpoint()
                raise ValueError("async boom")

        with pytest.raises(ValueError, match="^async boom") as info:
            await al.fit(learner(AsyncBoom(), n_batches=200), 5)
        assert info.value.__notes__ == [
            "asyncloop: raised by detached callback AsyncBoom while handling StepEnd() in TrainingPhase()"
        ]

    async def test_cancel_fitting_stops_the_fit_cleanly(self) -> None:
        """Control flow from an async detached handler is a request, not an error: the fit stops cleanly."""

        class AsyncStopper(al.Callback):
            detached = True

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            async def stop(self, event, phase, learner) -> None:
                raise al.CancelFittingException("enough")

        lrn = learner(al.Recorder(), AsyncStopper(), n_batches=50)
        result = await al.fit(lrn, 20)
        assert result.stopped and str(result.reason) == "enough"
        assert lrn.cbstate.history[al.TrainingPhase()].epochs < 20

    async def test_every_event_is_handled_and_accounted(self) -> None:
        """Async and sync handlers of one detached callback see every event in order; each one is counted."""
        seen: list[str] = []

        class Mixed(al.Callback):
            detached = True

            @al.on(al.StepBegin)
            async def begin(self, event, phase, learner) -> None:
                await trio.lowlevel.checkpoint()
                seen.append("begin")

            @al.on(al.StepEnd)
            def end(self, event, phase, learner) -> None:
                seen.append("end")

        result = await al.fit(learner(Mixed(), n_batches=3), 2)
        assert seen == ["begin", "end"] * (2 * (3 + 3))
        stats = {s.name: s for s in result.statistics}["Mixed"]
        assert stats.detached and stats.events == len(seen) and stats.handler_time > 0
