"""Tests for asyncloop._graph: ordering edges, conflict resolution, cycles and the linear order."""

from __future__ import annotations

from typing import Any

import networkx as nx
import pytest
import torch

from asyncloop import (
    Callback,
    CallbackCycleError,
    ConflictResolution,
    DetachedWriterError,
    Learner,
    Metrics,
    MetricsPrinter,
    MissingStateError,
    NoConflict,
    ProgressPrinter,
    Read,
    Recorder,
    RunFirst,
    StepEnd,
    StopOnNaNLoss,
    TrainingPhase,
    Unresolvable,
    Write,
    WriteConflictError,
    callback_graph,
    on,
    test_learner,
)
from asyncloop._graph import analyse, linear_order
from matchers import exact


def order(callbacks: list[Callback]) -> list[str]:
    """The names of ``callbacks`` in the order the linear runner calls them."""
    return [callbacks[i].name for i in linear_order(callback_graph(callbacks))]


class WriterA(Callback):
    state_access = {"cbstate": {"x": Write()}}


class WriterB(Callback):
    state_access = {"cbstate": {"x": Write()}}


def writer(name: str, resolution: Any = None, path: dict[str, Any] | None = None) -> Callback:
    """An instance of a fresh callback class ``name`` writing ``cbstate.x`` and resolving conflicts with ``resolution``.

    ``resolution(self, other)`` returns the ConflictResolution (default NotDefined()).
    """
    attrs: dict[str, Any] = {"state_access": path or {"cbstate": {"x": Write()}}}
    if resolution is not None:
        attrs["resolve_conflict"] = resolution
    return type(name, (Callback,), attrs)()


class TestRunAfter:
    def test_run_after_adds_edge(self) -> None:
        """run_after = (A,) adds an edge from every A to the callback, with the reason on the edge."""

        class A(Callback):
            pass

        class B(Callback):
            run_after = (A,)

        g = callback_graph([B(), A()])
        assert list(g.edges) == [(1, 0)]
        assert g.edges[1, 0]["reason"] == "B.run_after lists A"
        assert order([B(), A()]) == ["A", "B"]

    def test_run_after_matches_subclasses(self) -> None:
        """run_after on a base class orders every callback that is an instance of it."""

        class Base(Callback):
            pass

        class One(Base):
            pass

        class Two(Base):
            pass

        class Last(Callback):
            run_after = (Base,)

        g = callback_graph([Last(), One(), Two()])
        assert set(g.edges) == {(1, 0), (2, 0)}

    def test_run_after_absent_type_is_ignored(self) -> None:
        """A type in run_after that no registered callback has adds nothing and is not an error."""

        class Lonely(Callback):
            run_after = (Recorder,)

        g = callback_graph([Lonely()])
        assert list(g.nodes) == [0]
        assert list(g.edges) == []

    def test_run_after_must_be_a_tuple_of_types(self) -> None:
        """run_after that is not a tuple of classes is rejected."""

        class Bad(Callback):
            run_after = ("Recorder",)  # type: ignore[assignment]

        message = "Bad.run_after must be a tuple of callback types, got ('Recorder',)"
        with pytest.raises(TypeError, match=exact(message)):
            callback_graph([Bad()])


class TestWriteWriteConflicts:
    def test_not_defined_is_an_error_naming_both_callbacks_and_paths(self) -> None:
        """Two callbacks writing the same path with no resolution raise WriteConflictError naming the fix."""
        a, b = WriterA(), WriterB()
        with pytest.raises(
            WriteConflictError,
            match=exact(
                "Write conflict detected between WriterA and WriterB!\n\n"
                "- WriterA writes to cbstate.x\n- WriterB writes to cbstate.x\n\n"
                "To resolve this, implement resolve_conflict on WriterA or WriterB, returning RunFirst(callback), "
                "NoConflict() or Unresolvable(), or order them with run_after.\n\n"
                "See also Callback.resolve_conflict and ConflictResolution."
            ),
        ) as info:
            callback_graph([a, b])
        assert info.value.callbacks == (a, b)

    def test_two_metrics_are_told_to_merge(self) -> None:
        """Two Metrics callbacks get a conflict message saying to merge them into one Metrics(...)."""
        a, b = Metrics(), Metrics()
        with pytest.raises(
            WriteConflictError,
            match=exact(
                "Write conflict detected between Metrics and Metrics!\n\n"
                "- Metrics writes to cbstate.metrics_step\n- Metrics writes to cbstate.metrics_step\n\n"
                "Only one Metrics callback can record metrics: merge them into one Metrics(...) holding all the "
                "metrics, e.g. Metrics(accuracy, f1) instead of Metrics(accuracy) and Metrics(f1). With the default "
                "callbacks, passing your Metrics(...) replaces the default one."
            ),
        ) as info:
            callback_graph([Recorder(), a, b])
        assert info.value.callbacks == (a, b)

    def test_prefix_paths_conflict(self) -> None:
        """A write to a path and a write to one of its sub-paths conflict; the message shows both paths."""
        a = writer("Whole", path={"step": Write()})
        b = writer("Part", path={"step": {"xs": Write()}})
        with pytest.raises(WriteConflictError, match=r"^Write conflict detected between Whole and Part!\n\n"
                           r"- Whole writes to step\n- Part writes to step\.xs\n\n"):
            callback_graph([a, b])

    def test_sibling_paths_do_not_conflict(self) -> None:
        """Writes to different keys under one parent do not conflict."""
        a = writer("H", path={"cbstate": {"history": Write()}})
        b = writer("M", path={"cbstate": {"metrics_step": Write()}})
        assert list(callback_graph([a, b]).edges) == []

    def test_unresolvable_is_an_error(self) -> None:
        """Unresolvable() raises WriteConflictError saying the callbacks cannot be used together."""
        a = writer("A", lambda self, other: Unresolvable())
        b = writer("B")
        with pytest.raises(
            WriteConflictError,
            match=exact(
                "Write conflict detected between A and B!\n\n- A writes to cbstate.x\n- B writes to cbstate.x\n\n"
                "Both callbacks cannot be used together, please remove one."
            ),
        ):
            callback_graph([a, b])

    def test_unresolvable_is_an_error_even_when_ordered(self) -> None:
        """Unresolvable() is an error even when run_after already orders the pair."""
        a = writer("A", lambda self, other: Unresolvable())
        b = writer("B")
        type(b).run_after = (type(a),)
        with pytest.raises(WriteConflictError, match=r"Both callbacks cannot be used together, please remove one\.$"):
            callback_graph([a, b])

    @pytest.mark.parametrize("registered_first", ["A", "B"])
    def test_one_sided_no_conflict_is_enough(self, registered_first: str) -> None:
        """NoConflict() from either callback resolves the conflict, whichever was registered first."""
        a = writer("A", lambda self, other: NoConflict())
        b = writer("B")
        cbs = [a, b] if registered_first == "A" else [b, a]
        g = callback_graph(cbs)
        assert list(g.edges) == []

    def test_run_first_orders_writers(self) -> None:
        """RunFirst(cb) for a write/write conflict adds an edge making cb run first."""
        a = writer("A", lambda self, other: RunFirst(other))
        b = writer("B")
        g = callback_graph([a, b])
        assert list(g.edges) == [(1, 0)]
        assert g.edges[1, 0]["reason"] == "B resolves its write conflict with A by running first"
        assert order([a, b]) == ["B", "A"]

    def test_run_first_self(self) -> None:
        """A callback may answer RunFirst(self) to run before the other writer."""
        a = writer("A")
        b = writer("B", lambda self, other: RunFirst(self))
        assert order([a, b]) == ["B", "A"]

    def test_first_answer_other_than_not_defined_counts(self) -> None:
        """resolve_conflict is asked of the earlier-registered callback first; its answer wins."""
        a = writer("A", lambda self, other: RunFirst(self))
        b = writer("B", lambda self, other: RunFirst(self))
        assert order([a, b]) == ["A", "B"]
        assert order([b, a]) == ["B", "A"]

    def test_run_after_orders_a_not_defined_conflict(self) -> None:
        """A write/write conflict already ordered by run_after needs no resolution."""
        a = writer("A")
        b = writer("B")
        type(b).run_after = (type(a),)
        assert order([b, a]) == ["A", "B"]

    def test_bad_resolution_type(self) -> None:
        """resolve_conflict must return a ConflictResolution."""
        a = writer("A", lambda self, other: "first")
        with pytest.raises(
            TypeError,
            match=exact(
                "A.resolve_conflict(B) returned 'first'; return NotDefined(), NoConflict(), "
                "RunFirst(callback) or Unresolvable()"
            ),
        ):
            callback_graph([a, writer("B")])

    def test_run_first_must_name_one_of_the_pair(self) -> None:
        """RunFirst naming a third callback is rejected."""
        stranger = Recorder()
        a = writer("A", lambda self, other: RunFirst(stranger))
        with pytest.raises(
            TypeError,
            match=exact(
                "A.resolve_conflict returned RunFirst(Recorder()); RunFirst must name one of the two callbacks"
            ),
        ):
            callback_graph([a, writer("B")])

    def test_conflict_raises_at_learner_construction(self) -> None:
        """Learner(...) builds the graph, so a write conflict is raised before any training."""
        with pytest.raises(WriteConflictError):
            Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, callbacks=[WriterA(), WriterB()])

    def test_conflict_raises_at_add_callback_and_keeps_callbacks(self) -> None:
        """add_callback with a conflicting callback raises and leaves the learner's callbacks unchanged."""
        learner = test_learner(WriterA())
        with pytest.raises(WriteConflictError):
            learner.add_callback(WriterB())
        assert [cb.name for cb in learner.callbacks] == ["WriterA"]


class TestWriterReaderEdges:
    def test_writer_runs_before_reader(self) -> None:
        """A callback writing a path runs before one reading it (or a sub-path), with the reason on the edge."""
        w = writer("W", path={"cbstate": {"history": Write()}})
        r = type("R", (Callback,), {"state_access": {"cbstate": {"history": Read()}}})()
        g = callback_graph([r, w])
        assert list(g.edges) == [(1, 0)]
        assert g.edges[1, 0]["reason"] == "W writes cbstate.history, which R reads"
        assert order([r, w]) == ["W", "R"]

    def test_reader_of_parent_path_runs_after_writer(self) -> None:
        """Reading a parent path of a written path orders the reader after the writer."""
        w = writer("W", path={"cbstate": {"history": Write()}})
        r = type("R", (Callback,), {"state_access": {"cbstate": Read()}})()
        assert order([w, r]) == ["W", "R"]

    def test_readers_are_unordered(self) -> None:
        """Two readers of the same path get no edge between them."""
        r1 = type("R1", (Callback,), {"state_access": {"model": Read()}})()
        r2 = type("R2", (Callback,), {"state_access": {"model": Read()}})()
        assert list(callback_graph([r1, r2]).edges) == []

    def test_run_first_reader_flips_the_edge(self) -> None:
        """resolve_conflict returning RunFirst(reader) makes the reader run before the writer."""
        w = writer("W", lambda self, other: RunFirst(other), path={"model": Write()})
        r = type("R", (Callback,), {"state_access": {"model": Read()}})()
        g = callback_graph([w, r])
        assert list(g.edges) == [(1, 0)]
        assert g.edges[1, 0]["reason"] == "R resolves its conflict with W by running first"

    def test_reader_may_ask_to_run_first(self) -> None:
        """resolve_conflict is asked in both orders: the reader answering RunFirst(self) also flips the edge."""
        w = writer("W", path={"model": Write()})
        r = type("R", (Callback,), {"state_access": {"model": Read()},
                                    "resolve_conflict": lambda self, other: RunFirst(self)})()
        assert order([r, w]) == ["R", "W"]
        assert order([w, r]) == ["R", "W"]

    def test_explicit_order_beats_writer_reader_edge(self) -> None:
        """If run_after already orders the reader before the writer, no writer->reader edge (and no cycle) is added."""
        r = type("R", (Callback,), {"state_access": {"model": Read()}})()
        w = writer("W", path={"model": Write()})
        type(w).run_after = (type(r),)
        g = callback_graph([w, r])
        assert list(g.edges) == [(1, 0)]
        assert order([w, r]) == ["R", "W"]


class TestCycles:
    def test_run_after_cycle_names_the_cycle(self) -> None:
        """A run_after cycle raises CallbackCycleError naming the cycle and the reason for each edge."""

        class C(Callback):
            pass

        class D(Callback):
            run_after = (C,)

        C.run_after = (D,)
        c, d = C(), D()
        with pytest.raises(
            CallbackCycleError,
            match=exact(
                "The callback ordering has a cycle: C -> D -> C.\n\n"
                "- C -> D: D.run_after lists C\n- D -> C: C.run_after lists D\n\n"
                "To break it, have one pair resolve its conflict with resolve_conflict returning RunFirst(callback), "
                "or remove a run_after entry."
            ),
        ) as info:
            callback_graph([c, d])
        assert set(info.value.callbacks) == {c, d}

    def test_cycle_raises_at_learner_construction(self) -> None:
        """A cyclic callback set is rejected by Learner(...), not at the first event."""

        class C(Callback):
            pass

        class D(Callback):
            run_after = (C,)

        C.run_after = (D,)
        with pytest.raises(CallbackCycleError):
            test_learner(C(), D())


class ToGPU(Callback):
    """Stands in for FluxTraining's ToDevice: writes the step, reads the optimizer."""

    state_access = {"step": Write(), "optimizer": Read()}


class StepRecorder(Callback):
    """Stands in for FluxTraining's Recorder: writes the history, reads the step."""

    state_access = {"cbstate": {"history": Write()}, "step": Read()}


class Scheduler(Callback):
    """Stands in for FluxTraining's Scheduler: writes the optimizer, reads the history."""

    state_access = {"optimizer": Write(), "cbstate": {"history": Read()}}


class FixedScheduler(Scheduler):
    """The fix of FluxTraining PR #123: the device mover runs first."""

    def resolve_conflict(self, other: Callback) -> ConflictResolution:
        if isinstance(other, ToGPU):
            return RunFirst(other)
        return super().resolve_conflict(other)


class TestRegression122:
    def test_writer_reader_cycle_is_reported(self) -> None:
        """Writer->reader edges alone can form a cycle (FluxTraining #122); it is reported at construction."""
        with pytest.raises(
            CallbackCycleError,
            match=exact(
                "The callback ordering has a cycle: ToGPU -> StepRecorder -> Scheduler -> ToGPU.\n\n"
                "- ToGPU -> StepRecorder: ToGPU writes step, which StepRecorder reads\n"
                "- StepRecorder -> Scheduler: StepRecorder writes cbstate.history, which Scheduler reads\n"
                "- Scheduler -> ToGPU: Scheduler writes optimizer, which ToGPU reads\n\n"
                "To break it, have one pair resolve its conflict with resolve_conflict returning RunFirst(callback), "
                "or remove a run_after entry."
            ),
        ):
            callback_graph([ToGPU(), StepRecorder(), Scheduler()])

    def test_run_first_resolves_the_cycle(self) -> None:
        """resolve_conflict(Scheduler, ToGPU) = RunFirst(ToGPU) breaks the cycle and orders all three."""
        cbs = [ToGPU(), StepRecorder(), FixedScheduler()]
        g = callback_graph(cbs)
        assert nx.is_directed_acyclic_graph(g)
        assert order(cbs) == ["ToGPU", "StepRecorder", "FixedScheduler"]


class TestDetached:
    def test_detached_writer_is_rejected(self) -> None:
        """A detached callback declaring Write() access raises DetachedWriterError naming the paths and fix."""

        class DW(Callback):
            detached = True
            state_access = {"cbstate": {"x": Write()}, "model": Read()}

        cb = DW()
        with pytest.raises(
            DetachedWriterError,
            match=exact(
                "DW sets detached = True but declares Write() access to cbstate.x; only read-only callbacks may be "
                "detached. Set detached = False, or split it into a writer and a detached reader."
            ),
        ) as info:
            callback_graph([cb])
        assert info.value.callbacks == (cb,)

    def test_detached_reader_is_accepted(self) -> None:
        """A detached callback with only Read() access is fine."""

        class DR(Callback):
            detached = True
            state_access = {"model": Read()}

        assert list(callback_graph([DR()]).nodes) == [0]


class TestAnalyse:
    def test_rejects_non_callbacks(self) -> None:
        """Anything that is not a Callback instance is rejected, with a hint for classes."""
        with pytest.raises(TypeError, match=exact("callbacks[0] is 3, not a Callback; subclass asyncloop.Callback")):
            analyse([3])  # type: ignore[list-item]
        with pytest.raises(TypeError, match=exact("callbacks[1] is <class 'asyncloop.Recorder'>, "
                                                  "not a Callback; pass an instance: Recorder()")):
            analyse([Recorder(), Recorder])  # type: ignore[list-item]

    def test_rejects_malformed_state_access(self) -> None:
        """A malformed state_access tree is rejected when the graph is built."""

        class Bad(Callback):
            state_access = {"step": {"loss": Read}}

        message = "Bad.state_access['step']['loss'] is the class Read; use Read() instead"
        with pytest.raises(TypeError, match=exact(message)):
            callback_graph([Bad()])

    def test_infos(self) -> None:
        """analyse returns each callback's index, reads and writes."""
        info = analyse([Recorder(), Metrics()])
        assert [i.index for i in info] == [0, 1]
        assert info[0].writes == (("cbstate", "history"),)
        assert info[1].reads == (("cbstate", "history"), ("step",))
        assert info[1].writes == (("cbstate", "metrics_step"), ("cbstate", "metrics_epoch"))


class TestLinearOrder:
    def test_nodes_are_indices(self) -> None:
        """callback_graph returns a DiGraph whose nodes are the callback indices."""
        g = callback_graph([Callback(), Callback(), Callback()])
        assert isinstance(g, nx.DiGraph)
        assert list(g.nodes) == [0, 1, 2]

    def test_unconstrained_callbacks_run_in_reverse_registration_order(self) -> None:
        """With no edges, the linear order is the reverse of the registration order (FluxTraining's rule)."""
        cbs = [type(f"Cb{i}", (Callback,), {})() for i in range(5)]
        assert order(cbs) == ["Cb4", "Cb3", "Cb2", "Cb1", "Cb0"]

    def test_order_is_topological(self) -> None:
        """Every edge u -> v puts u before v in the linear order."""
        cbs = [ProgressPrinter(), MetricsPrinter(), StopOnNaNLoss(), Recorder(), Metrics()]
        g = callback_graph(cbs)
        position = {node: i for i, node in enumerate(linear_order(g))}
        assert all(position[u] < position[v] for u, v in g.edges)

    def test_fluxtraining_default_order(self) -> None:
        """With FluxTraining's declarations the defaults run Recorder, Metrics, StopOnNaN, MetricsPrinter, Progress."""
        # Section B.4 of the reference: the graph algorithm reproduces FluxTraining's default order.

        class FTRecorder(Recorder):
            state_access = {"cbstate": {"history": Write()}, "step": Read()}

        class FTMetrics(Metrics):
            run_after = (FTRecorder,)

        class FTProgressPrinter(Callback):
            state_access = {"data": Read(), "cbstate": Read()}  # FluxTraining's missing comma widens it to cbstate
            run_after = (FTRecorder,)

        class FTMetricsPrinter(Callback):
            state_access = {"cbstate": {"metrics_epoch": Read(), "history": Read()}}
            run_after = (FTMetrics,)

        class FTStopOnNaNLoss(Callback):
            state_access = {"step": Read()}

        cbs = [FTProgressPrinter(), FTMetricsPrinter(), FTStopOnNaNLoss(), FTRecorder(), FTMetrics()]
        g = callback_graph(cbs)
        assert set(g.edges) == {(3, 0), (3, 1), (3, 4), (4, 0), (4, 1)}
        assert order(cbs) == ["FTRecorder", "FTMetrics", "FTStopOnNaNLoss", "FTMetricsPrinter", "FTProgressPrinter"]

    def test_asyncloop_default_order(self) -> None:
        """asyncloop's defaults run Recorder, Metrics, StopOnNaNLoss, ProgressPrinter, MetricsPrinter."""
        # Unlike B.4 the printers swap: MetricsPrinter also lists ProgressPrinter in run_after, so the metrics table
        # is printed after the epoch's progress bar is closed.
        learner = test_learner(use_default_callbacks=True, n_batches=1)
        names = [cb.name for cb in learner.callbacks]
        assert names == ["ProgressPrinter", "MetricsPrinter", "StopOnNaNLoss", "Recorder", "Metrics"]
        assert [names[i] for i in linear_order(learner.graph)] == [
            "Recorder", "Metrics", "StopOnNaNLoss", "ProgressPrinter", "MetricsPrinter"
        ]


class ReadsBudget(Callback):
    """Reads a cbstate key no library callback writes."""

    state_access = {"cbstate": {"budget": Read()}}

    @on(StepEnd, TrainingPhase)
    def show(self, event: Any, phase: Any, learner: Any) -> None:
        pass


class ReadsBudgetSetByUser(ReadsBudget):
    """The same reader, declaring that the user sets cbstate.budget before fit."""

    optional_reads = ("budget",)


class TestMissingState:
    """Issue #12, item 1: a read of cbstate state that no callback writes fails when the learner is built."""

    def test_metrics_without_recorder(self) -> None:
        """Metrics alone (use_default_callbacks=False) is an error naming Recorder, not an AttributeError mid-fit."""
        with pytest.raises(MissingStateError, match=exact(
                "Metrics reads cbstate.history, which no callback writes: add Recorder(). If you set "
                "learner.cbstate.history yourself before fit, list it in Metrics.optional_reads.")) as info:
            Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, callbacks=[Metrics()],
                    use_default_callbacks=False)
        assert isinstance(info.value.callbacks[0], Metrics)

    def test_custom_reader_of_an_unwritten_key(self) -> None:
        """A custom reader of a key nobody writes gets the generic fix and the escape hatch."""
        with pytest.raises(MissingStateError, match=exact(
                "ReadsBudget reads cbstate.budget, which no callback writes: add a callback that declares Write() "
                "access to it. If you set learner.cbstate.budget yourself before fit, list it in "
                "ReadsBudget.optional_reads.")):
            callback_graph([ReadsBudget()])

    def test_optional_reads_is_the_escape_hatch(self) -> None:
        """A key listed in optional_reads needs no writer; the user sets it before fit."""
        learner = test_learner(ReadsBudgetSetByUser())
        learner.cbstate.budget = 3
        assert learner.callbacks[0].name == "ReadsBudgetSetByUser"

    def test_state_already_in_cbstate_counts(self) -> None:
        """A key the user set in learner.cbstate before adding the reader needs no writer."""
        learner = test_learner()
        learner.cbstate.budget = 3
        learner.add_callback(ReadsBudget())
        assert [cb.name for cb in learner.callbacks] == ["ReadsBudget"]

    def test_default_callbacks_and_library_readers_build(self) -> None:
        """The default set, and ProgressPrinter (which copes without Metrics) with Recorder alone, build."""
        Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss)
        callback_graph([Recorder(), ProgressPrinter()])
