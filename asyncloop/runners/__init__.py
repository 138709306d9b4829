"""Runners decide how the handlers of an event are executed: inline in order, or as concurrent actors."""

from ._actor import ActorRunner
from ._base import ActorStatistics, Runner
from ._linear import LinearRunner
from .._exceptions import ProcessActorError

__all__ = ["ActorRunner", "ActorStatistics", "LinearRunner", "ProcessActorError", "Runner"]
