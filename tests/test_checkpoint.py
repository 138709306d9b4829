"""Tests for asyncloop._checkpoint: training state (de)serialisation, safe loading, atomic writes, save/load_model."""

from __future__ import annotations

import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trio

from asyncloop import (
    AbstractTrainingPhase,
    LearningRate,
    Metrics,
    Recorder,
    Scheduler,
    TrainingPhase,
    ValidationPhase,
    fit,
    load_model,
    run_epoch,
    save_model,
    test_learner,
)
from asyncloop._checkpoint import (
    CheckpointError,
    atomic_write,
    callback_key,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    training_state,
)
from asyncloop.hyperparameters import constant
from asyncloop.state import History, PhaseDict, SeriesHistory
from matchers import exact


def trained(seed: int = 0, **kw: Any) -> Any:
    torch.manual_seed(seed)
    learner = test_learner(
        Recorder(),
        Metrics(),
        Scheduler({LearningRate: constant(1e-3)}),
        n_batches=4,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        **kw,
    )
    trio.run(fit, learner, 2)
    return learner


def plain(x: Any) -> bool:
    if isinstance(x, (type(None), bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(x, (list, tuple)):
        return all(plain(v) for v in x)
    if isinstance(x, dict):
        return all(isinstance(k, (str, int)) and plain(v) for k, v in x.items())
    return False


def same_tree(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    return a == b or (a != a and b != b)


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
                "the checkpoint has state for the phase 'NoSuchPhase', but no Phase subclass of that name is defined; "
                "define (import) the custom phase before loading the checkpoint"
            ),
        ):
            learner.load_state_dict(state)

    def test_non_plain_callback_state(self) -> None:
        """A callback state_dict that needs pickle is refused when saving."""

        class Bad(Recorder):
            def state_dict(self) -> dict[str, Any]:
                return {"obj": object()}

        learner = test_learner(Bad())
        with pytest.raises(CheckpointError, match=r"^Bad\.state_dict\(\) returned something other than plain data"):
            learner.state_dict()

    def test_non_plain_cbstate_is_left_out(self) -> None:
        """A cbstate entry that is not plain data is skipped with a warning; plain entries are kept."""
        learner = trained()
        learner.cbstate.custom = object()
        learner.cbstate.counts = {"a": [1, 2]}
        with pytest.warns(UserWarning, match=r"^cbstate\['custom'\] \(object\) is not plain data"):
            state = learner.state_dict()
        assert "custom" not in state["cbstate"] and state["cbstate"]["counts"] == {"a": [1, 2]}

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

    def test_folder_means_latest(self, tmp_path: Path) -> None:
        """A folder resolves through its 'latest' pointer; without one it is an error."""
        save_checkpoint(trained(), tmp_path / "x.pt")
        (tmp_path / "latest").write_text("x.pt\n")
        assert read_checkpoint(tmp_path)["epoch"] == 2
        with pytest.raises(
            CheckpointError,
            match=exact(
                f"{tmp_path / 'sub'} is a folder without a 'latest' pointer file; pass the path of a checkpoint file"
            ),
        ):
            (tmp_path / "sub").mkdir()
            read_checkpoint(tmp_path / "sub")

    def test_corrupted_file(self, tmp_path: Path) -> None:
        """A truncated file is a clear error naming it; the file is left as it was."""
        path = tmp_path / "c.pt"
        save_checkpoint(trained(), path)
        data = path.read_bytes()[:200]
        path.write_bytes(data)
        learner = trained(seed=2)
        before = learner.model.c.detach().clone()
        with pytest.raises(
            CheckpointError,
            match=exact(f"cannot load {path}: the file is truncated or corrupted; load an earlier checkpoint instead"),
        ):
            learner.load_checkpoint(path)
        assert path.read_bytes() == data and torch.equal(learner.model.c, before)

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

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file names the path."""
        with pytest.raises(CheckpointError, match=exact(f"no checkpoint at {tmp_path / 'nope.pt'}")):
            read_checkpoint(tmp_path / "nope.pt")

    @pytest.mark.filterwarnings("ignore:Detected pickle protocol")
    def test_never_unpickles_code(self, tmp_path: Path) -> None:
        """A file holding arbitrary objects is refused and nothing in it runs."""
        ran = []

        class Evil:
            def __reduce__(self) -> Any:
                return (ran.append, ("pwned",))

        path = tmp_path / "evil.pt"
        torch.save({"format": "asyncloop.model", "model": Evil()}, path)
        with pytest.raises(CheckpointError, match=r"holds objects that need code to load"):
            load_model(path)
        with open(tmp_path / "evil.pkl", "wb") as f:
            pickle.dump(Evil(), f)
        with pytest.raises(CheckpointError):
            read_checkpoint(tmp_path / "evil.pkl")
        assert ran == []

    def test_atomic_write_failure_keeps_the_old_file(self, tmp_path: Path) -> None:
        """An error while writing leaves the previous file intact and no temporary file behind."""
        path = tmp_path / "f.bin"
        atomic_write(path, lambda f: f.write(b"old"))

        def fail(f: Any) -> None:
            f.write(b"half")
            raise OSError("disk full")

        with pytest.raises(OSError, match=exact("disk full")):
            atomic_write(path, fail)
        assert path.read_bytes() == b"old"
        assert os.listdir(tmp_path) == ["f.bin"]


class TestSaveLoadModel:
    def test_round_trip(self, tmp_path: Path) -> None:
        """save_model writes the weights; load_model loads them into a model, or returns the state dict."""
        model = torch.nn.Linear(3, 2)
        save_model(model, tmp_path / "m.pt")
        other = torch.nn.Linear(3, 2)
        assert load_model(tmp_path / "m.pt", other) is other
        assert torch.equal(other.weight, model.weight)
        weights = load_model(tmp_path / "m.pt")
        assert set(weights) == {"weight", "bias"}

    def test_loads_a_training_checkpoint(self, tmp_path: Path) -> None:
        """load_model also takes the model out of a training checkpoint."""
        learner = trained()
        save_checkpoint(learner, tmp_path / "ckpt.pt")
        assert torch.equal(load_model(tmp_path / "ckpt.pt")["c"], learner.model.c.detach())

    def test_bad_input(self, tmp_path: Path) -> None:
        """A non-module, or a file without weights, is rejected."""
        with pytest.raises(TypeError, match=exact("save_model saves a torch.nn.Module's weights, got function")):
            save_model(lambda x: x, tmp_path / "f.pt")  # type: ignore[arg-type]
        torch.save({"a": 1}, tmp_path / "other.pt")
        with pytest.raises(CheckpointError, match=r"holds no asyncloop model weights"):
            load_model(tmp_path / "other.pt")

    def test_state_of_series_with_tensors(self) -> None:
        """SeriesHistory values that are tensors (e.g. traces) survive the round trip."""
        learner = trained()
        learner.cbstate.trace_history = PhaseDict(SeriesHistory)
        learner.cbstate.trace_history[TrainingPhase()].push("v", 1, torch.arange(3.0))
        state = learner.state_dict()
        other = trained(seed=1)
        other.load_state_dict(state)
        assert torch.equal(other.cbstate.trace_history[TrainingPhase()].last("v")[1], torch.arange(3.0))


def test_training_state_without_clone_shares_nothing_needed() -> None:
    """training_state(clone=False) is the same data (used when writing inline)."""
    learner = trained()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same_tree(training_state(learner, clone=False)["model"], learner.state_dict()["model"])
