"""The monitored metric's epoch value, as :class:`Checkpointer` and :class:`EarlyStopping` judge it."""

from __future__ import annotations

from typing import Any

from ..phases import Phase


def monitored_epoch_value(cbstate: Any, phase: Phase, monitor: str, *, who: str, strict: bool = True) -> float | None:
    """The value of ``monitor`` that :class:`asyncloop.Metrics` recorded for the current epoch of ``phase``.

    ``None`` when there is nothing to judge: no ``metrics_epoch`` yet, nothing recorded for ``phase``, or the
    last recorded value belongs to an earlier epoch (this one was cancelled before any step). Looking up never
    inserts ``phase`` into a ``PhaseDict``.

    Pitfall: a misspelt ``monitor`` must not silently disable the caller. With ``strict``, when ``phase`` has
    recorded metrics but not ``monitor``, a ``ValueError`` names ``who``, the phase and the recorded names.
    """
    series = cbstate["metrics_epoch"].get(phase) if "metrics_epoch" in cbstate else None
    if series is None or monitor not in series:
        if strict and series is not None and len(series):
            known = ", ".join(repr(k) for k in series.keys())
            raise ValueError(
                f"{who} monitors {monitor!r}, which Metrics did not record for {phase!r} "
                f"(recorded: {known}); pass monitor= one of those, or add the metric to Metrics(...)"
            )
        return None
    index, value = series.last(monitor)
    history = cbstate["history"].get(phase)
    if history is None or index != history.epochs:
        return None
    return float(value)
