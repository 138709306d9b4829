"""Scheduler: set hyperparameters (learning rate, weight decay, ...) from schedules at every training step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._callback import Callback, ConflictResolution, NotDefined, RunFirst, on
from ..events import StepBegin
from ..hyperparameters import HyperParameter, _check_hyperparameter, merge_access
from ..phases import AbstractTrainingPhase, Phase
from .._access import Read, Write
from .._containers import SeriesHistory
from ._recorder import Recorder


class Scheduler(Callback):
    """Set each hyperparameter to ``schedule(t)`` at every training ``StepBegin``, ``t = 1, 2, ...``.

    ``t`` counts training steps across epochs and fits (it restarts at 1 only when the callback is added to a
    learner again, and is saved in checkpoints). The value goes straight into the live optimizer (every param
    group for :class:`asyncloop.LearningRate`), so optimizer state is never rebuilt, and is recorded in
    ``cbstate.hyperparams`` under the hyperparameter's name at index ``history[phase].steps`` (completed training
    steps: 0 for the first step). A step cancelled before it completed is retried at the same index, and its
    record is replaced rather than duplicated.

    ``state_access`` is the Scheduler's own (``cbstate.hyperparams`` written, ``cbstate.history`` read) merged
    with every hyperparameter's. Validation steps are not scheduled.

    Example::

        from asyncloop.hyperparameters import cosine

        n = 10 * len(train_batches)
        scheduler = Scheduler({LearningRate: one_cycle(n, 0.01), WeightDecay: cosine(1e-2, 0.0, n)})
        learner = Learner(model, loss_fn, data=data, callbacks=[scheduler])
        trio.run(fit, learner, 10)
        learner.cbstate.hyperparams.last("LearningRate")   # (index, value)
    """

    run_after = (Recorder,)

    def __init__(self, schedules: Mapping[type[HyperParameter], Callable[[int], Any]] | None = None) -> None:
        if schedules is None:
            schedules = {}
        if not isinstance(schedules, Mapping):
            raise TypeError(
                f"Scheduler takes a dict {{HyperParameter: schedule}}, e.g. "
                f"Scheduler({{LearningRate: one_cycle(100, 0.01)}}), got {schedules!r}"
            )
        access: dict[str, Any] = {"cbstate": {"hyperparams": Write(), "history": Read()}}
        for h, schedule in schedules.items():
            _check_hyperparameter(h)
            if not callable(schedule):
                raise TypeError(f"the schedule for {h.__name__} must be a callable t -> value, got {schedule!r}")
            access = merge_access(access, h.state_access)
        self.schedules: dict[type[HyperParameter], Callable[[int], Any]] = dict(schedules)
        self.state_access = access  # type: ignore[misc]
        self._t = 1

    def init(self, learner: Any) -> None:
        if "hyperparams" not in learner.cbstate:
            learner.cbstate.hyperparams = SeriesHistory()
        self._t = 1

    def resolve_conflict(self, other: Callback) -> ConflictResolution:
        from ._todevice import ToDevice

        if isinstance(other, ToDevice):
            return RunFirst(other)  # FluxTraining #122: the model and its optimizer state move first
        return NotDefined()

    @on(StepBegin, AbstractTrainingPhase)
    def step_begin(self, event: StepBegin, phase: Phase, learner: Any) -> None:
        t = self._t
        index = learner.cbstate.history[phase].steps
        hyperparams: SeriesHistory = learner.cbstate.hyperparams
        for h, schedule in self.schedules.items():
            value = schedule(t)
            h.set(learner, value)
            _record(hyperparams, h.name, index, value)
        self._t = t + 1

    def state_dict(self) -> dict[str, Any]:
        return {"t": self._t}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._t = int(state["t"])

    def __repr__(self) -> str:
        inner = ", ".join(f"{h.__name__}: {s!r}" for h, s in self.schedules.items())
        return f"Scheduler({{{inner}}})"


def _record(history: SeriesHistory, name: str, index: int, value: Any) -> None:
    """Push ``(index, value)``; if the last record has this index (a cancelled step retried), replace it instead."""
    if name in history and history.last(name)[0] == index:
        history.replace_last(name, index, value)
    else:
        history.push(name, index, value)
