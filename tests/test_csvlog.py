"""Tests for asyncloop.logging._csvlog: one CSV row per logged number, read back with the csv module."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asyncloop import (
    ActorRunner,
    CSVBackend,
    LearningRate,
    LogConfig,
    LogHyperParams,
    LogMetrics,
    Metrics,
    Recorder,
    Scheduler,
    TrainingPhase,
    ValidationPhase,
    fit,
    log_to,
    test_learner,
)
from asyncloop.loggables import Histogram, Image, Text, Value
from asyncloop.logging import HParams
from asyncloop.logging._csvlog import CSV_COLUMNS, HPARAMS_COLUMNS, hparams_path


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


class TestCSVBackend:
    async def test_rows_match_history(self, tmp_path: Path) -> None:
        """Each logged metric is one row (run, phase, unit, index, name, value) equal to the learner's history."""
        path = tmp_path / "metrics.csv"
        backend = CSVBackend(path, run="r1")
        learner = test_learner(Recorder(), Metrics(), LogMetrics(backend), n_batches=3, runner=ActorRunner())
        await fit(learner, 2)
        header, rows = read_rows(path)
        assert header == list(CSV_COLUMNS) == ["run", "phase", "unit", "index", "name", "value", "tag", "time"]
        assert {row["run"] for row in rows} == {"r1"}
        cbstate = learner.cbstate
        for phase in (TrainingPhase(), ValidationPhase()):
            for unit, histories in (("step", cbstate.metrics_step), ("epoch", cbstate.metrics_epoch)):
                mine = [r for r in rows if r["phase"] == type(phase).__name__ and r["unit"] == unit]
                assert [int(r["index"]) for r in mine] == histories[phase].indices("Loss")
                assert [float(r["value"]) for r in mine] == histories[phase].values("Loss")
                assert {r["tag"] for r in mine} == {f"{unit.title()}/{type(phase).__name__}/Metrics/Loss"}
        assert len(rows) == 2 * (6 + 2)

    async def test_hyperparameters_have_no_phase(self, tmp_path: Path) -> None:
        """Rows grouped (unit, category) have an empty phase."""
        path = tmp_path / "hp.csv"
        learner = test_learner(
            Recorder(), Scheduler({LearningRate: lambda t: 0.5 / t}), LogHyperParams(CSVBackend(path)), n_batches=2
        )
        await fit(learner, 1)
        _, rows = read_rows(path)
        assert [(r["phase"], r["unit"], r["index"], r["name"], float(r["value"])) for r in rows] == [
            ("", "step", "1", "LearningRate", 0.5),
            ("", "step", "2", "LearningRate", 0.25),
        ]

    def test_only_numbers(self, tmp_path: Path) -> None:
        """Text, images and histograms are skipped; only values become rows."""
        path = tmp_path / "mixed.csv"
        backend = CSVBackend(path)
        log_to(backend, Text("hi"), "note", 1)
        log_to(backend, Image(np.zeros((2, 2, 1))), "img", 1)
        log_to(backend, Histogram([1.0]), "h", 1)
        log_to(backend, Value(7), "count", 1, ("Epoch", "TrainingPhase", "Metrics"))
        backend.close()
        _, rows = read_rows(path)
        assert [(r["name"], r["value"], r["unit"], r["phase"]) for r in rows] == [
            ("count", "7", "epoch", "TrainingPhase")]

    def test_values_round_trip(self, tmp_path: Path) -> None:
        """Floats are written in full precision (repr), NaN and inf included."""
        path = tmp_path / "x.csv"
        backend = CSVBackend(path)
        values = [0.1 + 0.2, 1e-300, float("inf"), -2.5]
        for i, v in enumerate(values):
            log_to(backend, Value(v), "x", i)
        log_to(backend, Value(float("nan")), "x", 9)
        backend.close()
        _, rows = read_rows(path)
        assert [float(r["value"]) for r in rows[:4]] == values
        assert rows[4]["value"] == "nan"

    def test_appends_to_a_file_with_this_header(self, tmp_path: Path) -> None:
        """A second run appends to an existing file: one header, rows of both runs."""
        path = tmp_path / "runs.csv"
        for run in ("a", "b"):
            backend = CSVBackend(path, run=run)
            log_to(backend, Value(1.0), "x", 1)
            backend.close()
        with open(path, encoding="utf-8") as f:
            assert f.read().count("run,phase") == 1
        assert [r["run"] for r in read_rows(path)[1]] == ["a", "b"]

    def test_refuses_a_file_with_another_header(self, tmp_path: Path) -> None:
        """Appending to a CSV file with a different header is refused, with the fix in the message."""
        path = tmp_path / "other.csv"
        path.write_text("a,b\n1,2\n")
        backend = CSVBackend(path)
        with pytest.raises(
            ValueError,
            match=r"^.*other\.csv exists and its header is not run,phase,unit,index,name,value,tag,time; log to a new "
                  r"file or move this one away$",
        ):
            backend.log_to(Value(1.0), "x", 1)

    def test_rows_are_visible_while_open(self, tmp_path: Path) -> None:
        """Rows are flushed as they are written, so the file can be read during training; the folder is created."""
        path = tmp_path / "logs" / "live.csv"
        backend = CSVBackend(path)
        log_to(backend, Value(1.0), "x", 1)
        assert len(read_rows(path)[1]) == 1
        backend.close()

    def test_bad_run(self, tmp_path: Path) -> None:
        """run must be a str."""
        with pytest.raises(TypeError, match=r"^run must be a str or None, got 3$"):
            CSVBackend(tmp_path / "x.csv", run=3)  # type: ignore[arg-type]

    def test_default_run_and_repr(self, tmp_path: Any) -> None:
        """Without run= each backend gets a fresh run name."""
        a, b = CSVBackend(tmp_path / "a.csv"), CSVBackend(tmp_path / "a.csv")
        assert a.run != b.run
        assert repr(a).startswith("CSVBackend(")


class TestHParamsSidecar:
    def test_path(self) -> None:
        """The sidecar of runs.csv is runs.hparams.csv; a path without .csv gets the suffix appended."""
        assert hparams_path("logs/runs.csv") == "logs/runs.hparams.csv"
        assert hparams_path("logs/runs") == "logs/runs.hparams.csv"
        assert CSVBackend("a/b.csv").hparams_path == "a/b.hparams.csv"

    async def test_config_and_final_rows(self, tmp_path: Path) -> None:
        """LogConfig writes 'config' rows and 'final' rows to the sidecar; the main file keeps numbers only."""
        path = tmp_path / "runs.csv"
        backend = CSVBackend(path, run="r")
        learner = test_learner(Recorder(), Metrics(), LogMetrics(backend),
                               LogConfig({"name": "baseline", "lr": 0.5}, backend, optimizer=False), n_batches=2)
        await fit(learner, 1)
        header, rows = read_rows(tmp_path / "runs.hparams.csv")
        assert tuple(header) == HPARAMS_COLUMNS
        assert [(r["run"], r["stage"], r["name"], r["value"]) for r in rows] == [
            ("r", "config", "name", "baseline"), ("r", "config", "lr", "0.5"),
            ("r", "final", "TrainingPhase/Loss", repr(learner.cbstate.metrics_epoch[TrainingPhase()].last("Loss")[1])),
            ("r", "final", "ValidationPhase/Loss",
             repr(learner.cbstate.metrics_epoch[ValidationPhase()].last("Loss")[1]))]
        _, main = read_rows(path)
        assert all(float(r["value"]) == float(r["value"]) for r in main)
        assert "HParams" not in {r["tag"].split("/")[0] for r in main}

    def test_sidecar_with_another_header(self, tmp_path: Path) -> None:
        """A sidecar file with another header is refused, like the main file."""
        (tmp_path / "runs.hparams.csv").write_text("a,b\n")
        with pytest.raises(ValueError, match="runs.hparams.csv exists and its header is not run,stage,name,value,time"):
            log_to(CSVBackend(tmp_path / "runs.csv"), HParams({"a": 1}), "config", 0, "HParams")


def test_a_pickled_backend_appends_to_the_same_file(tmp_path) -> None:
    """A CSVBackend pickles even while open (a process actor's copy): the copy starts closed and appends rows with
    the same run name to the same file."""
    import csv as _csv
    import pickle

    from asyncloop import CSVBackend
    from asyncloop.loggables import Value

    backend = CSVBackend(tmp_path / "m.csv", run="r")
    backend.log_to(Value(1.0), "Loss", 1, ("Step", "TrainingPhase", "Metrics"))
    copy = pickle.loads(pickle.dumps(backend))
    copy.log_to(Value(2.0), "Loss", 2, ("Step", "TrainingPhase", "Metrics"))
    copy.close()
    backend.close()
    with open(tmp_path / "m.csv", newline="") as f:
        rows = list(_csv.reader(f))
    assert [(r[0], r[3], r[5]) for r in rows[1:]] == [("r", "1", "1.0"), ("r", "2", "2.0")]
