"""Delivery to detached actors: mailboxes, direct delivery, the outbox and its flushes, back-pressure, actor
threads (private).

The training thread *publishes*: it takes the callback's snapshot (``snapshot(..., copy=True)``) at the
callback's turn in the event's order and appends it to a ``deque`` (no lock, no wake-up).

*Direct* actors (``Actor.can_direct``: a thread actor whose handlers are all sync, or a process actor, with no
``run_after`` path to or from another detached actor and no resource shared with one) have their own inbox,
which their thread (a process actor's courier) reads for the whole fit (:meth:`Actor._consume`): a busy thread
takes each new event as it comes (a courier: everything queued, as one batch); an idle one sleeps on a
``SimpleQueue`` and is woken (one ``put``: a lock release) when ``DIRECT_WORK`` seconds of its work are queued,
at its first event, when its inbox is half full, and whenever the outbox would be flushed (below). The caller's
loop only waits for the thread's job to end, and for its progress when the loop waits for room or drains.

Every other actor's events go to the outbox. When
``flush_interval`` seconds passed since the last hand-off, when an inbox is half full, when an idle actor has
10 ms of work queued (``EARLY_WORK``), and at every epoch/fit boundary, it asks the caller's trio loop
(``run_sync_soon``) to *flush*: deliver the outbox as one batch per actor. Each :class:`Actor` is a task in the
caller's loop that handles its batches in order: runs of sync handlers on its own :class:`ActorThread` (one
hand-off per run; on the loop itself with ``blocking = False``), async handlers as the task. A ``run_after``
path between two detached actors holds per event, and actors that share a resource (loggers writing one backend
instance: *peers*) take their events in turn, in the loop's order, so the resource sees what the
``LinearRunner`` would write, in the same order.

Back-pressure: an inbox holds at most ``capacity`` events; a publication that fills it makes the loop wait (at
the end of the event) until the actor has handled half of them (one hop per ``capacity / 2`` events from a slow
actor, not one per event). Nothing is dropped. Statistics: ``peak_inbox`` at delivery,
``peak_lag`` when a handler starts, handler times when handled, ``loop_wait_time`` while the loop waits.

Thread ownership: ``enqueued``/``seq``/the outbox's and inboxes' right ends are written by the training thread;
``processed``, ``pending`` and the statistics of handled events by the caller's loop, or for a direct actor by
its thread (which also writes ``idle``, ``mean_seconds`` and its inbox's left end).
"""

from __future__ import annotations

import math
import queue
import time
import warnings
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import networkx as nx
import trio

from .._callback import Callback
from .._exceptions import CancelFittingException, FitException
from .._graph import CallbackInfo
from .._snapshots import snapshot_tree
from .._threads import ActorThread, SwitchInterval
from ..events import EpochBegin, EpochEnd, Event, FitBegin, FitEnd
from ..phases import Phase
from ._plans import Step, annotate
from ._process import STARTUP_INBOX_FACTOR, ProcessWorker, check_picklable
from ._statistics import ActorStatistics

if TYPE_CHECKING:
    from .._session import Session

_perf = time.perf_counter
_SEQ = attrgetter("seq")
#: An idle actor gets its queued events before the next flush interval once they hold this many seconds of work
#: (by its moving-average handler time): a slow observer sits idle less while its events wait for the interval,
#: while a trivial one (a printer: microseconds per event) costs no extra wake-up. Each hand-off wakes the
#: caller's loop and the actor's thread, which take the GIL from training: 10 ms (a hand-off per ~40 tiny steps)
#: lost less of a slow observer's time than 1 ms (one per ~4) on both workloads (bench/early_handover.py).
EARLY_WORK = 0.01
#: A direct actor (see :class:`Actor`) that is idle is woken once its queued events hold this many seconds of work:
#: waking it costs the training thread one lock release, not a hop through the caller's loop, so it can be
#: woken far more often than the outbox is handed over; a slow observer then trails the loop by ~1 ms of work.
DIRECT_WORK = 0.001
#: Whether the actors that can take their events straight from the training thread do (read at each fit's start;
#: ``False`` sends every actor's events through the caller's loop, for the ``bench/direct_delivery*.py`` A/Bs).
DIRECT = True
#: Events that hand the outbox over at once (epoch and fit boundaries).
FLUSH_EVENTS = (EpochBegin, EpochEnd, FitBegin, FitEnd)


class Item:
    """One event for a detached actor: its sequence number, the event and phase, what the handler receives
    (``view``), the handler and whether it is async. One is made per published event on the training thread."""

    __slots__ = ("seq", "event", "phase", "view", "fn", "is_async")

    def __init__(self, seq: int, event: Event, phase: Phase, view: Any, fn: Any, is_async: bool) -> None:
        self.seq, self.event, self.phase, self.view, self.fn, self.is_async = seq, event, phase, view, fn, is_async


class Actor:
    """A detached callback's mailbox and task (host side), plus the counters the training thread reads."""

    def __init__(self, delivery: Delivery, info: CallbackInfo, stats: ActorStatistics, capacity: int) -> None:
        cb = info.callback
        self.delivery = delivery
        self.callback = cb
        self.stats = stats
        self.capacity = capacity
        self.blocking = cb.blocking
        self.predecessors: list[Actor] = []
        #: The other detached actors that share a resource with this one (loggers writing to one backend
        #: instance; set by ``Delivery.compile``): between them, events are handled one at a time in the loop's
        #: order (see :meth:`_handle_in_turn`).
        self.peers: list[Actor] = []
        #: ``capture(event, phase, learner, copy=True)``: what is published (the callback's capture hook).
        self.capture: Callable[..., Any] = cb.snapshot
        #: Whether the actor's thread may take its events straight from :attr:`inbox` (a thread actor with sync
        #: handlers only, or a process actor, with no ``run_after`` path to or from another detached actor and no
        #: peers; set by ``Delivery.compile``), and whether it does in this fit (``DIRECT``, read at the start of
        #: each fit).
        self.can_direct = self.direct = False
        self.reset()

    def reset(self) -> None:
        self.enqueued = 0  # written by the training thread only
        self.early_flush_at = 0  # ``enqueued`` at the last half-full hand-over (training thread)
        self.processed = 0  # written by the host only
        self.delivered = 0  # events handed to the actor so far (host)
        self.mean_seconds = 0.0  # a moving average of its handler time (host)
        self.pending: deque[int] = deque()  # seqs delivered and not yet handled (host)
        self.send, self.recv = trio.open_memory_channel[list[Item]](math.inf)
        self.lot = trio.lowlevel.ParkingLot()
        self.thread: ActorThread | None = None
        # Direct delivery (training thread -> actor thread): the queued items, and the bell that wakes an idle
        # consumer (at most one ring outstanding: ``signalled``). ``watched``: the host waits for progress.
        self.inbox: deque[Item] = deque()
        self.bell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.idle = True
        self.signalled = False
        self.watched = False
        self.closing = False

    # -- waiting for progress (host) -------------------------------------------------------------------------
    async def wait_processed(self, target: int) -> None:
        session = self.delivery.session
        while self.processed < target and session is not None and session.error is None:
            self.watched = True  # a direct actor's thread wakes us after its next event (set, then re-checked)
            if self.processed >= target:
                break
            await self.lot.park()

    async def wait_done(self, seq: int) -> None:
        session = self.delivery.session
        while self.pending and self.pending[0] <= seq and session is not None and session.error is None:
            await self.lot.park()

    def _finished(self, items: Sequence[Item], seconds: Sequence[float]) -> None:
        """Account for the handled ``items`` (one time each, in delivery order) and wake whoever waits on them."""
        record, pending = self.stats.record, self.pending
        for item, dt in zip(items, seconds):
            record(dt)
            if pending and pending[0] == item.seq:
                pending.popleft()
            elif item.seq in pending:  # pragma: no cover - defensive: an earlier run stopped short
                pending.remove(item.seq)
        self.processed += len(seconds)
        if seconds:
            self.mean_seconds += (sum(seconds) / len(seconds) - self.mean_seconds) * 0.25
        self.lot.unpark_all()

    # -- the actor's task (host) -----------------------------------------------------------------------------
    async def run(self, session: Session) -> None:
        """The actor's task for one session. ``session`` is passed in, not read from the delivery: a fit whose
        worker finishes at once (nothing to validate) may close the delivery before this task's first step."""
        try:
            await self._serve(session)
        except trio.Cancelled:
            if self.thread is not None and self.thread.abandoned:
                self._report_abandoned()
            raise
        except BaseException as exc:  # an actor's error (even SystemExit) ends the fit, unwrapped
            session.fail(exc)
            self.delivery.wake_all()

    async def _serve(self, session: Session) -> None:
        """Handle the inbox's batches in order until it is closed."""
        if self.direct:
            assert self.thread is not None
            if self.closing or self.thread.stopped:  # closed before this task started: nothing was published
                return
            await self.thread.run(self._consume, session, grace=self.delivery.cancel_grace, on_cancel=self.halt)
            return
        async for batch in self.recv:
            if self.peers:
                if not await self._handle_in_turn(batch, session):
                    return
                continue
            last = batch[-1].seq
            for actor in self.predecessors:
                await actor.wait_done(last)
            if session.error is not None:
                return
            await self._handle_batch(batch)

    async def _handle_in_turn(self, batch: list[Item], session: Session) -> bool:
        """Handle ``batch`` in the loop's event order with the peers (and after the predecessors): each run of
        items starts once no peer or predecessor has an earlier event pending, and stops before the next event one
        of them has. Returns whether the whole batch was handled.

        Deadlock-free: every wait is for an event with a smaller sequence number, so the actor holding the oldest
        pending event never waits. Complete: events reach every actor in one flush per batch of the outbox, so an
        event older than one of ``batch`` is already in its actor's ``pending`` when ``batch`` arrives.
        """
        others = self.predecessors + self.peers
        i = 0
        while i < len(batch):
            seq = batch[i].seq
            for other in others:
                await other.wait_done(seq)
            if session.error is not None:
                return False
            bound = min((o.pending[0] for o in others if o.pending), default=math.inf)
            j = i + 1
            while j < len(batch) and batch[j].seq < bound:
                j += 1
            before = self.processed
            await self._handle_batch(batch[i:j])
            if self.processed - before < j - i:  # stopped short: the session is failing or closing
                return False
            i = j
        return True

    def _settle(self, run: list[Item], seconds: list[float], errors: list[tuple[int, BaseException]] | None) -> bool:
        """Account for a handled run: raise its first real error, pass control requests on; whether it all ran."""
        self._pass_on(run, errors)
        self._finished(run, seconds)
        return len(seconds) >= len(run)

    def _pass_on(self, run: Sequence[Item], errors: list[tuple[int, BaseException]] | None) -> None:
        """Hand the control requests among a run's ``(index, error)`` pairs to the loop; raise its first real
        error, with a note naming the callback and the event."""
        for index, exc in errors or ():
            if isinstance(exc, FitException):
                self.delivery.request(exc)
            else:
                annotate(exc, self.callback, run[index].event, run[index].phase, detached=True)
                raise exc

    async def _handle_batch(self, batch: list[Item]) -> None:
        i = 0
        while i < len(batch):
            j = i + 1
            if not batch[i].is_async:  # a run of sync items: one hand-off to the thread
                while j < len(batch) and not batch[j].is_async:
                    j += 1
            run = batch[i:j]
            self._note_lag(run[0])  # the oldest item of the run lags the most
            if batch[i].is_async:
                seconds, errors = await self._run_async(run[0])
            elif self.blocking:
                if self.thread is None or self.thread.stopped:
                    return  # the session is closing: pending events are dropped
                seconds, errors = await self.thread.run(self._run_sync, run, grace=self.delivery.cancel_grace)
            else:
                seconds, errors = self._run_sync(run)
            if not self._settle(run, seconds, errors):
                return
            i = j

    async def _run_async(self, item: Item) -> tuple[list[float], list[tuple[int, BaseException]] | None]:
        """Await one async item: its seconds and, if it raised an ``Exception``, ``[(0, error)]``."""
        t0 = _perf()
        try:
            await item.fn(item.event, item.phase, item.view)
        except Exception as exc:
            return [_perf() - t0], [(0, exc)]
        return [_perf() - t0], None

    def _run_sync(self, run: list[Item]) -> tuple[list[float], list[tuple[int, BaseException]] | None]:
        """Handle a run of sync items (on the actor's thread when ``blocking``); stop early if the session failed.

        Returns the seconds of each handled item and, if any raised, ``(index, error)`` pairs (the run stops at
        the first error that is not control flow).
        """
        session = self.delivery.session
        seconds: list[float] = []
        errors: list[tuple[int, BaseException]] | None = None
        t0 = _perf()
        for item in run:
            if session is None or session.error is not None or session.abort_requested:
                break
            try:
                item.fn(item.event, item.phase, item.view)
            except Exception as exc:
                if errors is None:
                    errors = []
                errors.append((len(seconds), exc))
                if not isinstance(exc, FitException):
                    seconds.append(_perf() - t0)
                    break
            t1 = _perf()
            seconds.append(t1 - t0)
            t0 = t1
        return seconds, errors

    # -- direct delivery (the actor's thread) ------------------------------------------------------------------
    def ring(self) -> None:
        """Wake the idle consumer (any thread; at most one ring outstanding)."""
        self.signalled = True
        self.bell.put(None)

    def halt(self) -> None:
        """Ask the consumer to stop before its next event (any thread); its pending events are dropped."""
        self.closing = True
        self.ring()

    def _consume(self, session: Session) -> None:
        """The direct actor's thread (or a process actor's courier), for the whole fit: handle :attr:`inbox` in
        order, sleep on :attr:`bell` when it is empty. Returns when halted or the session fails or is aborted;
        raises a handler's first error that is not control flow (control requests go to the loop, and the actor
        goes on)."""
        inbox, bell = self.inbox, self.bell
        while True:
            if not inbox:
                self.idle = True  # then re-check: a publication after this line sees idle and may ring
                if not inbox and not self.closing:
                    bell.get()
                    self.signalled = False
                self.idle = False
            if self.closing or session.error is not None or session.abort_requested:
                return
            if inbox:
                self._take(session)

    def _take(self, session: Session) -> None:
        """Handle the oldest event of the inbox (on the actor's thread)."""
        stats, delivery = self.stats, self.delivery
        item = self.inbox.popleft()
        lag = delivery.seq - item.seq
        if lag > stats.peak_lag:
            stats.peak_lag = lag
        t0 = _perf()
        try:
            if item.is_async:  # not listed by the callback's registry: awaited in the caller's loop, in order
                trio.from_thread.run(item.fn, item.event, item.phase, item.view, trio_token=session.host_token)
            else:
                item.fn(item.event, item.phase, item.view)
        except FitException as exc:
            delivery.request(exc)
        except Exception as exc:
            annotate(exc, self.callback, item.event, item.phase, detached=True)
            raise
        finally:
            self._handled((_perf() - t0,), session)

    def _handled(self, seconds: Sequence[float], session: Session) -> None:
        """Account for events a direct actor handled (on its thread) and wake the caller's loop if it waits."""
        record = self.stats.record
        for dt in seconds:
            record(dt)
            self.mean_seconds += (dt - self.mean_seconds) * 0.25
        self.processed += len(seconds)
        if self.watched:
            self.watched = False
            try:
                session.host_token.run_sync_soon(self.lot.unpark_all)
            except trio.RunFinishedError:  # pragma: no cover - the caller's loop is gone
                pass

    def _report_abandoned(self) -> None:
        self.stats.abandoned = True
        warnings.warn(
            f"asyncloop: detached callback {self.callback.name} did not finish its handler within "
            f"{self.delivery.cancel_grace:g} s of the fit being cancelled or failing; its thread was abandoned and "
            f"runs on in the background until the handler returns (give blocking I/O a timeout)",
            RuntimeWarning,
            stacklevel=1,
        )

    def _note_lag(self, item: Item) -> None:
        lag = self.delivery.seq - item.seq
        if lag > self.stats.peak_lag:
            self.stats.peak_lag = lag


class ProcessActor(Actor):
    """A ``detached = "process"`` actor: the same mailbox and task, but its handlers run in a worker process.

    Its actor thread is the courier: per batch it pickles the items, sends them and waits for the worker's
    answer (per item its time, and the errors), so order, back-pressure and error handling are those of a
    thread actor. At the start of each fit it sends a fresh pickled copy of the callback; at the end (however
    the fit ends) the worker runs the copy's ``teardown(None)`` and sends back ``process_state()``, which the
    parent instance loads. A worker that does not stop within ``cancel_grace`` of a cancellation is killed.
    """

    def __init__(self, delivery: Delivery, info: CallbackInfo, stats: ActorStatistics, capacity: int) -> None:
        super().__init__(delivery, info, stats, capacity)
        self.nominal = capacity
        cb = self.callback
        # The default capture hook (seen through wrappers such as throttle()): send the bare tree, the worker wraps
        # it in the protected view (a view's class is compiled per process and does not pickle).
        self.wrap = type(cb.inner).snapshot is Callback.snapshot and (
            type(cb).snapshot is Callback.snapshot or type(cb).snapshot is _wrapper_snapshot())
        if self.wrap:
            access = cb.state_access

            def capture(event: Event, phase: Phase, learner: Any, copy: bool = True) -> Any:
                return snapshot_tree(learner, access)

            self.capture = capture
        self.blocking = True
        self.worker: ProcessWorker | None = None
        self.payload = b""
        self.begun = False

    async def run(self, session: Session) -> None:
        try:
            await super().run(session)
        finally:
            await self._end()

    async def _serve(self, session: Session) -> None:
        assert self.worker is not None
        try:
            await self._call(self.worker.begin, self.payload, self.wrap, on_cancel=self._cancel_start)
            self.begun = True
        finally:
            self.capacity = self.nominal  # start-up is over: the inbox bound applies again
        if self.direct:  # the courier takes the events straight from the training thread
            await self._call(self._consume, session, on_cancel=self._halt_worker)
            return
        await super()._serve(session)

    def _halt_worker(self) -> None:
        self.halt()
        assert self.worker is not None
        self.worker.request_abort()

    def _take(self, session: Session) -> None:
        """Send everything queued as one batch and wait for the worker's answer (on the courier thread)."""
        assert self.worker is not None
        if self.worker.dead:  # killed after a cancellation's grace ran out: nothing more to send
            self.closing = True
            return
        inbox = self.inbox
        batch = [inbox.popleft() for _ in range(len(inbox))]
        self._note_lag(batch[0])
        seconds, errors = self.worker.handle([(i.event, i.phase, i.view) for i in batch])
        try:
            self._pass_on(batch, errors)
        finally:
            self._handled(seconds, session)

    async def _handle_batch(self, batch: list[Item]) -> None:
        assert self.worker is not None and self.thread is not None
        if self.worker.dead:
            return
        while not self.predecessors and not self.peers:  # batches queued while the worker was busy: one exchange
            try:
                batch = batch + self.recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self._note_lag(batch[0])
        seconds, errors = await self._call(self.worker.handle, [(i.event, i.phase, i.view) for i in batch])
        self._settle(batch, seconds, errors)

    def _cancel_start(self) -> None:
        """Cancelled while the worker starts: a worker that is not ready yet has nothing to finish; end it now."""
        assert self.worker is not None
        if self.worker.ready:
            self.worker.request_abort()
        else:
            self.worker.kill()

    async def _call(
        self, fn: Callable[..., Any], *args: Any, grace: float | None = None,
        on_cancel: Callable[[], None] | None = None,
    ) -> Any:
        """Run a blocking exchange with the worker on the courier thread; on cancellation ask the worker to stop,
        give it ``grace`` (default ``cancel_grace``) seconds, then kill it."""
        assert self.thread is not None and self.worker is not None
        worker = self.worker
        thread = self.thread
        grace = self.delivery.cancel_grace if grace is None else grace
        try:
            return await thread.run(fn, *args, grace=grace, on_cancel=on_cancel or worker.request_abort)
        except BaseException:
            if thread.abandoned:  # the grace ran out: end the worker, the courier's exchange then fails at once
                worker.kill()
                thread.abandoned = False
                self.stats.abandoned = True
                warnings.warn(
                    f"asyncloop: detached callback {self.callback.name} did not finish its handler within "
                    f"{self.delivery.cancel_grace:g} s of the fit being cancelled or failing; its worker process "
                    f"was terminated (give blocking I/O a timeout)",
                    RuntimeWarning,
                    stacklevel=1,
                )
            raise

    async def _end(self) -> None:
        """Tear the worker's copy down and load its final state (shielded; bounded unless the fit drained)."""
        worker, thread, session = self.worker, self.thread, self.delivery.session_at_start
        try:
            if not self.begun or worker is None or thread is None or worker.dead or thread.stopped:
                return
            with trio.CancelScope(shield=True) as scope:
                if not self.delivery.drained:
                    scope.deadline = trio.current_time() + self.delivery.cancel_grace
                try:
                    state, error = await self._call(worker.end, grace=0)
                except trio.Cancelled:  # the grace ran out: the worker was killed
                    return
                except Exception as exc:
                    state, error = None, exc
                if state is not None and error is None:
                    try:
                        self.callback.inner.load_process_state(state)
                    except Exception as exc:
                        error = exc
                if error is not None and session is not None and session.error is None:
                    error.add_note(f"asyncloop: raised while ending the worker process of {self.callback.name}")
                    session.fail(error)
        finally:
            self.begun = False
            if thread is not None:
                thread.stop()


class Delivery:
    """The detached half of an :class:`asyncloop.ActorRunner`: its actors and everything between them and the loop.

    ``publish`` and ``tail`` run on the training thread (they are what plans call); ``flush``, ``start``,
    ``drain``, ``close`` and ``join`` in the caller's loop.
    """

    def __init__(
        self, inbox_size: int, flush_interval: float, cancel_grace: float, switch_interval: float | None = None
    ) -> None:
        self.inbox_size = inbox_size
        self.flush_interval = flush_interval
        self.cancel_grace = cancel_grace
        self.switch_interval = switch_interval
        self.switch_lowered = False
        self.actors: dict[int, Actor] = {}
        #: The actors whose threads take their events straight from the training thread (see ``Actor.direct``).
        self.direct: list[Actor] = []
        self.session: Session | None = None
        self.learner: Any = None
        self.seq = 0
        self.outbox: deque[tuple[Actor, Item]] = deque()
        self.flush_scheduled = False
        self.last_flush = 0.0
        self.drained = False
        self.session_at_start: Session | None = None
        #: id(callback) -> (callback, its worker process): kept across the fits of this runner.
        self.workers: dict[int, tuple[Any, ProcessWorker]] = {}
        weakref.finalize(self, _stop_workers, self.workers)

    def compile(self, learner: Any, infos: Sequence[CallbackInfo], stats: Sequence[ActorStatistics],
                graph: nx.DiGraph) -> None:
        """One actor per detached callback; each waits per event for the detached actors it runs after, and
        the actors that share a resource (:func:`shared_resources`) take their events in turn, in the loop's order."""
        self.learner = learner
        self.actors = {}
        processes: list[Any] = []
        for info in infos:
            detached = placement(info.callback)
            if detached:
                capacity = info.callback.inbox_size or self.inbox_size
                if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
                    raise ValueError(f"{info.callback.name}.inbox_size must be an int >= 1, got {capacity!r}")
                kind = ProcessActor if detached == "process" else Actor
                self.actors[info.index] = kind(self, info, stats[info.index], capacity)
                if detached == "process":
                    check_picklable(info.callback)  # fail when the learner is built, not mid-fit
                    processes.append(info.callback)
        # Start the workers now (spawn + imports take seconds): they warm up while the user prepares the fit.
        keep = {id(cb) for cb in processes}
        for key in [k for k in self.workers if k not in keep]:
            self.workers.pop(key)[1].stop()
        for cb in processes:
            self.worker_for(cb)
        for index, actor in self.actors.items():
            ancestors = nx.ancestors(graph, index)
            actor.predecessors = [a for i, a in self.actors.items() if i in ancestors]
        for group in _groups(self.actors.values()):
            for actor in group:
                actor.peers = [a for a in group if a is not actor]
        followed = {id(p) for actor in self.actors.values() for p in actor.predecessors}
        for actor in self.actors.values():
            actor.can_direct = not actor.predecessors and not actor.peers and id(actor) not in followed and (
                isinstance(actor, ProcessActor)
                or (type(actor) is Actor and actor.blocking and _sync_only(actor.callback))
            )

    def worker_for(self, callback: Any) -> ProcessWorker:
        """``callback``'s worker process: the one kept from an earlier fit, or a fresh one (spawned now)."""
        known = self.workers.get(id(callback))
        if known is not None and known[0] is callback and known[1].alive():
            return known[1]
        if known is not None:
            known[1].stop()
        worker = ProcessWorker(callback.name)
        self.workers[id(callback)] = (callback, worker)
        return worker

    def shutdown(self) -> None:
        """Stop every worker process (they are otherwise kept for the next fit)."""
        _stop_workers(self.workers)

    # -- training thread -------------------------------------------------------------------------------------
    def publish(self, step: Step, event: Event, phase: Phase) -> Actor | None:
        """Snapshot and queue one event for a detached step; return its actor if its inbox is now full."""
        accept = step.accept
        if accept is not None and not accept(event, phase):
            return None
        actor: Actor = step.actor
        try:
            view = actor.capture(event, phase, self.learner, copy=True)
        except BaseException as exc:
            annotate(exc, actor.callback, event, phase, detached=True)
            raise
        self.seq += 1
        if actor.direct:
            actor.inbox.append(Item(self.seq, event, phase, view, step.fn, step.is_async))
            actor.enqueued += 1
            queued = actor.enqueued - actor.processed
            if queued > actor.stats.peak_inbox:
                actor.stats.peak_inbox = queued
            if actor.idle and not actor.signalled and (
                queued * actor.mean_seconds >= DIRECT_WORK or queued * 2 > actor.capacity or not actor.processed
            ):
                actor.ring()  # an idle actor with ~1 ms of work, a half-full inbox or no handler time yet: wake it
            return actor if queued >= actor.capacity else None
        self.outbox.append((actor, Item(self.seq, event, phase, view, step.fn, step.is_async)))
        actor.enqueued += 1
        waiting = actor.enqueued - actor.delivered
        if actor.processed >= actor.delivered and waiting * actor.mean_seconds >= EARLY_WORK:
            # An idle actor with work waiting (a slow observer that caught up): hand over now, not at the next
            # interval, so that it does not sit idle while its events pile up in the outbox.
            self.schedule_flush()
        queued = actor.enqueued - actor.processed
        if queued * 2 > actor.capacity:
            if queued >= actor.capacity:
                return actor  # full: the loop waits until there is room for the next event
            # Half full: hand over now rather than at the next interval, but at most once per quarter of the
            # inbox: an actor that stays busy would otherwise get a wake-up and a batch of one at every event.
            if actor.enqueued - actor.early_flush_at >= max(1, actor.capacity // 4):
                actor.early_flush_at = actor.enqueued
                self.schedule_flush()
        return None

    def tail(self, flush: bool) -> Callable[[list[Actor] | None], Awaitable[None] | None]:
        """The end of every event of a plan: hand the outbox over when due (always if ``flush``), then make
        the loop wait for the actors in ``full``."""

        def tail(full: list[Actor] | None) -> Awaitable[None] | None:
            if flush or _perf() - self.last_flush >= self.flush_interval:
                self.schedule_flush()
            return self.wait_for_room(full) if full else None

        return tail

    async def wait_for_room(self, actors: list[Actor]) -> None:
        """Block the loop until each full inbox is at most half full again (a hop to the caller's loop).

        Half, not one free slot: an actor slower than the loop would otherwise cost a hop (~100-150 us of CPU) at
        every event once its inbox filled; this way one hop per ``capacity / 2`` events, for the same total wait.
        """
        session = self.session
        assert session is not None
        for actor in actors:
            target = actor.enqueued - actor.capacity // 2
            t0 = _perf()

            async def wait(actor: Actor = actor, target: int = target) -> None:
                self.flush()
                await actor.wait_processed(target)

            await session.call_host(wait)
            actor.stats.loop_wait_time += _perf() - t0
        session.check()

    def schedule_flush(self) -> None:
        """Wake the idle direct actors that have events, and have the caller's loop deliver the outbox soon (one
        wake-up, ~10 us; at most one is pending)."""
        session = self.session
        if session is None:
            return
        self.last_flush = _perf()
        self.wake_idle()
        if self.flush_scheduled or not self.outbox:
            return
        self.flush_scheduled = True
        try:
            session.host_token.run_sync_soon(self.flush)
        except trio.RunFinishedError:  # pragma: no cover
            self.flush_scheduled = False

    def wake_idle(self) -> None:
        """Wake the idle direct actors that have events queued (any thread)."""
        for actor in self.direct:
            if actor.idle and not actor.signalled and actor.inbox:
                actor.ring()

    # -- caller's loop ---------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Deliver the outbox, one batch per actor (and wake idle direct actors that have events). Runs in the
        host loop and never raises."""
        self.flush_scheduled = False
        self.wake_idle()
        try:
            batches: dict[Actor, list[Item]] = {}
            outbox = self.outbox
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
                actor.delivered += len(batch)
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

    def request(self, exc: FitException) -> None:
        """A detached actor asks the loop to cancel; a stop of the fit wins over a pending step/epoch cancel."""
        session = self.session
        if session is None:
            return
        pending = session.control
        if pending is None or (
            isinstance(exc, CancelFittingException) and not isinstance(pending, CancelFittingException)
        ):
            session.control = exc

    def wake_all(self) -> None:
        for actor in self.actors.values():
            actor.lot.unpark_all()

    async def start(self, session: Session) -> None:
        """Spawn one task (and, for blocking actors, one thread) per actor in the session's nursery."""
        for actor in self.actors.values():  # before anything starts: an unpicklable callback fails the fit here
            if isinstance(actor, ProcessActor):
                actor.payload = check_picklable(actor.callback)
        self.session = self.session_at_start = session
        self.seq = 0
        self.outbox.clear()
        self.flush_scheduled = False
        self.drained = False
        nursery = session.nursery
        assert nursery is not None
        for actor in self.actors.values():
            actor.reset()
            actor.direct = actor.can_direct and DIRECT
            if isinstance(actor, ProcessActor):
                actor.worker = self.worker_for(actor.callback)
                actor.begun = False
                actor.capacity = actor.nominal * (1 if actor.worker.ready else STARTUP_INBOX_FACTOR)
            if actor.blocking:
                actor.thread = ActorThread(f"asyncloop-actor-{actor.callback.name}")
                if self.switch_interval is not None and not self.switch_lowered:
                    SwitchInterval.acquire(self.switch_interval)
                    self.switch_lowered = True
            nursery.start_soon(actor.run, session, name=f"asyncloop-actor-{actor.callback.name}")
        self.direct = [a for a in self.actors.values() if a.direct]  # before the worker starts publishing

    async def drain(self) -> None:
        """The worker is done: deliver the rest and wait until every actor handled every event."""
        self.flush()
        for actor in self.actors.values():
            t0 = _perf()
            await actor.wait_processed(actor.enqueued)
            actor.stats.loop_wait_time += _perf() - t0
        self.drained = self.session is not None and self.session.error is None

    def close(self) -> None:
        """Close every inbox and ask every thread to stop (never raises); pending events are dropped."""
        for actor in self.actors.values():
            actor.send.close()
            if actor.direct:
                actor.halt()
            if actor.thread is not None and not isinstance(actor, ProcessActor):  # a process actor's ends its own
                actor.thread.stop()
        self.outbox.clear()
        self.session = None

    def join(self) -> None:
        try:
            for actor in self.actors.values():
                if actor.thread is not None:
                    actor.thread.join()  # quick: every actor task has finished, so each thread is exiting
                    actor.thread = None
        finally:
            if self.switch_lowered:
                self.switch_lowered = False
                SwitchInterval.release()


def _wrapper_snapshot() -> Any:
    from ..callbacks._conditional import ConditionalCallback

    return ConditionalCallback.snapshot


def _sync_only(callback: Any) -> bool:
    """Whether the handlers ``callback`` registered (as its ``handler`` lookup returns them) are all plain
    functions. A custom lookup that returns a coroutine function for an event it did not register is still
    handled in order, through the caller's loop (see ``Actor._consume``)."""
    keys = type(callback.inner)._registry
    return not any((h := callback.handler(e, p)) is not None and h.is_async for e, p in keys)


def shared_resources(callback: Any) -> tuple[Any, ...]:
    """What ``callback`` writes that other callbacks may write too, so that detached actors sharing one of them
    must take their events in turn: a logger's backends (its ``_shared()``, seen through wrappers); nothing for
    any other callback."""
    shared = getattr(callback.inner, "_shared", None)
    return tuple(shared()) if shared is not None else ()


def _groups(actors: Iterable[Actor]) -> list[list[Actor]]:
    """The actors that share a resource (by identity), transitively, as groups of two or more, in the callbacks'
    order."""
    actors = list(actors)
    sharing = nx.Graph()
    sharing.add_nodes_from(range(len(actors)))
    owner: dict[int, int] = {}
    for i, actor in enumerate(actors):
        for resource in shared_resources(actor.callback):
            sharing.add_edge(i, owner.setdefault(id(resource), i))
    return [[actors[i] for i in sorted(c)] for c in nx.connected_components(sharing) if len(c) > 1]


def placement(callback: Any) -> bool | str:
    """A callback's ``detached`` setting, checked: ``False``, ``True`` or ``"process"``."""
    detached = callback.detached
    if detached is True or detached is False or detached == "process":
        return detached
    raise ValueError(f'{callback.name}.detached must be False, True or "process", got {detached!r}')


def _stop_workers(workers: dict[int, tuple[Any, ProcessWorker]]) -> None:
    for _, worker in workers.values():
        worker.stop()
    workers.clear()
