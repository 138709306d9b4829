"""Tests for asyncloop.phases: phase value classes, their hierarchy and data keys."""

from __future__ import annotations

import pytest
import trio

import asyncloop
from asyncloop import phases, test_learner
from asyncloop.phases import (
    AbstractTrainingPhase,
    AbstractValidationPhase,
    FitPhase,
    Phase,
    TrainingPhase,
    ValidationPhase,
)


class TestPhaseValues:
    @pytest.mark.parametrize("cls", [Phase, TrainingPhase, ValidationPhase, FitPhase])
    def test_instances_are_equal_and_hash_equal(self, cls: type[Phase]) -> None:
        """Phases are values: two instances of one phase type are equal and hash equal."""
        assert cls() == cls()
        assert hash(cls()) == hash(cls())

    def test_phases_key_dicts(self) -> None:
        """A phase instance finds an entry stored under another instance of the same type."""
        d = {TrainingPhase(): "t", ValidationPhase(): "v"}
        assert d[TrainingPhase()] == "t"
        assert d[ValidationPhase()] == "v"

    def test_different_phase_types_are_not_equal(self) -> None:
        """TrainingPhase() and ValidationPhase() differ, and neither equals the base Phase()."""
        assert TrainingPhase() != ValidationPhase()
        assert TrainingPhase() != Phase()
        assert FitPhase() != TrainingPhase()

    @pytest.mark.parametrize("cls", [TrainingPhase, ValidationPhase, FitPhase])
    def test_repr(self, cls: type[Phase]) -> None:
        """str(TrainingPhase()) is 'TrainingPhase()', as in FluxTraining."""
        assert str(cls()) == f"{cls.__name__}()"


class TestHierarchy:
    def test_training_phase_is_abstract_training_phase(self) -> None:
        """TrainingPhase subclasses AbstractTrainingPhase, which subclasses Phase."""
        assert isinstance(TrainingPhase(), AbstractTrainingPhase)
        assert isinstance(TrainingPhase(), Phase)
        assert not isinstance(TrainingPhase(), AbstractValidationPhase)

    def test_validation_phase_is_abstract_validation_phase(self) -> None:
        """ValidationPhase subclasses AbstractValidationPhase, which subclasses Phase."""
        assert isinstance(ValidationPhase(), AbstractValidationPhase)
        assert not isinstance(ValidationPhase(), AbstractTrainingPhase)

    def test_fit_phase_is_neither_training_nor_validation(self) -> None:
        """FitPhase is a Phase but of neither abstract subtype."""
        assert isinstance(FitPhase(), Phase)
        assert not isinstance(FitPhase(), (AbstractTrainingPhase, AbstractValidationPhase))


class TestDataKey:
    def test_data_keys(self) -> None:
        """Training phases read learner.data['training'], validation phases 'validation', others nothing."""
        assert TrainingPhase.data_key == "training"
        assert ValidationPhase.data_key == "validation"
        assert Phase.data_key is None
        assert FitPhase.data_key is None

    def test_custom_phase_inherits_data_key(self) -> None:
        """A custom phase subclassing AbstractTrainingPhase uses the training data."""

        class MyPhase(AbstractTrainingPhase):
            pass

        assert MyPhase().data_key == "training"


class TestStep:
    async def test_phase_without_step_raises_not_implemented(self) -> None:
        """A custom phase that does not implement step() says how to write one."""

        class NoStep(AbstractTrainingPhase):
            pass

        learner = test_learner(n_batches=1)
        with pytest.raises(
            NotImplementedError,
            match=r"^NoStep does not implement step\(\); define 'async def step\(self, learner, batch\)' "
            r"using asyncloop\.run_step$",
        ):
            await asyncloop.epoch(learner, NoStep())

    def test_custom_phase_step_runs_for_each_batch(self) -> None:
        """phase.epoch calls the custom phase's step() once per batch of the epoch's data."""
        seen = []

        class Count(AbstractTrainingPhase):
            async def step(self, learner: asyncloop.Learner, batch: object) -> None:
                seen.append(batch)

        learner = test_learner(n_batches=3)
        trio.run(asyncloop.epoch, learner, Count())
        assert seen == learner.data.training

    @pytest.mark.parametrize("base", [TrainingPhase, ValidationPhase])
    def test_overriding_a_built_in_step_is_honoured(self, base: type[Phase]) -> None:
        """A subclass of TrainingPhase/ValidationPhase that overrides step() gets its step called (the loop's
        direct call to the built-in step is only for phases that keep it)."""
        seen = []

        class Mine(base):  # type: ignore[valid-type, misc]
            async def step(self, learner: asyncloop.Learner, batch: object) -> None:
                seen.append(batch)

        learner = test_learner(n_batches=3)
        trio.run(asyncloop.epoch, learner, Mine(), learner.data.training)
        assert seen == learner.data.training

    @pytest.mark.parametrize("base", [TrainingPhase, ValidationPhase])
    def test_a_subclass_awaits_the_built_in_step_through_super(self, base: type[Phase]) -> None:
        """The built-in phases' step() returns the step's coroutine: an async override that awaits
        super().step(learner, batch) runs the whole step (its events too) and gets the step state back."""
        from asyncloop import Callback, StepBegin, on

        states, begun = [], []

        class Begins(Callback):
            @on(StepBegin)
            def h(self, event: object, phase: object, learner: object) -> None:
                begun.append(1)

        class Mine(base):  # type: ignore[valid-type, misc]
            async def step(self, learner: asyncloop.Learner, batch: object) -> object:
                state = await super().step(learner, batch)
                states.append(state)
                return state

        learner = test_learner(Begins(), n_batches=2)
        trio.run(asyncloop.epoch, learner, Mine(), learner.data.training)
        assert len(states) == 2 == len(begun)
        assert all(set(state) >= {"xs", "ys", "preds", "loss"} for state in states)

    def test_a_patched_built_in_step_is_honoured(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Replacing TrainingPhase.step itself (e.g. to instrument it) is honoured by the default epoch."""
        seen = []

        async def step(self: Phase, learner: asyncloop.Learner, batch: object) -> None:
            seen.append(batch)

        monkeypatch.setattr(TrainingPhase, "step", step)
        learner = test_learner(n_batches=2)
        trio.run(asyncloop.epoch, learner, TrainingPhase())
        assert seen == learner.data.training


class TestModule:
    def test_all(self) -> None:
        """asyncloop.phases.__all__ lists the five public phases and FitPhase."""
        assert sorted(phases.__all__) == sorted(
            ["Phase", "AbstractTrainingPhase", "AbstractValidationPhase", "TrainingPhase", "ValidationPhase",
             "FitPhase"]
        )
