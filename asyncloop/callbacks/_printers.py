"""Console output: a progress bar per epoch and a metrics table per epoch. Both are detached callbacks."""

from __future__ import annotations

import sys
from collections.abc import Sized
from typing import Any, TextIO

from tqdm.std import tqdm as _tqdm


class tqdm(_tqdm):  # noqa: N801 - tqdm's own name
    """tqdm without its monitor thread (a thread that would outlive the fit)."""

    monitor_interval = 0

from .._callback import Callback, Handler, on
from ..events import EpochBegin, EpochEnd, Event, FitEnd, StepEnd
from ..phases import Phase
from .._access import Read
from .._containers import History, PropDict
from ._conditional import TimeThrottle
from ._metrics import Metrics
from ._recorder import Recorder


class ProgressPrinter(Callback):
    """Show a tqdm progress bar for every epoch, titled ``"Epoch 3 TrainingPhase()"``.

    The total is the length of the iterable the epoch runs over (also when it was passed to ``fit``), when it
    has one. Detached, and throttled by time: a step tick reaches the bar at most every ``mininterval`` seconds
    (tqdm's refresh interval, default 0.1); the others are skipped on the training thread before any snapshot,
    under every runner. The bar reads the step count, so no tick is lost: it catches up at the next
    tick and at ``EpochEnd``. ``file`` defaults to ``sys.stderr``; extra keyword arguments go to ``tqdm``. A
    default callback.
    """

    state_access = {"cbstate": {"history": Read()}, "epoch_data": Read()}
    run_after = (Recorder,)
    detached = True

    def __init__(self, *, file: TextIO | None = None, **tqdm_kwargs: Any) -> None:
        self.file = file
        self.tqdm_kwargs = {"leave": True, **tqdm_kwargs}
        self._throttle = TimeThrottle(tqdm_kwargs.get("mininterval", 0.1), StepEnd)
        self._bar: Any = None

    def handler(self, event: type[Event], phase: type[Phase]) -> Handler | None:
        found = super().handler(event, phase)
        if found is None or not issubclass(event, StepEnd):
            return found
        return Handler(found.fn, found.is_async, self._throttle.should_run)

    def snapshot(self, event: Any, phase: Phase, learner: Any, *, copy: bool = True) -> Any:
        """Copy only this phase's counters (cheaper than the whole history); inline, the protected live view.

        The copy holds nothing but the declared fields and nobody else sees it, so it is handed over as is
        (no protected view around it).
        """
        if not copy:
            return super().snapshot(event, phase, learner, copy=False)
        history = learner.cbstate.history.get(phase)
        counters = History() if history is None else History(history.epochs, history.steps, history.steps_epoch)
        return PropDict(cbstate=PropDict(history={phase: counters}), epoch_data=learner.epoch_data)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @on(EpochBegin)
    def epoch_begin(self, event: EpochBegin, phase: Phase, learner: Any) -> None:
        self._close()
        number = learner.cbstate.history[phase].epochs + 1
        data = learner.epoch_data
        total = len(data) if isinstance(data, Sized) else None
        file = self.file if self.file is not None else sys.stderr
        self._bar = tqdm(total=total, desc=f"Epoch {number} {phase}", file=file, **self.tqdm_kwargs)

    @on(StepEnd)
    def step_end(self, event: StepEnd, phase: Phase, learner: Any) -> None:
        if self._bar is not None:
            done = learner.cbstate.history[phase].steps_epoch
            self._bar.update(done - self._bar.n)

    @on(EpochEnd)
    def epoch_end(self, event: EpochEnd, phase: Phase, learner: Any) -> None:
        self.step_end(event, phase, learner)  # the ticks skipped since the last one
        self._close()

    @on(FitEnd)
    def fit_end(self, event: FitEnd, phase: Phase, learner: Any) -> None:
        self._close()


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Render a boxed text table with right-aligned cells."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(left: str, mid: str, right: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + right

    def row(cells: list[str]) -> str:
        return "│" + "│".join(f" {c:>{w}} " for c, w in zip(cells, widths)) + "│"

    return "\n".join([line("┌", "┬", "┐"), row(header), line("├", "┼", "┤"), *map(row, rows), line("└", "┴", "┘")])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


class MetricsPrinter(Callback):
    """Print a table of the epoch's metric values at every ``EpochEnd``.

    Columns are ``Phase``, ``Epoch`` and then the metrics in the order :class:`Metrics` tracks them (the loss
    first), so the layout is the same every epoch. Detached. ``file`` defaults to ``sys.stdout``. A default
    callback.
    """

    state_access = {"cbstate": {"metrics_epoch": Read(), "history": Read()}}
    run_after = (Metrics, ProgressPrinter)
    detached = True

    def __init__(self, *, file: TextIO | None = None) -> None:
        self.file = file

    @on(EpochEnd)
    def epoch_end(self, event: EpochEnd, phase: Phase, learner: Any) -> None:
        series = learner.cbstate.metrics_epoch[phase]
        names = list(series.keys())
        header = ["Phase", "Epoch", *names]
        cells = [type(phase).__name__, str(learner.cbstate.history[phase].epochs)]
        cells += [_cell(series.last(name)[1]) for name in names]
        file = self.file if self.file is not None else sys.stdout
        # tqdm.write clears a progress bar on the same terminal, prints, and redraws the bar below.
        tqdm.write(format_table(header, [cells]), file=file)
        file.flush()
