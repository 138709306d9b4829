"""Tests for asyncloop.callbacks._printers: the per-epoch progress bar and metrics table."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pytest
import torch
import torchmetrics
import trio

from asyncloop import (
    EpochEnd,
    ActorRunner,
    LinearRunner,
    Metric,
    Metrics,
    MetricsPrinter,
    ProgressPrinter,
    Read,
    Recorder,
    TrainingPhase,
    ValidationPhase,
    accuracy,
    epoch,
    on,
    fit,
    test_learner,
)
from asyncloop.callbacks import _printers
from asyncloop.callbacks._printers import _cell, format_table


def max_error(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return (preds - ys).abs().max()


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal, so ProgressPrinter draws bars into it."""

    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """The lines a terminal would show after ``text``: ``\\r`` returns to the line's start, ``\\x1b[A`` moves up a
    line; what is written over a line replaces it (tqdm pads its redraws to the old width)."""
    lines, row, col = [""], 0, 0
    for part in re.split(r"(\r|\n|\x1b\[A)", text):
        if part == "\r":
            col = 0
        elif part == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif part == "\x1b[A":
            row = max(row - 1, 0)
        elif part:
            line = lines[row]
            lines[row] = line[:col] + part + line[col + len(part):]
            col += len(part)
    return [line.rstrip() for line in lines if line.strip()]


def tables(text: str) -> list[tuple[list[str], list[str]]]:
    """Parse the boxed tables in ``text`` into ``(header cells, row cells)`` pairs."""
    lines = [line for line in text.splitlines() if line.startswith("│")]
    rows = [[cell.strip() for cell in line.strip("│").split("│")] for line in lines]
    return list(zip(rows[::2], rows[1::2]))


class TestProgressPrinter:
    def test_writes_a_bar_per_epoch(self) -> None:
        """ProgressPrinter writes a tqdm bar per epoch titled 'Epoch N Phase()', with the epoch's length as total."""
        out = FakeTTY()
        learner = test_learner(Recorder(), ProgressPrinter(file=out), n_batches=3)
        trio.run(fit, learner, 2)
        text = out.getvalue()
        for title in ("Epoch 1 TrainingPhase()", "Epoch 1 ValidationPhase()", "Epoch 2 TrainingPhase()",
                      "Epoch 2 ValidationPhase()"):
            assert title in text
        assert "Epoch 3" not in text
        assert text.count("3/3") >= 4

    def test_total_follows_the_epoch_data(self) -> None:
        """The bar's total is the length of the data the epoch runs over, also when passed to epoch()."""
        out = FakeTTY()
        learner = test_learner(Recorder(), ProgressPrinter(file=out), n_batches=4)
        trio.run(epoch, learner, TrainingPhase(), learner.data.training[:2])
        assert "2/2" in out.getvalue()

    def test_iterable_without_length(self) -> None:
        """Data without a length gives a bar without a total that still counts steps."""
        out = FakeTTY()
        learner = test_learner(Recorder(), ProgressPrinter(file=out), n_batches=3)
        trio.run(epoch, learner, TrainingPhase(), (batch for batch in learner.data.training))
        text = out.getvalue()
        assert "Epoch 1 TrainingPhase()" in text
        assert "3it" in text

    def test_default_file_is_stderr(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without file=, the progress goes to sys.stderr (as a plain line: here it is no terminal)."""
        trio.run(epoch, test_learner(Recorder(), ProgressPrinter(), n_batches=1), TrainingPhase())
        captured = capsys.readouterr()
        assert "Epoch 1 TrainingPhase()" in captured.err
        assert captured.out == ""

    def test_tqdm_kwargs(self) -> None:
        """Extra keyword arguments go to tqdm."""
        out = FakeTTY()
        learner = test_learner(Recorder(), ProgressPrinter(file=out, ascii=True, unit="batch"), n_batches=2)
        trio.run(epoch, learner, TrainingPhase())
        assert "batch/s" in out.getvalue()

    def test_declarations(self) -> None:
        """ProgressPrinter reads the history, the epoch metrics (the loss of a plain line) and the epoch data, runs
        after the Recorder and Metrics, and is detached."""
        assert ProgressPrinter.state_access == {
            "cbstate": {"history": Read(), "metrics_epoch": Read()}, "epoch_data": Read()}
        assert ProgressPrinter.run_after == (Recorder, Metrics)
        assert ProgressPrinter.detached is True


class TestMetricsPrinter:
    def test_prints_a_table_per_epoch(self) -> None:
        """MetricsPrinter prints one table per epoch: Phase, Epoch, Loss, then the metrics in Metrics' order."""
        out = io.StringIO()
        metrics = Metrics(Metric(max_error, name="Zeta"), accuracy)
        learner = test_learner(Recorder(), metrics, MetricsPrinter(file=out), n_batches=2)
        trio.run(fit, learner, 2)
        parsed = tables(out.getvalue())
        assert [header for header, _ in parsed] == [["Phase", "Epoch", "Loss", "Zeta", "Accuracy"]] * 4
        assert [row[:2] for _, row in parsed] == [
            ["TrainingPhase", "1"], ["ValidationPhase", "1"], ["TrainingPhase", "2"], ["ValidationPhase", "2"]
        ]
        last_valid = parsed[3][1]
        series = learner.cbstate.metrics_epoch[ValidationPhase()]
        assert last_valid[2:] == [f"{series.last(name)[1]:.5g}" for name in ("Loss", "Zeta", "Accuracy")]

    def test_default_file_is_stdout(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without file=, the table goes to sys.stdout."""
        trio.run(epoch, test_learner(Recorder(), Metrics(), MetricsPrinter(), n_batches=1), TrainingPhase())
        captured = capsys.readouterr()
        assert tables(captured.out)[0][0] == ["Phase", "Epoch", "Loss"]

    def test_declarations(self) -> None:
        """MetricsPrinter reads the epoch metrics and history, runs after Metrics and the bar, and is detached."""
        assert MetricsPrinter.state_access == {"cbstate": {"metrics_epoch": Read(), "history": Read()}}
        assert MetricsPrinter.run_after == (Metrics, ProgressPrinter)
        assert MetricsPrinter.detached is True


class TestFormatTable:
    def test_layout(self) -> None:
        """format_table draws a boxed table with right-aligned cells."""
        assert format_table(["a", "bb"], [["123", "4"]]) == "\n".join(
            [
                "┌─────┬────┐",
                "│   a │ bb │",
                "├─────┼────┤",
                "│ 123 │  4 │",
                "└─────┴────┘",
            ]
        )


class TestDefaults:
    def test_default_learner_output(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A learner with the default callbacks prints bars to stderr and tables to stdout."""
        learner: Any = test_learner(use_default_callbacks=True, n_batches=2)
        trio.run(fit, learner, 1)
        captured = capsys.readouterr()
        assert "Epoch 1 ValidationPhase()" in captured.err
        assert [row[0] for _, row in tables(captured.out)] == ["TrainingPhase", "ValidationPhase"]


RUNNERS = [pytest.param(LinearRunner, id="linear"), pytest.param(ActorRunner, id="actor")]
PLAIN = re.compile(r"^Epoch (\d+) (TrainingPhase|ValidationPhase)\(\): (\d+)/(\d+) steps in \d+\.\ds(, Loss \S+)?$")


class TestPlainLines:
    @pytest.mark.parametrize("runner", RUNNERS)
    def test_a_line_per_epoch_when_not_a_terminal(self, runner: Any) -> None:
        """On a stream that is no terminal there is no bar and no carriage return: one line per epoch with the
        phase, epoch, steps, elapsed time and the epoch's loss."""
        out = io.StringIO()
        learner = test_learner(Recorder(), Metrics(), ProgressPrinter(file=out), n_batches=3, runner=runner())
        trio.run(fit, learner, 2)
        text = out.getvalue()
        assert "\r" not in text
        lines = text.splitlines()
        parsed = [PLAIN.match(line) for line in lines]
        assert all(parsed), lines
        assert [(m[1], m[2], m[3], m[4]) for m in parsed] == [  # type: ignore[index]
            (e, p, "3", "3") for e in ("1", "2") for p in ("TrainingPhase", "ValidationPhase")]
        loss = learner.cbstate.metrics_epoch[ValidationPhase()].last("Loss")[1]
        assert lines[-1].endswith(f", Loss {loss:.5g}")

    def test_without_metrics_no_loss(self) -> None:
        """Without Metrics the line has no loss; data without a length shows the step count alone."""
        out = io.StringIO()
        learner = test_learner(Recorder(), ProgressPrinter(file=out), n_batches=2)
        trio.run(epoch, learner, TrainingPhase(), (batch for batch in learner.data.training))
        assert re.fullmatch(r"Epoch 1 TrainingPhase\(\): 2 steps in \d+\.\ds\n", out.getvalue())

    def test_plain_lines_when_another_fit_prints_there(self) -> None:
        """While another fit's ProgressPrinter prints to the same terminal, a fit prints plain lines, not bars;
        once its fit ends a printer leaves the registry."""
        out = FakeTTY()
        other = ProgressPrinter(file=out)
        _printers._FITS.enter(out, other)
        try:
            printer = ProgressPrinter(file=out)
            trio.run(fit, test_learner(Recorder(), printer, n_batches=2), 1)
        finally:
            _printers._FITS.leave(out, other)
        assert [bool(PLAIN.match(line)) for line in out.getvalue().splitlines()] == [True, True]
        assert not _printers._FITS.shared(out, other)

    async def test_two_concurrent_fits_on_one_terminal(self) -> None:
        """Two fits running at once and printing to one terminal (bars and tables) never garble each other: every
        screen line is a whole table line or one epoch's line, and every epoch of each fit shows as one whole line
        (a finished bar or a plain line)."""
        out = FakeTTY()

        async def one(n_batches: int) -> None:
            learner = test_learner(Recorder(), Metrics(), ProgressPrinter(file=out, mininterval=0), MetricsPrinter(
                file=out), n_batches=n_batches, runner=ActorRunner())
            await fit(learner, 3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 40)
            nursery.start_soon(one, 30)
        lines = screen(out.getvalue())
        whole = re.compile(r"^(┌[─┬]+┐|│[^│]+(│[^│]+)*│|├[─┼]+┤|└[─┴]+┘|Epoch \d+ \w+\(\): [^│┌┐]*)$")
        assert [line for line in lines if not whole.match(line) or line.count("Epoch ") > 1] == []
        shown = [line for line in lines if line.startswith("Epoch")]
        for n in (40, 30):
            for k in (1, 2, 3):
                for phase in ("TrainingPhase", "ValidationPhase"):
                    done = [line for line in shown if line.startswith(f"Epoch {k} {phase}()") and f"{n}/{n}" in line]
                    assert len(done) == 1, (n, k, phase, shown)


class TestNotebook:
    def test_notebook_bars(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """In a notebook, with the default file, the bars are tqdm.notebook's (faked here), not plain lines."""
        made: list[Any] = []

        class FakeNotebookBar(_printers.tqdm):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["file"] = io.StringIO()
                super().__init__(*args, **kwargs)
                made.append(self)

        monkeypatch.setattr(_printers, "_in_notebook", lambda: True)
        monkeypatch.setattr(_printers, "_notebook_tqdm", lambda: FakeNotebookBar)
        trio.run(fit, test_learner(Recorder(), ProgressPrinter(), n_batches=2), 1)
        assert [bar.desc for bar in made] == ["Epoch 1 TrainingPhase()", "Epoch 1 ValidationPhase()"]
        assert [bar.n for bar in made] == [2, 2]

    def test_no_notebook_outside_a_kernel(self) -> None:
        """Outside an IPython kernel (here) there is no notebook."""
        assert _printers._in_notebook() is False


class TestTableAfterBar:
    def test_table_follows_its_finished_bar(self) -> None:
        """Under the LinearRunner, on one terminal, every table follows its own epoch's finished bar."""
        out = FakeTTY()
        learner = test_learner(Recorder(), Metrics(), ProgressPrinter(file=out), MetricsPrinter(file=out),
                               n_batches=3, runner=LinearRunner())
        trio.run(fit, learner, 2)
        shown = screen(out.getvalue())
        before_tables = [shown[i - 1] for i, line in enumerate(shown) if line.startswith("┌")]
        assert [line.split(":")[0] for line in before_tables] == [
            f"Epoch {e} {p}()" for e in (1, 2) for p in ("TrainingPhase", "ValidationPhase")]
        assert all("3/3" in line for line in before_tables)

    def test_the_table_closes_a_bar_still_open(self) -> None:
        """If the epoch's bar is still open when the table prints (ProgressPrinter's actor lagging: simulated by a
        printer that never closes it), MetricsPrinter brings it to the epoch's step count and closes it first."""

        class Lagging(ProgressPrinter):
            @on(EpochEnd)
            def epoch_end(self, event: Any, phase: Any, learner: Any) -> None:
                pass

        out = FakeTTY()
        learner = test_learner(Recorder(), Metrics(), Lagging(file=out, mininterval=3600), MetricsPrinter(file=out),
                               n_batches=3)
        trio.run(epoch, learner, TrainingPhase())
        shown = screen(out.getvalue())
        assert shown[0].startswith("Epoch 1 TrainingPhase(): 100%") and "3/3" in shown[0]
        assert shown[1].startswith("┌") and len(shown) == 6

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_tables_never_land_in_a_bar(self, runner: Any) -> None:
        """On one terminal, under both runners, a table is printed whole, never inside a bar's line: each table
        follows a finished bar or another table (the printers are separate actors under the ActorRunner, so a
        lagging table may come after the next epoch's bar, never within it)."""
        out = FakeTTY()
        learner = test_learner(Recorder(), Metrics(), ProgressPrinter(file=out), MetricsPrinter(file=out),
                               n_batches=3, runner=runner())
        trio.run(fit, learner, 2)
        shown = screen(out.getvalue())
        whole = re.compile(r"^(┌[─┬]+┐|│[^│]+(│[^│]+)*│|├[─┼]+┤|└[─┴]+┘|Epoch \d+ \w+\(\): 100%[^│┌┐]* 3/3 .*)$")
        assert [line for line in shown if not whole.match(line)] == []
        assert all(shown[i - 1].startswith(("Epoch", "└")) for i, line in enumerate(shown) if line.startswith("┌"))
        assert len(tables("\n".join(shown))) == 4
        assert sum(line.startswith("Epoch") for line in shown) == 4


class TestCells:
    def test_compact_cells(self) -> None:
        """A tensor or array of several values is shown by its shape, one value as a number, a list by its length,
        long or multi-line text cut to one short line."""
        assert _cell(torch.zeros(10, 10)) == "tensor[10x10]"
        assert _cell(np.zeros((2, 3))) == "array[2x3]"
        assert _cell(torch.tensor(0.123456789)) == "0.12346"
        assert _cell(np.float64(2.5)) == "2.5"
        assert _cell([1, 2, 3]) == "list[3]"
        assert _cell(7) == "7"
        assert _cell("a\nb") == "a\\nb"
        assert _cell("x" * 50) == "x" * 39 + "…"

    def test_a_confusion_matrix_keeps_the_table_aligned(self) -> None:
        """A matrix-valued metric is one cell of its shape and every table line has the same width."""
        out = io.StringIO()

        class Confusion(torchmetrics.Metric):
            def __init__(self) -> None:
                super().__init__()
                self.add_state("counts", default=torch.zeros(3, 3), dist_reduce_fx="sum")

            def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
                self.counts += 1

            def compute(self) -> torch.Tensor:
                return self.counts

        learner = test_learner(Recorder(), Metrics(Confusion()), MetricsPrinter(file=out), n_batches=2)
        trio.run(epoch, learner, TrainingPhase())
        lines = out.getvalue().splitlines()
        assert tables(out.getvalue())[0][1][-1] == "tensor[3x3]"
        assert len({len(line) for line in lines}) == 1
