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
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _steps
from ._exceptions import CancelFittingException
from ._learner import as_data
from ._session import in_session
from ._steps import Handle
from ._threads import run_in_thread
from .events import FitBegin, FitEnd
from .phases import AbstractTrainingPhase, AbstractValidationPhase, FitPhase, Phase, TrainingPhase, ValidationPhase
from ._containers import PropDict

if TYPE_CHECKING:
    from ._learner import Learner
    from .runners import ActorStatistics

_FIT_BEGIN, _FIT_END = FitBegin(), FitEnd()
_FIT_PHASE = FitPhase()


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    * ``epochs``: training epochs completed by this call -- an epoch is complete once its ``EpochEnd`` fired, also
      when a handler of that ``EpochEnd`` stopped the fit (so it agrees with ``Recorder``);
    * ``stopped``: ``True`` when a ``CancelFittingException`` ended the fit early, and ``reason`` is that
      exception (e.g. from ``EarlyStopping`` or ``StopOnNaNLoss``: tell them apart by type or message);
    * ``statistics``: per-callback costs (see :class:`asyncloop.runners.ActorStatistics`);
    * ``elapsed``: wall-clock seconds of the whole call (including the wait for detached actors to finish);
    * ``steps``: training batches this call ran (a step a callback cancelled counts too);
    * ``limit``: ``"max_steps"`` when ``fit(..., max_steps=)`` ended the fit, else ``None``. Reaching a limit
      the caller set is not an early stop: ``stopped`` stays ``False``.
    """

    epochs: int
    stopped: bool = False
    reason: CancelFittingException | None = None
    statistics: tuple[ActorStatistics, ...] = field(default=(), repr=False)
    elapsed: float = 0.0
    steps: int = 0
    limit: str | None = None


def _check_phase(phase: Any) -> Phase:
    if isinstance(phase, type) and issubclass(phase, Phase):
        raise TypeError(f"pass a phase instance: {phase.__name__}(), not {phase.__name__}")
    if not isinstance(phase, Phase):
        raise TypeError(f"phase must be an asyncloop Phase such as TrainingPhase(), got {phase!r}")
    return phase


def _check_count(name: str, value: Any, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        hint = " (a float fraction is not supported: pass a number of batches)" if isinstance(value, float) else ""
        raise ValueError(f"{name} must be None or an int >= {minimum}, got {value!r}{hint}")
    return value


def _check_phases(phases: Any) -> tuple[AbstractTrainingPhase, AbstractValidationPhase | None]:
    """The ``phases=`` argument of :func:`fit`: default phases built per fit, or a checked pair."""
    if phases is None:
        return TrainingPhase(), ValidationPhase()
    if not isinstance(phases, (tuple, list)) or len(phases) != 2:
        raise TypeError(
            f"phases must be a pair (training_phase, validation_phase), e.g. (MyTraining(), ValidationPhase()) "
            f"or (MyTraining(), None), got {phases!r}"
        )
    checked = []
    for value, kind, label in (
        (phases[0], AbstractTrainingPhase, "training"),
        (phases[1], AbstractValidationPhase, "validation"),
    ):
        if value is None and kind is AbstractValidationPhase:
            checked.append(None)
            continue
        if isinstance(value, type):
            raise TypeError(
                f"phases[{len(checked)}]: pass a phase instance: {value.__name__}(), not {value.__name__}"
            )
        if not isinstance(value, kind):
            other = "" if kind is AbstractTrainingPhase else " or None"
            raise TypeError(
                f"phases[{len(checked)}] must be the {label} phase, an instance of a {kind.__name__} subclass"
                f"{other}, got {value!r}"
            )
        checked.append(value)
    return checked[0], checked[1]


class _Limited:
    """``data`` cut to at most ``limit`` batches per pass (``None``: all).

    ``count``: the most batches one pass yielded (a callback peeking at the first batch, as ``SanityCheck``
    does, does not add to the steps of the epoch's own pass).
    """

    __slots__ = ("data", "limit", "count", "after_step")

    def __init__(self, data: Iterable[Any], limit: int | None) -> None:
        self.data, self.limit, self.count = data, limit, 0
        #: Awaited by ``Phase.epoch`` after each step when set (``val_every_n_steps``).
        self.after_step: Callable[[], Awaitable[None]] | None = None

    def __iter__(self) -> Iterator[Any]:
        n, limit = 0, self.limit
        if limit is not None and limit <= 0:
            return
        try:
            for batch in self.data:
                n += 1
                yield batch
                if n == limit:
                    return
        finally:
            self.count = max(self.count, n)


class _SizedLimited(_Limited):
    """:class:`_Limited` over data with a ``len``: progress bars still know the epoch's length."""

    __slots__ = ()

    def __len__(self) -> int:
        n = len(self.data)  # type: ignore[arg-type]
        return n if self.limit is None else min(n, self.limit)


def _limit(data: Iterable[Any], limit: int | None) -> _Limited:
    return (_SizedLimited if isinstance(data, Sized) else _Limited)(data, limit)


@dataclass(frozen=True)
class _Plan:
    """What one :func:`fit` call runs: its phases, epoch count and limits (checked)."""

    training: AbstractTrainingPhase
    validation: AbstractValidationPhase | None
    n_epochs: int | None
    until_epoch: int | None
    max_steps: int | None
    limit_train_batches: int | None
    limit_val_batches: int | None
    val_every_n_epochs: int
    val_every_n_steps: int | None


async def fit(
    learner: Learner,
    n_epochs: int | None = None,
    data: Any = None,
    *,
    phases: tuple[AbstractTrainingPhase, AbstractValidationPhase | None] | None = None,
    resume: Any = None,
    resume_strict: bool = True,
    until_epoch: int | None = None,
    max_steps: int | None = None,
    limit_train_batches: int | None = None,
    limit_val_batches: int | None = None,
    val_every_n_epochs: int = 1,
    val_every_n_steps: int | None = None,
) -> FitResult:
    """Train ``learner`` for ``n_epochs`` epochs of training, each followed by a validation epoch.

    ``data`` overrides ``learner.data`` for this call (a pair or a mapping, as for :class:`Learner`). Each epoch
    iterates the training data afresh, so it should be re-iterable (a list, a ``DataLoader``); a one-shot iterator
    (a generator) is used up by the first epoch, and the first training epoch it leaves empty warns (an endless
    generator with ``limit_train_batches`` is fine). Without
    validation data the validation epochs are skipped. Fires ``FitBegin`` first and ``FitEnd`` last (also after a
    ``CancelFittingException``, which ends the fit cleanly: the result has ``stopped=True``).

    ``phases=(training_phase, validation_phase)``: the phases whose ``epoch``/``step`` run, default
    ``(TrainingPhase(), ValidationPhase())``. Any :class:`AbstractTrainingPhase` / :class:`AbstractValidationPhase`
    instances work, with every callback, ``resume=`` and the result as for the built-in ones (a custom step for
    dict batches, several inputs, two optimizers); ``validation_phase=None`` runs no validation.

    ``resume``: a checkpoint file written by :class:`asyncloop.Checkpointer` (or its folder, meaning the latest
    checkpoint there). The learner's full training state (weights, optimizer, callbacks' state, histories, RNG)
    is restored first, as :meth:`Learner.load_checkpoint`, then ``n_epochs`` *more* epochs run: 2 epochs, then a
    resume for 2, end exactly where 4 epochs straight would. ``until_epoch=15`` instead of ``n_epochs`` means
    "until 15 training epochs in total" (counted by the Recorder, across fits and resumes; nothing runs when the
    learner is already there). Pass exactly one of the two. ``resume_strict=False`` loads a checkpoint whose
    optimizer class or stateful callbacks differ from the learner's, warning per mismatch (as
    ``learner.load_checkpoint(path, strict=False)``).

    Limits and cadence (Lightning's names): ``max_steps`` ends the fit after that many training batches in this
    call (the epoch it falls in ends there cleanly, validates as the cadence says, then ``FitEnd``; the result has
    ``limit="max_steps"`` and ``stopped=False``); ``limit_train_batches`` / ``limit_val_batches`` cut every
    training / validation epoch to that many batches (ints; a partial epoch still counts as an epoch);
    ``val_every_n_epochs=n`` validates only after training epochs whose total number (as ``until_epoch`` counts)
    is a multiple of ``n``. ``val_every_n_steps=n`` instead runs a whole validation epoch after every ``n``-th
    training batch (counted across fits), *inside* the training epoch (between its steps, before its
    ``EpochEnd``), and none at epoch ends: each such run counts as one validation epoch in the histories. It needs
    a training phase that keeps the default :meth:`Phase.epoch` (custom ``step`` only).

    Works as ``trio.run(asyncloop.fit, learner, 3)`` and as ``await asyncloop.fit(learner, 3)`` in a running trio
    program. The loop runs on a worker thread; cancelling the caller (a cancel scope, Ctrl-C) stops it within
    about one step, and ``fit`` returns or raises only once the worker and every actor are gone. One fit per
    learner at a time.
    """
    if (n_epochs is None) == (until_epoch is None):
        raise TypeError(
            "fit needs exactly one of n_epochs (how many more epochs) and until_epoch (train until that many "
            f"epochs in total), got n_epochs={n_epochs!r}, until_epoch={until_epoch!r}"
        )
    if n_epochs is not None and (isinstance(n_epochs, bool) or not isinstance(n_epochs, int) or n_epochs < 0):
        raise ValueError(f"n_epochs must be an int >= 0, got {n_epochs!r}")
    training, validation = _check_phases(phases)
    plan = _Plan(
        training,
        validation,
        n_epochs,
        _check_count("until_epoch", until_epoch, 0),
        _check_count("max_steps", max_steps, 0),
        _check_count("limit_train_batches", limit_train_batches, 0),
        _check_count("limit_val_batches", limit_val_batches, 0),
        _check_count("val_every_n_epochs", val_every_n_epochs),  # type: ignore[arg-type]
        _check_count("val_every_n_steps", val_every_n_steps),
    )
    if val_every_n_steps is not None and type(training).epoch is not Phase.epoch:
        raise ValueError(
            f"val_every_n_steps validates between the steps of Phase.epoch, and {type(training).__name__} overrides "
            f"epoch(); keep the default epoch() (customise step() only) or use val_every_n_epochs"
        )
    batches = learner.data if data is None else as_data(data)
    if (n_epochs or until_epoch) and batches.get("training") is None:
        raise ValueError(
            "learner has no training data: pass data=(train_batches, valid_batches) to Learner or to fit"
        )
    t0 = time.perf_counter()
    if resume is not None:
        await run_in_thread(learner.load_checkpoint, resume, resume_strict, name="asyncloop-resume")
    result = await in_session(learner, _fit, learner, plan, batches)
    # After the drain: detached actors' time and events are complete; copies, so a later fit leaves them alone.
    statistics = tuple(copy.copy(s) for s in learner.runner.statistics())
    return dataclasses.replace(result, elapsed=time.perf_counter() - t0, statistics=statistics)


def _epochs_done(learner: Learner, phase: Phase, *, required: bool) -> int:
    """Training epochs completed so far, across fits and resumes, as the Recorder counts them."""
    history = learner.cbstate.get("history")
    if history is None:
        if required:
            raise ValueError(
                "fit(until_epoch=) counts the epochs the Recorder records, and there is no Recorder; add "
                "Recorder() (a default callback) or pass n_epochs"
            )
        return 0
    counted = history.get(phase)
    return 0 if counted is None else counted.epochs


def _shard(learner: Learner, batches: PropDict) -> PropDict:
    """Each rank's share of every phase's data under a distributed strategy (``batches`` itself otherwise)."""
    strategy = learner.session.strategy  # type: ignore[union-attr]
    if strategy is None:
        return batches
    seed = learner.seed or 0
    return PropDict({key: strategy.shard(value, seed) for key, value in batches.items()})


async def _fit(learner: Learner, plan: _Plan, batches: PropDict) -> FitResult:
    learner.check_optimizer()
    learner.runner.reset_statistics()
    handle = learner.session.dispatcher(_FIT_PHASE).handle  # type: ignore[union-attr]
    batches = _shard(learner, batches)
    training, validation = plan.training, plan.validation
    if batches.get("validation") is None:
        validation = None
    before = _epochs_done(learner, training, required=plan.until_epoch is not None)
    steps_before = _steps_done(learner, training)
    n_epochs = plan.n_epochs if plan.until_epoch is None else max(0, plan.until_epoch - before)
    reason: CancelFittingException | None = None
    limit: str | None = None
    done = steps = 0
    exhausted = False  # warned that the training data is a used-up one-shot iterator
    try:
        await handle(_FIT_BEGIN)
        for _ in range(n_epochs):  # type: ignore[arg-type]
            per_epoch = plan.limit_train_batches
            if plan.max_steps is not None:
                left = plan.max_steps - steps
                per_epoch = left if per_epoch is None else min(per_epoch, left)
            set_epoch = getattr(batches["training"], "set_epoch", None)
            if set_epoch is not None:  # a sharded DataLoader: shuffle as epoch number (across fits and resumes)
                set_epoch(before + done)
            train = _limit(batches["training"], per_epoch)
            if validation is not None and plan.val_every_n_steps is not None:
                train.after_step = _validate_every(learner, plan, validation, batches, steps_before + steps, train)
            try:
                await training.epoch(learner, train)
            except CancelFittingException:
                if learner.session.ending_epoch is training:  # type: ignore[union-attr]
                    done += 1  # a handler of its EpochEnd stopped the fit: the epoch itself completed
                raise
            finally:
                steps += train.count
            done += 1
            if train.count == 0 and per_epoch != 0 and not exhausted and isinstance(batches["training"], Iterator):
                exhausted = True
                warnings.warn(_exhausted_message(type(batches["training"]).__name__, done), stacklevel=1)
            if (
                validation is not None
                and plan.val_every_n_steps is None
                and (before + done) % plan.val_every_n_epochs == 0
            ):
                await validation.epoch(learner, _limited(batches["validation"], plan.limit_val_batches))
            if plan.max_steps is not None and steps >= plan.max_steps:
                limit = "max_steps"
                break
    except CancelFittingException as exc:
        reason = exc
    try:
        await handle(_FIT_END)
    except CancelFittingException as exc:
        reason = reason or exc
    late = await learner.session.drain()  # type: ignore[union-attr]  # detached actors' last requests count too
    if reason is None and isinstance(late, CancelFittingException):
        reason = late
    return FitResult(done, reason is not None, reason, steps=steps, limit=None if reason is not None else limit)


def _exhausted_message(kind: str, epoch: int) -> str:
    """The warning for a training epoch that got no batch from a one-shot iterator."""
    return (
        f"training epoch {epoch} of this fit got no batches: the training data is a one-shot iterator ({kind}), "
        f"used up by an earlier epoch or fit, so every later epoch is empty; pass a list, a DataLoader or another "
        f"re-iterable (a class whose __iter__ starts over), or make a fresh generator for each fit"
    )


def _steps_done(learner: Learner, phase: Phase) -> int:
    """Training steps completed so far, across fits and resumes (0 without a Recorder)."""
    history = learner.cbstate.get("history")
    counted = None if history is None else history.get(phase)
    return 0 if counted is None else counted.steps


def _validate_every(
    learner: Learner,
    plan: _Plan,
    validation: AbstractValidationPhase,
    batches: PropDict,
    done: int,
    train: _Limited,
) -> Callable[[], Awaitable[None]]:
    """The ``after_step`` of a training epoch under ``val_every_n_steps``: a whole validation epoch after every
    ``val_every_n_steps``-th training step (counted across fits, from ``done``), inside the training epoch."""
    every = plan.val_every_n_steps
    assert every is not None
    count = done

    async def after_step() -> None:
        nonlocal count
        count += 1
        if count % every:
            return
        epoch_data = learner.epoch_data
        await validation.epoch(learner, _limited(batches["validation"], plan.limit_val_batches))
        learner.epoch_data = epoch_data  # the training epoch's data again, for its callbacks

    return after_step


def _limited(data: Iterable[Any], limit: int | None) -> Iterable[Any]:
    return data if limit is None else _limit(data, limit)


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
    await in_session(learner, _epoch, learner, phase, data)


async def _epoch(learner: Learner, phase: Phase, data: Iterable[Any]) -> None:
    strategy = learner.session.strategy  # type: ignore[union-attr]
    if strategy is not None:
        data = strategy.shard(data, learner.seed or 0)
    await phase.epoch(learner, data)


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
