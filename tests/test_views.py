"""Tests for asyncloop._views: the Protected view (seed cases, rules), compiled views, read-only views."""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType

import pytest
import torch

from asyncloop import (
    Callback,
    History,
    PropDict,
    ProtectedError,
    Read,
    StepEnd,
    TrainingPhase,
    Write,
    test_learner,
)
from asyncloop._access import LEARNER_FIELDS, validate_state_access
from asyncloop._containers import PhaseDict
from asyncloop._views import Protected
from matchers import exact

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
        """A nested view is built per read: a replaced field is seen at once."""
        obj = PropDict(cbstate=PropDict(history=PropDict(n=1)))
        p = Protected(obj, {"cbstate": {"history": Read()}})
        assert p.cbstate.history.n == 1
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
        """Keys that are not identifiers, or name a view method, are read through view[key] and view.get(key)."""
        d = {"not an identifier": 1, "get": 2, 3: 4}
        p = Protected(d, {"not an identifier": Read(), "get": Read(), 3: Read()})
        assert p["not an identifier"] == 1 and p[3] == 4 and p.get("get") == 2


class TestReadOnlyViewMutators:
    def test_read_only_dict_view_refuses_mutating_methods(self) -> None:
        """A Read() view of a plain dict (e.g. a PhaseDict) refuses clear/pop/update/setdefault."""
        view = Protected(PropDict(cbstate=PropDict(history=PhaseDict(History))), {"cbstate": {"history": Read()}})
        for name in ("clear", "pop", "popitem", "update", "setdefault"):
            with pytest.raises(ProtectedError, match="^" + re.escape(f"Write access to PhaseDict.{name} disallowed.") + "$"):
                getattr(view.cbstate.history, name)
        assert list(view.cbstate.history.keys()) == []

    def test_view_attributes_come_before_keys_and_missing_keys_are_attribute_errors(self) -> None:
        """On a Read() view of a PropDict the view's own methods win over same-named keys (use view[key] for
        those); a missing key is an AttributeError, so hasattr() is False; nested dicts are read-only too."""
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


class TestOneViewRule:
    """Every view is compiled from a normalised tree; one reader per declared field says how it is handed out."""

    def test_a_validated_tree_is_the_tree_views_use(self) -> None:
        """The runners' views hold the tree validation returned, and every nested view is compiled too."""
        tree = validate_state_access(MappingProxyType({"cbstate": MappingProxyType({"history": Read()})}), "Cb")
        view = Protected(PropDict(cbstate=PropDict(history=PropDict(n=1))), tree, "Learner")
        assert view._perms is tree
        assert type(view) is not Protected and "cbstate" in vars(type(view))
        assert view.cbstate._perms == tree["cbstate"] and type(view.cbstate._perms) is dict
        assert "history" in vars(type(view.cbstate))
        assert view.cbstate.history.n == 1

    def test_any_mapping_is_normalised_into_the_same_compiled_class(self) -> None:
        """Protected(obj, mapping) normalises the mapping: same class and same rules as the equal dict tree."""
        proxy = MappingProxyType({"x": Read(), "y": MappingProxyType({"z": Write()})})
        obj = PropDict(x=1, y=PropDict(z=2))
        p = Protected(obj, proxy)
        assert type(p) is type(Protected(PropDict(), {"x": Read(), "y": {"z": Write()}}))
        assert type(p._perms) is dict and type(p._perms["y"]) is dict
        assert p.x == 1 and p.y.z == 2
        p.y.z = 3
        assert obj.y.z == 3
        with pytest.raises(ProtectedError, match=exact("Read access to PropDict.w disallowed.")):
            p.w
        with pytest.raises(ProtectedError, match=exact("Write access to PropDict.x disallowed.")):
            p.x = 0
        assert repr(p) == "Protected(PropDict, {'x': Read(), 'y': {'z': Write()}})"

    def test_a_bad_tree_is_refused_when_the_view_is_built(self) -> None:
        """A leaf that is not a permission raises TypeError at Protected(...), not at the first read."""
        with pytest.raises(TypeError, match=exact("Protected.perms['x'] must be Read(), Write() or a nested dict, got 1")):
            Protected(PropDict(), {"x": 1})

    def test_callback_snapshot_views_the_normalised_tree(self) -> None:
        """Callback.snapshot of a MappingProxyType state_access hands out a compiled view of the normalised tree."""

        class Reader(Callback):
            state_access = MappingProxyType({"step": MappingProxyType({"loss": Read()})})

        learner = test_learner()
        learner.step = PropDict(loss=torch.ones(1))
        view = Reader().snapshot(StepEnd(), TrainingPhase(), learner)
        assert view._perms == {"step": {"loss": Read()}} and type(view._perms["step"]) is dict
        assert "step" in vars(type(view)) and "loss" in vars(type(view.step))
        assert torch.equal(view.step.loss, torch.ones(1))
        with pytest.raises(ProtectedError, match=exact("Read access to Learner.model disallowed.")):
            view.model

    def test_item_get_and_getattr_use_the_field_reader(self) -> None:
        """view[key], view.get(key) and getattr(view, key) hand out what the property does: a view of the field."""
        history = PropDict(n=1)
        p = Protected(PropDict({"cbstate": PropDict(history=history), "a b": {"k": 1}}), {"cbstate": {"history": Read()}, "a b": Read()})
        assert p["cbstate"]._obj is p.cbstate._obj is p.get("cbstate")._obj
        assert type(p["cbstate"]) is type(p.cbstate) is type(p.get("cbstate"))
        assert p["cbstate"]["history"].n == 1
        inner = getattr(p, "a b")
        assert inner["k"] == 1 and isinstance(inner, Protected)
        with pytest.raises(ProtectedError, match=exact("Write access to dict['k'] disallowed.")):
            inner["k"] = 2


class TestFieldTableDrivesViews:
    @pytest.mark.parametrize("field", LEARNER_FIELDS)
    def test_no_view_keeps_a_replaced_field_alive(self, field: str) -> None:
        """Views of every field are built per read: once the field is replaced, its old object can be freed."""
        import gc
        import weakref

        obj = PropDict({field: PropDict(x=torch.ones(1))})
        for tree in ({field: {"x": Read()}}, {field: Read()}):
            p = Protected(obj, tree)
            gone = weakref.ref(getattr(p, field).x)
            obj[field] = PropDict(x=torch.zeros(1))
            gc.collect()
            assert gone() is None
            assert getattr(p, field).x.item() == 0.0
            obj[field] = PropDict(x=torch.ones(1))

    def test_a_missing_declared_key_is_the_objects_attribute_error(self) -> None:
        """Reading a declared but absent field raises the PropDict's AttributeError, not ProtectedError."""
        p = Protected(PropDict(), {"x": Read()})
        with pytest.raises(AttributeError, match=exact("PropDict has no key 'x'")) as info:
            p.x
        assert not isinstance(info.value, ProtectedError)


class TestReadOnlyViewItems:
    def test_a_missing_phase_reads_the_default_without_inserting_it(self) -> None:
        """view[key] of a read-only PhaseDict view returns the default of a missing key and leaves the dict as it was."""
        history = PhaseDict(History)
        view = Protected(PropDict(history=history), {"history": Read()}).history
        assert view[TrainingPhase()] == History()
        assert TrainingPhase() not in history
        assert view.get(TrainingPhase()) is None

    def test_non_mutating_methods_of_a_plain_dict_are_reachable(self) -> None:
        """A read-only view of a plain dict hands out its non-mutating methods (items, values) as they are."""
        view = Protected(PropDict(step=PropDict(inner={"k": 1})), {"step": Read()}).step.inner
        assert list(view.items()) == [("k", 1)] and list(view.values()) == [1]
