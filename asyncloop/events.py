"""Events: the points in the training loop that callbacks hook into.

Events are value classes: every instance of one event type is equal to every other and hashes the same, so
``StepEnd() == StepEnd()``. Callbacks register handlers on event *types* with :func:`asyncloop.on`; a handler
registered on a base class (``Event``) receives every subclass. Custom events subclass :class:`Event` and are
dispatched with ``await handle(MyEvent())`` inside :func:`asyncloop.run_step` / :func:`asyncloop.run_epoch`.

Order of a training step::

    StepBegin (xs, ys) -> forward -> LossBegin (preds) -> loss -> BackwardBegin (loss)
    -> backward -> BackwardEnd (grads) -> optimizer step -> StepEnd

A validation step fires ``StepBegin -> LossBegin -> StepEnd``. ``FitBegin``/``FitEnd`` wrap a whole
:func:`asyncloop.fit` and are dispatched with :class:`asyncloop.phases.FitPhase`.
"""

from __future__ import annotations

from ._values import ValueClass

__all__ = [
    "Event",
    "FitBegin",
    "FitEnd",
    "EpochBegin",
    "EpochEnd",
    "StepBegin",
    "LossBegin",
    "BackwardBegin",
    "BackwardEnd",
    "StepEnd",
]


class Event(ValueClass):
    """Base class of all events. Instances are values: equal and hashed by type."""

    __slots__ = ()


class FitBegin(Event):
    """Fired once when :func:`asyncloop.fit` starts, before the first epoch."""

    __slots__ = ()


class FitEnd(Event):
    """Fired once when :func:`asyncloop.fit` ends, also after a ``CancelFittingException``."""

    __slots__ = ()


class EpochBegin(Event):
    """Fired at the beginning of every epoch (training and validation)."""

    __slots__ = ()


class EpochEnd(Event):
    """Fired at the end of every epoch, also when the epoch was cut short by ``CancelEpochException``."""

    __slots__ = ()


class StepBegin(Event):
    """Fired at the beginning of a step; ``learner.step.xs`` and ``learner.step.ys`` are set."""

    __slots__ = ()


class LossBegin(Event):
    """Fired after the forward pass, before the loss; ``learner.step.preds`` is set."""

    __slots__ = ()


class BackwardBegin(Event):
    """Fired after the loss, before the backward pass (training only); ``learner.step.loss`` is set."""

    __slots__ = ()


class BackwardEnd(Event):
    """Fired after the backward pass, before the optimizer update (training only); ``learner.step.grads`` is set."""

    __slots__ = ()


class StepEnd(Event):
    """Fired at the end of a step, after the optimizer update. Skipped when the step is cancelled."""

    __slots__ = ()
