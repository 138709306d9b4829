"""Model weights alone: :func:`save_model` / :func:`load_model` (``asyncloop.save_model`` / ``load_model``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ._checkpoint import FORMAT, VERSION
from ._checkpoint_files import read_checkpoint
from ._durable import save_file
from ._exceptions import CheckpointError
from ._plaindata import a_type, malformed

MODEL_FORMAT = "asyncloop.model"


def save_model(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Save the weights of ``model`` (its ``state_dict``, on the CPU) to ``path``, atomically.

    Only tensors are saved, never code: rebuild the model and call :func:`load_model` to load them. The file holds
    ``{"format": "asyncloop.model", "version": 1, "model": state_dict}``; with torch alone,
    ``model.load_state_dict(torch.load(path, weights_only=True)["model"])`` loads it.

    Example::

        save_model(learner.model, "model.pt")
        model = load_model("model.pt", MyModel())
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"save_model saves a torch.nn.Module's weights, got {type(model).__name__}")
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_file({"format": MODEL_FORMAT, "version": VERSION, "model": weights}, path)


def load_model(path: str | os.PathLike[str], model: torch.nn.Module | None = None) -> Any:
    """Load weights saved by :func:`save_model` (or the model of a training checkpoint) without unpickling code.

    With ``model``, load the weights into it (strictly) and return it; without, return the ``state_dict``.
    A file that is not such weights, or whose weights are not a dict of tensors, raises :class:`CheckpointError`
    naming it.

    Example::

        model = load_model("model.pt", MyModel())   # weights written by save_model
        weights = load_model("checkpoints")          # the model of a Checkpointer folder's latest checkpoint
    """
    data = read_checkpoint(path)
    if not isinstance(data, Mapping) or data.get("format") not in (MODEL_FORMAT, FORMAT) or "model" not in data:
        raise CheckpointError(
            f"{path} holds no asyncloop model weights; was it written by save_model or a Checkpointer?"
        )
    weights = data["model"]
    if not isinstance(weights, Mapping):
        raise malformed(str(path), f"its model weights are {a_type(weights)}, not a dict of tensors")
    for name, value in weights.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise malformed(str(path), f"its model weights hold {name!r}: {a_type(value)}, not a tensor")
    if model is None:
        return weights
    model.load_state_dict(weights)
    return model
