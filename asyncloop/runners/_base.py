"""What every runner shares: compiled per-event plans, handler invocation, statistics (private)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import networkx as nx

from .._callback import Callback, Handler
from ..events import Event
from .._exceptions import FitException
from .._graph import CallbackInfo, analyse, linear_order
from ..phases import Phase
from .._views import Protected

if TYPE_CHECKING:
    from .._session import Session
    from .._learner import Learner

__all__ = ["Runner", "ActorStatistics"]

_perf = time.perf_counter


def _builtin_dispatches() -> tuple[tuple[type[Event], type[Phase]], ...]:
    from ..events import BackwardBegin, BackwardEnd, EpochBegin, EpochEnd, FitBegin, FitEnd, LossBegin, StepBegin, StepEnd
    from ..phases import FitPhase, TrainingPhase, ValidationPhase

    both = (EpochBegin, EpochEnd, StepBegin, LossBegin, StepEnd)
    return (
        *((e, FitPhase) for e in (FitBegin, FitEnd)),
        *((e, p) for e in both for p in (TrainingPhase, ValidationPhase)),
        *((e, TrainingPhase) for e in (BackwardBegin, BackwardEnd)),
    )


#: The (event, phase) pairs the built-in loop dispatches: handler lookups for them are checked at compile time.
_BUILTIN_DISPATCHES = _builtin_dispatches()


@dataclass
class ActorStatistics:
    """What one callback cost during a fit.

    * ``events``: events handled; ``handler_time``/``max_handler_time``: seconds spent in its handlers;
    * ``loop_wait_time``: seconds the training loop waited for this actor (a full inbox or the final drain);
    * ``peak_inbox``: most events queued for it at once; ``peak_lag``: most events it trailed the loop by;
    * ``coalesced``: events superseded under the ``"latest"`` inbox policy (counted, never silent).

    The last four are zero for awaited callbacks, which never lag.
    """

    name: str
    detached: bool = False
    events: int = 0
    handler_time: float = 0.0
    max_handler_time: float = 0.0
    loop_wait_time: float = 0.0
    peak_inbox: int = 0
    peak_lag: int = 0
    coalesced: int = 0

    def record(self, seconds: float) -> None:
        self.events += 1
        self.handler_time += seconds
        if seconds > self.max_handler_time:
            self.max_handler_time = seconds

    @property
    def mean_handler_time(self) -> float:
        return self.handler_time / self.events if self.events else 0.0


class _Step:
    """One handler call in a plan (slotted: read on the hot path)."""

    __slots__ = ("info", "callback", "fn", "is_async", "accept", "view", "stats", "extra")

    def __init__(self, info: CallbackInfo, handler: Handler, view: Any, stats: ActorStatistics) -> None:
        self.info = info
        self.callback = info.callback
        self.fn = handler.fn
        self.is_async = handler.is_async
        self.accept = handler.accept
        self.view = view
        self.stats = stats
        self.extra: Any = None


#: A compiled plan: ``run(event, phase)`` handles the event and returns ``None`` when it finished
#: synchronously, or an awaitable for the part that must wait (async handlers, a full inbox).
Plan = Callable[[Event, Phase], Optional[Awaitable[None]]]


def call_sync(step: _Step, event: Event, phase: Phase) -> None:
    """Run one sync handler: filter, time, annotate errors."""
    accept = step.accept
    if accept is not None and not accept(event, phase):
        return
    t0 = _perf()
    try:
        step.fn(event, phase, step.view)
    except BaseException as exc:
        annotate(exc, step.callback, event, phase)
        raise
    finally:
        dt = _perf() - t0
        stats = step.stats
        stats.events += 1
        stats.handler_time += dt
        if dt > stats.max_handler_time:
            stats.max_handler_time = dt


def sync_plan(steps: Sequence[_Step]) -> Callable[[Event, Phase], None]:
    """A plan running sync handlers one after another: ``call_sync`` inlined (one call per handler less).

    Each handler's time is measured from the end of the previous one (one clock read per handler).
    """
    steps = tuple(steps)
    if len(steps) == 1:
        step = steps[0]
        fn, view, stats, accept, callback = step.fn, step.view, step.stats, step.accept, step.callback

        def run_one(event: Event, phase: Phase) -> None:
            if accept is not None and not accept(event, phase):
                return
            t0 = _perf()
            try:
                fn(event, phase, view)
            except BaseException as exc:
                annotate(exc, callback, event, phase)
                raise
            finally:
                dt = _perf() - t0
                stats.events += 1
                stats.handler_time += dt
                if dt > stats.max_handler_time:
                    stats.max_handler_time = dt

        return run_one

    def run(event: Event, phase: Phase) -> None:
        t0 = _perf()
        for step in steps:
            accept = step.accept
            if accept is not None and not accept(event, phase):
                continue
            try:
                step.fn(event, phase, step.view)
            except BaseException as exc:
                annotate(exc, step.callback, event, phase)
                raise
            finally:
                t1 = _perf()
                dt = t1 - t0
                t0 = t1
                stats = step.stats
                stats.events += 1
                stats.handler_time += dt
                if dt > stats.max_handler_time:
                    stats.max_handler_time = dt

    return run


async def call_async(step: _Step, event: Event, phase: Phase) -> None:
    """Run one handler that may be async: filter, time, annotate errors."""
    if not step.is_async:
        call_sync(step, event, phase)
        return
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


class Runner:
    """Base class of the callback runners. A runner belongs to one learner.

    Plans (which handler runs, in which order, for one event type and phase type) are compiled once per
    callback set and cached; the hot path is a dict lookup and a loop over the plan.
    """

    def __init__(self) -> None:
        self._learner: Learner | None = None
        self._infos: list[CallbackInfo] = []
        self._graph: nx.DiGraph = nx.DiGraph()
        self._order: list[int] = []
        self._plans: dict[tuple[type[Event], type[Phase]], Any] = {}
        self._step_plans: dict[Any, tuple[Any, ...]] = {}
        self._stats: list[ActorStatistics] = []
        self.session: Session | None = None

    # -- set-up ----------------------------------------------------------------------------------------------
    def bind(self, learner: Learner) -> None:
        if self._learner is not None and self._learner is not learner:
            raise ValueError(
                f"this {type(self).__name__} already belongs to another Learner; create one runner per learner"
            )
        self._learner = learner

    def compile(self, callbacks: Sequence[Callback], graph: nx.DiGraph) -> None:
        """Take a new callback set (validated, with its graph). Plans are rebuilt lazily, once per event type."""
        self._infos = analyse(callbacks)
        self._graph = graph
        self._order = linear_order(graph)
        self._plans = {}
        self._step_plans: dict[Any, tuple[Plan | None, ...]] = {}
        self._stats = [ActorStatistics(info.callback.name, self._is_detached(info)) for info in self._infos]
        self._views = [Protected(self._learner, info.access, "Learner") for info in self._infos]
        self._handlers: list[dict[tuple[type[Event], type[Phase]], Handler | None]] = [{} for _ in self._infos]
        for info in self._infos:  # ambiguous handlers fail now, not at their first event mid-fit
            for event, phase in _BUILTIN_DISPATCHES:
                self._handler(info.index, event, phase)

    def _handler(self, index: int, event: type[Event], phase: type[Phase]) -> Handler | None:
        """Callback ``index``'s handler for ``(event, phase)``, asked once per callback set."""
        cache = self._handlers[index]
        key = (event, phase)
        if key not in cache:
            cache[key] = self._infos[index].callback.handler(event, phase)
        return cache[key]

    def _is_detached(self, info: CallbackInfo) -> bool:
        return False

    def _subscribers(self, event: type[Event], phase: type[Phase], order: Sequence[int]) -> list[_Step]:
        steps = []
        for i in order:
            info = self._infos[i]
            handler = self._handler(i, event, phase)
            if handler is not None:
                steps.append(_Step(info, handler, self._views[i], self._stats[i]))
        return steps

    def reset_statistics(self) -> None:
        """Zero every callback's statistics (done at the start of each fit)."""
        for stats in self._stats:
            stats.__init__(stats.name, stats.detached)  # type: ignore[misc]

    def statistics(self) -> list[ActorStatistics]:
        """Per-callback statistics of the last (or current) fit, in callback order."""
        return list(self._stats)

    # -- session hooks (host side) ---------------------------------------------------------------------------
    async def start(self, session: Session) -> None:
        """Called in the host loop before the worker starts (spawn actors here)."""
        self.session = session

    async def drain(self) -> None:
        """Called in the host loop after the worker finished normally: wait until every actor is done."""

    def close(self) -> None:
        """Called in the host loop when the session ends, however it ends. Must not raise."""
        self.session = None

    def join(self) -> None:
        """Called after every actor task has finished: wait for the runner's threads to exit (quick)."""

    # -- dispatch (worker side) ------------------------------------------------------------------------------
    def plan(self, event: type[Event], phase: type[Phase]) -> Plan | None:
        """The compiled plan for ``(event, phase)``, or ``None`` when no callback handles it (cached)."""
        key = (event, phase)
        try:
            return self._plans[key]
        except KeyError:
            plan = self._plans[key] = self._compile_plan(event, phase)
            return plan

    def _compile_plan(self, event: type[Event], phase: type[Phase]) -> Plan | None:
        raise NotImplementedError

    def step_plans(
        self, phase: type[Phase], events: tuple[type[Event], ...], tag: str | None = None
    ) -> tuple[Plan | None, ...]:
        """The plans of several events at once (cached): what a built-in step looks up once per step.

        ``tag``: a name for ``events`` to key the cache with (cheaper to hash than the tuple); the built-in
        steps look ``self._step_plans[(phase, tag)]`` up directly and call this only on a miss.
        """
        key = (phase, events if tag is None else tag)
        try:
            return self._step_plans[key]
        except KeyError:
            plans = self._step_plans[key] = tuple(self.plan(e, phase) for e in events)
            return plans

    async def handle(self, event: Event, phase: Phase) -> None:
        """Dispatch ``event`` in ``phase`` to every subscribed callback, as this runner's plan says."""
        session = self.session
        if session is not None:
            session.check()
        run = self.plan(event.__class__, phase.__class__)
        if run is not None:
            pending = run(event, phase)
            if pending is not None:
                await pending

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
