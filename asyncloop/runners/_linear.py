"""LinearRunner: every handler inline, one at a time, in one topological order."""

from __future__ import annotations

from ..events import Event
from ..phases import Phase
from ._base import Plan, Runner, call_async, sync_plan

__all__ = ["LinearRunner"]


class LinearRunner(Runner):
    """Run every handler of an event inline on the training thread, one at a time, in topological order.

    Unconstrained callbacks run in reverse registration order (FluxTraining's rule). ``detached`` is ignored:
    every handler sees live state and the loop waits for it. This is the default runner and the reference the
    :class:`asyncloop.ActorRunner` is tested against.
    """

    def _compile_plan(self, event: type[Event], phase: type[Phase]) -> Plan | None:
        steps = tuple(self._subscribers(event, phase, self._order))
        if not steps:
            return None
        if any(s.is_async for s in steps):

            async def run_async(event: Event, phase: Phase) -> None:
                for step in steps:
                    await call_async(step, event, phase)

            return run_async

        return sync_plan(steps)
