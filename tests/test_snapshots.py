"""Tests for asyncloop._snapshots: snapshot of values, snapshot_tree of state_access paths, OptimizerSnapshot."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
import torch

from asyncloop import History, PropDict, Read, Recorder, TrainingPhase, test_learner
from asyncloop._access import FIELD_TABLE, LEARNER_FIELDS
from asyncloop._containers import PhaseDict
from asyncloop._snapshots import OptimizerSnapshot, TensorPool, snapshot, snapshot_tree

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


class TestFieldTableDrivesSnapshots:
    @pytest.mark.parametrize("field", LEARNER_FIELDS)
    def test_a_read_field_is_shared_cloned_or_copied_as_the_table_says(self, field: str) -> None:
        """A top-level Read() field is shared, has every tensor cloned, or is copied with shared fresh tensors."""
        value = {"t": torch.ones(2)}
        out = snapshot_tree(PropDict({field: value}), {field: Read()})
        rule = FIELD_TABLE[field].snapshot
        if rule == "share":
            assert out[field] is value
        else:
            assert out[field] is not value and torch.equal(out[field]["t"], value["t"])
            assert (out[field]["t"].data_ptr() == value["t"].data_ptr()) is (rule == "copy")

    def test_clone_reaches_every_tensor_below_a_cloned_field(self) -> None:
        """Under model and optimizer, tensors are cloned at every depth of a subtree; elsewhere they are shared."""
        obj = PropDict(model=PropDict(w={"t": torch.ones(2)}), step=PropDict(w={"t": torch.ones(2)}))
        out = snapshot_tree(obj, {"model": {"w": Read()}, "step": {"w": Read()}})
        assert out.model.w["t"].data_ptr() != obj.model.w["t"].data_ptr()
        assert out.step.w["t"].data_ptr() == obj.step.w["t"].data_ptr()

    def test_a_shared_field_named_with_a_subtree_is_copied_along_it(self) -> None:
        """Sharing applies to a Read() leaf: data named with a subtree is copied along that subtree."""
        obj = PropDict(data=PropDict(training=[1, 2]))
        out = snapshot_tree(obj, {"data": {"training": Read()}})
        assert out.data.training == [1, 2] and out.data.training is not obj.data.training

    def test_tensor_leaves_are_detached_or_cloned(self) -> None:
        """A tensor leaf is detached and shared below step, and cloned below model."""
        loss = torch.ones(1, requires_grad=True) * 2
        obj = PropDict(step=PropDict(loss=loss), model=PropDict(c=loss))
        out = snapshot_tree(obj, {"step": {"loss": Read()}, "model": {"c": Read()}})
        assert not out.step.loss.requires_grad and out.step.loss.data_ptr() == loss.data_ptr()
        assert out.model.c.data_ptr() != loss.data_ptr() and torch.equal(out.model.c, loss.detach())

    def test_any_mapping_tree_is_normalised(self) -> None:
        """snapshot_tree of a MappingProxyType tree copies the same paths as the equal dict tree."""
        learner = test_learner(Recorder())
        out = snapshot_tree(learner, MappingProxyType({"cbstate": MappingProxyType({"history": Read(), "nope": Read()})}))
        assert set(out) == {"cbstate"} and set(out.cbstate) == {"history"}
        assert out.cbstate.history is not learner.cbstate.history


# ----------------------------------------------------------------------------------------------------------------
# TensorPool
# ----------------------------------------------------------------------------------------------------------------


class TestTensorPool:
    def _copy(self, pool: TensorPool, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        pool.begin()
        copied = {k: pool.copy(("model", k), v) for k, v in state.items()}
        return copied, pool.end()

    def test_a_recycled_copy_is_reused_for_the_next(self) -> None:
        """After recycle, the next copy writes into the same memory and holds the new values."""
        pool = TensorPool()
        weight = torch.randn(4, 3, requires_grad=True)
        first, buffers = self._copy(pool, {"w": weight})
        assert torch.equal(first["w"], weight) and not first["w"].requires_grad
        assert first["w"].data_ptr() != weight.data_ptr()
        pool.recycle(buffers)
        with torch.no_grad():
            weight.add_(1.0)
        second, _ = self._copy(pool, {"w": weight})
        assert second["w"].data_ptr() == first["w"].data_ptr()
        assert torch.equal(second["w"], weight)

    def test_without_a_recycled_copy_it_allocates(self) -> None:
        """A copy taken while the previous one is still out (not recycled) gets fresh memory."""
        pool = TensorPool()
        weight = torch.randn(5)
        first, _ = self._copy(pool, {"w": weight})
        second, _ = self._copy(pool, {"w": weight})
        assert second["w"].data_ptr() != first["w"].data_ptr() and torch.equal(second["w"], weight)

    def test_a_buffer_that_does_not_fit_is_not_used(self) -> None:
        """A tensor whose shape or dtype changed is cloned, never written into a mismatched buffer."""
        pool = TensorPool()
        first, buffers = self._copy(pool, {"w": torch.randn(5), "v": torch.randn(2)})
        pool.recycle(buffers)
        second, _ = self._copy(pool, {"w": torch.randn(6), "v": torch.randn(2).double()})
        assert second["w"].shape == (6,) and second["v"].dtype == torch.float64
        assert second["w"].data_ptr() != first["w"].data_ptr()
        assert second["v"].data_ptr() != first["v"].data_ptr()

    def test_clear_drops_the_spare_copy(self) -> None:
        """clear() forgets the recycled buffers: the next copy allocates."""
        pool = TensorPool()
        first, buffers = self._copy(pool, {"w": torch.randn(5)})
        pool.recycle(buffers)
        pool.clear()
        second, _ = self._copy(pool, {"w": torch.randn(5)})
        assert second["w"].data_ptr() != first["w"].data_ptr()
