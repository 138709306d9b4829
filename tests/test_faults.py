"""The fault matrix and random cancellation: however a fit is interrupted, it ends, promptly and cleanly.

Every event x where the raising handler runs (inline, awaited async, detached sync, detached async) x both
runners x an ordinary error, ``SystemExit`` and ``KeyboardInterrupt``: ``fit`` raises that exception as itself
(never an exception group), within a bound, with no asyncloop thread left behind, and the learner fits again
afterwards. Then fits cancelled at random moments (seeded). The long soak lives in ``tests/test_soak.py``
(marked slow, outside CI).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
import trio

import asyncloop as al

EVENTS = [al.FitBegin, al.EpochBegin, al.StepBegin, al.LossBegin, al.BackwardBegin, al.BackwardEnd, al.StepEnd,
          al.EpochEnd, al.FitEnd]
PLACES = ["inline", "awaited", "detached", "detached_async"]
ERRORS = [ValueError, SystemExit, KeyboardInterrupt]


def asyncloop_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("asyncloop-")}


def raising(event: type[al.Event], place: str, error: type[BaseException]) -> al.Callback:
    """A callback that raises ``error("fault")`` the first time it handles ``event``."""
    is_async = place in ("awaited", "detached_async")

    class Fault(al.Callback):
        detached = place.startswith("detached")
        raised = False

        def fire(self) -> None:
            if not self.raised:
                self.raised = True
                raise error("fault")

        if is_async:

            @al.on(event, al.Phase)
            async def h(self, ev: Any, phase: Any, learner: Any) -> None:
                await trio.lowlevel.checkpoint()
                self.fire()
        else:

            @al.on(event, al.Phase)
            def h(self, ev: Any, phase: Any, learner: Any) -> None:
                self.fire()

    return Fault()


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("runner", [al.LinearRunner, al.ActorRunner], ids=["linear", "actor"])
def test_a_fault_anywhere_ends_the_fit_with_itself(runner: type, event: type, place: str, error: type) -> None:
    """A handler raising at any event, from anywhere, ends the fit with that exception as itself, within a bound,
    leaving no thread behind; the learner can fit again."""
    before = asyncloop_threads()
    fault = raising(event, place, error)
    learner = al.test_learner(al.Recorder(), fault, n_batches=3, runner=runner(cancel_grace=1.0)
                              if runner is al.ActorRunner else runner())
    t0 = time.perf_counter()
    with pytest.raises(error) as info:
        trio.run(al.fit, learner, 2)
    assert type(info.value) is error
    assert time.perf_counter() - t0 < 10
    assert asyncloop_threads() <= before
    assert trio.run(al.fit, learner, 1).epochs == 1  # the fault fired once: the learner works again


class SlowStep(al.Callback):
    """Makes every training step take a little time (so that cancellations land mid-fit)."""

    @al.on(al.StepEnd, al.TrainingPhase)
    def h(self, event: Any, phase: Any, learner: Any) -> None:
        time.sleep(0.0005)


class Lagging(al.Callback):
    """A detached reader that sometimes blocks, so cancellations also land while an actor is busy or full."""

    detached = True
    inbox_size = 4
    state_access = {"step": {"loss": al.Read()}}

    @al.on(al.StepEnd, al.TrainingPhase)
    def h(self, event: Any, phase: Any, learner: Any) -> None:
        if random.random() < 0.05:
            time.sleep(0.003)


@pytest.mark.parametrize("runner", [al.LinearRunner, al.ActorRunner], ids=["linear", "actor"])
async def test_random_cancellation(runner: type) -> None:
    """Fits cancelled at random moments (seeded) each end within a bound, leave no thread behind, and the learner
    fits again afterwards."""
    rng = random.Random(1234)
    before = asyncloop_threads()
    for _ in range(25):
        learner = al.test_learner(al.Recorder(), SlowStep(), Lagging(), al.Metrics(), n_batches=40,
                                  runner=runner())
        delay = rng.uniform(0.0, 0.08)
        t0 = time.perf_counter()
        with trio.move_on_after(delay):
            await al.fit(learner, 3)
        assert time.perf_counter() - t0 < delay + 5
        assert asyncloop_threads() <= before
        result = await al.fit(learner, 1, (learner.data.training[:2], learner.data.validation[:1]))
        assert result.epochs == 1
