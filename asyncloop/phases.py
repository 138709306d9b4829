"""Phases: what kind of epoch is running, used by callbacks to choose their handler.

Phases are values: ``TrainingPhase() == TrainingPhase()`` and they hash equal, so they key dictionaries such as
``learner.cbstate.history[TrainingPhase()]``. Handlers dispatch on phase *types* (``@on(StepEnd,
AbstractTrainingPhase)``), so a custom phase should subclass :class:`AbstractTrainingPhase` or
:class:`AbstractValidationPhase` and implement :meth:`Phase.step` (see :func:`asyncloop.run_step`).

Hierarchy::

    Phase
    ├── AbstractTrainingPhase   (data key "training")
    │   └── TrainingPhase
    ├── AbstractValidationPhase (data key "validation")
    │   └── ValidationPhase
    └── FitPhase                (FitBegin / FitEnd only)
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

from . import _steps
from ._containers import PropDict
from ._values import ValueClass

if TYPE_CHECKING:
    from ._learner import Learner

__all__ = [
    "Phase",
    "AbstractTrainingPhase",
    "AbstractValidationPhase",
    "TrainingPhase",
    "ValidationPhase",
    "FitPhase",
]


class Phase(ValueClass):
    """Base class of all phases. Instances are values: equal and hashed by type.

    Subclasses customise a phase's behaviour by overriding :meth:`step` (one batch) and, rarely, :meth:`epoch`
    (one pass over the data). ``data_key`` names the entry of ``learner.data`` an epoch of this phase uses.
    """

    __slots__ = ()
    data_key: ClassVar[str | None] = None

    async def epoch(self, learner: Learner, data: Any) -> None:
        """Run one epoch over ``data``: ``EpochBegin``, one :meth:`step` per batch, ``EpochEnd``."""
        await _steps.default_epoch(learner, self, data)

    async def step(self, learner: Learner, batch: Any) -> Any:
        """Run one step on ``batch``. Custom phases must implement this, usually with :func:`asyncloop.run_step`."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement step(); define "
            f"'async def step(self, learner, batch)' using asyncloop.run_step"
        )


class AbstractTrainingPhase(Phase):
    """Phases that update the model's parameters. Handlers on this type run for custom training phases too."""

    __slots__ = ()
    data_key: ClassVar[str | None] = "training"


class AbstractValidationPhase(Phase):
    """Phases that only evaluate the model. Handlers on this type run for custom validation phases too."""

    __slots__ = ()
    data_key: ClassVar[str | None] = "validation"


class TrainingPhase(AbstractTrainingPhase):
    """Supervised training: forward, loss, backward and optimizer step on every ``(xs, ys)`` batch."""

    __slots__ = ()

    def step(self, learner: Learner, batch: Any) -> Coroutine[Any, Any, PropDict]:
        """``await phase.step(learner, batch)`` runs one training step. A plain method that returns the step
        skeleton's coroutine (one coroutine fewer per step): the state is built and the model put in training
        mode when it is called, so await it at once (``await super().step(learner, batch)`` in a subclass)."""
        if batch.__class__ is tuple and len(batch) == 2:  # supervised_state's common case, without the call
            state = PropDict(xs=batch[0], ys=batch[1])
        else:
            state = _steps.supervised_state(batch)
        model = learner._model
        if getattr(model, "training", True) is False:
            model.train()  # before StepBegin, so that its handlers see the mode the step runs in
        session = learner._session
        distributed = session is not None and session.strategy is not None
        body = _steps.distributed_training_body if distributed else _steps.training_body
        return _steps.run_step(learner, self, body, state)


class ValidationPhase(AbstractValidationPhase):
    """Supervised validation: forward and loss under ``torch.no_grad()``, model in eval mode."""

    __slots__ = ()

    def step(self, learner: Learner, batch: Any) -> Coroutine[Any, Any, PropDict]:
        """``await phase.step(learner, batch)`` runs one validation step; like :meth:`TrainingPhase.step`, a
        plain method that returns the skeleton's coroutine (the model is put in eval mode when it is called)."""
        state = _steps.supervised_state(batch)
        model = learner.model
        if getattr(model, "training", False):
            model.eval()  # before StepBegin, so that its handlers see the mode the step runs in
        return _steps.run_step(learner, self, _steps.validation_body, state)


_steps.SKELETON_ONLY_STEPS.update((TrainingPhase.step, ValidationPhase.step))


class FitPhase(Phase):
    """The phase ``FitBegin``/``FitEnd`` are dispatched with: neither training nor validation."""

    __slots__ = ()
