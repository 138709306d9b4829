"""Tests for asyncloop.callbacks._monitor: the monitored metric's epoch value Checkpointer and EarlyStopping judge."""

from __future__ import annotations

import pytest

from asyncloop import History, TrainingPhase, ValidationPhase
from asyncloop.callbacks._monitor import monitored_epoch_value
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
