"""Tests for asyncloop._checkpoint: the learner's training state in memory and in files, loaded all or nothing."""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trio

from asyncloop import Metrics, Recorder, Scheduler, TrainingPhase, ValidationPhase, fit, run_epoch, test_learner
from asyncloop._checkpoint import callback_key, load_checkpoint, save_checkpoint, training_state
from asyncloop._exceptions import CheckpointError
from asyncloop.state import History
from matchers import exact
from training_states import plain, same_tree, trained


class TestTrainingState:
    def test_contents_are_plain_data(self) -> None:
        """The state holds model, optimizer, callbacks, cbstate, counters and RNG, all plain data."""
        learner = trained()
        state = learner.state_dict()
        assert plain(state)
        assert set(state) == {"format", "version", "model", "optimizer", "callbacks", "cbstate", "epoch", "step", "rng"}
        assert (state["epoch"], state["step"]) == (2, 8)
        assert state["callbacks"] == {"Recorder": {}, "Scheduler": {"t": 9}}
        assert set(state["cbstate"]) == {"history", "metrics_step", "metrics_epoch", "hyperparams"}
        assert set(state["rng"]) >= {"torch", "python", "numpy"}

    def test_tensors_are_copies(self) -> None:
        """state_dict() clones: later training does not change it."""
        learner = trained()
        state = learner.state_dict()
        before = state["model"]["c"].clone()
        trio.run(fit, learner, 1)
        assert torch.equal(state["model"]["c"], before)
        assert not torch.equal(learner.model.c.detach(), before)

    def test_round_trip(self) -> None:
        """load_state_dict restores weights, optimizer state, callbacks' state, histories and RNG states."""
        a = trained(seed=0)
        state = a.state_dict()
        expected_draws = (torch.rand(3), random.random(), np.random.rand())
        b = trained(seed=5)
        b.load_state_dict(state)
        assert same_tree(b.state_dict(), state)
        assert b.get_callback(Scheduler).state_dict() == {"t": 9}
        assert b.cbstate.history[TrainingPhase()] == History(2, 8, 4)
        assert b.cbstate.metrics_epoch[ValidationPhase()].values("Loss") == a.cbstate.metrics_epoch[
            ValidationPhase()
        ].values("Loss")
        draws = (torch.rand(3), random.random(), np.random.rand())
        assert torch.equal(draws[0], expected_draws[0]) and draws[1:] == expected_draws[1:]

    def test_callbacks_keyed_by_class_and_occurrence(self) -> None:
        """The second callback of a class is keyed 'Name#1'."""
        cbs = [Recorder(), Metrics(), Scheduler(), Scheduler()]
        assert [callback_key(cbs, i) for i in range(4)] == ["Recorder", "Metrics", "Scheduler", "Scheduler#1"]

    def test_non_plain_callback_state(self) -> None:
        """A callback state_dict that needs pickle is refused when saving."""

        class Bad(Recorder):
            def state_dict(self) -> dict[str, Any]:
                return {"obj": object()}

        learner = test_learner(Bad())
        with pytest.raises(CheckpointError, match=r"^Bad\.state_dict\(\) returned something other than plain data"):
            learner.state_dict()

    def test_not_a_state(self) -> None:
        """Anything but a training state is refused."""
        with pytest.raises(
            CheckpointError,
            match=exact("the state is not an asyncloop training state (no format 'asyncloop.training_state' marker)"),
        ):
            test_learner().load_state_dict({"model": {}})

    def test_newer_version(self) -> None:
        """A state from a newer asyncloop says to upgrade."""
        state = trained().state_dict()
        state["version"] = 99
        with pytest.raises(CheckpointError, match=r"written by a newer asyncloop \(state version 99"):
            trained().load_state_dict(state)

    def test_load_during_fit_is_refused(self) -> None:
        """Loading a state while fit() runs is an error."""
        learner = trained()
        state = learner.state_dict()
        errors: list[BaseException] = []

        async def epoch_fn(handle: Any) -> None:
            try:
                learner.load_state_dict(state)
            except RuntimeError as exc:
                errors.append(exc)

        trio.run(run_epoch, epoch_fn, learner, TrainingPhase())
        assert str(errors[0]) == (
            "cannot load a training state while fit() is running; load it before fit, or use fit(..., resume=path)"
        )


def test_training_state_without_clone_shares_nothing_needed() -> None:
    """training_state(clone=False) is the same data (used when writing inline)."""
    learner = trained()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same_tree(training_state(learner, clone=False)["model"], learner.state_dict()["model"])


class TestFiles:
    def test_checkpoint_file_round_trip(self, tmp_path: Path) -> None:
        """save_checkpoint / load_checkpoint go through a file loaded with weights_only=True."""
        a = trained()
        save_checkpoint(a, tmp_path / "a.pt")
        data = torch.load(tmp_path / "a.pt", weights_only=True)
        assert data["format"] == "asyncloop.training_state"
        b = trained(seed=3)
        load_checkpoint(b, tmp_path / "a.pt")
        assert torch.equal(b.model.c, a.model.c)

    @staticmethod
    def _learner_state(learner: Any) -> Any:
        return (
            {k: v.clone() for k, v in learner.model.state_dict().items()},
            learner.optimizer.state_dict(),
            training_state(learner)["cbstate"],
            learner.get_callback(Scheduler).state_dict(),
        )

    @pytest.mark.parametrize("mismatch", ["model", "optimizer", "callback"])
    def test_mismatching_checkpoint_changes_nothing(self, tmp_path: Path, mismatch: str) -> None:
        """A checkpoint that does not fit the learner raises CheckpointError and leaves weights, optimizer and cbstate as they were."""
        path = tmp_path / "a.pt"
        state = trained().state_dict()
        learner = trained(seed=2)
        if mismatch == "model":
            state["model"]["extra"] = torch.zeros(2)
            problem = "unexpected weights extra"
        elif mismatch == "optimizer":
            learner.optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
            problem = "its optimizer has 1 parameter group(s), the learner's has 2"
        else:
            state["callbacks"]["Scheduler"] = {"step": 3}  # the Scheduler rejects it after weights were loaded
            problem = "(KeyError: 't'); nothing was changed"
        torch.save(state, path)
        before = self._learner_state(learner)
        hint = "build the learner with the same model, optimizer and callbacks as when the checkpoint was written"
        with pytest.raises(CheckpointError) as info:
            learner.load_checkpoint(path)
        assert str(info.value).startswith(f"cannot load {path} into this learner")
        assert problem in str(info.value) and str(info.value).endswith(hint)
        assert same_tree(self._learner_state(learner), before)

    def test_model_shape_mismatch(self, tmp_path: Path) -> None:
        """A weight of another shape is named with both shapes, before anything is loaded."""
        path = tmp_path / "a.pt"
        state = trained().state_dict()
        state["model"]["c"] = torch.zeros(3)
        torch.save(state, path)
        learner = trained(seed=2)
        before = learner.model.c.detach().clone()
        with pytest.raises(CheckpointError, match=r"c has shape \(3,\) in the checkpoint, \(\) in the model; build"):
            learner.load_checkpoint(path)
        assert torch.equal(learner.model.c, before)
