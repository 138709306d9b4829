"""Tests for asyncloop._access: Read/Write, validation and normalisation of state_access trees, accesses, the field table."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import pytest

from asyncloop import Read, Write, accesses
from asyncloop._access import (
    FIELD_TABLE,
    LEARNER_FIELDS,
    OTHER_FIELD,
    FieldFacts,
    field_facts,
    normalise,
    validate_state_access,
)
from matchers import exact

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


class _Tree(Mapping):
    """A read-only Mapping that is not a dict (as a hand-built state_access tree might be)."""

    def __init__(self, data: dict[Any, Any]) -> None:
        self._data = data

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class TestNormalisation:
    def test_other_mappings_become_plain_dicts(self) -> None:
        """A tree of MappingProxyType and other Mapping nodes is returned as plain dicts with the same leaves."""
        tree = MappingProxyType({"step": MappingProxyType({"loss": Read()}), "cbstate": _Tree({"history": Write()})})
        out = validate_state_access(tree, "Cb")
        assert type(out) is dict and type(out["step"]) is dict and type(out["cbstate"]) is dict
        assert out == {"step": {"loss": Read()}, "cbstate": {"history": Write()}}

    def test_a_normalised_tree_is_returned_as_it_is(self) -> None:
        """A tree of plain dicts is returned as the same object; a rebuilt tree keeps its plain-dict subtrees."""
        tree = {"step": {"loss": Read()}, "model": Read()}
        assert validate_state_access(tree, "Cb") is tree
        partly = {"step": MappingProxyType({"loss": Read()}), "cbstate": {"history": Read()}}
        out = validate_state_access(partly, "Cb")
        assert out is not partly and out["cbstate"] is partly["cbstate"] and type(out["step"]) is dict

    def test_errors_inside_other_mappings_name_the_path(self) -> None:
        """Validation walks every kind of mapping node and names the bad path as for dicts."""
        message = "Cb.state_access['step']['loss'] is the class Read; use Read() instead"
        with pytest.raises(TypeError, match=exact(message)):
            validate_state_access(MappingProxyType({"step": _Tree({"loss": Read})}), "Cb")

    def test_normalise_keeps_any_hashable_key_and_checks_leaves(self) -> None:
        """normalise (the trees of Protected(obj, tree)) keeps non-str keys but refuses leaves and roots that are
        not permissions or mappings."""
        assert normalise(MappingProxyType({3: Read(), "a b": {"c": Write()}})) == {3: Read(), "a b": {"c": Write()}}
        with pytest.raises(TypeError, match=exact("Protected.perms[3] must be Read(), Write() or a nested dict, got 1")):
            normalise({3: 1})
        with pytest.raises(TypeError, match=exact("Protected.perms['x'] is the class Write; use Write() instead")):
            normalise({"x": Write})
        message = "Protected.perms must be a dict such as {'step': {'loss': Read()}}, got Read()"
        with pytest.raises(TypeError, match=exact(message)):
            normalise(Read())


class TestFieldTable:
    def test_learner_fields_are_the_table_names_in_order(self) -> None:
        """LEARNER_FIELDS is derived from the field table, in the order error messages list the fields."""
        assert LEARNER_FIELDS == tuple(FIELD_TABLE)
        assert LEARNER_FIELDS == ("model", "loss_fn", "optimizer", "data", "step", "cbstate", "callbacks", "epoch_data")

    def test_the_facts_of_each_field(self) -> None:
        """data, epoch_data, loss_fn and callbacks are shared by snapshots, every tensor below model and optimizer
        is cloned, step and cbstate are copied."""
        assert {name: facts.snapshot for name, facts in FIELD_TABLE.items()} == {
            "model": "clone", "loss_fn": "share", "optimizer": "clone", "data": "share",
            "step": "copy", "cbstate": "copy", "callbacks": "share", "epoch_data": "share",
        }

    def test_facts_outside_the_top_level(self) -> None:
        """Below the top level, and for names outside the table, a field has the default facts: copied."""
        assert field_facts("step", top=True) is FIELD_TABLE["step"]
        assert field_facts("step", top=False) is OTHER_FIELD
        assert field_facts("b1", top=True) is OTHER_FIELD
        assert OTHER_FIELD == FieldFacts(snapshot="copy")
