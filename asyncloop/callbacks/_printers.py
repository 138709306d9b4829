"""Console output: a progress bar (or a plain line) per epoch and a metrics table per epoch. Both are detached.

Where the output goes decides its form (see docs/logging.md, "Progress output"):

* a terminal (``file.isatty()``): a tqdm bar per epoch, left on screen when the epoch ends;
* a Jupyter notebook (the default ``file`` in an IPython kernel, with ipywidgets): ``tqdm.notebook`` widget bars;
* anything else (a CI log, a file, a pipe): no bar and no ``\\r`` updates, one plain line per epoch:
  ``Epoch 1 TrainingPhase(): 16/16 steps in 2.3s, Loss 0.0421``;
* several fits printing to one terminal at once: plain lines too (from the next epoch of each), written through
  ``tqdm.write``, so they never garble a bar still open there.

The metrics table closes its epoch's bar (at the epoch's step count) before it prints, and prints through
``tqdm.write``, which clears any other open bar and redraws it below: a table never lands inside a bar. Under the
LinearRunner each table follows its own epoch's bar; under the ActorRunner the two printers are separate actors,
so a lagging table may come after the next epoch's bar (whole, never within it).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sized
from typing import Any, TextIO

import numpy as np
import torch
from tqdm.std import tqdm as _tqdm


class tqdm(_tqdm):  # noqa: N801 - tqdm's own name
    """tqdm without its monitor thread (a thread that would outlive the fit)."""

    monitor_interval = 0

from .._callback import Callback, Handler, on
from ..events import EpochBegin, EpochEnd, Event, FitEnd, StepEnd
from ..phases import Phase
from .._access import Read
from .._containers import History, PropDict
from .._snapshots import snapshot as _snapshot
from ..logging._records import printable
from ._conditional import TimeThrottle
from ._metrics import Metrics
from ._recorder import Recorder


def _is_terminal(file: Any) -> bool:
    """``file.isatty()``, False when it has none or it fails (a closed file)."""
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (tqdm.autonotebook's test), where ``sys.stderr`` is no terminal."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:  # pragma: no cover - an exotic IPython
        return False


def _notebook_tqdm() -> type | None:
    """``tqdm.notebook``'s bar class without the monitor thread, or None when ipywidgets is missing."""
    try:
        from tqdm import notebook
    except ImportError:  # pragma: no cover - tqdm always has it
        return None
    if getattr(notebook, "IProgress", None) is None:
        return None
    return type("tqdm_notebook", (notebook.tqdm,), {"monitor_interval": 0})


class _Fits:
    """The ProgressPrinters inside a run, per output file: two or more on one file switch to plain lines.

    A printer enters at its run's first ``EpochBegin`` and then looks for others, so of two runs starting at once
    at most one draws a bar; it leaves at ``FitEnd`` or teardown."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_file: dict[int, set[int]] = {}

    def enter(self, file: Any, printer: Any) -> None:
        with self._lock:
            self._by_file.setdefault(id(file), set()).add(id(printer))

    def leave(self, file: Any, printer: Any) -> None:
        with self._lock:
            printers = self._by_file.get(id(file))
            if printers is not None:
                printers.discard(id(printer))
                if not printers:
                    del self._by_file[id(file)]

    def shared(self, file: Any, printer: Any) -> bool:
        """Whether another printer's fit writes to ``file`` now."""
        with self._lock:
            return bool(self._by_file.get(id(file), set()) - {id(printer)})


_FITS = _Fits()


class _Bars:
    """The open bar of each learner, so that MetricsPrinter can close it before it prints the epoch's table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, tuple[Any, Phase, int]] = {}

    def opened(self, learner_id: int, bar: Any, phase: Phase, epoch: int) -> None:
        with self._lock:
            self._open[learner_id] = (bar, phase, epoch)

    def finish(self, learner_id: int, phase: Phase | None = None, epoch: int = 0, steps: int | None = None) -> None:
        """Bring the learner's bar to ``steps`` and close it (if it is this phase's and epoch's; any, for None)."""
        with self._lock:
            found = self._open.get(learner_id)
            if found is None or (phase is not None and found[1:] != (phase, epoch)):
                return
            del self._open[learner_id]
        bar = found[0]
        if steps is not None and steps > bar.n:
            bar.update(steps - bar.n)
        bar.close()


_BARS = _Bars()


def _loss(metrics_epoch: Any, phase: Phase, epoch: int) -> Any:
    """This epoch's ``Loss`` of ``phase`` if :class:`Metrics` recorded it, else None."""
    series = metrics_epoch.get(phase) if metrics_epoch is not None else None
    if series is None or "Loss" not in series.keys():
        return None
    index, value = series.last("Loss")
    return value if index == epoch else None


class ProgressPrinter(Callback):
    """Show an epoch's progress: a tqdm bar per epoch on a terminal, a plain line per epoch anywhere else.

    A bar is titled ``"Epoch 3 TrainingPhase()"``; its total is the length of the iterable the epoch runs over
    (also when it was passed to ``fit``), when it has one. In a Jupyter notebook (default ``file`` only) the bars
    are ``tqdm.notebook`` widgets. When ``file`` is not a terminal (``file.isatty()`` false: CI logs, files,
    pipes) there is no bar and no ``\\r`` redraw: each epoch ends with one line,
    ``Epoch 3 TrainingPhase(): 16/16 steps in 2.3s, Loss 0.0421`` (the loss when :class:`Metrics` recorded it).
    When another fit's ProgressPrinter prints to the same ``file`` at the same time (two fits in one process),
    both switch to plain lines from their next epoch on, so their bars never overwrite each other.

    Detached, and throttled by time: a step tick reaches the bar at most every ``mininterval`` seconds (tqdm's
    refresh interval, default 0.1); the others are skipped on the training thread before any snapshot, under
    every runner. The bar reads the step count, so no tick is lost: it catches up at the next tick and at
    ``EpochEnd``. ``file`` defaults to ``sys.stderr``; extra keyword arguments go to ``tqdm``. A default callback.
    """

    state_access = {"cbstate": {"history": Read(), "metrics_epoch": Read()}, "epoch_data": Read()}
    optional_reads = ("metrics_epoch",)  # without Metrics the bar shows no loss
    run_after = (Recorder, Metrics)
    detached = True
    rank_zero_only = True  # distributed: rank 0 alone acts (docs/distributed.md)

    def __init__(self, *, file: TextIO | None = None, **tqdm_kwargs: Any) -> None:
        self.file = file
        self.tqdm_kwargs = {"leave": True, **tqdm_kwargs}
        self._throttle = TimeThrottle(tqdm_kwargs.get("mininterval", 0.1), StepEnd)
        self._bar: Any = None
        self._started = 0.0
        self._in_fit: Any = None  # the file this printer's run is registered on (from its first epoch)

    def handler(self, event: type[Event], phase: type[Phase]) -> Handler | None:
        found = super().handler(event, phase)
        if found is None or not issubclass(event, StepEnd):
            return found
        return Handler(found.fn, found.is_async, self._throttle.should_run)

    def snapshot(self, event: Any, phase: Phase, learner: Any, *, copy: bool = True) -> Any:
        """This phase's counters, the epoch data, the time and (at ``EpochEnd``) the loss: a few values, for both
        runners (cheaper than the whole history); nobody else sees them, so no protected view is needed."""
        history = learner.cbstate.history.get(phase)
        counters = History() if history is None else History(history.epochs, history.steps, history.steps_epoch)
        loss = None
        if isinstance(event, EpochEnd):
            loss = _loss(learner.cbstate.get("metrics_epoch"), phase, counters.epochs)
            if copy and loss is not None:
                loss = _snapshot(loss)
        return PropDict(history=counters, epoch_data=learner.epoch_data, time=time.monotonic(), loss=loss,
                        learner_id=id(learner))

    def _file(self) -> Any:
        return self.file if self.file is not None else sys.stderr

    def _close(self, learner_id: int | None = None) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            if learner_id is not None:
                _BARS.finish(learner_id)
            bar.close()

    def _leave_fit(self) -> None:
        if self._in_fit is not None:
            _FITS.leave(self._in_fit, self)
            self._in_fit = None

    def _bar_class(self, file: Any) -> type | None:
        """The bar class for this epoch, or None for a plain line."""
        if self.file is None and _in_notebook():
            return _notebook_tqdm()  # ipywidgets missing: plain lines (a notebook's stderr is no terminal)
        if not _is_terminal(file) or _FITS.shared(file, self):
            return None
        return tqdm

    @on(EpochBegin)
    def epoch_begin(self, event: EpochBegin, phase: Phase, learner: Any) -> None:
        self._close(learner.learner_id)
        self._started = learner.time
        number = learner.history.epochs + 1
        data = learner.epoch_data
        total = len(data) if isinstance(data, Sized) else None
        file = self._file()
        if self._in_fit is not file:  # registered until FitEnd or teardown: enter, then look for others
            self._leave_fit()
            self._in_fit = file
            _FITS.enter(file, self)
        bar_class = self._bar_class(file)
        if bar_class is not None:
            self._bar = bar_class(total=total, desc=f"Epoch {number} {phase}", file=file, **self.tqdm_kwargs)
            _BARS.opened(learner.learner_id, self._bar, phase, number)

    @on(StepEnd)
    def step_end(self, event: StepEnd, phase: Phase, learner: Any) -> None:
        bar = self._bar
        if bar is not None and not bar.disable:
            bar.update(learner.history.steps_epoch - bar.n)

    @on(EpochEnd)
    def epoch_end(self, event: EpochEnd, phase: Phase, learner: Any) -> None:
        if self._bar is not None:
            _BARS.finish(learner.learner_id, phase, learner.history.epochs, learner.history.steps_epoch)
            self._bar = None
            return
        data = learner.epoch_data
        steps = learner.history.steps_epoch
        done = f"{steps}/{len(data)}" if isinstance(data, Sized) else str(steps)
        line = f"Epoch {learner.history.epochs} {phase}: {done} steps in {learner.time - self._started:.1f}s"
        if learner.loss is not None:
            line += f", Loss {_cell(learner.loss)}"
        file = self._file()
        tqdm.write(line, file=file)  # clears (then redraws) another fit's bar on the same terminal
        file.flush()

    @on(FitEnd)
    def fit_end(self, event: FitEnd, phase: Phase, learner: Any) -> None:
        self._close(learner.learner_id)
        self._leave_fit()

    def teardown(self, learner: Any) -> None:
        """Close a bar left open (a failed or cancelled run) and leave the shared-output registry."""
        self._close(id(learner))
        self._leave_fit()


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Render a boxed text table with right-aligned cells."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(left: str, mid: str, right: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + right

    def row(cells: list[str]) -> str:
        return "│" + "│".join(f" {c:>{w}} " for c, w in zip(cells, widths)) + "│"

    return "\n".join([line("┌", "┬", "┐"), row(header), line("├", "┼", "┤"), *map(row, rows), line("└", "┴", "┘")])


#: The widest a text cell gets; longer text is cut and ends with an ellipsis.
MAX_CELL = 40


def _cell(value: Any) -> str:
    """A compact one-line cell: numbers to 5 significant digits, a tensor or array of several values by its
    shape (``tensor[10x10]``, not its repr: a confusion matrix stays one cell), a list by its length."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return f"tensor[{'x'.join(map(str, value.shape))}]"
        value = value.detach().item()
    elif isinstance(value, np.ndarray):
        if value.size != 1:
            return f"array[{'x'.join(map(str, value.shape))}]"
        value = value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.5g}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}[{len(value)}]"
    text = printable(str(value))
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


class MetricsPrinter(Callback):
    """Print a table of the epoch's metric values at every ``EpochEnd``.

    Columns are ``Phase``, ``Epoch`` and then the metrics in the order :class:`Metrics` tracks them (the loss
    first), so the layout is the same every epoch. A metric that is not a number gets a compact cell: a tensor
    or array by its shape (``tensor[10x10]``), a list by its length, other values by their ``str``, cut at
    :data:`MAX_CELL` characters. Before printing it closes its fit's progress bar for the epoch (if
    :class:`ProgressPrinter` has not yet), and it prints through ``tqdm.write``, which clears any other bar on the
    same terminal and redraws it below: a table never lands inside a bar. Detached. ``file`` defaults to
    ``sys.stdout``. A default callback.
    """

    state_access = {"cbstate": {"metrics_epoch": Read(), "history": Read()}}
    run_after = (Metrics, ProgressPrinter)
    detached = True
    rank_zero_only = True  # distributed: rank 0 alone acts (docs/distributed.md)

    def __init__(self, *, file: TextIO | None = None) -> None:
        self.file = file

    def snapshot(self, event: Any, phase: Phase, learner: Any, *, copy: bool = True) -> Any:
        """This phase's epoch metrics (copied under the ActorRunner) and counters; not the other phases'."""
        series = learner.cbstate.metrics_epoch[phase]
        history = learner.cbstate.history[phase]
        return PropDict(series=_snapshot(series) if copy else series, epochs=history.epochs,
                        steps=history.steps_epoch, learner_id=id(learner))

    @on(EpochEnd)
    def epoch_end(self, event: EpochEnd, phase: Phase, learner: Any) -> None:
        series = learner.series
        names = list(series.keys())
        header = ["Phase", "Epoch", *names]
        cells = [type(phase).__name__, str(learner.epochs)]
        cells += [_cell(series.last(name)[1]) for name in names]
        file = self.file if self.file is not None else sys.stdout
        _BARS.finish(learner.learner_id, phase, learner.epochs, learner.steps)
        # tqdm.write clears a progress bar on the same terminal, prints, and redraws the bar below.
        tqdm.write(format_table(header, [cells]), file=file)
        file.flush()
