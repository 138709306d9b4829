"""The step and epoch skeletons every phase runs in, and the built-in supervised steps (private).

One skeleton for every step, built-in or custom (:func:`run_step`): install a fresh ``learner.step``, count
the step, dispatch ``StepBegin``, run the step's body, dispatch ``StepEnd``; a ``CancelStepException`` from
anywhere inside skips the rest and is swallowed. One skeleton for every epoch (:func:`run_epoch`):
``EpochBegin``, the body, ``EpochEnd`` (also after a ``CancelEpochException``). Every event goes through the
session's dispatcher, which checks for an abort or a pending control request first.

Step-state controls: callbacks with ``Write()`` access to these ``learner.step`` keys steer the built-in steps
(:mod:`asyncloop.callbacks` helpers use them; an unset key costs a dict lookup):

* ``autocast`` (set at ``StepBegin``): a context manager entered around the forward pass and around the loss,
  on the training thread, and always left (training and validation steps);
* ``zero_grad`` (default True), ``loss_scale`` (multiplies the loss for backward only) and ``grad_scaler`` (a
  ``torch.amp.GradScaler`` for backward and the optimizer step), set before ``BackwardBegin`` ends;
* ``accumulate`` (default False, until ``BackwardEnd``): skip the optimizer step.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from ._containers import PropDict
from ._distributed import agree
from ._exceptions import CancelEpochException, CancelStepException, _Aborted
from .events import BackwardBegin, BackwardEnd, EpochBegin, EpochEnd, Event, LossBegin, StepBegin, StepEnd

if TYPE_CHECKING:
    from ._learner import Learner
    from ._session import Dispatcher
    from .phases import Phase

#: ``handle(event)``: what custom step and epoch functions await to dispatch an event.
Handle = Callable[[Event], Awaitable[None]]
#: A step's body: ``await body(learner, phase, dispatcher, state)`` between ``StepBegin`` and ``StepEnd``.
StepBody = Callable[["Learner", "Phase", "Dispatcher", PropDict], Awaitable[Any]]

_EPOCH_BEGIN, _EPOCH_END = EpochBegin(), EpochEnd()
_STEP_BEGIN, _STEP_END = StepBegin(), StepEnd()
_LOSS_BEGIN, _BACKWARD_BEGIN, _BACKWARD_END = LossBegin(), BackwardBegin(), BackwardEnd()

# The built-in steps dispatch each event with
#     if session.abort_requested or session.control is not None or (plan := plans.get(Type, False)) is False:
#         if (pending := dispatch(EVENT)) is not None:
#             await pending
#     elif plan is not None and (pending := plan(EVENT, phase)) is not None:
#         await pending
# ``plans`` (``Dispatcher.plans``) holds the runner's plan of each event type the dispatcher looked up already
# (``None``: no handler). With no abort or control request pending, ``dispatch`` would only call that plan: the
# step calls it itself (one Python call fewer per event) and skips a handler-less event. Otherwise, and for an
# event type not looked up yet, ``dispatch`` checks for requests and looks the plan up.
_END = object()  # the end of an epoch's batches
#: ``Phase.step`` functions that only build the step state and run the skeleton (the built-in phases' own,
#: registered by asyncloop.phases): :func:`default_epoch` holds the random-state region across their batch and step.
SKELETON_ONLY_STEPS: set[Callable[..., Any]] = set()


async def run_step(learner: Learner, phase: Phase, body: StepBody, state: PropDict) -> PropDict:
    """The step skeleton: ``state`` becomes ``learner.step``, then ``StepBegin``, ``body``, ``StepEnd``."""
    session = learner._session  # the private fields, here and below: no property call on the per-step path
    assert session is not None, "a step runs inside a session"
    dispatcher = session.dispatcher(phase)
    dispatch, plans = dispatcher.dispatch, dispatcher.plans
    learner.step = state
    session.agreed = False
    # The learner's random-state region (see _rng): the global generators hold its state for the whole step.
    # Entered here unless the epoch loop holds it already (session.region_held), as default_epoch does.
    random = None if session.region_held else learner._random
    if random is not None:
        random.__enter__()
    session.in_step += 1
    try:
        if session.abort_requested or session.control is not None or (plan := plans.get(StepBegin, False)) is False:
            if (pending := dispatch(_STEP_BEGIN)) is not None:
                await pending
        elif plan is not None and (pending := plan(_STEP_BEGIN, phase)) is not None:
            await pending
        await body(learner, phase, dispatcher, state)
        if session.abort_requested or session.control is not None or (plan := plans.get(StepEnd, False)) is False:
            if (pending := dispatch(_STEP_END)) is not None:
                await pending
        elif plan is not None and (pending := plan(_STEP_END, phase)) is not None:
            await pending
    except CancelStepException:
        pass
    finally:
        session.in_step -= 1
        if random is not None:
            random.__exit__(None, None, None)
    if session.strategy is not None:
        if not session.agreed:  # validation and custom steps agree at their end
            agree(session.strategy, session.held, step=False)
        if not session.checked_forward:
            _check_forward(session, phase)
    return state


def _check_forward(session: Any, phase: Phase) -> None:
    """Warn once per session when a distributed training step did not forward through the strategy's model."""
    from .phases import AbstractTrainingPhase

    if not isinstance(phase, AbstractTrainingPhase):
        return
    session.checked_forward = True
    if getattr(session.strategy, "forwarded", True) is False:
        name = type(phase).__name__
        warnings.warn(
            f"the training step of {name} called the model without going through the distributed strategy, so "
            f"its gradients are not averaged across ranks and the ranks' weights drift apart; in a custom step, "
            f"forward with learner.strategy.training_model(learner)(xs) instead of learner.model(xs)",
            UserWarning, stacklevel=1,
        )


async def run_custom_step(
    step_fn: Callable[[Handle, PropDict], Awaitable[Any]], learner: Learner, phase: Phase, state: PropDict
) -> PropDict:
    """:func:`run_step` with a user's ``step_fn(handle, state)`` as the body (``asyncloop.run_step``)."""
    handle = learner.session.dispatcher(phase).handle  # type: ignore[union-attr]

    async def body(learner: Learner, phase: Phase, dispatcher: Dispatcher, state: PropDict) -> None:
        await step_fn(handle, state)

    return await run_step(learner, phase, body, state)


async def run_epoch(learner: Learner, phase: Phase, epoch_fn: Callable[[Handle], Awaitable[Any]]) -> None:
    """The epoch skeleton: ``EpochBegin``, ``await epoch_fn(handle)``, ``EpochEnd`` (also after a
    ``CancelEpochException``; if that ``EpochEnd`` raises one again, it propagates)."""
    session = learner.session
    assert session is not None, "an epoch runs inside a session"
    handle = session.dispatcher(phase).handle
    region = learner.random_state.region
    session.in_epoch += 1
    session.ending_epoch = None
    try:
        try:
            with region():
                await handle(_EPOCH_BEGIN)
            await epoch_fn(handle)
            if session.strategy is not None:  # a request held since the last step's agreement point
                agree(session.strategy, session.held, step=False)
            session.ending_epoch = phase
            with region():
                await handle(_EPOCH_END)
        except CancelEpochException:
            session.ending_epoch = phase
            with region():
                await handle(_EPOCH_END)
        if session.strategy is not None:  # e.g. EarlyStopping on one rank: every rank stops after this epoch
            agree(session.strategy, session.held, step=False, epoch=False)
    finally:
        session.in_epoch -= 1


async def default_epoch(learner: Learner, phase: Phase, data: Iterable[Any]) -> None:
    """``Phase.epoch``: one :meth:`Phase.step` per batch of ``data``, inside :func:`run_epoch`."""
    learner.epoch_data = data
    session = learner.session
    step = phase.step
    after_step = getattr(data, "after_step", None)  # fit(val_every_n_steps=) validates between steps

    region = learner.random_state  # its own region() (see _rng): entered directly, once per batch
    # A built-in phase's step builds the state and runs the skeleton, nothing else: the loop holds one region
    # across the batch and that step. Any other step's own code runs outside the region (it may block, e.g. on
    # another learner, which must not happen under the process-wide lock); its skeleton takes one.
    shared = getattr(type(phase), "step", None) in SKELETON_ONLY_STEPS

    async def steps(handle: Handle) -> None:
        assert session is not None, "an epoch runs inside a session"
        with region:  # a shuffling DataLoader draws its order here, once per epoch
            batches = iter(data)
        while True:
            with region:
                batch = next(batches, _END)
                if batch is _END:
                    break
                if session.abort_requested:
                    raise _Aborted()
                if shared:  # one region for the batch and its step: the skeleton (session.region_held) takes none
                    held, session.region_held = session.region_held, True
                    try:
                        await step(learner, batch)
                    finally:
                        session.region_held = held
            if not shared:
                await step(learner, batch)
            if after_step is not None:
                await after_step()

    await run_epoch(learner, phase, steps)


# --------------------------------------------------------------------------------------------------------------
# The built-in supervised steps
# --------------------------------------------------------------------------------------------------------------


def supervised_state(batch: Any) -> PropDict:
    """The initial step state of a supervised batch: ``xs`` and ``ys`` from an ``(xs, ys)`` pair."""
    if batch.__class__ is tuple and len(batch) == 2:
        return PropDict(xs=batch[0], ys=batch[1])
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return PropDict(xs=batch[0], ys=batch[1])
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
    if loss.__class__ is torch.Tensor and loss.numel() == 1:
        return
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


def _forward(learner: Learner, state: PropDict, autocast: Any, model: Any = None) -> None:
    """``preds`` from the model, under ``autocast`` when a callback set one (read after ``StepBegin``, so a
    model replaced by a ``StepBegin`` handler runs this step). ``model``: what to call instead of
    ``learner.model`` (the ``DistributedDataParallel`` wrapper of a distributed training step)."""
    if model is None:
        model = learner.model
    if autocast is None:
        state["preds"] = model(state["xs"])
    else:
        with autocast:
            state["preds"] = model(state["xs"])


def _loss(learner: Learner, state: PropDict, autocast: Any) -> Any:
    if autocast is None:
        loss = state["loss"] = learner.loss_fn(state["preds"], state["ys"])
    else:
        with autocast:
            loss = state["loss"] = learner.loss_fn(state["preds"], state["ys"])
    _check_loss(loss)
    return loss


async def training_body(learner: Learner, phase: Phase, dispatcher: Dispatcher, state: PropDict) -> None:
    """Forward, ``LossBegin``, loss, ``BackwardBegin``, backward, ``BackwardEnd``, optimizer step.

    Distributed (see :func:`distributed_training_body`): the forward pass goes through the strategy's wrapper
    (DDP) and the step waits at an agreement point before the optimizer step. One coroutine, and the forward
    pass and loss inline when no ``autocast`` is set: this runs every step.
    """
    session = learner._session
    assert session is not None, "a step runs inside a session"
    strategy = session.strategy
    dispatch, plans = dispatcher.dispatch, dispatcher.plans
    autocast = state.get("autocast")
    if autocast is None and strategy is None:
        state["preds"] = learner._model(state["xs"])
    else:
        _forward(learner, state, autocast, None if strategy is None else strategy.training_model(learner))
    if session.abort_requested or session.control is not None or (plan := plans.get(LossBegin, False)) is False:
        if (pending := dispatch(_LOSS_BEGIN)) is not None:
            await pending
    elif plan is not None and (pending := plan(_LOSS_BEGIN, phase)) is not None:
        await pending
    if autocast is None:
        loss = state["loss"] = learner.loss_fn(state["preds"], state["ys"])
        if loss.__class__ is not torch.Tensor or loss.numel() != 1:
            _check_loss(loss)
    else:
        _loss(learner, state, autocast)
    if session.abort_requested or session.control is not None or (plan := plans.get(BackwardBegin, False)) is False:
        if (pending := dispatch(_BACKWARD_BEGIN)) is not None:
            await pending
    elif plan is not None and (pending := plan(_BACKWARD_BEGIN, phase)) is not None:
        await pending
    optimizer = learner._optimizer
    if optimizer is None:  # built from the factory on first use
        optimizer = learner.optimizer
    if state.get("zero_grad", True):
        optimizer.zero_grad(set_to_none=True)
    loss = state["loss"]
    if "loss_scale" in state:
        loss = loss * state["loss_scale"]
    scaler = state.get("grad_scaler")
    (loss if scaler is None else scaler.scale(loss)).backward()
    state["loss"] = state["loss"].detach()  # the graph is spent: handlers read a plain tensor from here on
    grads = learner._grads  # learner.gradients(): one lazy mapping per model
    state["grads"] = grads if grads is not None and learner._params is not None else learner.gradients()
    if session.abort_requested or session.control is not None or (plan := plans.get(BackwardEnd, False)) is False:
        if (pending := dispatch(_BACKWARD_END)) is not None:
            await pending
    elif plan is not None and (pending := plan(_BACKWARD_END, phase)) is not None:
        await pending
    if strategy is not None:  # the step's one agreement point: before the optimizer step, so that a stop (a NaN
        # loss on one rank) leaves every rank's weights as they are
        session.agreed = True
        agree(strategy, session.held, step=True)
    if state.get("accumulate", False):
        return
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


async def distributed_training_body(
    learner: Learner, phase: Phase, dispatcher: Dispatcher, state: PropDict
) -> None:
    """:func:`training_body` under a distributed strategy: a step that only accumulates (``accumulate`` set at
    ``StepBegin``, as ``GradientAccumulation`` does) runs under the strategy's ``no_sync``, so no gradient
    all-reduce happens until the last micro-step of the group."""
    strategy = learner._session.strategy  # type: ignore[union-attr]
    if strategy is not None and state.get("accumulate", False):
        with strategy.no_sync(learner):
            await training_body(learner, phase, dispatcher, state)
    else:
        await training_body(learner, phase, dispatcher, state)


async def validation_body(learner: Learner, phase: Phase, dispatcher: Dispatcher, state: PropDict) -> None:
    """Forward, ``LossBegin``, loss; both under ``torch.no_grad()``."""
    autocast = state.get("autocast")
    with torch.no_grad():
        _forward(learner, state, autocast)
    if (pending := dispatcher.dispatch(_LOSS_BEGIN)) is not None:
        await pending
    with torch.no_grad():
        _loss(learner, state, autocast)
