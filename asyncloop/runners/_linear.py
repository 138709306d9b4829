"""LinearRunner: every handler inline, one at a time, in one topological order (private)."""

from __future__ import annotations

from ..events import Event
from ..phases import Phase
from ._base import Runner
from ._plans import Layer, Plan, build_plan


class LinearRunner(Runner):
    """Run every handler of an event inline on the training thread, one at a time, in topological order.

    Unconstrained callbacks run in reverse registration order (FluxTraining's rule). ``detached`` is ignored:
    every handler runs on live state (what the callback's ``snapshot(..., copy=False)`` returns, by default the
    protected view; nothing is cloned) and the loop waits for it. This is the default runner and the reference
    the :class:`asyncloop.ActorRunner` is tested against.
    """

    def _compile_plan(self, event: type[Event], phase: type[Phase]) -> Plan | None:
        # The degenerate plan: one layer per handler, so async handlers are awaited one at a time, in order.
        layers = [Layer((), (s,)) if s.is_async else Layer((s,)) for s in self._steps(event, phase)]
        return build_plan(layers)
