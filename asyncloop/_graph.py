"""The callback graph: which callback must handle an event before which.

Edges ``a -> b`` ("a runs before b") come from three sources, in this order of authority:

1. ``run_after``: every callback that is an instance of a type in ``b.run_after`` runs before ``b``;
2. conflict resolutions: for two callbacks whose ``Write()`` paths overlap (one path a prefix of the other),
   ``resolve_conflict`` is asked in both orders and the first answer other than ``NotDefined`` counts:
   ``RunFirst(x)`` orders them, ``NoConflict()`` leaves them unordered, ``NotDefined()``/``Unresolvable()`` are
   errors unless the pair is already ordered by (1);
3. writer before reader: when ``a`` writes a path ``b`` reads, ``a -> b`` -- unless a resolution says
   ``RunFirst(b)``, or (1)/(2) already order ``b`` before ``a``.

A read of a ``cbstate`` key that no callback of the set writes is a :class:`MissingStateError` (unless the
reader lists the key in ``optional_reads``, or the key is already in the learner's ``cbstate``). A cycle is an
error naming the cycle and why each edge exists. Unconstrained callbacks run in reverse
registration order (FluxTraining's depth-first topological sort, which later callbacks rely on).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from ._callback import Callback, ConflictResolution, NotDefined, RunFirst, Unresolvable
from ._exceptions import CallbackCycleError, DetachedWriterError, MissingStateError, WriteConflictError
from ._access import Read, Write, accesses, validate_state_access


@dataclass(frozen=True)
class CallbackInfo:
    """The validated, static facts about one callback of a set."""

    index: int
    callback: Callback
    access: dict[str, Any]
    reads: tuple[tuple[str, ...], ...]
    writes: tuple[tuple[str, ...], ...]


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    n = min(len(a), len(b))
    return n > 0 and a[:n] == b[:n]


def _fmt(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _resolve(a: Callback, b: Callback) -> ConflictResolution:
    ia, ib = a.inner, b.inner
    for first, second in ((ia, ib), (ib, ia)):
        answer = first.resolve_conflict(second)
        if not isinstance(answer, ConflictResolution):
            raise TypeError(
                f"{first.name}.resolve_conflict({second.name}) returned {answer!r}; return NotDefined(), "
                f"NoConflict(), RunFirst(callback) or Unresolvable()"
            )
        if not isinstance(answer, NotDefined):
            if isinstance(answer, RunFirst):
                if answer.callback in (a, ia):
                    return RunFirst(a)
                if answer.callback in (b, ib):
                    return RunFirst(b)
                raise TypeError(
                    f"{first.name}.resolve_conflict returned RunFirst({answer.callback!r}); "
                    f"RunFirst must name one of the two callbacks"
                )
            return answer
    return NotDefined()


def analyse(callbacks: Sequence[Callback]) -> list[CallbackInfo]:
    """Validate every callback and its ``state_access``; return their static facts."""
    infos = []
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            hint = f"pass an instance: {cb.__name__}()" if isinstance(cb, type) else "subclass asyncloop.Callback"
            raise TypeError(f"callbacks[{i}] is {cb!r}, not a Callback; {hint}")
        access = validate_state_access(cb.state_access, cb.name)
        run_after = cb.run_after
        if not isinstance(run_after, tuple) or not all(isinstance(t, type) for t in run_after):
            raise TypeError(f"{cb.name}.run_after must be a tuple of callback types, got {run_after!r}")
        writes = tuple(accesses(access, Write()))
        if cb.detached and writes:
            raise DetachedWriterError(
                f"{cb.name} sets detached = True but declares Write() access to "
                f"{', '.join(_fmt(p) for p in writes)}; only read-only callbacks may be detached. "
                f"Set detached = False, or split it into a writer and a detached reader.",
                cb,
            )
        optional = cb.optional_reads
        if not isinstance(optional, tuple) or not all(isinstance(k, str) for k in optional):
            raise TypeError(f"{cb.name}.optional_reads must be a tuple of cbstate keys (str), got {optional!r}")
        infos.append(CallbackInfo(i, cb, access, tuple(accesses(access, Read())), writes))
    return infos


#: What to add for the ``cbstate`` keys the library's callbacks write (named in MissingStateError's message).
_WRITER_HINTS = {
    "history": "Recorder()",
    "metrics_step": "Metrics()",
    "metrics_epoch": "Metrics()",
    "hyperparams": "a Scheduler (e.g. Scheduler({LearningRate: schedule}))",
    "trace_history": "Traces(...)",
}


def _check_readers(infos: list[CallbackInfo], provided: Collection[str]) -> None:
    writes = [p for info in infos for p in info.writes]
    for info in infos:
        for path in info.reads:
            if len(path) < 2 or path[0] != "cbstate" or path[1] in provided:
                continue
            if path[1] in info.callback.optional_reads or any(_overlap(path, w) for w in writes):
                continue
            name, key = info.callback.name, path[1]
            hint = _WRITER_HINTS.get(key, "a callback that declares Write() access to it")
            raise MissingStateError(
                f"{name} reads cbstate.{key}, which no callback writes: add {hint}. If you set "
                f"learner.cbstate.{key} yourself before fit, list it in {type(info.callback.inner).__name__}"
                f".optional_reads.",
                info.callback,
            )


def warn_idle(callbacks: Sequence[Callback], stacklevel: int = 2) -> None:
    """Warn for each callback whose class registers no handler (it would never run)."""
    for cb in callbacks:
        cls = type(cb.inner)
        if not cls.handles() and cls.handler is Callback.handler:
            warnings.warn(
                f"{cb.name} registers no handler, so it never runs; decorate its methods with @on(Event, Phase), "
                f"e.g. @on(StepEnd, TrainingPhase) def handle(self, event, phase, learner)",
                UserWarning, stacklevel=stacklevel + 1,
            )


def _conflict_message(a: CallbackInfo, b: CallbackInfo, pa: tuple[str, ...], pb: tuple[str, ...]) -> str:
    return (
        f"Write conflict detected between {a.callback.name} and {b.callback.name}!\n\n"
        f"- {a.callback.name} writes to {_fmt(pa)}\n- {b.callback.name} writes to {_fmt(pb)}\n\n"
    )


def callback_graph(callbacks: Sequence[Callback], *, provided: Collection[str] = ()) -> nx.DiGraph:
    """Build the ordering graph of ``callbacks``: nodes are indices, an edge ``i -> j`` means i runs first.

    Each edge carries a ``reason`` attribute. Raises :class:`WriteConflictError` for unresolved write/write
    conflicts, :class:`CallbackCycleError` for cycles and :class:`MissingStateError` for a read of a ``cbstate``
    key no callback writes (``provided``: keys already set, e.g. the learner's ``cbstate``), all naming the
    callbacks, paths and the fix.
    """
    infos = analyse(callbacks)
    _check_readers(infos, provided)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(infos)))
    explicit = nx.DiGraph()
    explicit.add_nodes_from(range(len(infos)))

    def add(src: int, dst: int, reason: str, is_explicit: bool) -> None:
        if src == dst or graph.has_edge(src, dst):
            return
        graph.add_edge(src, dst, reason=reason)
        if is_explicit:
            explicit.add_edge(src, dst)

    for b in infos:
        for a in infos:
            if a.index != b.index and (
                isinstance(a.callback, b.callback.run_after) or isinstance(a.callback.inner, b.callback.run_after)
            ):
                add(a.index, b.index, f"{b.callback.name}.run_after lists {type(a.callback).__name__}", True)

    def ordered(i: int, j: int) -> bool:
        return nx.has_path(explicit, i, j) or nx.has_path(explicit, j, i)

    for a in infos:
        for b in infos[a.index + 1 :]:
            pair = next(((pa, pb) for pa in a.writes for pb in b.writes if _overlap(pa, pb)), None)
            if pair is None:
                continue
            answer = _resolve(a.callback, b.callback)
            if isinstance(answer, RunFirst):
                first, second = (a, b) if answer.callback is a.callback else (b, a)
                add(first.index, second.index, f"{first.callback.name} resolves its write conflict with "
                    f"{second.callback.name} by running first", True)
            elif isinstance(answer, Unresolvable):
                raise WriteConflictError(
                    _conflict_message(a, b, *pair) + "Both callbacks cannot be used together, please remove one.",
                    a.callback, b.callback,
                )
            elif isinstance(answer, NotDefined) and not ordered(a.index, b.index):
                if _is_metrics(a.callback) and _is_metrics(b.callback):
                    raise WriteConflictError(
                        _conflict_message(a, b, *pair)
                        + "Only one Metrics callback can record metrics: merge them into one Metrics(...) holding "
                        "all the metrics, e.g. Metrics(accuracy, f1) instead of Metrics(accuracy) and Metrics(f1). "
                        "With the default callbacks, passing your Metrics(...) replaces the default one.",
                        a.callback, b.callback,
                    )
                raise WriteConflictError(
                    _conflict_message(a, b, *pair)
                    + f"To resolve this, implement resolve_conflict on {a.callback.name} or "
                    f"{b.callback.name}, returning RunFirst(callback), NoConflict() or Unresolvable(), "
                    f"or order them with run_after.\n\nSee also Callback.resolve_conflict and ConflictResolution.",
                    a.callback, b.callback,
                )

    implicit: list[tuple[int, int, str]] = []
    for w in infos:
        for r in infos:
            if w.index == r.index:
                continue
            pair = next(((pw, pr) for pw in w.writes for pr in r.reads if _overlap(pw, pr)), None)
            if pair is None:
                continue
            answer = _resolve(w.callback, r.callback)
            if isinstance(answer, RunFirst) and answer.callback is r.callback:
                add(r.index, w.index, f"{r.callback.name} resolves its conflict with {w.callback.name} "
                    f"by running first", True)
            else:
                implicit.append((w.index, r.index, f"{w.callback.name} writes {_fmt(pair[0])}, which "
                                 f"{r.callback.name} reads"))
    for src, dst, reason in implicit:
        if not nx.has_path(explicit, dst, src):
            add(src, dst, reason, False)

    _check_cycles(graph, infos)
    return graph


def _check_cycles(graph: nx.DiGraph, infos: list[CallbackInfo]) -> None:
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    names = [infos[u].callback.name for u, _ in cycle] + [infos[cycle[0][0]].callback.name]
    reasons = "\n".join(
        f"- {infos[u].callback.name} -> {infos[v].callback.name}: {graph.edges[u, v]['reason']}" for u, v in cycle
    )
    raise CallbackCycleError(
        f"The callback ordering has a cycle: {' -> '.join(names)}.\n\n{reasons}\n\n"
        f"To break it, have one pair resolve its conflict with resolve_conflict returning RunFirst(callback), "
        f"or remove a run_after entry.",
        *(infos[u].callback for u, _ in cycle),
    )


def linear_order(graph: nx.DiGraph) -> list[int]:
    """A topological order that puts unconstrained callbacks in reverse registration order.

    Depth-first over the nodes in registration order, prepending each node when it finishes (FluxTraining's
    ``topological_sort_by_dfs``); successors are visited in index order.
    """
    order: list[int] = []
    seen: set[int] = set()

    def visit(node: int) -> None:
        seen.add(node)
        for nxt in sorted(graph.successors(node)):
            if nxt not in seen:
                visit(nxt)
        order.append(node)

    for node in sorted(graph.nodes):
        if node not in seen:
            visit(node)
    order.reverse()
    return order


def _is_metrics(cb: Any) -> bool:
    from .callbacks._metrics import Metrics

    return isinstance(cb.inner, Metrics)
