"""Tests for asyncloop._demo: the digits demo (``asyncloop demo``, examples/demo.py, scripts/demo.sh).

One quick run (3 epochs, ActorRunner) is shared by the tests that check what it learned and wrote; the other
tests need no training.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from asyncloop import _demo
from asyncloop._cli import main as cli


@dataclass(frozen=True)
class QuickRun:
    status: int
    out: str
    err: str
    root: Path

    def path(self, what: str) -> Path:
        """The path the report announces for ``what`` (``checkpoints``, ``tensorboard``, ``event log``, ``plot``)."""
        match = re.search(rf"^  {what} +(\S+)", self.out, flags=re.M)
        assert match, self.out
        return Path(match.group(1))

    @property
    def epochs(self) -> int:
        match = re.search(r"^demo: (\d+) epochs? ", self.out, flags=re.M)
        assert match, self.out
        return int(match.group(1))

    @property
    def test_accuracy(self) -> float:
        match = re.search(r"^demo: test accuracy (\d\.\d{3}) ", self.out, flags=re.M)
        assert match, self.out
        return float(match.group(1))


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """``asyncloop demo --quick --out ROOT``, run in this process."""
    root = tmp_path_factory.mktemp("demo") / "runs"
    out, err = io.StringIO(), io.StringIO()
    status = cli(["demo", "--quick", "--out", str(root)], out=out, err=err)
    return QuickRun(status, out.getvalue(), err.getvalue(), root)


class TestQuickRun:
    def test_learns(self, quick: QuickRun) -> None:
        """The quick demo exits 0 after 3 epochs with a test accuracy far above chance (0.1)."""
        assert quick.status == 0, quick.err
        assert quick.epochs == 3
        assert quick.test_accuracy >= 0.85

    def test_writes_into_a_new_version_folder(self, quick: QuickRun) -> None:
        """Everything goes into OUT/version_0, and the report says so."""
        folder = quick.root / "version_0"
        assert f"demo: everything went to {folder}\n" in quick.out
        for what in ("checkpoints", "tensorboard", "event log", "plot"):
            assert quick.path(what).parent == folder

    def test_best_checkpoint_is_the_one_tested(self, quick: QuickRun) -> None:
        """The announced best checkpoint exists, `latest` names a kept file, and its weights give the reported
        test accuracy on the test split."""
        folder = quick.path("checkpoints")
        best = re.search(r"\(best: (checkpoint_epoch_\d{3}_loss_[0-9.e-]+\.pt);", quick.out)
        assert best, quick.out
        assert (folder / "latest").read_text().strip() in {p.name for p in folder.glob("*.pt")}
        state = torch.load(folder / best.group(1), weights_only=True)
        model = _demo.cnn()
        model.load_state_dict(state["model"])
        model.eval()
        xs, ys = _demo.load_splits(0)["test"]
        with torch.no_grad():
            accuracy = (model(xs).argmax(dim=1) == ys).float().mean().item()
        assert f"{accuracy:.3f}" == f"{quick.test_accuracy:.3f}"

    def test_tensorboard_has_every_epoch(self, quick: QuickRun) -> None:
        """The TensorBoard folder holds event files with one validation-accuracy point per epoch and the
        learning rate of every training step."""
        folder = quick.path("tensorboard")
        assert list(folder.glob("events.out.tfevents.*"))
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        accuracy = accumulator.Scalars("Epoch/ValidationPhase/Metrics/Accuracy")
        assert [e.step for e in accuracy] == [1, 2, 3]
        lrs = [e.value for e in accumulator.Scalars("Step/HParams/LearningRate")]
        assert len(lrs) == 3 * 37 and max(lrs) == pytest.approx(_demo.MAX_LR)  # one cycle: up to the peak ...
        assert lrs[-1] < lrs[0] < _demo.MAX_LR / 10  # ... and down below where it started

    def test_event_log_reads_with_log_show(self, quick: QuickRun) -> None:
        """`asyncloop log show` reads the event log: the config, every epoch's validation accuracy, FitEnd."""
        out, err = io.StringIO(), io.StringIO()
        assert cli(["log", "show", str(quick.path("event log"))], out=out, err=err) == 0
        lines = out.getvalue().splitlines()
        assert err.getvalue() == ""
        assert sum(" value Epoch/ValidationPhase/Metrics/Accuracy " in line for line in lines) == 3
        assert any(" hparams HParams/config " in line for line in lines)
        assert " event Events/FitPhase/FitEnd " in lines[-2] and " close " in lines[-1]
        assert " demo-version_0 " in lines[0]  # the run is named after its folder

    def test_plot_is_a_png(self, quick: QuickRun) -> None:
        """The plot is a PNG of three panels (loss, accuracy, learning rate), 1300x380 pixels."""
        import matplotlib.image

        path = quick.path("plot")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(path).shape[:2] == (380, 1300)


class TestRunFolder:
    def test_versions_count_up(self, tmp_path: Path) -> None:
        """The first run writes to version_0, the next one above the highest existing version; other names are
        ignored."""
        assert _demo.new_run_folder(tmp_path / "out") == tmp_path / "out" / "version_0"
        (tmp_path / "out" / "version_7").mkdir()
        (tmp_path / "out" / "version_x").mkdir()
        assert _demo.new_run_folder(tmp_path / "out") == tmp_path / "out" / "version_8"


class TestArguments:
    def test_defaults(self) -> None:
        """Without options: the ActorRunner, runs/demo, seed 0, and the epochs decided by --quick."""
        args = _demo.make_parser().parse_args([])
        assert (args.runner, args.out, args.seed, args.epochs, args.quick) == ("actor", Path("runs/demo"), 0,
                                                                              None, False)

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--epochs", "0"], "argument --epochs: expected a whole number >= 1, got '0'"),
            (["--epochs", "two"], "argument --epochs: expected a whole number >= 1, got 'two'"),
            (["--runner", "threads"], "argument --runner: invalid choice: 'threads' (choose from 'actor', 'linear')"),
            (["--min-accuracy", "97"], "argument --min-accuracy: expected an accuracy between 0 and 1, got '97'"),
        ],
    )
    def test_bad_arguments(self, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
        """A bad option is an argparse error (exit status 2) that names the option and what it expects."""
        with pytest.raises(SystemExit) as exit_info:
            _demo.make_parser("demo").parse_args(argv)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"demo: error: {message}"

    def test_out_must_not_be_a_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--out naming a file is an argparse error saying to pass a folder."""
        (tmp_path / "f").write_text("")
        with pytest.raises(SystemExit):
            _demo.make_parser("demo").parse_args(["--out", str(tmp_path / "f")])
        expected = (f"demo: error: argument --out: expected a folder, but '{tmp_path / 'f'}' is a file; pass a "
                    f"folder (it is created if missing)")
        assert capsys.readouterr().err.splitlines()[-1] == expected


class TestRun:
    def test_missing_extra(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without scikit-learn the demo exits 1 saying which extra to install, and writes nothing."""
        monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
        args = _demo.make_parser().parse_args(["--out", str(tmp_path / "out")])
        out, err = io.StringIO(), io.StringIO()
        assert _demo.run(args, out, err) == 1
        assert err.getvalue() == (
            "asyncloop demo: error: the demo needs scikit-learn (the digits data set) and matplotlib (the plot), "
            "which are not installed; install them with: pip install 'asyncloop[demo]'\n"
        )
        assert not (tmp_path / "out").exists()

    def test_below_min_accuracy_fails(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A test accuracy below --min-accuracy is exit status 1 with the reason, after the full report."""

        def fake_train(args: argparse.Namespace, folder: Path) -> _demo.Outcome:
            assert args.epochs == _demo.QUICK_EPOCHS
            return _demo.Outcome(folder, folder / "c", folder / "c" / "best.pt", folder / "tb", folder / "e.alog",
                                 folder / "p.png", 3, False, 3, 0.5, 0.42, 1.0)

        monkeypatch.setattr(_demo, "train", fake_train)
        args = _demo.make_parser().parse_args(["--quick", "--out", str(tmp_path), "--min-accuracy", "0.9"])
        out, err = io.StringIO(), io.StringIO()
        assert _demo.run(args, out, err) == 1
        assert "demo: test accuracy 0.420 " in out.getvalue()
        assert err.getvalue() == ("asyncloop demo: the model did not learn: test accuracy 0.420 < 0.9 "
                                  "(--min-accuracy)\n")
