"""A session: one run of the training loop on its own worker thread, from start to teardown (private).

``fit`` (and ``epoch``/``step``/``run_*`` when called from outside a fit) run their body with :func:`in_session`:

* the body runs on a dedicated worker thread that runs its own trio event loop, so model compute never blocks
  the caller's event loop and async handlers can still ``await``; torch's per-thread state (thread count,
  default device, CUDA device) is copied into it;
* the runner's detached actors run as tasks of a nursery in the caller's event loop (the *host*);
* an external cancellation (cancel scope, Ctrl-C) or an actor's error sets a flag the loop checks at every
  event, so the worker unwinds within about one step; the session never ends before the worker has finished;
* when the body is done, the runner drains its actors, and every callback's ``teardown`` runs, however the
  session ended.

Errors are never wrapped in exception groups: the first error of the session is re-raised as itself.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, TypeVar

import outcome
import torch
import trio

from ._callback import Callback
from ._distributed import hold, set_active_strategy
from ._exceptions import CancelEpochException, CancelFittingException, CancelStepException, _Aborted
from ._threads import Reply, run_in_thread

if TYPE_CHECKING:
    from ._learner import Learner
    from .events import Event
    from .phases import Phase

T = TypeVar("T")

#: ``dispatch(event)`` hands an event to the runner's plan: ``None`` when every handler is done, else an
#: awaitable for what must be waited for (async handlers, a full inbox).
Dispatch = Callable[["Event"], Optional[Awaitable[None]]]


class Dispatcher(NamedTuple):
    """How the loop hands one phase's events to the runner: ``dispatch`` (sync when it can) and ``handle``
    (the same as an async function, for custom steps and epochs).

    ``plans``: the runner's plan of each event type ``dispatch`` has looked up in this phase (``None``: no
    handler), filled as events are dispatched. With no abort or control request pending, ``dispatch`` only calls
    that plan, so the built-in steps call it themselves, and skip a handler-less event (see
    :func:`asyncloop._steps.run_step`). Empty under a distributed strategy, whose ``dispatch`` also holds control
    requests until the next agreement point: every event then goes through ``dispatch``.
    """

    phase: Phase
    dispatch: Dispatch
    handle: Callable[[Event], Awaitable[None]]
    plans: dict[type, Any]


async def in_session(learner: Learner, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``await fn(*args)`` on ``learner``'s worker: inline when already there, else in a new session.

    One session per learner at a time: a second one from outside the worker is an error.
    """
    session = learner.session
    if session is not None:
        if session.in_worker():
            return await fn(*args)
        raise RuntimeError(
            "fit() is already running for this learner; await it before starting another, or use a second Learner"
        )
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        raise RuntimeError(
            "asyncloop's loop functions are trio async functions: call them as trio.run(asyncloop.fit, learner, 3) "
            "or 'await asyncloop.fit(learner, 3)' inside trio"
        ) from None
    return await Session(learner).run(fn, args)


class Session:
    """State shared by the host (the caller's trio loop) and the worker thread for one run."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.host_token = trio.lowlevel.current_trio_token()
        self.worker_token: trio.lowlevel.TrioToken | None = None
        self.worker_scope: trio.CancelScope | None = None
        self.thread_id: int | None = None
        # torch state that is per OS thread: carried over from the caller to the worker
        self.num_threads = torch.get_num_threads()
        self.default_device = torch.get_default_device() if hasattr(torch, "get_default_device") else None
        self.cuda_device = (
            torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        )
        self.abort_requested = False
        self.error: BaseException | None = None
        self.control: BaseException | None = None
        self.in_epoch = 0
        self.in_step = 0
        #: Whether the running step's random-state region is already held by the epoch loop that runs it
        #: (see _steps.default_epoch): its skeleton then takes none of its own.
        self.region_held = False
        #: The phase whose ``EpochEnd`` is being (or was last) dispatched; ``None`` from each ``EpochBegin`` on.
        self.ending_epoch: Phase | None = None
        self.nursery: trio.Nursery | None = None
        self._dispatchers: dict[type, Dispatcher] = {}
        #: The distributed strategy when this process is one of several ranks, else ``None`` (see _distributed).
        self.strategy = learner.strategy
        if self.strategy is not None:
            self.strategy.prepare()
            if self.strategy.world_size < 2:
                self.strategy = None
        #: Control requests raised on this rank, held until the next agreement point (stop, epoch, step).
        self.held: list[BaseException | None] = [None, None, None]
        #: Whether the current step passed its agreement point already (built-in training steps do, before the
        #: optimizer step; other steps agree at their end).
        self.agreed = False
        #: Whether the first training step of the session was checked for a forward pass through the strategy.
        self.checked_forward = False
        self._rank_zero: list[Callback] = []

    # -- the whole run (host side) -----------------------------------------------------------------------------
    async def run(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
        """Start the runner, run ``await fn(*args)`` on the worker, drain, tear down; return or raise its result."""
        learner, runner = self.learner, self.learner.runner
        result: outcome.Outcome | None = None
        body_error: BaseException | None = None
        learner.attach_session(self)
        self._leave_out_rank_zero()
        try:
            async with _ungrouped(), trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    await runner.start(self)
                    result = await self._run_worker(fn, args)
                    if self.error is None and isinstance(result, outcome.Value):
                        await runner.drain()
                        self.control = None  # a request after the last event of epoch()/step(): nothing to stop
                except BaseException as exc:  # re-raised below, unwrapped
                    body_error = exc
                finally:
                    self.abort_requested = True  # actors' worker threads stop between two items
                    runner.close()
                    nursery.cancel_scope.cancel()
        finally:
            runner.join()  # every actor task has finished: their threads are exiting
            learner.attach_session(None)
            teardown_error = await _teardown(learner, self._rank_zero)
        if teardown_error is not None and not isinstance(teardown_error, Exception):
            raise teardown_error  # an interrupt or exit during teardown is never swallowed
        if isinstance(result, outcome.Error) and not isinstance(result.error, _Aborted):
            return result.unwrap()
        if self.error is not None:
            raise self.error
        if body_error is not None:
            raise body_error
        if teardown_error is not None:
            raise teardown_error
        assert result is not None
        return result.unwrap()

    async def _run_worker(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> outcome.Outcome:
        """Run ``await fn(*args)`` on a fresh worker thread with its own trio loop; return its outcome.

        If the caller is cancelled meanwhile, the worker is told to unwind and is waited for (shielded) before
        the cancellation propagates: the thread is never abandoned.
        """
        # A dedicated thread (not trio's thread cache): when the session ends, the thread is gone.
        return await run_in_thread(
            outcome.capture, trio.run, self._worker_main, fn, args, name="asyncloop-worker", on_cancel=self.abort
        )

    async def _worker_main(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
        torch.set_num_threads(self.num_threads)
        if self.default_device is not None and self.default_device != torch.device("cpu"):
            torch.set_default_device(self.default_device)
        if self.cuda_device is not None:
            torch.cuda.set_device(self.cuda_device)
        self.thread_id = threading.get_ident()
        strategy = self.strategy
        if strategy is None:
            return await self._worker_body(fn, args)
        set_active_strategy(strategy)
        try:
            strategy.setup(self.learner)
            result = await self._worker_body(fn, args)
        except (CancelFittingException, CancelEpochException, CancelStepException):
            strategy.teardown(self.learner)  # agreed by every rank (epoch()/step() let a stop propagate)
            raise
        except BaseException as exc:
            # Every other rank must learn that this one leaves the collectives (see _distributed.DDPStrategy.fail).
            error = self.error if isinstance(exc, _Aborted) and self.error is not None else exc
            raised = strategy.fail(error)
            if raised is error:
                raise
            raise raised from error
        finally:
            set_active_strategy(None)
        strategy.teardown(self.learner)
        return result

    async def _worker_body(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
        with trio.CancelScope() as scope:
            self.worker_scope = scope
            self.worker_token = trio.lowlevel.current_trio_token()
            if self.abort_requested:
                scope.cancel()
            return await fn(*args)
        raise _Aborted()

    def _leave_out_rank_zero(self) -> None:
        """On ranks other than 0, plan this session without the callbacks that act on rank 0 only (they cost
        nothing there, not even a snapshot). The runner keeps that plan after the session, so that the fit's
        statistics are this rank's; the next session plans again from ``learner.callbacks``, and changing the
        callbacks or the runner compiles the full set as always."""
        strategy = self.strategy
        if strategy is None or strategy.is_main:
            return
        learner = self.learner
        callbacks = learner.callbacks
        self._rank_zero = [cb for cb in callbacks if _acts_on_rank_zero_only(cb)]
        if not self._rank_zero:
            return
        from ._graph import callback_graph

        kept = [cb for cb in callbacks if not _acts_on_rank_zero_only(cb)]
        try:
            graph = callback_graph(kept, provided=tuple(learner.cbstate))
        except Exception:  # another callback needs the state one of them writes: keep them all
            self._rank_zero = []
            kept, graph = callbacks, learner.graph
        learner.runner.compile(kept, graph)

    # -- worker side -------------------------------------------------------------------------------------------
    def dispatcher(self, phase: Phase) -> Dispatcher:
        """The dispatcher of ``phase``'s events for this session (one per phase instance in use)."""
        known = self._dispatchers.get(phase.__class__)
        if known is not None and known.phase is phase:
            return known
        made = self._dispatchers[phase.__class__] = self._make_dispatcher(phase)
        return made

    def _make_dispatcher(self, phase: Phase) -> Dispatcher:
        plan_of = self.learner.runner.plan  # compiled once per callback set and (event, phase) type, cached
        phase_type = phase.__class__
        check = self.check
        # The runner's plans by event type for this phase: a C-level lookup per event instead of a call into the
        # runner (its callbacks cannot change while a session runs, so the plans cannot either).
        plans: dict[type, Any] = {}
        missing = _MISSING

        def dispatch(event: Event) -> Awaitable[None] | None:
            if self.abort_requested or self.control is not None:
                check()
            plan = plans.get(event.__class__, missing)
            if plan is missing:
                plan = plans[event.__class__] = plan_of(event.__class__, phase_type)
            return None if plan is None else plan(event, phase)

        shown = plans
        if self.strategy is not None:
            dispatch = self._holding(dispatch)
            shown = {}  # the steps see no plan: every event goes through the holding dispatch

        async def handle(event: Event) -> None:
            if (pending := dispatch(event)) is not None:
                await pending

        return Dispatcher(phase, dispatch, handle, shown)

    def _holding(self, dispatch: Dispatch) -> Dispatch:
        """Under a distributed strategy, a control request raised on this rank (by a handler, or a detached
        actor's request delivered here) is held until the loop's next agreement point, where every rank acts on
        it together; ``FitEnd``'s are not held (nothing follows it)."""
        from .events import FitEnd

        held = self.held

        async def later(pending: Awaitable[None]) -> None:
            try:
                await pending
            except _CONTROL as exc:
                hold(held, exc)

        def holding(event: Event) -> Awaitable[None] | None:
            if event.__class__ is FitEnd:
                return dispatch(event)
            try:
                pending = dispatch(event)
            except _CONTROL as exc:
                hold(held, exc)
                return None
            return None if pending is None else later(pending)

        return holding

    def in_worker(self) -> bool:
        return threading.get_ident() == self.thread_id

    def check(self) -> None:
        """Called by the loop at every event: unwind if aborted, deliver a pending control request."""
        if self.abort_requested:
            raise _Aborted()
        if self.control is not None:
            self._deliver_control()

    def _deliver_control(self) -> None:
        exc = self.control
        if isinstance(exc, CancelStepException) and not self.in_step:
            return
        if isinstance(exc, CancelEpochException) and not self.in_epoch:
            return
        self.control = None
        raise exc  # type: ignore[misc]

    async def call_host(self, fn: Callable[[], Awaitable[T]]) -> T:
        """From the worker: run ``await fn()`` as a task in the host loop and wait for it (~100-150 us)."""
        reply: Reply[T] = Reply()

        async def run() -> None:
            reply.send(await outcome.acapture(fn))

        def spawn() -> None:
            try:
                assert self.nursery is not None
                self.nursery.start_soon(run)
            except BaseException as exc:  # never raise from run_sync_soon
                reply.send(outcome.Error(exc))

        self.host_token.run_sync_soon(spawn)
        return await reply.receive(grace=0)

    async def drain(self) -> BaseException | None:
        """From the worker, after the last event: wait until every detached actor handled every event; return
        (and clear) a control request one of them made meanwhile (a late ``CancelFittingException``)."""
        await self.call_host(self.learner.runner.drain)
        control, self.control = self.control, None
        return control

    # -- host side ---------------------------------------------------------------------------------------------
    def fail(self, exc: BaseException) -> None:
        """Record the session's first error and stop the worker."""
        if self.error is None:
            self.error = exc
        self.abort()

    def abort(self) -> None:
        """Ask the worker to unwind at its next event (thread-safe, idempotent)."""
        self.abort_requested = True
        token = self.worker_token
        if token is not None:
            try:
                token.run_sync_soon(self._cancel_worker_scope)
            except trio.RunFinishedError:
                pass

    def _cancel_worker_scope(self) -> None:
        if self.worker_scope is not None:
            self.worker_scope.cancel()


_CONTROL = (CancelFittingException, CancelEpochException, CancelStepException)
_MISSING = object()


def _acts_on_rank_zero_only(cb: Callback) -> bool:
    """A callback's ``rank_zero_only``: its own (instance) setting, else the wrapped callback's."""
    own = vars(cb).get("rank_zero_only")
    if own is not None:
        return bool(own)
    return bool(getattr(cb.inner, "rank_zero_only", False))


async def _teardown(learner: Learner, skipped: Sequence[Callback] = ()) -> BaseException | None:
    """Run every overridden ``Callback.teardown`` in a thread (they may block), shielded; return the first error.
    ``skipped``: callbacks this session left out (rank-zero-only ones on another rank): they did not run."""
    callbacks = [
        cb for cb in learner.callbacks
        if type(cb).teardown is not Callback.teardown and not any(cb is s for s in skipped)
    ]
    if not callbacks:
        return None

    def run() -> BaseException | None:
        first: BaseException | None = None
        for cb in callbacks:
            try:
                cb.teardown(learner)
            except BaseException as exc:  # even KeyboardInterrupt/SystemExit: every teardown runs first
                exc.add_note(f"asyncloop: raised by {cb.name}.teardown()")
                if first is None or (not isinstance(exc, Exception) and isinstance(first, Exception)):
                    first = exc  # an interrupt or exit outranks an ordinary error
        return first

    return await run_in_thread(run, name="asyncloop-teardown")


@contextlib.asynccontextmanager
async def _ungrouped() -> AsyncIterator[None]:
    """Re-raise an exception group coming out of the session's nursery as its first leaf.

    The nursery's tasks (actors, host calls) catch their own errors; what still escapes is an interrupt that
    landed between two of their statements, which must come out of ``fit`` as itself, not grouped.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        first = next((e for e in leaves if not isinstance(e, Exception)), leaves[0])
        raise first from None


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
