"""Helpers shared by the tests of the loop and of the session: scripted raisers and small callbacks."""

from __future__ import annotations

import time
from typing import Any

from asyncloop import Callback, Event, Learner, Phase, StepEnd, TrainingPhase, on


def raiser(exc: BaseException, *, times: int | None = None, after: int = 0) -> Any:
    """A function for CustomCallback that raises ``exc`` on call ``after+1`` onwards (``times`` times at most)."""
    calls = {"n": 0, "raised": 0}

    def fn(learner: Any) -> None:
        calls["n"] += 1
        if calls["n"] > after and (times is None or calls["raised"] < times):
            calls["raised"] += 1
            raise exc

    return fn


def history(learner: Learner, phase: Phase = TrainingPhase()) -> tuple[int, int, int]:
    """``(epochs, steps, steps_epoch)`` of ``phase``."""
    h = learner.cbstate.history[phase]
    return h.epochs, h.steps, h.steps_epoch


class Boom(Callback):
    """Raises ValueError('boom') at the first training StepEnd."""

    @on(StepEnd, TrainingPhase)
    def h(self, event: Event, phase: Phase, learner: Any) -> None:
        raise ValueError("boom")


class SlowSteps(Callback):
    """Blocks the loop for 20 ms at every step (time.sleep), counting steps."""

    def __init__(self) -> None:
        self.steps = 0

    @on(StepEnd)
    def h(self, event: Event, phase: Phase, learner: Any) -> None:
        time.sleep(0.02)
        self.steps += 1
