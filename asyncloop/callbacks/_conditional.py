"""Conditional callbacks and throttling: forward events to a callback only when a condition holds."""

from __future__ import annotations

import time
from typing import Any

from .._callback import Callback, ConflictResolution, Handler
from ..events import Event
from ..phases import Phase


class CallbackCondition:
    """Decides per event whether a :class:`ConditionalCallback` forwards it. Implement :meth:`should_run`.

    Conditions are evaluated on the training thread in event order, before any snapshot is taken, so a
    throttled detached callback costs nothing on skipped events.
    """

    def should_run(self, event: Event, phase: Phase) -> bool:
        raise NotImplementedError(f"{type(self).__name__} must implement should_run(event, phase)")


class FrequencyThrottle(CallbackCondition):
    """Let through occurrences 1, freq+1, 2*freq+1, ... of ``event`` (counted over all phases); others pass."""

    def __init__(self, freq: int, event: type[Event]) -> None:
        if isinstance(freq, bool) or not isinstance(freq, int) or freq < 1:
            raise ValueError(f"freq must be an int >= 1, got {freq!r}")
        self.freq, self.event, self.counter = freq, event, 1

    def should_run(self, event: Event, phase: Phase) -> bool:
        if not isinstance(event, self.event):
            return True
        if self.counter == 1:
            self.counter = self.freq
            return True
        self.counter -= 1
        return False

    def __repr__(self) -> str:
        return f"FrequencyThrottle({self.freq}, {self.event.__name__})"


class TimeThrottle(CallbackCondition):
    """Let ``event`` through when at least ``seconds`` passed since it last went through; others pass."""

    def __init__(self, seconds: float, event: type[Event]) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
        self.seconds, self.event = float(seconds), event
        self.last: float | None = None

    def should_run(self, event: Event, phase: Phase) -> bool:
        if not isinstance(event, self.event):
            return True
        now = time.monotonic()
        if self.last is None or now - self.last >= self.seconds:
            self.last = now
            return True
        return False

    def __repr__(self) -> str:
        return f"TimeThrottle({self.seconds}, {self.event.__name__})"


class ConditionalCallback(Callback):
    """Forward events to ``callback`` only when ``condition.should_run(event, phase)`` is true.

    The wrapper takes the wrapped callback's ``state_access``, ``run_after``, ``detached`` setting and
    conflict resolutions, and other callbacks' ``run_after`` see through it (fixing FluxTraining, where a
    throttled callback lost its ordering).
    """

    def __init__(self, callback: Callback, condition: CallbackCondition) -> None:
        if not isinstance(callback, Callback):
            raise TypeError(f"ConditionalCallback wraps a Callback instance, got {callback!r}")
        if not isinstance(condition, CallbackCondition):
            raise TypeError(f"condition must be a CallbackCondition such as FrequencyThrottle, got {condition!r}")
        self.callback = callback
        self.condition = condition
        self.state_access = callback.state_access  # type: ignore[misc]
        self.run_after = callback.run_after  # type: ignore[misc]
        self.detached = callback.detached  # type: ignore[misc]
        self.inbox_size = callback.inbox_size  # type: ignore[misc]
        self.blocking = callback.blocking  # type: ignore[misc]

    @property
    def inner(self) -> Callback:
        """The innermost wrapped callback (seen through nested wrappers)."""
        return self.callback.inner

    @property
    def wrapped(self) -> Callback:
        """The innermost wrapped callback: the same as :attr:`inner`, kept for existing code."""
        return self.callback.inner

    def init(self, learner: Any) -> None:
        self.callback.init(learner)

    def resolve_conflict(self, other: Callback) -> ConflictResolution:
        return self.callback.resolve_conflict(other)

    def teardown(self, learner: Any) -> None:
        self.callback.teardown(learner)

    def handler(self, event: type[Event], phase: type[Phase]) -> Handler | None:
        inner = self.callback.handler(event, phase)
        if inner is None:
            return None
        should_run = self.condition.should_run
        inner_accept = inner.accept
        if inner_accept is None:
            accept = should_run
        else:

            def accept(e: Event, p: Phase) -> bool:
                return should_run(e, p) and inner_accept(e, p)

        return Handler(inner.fn, inner.is_async, accept)

    def snapshot(self, event: Event, phase: Phase, learner: Any, *, copy: bool = True) -> Any:
        return self.callback.snapshot(event, phase, learner, copy=copy)

    def state_dict(self) -> dict[str, Any]:
        fn = getattr(self.callback, "state_dict", None)
        return fn() if fn is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        fn = getattr(self.callback, "load_state_dict", None)
        if fn is not None:
            fn(state)

    @property
    def name(self) -> str:
        return f"ConditionalCallback({self.callback.name})"


def throttle(
    callback: Callback, event: type[Event], *, freq: int | None = None, seconds: float | None = None
) -> ConditionalCallback:
    """Throttle ``event`` for ``callback``: only every ``freq``-th occurrence, or at most once per ``seconds``.

    Example::

        callback = throttle(LogMetrics(TensorBoardBackend("runs")), StepEnd, freq=10)
    """
    if (freq is None) == (seconds is None):
        raise ValueError("Pass either freq or seconds to throttle, not both and not neither")
    condition = FrequencyThrottle(freq, event) if freq is not None else TimeThrottle(seconds, event)  # type: ignore[arg-type]
    return ConditionalCallback(callback, condition)
