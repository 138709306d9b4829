"""Value classes: instances of one class are all equal, hash the same and print as ``Name()`` (private).

Events, phases, permissions and conflict resolutions are values of this kind: ``StepEnd() == StepEnd()``, and
``TrainingPhase()`` keys a dict wherever another ``TrainingPhase()`` looks it up.
"""

from __future__ import annotations


class ValueClass:
    """A class whose instances carry no data: equal to, and hashed like, every instance of the same class."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
