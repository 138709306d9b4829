"""Tests for asyncloop.state: PropDict, History, SeriesHistory, permissions, the Protected view, snapshots."""

from __future__ import annotations

import re

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from asyncloop import History, PropDict, ProtectedError, Read, Recorder, TrainingPhase, Write, accesses, test_learner
from asyncloop.state import (
    LEARNER_FIELDS,
    Gradients,
    OptimizerSnapshot,
    PhaseDict,
    Protected,
    SeriesHistory,
    snapshot,
    snapshot_tree,
    validate_state_access,
)
from matchers import exact


# ----------------------------------------------------------------------------------------------------------------
# PropDict
# ----------------------------------------------------------------------------------------------------------------


class TestPropDict:
    def test_attribute_and_item_access_are_the_same(self) -> None:
        """d.key and d['key'] read and write the same entry."""
        d = PropDict(a=1)
        d.b = 2
        d["c"] = 3
        assert d.a == d["a"] == 1
        assert d["b"] == 2
        assert d.c == 3

    def test_is_a_dict(self) -> None:
        """A PropDict is a dict: keys(), len(), 'in' and equality with dicts work."""
        d = PropDict(a=1, b=2)
        assert isinstance(d, dict)
        assert d == {"a": 1, "b": 2}
        assert list(d.keys()) == ["a", "b"]
        assert "a" in d and len(d) == 2

    def test_missing_attribute_raises_attribute_error(self) -> None:
        """Reading a missing key as an attribute raises AttributeError, so hasattr() is False."""
        d = PropDict()
        with pytest.raises(AttributeError, match=exact("PropDict has no key 'x'")):
            d.x
        assert not hasattr(d, "x")

    def test_missing_item_raises_key_error(self) -> None:
        """Reading a missing key as an item raises KeyError."""
        with pytest.raises(KeyError):
            PropDict()["x"]

    def test_delete_attribute(self) -> None:
        """del d.key removes the key; deleting a missing key raises AttributeError."""
        d = PropDict(a=1)
        del d.a
        assert "a" not in d
        with pytest.raises(AttributeError, match=exact("PropDict has no key 'a'")):
            del d.a

    def test_dir_lists_keys(self) -> None:
        """dir() includes the string keys, for tab completion."""
        assert "loss" in dir(PropDict(loss=1.0))

    def test_repr(self) -> None:
        """repr shows the class name and the contents."""
        assert repr(PropDict(a=1)) == "PropDict({'a': 1})"

    def test_no_instance_attributes_outside_the_dict(self) -> None:
        """Setting an attribute always stores a key; a PropDict has no separate attribute namespace."""
        d = PropDict()
        d.keys_ = 1
        assert d == {"keys_": 1}


# ----------------------------------------------------------------------------------------------------------------
# History, PhaseDict
# ----------------------------------------------------------------------------------------------------------------


class TestHistory:
    def test_defaults_are_zero(self) -> None:
        """A new History has zero epochs, steps and steps_epoch."""
        h = History()
        assert (h.epochs, h.steps, h.steps_epoch) == (0, 0, 0)

    def test_snapshot_is_an_independent_copy(self) -> None:
        """snapshot(History) is an equal copy that later increments do not change."""
        h = History(1, 2, 3)
        s = snapshot(h)
        h.steps += 1
        assert s == History(1, 2, 3)
        assert s is not h


class TestPhaseDict:
    def test_missing_phase_is_created(self) -> None:
        """A PhaseDict creates the default for a phase it has not seen."""
        d = PhaseDict(History)
        assert d[TrainingPhase()] == History()
        assert TrainingPhase() in d

    def test_snapshot_copies_values(self) -> None:
        """snapshot(PhaseDict) copies its values and keeps the default factory."""
        d = PhaseDict(History)
        d[TrainingPhase()].steps = 5
        s = snapshot(d)
        d[TrainingPhase()].steps = 6
        assert isinstance(s, PhaseDict)
        assert s[TrainingPhase()].steps == 5
        assert s.default_factory is History

    def test_repr(self) -> None:
        """repr shows the class name and the contents."""
        d = PhaseDict(History)
        d[TrainingPhase()]
        assert repr(d) == "PhaseDict({TrainingPhase(): History(epochs=0, steps=0, steps_epoch=0)})"


# ----------------------------------------------------------------------------------------------------------------
# SeriesHistory
# ----------------------------------------------------------------------------------------------------------------


class TestSeriesHistory:
    def test_push_last_values_indices(self) -> None:
        """push appends (index, value); last() returns the latest pair, values()/indices() the whole series."""
        h = SeriesHistory()
        h.push("Loss", 1, 0.5)
        h.push("Loss", 2, 0.25)
        assert h.last("Loss") == (2, 0.25)
        assert h.values("Loss") == [0.5, 0.25]
        assert h.indices("Loss") == [1, 2]

    def test_keys_in_first_push_order(self) -> None:
        """keys() lists series names in the order they were first pushed, not sorted."""
        h = SeriesHistory()
        for name in ("Loss", "Zeta", "Accuracy", "Loss"):
            h.push(name, 1, 0.0)
        assert h.keys() == ["Loss", "Zeta", "Accuracy"]
        assert list(h) == ["Loss", "Zeta", "Accuracy"]
        assert len(h) == 3

    def test_contains(self) -> None:
        """'name in h' tells whether a series exists."""
        h = SeriesHistory()
        h.push("Loss", 1, 1.0)
        assert "Loss" in h
        assert "Accuracy" not in h

    def test_tensor_values_read_as_python_numbers(self) -> None:
        """One-element tensors pushed to a series are read back as Python numbers."""
        h = SeriesHistory()
        h.push("Loss", 1, torch.tensor(2.5))
        h.push("Loss", 2, torch.tensor([3.5]))
        assert h.last("Loss") == (2, 3.5)
        assert h.values("Loss") == [2.5, 3.5]
        assert all(type(v) is float for v in h.values("Loss"))

    def test_missing_series_raises_key_error_naming_known_series(self) -> None:
        """last()/values() of an unknown name raise KeyError listing the known names."""
        h = SeriesHistory()
        with pytest.raises(KeyError) as info:
            h.last("Accuracy")
        assert info.value.args == ("no series named 'Accuracy' (known: none)",)
        h.push("Loss", 1, 1.0)
        with pytest.raises(KeyError) as info:
            h.values("Accuracy")
        assert info.value.args == ("no series named 'Accuracy' (known: 'Loss')",)

    def test_repr(self) -> None:
        """repr lists each series with its length."""
        h = SeriesHistory()
        h.push("Loss", 1, 1.0)
        h.push("Loss", 2, 1.0)
        assert repr(h) == "SeriesHistory(Loss: 2)"

    def test_snapshot_is_frozen_and_does_not_see_later_pushes(self) -> None:
        """A snapshot keeps the series as they were; later pushes are invisible to it, and it cannot be pushed."""
        h = SeriesHistory()
        h.push("Loss", 1, 1.0)
        s = snapshot(h)
        h.push("Loss", 2, 2.0)
        h.push("Acc", 2, 0.5)
        assert s.values("Loss") == [1.0]
        assert s.last("Loss") == (1, 1.0)
        assert "Acc" not in s
        frozen = "this SeriesHistory is a read-only snapshot; it cannot be pushed to"
        with pytest.raises(TypeError, match=exact(frozen)):
            s.push("Loss", 3, 3.0)

    def test_state_dict_round_trip(self) -> None:
        """load_state_dict(state_dict()) restores every series, with tensors stored as numbers."""
        h = SeriesHistory()
        h.push("Loss", 1, torch.tensor(1.5))
        h.push("Acc", 1, 0.5)
        state = h.state_dict()
        assert state == {"Loss": ([1], [1.5]), "Acc": ([1], [0.5])}
        g = SeriesHistory()
        g.load_state_dict(state)
        assert g.keys() == ["Loss", "Acc"]
        assert g.last("Loss") == (1, 1.5)
        g.push("Loss", 2, 2.0)
        assert h.values("Loss") == [1.5]


# ----------------------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------------------


class TestGradients:
    @pytest.fixture
    def model(self) -> torch.nn.Module:
        """A linear model whose weight has a gradient and whose bias has none."""
        model = torch.nn.Linear(2, 1)
        model(torch.ones(1, 2)).sum().backward()
        model.bias.grad = None
        return model

    def test_maps_names_to_current_gradients(self, model: torch.nn.Module) -> None:
        """Gradients maps parameter names to their .grad; parameters without a gradient are absent."""
        grads = Gradients(tuple(model.named_parameters()))
        assert list(grads) == ["weight"]
        assert len(grads) == 1
        assert grads["weight"] is model.weight.grad
        assert "bias" not in grads
        with pytest.raises(KeyError):
            grads["bias"]
        assert repr(grads) == "Gradients(weight)"

    def test_one_mapping_per_model_reads_live_gradients(self) -> None:
        """The learner hands out one lazy mapping per model (it reads .grad live); a new model gets a new one."""
        learner = test_learner()
        grads = learner.gradients()
        assert learner.gradients() is grads
        learner.model.c.grad = torch.full_like(learner.model.c, 2.0)
        assert torch.equal(grads["c"], learner.model.c.grad)
        learner.model = torch.nn.Linear(1, 1)
        assert learner.gradients() is not grads
        assert set(learner.gradients()._index) == {"weight", "bias"}

    def test_snapshot_is_a_dict_of_detached_tensors(self, model: torch.nn.Module) -> None:
        """snapshot(Gradients) materialises a plain dict of the current gradients."""
        snap = snapshot(Gradients(tuple(model.named_parameters())))
        assert type(snap) is dict
        assert set(snap) == {"weight"}
        assert torch.equal(snap["weight"], model.weight.grad)


# ----------------------------------------------------------------------------------------------------------------
# Permissions, validation, accesses
# ----------------------------------------------------------------------------------------------------------------


class TestPermission:
    def test_instances_are_values(self) -> None:
        """Read() == Read(), Write() == Write(), Read() != Write(); they hash by type."""
        assert Read() == Read()
        assert Write() == Write()
        assert Read() != Write()
        assert hash(Read()) == hash(Read())

    def test_repr(self) -> None:
        """Permissions repr as constructor calls."""
        assert repr(Read()) == "Read()"
        assert repr(Write()) == "Write()"


class TestValidateStateAccess:
    def test_valid_tree_is_returned_as_dict(self) -> None:
        """A valid tree is returned unchanged, as a dict."""
        tree = {"step": {"loss": Read()}, "cbstate": {"history": Write()}, "model": Read()}
        assert validate_state_access(tree, "Cb") == tree

    def test_empty_tree_is_valid(self) -> None:
        """The default empty tree (no access) is valid."""
        assert validate_state_access({}, "Cb") == {}

    def test_every_learner_field_is_accepted(self) -> None:
        """Every name in LEARNER_FIELDS may appear at the top level."""
        assert validate_state_access({f: Read() for f in LEARNER_FIELDS}, "Cb")

    def test_not_a_dict(self) -> None:
        """A tree that is not a mapping (e.g. FluxTraining's missing-comma mistake) is rejected."""
        message = "Cb.state_access must be a dict such as {'step': {'loss': Read()}}, got Read()"
        with pytest.raises(TypeError, match=exact(message)):
            validate_state_access(Read(), "Cb")

    def test_unknown_top_level_field(self) -> None:
        """A top-level key that is not a Learner field is rejected, listing the valid fields."""
        with pytest.raises(
            TypeError,
            match=exact(
                "Cb.state_access names 'foo', which is not a Learner field; use one of: model, loss_fn, "
                "optimizer, data, step, cbstate, callbacks, epoch_data"
            ),
        ):
            validate_state_access({"foo": Read()}, "Cb")

    def test_permission_class_instead_of_instance(self) -> None:
        """Read instead of Read() is rejected with the fix."""
        message = "Cb.state_access['step']['loss'] is the class Read; use Read() instead"
        with pytest.raises(TypeError, match=exact(message)):
            validate_state_access({"step": {"loss": Read}}, "Cb")

    def test_bad_leaf(self) -> None:
        """A leaf that is neither a permission nor a dict is rejected."""
        message = "Cb.state_access['model'] must be Read(), Write() or a nested dict, got True"
        with pytest.raises(TypeError, match=exact(message)):
            validate_state_access({"model": True}, "Cb")

    def test_non_string_key(self) -> None:
        """Nested keys must be strings."""
        with pytest.raises(TypeError, match=exact("Cb.state_access['cbstate'][1]: keys must be strings, got int")):
            validate_state_access({"cbstate": {1: Read()}}, "Cb")


class TestAccesses:
    def test_flat(self) -> None:
        """accesses lists the paths whose leaf is the given permission."""
        assert accesses({"x": Read()}, Read()) == [("x",)]

    def test_nested_paths(self) -> None:
        """Nested dicts produce paths with their prefix."""
        tree = {"step": {"xs": Write(), "ys": Write()}, "cbstate": {"history": Read()}}
        assert accesses(tree, Write()) == [("step", "xs"), ("step", "ys")]
        assert accesses(tree, Read()) == [("cbstate", "history")]

    def test_write_is_not_a_read_for_analysis(self) -> None:
        """A Write() path is not listed as a Read() path."""
        assert accesses({"model": Write()}, Read()) == []

    def test_empty(self) -> None:
        """An empty tree has no accesses."""
        assert accesses({}, Read()) == []


# ----------------------------------------------------------------------------------------------------------------
# Protected (seed cases #1-#4 and the rules of section C)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class C:
    x: int
    y: int


@dataclass
class B:
    c: C


@dataclass
class A:
    b1: B
    b2: B


@pytest.fixture
def a() -> A:
    return A(b1=B(C(1, 2)), b2=B(C(3, 4)))


class TestProtectedSeedCases:
    def test_fully_protected(self, a: A) -> None:
        """Seed #1: with no permissions, reading a field raises ProtectedError."""
        p = Protected(a, {})
        with pytest.raises(ProtectedError, match=exact("Read access to A.b1 disallowed.")):
            p.b1

    def test_read_direct_child(self, a: A) -> None:
        """Seed #2: Read() on a field allows reading it but not assigning it."""
        p = Protected(a, {"b1": Read()})
        assert p.b1 is a.b1
        with pytest.raises(ProtectedError, match=exact("Write access to A.b1 disallowed.")):
            p.b1 = B(C(5, 5))
        assert a.b1 == B(C(1, 2))

    def test_write_direct_child(self, a: A) -> None:
        """Seed #3: Write() on a field allows reading and assigning it."""
        p = Protected(a, {"b1": Write()})
        assert p.b1 is a.b1
        p.b1 = B(C(5, 5))
        assert a.b1 == B(C(5, 5))

    def test_write_nested(self, a: A) -> None:
        """Seed #4: a nested tree gives nested views; only the granted leaf is writable."""
        p = Protected(a, {"b1": {"c": {"x": Write()}}})
        p.b1.c.x = 2
        assert p.b1.c.x == 2
        assert a.b1.c.x == 2
        assert isinstance(p.b1.c, Protected)
        with pytest.raises(ProtectedError, match=exact("Write access to C.y disallowed.")):
            p.b1.c.y = 2
        with pytest.raises(ProtectedError, match=exact("Read access to C.y disallowed.")):
            p.b1.c.y


class TestProtected:
    def test_learner_style_message(self) -> None:
        """The view of a learner names it 'Learner' in errors, as in FluxTraining."""
        learner = test_learner()
        p = Protected(learner, {"step": Read()}, "Learner")
        with pytest.raises(ProtectedError, match=exact("Read access to Learner.model disallowed.")):
            p.model
        with pytest.raises(ProtectedError, match=exact("Write access to Learner.step disallowed.")):
            p.step = PropDict()

    def test_partial_subtree_cannot_be_replaced(self, a: A) -> None:
        """Holding a nested tree on a field does not allow assigning the field itself."""
        p = Protected(a, {"b1": {"c": {"x": Write()}}})
        with pytest.raises(ProtectedError, match=exact("Write access to A.b1 disallowed.")):
            p.b1 = B(C(0, 0))

    def test_hasattr_is_false_for_disallowed_fields(self, a: A) -> None:
        """ProtectedError is an AttributeError, so hasattr() is False for fields outside the tree."""
        assert not hasattr(Protected(a, {}), "b1")

    def test_delete_needs_write(self) -> None:
        """Deleting an attribute needs Write(), like assigning it."""
        d = PropDict(x=1, y=2)
        p = Protected(d, {"x": Write(), "y": Read()})
        del p.x
        assert "x" not in d
        with pytest.raises(ProtectedError, match=exact("Write access to PropDict.y disallowed.")):
            del p.y

    def test_item_access_follows_the_same_rules(self) -> None:
        """p[k] and p[k] = v are checked like attributes, with bracketed messages."""
        d = PropDict(x=1, y=2)
        p = Protected(d, {"x": Write(), "y": Read()})
        assert p["y"] == 2
        p["x"] = 10
        assert d.x == 10
        with pytest.raises(ProtectedError, match=exact("Write access to PropDict['y'] disallowed.")):
            p["y"] = 3
        with pytest.raises(ProtectedError, match=exact("Read access to PropDict['z'] disallowed.")):
            p["z"]

    def test_read_on_a_dict_gives_a_read_only_view(self) -> None:
        """Read() on a dict returns a view that can be read at any depth but not written (the shallow hole closed)."""
        d = PropDict(step=PropDict(loss=1.0, inner={"k": 1}))
        p = Protected(d, {"step": Read()})
        assert p.step.loss == 1.0
        assert p.step["inner"]["k"] == 1
        with pytest.raises(ProtectedError, match=exact("Write access to PropDict.loss disallowed.")):
            p.step.loss = 2.0
        with pytest.raises(ProtectedError, match=exact("Write access to dict['k'] disallowed.")):
            p.step.inner["k"] = 2
        assert d.step.loss == 1.0

    def test_write_on_a_dict_returns_it_raw(self) -> None:
        """Write() on a dict hands out the dict itself, which may be mutated."""
        inner = PropDict(a=1)
        p = Protected(PropDict(box=inner), {"box": Write()})
        assert p.box is inner
        p.box.a = 2
        assert inner.a == 2

    def test_read_on_a_non_dict_returns_the_object(self) -> None:
        """Read() on a non-dict object (tensor, module) returns the object itself."""
        model = torch.nn.Linear(1, 1)
        p = Protected(PropDict(model=model), {"model": Read()})
        assert p.model is model

    def test_get_checks_permission_and_defaults(self) -> None:
        """get(k, default) returns default for a missing key but still refuses keys outside the tree."""
        p = Protected(PropDict(x=1), {"x": Read(), "y": Read()})
        assert p.get("x") == 1
        assert p.get("y", 5) == 5
        with pytest.raises(ProtectedError, match=exact("Read access to PropDict['z'] disallowed.")):
            p.get("z")

    def test_membership_length_iteration_are_unchecked(self) -> None:
        """'in', len(), iteration and keys() pass through without permission checks (FluxTraining's haskey)."""
        d = PropDict(x=1, secret=2)
        p = Protected(d, {})
        assert "secret" in p
        assert len(p) == 2
        assert list(p) == ["x", "secret"]
        assert list(p.keys()) == ["x", "secret"]

    def test_repr(self) -> None:
        """repr names the object and the permission tree."""
        assert repr(Protected(PropDict(), {"x": Read()}, "Learner")) == "Protected(Learner, {'x': Read()})"


class TestCompiledViews:
    """A tree's declared fields are properties of a per-tree subclass: same rules, faster reads."""

    def test_a_view_is_a_protected_of_a_class_shared_by_equal_trees(self) -> None:
        """Protected(obj, tree) is a Protected; two trees of the same shape share one compiled class."""
        p = Protected(PropDict(x=1), {"x": Read(), "y": {"z": Write()}})
        q = Protected(PropDict(x=2), {"x": Read(), "y": {"z": Write()}})
        assert isinstance(p, Protected) and type(p) is type(q)
        assert type(p) is not type(Protected(PropDict(x=1), {"x": Write()}))
        assert "x" in vars(type(p)) and "y" in vars(type(p))

    def test_declared_fields_follow_the_rules_and_undeclared_ones_still_raise(self) -> None:
        """Write leaves give the raw value, Read leaves read-only views of dicts, subtrees nested views."""
        box, inner = PropDict(a=1), PropDict(k=PropDict(v=1), secret=2)
        p = Protected(PropDict(box=box, ro=PropDict(loss=1.0), inner=inner), {"box": Write(), "ro": Read(), "inner": {"k": Read()}}, "Learner")
        assert p.box is box
        assert p.ro.loss == 1.0
        with pytest.raises(ProtectedError, match=exact("Write access to PropDict.loss disallowed.")):
            p.ro.loss = 2.0
        assert p.inner.k.v == 1
        with pytest.raises(ProtectedError, match=exact("Read access to PropDict.secret disallowed.")):
            p.inner.secret
        with pytest.raises(ProtectedError, match=exact("Read access to Learner.model disallowed.")):
            p.model
        with pytest.raises(ProtectedError, match=exact("Write access to Learner.ro disallowed.")):
            p.ro = PropDict()

    def test_a_missing_declared_key_is_an_attribute_error(self) -> None:
        """A declared field the object does not hold raises AttributeError (so hasattr is False)."""
        p = Protected(PropDict(), {"x": Read(), "y": Write(), "z": {"w": Read()}})
        assert not hasattr(p, "x") and not hasattr(p, "y") and not hasattr(p, "z")

    def test_nested_views_follow_a_replaced_field(self) -> None:
        """A nested view is cached only while the field holds the same object: a replaced field is seen at once."""
        obj = PropDict(cbstate=PropDict(history=PropDict(n=1)))
        p = Protected(obj, {"cbstate": {"history": Read()}})
        assert p.cbstate is p.cbstate
        obj.cbstate = PropDict(history=PropDict(n=2))
        assert p.cbstate.history.n == 2

    def test_reading_step_does_not_keep_the_previous_step_alive(self) -> None:
        """Views of learner.step are not cached: once the loop replaces the step, its tensors can be freed."""
        import gc
        import weakref

        obj = PropDict(step=PropDict(loss=torch.ones(1)))
        p = Protected(obj, {"step": {"loss": Read()}})
        gone = weakref.ref(p.step.loss)
        obj.step = PropDict(loss=torch.zeros(1))
        gc.collect()
        assert gone() is None
        assert p.step.loss.item() == 0.0

    def test_trees_with_unusual_keys_still_work(self) -> None:
        """Keys that are not identifiers, or name a view method, are checked by the generic path."""
        d = {"not an identifier": 1, "get": 2, 3: 4}
        p = Protected(d, {"not an identifier": Read(), "get": Read(), 3: Read()})
        assert p["not an identifier"] == 1 and p[3] == 4 and p.get("get") == 2


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


class TestReadOnlyViewMutators:
    def test_read_only_dict_view_refuses_mutating_methods(self) -> None:
        """A Read() view of a plain dict (e.g. a PhaseDict) refuses clear/pop/update/setdefault."""
        from asyncloop.state import History, PhaseDict, PropDict, Protected, Read
        from asyncloop._exceptions import ProtectedError

        view = Protected(PropDict(cbstate=PropDict(history=PhaseDict(History))), {"cbstate": {"history": Read()}})
        for name in ("clear", "pop", "popitem", "update", "setdefault"):
            with pytest.raises(ProtectedError, match="^" + re.escape(f"Write access to PhaseDict.{name} disallowed.") + "$"):
                getattr(view.cbstate.history, name)
        assert list(view.cbstate.history.keys()) == []

    def test_view_attributes_come_before_keys_and_missing_keys_are_attribute_errors(self) -> None:
        """On a Read() view of a PropDict the view's own methods win over same-named keys (use view[key] for
        those); a missing key is an AttributeError, so hasattr() is False; nested dicts are read-only too."""
        from asyncloop._exceptions import ProtectedError

        step = PropDict(loss=1.0, get="a key named get", inner={"k": 1})
        view = Protected(PropDict(step=step), {"step": Read()}).step
        assert view.loss == 1.0
        assert callable(view.get) and view["get"] == "a key named get" and view.get("loss") == 1.0
        assert not hasattr(view, "preds")
        with pytest.raises(AttributeError, match=exact("PropDict has no key 'preds'")):
            view.preds
        with pytest.raises(ProtectedError, match=exact("Write access to dict['k'] disallowed.")):
            view.inner["k"] = 2
        assert "loss" in view and len(view) == 3 and list(view) == ["loss", "get", "inner"]
        assert isinstance(view, Protected) and repr(view) == "Protected(PropDict, {})"
