"""Plans: the handlers of one (event type, phase type) compiled once into one call (private).

A plan is ``run(event, phase)``: it returns ``None`` when the event was handled synchronously (the hot path: no
coroutine is made), else an awaitable for the part that must wait (async handlers, a full inbox). Both runners
build theirs with :func:`build_plan` from *layers*, which run one after another:

* a layer's ``inline`` steps run in order on the training thread: sync handlers are called, detached ones are
  published (snapshot and queue, see ``_delivery``);
* then its ``concurrent`` async handlers are awaited, concurrently when there are several.

The LinearRunner's plan is the degenerate case: one layer per handler, in the linear order, so every handler is
inline and async ones are awaited one at a time. The ActorRunner's layers are the generations of the callback
graph. Consecutive sync handlers become one :func:`run_sync` loop, the one place where handlers are timed and
their errors annotated.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import groupby
from typing import Any, NamedTuple

import trio

from .._callback import Callback, Handler
from .._exceptions import FitException
from .._graph import CallbackInfo
from ..events import Event
from ..phases import Phase
from ._statistics import ActorStatistics

_perf = time.perf_counter

#: A compiled plan: ``run(event, phase)`` handles the event and returns ``None`` when it finished
#: synchronously, or an awaitable for the part that must wait (async handlers, a full inbox).
Plan = Callable[[Event, Phase], Awaitable[None] | None]
#: ``publish(step, event, phase)``: queue the event for a detached step; returns its actor when its inbox is full.
Publish = Callable[["Step", Event, Phase], Any]
#: ``tail(full)``: the runner's end of every event (flush scheduling); returns an awaitable when it must wait for
#: the actors in ``full`` (a list, or ``None``) to make room.
Tail = Callable[[list[Any] | None], Awaitable[None] | None]


class Step:
    """One handler call in a plan (slotted: read on the hot path).

    ``view`` is what the handler receives: the runner's cached protected view. A callback whose capture hook
    (``Callback.snapshot``) is overridden gets its live result instead: ``fn`` then calls the hook first
    (``copy=False``), after ``accept`` passed. ``actor`` is set for a detached step (it is published, not called).
    """

    __slots__ = ("accept", "actor", "callback", "fn", "info", "is_async", "stats", "view")

    def __init__(
        self,
        info: CallbackInfo,
        handler: Handler,
        view: Any,
        stats: ActorStatistics,
        *,
        actor: Any = None,
        hook: Callable[..., Any] | None = None,
        learner: Any = None,
    ) -> None:
        self.info = info
        self.callback = info.callback
        self.fn = handler.fn if hook is None or actor is not None else _live(handler.fn, hook, learner)
        self.is_async = handler.is_async
        self.accept = handler.accept
        self.view = view
        self.stats = stats
        self.actor = actor


def _live(fn: Callable[..., Any], hook: Callable[..., Any], learner: Any) -> Callable[..., Any]:
    """``fn`` receiving the capture hook's live result (an async ``fn``'s coroutine is returned as is)."""

    def call(event: Event, phase: Phase, view: Any) -> Any:
        return fn(event, phase, hook(event, phase, learner, copy=False))

    return call


class Layer(NamedTuple):
    """Steps that run before the next layer: ``inline`` in order, then ``concurrent`` (async) together."""

    inline: tuple[Step, ...]
    concurrent: tuple[Step, ...] = ()


def annotate(exc: BaseException, callback: Callback, event: Event, phase: Phase, detached: bool = False) -> None:
    """Add a note naming the callback and event to an error raised by a handler (once)."""
    if isinstance(exc, FitException) or getattr(exc, "_asyncloop_annotated", False):
        return
    kind = "detached callback" if detached else "callback"
    exc.add_note(f"asyncloop: raised by {kind} {callback.name} while handling {event!r} in {phase!r}")
    try:
        exc._asyncloop_annotated = True  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exotic exception types
        pass


def run_sync(steps: Sequence[Step]) -> Callable[[Event, Phase], None]:
    """Run sync handlers one after another: filter, time, annotate errors (the first error stops the rest).

    Each handler's time is measured from the end of the previous one (one clock read per handler) and
    recorded in its callback's statistics.
    """
    calls = tuple((s.fn, s.view, s.accept, s.stats, s.callback) for s in steps)

    def run(event: Event, phase: Phase) -> None:
        t0 = _perf()
        for fn, view, accept, stats, callback in calls:
            if accept is not None and not accept(event, phase):
                continue
            try:
                fn(event, phase, view)
            except BaseException as exc:
                annotate(exc, callback, event, phase)
                raise
            finally:
                t1 = _perf()
                # ActorStatistics.record, inlined: this loop runs every handler of every event
                elapsed = t1 - t0
                stats.events += 1
                stats.handler_time += elapsed
                if elapsed > stats.max_handler_time:
                    stats.max_handler_time = elapsed
                t0 = t1

    return run


async def call_async(step: Step, event: Event, phase: Phase) -> None:
    """Await one async handler: filter, time, annotate errors."""
    accept = step.accept
    if accept is not None and not accept(event, phase):
        return
    t0 = _perf()
    try:
        await step.fn(event, phase, step.view)
    except BaseException as exc:
        annotate(exc, step.callback, event, phase)
        raise
    finally:
        step.stats.record(_perf() - t0)


async def call_concurrently(steps: Sequence[Step], event: Event, phase: Phase) -> None:
    """Await async handlers as concurrent trio tasks; raise the first real error (the others become notes).

    Control flow (``CancelStepException``, ...) lets the siblings finish, as under the LinearRunner; a real
    error cancels them.
    """
    errors: list[BaseException] = []

    async def one(step: Step, scope: trio.CancelScope) -> None:
        try:
            await call_async(step, event, phase)
        except trio.Cancelled:
            raise
        except FitException as exc:
            errors.append(exc)
        except BaseException as exc:
            errors.append(exc)
            scope.cancel()

    async with trio.open_nursery() as nursery:
        for step in steps:
            nursery.start_soon(one, step, nursery.cancel_scope)
    if errors:
        errors.sort(key=lambda e: isinstance(e, FitException))  # a real error wins over control flow
        first = errors[0]
        for other in errors[1:]:
            first.add_note(f"asyncloop: concurrently, another handler raised {other!r}")
        raise first


def build_plan(layers: Sequence[Layer], publish: Publish | None = None, tail: Tail | None = None) -> Plan | None:
    """Compile ``layers`` into one plan, or ``None`` when there is nothing to do.

    ``publish`` queues a detached step's event (required when a step has an ``actor``); ``tail`` runs at the
    end of every event with the actors whose inbox filled up (a full inbox is waited for once the event's
    handlers ran). Two shapes: with async handlers a coroutine function; without, a plain function that
    returns ``None`` unless an inbox is full (and without ``tail``, the :func:`run_sync` loop itself).
    """
    ops: list[Step | tuple[Step, ...]] = []  # in execution order: inline steps, concurrent groups (tuples)
    for layer in layers:
        ops.extend(layer.inline)
        if layer.concurrent:
            ops.append(layer.concurrent)
    segments: list[tuple[Any, Step | None, tuple[Step, ...] | None]] = []  # (sync run, publication, group)
    for called, run in groupby(ops, key=lambda op: isinstance(op, Step) and op.actor is None):
        if called:  # consecutive sync handlers, across layers too: one loop
            segments.append((run_sync(list(run)), None, None))  # type: ignore[arg-type]
        else:
            segments.extend((None, op, None) if isinstance(op, Step) else (None, None, op) for op in run)
    if any(group is not None for _, _, group in segments):
        return _async_plan(tuple(segments), publish, tail)
    pairs = tuple((handlers, step) for handlers, step, _ in segments)
    if tail is None:  # sync handlers only (merged into one loop): the plan is that loop
        assert len(pairs) <= 1 and all(step is None for _, step in pairs), "a detached step needs a tail"
        return pairs[0][0] if pairs else None

    def run(event: Event, phase: Phase) -> Awaitable[None] | None:
        full = None
        for handlers, step in pairs:
            if handlers is not None:
                handlers(event, phase)
            elif (actor := publish(step, event, phase)) is not None:  # type: ignore[misc]
                full = [actor] if full is None else [*full, actor]
        return tail(full)

    return run


def _async_plan(
    segments: tuple[tuple[Any, Step | None, tuple[Step, ...] | None], ...], publish: Publish | None, tail: Tail | None
) -> Plan:
    async def run_async(event: Event, phase: Phase) -> None:
        full = None
        for handlers, step, group in segments:
            if handlers is not None:
                handlers(event, phase)
            elif step is not None:
                if (actor := publish(step, event, phase)) is not None:  # type: ignore[misc]
                    full = [actor] if full is None else [*full, actor]
            elif len(group) == 1:  # type: ignore[arg-type]
                await call_async(group[0], event, phase)  # type: ignore[index]
            else:
                await call_concurrently(group, event, phase)  # type: ignore[arg-type]
        if tail is not None and (pending := tail(full)) is not None:
            await pending

    return run_async
