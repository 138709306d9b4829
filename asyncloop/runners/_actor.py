"""ActorRunner: every callback is an actor; the graph decides what runs concurrently; observers never stall.

Awaited actors (the default) handle an event on the training thread, layer by layer: callbacks with no path
between them in the callback graph form a layer; a layer's sync handlers run one after another (in the linear
order), its async handlers run concurrently as trio tasks, and the next layer starts when the layer is done. The
event is complete when all awaited handlers are.

Detached actors (``detached = True``, read-only callbacks only) receive, at their turn in the event's order, a
snapshot of exactly the state they declared, and handle it later, on their own thread (or worker process) or in
the caller's trio loop:

* publishing costs the training thread a snapshot and a ``deque.append``;
* *direct* actors (sync handlers only on a thread, or a process actor; no ``run_after`` path to or from another
  detached actor, no backend shared with one) read their inbox on their own thread: a busy one takes each event
  as it comes, an idle one is woken (one lock release) once ~1 ms of its work is queued, at its first event, when
  its inbox is half full, every ``flush_interval`` seconds and at every epoch/fit boundary;
* for the other actors, when ``flush_interval`` seconds passed since the last hand-off (or an inbox is half
  full, an idle actor has 10 ms of work queued, and at every epoch/fit boundary) the loop wakes the caller's
  event loop, which delivers the outbox as one batch per actor. Latency is bounded by ``flush_interval`` or the
  time between two events, whichever is longer;
* each actor sees its events in order; a ``run_after`` path between two detached actors holds per event;
  detached loggers that share a backend instance handle their events one at a time, in the loop's order
  (through the caller's loop);
* sync handlers run on the actor's own thread (the thread lives for the fit), async ones as the actor's task;
  set ``blocking = False`` on a callback whose sync handlers are trivial to keep them on the event loop;
* inboxes are bounded (``inbox_size``, default 1024 events): a full inbox makes the loop wait for the actor at
  the end of the event; nothing is dropped;
* when ``fit`` returns, every detached actor has handled every event.

Errors: an error in any actor ends the fit with that error (with a note naming the callback and event). A
``CancelFittingException`` from a detached actor stops the fit at the loop's next event boundary (a
``CancelEpochException`` at the next event inside an epoch, a ``CancelStepException`` inside a step).

This module wires the two halves: plans (``_plans``: layers, what is awaited, concurrent or published) and
delivery (``_delivery``: mailboxes, outbox, flushes, back-pressure, actor threads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import networkx as nx

from .._callback import Callback
from .._graph import CallbackInfo
from ..events import Event
from ..phases import Phase
from ._base import Runner
from ._delivery import FLUSH_EVENTS, Actor, Delivery
from ._plans import Layer, Plan, build_plan

if TYPE_CHECKING:
    from .._session import Session


class ActorRunner(Runner):
    """Run callbacks as actors: concurrent by graph layer, with detached observers that never stall training.

    Args:
        inbox_size: default bound of a detached actor's inbox, in events (a callback's ``inbox_size`` attribute
            overrides it). A full inbox makes the training loop wait.
        flush_interval: an idle detached actor with events queued is woken (or handed them through the
            caller's event loop) at least this often (seconds), and at every epoch and fit boundary. Each wake-up
            competes with the training thread for the GIL: smaller is fresher, larger is cheaper. An idle actor
            with 1 ms of work queued (10 ms for one delivered through the caller's loop; by its average handler
            time) gets it at once, whatever the interval; a busy direct actor needs no wake-up.
        cancel_grace: when a fit is cancelled (or fails) while a detached actor's sync handler is still running
            (a hung upload, a slow write), the fit waits at most this many seconds for it, then abandons the
            actor's thread (it runs on in the background; ``ActorStatistics.abandoned`` and a ``RuntimeWarning``
            say so) and ends. A fit that returns normally always waits for every handler.
        switch_interval: while a fit has detached actors on threads, the interpreter's GIL switch interval
            (``sys.setswitchinterval``, 5 ms by default) is lowered to this many seconds, and put back when the
            fit ends (unless something else changed it meanwhile; overlapping fits share it). A thread waiting
            for the GIL -- an observer waking from a write or a sleep every step -- waits up to that interval
            while the training thread runs Python, so a lower one keeps it from falling behind
            (``bench/switch_interval.py``). Pitfall: it is process-wide, and a shorter interval means more GIL
            hand-offs between CPU-bound threads. ``None``: leave it alone. A lower value already set is kept.

    See the module docstring and docs/actors.md for semantics. For the same seeded run it produces the same
    weights, history and metrics as :class:`LinearRunner`.
    """

    def __init__(
        self,
        *,
        inbox_size: int = 1024,
        flush_interval: float = 0.05,
        cancel_grace: float = 5.0,
        switch_interval: float | None = 0.0005,
    ) -> None:
        super().__init__()
        if isinstance(inbox_size, bool) or not isinstance(inbox_size, int) or inbox_size < 1:
            raise ValueError(f"inbox_size must be an int >= 1, got {inbox_size!r}")
        if not isinstance(flush_interval, (int, float)) or not flush_interval > 0:
            raise ValueError(f"flush_interval must be a number of seconds > 0, got {flush_interval!r}")
        if isinstance(cancel_grace, bool) or not isinstance(cancel_grace, (int, float)) or not cancel_grace >= 0:
            raise ValueError(f"cancel_grace must be a number of seconds >= 0, got {cancel_grace!r}")
        if switch_interval is not None and (
            isinstance(switch_interval, bool) or not isinstance(switch_interval, (int, float))
            or not switch_interval > 0
        ):
            raise ValueError(
                f"switch_interval must be None (leave the interpreter's alone) or a number of seconds > 0, "
                f"got {switch_interval!r}"
            )
        self._delivery = Delivery(
            inbox_size, float(flush_interval), float(cancel_grace),
            None if switch_interval is None else float(switch_interval),
        )

    @property
    def inbox_size(self) -> int:
        return self._delivery.inbox_size

    @property
    def flush_interval(self) -> float:
        return self._delivery.flush_interval

    @property
    def cancel_grace(self) -> float:
        return self._delivery.cancel_grace

    @property
    def switch_interval(self) -> float | None:
        return self._delivery.switch_interval

    @property
    def _actors(self) -> dict[int, Actor]:
        return self._delivery.actors

    def _is_detached(self, info: CallbackInfo) -> bool:
        return bool(info.callback.detached)

    def shutdown(self) -> None:
        """Stop the worker processes of the ``detached = "process"`` callbacks now.

        They are kept between the fits of this runner (a worker's start-up costs seconds) and otherwise stopped
        when their callback leaves the learner, when the runner is garbage-collected, or at interpreter exit. A
        later fit starts fresh ones.
        """
        self._delivery.shutdown()

    def compile(self, callbacks: Sequence[Callback], graph: nx.DiGraph) -> None:
        super().compile(callbacks, graph)
        self._descendants = {n: nx.descendants(graph, n) for n in graph.nodes}
        self._delivery.compile(self._learner, self._infos, self._stats, graph)

    def _compile_plan(self, event: type[Event], phase: type[Phase]) -> Plan | None:
        """Layers are the generations of the event's subgraph: each holds its sync handlers and detached
        publications in linear order (``inline``), then its async handlers (``concurrent``)."""
        steps = self._steps(event, phase, self._delivery.actors)
        flush = issubclass(event, FLUSH_EVENTS)
        if not steps and not (flush and self._delivery.actors):
            return None
        by_index = {s.info.index: s for s in steps}
        dag = nx.DiGraph()
        dag.add_nodes_from(by_index)
        dag.add_edges_from((a, b) for a in by_index for b in by_index if b in self._descendants[a])
        position = {i: k for k, i in enumerate(self._order)}
        layers = []
        for generation in nx.topological_generations(dag):
            layer = sorted((by_index[i] for i in generation), key=lambda s: position[s.info.index])
            inline = tuple(s for s in layer if s.actor is not None or not s.is_async)
            layers.append(Layer(inline, tuple(s for s in layer if s.actor is None and s.is_async)))
        if not self._delivery.actors:
            return build_plan(layers)
        delivery = self._delivery
        return build_plan(layers, delivery.publish, delivery.tail(flush))

    # -- session hooks (host) --------------------------------------------------------------------------------
    async def start(self, session: Session) -> None:
        await super().start(session)
        await self._delivery.start(session)

    async def drain(self) -> None:
        await self._delivery.drain()

    def close(self) -> None:
        self._delivery.close()
        super().close()

    def join(self) -> None:
        self._delivery.join()
