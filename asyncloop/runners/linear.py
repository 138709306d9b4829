"""LinearRunner: every handler inline, one at a time, in one topological order."""

from __future__ import annotations

from ..events import Event
from ..phases import Phase
from .base import Runner, _Step

__all__ = ["LinearRunner"]


class LinearRunner(Runner):
    """Run every handler of an event inline on the training thread, one at a time, in topological order.

    Unconstrained callbacks run in reverse registration order (FluxTraining's rule). ``detached`` is ignored:
    every handler sees live state and the loop waits for it. This is the default runner and the reference the
    :class:`asyncloop.ActorRunner` is tested against.
    """

    async def handle(self, event: Event, phase: Phase) -> None:
        session = self.session
        if session is not None:
            session.check()
        key = (event.__class__, phase.__class__)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._compile_plan(*key)
        call = self._call
        for step in plan:
            await call(step, event, phase)

    def _compile_plan(self, event: type[Event], phase: type[Phase]) -> tuple[_Step, ...]:
        return tuple(self._subscribers(event, phase, self._order))
