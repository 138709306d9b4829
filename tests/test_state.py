"""Tests for the asyncloop.state facade: it re-exports the public state names of the private modules."""

from __future__ import annotations

import pytest

import asyncloop
from asyncloop import PropDict, Read, _access, _containers, _snapshots, _views, state

#: Each public name of asyncloop.state and the private module that defines it.
PUBLIC = {
    "PropDict": _containers,
    "History": _containers,
    "PhaseDict": _containers,
    "SeriesHistory": _containers,
    "Permission": _access,
    "Read": _access,
    "Write": _access,
    "Protected": _views,
    "accesses": _access,
    "snapshot": _snapshots,
}


def test_all_lists_exactly_the_public_names() -> None:
    """asyncloop.state.__all__ holds the public state names, once each."""
    assert sorted(state.__all__) == sorted(PUBLIC)
    assert len(set(state.__all__)) == len(state.__all__)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_names_are_the_private_modules_objects(name: str) -> None:
    """Each facade name is the very object its private module defines (and the top level's, where exported)."""
    obj = getattr(state, name)
    assert obj is getattr(PUBLIC[name], name)
    if name in asyncloop.__all__:
        assert obj is getattr(asyncloop, name)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_names_report_a_public_module(name: str) -> None:
    """A name exported at the top level reports asyncloop as its module, every other one asyncloop.state."""
    expected = "asyncloop" if name in asyncloop.__all__ else "asyncloop.state"
    assert getattr(state, name).__module__ == expected


def test_compiled_views_report_the_facade() -> None:
    """A compiled view class is named Protected and reports asyncloop.state, as Protected does."""
    cls = type(state.Protected(PropDict(), {"x": Read()}))
    assert (cls.__name__, cls.__qualname__, cls.__module__) == ("Protected", "Protected", "asyncloop.state")


def test_kernel_names_are_not_part_of_the_facade() -> None:
    """Kernel helpers live only in the private modules: the facade does not re-export them."""
    for name in ("LEARNER_FIELDS", "FIELD_TABLE", "validate_state_access", "snapshot_tree", "OptimizerSnapshot",
                 "Gradients", "_view", "_clone_tree"):
        assert not hasattr(state, name)


def test_star_import_binds_all() -> None:
    """'from asyncloop.state import *' binds exactly __all__."""
    namespace: dict[str, object] = {}
    exec("from asyncloop.state import *", namespace)  # noqa: S102
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(state.__all__)
