"""What every runner shares: the callback set, cached per-event plans, statistics, session hooks (private)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import networkx as nx

from .._callback import Callback, Handler
from .._graph import CallbackInfo, analyse, linear_order
from ..events import Event
from ..phases import Phase
from .._views import Protected
from ._plans import Plan, Step
from ._statistics import ActorStatistics

if TYPE_CHECKING:
    from .._learner import Learner
    from .._session import Session


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
        self._stats: list[ActorStatistics] = []
        self.session: Session | None = None

    # -- set-up ----------------------------------------------------------------------------------------------
    def bind(self, learner: Learner) -> None:
        if self._learner is not None and self._learner is not learner:
            raise ValueError(
                f"this {type(self).__name__} already belongs to another Learner; create one runner per learner"
            )
        self._learner = learner

    def unbind(self) -> None:
        """Release the learner (it failed to build, or took another runner): the runner may serve another."""
        self._learner = None

    def compile(self, callbacks: Sequence[Callback], graph: nx.DiGraph) -> None:
        """Take a new callback set (validated, with its graph). Plans are rebuilt lazily, once per event type."""
        self._infos = analyse(callbacks)
        self._graph = graph
        self._order = linear_order(graph)
        self._plans = {}
        self._stats = [ActorStatistics(info.callback.name, self._is_detached(info)) for info in self._infos]
        # asyncloop's own per-step callbacks get the learner itself (their access is fixed; see _takes_learner).
        self._views = [
            self._learner if info.callback._takes_learner() else Protected(self._learner, info.access, "Learner")
            for info in self._infos
        ]
        # The capture hook's live result for callbacks that shape it; the others get the cached view as is.
        self._hooks = [
            None if type(info.callback).snapshot is Callback.snapshot else info.callback.snapshot
            for info in self._infos
        ]
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

    def _steps(self, event: type[Event], phase: type[Phase], actors: dict[int, Any] | None = None) -> list[Step]:
        """The handlers of ``(event, phase)`` in the linear order; callbacks in ``actors`` are detached."""
        steps = []
        for i in self._order:
            handler = self._handler(i, event, phase)
            if handler is not None:
                actor = actors.get(i) if actors else None
                step = Step(self._infos[i], handler, self._views[i], self._stats[i], actor=actor,
                            hook=self._hooks[i], learner=self._learner)
                steps.append(step)
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
