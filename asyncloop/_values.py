"""Value classes: instances of one class are all equal, hash the same and print as ``Name()`` (private).

Events, phases, permissions and conflict resolutions are values of this kind: ``StepEnd() == StepEnd()``, and
``TrainingPhase()`` keys a dict wherever another ``TrainingPhase()`` looks it up.
"""

from __future__ import annotations

from itertools import repeat


class ValueClass:
    """A class whose instances carry no data: equal to, and hashed like, every instance of the same class.

    Each subclass that defines neither ``__eq__`` nor ``__hash__`` gets its class's hash as a constant from C
    (no Python call: phases key the per-step lookups of the built-in callbacks, ``history[phase]``).
    """

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "__eq__" not in cls.__dict__ and "__hash__" not in cls.__dict__:
            cls.__hash__ = staticmethod(repeat(hash(cls)).__next__)  # type: ignore[assignment,method-assign]

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
