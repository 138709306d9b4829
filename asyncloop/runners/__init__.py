"""Runners decide how the handlers of an event are executed: inline in order, or as concurrent actors."""

from .actor import ActorRunner
from .base import ActorStatistics, Runner
from .linear import LinearRunner

__all__ = ["ActorRunner", "ActorStatistics", "LinearRunner", "Runner"]
