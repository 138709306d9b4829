"""Tests for asyncloop.events: event value classes and their hierarchy."""

from __future__ import annotations

import pytest

from asyncloop import events
from asyncloop.events import (
    BackwardBegin,
    BackwardEnd,
    EpochBegin,
    EpochEnd,
    Event,
    FitBegin,
    FitEnd,
    LossBegin,
    StepBegin,
    StepEnd,
)

ALL_EVENTS = [FitBegin, FitEnd, EpochBegin, EpochEnd, StepBegin, LossBegin, BackwardBegin, BackwardEnd, StepEnd]


class TestEvent:
    @pytest.mark.parametrize("cls", ALL_EVENTS)
    def test_builtin_events_subclass_event(self, cls: type[Event]) -> None:
        """Every built-in event is a subclass of Event."""
        assert issubclass(cls, Event)

    @pytest.mark.parametrize("cls", ALL_EVENTS)
    def test_instances_are_equal_and_hash_equal(self, cls: type[Event]) -> None:
        """Two instances of one event type are equal and hash the same, so they can key dicts."""
        assert cls() == cls()
        assert hash(cls()) == hash(cls())
        assert {cls(): 1}[cls()] == 1

    def test_different_event_types_are_not_equal(self) -> None:
        """Instances of different event types are never equal."""
        assert StepBegin() != StepEnd()
        assert EpochBegin() != EpochEnd()
        assert len({cls() for cls in ALL_EVENTS}) == len(ALL_EVENTS)

    def test_event_is_not_equal_to_other_objects(self) -> None:
        """An event does not compare equal to its class or to unrelated objects."""
        assert StepEnd() != StepEnd
        assert StepEnd() != "StepEnd()"
        assert StepEnd() != None  # noqa: E711

    @pytest.mark.parametrize("cls", ALL_EVENTS)
    def test_repr_is_constructor_call(self, cls: type[Event]) -> None:
        """repr(Event()) reads like the constructor call, e.g. 'StepEnd()'."""
        assert repr(cls()) == f"{cls.__name__}()"

    def test_events_have_no_instance_dict(self) -> None:
        """Events use __slots__ and carry no per-instance state."""
        with pytest.raises(AttributeError):
            StepEnd().x = 1  # type: ignore[attr-defined]


class TestCustomEvent:
    def test_custom_event_subclass_is_a_value(self) -> None:
        """A user-defined event subclass is an Event, equal to itself and different from built-ins."""

        class MyEvent(Event):
            pass

        assert isinstance(MyEvent(), Event)
        assert MyEvent() == MyEvent()
        assert MyEvent() != StepEnd()
        assert repr(MyEvent()) == "MyEvent()"

    def test_subclass_of_builtin_is_not_equal_to_builtin(self) -> None:
        """Equality is by exact type: a subclass of StepEnd is not equal to StepEnd."""

        class MyStepEnd(StepEnd):
            pass

        assert MyStepEnd() != StepEnd()
        assert isinstance(MyStepEnd(), StepEnd)


class TestModule:
    def test_all_lists_every_event(self) -> None:
        """asyncloop.events.__all__ lists exactly Event and the nine built-in events."""
        assert sorted(events.__all__) == sorted(["Event", *(cls.__name__ for cls in ALL_EVENTS)])
