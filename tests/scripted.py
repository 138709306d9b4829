"""Metrics with scripted values, shared by the tests of callbacks that monitor a metric."""

from __future__ import annotations

from typing import Any

from asyncloop import AbstractMetric, ValidationPhase
from asyncloop.phases import Phase


class Scripted(AbstractMetric):
    """A validation metric whose epoch values are given in advance."""

    def __init__(self, name: str, values: list[float]) -> None:
        self.name, self.values, self.epoch, self._seen = name, values, -1, False

    def reset(self) -> None:
        self._seen = False

    def update(self, learner: Any, phase: Phase) -> None:
        if isinstance(phase, ValidationPhase) and not self._seen:
            self._seen = True
            self.epoch += 1

    def step_value(self) -> Any:
        return None

    def epoch_value(self) -> Any:
        return self.values[self.epoch] if self._seen else None
