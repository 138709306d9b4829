"""The monitored metric's epoch value, as :class:`Checkpointer` and :class:`EarlyStopping` judge it, and which
phase that ran stands for a configured phase class (:func:`matching_phase`)."""

from __future__ import annotations

from typing import Any

from .._evaluation import EvaluationPhase
from ..phases import AbstractTrainingPhase, AbstractValidationPhase, Phase


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


def kind_of(phase_type: type[Phase]) -> type[Phase]:
    """The abstract kind a configured phase class stands for: ``AbstractTrainingPhase`` for any training phase
    class, ``AbstractValidationPhase`` for any validation phase class, else the class itself."""
    for kind in (AbstractTrainingPhase, AbstractValidationPhase):
        if issubclass(phase_type, kind):
            return kind
    return phase_type


def _recorded(cbstate: Any) -> dict[Phase, Any]:
    """The phases with recorded epoch metrics, and their series (never inserts into the ``PhaseDict``)."""
    metrics = cbstate["metrics_epoch"] if "metrics_epoch" in cbstate else {}
    return {phase: series for phase, series in metrics.items() if len(series)}


def _describe(recorded: dict[Phase, Any]) -> str:
    if not recorded:
        return "Metrics recorded nothing yet"
    return "recorded: " + "; ".join(
        f"{phase!r}: {', '.join(repr(k) for k in series.keys())}" for phase, series in recorded.items()
    )


def matching_phase(cbstate: Any, phase_type: type[Phase], *, who: str) -> Phase | None:
    """The phase that ran whose recorded metrics stand for the configured ``phase_type``.

    The matching rule: ``phase_type()`` itself when it recorded metrics; else the one phase that recorded
    metrics and is an instance of ``phase_type``'s kind (:func:`kind_of`) -- evaluation epochs of
    :func:`asyncloop.validate` excepted -- so that ``ValidationPhase`` finds a
    custom ``AbstractValidationPhase`` subclass run by ``fit(phases=...)`` in its place. ``None`` when no such
    phase recorded anything; a ``ValueError`` when several did (name the exact class then).
    """
    recorded = _recorded(cbstate)
    exact_phase = phase_type()
    if exact_phase in recorded:
        return exact_phase
    kind = kind_of(phase_type)
    # validate()'s evaluation epochs keep series of their own; they never stand in for a fit's phase
    found = [phase for phase in recorded if isinstance(phase, kind) and not isinstance(phase, EvaluationPhase)]
    if len(found) > 1:
        names = ", ".join(repr(p) for p in found)
        raise ValueError(
            f"{who} monitors {kind.__name__} metrics, and several such phases recorded some ({names}); "
            f"pass phase= the exact class to monitor, e.g. phase={type(found[-1]).__name__}"
        )
    return found[0] if found else None


def latest_monitored_value(cbstate: Any, phase_type: type[Phase], monitor: str, *, who: str) -> float | None:
    """The last value of ``monitor`` recorded under the phase matching ``phase_type`` (see :func:`matching_phase`),
    from its latest epoch that recorded one (a validation every N epochs leaves the earlier value standing).

    ``None`` when no matching phase recorded anything yet. A ``ValueError`` when the matching phase recorded
    metrics but not ``monitor``, naming ``who``, the phase and the recorded names.
    """
    phase = matching_phase(cbstate, phase_type, who=who)
    if phase is None:
        return None
    series = cbstate["metrics_epoch"][phase]
    if monitor not in series:
        return monitored_epoch_value(cbstate, phase, monitor, who=who)  # raises, naming the recorded names
    return float(series.last(monitor)[1])


def monitor_missing_error(cbstate: Any, phase_type: type[Phase], monitor: str, *, who: str) -> ValueError:
    """The error for a ``monitor`` that no phase matching ``phase_type`` recorded during a whole fit."""
    kind = kind_of(phase_type)
    looked = phase_type.__name__ if kind is phase_type else f"{phase_type.__name__} or any {kind.__name__}"
    return ValueError(
        f"{who} monitors {monitor!r} under {looked}, and no such phase recorded it during this fit "
        f"({_describe(_recorded(cbstate))}); pass phase= a phase that runs (e.g. TrainingPhase), run a validation "
        f"phase (validation data, phases=(..., ValidationPhase())), or add the metric to Metrics(...)"
    )
