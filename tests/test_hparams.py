"""Tests for asyncloop.logging._hparams: flattening a run's configuration and the HParams loggable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matchers import exact

from asyncloop.logging import HParams
from asyncloop.logging._hparams import flatten_config, optimizer_hparams


def params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2))]


class TestFlattenConfig:
    def test_nested_dicts_become_slash_keys(self) -> None:
        """Nested mappings flatten to 'a/b' keys, numbers, bools and str stay, the rest becomes its str."""
        config = {"lr": 0.1, "model": {"width": 64, "act": "relu", "deep": {"n": 2}}, "betas": (0.9, 0.99),
                  "flag": True, "none": None, "np": np.float32(0.5), "t": torch.tensor(3), "empty": {}}
        assert flatten_config(config) == {
            "lr": 0.1, "model/width": 64, "model/act": "relu", "model/deep/n": 2, "betas": "(0.9, 0.99)",
            "flag": True, "none": "None", "np": 0.5, "t": 3, "empty": "{}"}

    def test_a_tensor_of_many_values_is_stringified(self) -> None:
        """A tensor with several elements is not a number: it becomes its str."""
        assert flatten_config({"w": torch.zeros(2)}) == {"w": str(torch.zeros(2))}

    def test_not_a_mapping(self) -> None:
        """A config that is not a mapping is a TypeError that says what to pass."""
        with pytest.raises(TypeError, match=exact(
                "config must be a dict of the run's settings, e.g. {'lr': 0.1, 'model': {'width': 64}}; got list. "
                "Pass vars(args) for argparse or dataclasses.asdict(cfg) for a dataclass")):
            flatten_config([("lr", 0.1)])  # type: ignore[arg-type]

    def test_colliding_keys(self) -> None:
        """Two entries that flatten to one key are a ValueError."""
        with pytest.raises(ValueError, match=exact("two config entries flatten to the key 'a/b': rename one of them")):
            flatten_config({"a/b": 1, "a": {"b": 2}})


class TestOptimizerHparams:
    def test_one_group(self) -> None:
        """One param group gives optimizer/<key>, without params and the implementation switches."""
        flat = optimizer_hparams(torch.optim.Adam(params(), lr=0.01, weight_decay=0.1))
        assert flat["optimizer/type"] == "Adam"
        assert flat["optimizer/lr"] == 0.01
        assert flat["optimizer/betas"] == "(0.9, 0.999)"
        assert flat["optimizer/weight_decay"] == 0.1
        assert not {"optimizer/params", "optimizer/foreach", "optimizer/fused"} & set(flat)

    def test_several_groups_and_optimizers(self) -> None:
        """Several groups are numbered; a dict of optimizers is keyed by its names."""
        sgd = torch.optim.SGD([{"params": params(), "lr": 0.1}, {"params": params(), "lr": 0.2}], momentum=0.9)
        flat = optimizer_hparams({"generator": sgd})
        assert flat["optimizer/generator/type"] == "SGD"
        assert (flat["optimizer/generator/0/lr"], flat["optimizer/generator/1/lr"]) == (0.1, 0.2)
        assert flat["optimizer/generator/1/momentum"] == 0.9

    def test_no_optimizer(self) -> None:
        """None or an object without param groups gives nothing."""
        assert optimizer_hparams(None) == {}
        assert optimizer_hparams(object()) == {}


class TestHParams:
    def test_start_and_end(self) -> None:
        """Without metrics it marks the run's start; with them its end; encode() is plain msgpack types."""
        start = HParams({"lr": 0.1, "m": {"w": 2}})
        assert not start.is_end
        assert start.encode() == {"hparams": {"lr": 0.1, "m/w": 2}, "metrics": None}
        end = HParams({"lr": 0.1}, {"ValidationPhase/Loss": 1})
        assert end.is_end
        assert end.encode() == {"hparams": {"lr": 0.1}, "metrics": {"ValidationPhase/Loss": 1.0}}
        assert HParams.kind == "hparams"
        assert repr(end) == "HParams(1 values, metrics={'ValidationPhase/Loss': 1.0})"
