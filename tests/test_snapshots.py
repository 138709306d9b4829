"""Tests for asyncloop._snapshots: snapshot of values, snapshot_tree of state_access paths, OptimizerSnapshot."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from asyncloop import History, PropDict, Read, Recorder, TrainingPhase, test_learner
from asyncloop._containers import PhaseDict
from asyncloop._snapshots import OptimizerSnapshot, snapshot, snapshot_tree

# ----------------------------------------------------------------------------------------------------------------
# snapshot / snapshot_tree
# ----------------------------------------------------------------------------------------------------------------


class TestSnapshot:
    @pytest.mark.parametrize("value", [1, 1.5, "s", True, None])
    def test_immutable_scalars_are_returned_as_is(self, value: Any) -> None:
        """Numbers, strings, bools and None are returned unchanged."""
        assert snapshot(value) is value

    def test_tensor_is_detached_not_copied(self) -> None:
        """A tensor is detached from the graph and shares its storage."""
        t = torch.ones(3, requires_grad=True) * 2
        s = snapshot(t)
        assert not s.requires_grad
        assert s.data_ptr() == t.data_ptr()

    def test_module_is_deep_copied(self) -> None:
        """A module is deep copied: later in-place updates of the original do not show."""
        model = torch.nn.Linear(2, 1)
        s = snapshot(model)
        with torch.no_grad():
            model.weight.add_(1.0)
        assert s is not model
        assert not torch.equal(s.weight, model.weight)

    def test_optimizer_becomes_optimizer_snapshot(self) -> None:
        """An optimizer becomes an OptimizerSnapshot with cloned state and the param groups."""
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        s = snapshot(opt)
        opt.param_groups[0]["lr"] = 0.5
        assert isinstance(s, OptimizerSnapshot)
        assert s.param_groups[0]["lr"] == 0.1
        assert s.state_dict()["param_groups"][0]["lr"] == 0.1
        assert repr(s) == "OptimizerSnapshot(SGD)"

    def test_containers_are_copied_recursively(self) -> None:
        """dicts, lists and tuples are copied, and so are the histories inside them."""
        h = History()
        value = {"a": [h], "b": (h,)}
        s = snapshot(value)
        h.steps = 7
        assert s == {"a": [History()], "b": (History(),)}
        assert s["a"] is not value["a"]

    def test_propdict_is_copied_as_propdict(self) -> None:
        """A PropDict snapshot is a new PropDict."""
        d = PropDict(h=History())
        s = snapshot(d)
        d.h.steps = 3
        d.new = 1
        assert isinstance(s, PropDict)
        assert s == PropDict(h=History())

    def test_phasedict_is_copied_as_phasedict(self) -> None:
        """snapshot(PhaseDict) copies its values and keeps the default factory."""
        d = PhaseDict(History)
        d[TrainingPhase()].steps = 5
        s = snapshot(d)
        d[TrainingPhase()].steps = 6
        assert isinstance(s, PhaseDict)
        assert s[TrainingPhase()].steps == 5
        assert s.default_factory is History

    def test_other_objects_are_shared(self) -> None:
        """Objects snapshot does not know are shared by reference."""
        obj = object()
        assert snapshot(obj) is obj


class TestSnapshotTree:
    def test_copies_only_declared_paths(self) -> None:
        """snapshot_tree copies exactly the declared paths; undeclared and missing keys stay out."""
        learner = test_learner(Recorder())
        out = snapshot_tree(learner, {"model": Read(), "cbstate": {"history": Read(), "nope": Read()}})
        assert set(out) == {"model", "cbstate"}
        assert set(out.cbstate) == {"history"}
        assert out.model is not learner.model
        assert out.cbstate.history is not learner.cbstate.history
        assert torch.equal(out.model.c, learner.model.c)

    def test_shared_top_level_fields(self) -> None:
        """At the top level, data and loss_fn are shared, not copied."""
        learner = test_learner()
        out = snapshot_tree(learner, {"data": Read(), "loss_fn": Read()})
        assert out.data is learner.data
        assert out.loss_fn is learner.loss_fn

    def test_snapshot_does_not_follow_later_changes(self) -> None:
        """Values in a snapshot tree stay as they were when it was taken."""
        learner = test_learner(Recorder())
        out = snapshot_tree(learner, {"cbstate": {"history": Read()}})
        learner.cbstate.history[TrainingPhase()].steps = 4
        assert out.cbstate.history[TrainingPhase()].steps == 0
