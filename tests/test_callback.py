"""Tests for asyncloop._callback: handler registration with @on, dispatch, conflict resolutions, Callback."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import trio

import asyncloop
from asyncloop import (
    AbstractTrainingPhase,
    AbstractValidationPhase,
    BackwardEnd,
    Callback,
    ConflictResolution,
    EpochEnd,
    Event,
    FitEnd,
    Learner,
    NoConflict,
    NotDefined,
    Phase,
    ProtectedError,
    Read,
    Recorder,
    RunFirst,
    StepBegin,
    StepEnd,
    TrainingPhase,
    Unresolvable,
    ValidationPhase,
    fit,
    on,
    test_learner,
)
from asyncloop._callback import Handler
from asyncloop.phases import FitPhase
from asyncloop.state import Protected
from matchers import exact


class TestOn:
    def test_rejects_non_event(self) -> None:
        """on() needs an Event class; an instance or other object is a TypeError."""
        with pytest.raises(TypeError, match=exact("on() takes an Event class such as StepEnd, got StepEnd()")):
            on(StepEnd())  # type: ignore[arg-type]

    def test_rejects_non_phase(self) -> None:
        """on() needs a Phase class as its second argument."""
        with pytest.raises(
            TypeError, match=exact("on() takes a Phase class such as TrainingPhase, got TrainingPhase()")
        ):
            on(StepEnd, TrainingPhase())  # type: ignore[arg-type]

    def test_rejects_non_callable(self) -> None:
        """@on(...) must decorate a callable."""
        with pytest.raises(TypeError, match=exact("@on(...) decorates a method, got 3")):
            on(StepEnd)(3)  # type: ignore[type-var]

    def test_returns_the_function(self) -> None:
        """@on returns the decorated function itself, so it stays a normal method."""

        def f(self: Any, event: Event, phase: Phase, learner: Any) -> None:
            pass

        assert on(StepEnd)(f) is f

    def test_stacked_registrations(self) -> None:
        """Stacking @on registers one method for several (event, phase) pairs."""

        class Cb(Callback):
            @on(StepEnd, TrainingPhase)
            @on(EpochEnd, ValidationPhase)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        assert set(Cb.handles()) == {(StepEnd, TrainingPhase), (EpochEnd, ValidationPhase)}
        assert Cb().handler(StepEnd, TrainingPhase) is not None
        assert Cb().handler(EpochEnd, ValidationPhase) is not None
        assert Cb().handler(StepEnd, ValidationPhase) is None

    def test_default_phase_is_any_phase(self) -> None:
        """@on(Event) without a phase handles that event in every phase, including FitPhase."""

        class Cb(Callback):
            @on(FitEnd)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        assert Cb.handles() == ((FitEnd, Phase),)
        assert Cb().handler(FitEnd, FitPhase) is not None


class TestDispatch:
    def test_most_specific_phase_wins(self) -> None:
        """For one (event, phase) exactly one handler runs: the one registered on the most specific phase."""

        class Cb(Callback):
            @on(StepEnd)
            def any_phase(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

            @on(StepEnd, AbstractTrainingPhase)
            def training(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        cb = Cb()
        assert cb.handler(StepEnd, TrainingPhase).fn == cb.training
        assert cb.handler(StepEnd, ValidationPhase).fn == cb.any_phase

    def test_most_specific_event_wins(self) -> None:
        """A handler registered on an event subclass beats one registered on its base class."""

        class Cb(Callback):
            @on(Event)
            def every(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

            @on(StepEnd)
            def step_end(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        cb = Cb()
        assert cb.handler(StepEnd, TrainingPhase).fn == cb.step_end
        assert cb.handler(StepBegin, TrainingPhase).fn == cb.every

    def test_no_match_is_none(self) -> None:
        """An event the callback does not handle has no handler."""

        class Cb(Callback):
            @on(StepEnd, AbstractTrainingPhase)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        assert Cb().handler(StepBegin, TrainingPhase) is None
        assert Cb().handler(StepEnd, ValidationPhase) is None
        assert Callback().handler(StepEnd, TrainingPhase) is None

    def test_ambiguous_handlers_raise(self) -> None:
        """Two matching handlers where neither is more specific is an error naming both and the fix."""

        class Amb(Callback):
            @on(StepEnd, AbstractTrainingPhase)
            def a(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

            @on(Event, TrainingPhase)
            def b(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        with pytest.raises(
            TypeError,
            match=exact(
                "Amb has ambiguous handlers for StepEnd in TrainingPhase: a (StepEnd, AbstractTrainingPhase), "
                "b (Event, TrainingPhase); add a handler registered with @on(StepEnd, TrainingPhase) to decide"
            ),
        ):
            Amb().handler(StepEnd, TrainingPhase)
        assert Amb().handler(StepBegin, TrainingPhase).fn.__name__ == "b"

    def test_ambiguity_resolved_by_more_specific_handler(self) -> None:
        """Adding a handler on the exact (event, phase) resolves an ambiguity."""

        class Resolved(Callback):
            @on(StepEnd, AbstractTrainingPhase)
            def a(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

            @on(Event, TrainingPhase)
            def b(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

            @on(StepEnd, TrainingPhase)
            def c(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        assert Resolved().handler(StepEnd, TrainingPhase).fn.__name__ == "c"

    def test_ambiguous_handlers_fail_at_construction(self) -> None:
        """Ambiguous handlers for an (event, phase) the loop dispatches are rejected when the learner is built."""

        class Amb(Callback):
            @on(StepEnd, AbstractTrainingPhase)
            def a(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

            @on(Event, TrainingPhase)
            def b(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        with pytest.raises(TypeError, match=r"^Amb has ambiguous handlers for StepEnd in TrainingPhase: "):
            test_learner(Amb(), n_batches=1)

    def test_subclass_inherits_and_overrides(self) -> None:
        """Handlers are inherited; a subclass overriding the method (without @on) replaces the body."""

        class Base(Callback):
            @on(StepEnd)
            def h(self, event: Event, phase: Phase, learner: Any) -> str:
                return "base"

        class Child(Base):
            def h(self, event: Event, phase: Phase, learner: Any) -> str:
                return "child"

        assert Child.handles() == ((StepEnd, Phase),)
        assert Child().handler(StepEnd, TrainingPhase).fn(None, None, None) == "child"
        assert Base().handler(StepEnd, TrainingPhase).fn(None, None, None) == "base"

    def test_subclass_registration_replaces_base_registration(self) -> None:
        """A subclass method registered on the same (event, phase) as a base method replaces it."""

        class Base(Callback):
            @on(StepEnd)
            def base(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        class Child(Base):
            @on(StepEnd)
            def child(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        assert Child().handler(StepEnd, TrainingPhase).fn.__name__ == "child"

    def test_sync_and_async_handlers(self) -> None:
        """handler() reports whether the handler is a coroutine function."""

        class Cb(Callback):
            @on(StepBegin)
            def sync(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

            @on(StepEnd)
            async def asynchronous(self, event: Event, phase: Phase, learner: Any) -> None:
                pass

        cb = Cb()
        assert cb.handler(StepBegin, TrainingPhase) == Handler(cb.sync, False)
        assert cb.handler(StepEnd, TrainingPhase) == Handler(cb.asynchronous, True)


class TestDispatchInFit:
    def test_async_handler_runs_and_may_await(self) -> None:
        """An async handler is awaited at its event and may use trio inside the fit."""

        class Async(Callback):
            def __init__(self) -> None:
                self.calls = 0

            @on(StepEnd, AbstractTrainingPhase)
            async def h(self, event: Event, phase: Phase, learner: Any) -> None:
                await trio.sleep(0)
                self.calls += 1

        cb = Async()
        trio.run(fit, test_learner(cb, n_batches=3), 2)
        assert cb.calls == 6

    def test_callback_is_only_called_for_events_it_handles(self) -> None:
        """A callback subscribed to one (event, phase) pair is never called for any other event."""

        class OnlyValidationEpochEnd(Callback):
            def __init__(self) -> None:
                self.seen: list[tuple[Event, Phase]] = []

            @on(EpochEnd, AbstractValidationPhase)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                self.seen.append((event, phase))

        cb = OnlyValidationEpochEnd()
        result = trio.run(fit, test_learner(cb, n_batches=2), 2)
        assert cb.seen == [(EpochEnd(), ValidationPhase())] * 2
        assert [s.events for s in result.statistics] == [2]

    def test_fit_level_events_do_not_reach_training_handlers(self) -> None:
        """FitBegin/FitEnd reach @on(FitEnd) handlers but not handlers restricted to training phases."""

        class Cb(Callback):
            def __init__(self) -> None:
                self.any_phase: list[Phase] = []
                self.training: list[Phase] = []

            @on(FitEnd)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                self.any_phase.append(phase)

            @on(Event, AbstractTrainingPhase)
            def t(self, event: Event, phase: Phase, learner: Any) -> None:
                self.training.append(type(event))

        cb = Cb()
        trio.run(fit, test_learner(cb, n_batches=1), 1)
        assert cb.any_phase == [FitPhase()]
        assert FitEnd not in cb.training
        assert asyncloop.FitBegin not in cb.training

    def test_handler_receives_protected_learner(self) -> None:
        """Handlers get a protected view: declared state is readable, anything else raises ProtectedError."""

        class Peek(Callback):
            state_access = {"step": {"loss": Read()}}

            def __init__(self) -> None:
                self.losses: list[float] = []

            @on(BackwardEnd, AbstractTrainingPhase)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                assert isinstance(learner, Protected)
                self.losses.append(learner.step.loss.item())
                learner.model

        cb = Peek()
        note = "asyncloop: raised by callback Peek while handling BackwardEnd() in TrainingPhase()"
        # pytest matches against the message followed by the exception's notes
        with pytest.raises(ProtectedError, match=exact(f"Read access to Learner.model disallowed.\n{note}")) as info:
            trio.run(fit, test_learner(cb, n_batches=1), 1)
        assert len(cb.losses) == 1
        assert info.value.__notes__ == [note]

    def test_builtin_per_step_callbacks_get_the_learner_itself(self) -> None:
        """Recorder, StopOnNaNLoss and Metrics (loss only), exactly as shipped, get the Learner itself at every
        event (no view: their access is fixed), and a fit with them records what it did before."""
        learner = test_learner(n_batches=3, use_default_callbacks=True)
        for cb in learner.callbacks:
            if type(cb) in (Recorder, asyncloop.Metrics, asyncloop.StopOnNaNLoss):
                assert cb._takes_learner()
        # The runner decided at compile time: the handlers receive the learner object itself.
        views = learner.runner._views
        kinds = {type(cb).__name__: type(views[i]) for i, cb in enumerate(learner.callbacks)}
        assert kinds["Recorder"] is Learner and kinds["Metrics"] is Learner and kinds["StopOnNaNLoss"] is Learner
        assert issubclass(kinds["ProgressPrinter"], Protected)
        trio.run(fit, learner, 2)
        history = learner.cbstate.history[TrainingPhase()]
        assert (history.steps, history.epochs) == (6, 2)
        assert learner.cbstate.metrics_step[TrainingPhase()].indices("Loss") == [1, 2, 3, 4, 5, 6]

    def test_subclass_of_a_builtin_gets_a_protected_view(self) -> None:
        """A subclass of a built-in may add handlers reading undeclared state: it gets a view like any callback,
        so the read raises ProtectedError."""

        class NosyRecorder(Recorder):
            @on(StepEnd)
            def step_end(self, event: Event, phase: Phase, learner: Any) -> None:
                learner.model

        cb = NosyRecorder()
        assert not cb._takes_learner()
        with pytest.raises(ProtectedError, match="Read access to Learner.model disallowed."):
            trio.run(fit, test_learner(cb, n_batches=1), 1)

    def test_builtin_with_a_handler_replaced_on_the_instance_gets_a_protected_view(self) -> None:
        """A handler set as an instance attribute of a built-in replaces the shipped one: a view again."""

        def peek(event: Event, phase: Phase, learner: Any) -> None:
            learner.model

        cb = Recorder()
        cb.step_end = peek  # type: ignore[method-assign]
        assert not cb._takes_learner()
        with pytest.raises(ProtectedError, match="Read access to Learner.model disallowed."):
            trio.run(fit, test_learner(cb, n_batches=1), 1)

    def test_init_receives_the_unprotected_learner(self) -> None:
        """init(learner) is called once at construction with the Learner itself."""

        class Init(Callback):
            def __init__(self) -> None:
                self.learners: list[Any] = []

            def init(self, learner: Any) -> None:
                self.learners.append(learner)

        cb = Init()
        learner = test_learner(cb)
        assert cb.learners == [learner]


class TestConflictResolution:
    def test_resolutions_are_values(self) -> None:
        """NotDefined(), NoConflict() and Unresolvable() are equal to instances of their own type only."""
        assert NotDefined() == NotDefined()
        assert NoConflict() == NoConflict()
        assert Unresolvable() != NoConflict()
        assert hash(NoConflict()) == hash(NoConflict())
        assert all(isinstance(r, ConflictResolution) for r in (NotDefined(), NoConflict(), Unresolvable()))

    def test_run_first_compares_by_callback_identity(self) -> None:
        """RunFirst(cb) equals RunFirst of the same callback object, not of an equal-looking one."""
        a, b = Recorder(), Recorder()
        assert RunFirst(a) == RunFirst(a)
        assert RunFirst(a) != RunFirst(b)
        assert hash(RunFirst(a)) == hash(RunFirst(a))
        assert RunFirst(a).callback is a
        assert repr(RunFirst(a)) == "RunFirst(Recorder())"

    def test_default_resolve_conflict_is_not_defined(self) -> None:
        """Callback.resolve_conflict returns NotDefined() by default."""
        assert Callback().resolve_conflict(Recorder()) == NotDefined()

    def test_reprs(self) -> None:
        """Resolutions repr as constructor calls."""
        assert repr(NoConflict()) == "NoConflict()"
        assert repr(Unresolvable()) == "Unresolvable()"
        assert repr(NotDefined()) == "NotDefined()"


class TestCallbackBase:
    def test_defaults(self) -> None:
        """A bare Callback accesses nothing, runs after nothing, is not detached and handles nothing."""
        cb = Callback()
        assert cb.state_access == {}
        assert cb.run_after == ()
        assert cb.detached is False
        assert Callback.handles() == ()

    def test_name_and_repr(self) -> None:
        """name is the class name; repr is 'Name()'."""
        assert Recorder().name == "Recorder"
        assert repr(Recorder()) == "Recorder()"

    def test_inner_of_an_ordinary_callback_is_itself(self) -> None:
        """Callback.inner is the callback itself when it wraps nothing."""
        cb = Recorder()
        assert cb.inner is cb
        assert Callback().inner.__class__ is Callback

    def test_default_snapshot_copies_declared_state_behind_protection(self) -> None:
        """Callback.snapshot returns a protected copy of exactly the declared state."""

        class Reader(Callback):
            state_access = {"model": Read()}

        learner = test_learner()
        view = Reader().snapshot(StepEnd(), TrainingPhase(), learner)
        assert isinstance(view, Protected)
        assert view.model is not learner.model
        assert torch.equal(view.model.c, learner.model.c)
        with pytest.raises(ProtectedError, match=exact("Read access to Learner.step disallowed.")):
            view.step

    def test_learner_requires_instances(self) -> None:
        """A Callback subclass (not instance) passed to a Learner is rejected with the fix."""
        with pytest.raises(TypeError, match=exact("callbacks[0] is the class Recorder; pass an instance: Recorder()")):
            Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, callbacks=[Recorder])  # type: ignore


class TestHandlerChecks:
    """Issue #12, item 2: handler signatures are checked when the class is defined; idle callbacks warn."""

    def test_wrong_signature_is_an_error(self) -> None:
        """A handler without (self, event, phase, learner) is a TypeError naming the expected signature."""
        with pytest.raises(TypeError, match=exact(
                "Show.show is registered with @on but takes (self, learner); a handler takes "
                "(self, event, phase, learner): define show(self, event, phase, learner)")):

            class Show(Callback):
                @on(StepEnd)
                def show(self, learner: Any) -> None:
                    pass

    def test_foreign_hook_names_warn(self) -> None:
        """Methods named like another framework's hooks, without @on, warn with the asyncloop way."""
        with pytest.warns(UserWarning, match=exact(
                "LightningStyle defines after_batch, on_train_batch_end, which asyncloop never calls (a hook name "
                "from another framework); register handlers with @on(Event, Phase), e.g. "
                "@on(StepEnd, TrainingPhase) def after_batch(self, event, phase, learner)")):

            class LightningStyle(Callback):
                def on_train_batch_end(self, *args: Any) -> None:
                    pass

                def after_batch(self) -> None:
                    pass

    def test_no_handler_warns_when_added(self) -> None:
        """A callback that registers no handler at all warns when added to a learner."""

        class Idle(Callback):
            pass

        with pytest.warns(UserWarning, match=exact(
                "Idle registers no handler, so it never runs; decorate its methods with @on(Event, Phase), e.g. "
                "@on(StepEnd, TrainingPhase) def handle(self, event, phase, learner)")):
            test_learner(Idle())


class TestAttributes:
    """Issue #12, item 4: subclasses may set self.name; the reserved names are a clear error."""

    def test_name_can_be_set_in_init(self) -> None:
        """self.name = ... in __init__ sets the display name (used by repr and error messages)."""

        class Named(Callback):
            def __init__(self, name: str) -> None:
                self.name = name

        cb = Named("printer-1")
        assert (cb.name, repr(cb), Named.__name__) == ("printer-1", "printer-1()", "Named")

    def test_reserved_name_is_a_clear_error(self) -> None:
        """Assigning a name the base class reserves for a method is an AttributeError listing the reserved names."""

        class Clash(Callback):
            def __init__(self) -> None:
                self.handler = print

        with pytest.raises(AttributeError, match=exact(
                "Clash sets self.handler, but Callback reserves 'handler' for its method of that name; rename the "
                "attribute (e.g. self._handler or self.handler_), or override the method in the class. Reserved: "
                "handler, handles, init, inner, load_process_state, process_state, resolve_conflict, snapshot, teardown")):
            Clash()

    def test_name_must_be_a_str(self) -> None:
        """A non-string name is a TypeError."""
        with pytest.raises(TypeError, match=exact("Callback.name must be a non-empty str, got 3")):
            Callback().name = 3  # type: ignore[assignment]


class TestProcessState:
    def test_default_process_state_sends_the_attributes_that_pickle(self) -> None:
        """The default final state of a process actor's worker copy is every instance attribute that pickles."""
        import threading

        class Counter(Callback):
            def __init__(self) -> None:
                self.count = 3
                self.lock = threading.Lock()

        state = Counter().process_state()
        assert state == {"count": 3}

    def test_default_load_process_state_updates_the_attributes(self) -> None:
        """The parent instance takes the worker copy's state as attributes, keeping the others."""

        class Counter(Callback):
            def __init__(self) -> None:
                self.count = 0
                self.keep = "parent"

        cb = Counter()
        cb.load_process_state({"count": 7})
        assert (cb.count, cb.keep) == (7, "parent")
