"""CustomCallback: run a function on one event type, without writing a Callback class."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .._callback import Callback, Handler
from ..events import Event
from ..phases import Phase


class CustomCallback(Callback):
    """Call ``fn(learner)`` on every event of type ``event`` during phases of type ``phase``.

    ``access`` is a ``state_access`` tree for what ``fn`` touches (default: nothing). ``fn`` may be async. For
    anything more than a quick hook, write a :class:`Callback` subclass.

    Example::

        cb = CustomCallback(lambda learner: print("New epoch!"), EpochBegin)
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        event: type[Event],
        phase: type[Phase] = Phase,
        access: Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"CustomCallback needs a function fn(learner) first, got {fn!r}")
        if not (isinstance(event, type) and issubclass(event, Event)):
            raise TypeError(f"CustomCallback event must be an Event class such as StepEnd, got {event!r}")
        if not (isinstance(phase, type) and issubclass(phase, Phase)):
            raise TypeError(f"CustomCallback phase must be a Phase class such as TrainingPhase, got {phase!r}")
        self.fn = fn
        self.event = event
        self.phase = phase
        self.state_access = dict(access or {})  # type: ignore[misc]
        self._is_async = inspect.iscoroutinefunction(fn)

    def handler(self, event: type[Event], phase: type[Phase]) -> Handler | None:
        if issubclass(event, self.event) and issubclass(phase, self.phase):
            return Handler(self._run_async if self._is_async else self._run, self._is_async)
        return None

    def _run(self, event: Event, phase: Phase, learner: Any) -> None:
        self.fn(learner)

    async def _run_async(self, event: Event, phase: Phase, learner: Any) -> None:
        await self.fn(learner)

    @property
    def name(self) -> str:
        return f"CustomCallback({getattr(self.fn, '__name__', 'fn')}, {self.event.__name__})"
