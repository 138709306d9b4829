"""The training loop's public functions: ``fit``, ``epoch``, ``step``, ``run_epoch`` and ``run_step`` (private).

Every function here is a trio async function. Called from outside a fit, each one opens a session (see
:mod:`asyncloop._session`): the loop runs on a dedicated worker thread with its own trio loop, so the caller's
event loop stays responsive. Called from inside a fit (e.g. ``step`` from a custom phase's ``epoch``), they run
inline on the worker. Steps and epochs, built-in or custom, all run in the skeletons of :mod:`asyncloop._steps`.

Control flow (FluxTraining's, plus fit-level events):

* ``CancelStepException``: the rest of the step and its ``StepEnd`` are skipped;
* ``CancelEpochException``: the rest of the epoch is skipped and ``EpochEnd`` still fires;
* ``CancelFittingException``: ``fit`` stops, fires ``FitEnd`` and returns ``FitResult(stopped=True)``;
  ``epoch``/``step``/``run_*`` let it propagate;
* any other error propagates as itself, with a note naming the callback and event that raised it.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _steps
from ._exceptions import CancelFittingException
from ._learner import as_data
from ._session import in_session
from ._steps import Handle
from ._threads import run_in_thread
from .events import FitBegin, FitEnd
from .phases import FitPhase, Phase, TrainingPhase, ValidationPhase
from ._containers import PropDict

if TYPE_CHECKING:
    from ._learner import Learner
    from .runners import ActorStatistics

_FIT_BEGIN, _FIT_END = FitBegin(), FitEnd()
_FIT_PHASE = FitPhase()
#: One instance per built-in phase for every fit: phase-keyed dicts (histories, metrics) then match by identity.
_TRAINING, _VALIDATION = TrainingPhase(), ValidationPhase()


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    * ``epochs``: training epochs completed by this call;
    * ``stopped``: ``True`` when a ``CancelFittingException`` ended the fit early, and ``reason`` is that
      exception (e.g. from ``EarlyStopping`` or ``StopOnNaNLoss``: tell them apart by type or message);
    * ``statistics``: per-callback costs (see :class:`asyncloop.runners.ActorStatistics`);
    * ``elapsed``: wall-clock seconds of the whole call (including the wait for detached actors to finish).
    """

    epochs: int
    stopped: bool = False
    reason: CancelFittingException | None = None
    statistics: tuple[ActorStatistics, ...] = field(default=(), repr=False)
    elapsed: float = 0.0


def _check_phase(phase: Any) -> Phase:
    if isinstance(phase, type) and issubclass(phase, Phase):
        raise TypeError(f"pass a phase instance: {phase.__name__}(), not {phase.__name__}")
    if not isinstance(phase, Phase):
        raise TypeError(f"phase must be an asyncloop Phase such as TrainingPhase(), got {phase!r}")
    return phase


async def fit(learner: Learner, n_epochs: int, data: Any = None, *, resume: Any = None) -> FitResult:
    """Train ``learner`` for ``n_epochs`` epochs of training, each followed by a validation epoch.

    ``data`` overrides ``learner.data`` for this call (a pair or a mapping, as for :class:`Learner`). Without
    validation data the validation epochs are skipped. Fires ``FitBegin`` first and ``FitEnd`` last (also after a
    ``CancelFittingException``, which ends the fit cleanly: the result has ``stopped=True``).

    ``resume``: a checkpoint file written by :class:`asyncloop.Checkpointer` (or its folder, meaning the latest
    checkpoint there). The learner's full training state (weights, optimizer, callbacks' state, histories, RNG)
    is restored first, as :meth:`Learner.load_checkpoint`, then ``n_epochs`` *more* epochs run: 2 epochs, then a
    resume for 2, end exactly where 4 epochs straight would.

    Works as ``trio.run(asyncloop.fit, learner, 3)`` and as ``await asyncloop.fit(learner, 3)`` in a running trio
    program. The loop runs on a worker thread; cancelling the caller (a cancel scope, Ctrl-C) stops it within
    about one step, and ``fit`` returns or raises only once the worker and every actor are gone. One fit per
    learner at a time.
    """
    if isinstance(n_epochs, bool) or not isinstance(n_epochs, int) or n_epochs < 0:
        raise ValueError(f"n_epochs must be an int >= 0, got {n_epochs!r}")
    batches = learner.data if data is None else as_data(data)
    if n_epochs and batches.get("training") is None:
        raise ValueError(
            "learner has no training data: pass data=(train_batches, valid_batches) to Learner or to fit"
        )
    t0 = time.perf_counter()
    if resume is not None:
        await run_in_thread(learner.load_checkpoint, resume, name="asyncloop-resume")
    result = await in_session(learner, _fit, learner, n_epochs, batches)
    # After the drain: detached actors' time and events are complete; copies, so a later fit leaves them alone.
    statistics = tuple(copy.copy(s) for s in learner.runner.statistics())
    return dataclasses.replace(result, elapsed=time.perf_counter() - t0, statistics=statistics)


async def _fit(learner: Learner, n_epochs: int, batches: PropDict) -> FitResult:
    learner.check_optimizer()
    learner.runner.reset_statistics()
    handle = learner.session.dispatcher(_FIT_PHASE).handle  # type: ignore[union-attr]
    training, validation = _TRAINING, _VALIDATION
    reason: CancelFittingException | None = None
    done = 0
    try:
        await handle(_FIT_BEGIN)
        for _ in range(n_epochs):
            await training.epoch(learner, batches["training"])
            done += 1
            if batches.get("validation") is not None:
                await validation.epoch(learner, batches["validation"])
    except CancelFittingException as exc:
        reason = exc
    try:
        await handle(_FIT_END)
    except CancelFittingException as exc:
        reason = reason or exc
    late = await learner.session.drain()  # type: ignore[union-attr]  # detached actors' last requests count too
    if reason is None and isinstance(late, CancelFittingException):
        reason = late
    return FitResult(done, reason is not None, reason)


async def epoch(learner: Learner, phase: Phase, data: Iterable[Any] | None = None) -> None:
    """Run one epoch of ``phase`` over ``data`` (default: ``learner.data[phase.data_key]``), as ``phase.epoch``.

    Lets ``CancelFittingException`` propagate.
    """
    _check_phase(phase)
    if data is None:
        key = phase.data_key
        data = learner.data.get(key) if key is not None else None
        if data is None:
            raise ValueError(
                f"no data for {phase!r}: pass data to epoch(), or set learner.data[{key!r}]"
                if key is not None
                else f"{phase!r} has no data_key; pass data to epoch()"
            )
    await in_session(learner, phase.epoch, learner, data)


async def run_epoch(epoch_fn: Callable[[Handle], Awaitable[Any]], learner: Learner, phase: Phase) -> None:
    """Run ``await epoch_fn(handle)`` inside an epoch: ``EpochBegin`` before, ``EpochEnd`` after.

    ``handle(event)`` dispatches an event to the callbacks with this phase. A ``CancelEpochException`` raised
    anywhere inside (also by an ``EpochBegin`` or ``EpochEnd`` handler) is swallowed and ``EpochEnd`` is
    dispatched; if that ``EpochEnd`` raises again, the exception propagates.
    """
    _check_phase(phase)
    await in_session(learner, _steps.run_epoch, learner, phase, epoch_fn)


async def step(learner: Learner, phase: Phase, batch: Any) -> PropDict:
    """Run one step of ``phase`` on ``batch`` (``phase.step``) and return the step state (``learner.step``)."""
    _check_phase(phase)
    return await in_session(learner, phase.step, learner, batch)


async def run_step(
    step_fn: Callable[[Handle, PropDict], Awaitable[Any]],
    learner: Learner,
    phase: Phase,
    initial_state: Mapping[str, Any] | None = None,
) -> PropDict:
    """Run ``await step_fn(handle, state)`` inside a step and return ``state``.

    ``state`` is a fresh :class:`PropDict` (from ``initial_state``) installed as ``learner.step`` before
    ``StepBegin``. A ``CancelStepException`` raised anywhere inside skips the rest of the step and its
    ``StepEnd``; the partly filled state is returned.
    """
    _check_phase(phase)
    state = PropDict(initial_state) if initial_state else PropDict()
    return await in_session(learner, _steps.run_custom_step, step_fn, learner, phase, state)
