"""Access rules (private): the ``Read()``/``Write()`` leaves, tree validation, and the Learner's field table.

A ``state_access`` tree is validated once, when a callback set is analysed: :func:`validate_state_access`
returns it *normalised* (plain ``dict`` nodes, ``str`` keys, :class:`Permission` instances as leaves), and views
and snapshots are only ever compiled from normalised trees (:func:`normalise` does the same for the trees
given to ``Protected(obj, tree)``, whose keys may be any hashable).

:data:`FIELD_TABLE` holds what views and snapshots know about the Learner's top-level fields; every rule that
depends on which field is read (may it be named, is it shared, cloned or copied by a
snapshot) is derived from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._values import ValueClass


class Permission(ValueClass):
    """A leaf of a ``state_access`` tree. Instances of one permission type are equal."""

    __slots__ = ()


class Read(Permission):
    """Read access to a learner field (and everything below it)."""

    __slots__ = ()


class Write(Permission):
    """Read and write access. For conflict analysis a ``Write()`` path is a write, not also a read."""

    __slots__ = ()


# --------------------------------------------------------------------------------------------------------------
# The field table
# --------------------------------------------------------------------------------------------------------------

#: How a snapshot takes a field: ``"share"`` the object itself (the loop only iterates or calls it), ``"clone"``
#: every tensor below it (the loop updates them in place), or ``"copy"`` it with :func:`asyncloop.state.snapshot`.
SnapshotRule = Literal["share", "clone", "copy"]


@dataclass(frozen=True, slots=True)
class FieldFacts:
    """What snapshots know about one field.

    ``snapshot``: how a snapshot takes the field when it is a ``Read()`` leaf (see :data:`SnapshotRule`); a
    ``"share"`` field named with a subtree is copied along that subtree.
    """

    snapshot: SnapshotRule = "copy"


#: The Learner's top-level fields, in the order error messages list them: the only names a ``state_access``
#: tree may hold at its top level.
FIELD_TABLE: dict[str, FieldFacts] = {
    "model": FieldFacts(snapshot="clone"),
    "loss_fn": FieldFacts(snapshot="share"),
    "optimizer": FieldFacts(snapshot="clone"),
    "data": FieldFacts(snapshot="share"),
    "step": FieldFacts(),
    "cbstate": FieldFacts(),
    "callbacks": FieldFacts(snapshot="share"),
    "epoch_data": FieldFacts(snapshot="share"),
}

#: The facts of every other field: keys below the top level, and top-level keys of trees on other objects.
OTHER_FIELD = FieldFacts()

#: The learner fields a ``state_access`` tree may name at its top level.
LEARNER_FIELDS = tuple(FIELD_TABLE)


def field_facts(key: Any, top: bool) -> FieldFacts:
    """The facts of ``key`` in a tree: the table's entry at the top level, :data:`OTHER_FIELD` elsewhere."""
    return FIELD_TABLE.get(key, OTHER_FIELD) if top else OTHER_FIELD


# --------------------------------------------------------------------------------------------------------------
# Validation and normalisation
# --------------------------------------------------------------------------------------------------------------


def validate_state_access(tree: Any, owner: str) -> dict[str, Any]:
    """Check a callback's ``state_access`` tree and return it normalised (see :func:`normalise`).

    Raises ``TypeError`` naming the bad part and the fix: a tree that is not a mapping, a top-level key that
    is not a Learner field, a non-``str`` key, a permission class instead of an instance, any other leaf.
    A tree that is already normalised is returned as it is (the same object), so a class attribute and its
    validated tree share their compiled view.
    """
    if not isinstance(tree, Mapping):
        raise TypeError(
            f"{owner}.state_access must be a dict such as {{'step': {{'loss': Read()}}}}, got {tree!r}"
        )
    for key in tree:
        if key not in FIELD_TABLE:
            raise TypeError(
                f"{owner}.state_access names {key!r}, which is not a Learner field; "
                f"use one of: {', '.join(LEARNER_FIELDS)}"
            )
    return _normalised(tree, owner, "state_access", str_keys=True)


def normalise(tree: Any, owner: str = "Protected", where: str = "perms") -> dict[Any, Any]:
    """``tree`` with every mapping node turned into a plain ``dict`` (the tree itself if it already is one).

    The permission tree of ``Protected(obj, tree)``, which may guard any object: keys may be any hashable (a
    ``state_access`` tree, whose keys must be ``str``, goes through :func:`validate_state_access`). Leaves
    must be permission instances; anything else raises ``TypeError`` as validation does.
    """
    if not isinstance(tree, Mapping):
        raise TypeError(f"{owner}.{where} must be a dict such as {{'step': {{'loss': Read()}}}}, got {tree!r}")
    return _normalised(tree, owner, where, str_keys=False)


def _normalised(tree: Mapping[Any, Any], owner: str, where: str, str_keys: bool) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    same = tree.__class__ is dict  # stays true while no node needs rebuilding: then the tree is returned
    for key, value in tree.items():
        if str_keys and not isinstance(key, str):
            raise TypeError(f"{owner}.{where}[{key!r}]: keys must be strings, got {type(key).__name__}")
        if isinstance(value, Permission):
            out[key] = value
            continue
        here = f"{where}[{key!r}]"
        if isinstance(value, type) and issubclass(value, Permission):
            raise TypeError(f"{owner}.{here} is the class {value.__name__}; use {value.__name__}() instead")
        if not isinstance(value, Mapping):
            raise TypeError(f"{owner}.{here} must be Read(), Write() or a nested dict, got {value!r}")
        child = out[key] = _normalised(value, owner, here, str_keys)
        same = same and child is value
    return tree if same else out  # type: ignore[return-value]  # same: tree is a dict


def accesses(tree: Mapping[str, Any], perm: Permission) -> list[tuple[str, ...]]:
    """Every path in ``tree`` whose leaf is a ``perm``: ``accesses({"x": Read()}, Read()) == [("x",)]``."""
    found: list[tuple[str, ...]] = []

    def walk(node: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, (*prefix, key))
            elif type(value) is type(perm):
                found.append((*prefix, key))

    walk(tree, ())
    return found
