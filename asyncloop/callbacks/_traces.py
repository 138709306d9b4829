"""Traces: record values computed from the learner at every step, into ``cbstate.trace_history[phase]``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .._callback import Callback, on
from ..events import StepEnd
from ..hyperparameters import merge_access
from ..phases import Phase
from .._access import Read, Write
from .._containers import PhaseDict, SeriesHistory
from ._recorder import Recorder


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        # never keep the autograd graph alive, and never alias state the loop updates in place (a parameter)
        return value.detach().clone()
    return value


class Traces(Callback):
    """At every ``StepEnd`` of a phase of type ``phase``, push ``fn(learner)`` for each ``(name, fn)`` in ``traces``.

    Values go to ``cbstate.trace_history[phase]`` (a :class:`~asyncloop.state.SeriesHistory` per phase) at index
    ``history[phase].steps``; tensors are copied (detached) and stay on their device (``.last``/``.values`` turn
    one-element tensors into numbers), so tracing costs no host sync. ``fn`` sees the learner with
    read access to ``step`` and ``cbstate.history``; pass ``access`` (a ``state_access`` tree) to read more.
    :class:`asyncloop.LogTraces` logs them.

    Example::

        Traces({"loss2": lambda learner: learner.step.loss ** 2,
                "grad_norm": lambda learner: torch.linalg.vector_norm(
                    torch.stack([g.norm() for g in learner.step.grads.values()]))},
               TrainingPhase)
    """

    run_after = (Recorder,)

    def __init__(
        self,
        traces: Mapping[str, Callable[[Any], Any]] | Iterable[tuple[str, Callable[[Any], Any]]],
        phase: type[Phase] = Phase,
        *,
        access: Mapping[str, Any] | None = None,
    ) -> None:
        pairs = list(traces.items()) if isinstance(traces, Mapping) else list(traces)
        names = []
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and callable(pair[1])):
                raise TypeError(f"Traces takes a dict {{name: fn(learner)}} or (name, fn) pairs, got {pair!r}")
            names.append(pair[0])
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Multiple traces have the same name: {', '.join(map(repr, duplicates))}")
        if not (isinstance(phase, type) and issubclass(phase, Phase)):
            raise TypeError(f"Traces: phase must be a Phase class such as TrainingPhase, got {phase!r}")
        self.traces: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(pairs)
        self.phase = phase
        own = {"cbstate": {"history": Read(), "trace_history": Write()}, "step": Read()}
        self.state_access = merge_access(own, access or {})  # type: ignore[misc]

    def init(self, learner: Any) -> None:
        if "trace_history" not in learner.cbstate:
            learner.cbstate.trace_history = PhaseDict(SeriesHistory)

    @on(StepEnd)
    def step_end(self, event: StepEnd, phase: Phase, learner: Any) -> None:
        if not isinstance(phase, self.phase):
            return
        cbstate = learner.cbstate
        index = cbstate.history[phase].steps
        series = cbstate.trace_history[phase]
        for name, fn in self.traces:
            series.push(name, index, _plain(fn(learner)))

    def __repr__(self) -> str:
        return f"Traces({', '.join(n for n, _ in self.traces)}; {self.phase.__name__})"
