"""Tests for asyncloop._access: Read/Write, validation and normalisation of state_access trees, accesses, the field table."""

from __future__ import annotations

import pytest

from asyncloop import Read, Write, accesses
from asyncloop._access import LEARNER_FIELDS, validate_state_access
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
