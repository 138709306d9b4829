"""Tests for asyncloop.callbacks._monitor: the monitored metric's epoch value Checkpointer and EarlyStopping judge."""

from __future__ import annotations

import pytest

from asyncloop import (
    AbstractTrainingPhase,
    AbstractValidationPhase,
    History,
    Phase,
    TrainingPhase,
    ValidationPhase,
)
from asyncloop.callbacks._monitor import kind_of, latest_monitored_value, matching_phase, monitored_epoch_value
from asyncloop.state import PhaseDict, PropDict, SeriesHistory
from matchers import exact


def _cbstate(epochs: int = 2, **values: tuple[int, float]) -> PropDict:
    """A cbstate where the training phase is at ``epochs`` and recorded ``values`` (name -> (index, value))."""
    cbstate = PropDict()
    cbstate.history = PhaseDict(History)
    cbstate.metrics_epoch = PhaseDict(SeriesHistory)
    cbstate.history[TrainingPhase()].epochs = epochs
    for name, (index, value) in values.items():
        cbstate.metrics_epoch[TrainingPhase()].push(name, index, value)
    return cbstate


class TestMonitoredEpochValue:
    def test_value_of_the_current_epoch(self) -> None:
        """The value recorded at the phase's current epoch is returned as a float."""
        cbstate = _cbstate(2, Loss=(2, 3))
        value = monitored_epoch_value(cbstate, TrainingPhase(), "Loss", who="X")
        assert value == 3.0 and isinstance(value, float)

    def test_stale_value_is_none(self) -> None:
        """A value from an earlier epoch (this one recorded nothing) gives None."""
        assert monitored_epoch_value(_cbstate(3, Loss=(2, 0.5)), TrainingPhase(), "Loss", who="X") is None

    def test_evaluation_epochs_never_stand_in(self) -> None:
        """validate()'s EvaluationPhase series are ignored: a custom validation phase beside them is still found,
        and alone they match nothing."""
        from asyncloop import AbstractValidationPhase, EvaluationPhase

        class CustomValidationForMonitor(AbstractValidationPhase):
            pass

        both = _recorded(EvaluationPhase(), CustomValidationForMonitor())
        assert matching_phase(both, ValidationPhase, who="X") == CustomValidationForMonitor()
        assert matching_phase(_recorded(EvaluationPhase()), ValidationPhase, who="X") is None

    def test_nothing_recorded_is_none_and_inserts_nothing(self) -> None:
        """No metrics_epoch, or none for the phase, gives None; the lookup adds no phase to the PhaseDicts."""
        assert monitored_epoch_value(PropDict(), TrainingPhase(), "Loss", who="X") is None
        cbstate = _cbstate(1, Loss=(1, 0.5))
        assert monitored_epoch_value(cbstate, ValidationPhase(), "Loss", who="X") is None
        assert ValidationPhase() not in cbstate.metrics_epoch
        assert ValidationPhase() not in cbstate.history

    def test_unknown_name_names_the_caller(self) -> None:
        """A name the phase did not record raises, naming the caller, the phase and what was recorded."""
        with pytest.raises(ValueError, match=exact(
            "Checkpointer monitors 'Acc', which Metrics did not record for TrainingPhase() (recorded: 'Loss'); "
            "pass monitor= one of those, or add the metric to Metrics(...)"
        )):
            monitored_epoch_value(_cbstate(1, Loss=(1, 0.5)), TrainingPhase(), "Acc", who="Checkpointer")

    def test_unknown_name_not_strict_is_none(self) -> None:
        """With strict=False an unknown name gives None, as it does while the phase has recorded nothing."""
        assert monitored_epoch_value(_cbstate(1, Loss=(1, 0.5)), TrainingPhase(), "Acc", who="X", strict=False) is None
        assert monitored_epoch_value(_cbstate(1), TrainingPhase(), "Acc", who="X") is None


class CustomTraining(AbstractTrainingPhase):
    """A custom training phase (only its type matters here)."""


class OtherTraining(AbstractTrainingPhase):
    """Another custom training phase."""


def _recorded(*phases: Phase, name: str = "Loss") -> PropDict:
    """A cbstate where each of ``phases`` recorded ``name`` at epoch 1 (value 1.0, 2.0, ...)."""
    cbstate = PropDict()
    cbstate.history = PhaseDict(History)
    cbstate.metrics_epoch = PhaseDict(SeriesHistory)
    for i, phase in enumerate(phases):
        cbstate.history[phase].epochs = 1
        cbstate.metrics_epoch[phase].push(name, 1, float(i + 1))
    return cbstate


class TestMatchingPhase:
    def test_kind_of(self) -> None:
        """A configured phase class stands for its abstract kind; other classes for themselves."""
        assert kind_of(TrainingPhase) is AbstractTrainingPhase
        assert kind_of(CustomTraining) is AbstractTrainingPhase
        assert kind_of(ValidationPhase) is AbstractValidationPhase
        assert kind_of(Phase) is Phase

    def test_exact_phase_first(self) -> None:
        """The configured phase itself wins when it recorded metrics, even beside a custom one of its kind."""
        cbstate = _recorded(CustomTraining(), TrainingPhase())
        assert matching_phase(cbstate, TrainingPhase, who="X") == TrainingPhase()

    def test_a_custom_phase_of_the_kind(self) -> None:
        """TrainingPhase finds the custom training phase that ran instead; never a phase of the other kind."""
        cbstate = _recorded(ValidationPhase(), CustomTraining())
        assert matching_phase(cbstate, TrainingPhase, who="X") == CustomTraining()
        assert latest_monitored_value(cbstate, TrainingPhase, "Loss", who="X") == 2.0
        assert matching_phase(_recorded(TrainingPhase()), ValidationPhase, who="X") is None

    def test_nothing_recorded_is_none_and_inserts_nothing(self) -> None:
        """No phase of the kind recorded anything: None, and the PhaseDict is left as it was."""
        cbstate = _recorded(TrainingPhase())
        assert latest_monitored_value(cbstate, ValidationPhase, "Loss", who="X") is None
        assert list(cbstate.metrics_epoch) == [TrainingPhase()]

    def test_several_phases_of_the_kind(self) -> None:
        """Two custom phases of the kind are ambiguous: an error asking for the exact class."""
        cbstate = _recorded(CustomTraining(), OtherTraining())
        with pytest.raises(ValueError, match=exact(
            "Checkpointer monitors AbstractTrainingPhase metrics, and several such phases recorded some "
            "(CustomTraining(), OtherTraining()); pass phase= the exact class to monitor, e.g. phase=OtherTraining"
        )):
            matching_phase(cbstate, TrainingPhase, who="Checkpointer")

    def test_latest_value_of_an_earlier_epoch(self) -> None:
        """The latest value stands when the phase did not run this epoch (validation every N epochs)."""
        cbstate = _recorded(ValidationPhase())
        cbstate.history[ValidationPhase()].epochs = 3
        assert latest_monitored_value(cbstate, ValidationPhase, "Loss", who="X") == 1.0

    def test_unknown_monitor_under_the_matching_phase(self) -> None:
        """A monitor the matching phase did not record is the misspelt-name error."""
        with pytest.raises(ValueError, match=exact(
            "X monitors 'Acc', which Metrics did not record for CustomTraining() (recorded: 'Loss'); pass monitor= "
            "one of those, or add the metric to Metrics(...)"
        )):
            latest_monitored_value(_recorded(CustomTraining()), TrainingPhase, "Acc", who="X")
