"""ActorRunner: every callback is an actor; the graph decides what runs concurrently; observers never stall.

Awaited actors (the default) handle an event on the training thread, layer by layer: callbacks with no path
between them in the callback graph form a layer; a layer's sync handlers run one after another (in the linear
order), its async handlers run concurrently as trio tasks, and the next layer starts when the layer is done. The
event is complete when all awaited handlers are.

Detached actors (``detached = True``, read-only callbacks only) receive, at their turn in the event's order, a
snapshot of exactly the state they declared, and handle it later in the caller's trio loop:

* publishing costs the training thread a snapshot and a ``deque.append``; when ``flush_interval`` seconds
  passed since the last hand-off (or an inbox is half full, and at every epoch/fit boundary) the loop wakes the
  caller's event loop, which
  delivers the outbox as one batch per actor. Latency is bounded by ``flush_interval`` or the time between two
  events, whichever is longer;
* each actor sees its events in order; a ``run_after`` path between two detached actors holds per event;
* sync handlers run on the actor's own thread (one hand-off per batch; the thread lives for the fit), async
  ones as the actor's task; set ``blocking = False`` on a callback whose sync handlers are trivial to keep them
  on the event loop;
* inboxes are bounded (``inbox_size``, default 1024 events): a full inbox makes the loop wait for the actor;
  nothing is dropped, except under the opt-in ``inbox_policy = "latest"``, where a run of waiting events of the
  same type and phase collapses to its newest (counted in the statistics as ``coalesced``): first on the training
  thread (one pending event per kind until the next hand-off), then in the inbox when the actor lags;
* when ``fit`` returns, every detached actor has handled every event.

Errors: an error in any actor ends the fit with that error (with a note naming the callback and event). A
``CancelFittingException`` from a detached actor stops the fit at the loop's next event boundary (a
``CancelEpochException`` at the next event inside an epoch, a ``CancelStepException`` inside a step).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import networkx as nx
import trio

from .._callback import Callback
from ..events import EpochBegin, EpochEnd, Event, FitBegin, FitEnd
from .._exceptions import CancelFittingException, FitException
from .._graph import CallbackInfo
from ..phases import Phase
from .._threads import ActorThread
from ._base import ActorStatistics, Plan, Runner, _Step, annotate, call_async, call_sync, sync_plan

if TYPE_CHECKING:
    from .._session import Session

__all__ = ["ActorRunner"]

_perf = time.perf_counter
_POLICIES = ("block", "latest")
_FLUSH_EVENTS = (EpochBegin, EpochEnd, FitBegin, FitEnd)


_SEQ = itemgetter(0)


class _Item(tuple):
    """One event for a detached actor: ``_Item((seq, event, phase, view, fn, is_async))``.

    A tuple built in C (one is made per published event on the training thread), with named read-only fields.
    """

    __slots__ = ()
    seq: int = property(itemgetter(0))  # type: ignore[assignment]
    event: Event = property(itemgetter(1))  # type: ignore[assignment]
    phase: Phase = property(itemgetter(2))  # type: ignore[assignment]
    view: Any = property(itemgetter(3))
    fn: Any = property(itemgetter(4))
    is_async: bool = property(itemgetter(5))  # type: ignore[assignment]


class _Actor:
    """A detached callback's mailbox and task (host side), plus the counters the worker reads."""

    def __init__(self, runner: ActorRunner, info: CallbackInfo, stats: ActorStatistics, capacity: int) -> None:
        cb = info.callback
        self.runner = runner
        self.callback = cb
        self.stats = stats
        self.capacity = capacity
        self.policy = cb.inbox_policy
        if self.policy not in _POLICIES:
            raise ValueError(f"{cb.name}.inbox_policy must be 'block' or 'latest', got {self.policy!r}")
        self.blocking = cb.blocking
        self.info_index = info.index
        self.predecessors: list[_Actor] = []
        self.with_predecessors: list[_Actor] = []  # "latest" actors among itself and its predecessors, in order
        self.reset()

    def reset(self) -> None:
        #: "latest" policy: (event type, phase type) -> the newest item not yet in the outbox (worker only).
        self.slot: dict[tuple[type, type], _Item] | None = {} if self.policy == "latest" else None
        self.slot_coalesced = 0  # items superseded in the slot (worker only; added to the statistics at the end)
        self.enqueued = 0  # written by the worker only
        self.processed = 0  # written by the host only
        self.pending: deque[int] = deque()  # seqs delivered and not yet handled (host)
        self.send, self.recv = trio.open_memory_channel[list[_Item]](math.inf)
        self.lot = trio.lowlevel.ParkingLot()
        self.thread: ActorThread | None = None

    # -- host side -------------------------------------------------------------------------------------------
    async def wait_processed(self, target: int) -> None:
        session = self.runner.session
        while self.processed < target and session is not None and session.error is None:
            await self.lot.park()

    async def wait_done(self, seq: int) -> None:
        session = self.runner.session
        while self.pending and self.pending[0] <= seq and session is not None and session.error is None:
            await self.lot.park()

    def _finished(self, items: Sequence[_Item], seconds: Sequence[float], head: bool = False) -> None:
        """Account for handled items (in delivery order) and wake whoever waits on this actor's progress.

        ``head``: the items are the oldest pending ones, in order (a handled run): accounted in bulk.
        """
        stats, pending = self.stats, self.pending
        n = len(items)
        if head and n and len(pending) >= n and pending[0] == items[0].seq and pending[n - 1] == items[-1].seq:
            stats.events += n
            stats.handler_time += sum(seconds)
            longest = max(seconds)
            if longest > stats.max_handler_time:
                stats.max_handler_time = longest
            popleft = pending.popleft
            for _ in range(n):
                popleft()
            self.processed += n
            self.lot.unpark_all()
            return
        for item, dt in zip(items, seconds):
            stats.events += 1
            stats.handler_time += dt
            if dt > stats.max_handler_time:
                stats.max_handler_time = dt
            if pending and pending[0] == item.seq:
                pending.popleft()
            elif item.seq in pending:  # pragma: no cover - defensive
                pending.remove(item.seq)
        self.processed += len(items)
        self.lot.unpark_all()

    def _coalesce(self, batch: list[_Item]) -> list[_Item]:
        while True:
            try:
                batch.extend(self.recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        # Keep the newest item of each (event type, phase) between epoch/fit boundaries, which are always kept.
        kept: list[_Item] = []
        dropped: list[_Item] = []
        seen: set[tuple[type, Phase]] = set()
        for item in reversed(batch):
            if isinstance(item.event, _FLUSH_EVENTS):
                seen.clear()
                kept.append(item)
                continue
            key = (type(item.event), item.phase)
            if key in seen:
                dropped.append(item)
            else:
                seen.add(key)
                kept.append(item)
        if dropped:
            self.stats.coalesced += len(dropped)
            dropped.reverse()
            self._finished(dropped, [0.0] * len(dropped))
            self.stats.events -= len(dropped)
        kept.reverse()
        return kept

    async def run(self) -> None:
        session = self.runner.session
        assert session is not None
        try:
            async for batch in self.recv:
                if self.policy == "latest":
                    batch = self._coalesce(batch)
                last = batch[-1].seq
                for actor in self.predecessors:
                    await actor.wait_done(last)
                if session.error is not None:
                    return
                await self._handle_batch(batch)
        except trio.Cancelled:
            raise
        except BaseException as exc:  # an actor's error (even SystemExit) ends the fit, unwrapped
            session.fail(exc)
            self.runner._wake_all()

    async def _handle_batch(self, batch: list[_Item]) -> None:
        i = 0
        while i < len(batch):
            item = batch[i]
            if item.is_async:
                self._note_lag(item)
                t0 = _perf()
                try:
                    await item.fn(item.event, item.phase, item.view)
                except FitException as exc:
                    self.runner._request(exc)
                except Exception as exc:
                    annotate(exc, self.callback, item.event, item.phase, detached=True)
                    raise
                self._finished((item,), (_perf() - t0,))
                i += 1
                continue
            j = i
            while j < len(batch) and not batch[j].is_async:
                j += 1
            run = batch[i:j]
            self._note_lag(run[0])  # the oldest item of the run lags the most
            if self.blocking:
                if self.thread is None or self.thread.stopped:
                    return  # the session is closing: pending events are dropped
                seconds, errors = await self.thread.run(self._run_sync, run)
            else:
                seconds, errors = self._run_sync(run)
            for index, exc in errors or ():
                if isinstance(exc, FitException):
                    self.runner._request(exc)
                else:
                    annotate(exc, self.callback, run[index].event, run[index].phase, detached=True)
                    raise exc
            done = len(seconds)
            self._finished(run if done == len(run) else run[:done], seconds, head=True)
            if done < len(run):
                return
            i = j

    def _run_sync(self, run: list[_Item]) -> tuple[list[float], list[tuple[int, BaseException]] | None]:
        """Handle a run of sync items (on the actor's thread when ``blocking``); stop early if the session failed.

        Returns the seconds of each handled item and, if any raised, ``(index, error)`` pairs (the run stops at
        the first error that is not control flow).
        """
        session = self.runner.session
        seconds: list[float] = []
        errors: list[tuple[int, BaseException]] | None = None
        t0 = _perf()
        for item in run:
            if session is None or session.error is not None or session.abort_requested:
                break
            try:
                item.fn(item.event, item.phase, item.view)
            except Exception as exc:
                t1 = _perf()
                seconds.append(t1 - t0)
                t0 = t1
                if errors is None:
                    errors = []
                errors.append((len(seconds) - 1, exc))
                if not isinstance(exc, FitException):
                    break
                continue
            t1 = _perf()
            seconds.append(t1 - t0)
            t0 = t1
        return seconds, errors

    def _note_lag(self, item: _Item) -> None:
        lag = self.runner._seq - item.seq
        if lag > self.stats.peak_lag:
            self.stats.peak_lag = lag


class ActorRunner(Runner):
    """Run callbacks as actors: concurrent by graph layer, with detached observers that never stall training.

    Args:
        inbox_size: default bound of a detached actor's inbox, in events (a callback's ``inbox_size`` attribute
            overrides it). A full inbox makes the training loop wait.
        flush_interval: the loop hands queued events to the detached actors at most this often (seconds), and
            at every epoch and fit boundary. Each hand-off wakes the caller's event loop, which competes with
            the training thread for the GIL: smaller is fresher, larger is cheaper.

    See the module docstring and docs/actors.md for semantics. For the same seeded run it produces the same
    weights, history and metrics as :class:`LinearRunner`.
    """

    def __init__(self, *, inbox_size: int = 1024, flush_interval: float = 0.05) -> None:
        super().__init__()
        if isinstance(inbox_size, bool) or not isinstance(inbox_size, int) or inbox_size < 1:
            raise ValueError(f"inbox_size must be an int >= 1, got {inbox_size!r}")
        if not isinstance(flush_interval, (int, float)) or not flush_interval > 0:
            raise ValueError(f"flush_interval must be a number of seconds > 0, got {flush_interval!r}")
        self.inbox_size = inbox_size
        self.flush_interval = float(flush_interval)
        self._actors: dict[int, _Actor] = {}
        self._seq = 0
        self._outbox: deque[tuple[_Actor, _Item]] = deque()
        self._flush_scheduled = False
        self._last_flush = 0.0
        self._slotted = False  # some "latest" actor holds an item in its slot (worker)
        self._slotted_actors: list[_Actor] = []

    def _is_detached(self, info: CallbackInfo) -> bool:
        return bool(info.callback.detached)

    def compile(self, callbacks: Sequence[Callback], graph: nx.DiGraph) -> None:
        super().compile(callbacks, graph)
        self._descendants = {n: nx.descendants(graph, n) for n in graph.nodes}
        self._actors = {}
        for info in self._infos:
            if info.callback.detached:
                capacity = info.callback.inbox_size or self.inbox_size
                if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
                    raise ValueError(f"{info.callback.name}.inbox_size must be an int >= 1, got {capacity!r}")
                self._actors[info.index] = _Actor(self, info, self._stats[info.index], capacity)
        position = {i: k for k, i in enumerate(self._order)}
        for index, actor in self._actors.items():
            actor.predecessors = [a for i, a in self._actors.items() if index in self._descendants[i]]
            actor.with_predecessors = sorted(
                (a for a in [*actor.predecessors, actor] if a.policy == "latest"),
                key=lambda a: position[a.info_index],
            )
        self._slotted_actors = sorted(
            (a for a in self._actors.values() if a.policy == "latest"), key=lambda a: position[a.info_index]
        )

    # -- plans -----------------------------------------------------------------------------------------------
    def _compile_plan(self, event: type[Event], phase: type[Phase]) -> Plan | None:
        """Layers ``(inline, async_)``: sync handlers and detached publications in linear order, then the async
        handlers (concurrent). A plain sync closure when no handler of the event is async."""
        steps = self._subscribers(event, phase, self._order)
        flush = issubclass(event, _FLUSH_EVENTS) and bool(self._actors)
        if not steps:
            return self._flush_only if flush else None
        dag = nx.DiGraph()
        dag.add_nodes_from(s.info.index for s in steps)
        dag.add_edges_from(
            (a.info.index, b.info.index) for a in steps for b in steps if b.info.index in self._descendants[a.info.index]
        )
        by_index = {s.info.index: s for s in steps}
        position = {i: k for k, i in enumerate(self._order)}
        layers = []
        for generation in nx.topological_generations(dag):
            layer = sorted((by_index[i] for i in generation), key=lambda s: position[s.info.index])
            inline, async_ = [], []  # inline: (step, is detached) in linear order, as the LinearRunner runs them
            for s in layer:
                if s.info.index in self._actors:
                    s.extra = self._actors[s.info.index]
                    inline.append((s, True))
                elif s.is_async:
                    async_.append(s)
                else:
                    inline.append((s, False))
            layers.append((tuple(inline), tuple(async_)))
        plan = tuple(layers)
        publish_ = self._publish
        after = self._after

        if any(layer[1] for layer in plan):

            async def run_async(event: Event, phase: Phase) -> None:
                for inline, async_ in plan:
                    for step, detached in inline:
                        if not detached:
                            call_sync(step, event, phase)
                        elif (actor := publish_(step, event, phase)) is not None:
                            await self._wait_for_room([actor])
                    if len(async_) == 1:
                        await call_async(async_[0], event, phase)
                    elif async_:
                        await self._call_concurrently(async_, event, phase)
                if flush or _perf() - self._last_flush >= self.flush_interval:
                    self._schedule_flush()

            return run_async

        # No async handler: the layers run one after another, so their inline parts form one sequence.
        flat = tuple(item for inline, _ in plan for item in inline)
        if not any(detached for _, detached in flat):
            handlers = sync_plan([step for step, _ in flat])

            def run_inline(event: Event, phase: Phase) -> None:
                handlers(event, phase)
                if flush or _perf() - self._last_flush >= self.flush_interval:
                    self._schedule_flush()

            return run_inline

        # Runs of inline handlers become one sync plan each, between the detached publications.
        segments: list[tuple[Any, _Step | None]] = []
        chunk: list[_Step] = []
        for step, detached in flat:
            if detached:
                if chunk:
                    segments.append((sync_plan(chunk), None))
                    chunk = []
                segments.append((None, step))
            else:
                chunk.append(step)
        if chunk:
            segments.append((sync_plan(chunk), None))

        def run(event: Event, phase: Phase) -> Awaitable[None] | None:
            full = None
            for handlers, step in segments:
                if handlers is not None:
                    handlers(event, phase)
                elif (actor := publish_(step, event, phase)) is not None:
                    full = [actor] if full is None else [*full, actor]
            return after(full, flush)

        return run

    def _flush_only(self, event: Event, phase: Phase) -> None:
        self._schedule_flush()

    def _after(self, full: list[_Actor] | None, flush: bool) -> Awaitable[None] | None:
        if flush or _perf() - self._last_flush >= self.flush_interval:
            self._schedule_flush()
        return self._wait_for_room(full) if full else None

    # -- dispatch (worker) -----------------------------------------------------------------------------------
    def _publish(self, step: _Step, event: Event, phase: Phase) -> _Actor | None:
        """Snapshot and queue one event for a detached actor; return the actor if its inbox is now full."""
        accept = step.accept
        if accept is not None and not accept(event, phase):
            return None
        actor: _Actor = step.extra
        try:
            view = actor.callback.snapshot(event, phase, self._learner)
        except BaseException as exc:
            annotate(exc, actor.callback, event, phase, detached=True)
            raise
        self._seq += 1
        item = _Item((self._seq, event, phase, view, step.fn, step.is_async))
        slot = actor.slot
        if slot is not None and not isinstance(event, _FLUSH_EVENTS):
            # "latest": keep only the newest item per (event type, phase) until the next hand-off, on this
            # thread, so superseded events cost neither the outbox nor the caller's loop anything.
            key = (event.__class__, phase.__class__)
            if slot.pop(key, None) is not None:
                actor.slot_coalesced += 1
            slot[key] = item
            self._slotted = True
            return None
        if self._slotted:
            self._release_slots(actor)  # older slotted items of this actor and its predecessors go first
        self._outbox.append((actor, item))
        actor.enqueued += 1
        queued = actor.enqueued - actor.processed
        if queued * 2 > actor.capacity:
            if actor.policy == "block" and queued >= actor.capacity:
                return actor  # full: the loop waits until there is room for the next event
            self._schedule_flush()  # half full: hand over now rather than at the next interval
        return None

    async def _wait_for_room(self, actors: list[_Actor]) -> None:
        """Block the loop until each full inbox has room again (a hop to the caller's loop)."""
        session = self.session
        assert session is not None
        for actor in actors:
            target = actor.enqueued - actor.capacity + 1
            t0 = _perf()

            async def wait(actor: _Actor = actor, target: int = target) -> None:
                self._flush()
                await actor.wait_processed(target)

            await session.call_host(wait)
            actor.stats.loop_wait_time += _perf() - t0
        session.check()

    async def _call_concurrently(self, steps: tuple[_Step, ...], event: Event, phase: Phase) -> None:
        errors: list[BaseException] = []

        async def one(step: _Step, scope: trio.CancelScope) -> None:
            try:
                await call_async(step, event, phase)
            except trio.Cancelled:
                raise
            except FitException as exc:  # control flow: the siblings finish, as under the LinearRunner
                errors.append(exc)
            except BaseException as exc:  # a real error: stop the siblings
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

    def _release_slots(self, upto: _Actor | None = None) -> None:
        """Move slotted "latest" items into the outbox (worker side, or host side once the worker is done).

        Predecessors first: an actor's items reach the outbox after the older items of every actor it runs
        after, which is what the per-event ``run_after`` wait relies on. ``upto``: only that actor and the
        actors it runs after; default all.
        """
        actors = self._slotted_actors if upto is None else upto.with_predecessors
        outbox = self._outbox
        for actor in actors:
            slot = actor.slot
            if slot:
                for item in slot.values():  # insertion order is seq order: a superseded key is re-inserted
                    outbox.append((actor, item))
                actor.enqueued += len(slot)
                slot.clear()
        if upto is None:
            self._slotted = False

    def _schedule_flush(self) -> None:
        """From the worker: have the caller's loop deliver the outbox soon (one wake-up, ~10 us)."""
        if self._slotted:
            self._release_slots()
        session = self.session
        if session is None or self._flush_scheduled or not self._outbox:
            return
        self._flush_scheduled = True
        self._last_flush = _perf()
        try:
            session.host_token.run_sync_soon(self._flush)
        except trio.RunFinishedError:  # pragma: no cover
            self._flush_scheduled = False

    # -- delivery (host) -------------------------------------------------------------------------------------
    def _flush(self) -> None:
        """Deliver the outbox, one batch per actor. Runs in the host loop and never raises."""
        self._flush_scheduled = False
        try:
            batches: dict[_Actor, list[_Item]] = {}
            outbox = self._outbox
            while True:
                try:
                    actor, item = outbox.popleft()
                except IndexError:
                    break
                batch = batches.get(actor)
                if batch is None:
                    batch = batches[actor] = []
                batch.append(item)
            for actor, batch in batches.items():
                actor.pending.extend(map(_SEQ, batch))
                depth = actor.enqueued - actor.processed
                if depth > actor.stats.peak_inbox:
                    actor.stats.peak_inbox = depth
                actor.send.send_nowait(batch)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        except BaseException as exc:  # pragma: no cover - never let a run_sync_soon callback raise
            if self.session is not None:
                self.session.fail(exc)

    def _request(self, exc: FitException) -> None:
        """A detached actor asks the loop to cancel; a stop of the fit wins over a pending step/epoch cancel."""
        session = self.session
        if session is None:
            return
        pending = session.control
        if pending is None or (
            isinstance(exc, CancelFittingException) and not isinstance(pending, CancelFittingException)
        ):
            session.control = exc

    def _wake_all(self) -> None:
        for actor in self._actors.values():
            actor.lot.unpark_all()

    # -- session hooks (host) --------------------------------------------------------------------------------
    async def start(self, session: Session) -> None:
        await super().start(session)
        self._seq = 0
        self._outbox.clear()
        self._flush_scheduled = False
        self._slotted = False
        nursery = session.nursery
        assert nursery is not None
        for actor in self._actors.values():
            actor.reset()
            if actor.blocking:
                actor.thread = ActorThread(f"asyncloop-actor-{actor.callback.name}")
            nursery.start_soon(actor.run, name=f"asyncloop-actor-{actor.callback.name}")

    async def drain(self) -> None:
        self._release_slots()  # the worker is done: the host may move the last slotted items
        self._flush()
        for actor in self._actors.values():
            t0 = _perf()
            await actor.wait_processed(actor.enqueued)
            actor.stats.loop_wait_time += _perf() - t0
        session = self.session
        if session is not None and session.control is not None:
            session.control = None  # a stop requested after the last event has nothing left to stop

    def close(self) -> None:
        for actor in self._actors.values():
            actor.send.close()
            if actor.slot:
                actor.slot.clear()  # an unfinished fit's last "latest" snapshots are not kept alive
            if actor.thread is not None:
                actor.thread.stop()
        self._outbox.clear()
        super().close()

    def join(self) -> None:
        for actor in self._actors.values():
            actor.stats.coalesced += actor.slot_coalesced
            actor.slot_coalesced = 0
            if actor.thread is not None:
                actor.thread.join()  # quick: every actor task has finished, so each thread is exiting
                actor.thread = None
