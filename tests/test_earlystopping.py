"""Tests for asyncloop.callbacks._earlystopping: EarlyStopping driven by any recorded metric."""

from __future__ import annotations

import io
import math

import pytest
import torch
import trio

from asyncloop import (
    AbstractValidationPhase,
    ActorRunner,
    EarlyStopping,
    FitEnd,
    LinearRunner,
    Metrics,
    MissingStateError,
    Phase,
    ProgressPrinter,
    PropDict,
    Read,
    Recorder,
    TrainingPhase,
    ValidationPhase,
    fit,
    run_step,
    test_learner,
)
from asyncloop.callbacks import CustomCallback
from asyncloop.stopping import EarlyStopped, InvalidValue, NumberLimit, NumberSinceBest, Patience, Threshold
from matchers import exact
from scripted import Scripted

RUNNERS = [LinearRunner, ActorRunner]


class TestEarlyStopping:
    def test_seed_stop_early(self) -> None:
        """Seed #21: EarlyStopping(1) with a large learning rate stops a 100-epoch fit early."""
        learner = test_learner(
            Recorder(), Metrics(), EarlyStopping(1), ProgressPrinter(file=io.StringIO()), coeff=3.0, lr=0.1
        )
        result = trio.run(fit, learner, 100)
        assert result.stopped and result.epochs < 100
        assert isinstance(result.reason, EarlyStopped)
        assert str(result.reason) == "Stop triggered by NumberSinceBest(1) stopping criterion."

    def test_print_and_repr(self) -> None:
        """Seed #21: printing EarlyStopping(1) and EarlyStopping(NumberLimit(2)) works."""
        assert repr(EarlyStopping(1)) == "EarlyStopping(NumberSinceBest(1))"
        assert str(EarlyStopping(NumberLimit(2))) == "EarlyStopping(NumberLimit(2))"
        assert repr(EarlyStopping(3, InvalidValue(), monitor="Accuracy", mode="max")) == (
            "EarlyStopping(Disjunction(NumberSinceBest(3), InvalidValue()), monitor='Accuracy', mode='max')"
        )

    def test_int_means_no_improvement_for_n_epochs(self) -> None:
        """EarlyStopping(2) stops after 2 epochs without a new best, also on a plateau (Patience would not)."""
        values = [3.0, 2.0, 2.0, 2.0, 1.0, 0.5]
        learner = test_learner(Recorder(), Metrics(Scripted("Score", values)), EarlyStopping(2, monitor="Score"))
        result = trio.run(fit, learner, 6)
        assert result.stopped and result.epochs == 4
        plateau = test_learner(
            Recorder(), Metrics(Scripted("Score", values)), EarlyStopping(Patience(2), monitor="Score")
        )
        assert not trio.run(fit, plateau, 6).stopped

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_monitor_any_metric_in_max_mode(self, runner: type) -> None:
        """mode='max' stops when the metric stops increasing; the reason names criterion, monitor and value."""
        values = [0.5, 0.7, 0.9, 0.8, 0.9, 0.95]
        learner = test_learner(
            Recorder(),
            Metrics(Scripted("Accuracy", values)),
            EarlyStopping(NumberSinceBest(2), monitor="Accuracy", mode="max"),
            runner=runner(),
        )
        result = trio.run(fit, learner, 6)
        assert result.epochs == 5
        reason = result.reason
        assert isinstance(reason, EarlyStopped)
        assert (reason.monitor, reason.value, reason.epoch) == ("Accuracy", 0.9, 5)
        assert reason.criterion == NumberSinceBest(2)

    def test_threshold_in_max_mode_sees_negated_values(self) -> None:
        """With mode='max' the criteria see -value: Threshold(-0.85) stops once the metric exceeds 0.85."""
        learner = test_learner(
            Recorder(),
            Metrics(Scripted("Accuracy", [0.5, 0.9, 0.95])),
            EarlyStopping(Threshold(-0.85), monitor="Accuracy", mode="max"),
        )
        assert trio.run(fit, learner, 3).epochs == 2

    def test_training_values_are_fed(self) -> None:
        """The training loss reaches update_training: InvalidValue stops on a NaN training loss at its EpochEnd."""
        learner = test_learner(Recorder(), Metrics(), EarlyStopping(InvalidValue()), coeff=math.nan)
        result = trio.run(fit, learner, 3)
        assert result.stopped and result.epochs == 1  # the stop came from the epoch's EpochEnd: it completed
        assert learner.cbstate.history[TrainingPhase()].epochs == 1
        assert learner.cbstate.history[ValidationPhase()].epochs == 0
        assert str(result.reason) == "Stopping early as `NaN`, `Inf` or `-Inf` encountered."

    def test_fit_end_fires_after_the_stop(self) -> None:
        """The stop ends the fit cleanly: FitEnd still fires."""
        ends = []
        learner = test_learner(
            Recorder(), Metrics(), EarlyStopping(NumberLimit(1)), CustomCallback(lambda _: ends.append(1), FitEnd)
        )
        result = trio.run(fit, learner, 5)
        assert (result.stopped, result.epochs, ends) == (True, 1, [1])

    def test_unknown_monitor(self) -> None:
        """A monitor no Metrics records is an error when the Learner is built, naming the known ones."""
        with pytest.raises(ValueError) as info:
            test_learner(Recorder(), Metrics(), EarlyStopping(2, monitor="Acc"))
        assert str(info.value) == (
            "EarlyStopping monitors 'Acc', which no Metrics records (recorded: 'Loss'); "
            "pass monitor= one of those, or add the metric to Metrics(...)"
        )

    def test_needs_metrics(self) -> None:
        """Without Metrics there is nothing to judge: a clear error when the learner is built (issue #12).

        (It used to be a RuntimeError at the first epoch; the callback graph now refuses the set.)
        """
        with pytest.raises(MissingStateError) as info:
            test_learner(Recorder(), EarlyStopping(2))
        assert str(info.value) == (
            "EarlyStopping reads cbstate.metrics_epoch, which no callback writes: add Metrics(). If you set "
            "learner.cbstate.metrics_epoch yourself before fit, list it in EarlyStopping.optional_reads."
        )

    def test_validation_only_metric_is_skipped_in_training(self) -> None:
        """A metric only recorded in validation is no error in training epochs."""
        learner = test_learner(Recorder(), Metrics(Scripted("Score", [1.0, 1.0])), EarlyStopping(1, monitor="Score"))
        assert trio.run(fit, learner, 2).stopped

    def test_mode_is_inferred_from_monitor(self) -> None:
        """mode=None (the default) infers max for an accuracy, min for a loss; an explicit mode wins."""
        assert EarlyStopping(3, monitor="Accuracy").mode == "max"
        assert EarlyStopping(3).mode == "min"
        assert EarlyStopping(3, monitor="Accuracy", mode="min").mode == "min"
        assert repr(EarlyStopping(3)) == "EarlyStopping(NumberSinceBest(3))"

    def test_bad_arguments(self) -> None:
        """Bad criteria, modes and phases are rejected with a message saying what to pass."""
        with pytest.raises(
            TypeError,
            match=exact("EarlyStopping needs a criterion, e.g. EarlyStopping(3) or EarlyStopping(Patience(5))"),
        ):
            EarlyStopping()
        with pytest.raises(ValueError, match=exact("EarlyStopping: mode must be 'min' or 'max', got 'up'")):
            EarlyStopping(3, mode="up")
        with pytest.raises(TypeError, match=r"^EarlyStopping takes stopping criteria from asyncloop.stopping"):
            EarlyStopping("3")
        with pytest.raises(
            ValueError,
            match=exact(
                "EarlyStopping: test_phase Phase and train_phase AbstractTrainingPhase overlap; pick phase types that "
                "do not include each other"
            ),
        ):
            EarlyStopping(3, test_phase=Phase)

    def test_state_dict_round_trip(self) -> None:
        """The criterion's state is saved and restored."""
        cb = EarlyStopping(3)
        learner = test_learner(Recorder(), Metrics(), cb, n_batches=2)
        trio.run(fit, learner, 2)
        state = cb.state_dict()
        assert state["state"][1] in (0, 1)
        fresh = EarlyStopping(3)
        fresh.load_state_dict(state)
        assert fresh.state == cb.state

    def test_declarations(self) -> None:
        """It reads the epoch metrics and history, runs after Metrics, and is never detached."""
        cb = EarlyStopping(1)
        assert cb.state_access == {"cbstate": {"metrics_epoch": Read(), "history": Read()}}
        assert Metrics in cb.run_after and not cb.detached

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_stops_at_the_same_epoch_under_both_runners(self, runner: type) -> None:
        """The stop is exact under both runners: same epoch, same weights."""
        torch.manual_seed(1)
        learner = test_learner(Recorder(), Metrics(), EarlyStopping(1), lr=0.1, runner=runner())
        result = trio.run(fit, learner, 50)
        torch.manual_seed(1)
        reference = test_learner(Recorder(), Metrics(), EarlyStopping(1), lr=0.1)
        expected = trio.run(fit, reference, 50)
        assert result.epochs == expected.epochs
        assert torch.equal(learner.model.c, reference.model.c)


class ScriptedValidation(AbstractValidationPhase):
    """A custom validation phase: the built-in validation step on ``{"x", "y"}`` dict batches, under its own name."""

    __test__ = False

    async def step(self, learner: object, batch: dict) -> object:
        async def step_fn(handle: object, state: PropDict) -> None:
            with torch.no_grad():
                state.loss = (learner.model(state.xs) - state.ys).abs().mean()  # type: ignore[attr-defined]

        return await run_step(step_fn, learner, self, {"xs": batch["x"], "ys": batch["y"]})  # type: ignore[arg-type]


class AnyValidationScripted(Scripted):
    """Scripted values for any validation phase, custom ones included."""

    def update(self, learner: object, phase: Phase) -> None:
        if isinstance(phase, AbstractValidationPhase) and not self._seen:
            self._seen = True
            self.epoch += 1


class TestUnderCustomPhases:
    def test_stops_on_a_custom_validation_phase(self) -> None:
        """The default test_phase (AbstractValidationPhase) judges the custom validation phase fit ran."""
        learner = test_learner(Recorder(), Metrics(AnyValidationScripted("Score", [1.0, 0.5, 0.6, 0.7, 0.8, 0.9])),
                               EarlyStopping(2, monitor="Score"), n_batches=2)
        batches = [{"x": xs, "y": ys} for xs, ys in learner.data["training"]]
        learner.data = {"training": learner.data["training"], "validation": batches}
        result = trio.run(lambda: fit(learner, 10, phases=(TrainingPhase(), ScriptedValidation())))
        assert result.stopped and isinstance(result.reason, EarlyStopped)
        assert result.epochs == 4
        assert learner.cbstate.history[ScriptedValidation()].epochs == 4
