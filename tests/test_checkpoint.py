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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncloop import (
    EarlyStopping,
    Metrics,
    Recorder,
    Scheduler,
    TrainingPhase,
    ValidationPhase,
    fit,
    run_epoch,
    test_learner,
)
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
        keys = {"format", "version", "model", "optimizer", "optimizer_class", "callbacks", "cbstate", "epoch", "step"}
        assert set(state) == keys | {"rng"}
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


ALTERED = "it was not written by asyncloop, or was altered; load another checkpoint"


def _malformed(state: dict[str, Any], case: str) -> str:
    """Make ``state`` malformed as ``case`` says; return what the error says is wrong."""
    cbstate = state["cbstate"]
    if case == "version a string":
        state["version"] = "1"
        return "its version is '1', not an int"
    if case == "version missing":
        del state["version"]
        return "it has no version"
    if case == "cbstate a list":
        state["cbstate"] = [1, 2]
        return "its cbstate is a list, not a dict"
    if case == "callbacks a list":
        state["callbacks"] = ["Scheduler"]
        return "its callbacks' states are a list, not a dict"
    if case == "unknown factory":
        cbstate["history"]["factory"] = "os.system"
        return "cbstate['history'] is a PhaseDict of the unknown factory 'os.system'"
    if case == "history without fields":
        cbstate["history"]["items"][0] = ("TrainingPhase", {"__type__": "History", "epochs": 2})
        return "cbstate['history']['TrainingPhase'] is a History without the int field 'steps'"
    if case == "series not a dict":
        cbstate["metrics_epoch"]["items"][0] = ("TrainingPhase", {"__type__": "SeriesHistory", "series": [1]})
        return "cbstate['metrics_epoch']['TrainingPhase'] is a SeriesHistory whose series are not a dict"
    if case == "series of unequal lengths":
        cbstate["hyperparams"]["series"]["LearningRate"] = ([1, 2], [0.1])
        return (
            "cbstate['hyperparams'] is a SeriesHistory whose series 'LearningRate' is not a pair of equally long lists"
        )
    if case == "items not pairs":
        cbstate["history"]["items"] = 3
        return "cbstate['history'] is a PhaseDict whose items are not a list of (phase name, entry) pairs"
    if case == "history a number":
        cbstate["history"] = 5
        return "cbstate['history'] is an int, not a PhaseDict of History"
    if case == "a SeriesHistory in a PhaseDict of History":
        cbstate["history"]["items"][0] = ("TrainingPhase", {"__type__": "SeriesHistory", "series": {}})
        return "cbstate['history']['TrainingPhase'] is a SeriesHistory, not a History"
    if case == "unknown entry type":
        cbstate["history"] = {"__type__": "Pickle"}
        return "cbstate['history'] has the unknown entry type 'Pickle'"
    if case == "rng a string":
        state["rng"] = "seed"
        return "its rng states are a str, not a dict"
    if case == "python rng malformed":
        state["rng"]["python"] = (3, "abc", None)
        return "its rng['python'] is not Python's random state (version, 625 ints, gauss)"
    if case == "torch rng not a tensor":
        state["rng"]["torch"] = [1, 2, 3]
        size = torch.get_rng_state().numel()
        return f"its rng['torch'] is not torch's generator state (a uint8 tensor of {size} bytes)"
    if case == "model weights not tensors":
        state["model"]["c"] = "weights"
        return "its model weights hold 'c': a str, not a tensor"
    if case == "epoch a string":
        state["epoch"] = "2"
        return "its epoch is '2', not an int"
    raise AssertionError(case)


MALFORMED = [
    "version a string",
    "version missing",
    "cbstate a list",
    "callbacks a list",
    "unknown factory",
    "history without fields",
    "series not a dict",
    "series of unequal lengths",
    "items not pairs",
    "history a number",
    "a SeriesHistory in a PhaseDict of History",
    "unknown entry type",
    "rng a string",
    "python rng malformed",
    "torch rng not a tensor",
    "model weights not tensors",
    "epoch a string",
]


class TestMalformedContents:
    @pytest.mark.parametrize("case", MALFORMED)
    def test_malformed_checkpoint_is_a_checkpoint_error_naming_the_file(self, tmp_path: Path, case: str) -> None:
        """A file loading with weights_only=True but malformed: CheckpointError naming file, part; learner as it was."""
        state = trained().state_dict()
        problem = _malformed(state, case)
        path = tmp_path / "m.pt"
        torch.save(state, path)
        learner = trained(seed=2)
        before = TestFiles._learner_state(learner)
        rng_before = torch.get_rng_state()
        with pytest.raises(CheckpointError, match=exact(f"cannot load {path}: {problem}; {ALTERED}")):
            learner.load_checkpoint(path)
        assert same_tree(TestFiles._learner_state(learner), before)
        assert learner._optimizer is not None and torch.equal(torch.get_rng_state(), rng_before)


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``tree``'s dicts, lists and tuples (only the first 3 items of a list or tuple)."""
    found = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree[:3]):
            found += _paths(value, (*prefix, i))
    return found


def _replace(tree: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    """A copy of ``tree`` with the node at ``path`` replaced by ``value`` (or removed from its dict/list)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        out = dict(tree)
        if delete and not rest:
            del out[head]
        else:
            out[head] = _replace(tree[head], rest, value, delete)
        return out
    items = list(tree)
    if delete and not rest:
        del items[head]
    else:
        items[head] = _replace(items[head], rest, value, delete)
    return type(tree)(items) if isinstance(tree, tuple) else items


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=4),
    st.lists(st.integers(0, 5), max_size=3),
    st.tuples(st.text(max_size=3), st.integers()),
    st.dictionaries(st.sampled_from(["__type__", "a", "series", "items", "factory"]), st.integers(), max_size=2),
    st.sampled_from(["History", "SeriesHistory", "PhaseDict", "TrainingPhase"]),
    st.builds(torch.zeros, st.integers(0, 3)),
)


class TestMutatedStates:
    _learner = None
    _state: Any = None
    _paths: Any = None

    @classmethod
    def _setup(cls) -> None:
        if cls._learner is None:
            cls._learner = trained()
            cls._state = cls._learner.state_dict()
            cls._paths = [p for p in _paths(cls._state) if p]

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_a_mutated_state_loads_or_raises_checkpoint_error(self, data: Any) -> None:
        """One field of a valid state replaced or removed: the load succeeds, or CheckpointError, nothing changed."""
        self._setup()
        learner = self._learner
        learner.load_state_dict(self._state)
        path = data.draw(st.sampled_from(self._paths))
        delete = data.draw(st.booleans())
        value = data.draw(_VALUES)
        mutated = _replace(self._state, path, value, delete)
        before = learner.state_dict()
        try:
            learner.load_state_dict(mutated)
        except CheckpointError:
            assert same_tree(learner.state_dict(), before)


class TestCompatibility:
    @staticmethod
    def _other(tmp_path: Path) -> tuple[Any, Path]:
        """A checkpoint of ``trained()`` (Adam, Scheduler) and a learner with SGD, no Scheduler, an EarlyStopping."""
        path = tmp_path / "ckpt.pt"
        save_checkpoint(trained(), path)
        learner = test_learner(
            Recorder(), Metrics(), EarlyStopping(3), n_batches=4, optimizer=lambda p: torch.optim.SGD(p, lr=0.1)
        )
        return learner, path

    def test_mismatches_are_refused_by_name(self, tmp_path: Path) -> None:
        """Another optimizer class, a callback the learner lacks and one the checkpoint lacks are each named."""
        learner, path = self._other(tmp_path)
        before = {k: v.clone() for k, v in learner.model.state_dict().items()}
        message = (
            f"cannot load {path} into this learner: its optimizer is Adam, the learner's is SGD; it holds the state "
            f"of Scheduler, which this learner lacks; it holds no state for the learner's EarlyStopping; nothing was "
            f"changed; build the learner with the same model, optimizer and callbacks as when the checkpoint was "
            f"written, or pass strict=False to load the rest"
        )
        with pytest.raises(CheckpointError, match=exact(message)):
            learner.load_checkpoint(path)
        assert same_tree(learner.model.state_dict(), before)

    def test_not_strict_warns_per_mismatch_and_loads_the_rest(self, tmp_path: Path) -> None:
        """strict=False warns once per mismatch, loads the weights and keeps the learner's optimizer state."""
        learner, path = self._other(tmp_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            learner.load_checkpoint(path, strict=False)
        assert [str(w.message) for w in caught] == [
            f"loading {path} with strict=False: its optimizer is Adam, the learner's is SGD (the learner keeps its "
            f"optimizer state)",
            f"loading {path} with strict=False: it holds the state of Scheduler, which this learner lacks",
            f"loading {path} with strict=False: it holds no state for the learner's EarlyStopping",
        ]
        assert same_tree(learner.model.state_dict(), load_checkpoint_weights(path))
        assert isinstance(learner.optimizer, torch.optim.SGD) and learner.optimizer.param_groups[0]["lr"] == 0.1
        trio.run(fit, learner, 1)

    def test_fit_resume_strict(self, tmp_path: Path) -> None:
        """fit(resume=...) is strict; resume_strict=False resumes with warnings."""
        learner, path = self._other(tmp_path)
        with pytest.raises(CheckpointError, match="its optimizer is Adam, the learner's is SGD"):
            trio.run(lambda: fit(learner, 1, resume=path))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = trio.run(lambda: fit(learner, 1, resume=path, resume_strict=False))
        assert len([w for w in caught if "with strict=False" in str(w.message)]) == 3
        assert result.epochs == 1


def load_checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of the checkpoint at ``path``."""
    return torch.load(path, weights_only=True)["model"]
