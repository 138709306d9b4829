"""Tests for asyncloop._plaindata: cbstate histories saved as plain data and restored, phases by class name."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from asyncloop import AbstractTrainingPhase, TrainingPhase
from asyncloop._exceptions import CheckpointError
from asyncloop.state import PhaseDict, SeriesHistory
from matchers import exact
from training_states import trained


class TestCbstateEncoding:
    def test_custom_phase_keys(self) -> None:
        """Histories of a custom phase restore by looking the class name up among Phase subclasses."""

        class Finetune(AbstractTrainingPhase):
            async def step(self, learner: Any, batch: Any) -> Any:
                return None

        learner = trained()
        learner.cbstate.history[Finetune()].epochs = 7
        state = learner.state_dict()
        other = trained(seed=1)
        other.load_state_dict(state)
        assert other.cbstate.history[Finetune()].epochs == 7

    def test_unknown_phase(self) -> None:
        """A phase no class is defined for is a clear error."""
        learner = trained()
        state = learner.state_dict()
        history = state["cbstate"]["history"]
        history["items"] = [("NoSuchPhase", history["items"][0][1])]
        with pytest.raises(
            CheckpointError,
            match=exact(
                "cannot load the state: it has state for the phase 'NoSuchPhase', but no Phase subclass of that name "
                "is defined; define (import) the custom phase before loading the checkpoint"
            ),
        ):
            learner.load_state_dict(state)

    def test_non_plain_cbstate_is_left_out(self) -> None:
        """A cbstate entry that is not plain data is skipped with a warning; plain entries are kept."""
        learner = trained()
        learner.cbstate.custom = object()
        learner.cbstate.counts = {"a": [1, 2]}
        with pytest.warns(UserWarning, match=r"^cbstate\['custom'\] \(object\) is not plain data"):
            state = learner.state_dict()
        assert "custom" not in state["cbstate"] and state["cbstate"]["counts"] == {"a": [1, 2]}

    def test_state_of_series_with_tensors(self) -> None:
        """SeriesHistory values that are tensors (e.g. traces) survive the round trip."""
        learner = trained()
        learner.cbstate.trace_history = PhaseDict(SeriesHistory)
        learner.cbstate.trace_history[TrainingPhase()].push("v", 1, torch.arange(3.0))
        state = learner.state_dict()
        other = trained(seed=1)
        other.load_state_dict(state)
        assert torch.equal(other.cbstate.trace_history[TrainingPhase()].last("v")[1], torch.arange(3.0))

    def test_encode_decode_round_trip(self) -> None:
        """encode turns histories into tagged plain data, decode restores equal objects; clone copies tensors."""
        from asyncloop import History
        from asyncloop._plaindata import decode, encode, is_plain

        histories = PhaseDict(History)
        histories[TrainingPhase()] = History(2, 8, 4)
        encoded = encode(histories, clone=True)
        assert is_plain(encoded) and encoded["__type__"] == "PhaseDict"
        assert decode(encoded) == histories
        tensor = torch.ones(2)
        assert encode({"t": tensor}, clone=True)["t"] is not tensor
        assert encode({"t": tensor}, clone=False)["t"] is tensor

    def test_what_cannot_be_encoded_is_skipped(self) -> None:
        """An object, or a PhaseDict of an unknown factory, encodes as SKIP; an unknown tag does not decode."""
        from asyncloop._plaindata import SKIP, decode, encode

        assert encode(object(), clone=False) is SKIP
        assert encode(PhaseDict(list), clone=False) is SKIP
        with pytest.raises(
            CheckpointError,
            match=exact(
                "cannot load the state: a cbstate entry has the unknown entry type 'Nope'; it was not written by "
                "asyncloop, or was altered; load another checkpoint"
            ),
        ):
            decode({"__type__": "Nope"})
