"""Per-callback statistics: where a handler's time is accounted (private)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ActorStatistics:
    """What one callback cost during a fit.

    * ``events``: events handled; ``handler_time``/``max_handler_time``: seconds spent in its handlers;
    * ``loop_wait_time``: seconds the training loop waited for this actor (a full inbox or the final drain);
    * ``peak_inbox``: most events queued for it at once; ``peak_lag``: most events it trailed the loop by;
    * ``abandoned``: a detached actor's thread was still in a handler when the fit was cancelled or failed, and
      was left behind after the runner's ``cancel_grace`` (a warning says so too).

    The last four are zero/false for awaited callbacks, which never lag.
    """

    name: str
    detached: bool = False
    events: int = 0
    handler_time: float = 0.0
    max_handler_time: float = 0.0
    loop_wait_time: float = 0.0
    peak_inbox: int = 0
    peak_lag: int = 0
    abandoned: bool = False

    def record(self, seconds: float) -> None:
        """Account for one handled event that took ``seconds`` (every runner path calls this, except
        ``_plans.run_sync``, the inline handlers' loop, which does the same inline)."""
        self.events += 1
        self.handler_time += seconds
        if seconds > self.max_handler_time:
            self.max_handler_time = seconds

    @property
    def mean_handler_time(self) -> float:
        return self.handler_time / self.events if self.events else 0.0
