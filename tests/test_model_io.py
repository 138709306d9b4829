"""Tests for asyncloop._model_io: save_model / load_model, weights only and without unpickling code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asyncloop import load_model, save_model
from asyncloop._checkpoint import save_checkpoint
from asyncloop._exceptions import CheckpointError
from matchers import exact
from training_states import trained


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

    @pytest.mark.parametrize("weights", [[1, 2], {"weight": "w"}])
    def test_malformed_weights(self, tmp_path: Path, weights: object) -> None:
        """Weights that are not a dict of tensors are a CheckpointError naming the file, not a TypeError later."""
        path = tmp_path / "m.pt"
        torch.save({"format": "asyncloop.model", "version": 1, "model": weights}, path)
        problem = (
            "are a list, not a dict of tensors" if isinstance(weights, list) else "hold 'weight': a str, not a tensor"
        )
        with pytest.raises(
            CheckpointError,
            match=exact(
                f"cannot load {path}: its model weights {problem}; it was not written by asyncloop, or was altered; "
                f"load another checkpoint"
            ),
        ):
            load_model(path, torch.nn.Linear(3, 2))


def test_the_documented_format_loads_with_torch_alone(tmp_path: Path) -> None:
    """A save_model file is {"format", "version", "model": state_dict}; torch.load + load_state_dict loads it."""
    torch.manual_seed(0)
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    save_model(source, tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw.keys() == {"format", "version", "model"} and raw["format"] == "asyncloop.model"
    target.load_state_dict(raw["model"])
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
