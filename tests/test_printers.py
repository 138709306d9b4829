"""Tests for asyncloop.callbacks._printers: the per-epoch progress bar and metrics table."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
import trio

from asyncloop import (
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
    fit,
    test_learner,
)
from asyncloop.callbacks._printers import format_table


def max_error(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return (preds - ys).abs().max()


def tables(text: str) -> list[tuple[list[str], list[str]]]:
    """Parse the boxed tables in ``text`` into ``(header cells, row cells)`` pairs."""
    lines = [line for line in text.splitlines() if line.startswith("│")]
    rows = [[cell.strip() for cell in line.strip("│").split("│")] for line in lines]
    return list(zip(rows[::2], rows[1::2]))


class TestProgressPrinter:
    def test_writes_a_bar_per_epoch(self) -> None:
        """ProgressPrinter writes a tqdm bar per epoch titled 'Epoch N Phase()', with the epoch's length as total."""
        out = io.StringIO()
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
        out = io.StringIO()
        learner = test_learner(Recorder(), ProgressPrinter(file=out), n_batches=4)
        trio.run(epoch, learner, TrainingPhase(), learner.data.training[:2])
        assert "2/2" in out.getvalue()

    def test_iterable_without_length(self) -> None:
        """Data without a length gives a bar without a total that still counts steps."""
        out = io.StringIO()
        learner = test_learner(Recorder(), ProgressPrinter(file=out), n_batches=3)
        trio.run(epoch, learner, TrainingPhase(), (batch for batch in learner.data.training))
        text = out.getvalue()
        assert "Epoch 1 TrainingPhase()" in text
        assert "3it" in text

    def test_default_file_is_stderr(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without file=, the bar goes to sys.stderr."""
        trio.run(epoch, test_learner(Recorder(), ProgressPrinter(), n_batches=1), TrainingPhase())
        captured = capsys.readouterr()
        assert "Epoch 1 TrainingPhase()" in captured.err
        assert captured.out == ""

    def test_tqdm_kwargs(self) -> None:
        """Extra keyword arguments go to tqdm."""
        out = io.StringIO()
        learner = test_learner(Recorder(), ProgressPrinter(file=out, ascii=True, unit="batch"), n_batches=2)
        trio.run(epoch, learner, TrainingPhase())
        assert "batch/s" in out.getvalue()

    def test_declarations(self) -> None:
        """ProgressPrinter reads the history and the epoch data, runs after the Recorder and is detached."""
        assert ProgressPrinter.state_access == {"cbstate": {"history": Read()}, "epoch_data": Read()}
        assert ProgressPrinter.run_after == (Recorder,)
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
