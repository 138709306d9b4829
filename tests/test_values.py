"""Tests for asyncloop._values: value classes, equal and hashed by type."""

from __future__ import annotations

import types

from asyncloop import StepEnd, TrainingPhase, ValidationPhase
from asyncloop._values import ValueClass


def test_instances_of_one_class_are_equal_and_hash_as_the_class() -> None:
    """Two instances of a value class are equal and hash as their class, so either keys a dict for the other;
    instances of different classes differ."""
    assert TrainingPhase() == TrainingPhase() and hash(TrainingPhase()) == hash(TrainingPhase)
    assert {TrainingPhase(): 1}[TrainingPhase()] == 1
    assert TrainingPhase() != ValidationPhase() and hash(StepEnd()) == hash(StepEnd)


def test_the_hash_of_a_subclass_is_a_constant_from_c() -> None:
    """A subclass that defines neither ``__eq__`` nor ``__hash__`` hashes without a Python call (a C
    method returning its class's hash), subclasses of subclasses too."""

    class Mine(ValueClass):
        __slots__ = ()

    class Deeper(Mine):
        __slots__ = ()

    for cls in (Mine, Deeper):
        assert isinstance(cls.__dict__["__hash__"], staticmethod)
        assert not isinstance(cls.__dict__["__hash__"].__func__, types.FunctionType)  # no Python frame
        assert hash(cls()) == hash(cls) and hash(cls()) == hash(cls())
    assert hash(Mine()) != hash(Deeper())


def test_a_subclass_with_its_own_equality_keeps_its_own_hash() -> None:
    """A subclass that defines ``__eq__`` (and so ``__hash__``, or Python's ``None``) is left as it wrote it."""

    class Keyed(ValueClass):
        def __init__(self, key: int) -> None:
            self.key = key

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Keyed) and other.key == self.key

        def __hash__(self) -> int:
            return hash(self.key)

    class Unhashable(ValueClass):
        def __eq__(self, other: object) -> bool:
            return self is other

    assert hash(Keyed(7)) == hash(7) and Keyed(7) == Keyed(7) and Keyed(7) != Keyed(8)
    assert Unhashable.__hash__ is None
