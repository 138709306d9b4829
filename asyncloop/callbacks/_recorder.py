"""Recorder: counts completed epochs and steps per phase in ``learner.cbstate.history``."""

from __future__ import annotations

from typing import Any

from .._callback import Callback, on, pristine
from ..events import EpochBegin, EpochEnd, StepEnd
from ..phases import Phase
from .._access import Write
from .._containers import History, PhaseDict


class Recorder(Callback):
    """Maintain ``learner.cbstate.history[phase]``, a :class:`asyncloop.History` of *completed* units.

    ``steps_epoch`` resets at ``EpochBegin``; ``steps`` and ``steps_epoch`` grow at ``StepEnd`` (a cancelled
    step does not count); ``epochs`` grows at ``EpochEnd``. A default callback.

    Example::

        learner = Learner(model, loss_fn, data=data)   # Recorder is added by default
        trio.run(fit, learner, 2)
        learner.cbstate.history[TrainingPhase()].epochs  # 2
    """

    state_access = {"cbstate": {"history": Write()}}

    def init(self, learner: Any) -> None:
        if "history" not in learner.cbstate:
            learner.cbstate.history = PhaseDict(History)

    @on(EpochBegin)
    def epoch_begin(self, event: EpochBegin, phase: Phase, learner: Any) -> None:
        learner.cbstate.history[phase].steps_epoch = 0

    @on(StepEnd)
    def step_end(self, event: StepEnd, phase: Phase, learner: Any) -> None:
        history = learner.cbstate["history"][phase]  # item access: no PropDict.__getattr__ call every step
        history.steps += 1
        history.steps_epoch += 1

    @on(EpochEnd)
    def epoch_end(self, event: EpochEnd, phase: Phase, learner: Any) -> None:
        learner.cbstate.history[phase].epochs += 1

    def _takes_learner(self) -> bool:
        return pristine(self, Recorder)

    def state_dict(self) -> dict[str, Any]:
        return {}
