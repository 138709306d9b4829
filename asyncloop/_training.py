"""The training loop: ``fit``, ``epoch``, ``step`` and the ``run_epoch``/``run_step`` building blocks.

Every function here is a trio async function. Called from outside a fit, each one opens a session: the loop
runs on a dedicated worker thread (with its own trio loop), so the caller's event loop stays responsive, and the
function returns when the worker is done. Called from inside a fit (e.g. ``step`` from a custom phase's
``epoch``), they run inline on the worker.

Control flow (FluxTraining's, plus fit-level events):

* ``CancelStepException``: the rest of the step and its ``StepEnd`` are skipped;
* ``CancelEpochException``: the rest of the epoch is skipped and ``EpochEnd`` still fires;
* ``CancelFittingException``: ``fit`` stops, fires ``FitEnd`` and returns ``FitResult(stopped=True)``;
  ``epoch``/``step``/``run_*`` let it propagate;
* any other error propagates as itself, with a note naming the callback and event that raised it.

Step-state controls: callbacks with ``Write()`` access to these ``learner.step`` keys steer the built-in steps
(:mod:`asyncloop.callbacks._helpers` uses them; an unset key costs nothing):

* ``autocast`` (set at ``StepBegin``): a context manager entered around the forward pass and around the loss,
  on the training thread, and always left (training and validation steps);
* ``zero_grad`` (default True), ``loss_scale`` (multiplies the loss for backward only) and ``grad_scaler`` (a
  ``torch.amp.GradScaler`` for backward and the optimizer step), set before ``BackwardBegin`` ends;
* ``accumulate`` (default False, until ``BackwardEnd``): skip the optimizer step.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import outcome
import torch
import trio

from ._session import Session, _Aborted, in_session
from ._threads import run_in_thread
from .events import (
    BackwardBegin,
    BackwardEnd,
    EpochBegin,
    EpochEnd,
    Event,
    FitBegin,
    FitEnd,
    LossBegin,
    StepBegin,
    StepEnd,
)
from ._exceptions import CancelEpochException, CancelFittingException, CancelStepException
from .phases import FitPhase, Phase, TrainingPhase, ValidationPhase
from ._containers import PropDict

if TYPE_CHECKING:
    from ._learner import Learner
    from .runners._base import ActorStatistics

__all__ = ["fit", "epoch", "step", "run_epoch", "run_step", "FitResult"]

Handle = Callable[[Event], Awaitable[None]]

_FIT_BEGIN, _FIT_END = FitBegin(), FitEnd()
_EPOCH_BEGIN, _EPOCH_END = EpochBegin(), EpochEnd()
_STEP_BEGIN, _STEP_END = StepBegin(), StepEnd()
_LOSS_BEGIN, _BACKWARD_BEGIN, _BACKWARD_END = LossBegin(), BackwardBegin(), BackwardEnd()
_FIT_PHASE = FitPhase()
#: One instance per built-in phase for every fit: phase-keyed dicts (histories, metrics) then match by identity.
_TRAINING, _VALIDATION = TrainingPhase(), ValidationPhase()
#: The built-in phases' own ``step`` methods, as defined (a phase whose ``step`` is one of them is stepped
#: directly by the default epoch; an override, or a patched method, goes through ``phase.step``).
_BUILTIN_TRAINING_STEP = TrainingPhase.__dict__["step"]
_BUILTIN_VALIDATION_STEP = ValidationPhase.__dict__["step"]


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


# ------------------------------------------------------------------------------------------------------------
# Sessions
# ------------------------------------------------------------------------------------------------------------


def _as_data(data: Any) -> PropDict:
    if isinstance(data, PropDict):
        return data
    if isinstance(data, Mapping):
        return PropDict(data)
    if isinstance(data, tuple) and len(data) == 0:
        return PropDict()
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return PropDict(training=data[0], validation=data[1])
    raise TypeError(
        f"data must be (), a pair (train_batches, valid_batches) or a mapping with keys 'training'/'validation', "
        f"got {type(data).__name__}" + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
    )


def _check_phase(phase: Any) -> Phase:
    if isinstance(phase, type) and issubclass(phase, Phase):
        raise TypeError(f"pass a phase instance: {phase.__name__}(), not {phase.__name__}")
    if not isinstance(phase, Phase):
        raise TypeError(f"phase must be an asyncloop Phase such as TrainingPhase(), got {phase!r}")
    return phase


# ------------------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------------------


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
    batches = learner.data if data is None else _as_data(data)
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
    t0 = time.perf_counter()
    learner._check_optimizer()
    runner = learner.runner
    runner.reset_statistics()
    reason: CancelFittingException | None = None
    done = 0
    training, validation = _TRAINING, _VALIDATION
    try:
        await runner.handle(_FIT_BEGIN, _FIT_PHASE)
        for _ in range(n_epochs):
            await training.epoch(learner, batches["training"])
            done += 1
            if batches.get("validation") is not None:
                await validation.epoch(learner, batches["validation"])
    except CancelFittingException as exc:
        reason = exc
    try:
        await runner.handle(_FIT_END, _FIT_PHASE)
    except CancelFittingException as exc:
        reason = reason or exc
    return FitResult(done, reason is not None, reason, tuple(runner.statistics()), time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------------------
# epoch / run_epoch
# ------------------------------------------------------------------------------------------------------------


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


async def _default_epoch(learner: Learner, phase: Phase, data: Iterable[Any]) -> None:
    # The built-in phases' steps are called directly (one coroutine less per step); overrides go through
    # phase.step as usual.
    kind = type(phase)
    if kind.step is _BUILTIN_TRAINING_STEP:
        direct: Any = _training_step
    elif kind.step is _BUILTIN_VALIDATION_STEP:
        direct = _validation_step
    else:
        direct = None

    async def epoch_fn(handle: Handle) -> None:
        session = learner.session
        if direct is not None:
            for batch in data:
                if session.abort_requested:  # type: ignore[union-attr]
                    raise _Aborted()
                await direct(learner, phase, batch)
            return
        for batch in data:
            if session.abort_requested:  # type: ignore[union-attr]
                raise _Aborted()
            await phase.step(learner, batch)

    learner.epoch_data = data
    await run_epoch(epoch_fn, learner, phase)


async def run_epoch(epoch_fn: Callable[[Handle], Awaitable[Any]], learner: Learner, phase: Phase) -> None:
    """Run ``await epoch_fn(handle)`` inside an epoch: ``EpochBegin`` before, ``EpochEnd`` after.

    ``handle(event)`` dispatches an event to the callbacks with this phase. A ``CancelEpochException`` raised
    anywhere inside (also by an ``EpochBegin`` or ``EpochEnd`` handler) is swallowed and ``EpochEnd`` is
    dispatched; if that ``EpochEnd`` raises again, the exception propagates.
    """
    _check_phase(phase)
    await in_session(learner, _run_epoch, epoch_fn, learner, phase)


async def _run_epoch(epoch_fn: Callable[[Handle], Awaitable[Any]], learner: Learner, phase: Phase) -> None:
    runner = learner.runner
    session: Session = learner.session  # type: ignore[assignment]

    async def handle(event: Event) -> None:
        await runner.handle(event, phase)

    session.in_epoch += 1
    try:
        try:
            await handle(_EPOCH_BEGIN)
            await epoch_fn(handle)
            await handle(_EPOCH_END)
        except CancelEpochException:
            await handle(_EPOCH_END)
    finally:
        session.in_epoch -= 1


# ------------------------------------------------------------------------------------------------------------
# step / run_step
# ------------------------------------------------------------------------------------------------------------


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
    return await in_session(learner, _run_step, step_fn, learner, phase, initial_state)


async def _run_step(
    step_fn: Callable[[Handle, PropDict], Awaitable[Any]],
    learner: Learner,
    phase: Phase,
    initial_state: Mapping[str, Any] | None,
) -> PropDict:
    runner = learner.runner
    session: Session = learner.session  # type: ignore[assignment]

    async def handle(event: Event) -> None:
        await runner.handle(event, phase)

    state = PropDict(initial_state) if initial_state else PropDict()
    learner.step = state
    session.in_step += 1
    try:
        await handle(_STEP_BEGIN)
        await step_fn(handle, state)
        await handle(_STEP_END)
    except CancelStepException:
        pass
    finally:
        session.in_step -= 1
    return state


def _unpack(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    desc = type(batch).__name__
    if isinstance(batch, (tuple, list)):
        desc += f" of length {len(batch)}"
    elif isinstance(batch, torch.Tensor):
        desc = f"a tensor of shape {tuple(batch.shape)}"
    raise TypeError(
        f"each batch must be an (xs, ys) pair, got {desc}; make the data yield (inputs, targets) tuples, "
        f"or give your Phase its own step()"
    )


def _check_loss(loss: Any) -> None:
    if isinstance(loss, torch.Tensor):
        if loss.numel() == 1:
            return
        raise TypeError(
            f"loss_fn must return a scalar tensor, got a tensor of shape {tuple(loss.shape)}; "
            f"reduce it, e.g. with .mean() or reduction='mean'"
        )
    raise TypeError(
        f"loss_fn must return a scalar tensor, got {type(loss).__name__}; compute the loss with torch "
        f"operations on (preds, targets) so it can be backpropagated"
    )


_NO_AUTOCAST = contextlib.nullcontext()
_TRAINING_EVENTS = (StepBegin, LossBegin, BackwardBegin, BackwardEnd, StepEnd)
_VALIDATION_EVENTS = (StepBegin, LossBegin, StepEnd)


async def _training_step(learner: Learner, phase: Phase, batch: Any) -> PropDict:
    """The built-in training step: ``run_step`` semantics, flattened for speed (no closures, no empty events)."""
    # Hot path: private fields are read directly (learner._model is what the model property returns).
    if batch.__class__ is tuple and len(batch) == 2:
        xs, ys = batch
    else:
        xs, ys = _unpack(batch)
    runner = learner.runner
    session: Session = learner.session  # type: ignore[assignment]
    plans = runner._step_plans.get((phase.__class__, "training"))
    if plans is None:
        plans = runner.step_plans(phase.__class__, _TRAINING_EVENTS, "training")
    begin, loss_begin, backward_begin, backward_end, end = plans
    state = PropDict(xs=xs, ys=ys)
    learner.step = state
    session.in_step += 1
    try:
        if session.abort_requested or session.control is not None:
            session.check()
        model = learner._model
        if getattr(model, "training", True) is False:
            model.train()  # before StepBegin, so that its handlers see the mode the step runs in
        if begin is not None:
            if (pending := begin(_STEP_BEGIN, phase)) is not None:
                await pending
            model = learner._model  # a StepBegin handler may have replaced it
        autocast = state.get("autocast")
        if autocast is None:
            state["preds"] = model(state["xs"])
        else:
            with autocast:
                state["preds"] = model(state["xs"])
        if loss_begin is not None and (pending := loss_begin(_LOSS_BEGIN, phase)) is not None:
            await pending
        if autocast is None:
            loss = state["loss"] = learner.loss_fn(state["preds"], state["ys"])
        else:
            with autocast:
                loss = state["loss"] = learner.loss_fn(state["preds"], state["ys"])
        if loss.__class__ is not torch.Tensor or loss.numel() != 1:
            _check_loss(loss)
        if backward_begin is not None and (pending := backward_begin(_BACKWARD_BEGIN, phase)) is not None:
            await pending
        optimizer = learner._optimizer
        if optimizer is None:
            optimizer = learner.optimizer  # built from its factory on first use
        if len(state) == 4:  # no step-state controls were set: the common case
            optimizer.zero_grad(set_to_none=True)
            loss = state["loss"]
            loss.backward()
            state["loss"] = loss.detach()  # the graph is spent: handlers read a plain tensor from here on
            grads = learner._grads  # the model's lazy gradient mapping, built once per model
            state["grads"] = grads if grads is not None else learner._gradients()
            if backward_end is not None and (pending := backward_end(_BACKWARD_END, phase)) is not None:
                await pending
            optimizer.step()
        else:
            await _controlled_update(learner, phase, state, optimizer, backward_end)
        if end is not None and (pending := end(_STEP_END, phase)) is not None:
            await pending
    except CancelStepException:
        pass
    finally:
        session.in_step -= 1
    return state


async def _controlled_update(learner: Learner, phase: Phase, state: PropDict, optimizer: Any, backward_end: Any) -> None:
    """Backward and update honouring the step-state controls callbacks may set before ``BackwardBegin`` ends.

    * ``zero_grad`` (default True): zero the gradients before backward (False accumulates);
    * ``loss_scale``: multiply the loss by it before backward (``loss`` itself is left as computed);
    * ``grad_scaler``: a ``torch.amp.GradScaler`` used for backward and the optimizer step;
    * ``accumulate`` (default False, may also be set at ``BackwardEnd``): skip the optimizer step.
    """
    if state.get("zero_grad", True):
        optimizer.zero_grad(set_to_none=True)
    loss = state["loss"]
    if "loss_scale" in state:
        loss = loss * state["loss_scale"]
    scaler = state.get("grad_scaler")
    (scaler.scale(loss) if scaler is not None else loss).backward()
    state["loss"] = state["loss"].detach()
    state["grads"] = learner._gradients()
    if backward_end is not None and (pending := backward_end(_BACKWARD_END, phase)) is not None:
        await pending
    if not state.get("accumulate", False):
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()


async def _validation_step(learner: Learner, phase: Phase, batch: Any) -> PropDict:
    """The built-in validation step: forward and loss under ``torch.no_grad()`` with the model in eval mode."""
    # The same hot-path reads as _training_step.
    if batch.__class__ is tuple and len(batch) == 2:
        xs, ys = batch
    else:
        xs, ys = _unpack(batch)
    runner = learner.runner
    session: Session = learner.session  # type: ignore[assignment]
    plans = runner._step_plans.get((phase.__class__, "validation"))
    if plans is None:
        plans = runner.step_plans(phase.__class__, _VALIDATION_EVENTS, "validation")
    begin, loss_begin, end = plans
    state = PropDict(xs=xs, ys=ys)
    learner.step = state
    session.in_step += 1
    try:
        if session.abort_requested or session.control is not None:
            session.check()
        model = learner._model
        if getattr(model, "training", False):
            model.eval()  # before StepBegin, so that its handlers see the mode the step runs in
        if begin is not None:
            if (pending := begin(_STEP_BEGIN, phase)) is not None:
                await pending
            model = learner._model  # a StepBegin handler may have replaced it
        autocast = state.get("autocast") or _NO_AUTOCAST
        with torch.no_grad(), autocast:
            state["preds"] = model(state["xs"])
        if loss_begin is not None and (pending := loss_begin(_LOSS_BEGIN, phase)) is not None:
            await pending
        with torch.no_grad(), autocast:
            loss = state["loss"] = learner.loss_fn(state["preds"], state["ys"])
        if loss.__class__ is not torch.Tensor or loss.numel() != 1:
            _check_loss(loss)
        if end is not None and (pending := end(_STEP_END, phase)) is not None:
            await pending
    except CancelStepException:
        pass
    finally:
        session.in_step -= 1
    return state
