"""Tests for asyncloop.callbacks._checkpointer: checkpoints per epoch, top-k, durability, detached writes, resume."""

from __future__ import annotations

import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import trio
from torch.utils.data import DataLoader, TensorDataset

from asyncloop import (
    AbstractTrainingPhase,
    AbstractValidationPhase,
    ActorRunner,
    Callback,
    Checkpointer,
    EarlyStopping,
    EpochEnd,
    GradientClipping,
    Learner,
    LearningRate,
    LinearRunner,
    Metrics,
    Read,
    Recorder,
    Scheduler,
    StepEnd,
    TrainingPhase,
    ValidationPhase,
    accuracy,
    epoch,
    fit,
    on,
    one_cycle,
    run_step,
    test_learner,
)
from asyncloop import _durable as durable_module
from asyncloop._checkpoint_files import read_checkpoint
from asyncloop._exceptions import CheckpointError
from asyncloop.stopping import NumberLimit, NumberSinceBest
from matchers import exact
from scripted import Scripted

RUNNERS = [LinearRunner, ActorRunner]


def checkpoints(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint_"))


def same_tree(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    return a == b or (a != a and b != b)


class TestSeedCases:
    def test_one_checkpoint_per_epoch(self, tmp_path: Path) -> None:
        """Seed #18: no files before; fit(5) leaves 5 checkpoints (and the 'latest' pointer)."""
        learner = test_learner(Checkpointer(tmp_path), Recorder(), Metrics())
        assert checkpoints(tmp_path) == []
        trio.run(fit, learner, 5)
        names = checkpoints(tmp_path)
        assert len(names) == 5
        assert (tmp_path / "latest").read_text() == names[-1] + "\n"
        assert sorted(os.listdir(tmp_path)) == sorted([*names, "latest"])

    def test_top_k(self, tmp_path: Path) -> None:
        """Seed #19: keep_top_k=8 keeps 5, then 8; a loss of 1e5 is kept as the latest and named '100000.0'."""
        learner = test_learner(Checkpointer(tmp_path, keep_top_k=8), Recorder(), Metrics())
        trio.run(fit, learner, 5)
        assert len(checkpoints(tmp_path)) == 5
        trio.run(fit, learner, 5)
        assert len(checkpoints(tmp_path)) == 8
        learner.loss_fn = lambda preds, ys: (preds * 0).sum() + 1e5
        trio.run(fit, learner, 1)
        assert learner.cbstate.metrics_epoch[TrainingPhase()].last("Loss")[1] == 1e5
        names = checkpoints(tmp_path)
        assert len(names) == 9
        assert any("100000.0" in name for name in names)
        assert (tmp_path / "latest").read_text().strip() == "checkpoint_epoch_011_loss_100000.0.pt"


class TestNamingAndRetention:
    def test_name_uses_epoch_and_training_loss(self, tmp_path: Path) -> None:
        """checkpoint_epoch_{epoch:03d}_loss_{value!r}.pt with the training loss of that epoch."""
        learner = test_learner(Checkpointer(tmp_path), Recorder(), Metrics(), n_batches=2)
        trio.run(fit, learner, 2)
        losses = learner.cbstate.metrics_epoch[TrainingPhase()].values("Loss")
        assert checkpoints(tmp_path) == [f"checkpoint_epoch_{i + 1:03d}_loss_{v!r}.pt" for i, v in enumerate(losses)]

    def test_top_k_by_a_validation_metric_in_max_mode(self, tmp_path: Path) -> None:
        """keep_top_k ranks by any monitored metric; the most recent is kept even when it is the worst."""
        values = [0.5, 0.9, 0.7, 0.8, 0.6]
        cb = Checkpointer(tmp_path, keep_top_k=2, monitor="Accuracy", mode="max", phase=ValidationPhase)
        learner = test_learner(cb, Recorder(), Metrics(Scripted("Accuracy", values)), n_batches=2)
        trio.run(fit, learner, 5)
        assert checkpoints(tmp_path) == [
            "checkpoint_epoch_002_accuracy_0.9.pt",
            "checkpoint_epoch_004_accuracy_0.8.pt",
            "checkpoint_epoch_005_accuracy_0.6.pt",
        ]
        assert cb.best == tmp_path / "checkpoint_epoch_002_accuracy_0.9.pt"
        assert cb.paths == [tmp_path / n for n in checkpoints(tmp_path)]

    def test_without_validation_data(self, tmp_path: Path) -> None:
        """Without validation every epoch is still checkpointed (at the next epoch or at FitEnd)."""
        learner = test_learner(Checkpointer(tmp_path), Recorder(), Metrics(), n_batches=2)
        learner.data = {"training": learner.data.training}
        trio.run(fit, learner, 3)
        assert len(checkpoints(tmp_path)) == 3

    def test_manual_epochs(self, tmp_path: Path) -> None:
        """With epoch() calls, an epoch's checkpoint is written when the next training epoch begins."""
        learner = test_learner(Checkpointer(tmp_path), Recorder(), Metrics(), n_batches=2)
        trio.run(epoch, learner, TrainingPhase())
        assert checkpoints(tmp_path) == []
        trio.run(epoch, learner, TrainingPhase())
        assert len(checkpoints(tmp_path)) == 1 and checkpoints(tmp_path)[0].startswith("checkpoint_epoch_001_")

    def test_early_stop_writes_the_last_epoch(self, tmp_path: Path) -> None:
        """When EarlyStopping ends the fit, the stopped epoch's checkpoint is written at FitEnd, with its state."""
        learner = test_learner(
            Checkpointer(tmp_path), EarlyStopping(NumberLimit(2)), Recorder(), Metrics(), n_batches=2
        )
        result = trio.run(fit, learner, 5)
        assert result.stopped and len(checkpoints(tmp_path)) == 2
        state = read_checkpoint(tmp_path)
        assert state["callbacks"]["EarlyStopping"] == {"state": 2}
        assert state["epoch"] == 2


class TestBadInput:
    def test_unwritable_folder(self, tmp_path: Path) -> None:
        """A folder that cannot be created is an error at construction, naming it."""
        (tmp_path / "file").write_text("x")
        folder = tmp_path / "file" / "ckpt"
        with pytest.raises(
            CheckpointError,
            match=exact(
                f"Checkpointer cannot write to {folder}: Not a directory; pass a folder it can create and write to"
            ),
        ):
            Checkpointer(folder)

    @pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
    def test_read_only_folder(self, tmp_path: Path) -> None:
        """A read-only folder is an error at construction."""
        tmp_path.chmod(0o500)
        try:
            with pytest.raises(CheckpointError, match=r"^Checkpointer cannot write to .*: Permission denied"):
                Checkpointer(tmp_path)
        finally:
            tmp_path.chmod(0o700)

    @pytest.mark.parametrize(
        ("monitor", "mode"),
        [("Accuracy", "max"), ("BinaryF1Score", "max"), ("Precision", "max"), ("Recall", "max"), ("AUROC", "max"),
         ("Loss", "min"), ("MSE", "min"), ("DiceLoss", "min"), ("AccuracyError", "min")],
    )
    def test_mode_is_inferred_from_monitor(self, tmp_path: Path, monitor: str, mode: str) -> None:
        """mode=None (the default) is max for metrics known to grow, min for anything else or any loss/error."""
        assert Checkpointer(tmp_path, monitor=monitor).mode == mode

    def test_explicit_mode_wins(self, tmp_path: Path) -> None:
        """An explicit mode is kept even against the inferred direction."""
        assert Checkpointer(tmp_path, monitor="Accuracy", mode="min").mode == "min"

    def test_bad_arguments(self, tmp_path: Path) -> None:
        """keep_top_k, mode, monitor and phase are checked."""
        with pytest.raises(ValueError, match=exact("Checkpointer: keep_top_k must be None or an int >= 1, got 0")):
            Checkpointer(tmp_path, keep_top_k=0)
        with pytest.raises(ValueError, match=exact("Checkpointer: mode must be 'min' or 'max', got 'best'")):
            Checkpointer(tmp_path, mode="best")
        with pytest.raises(
            TypeError, match=exact("Checkpointer: monitor must be a metric name such as 'Loss', got ''")
        ):
            Checkpointer(tmp_path, monitor="")
        with pytest.raises(
            TypeError, match=exact("Checkpointer: phase must be a Phase class such as ValidationPhase, got 3")
        ):
            Checkpointer(tmp_path, phase=3)  # type: ignore[arg-type]

    def test_needs_a_recorder(self, tmp_path: Path) -> None:
        """Without a Recorder there are no epoch numbers: a clear error at the first epoch."""
        learner = test_learner(Checkpointer(tmp_path))
        with pytest.raises(RuntimeError) as info:
            trio.run(fit, learner, 1)
        assert str(info.value) == (
            "Checkpointer numbers checkpoints by the epochs the Recorder counts, and there is no Recorder; "
            "add Recorder() (a default callback)"
        )

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_unknown_monitor(self, tmp_path: Path, runner: type) -> None:
        """A monitor no Metrics records is an error when the Learner is built (was: at the first checkpoint)."""
        with pytest.raises(ValueError) as info:
            test_learner(Checkpointer(tmp_path, monitor="Acc"), Recorder(), Metrics(), runner=runner())
        assert str(info.value) == (
            "Checkpointer monitors 'Acc', which no Metrics records (recorded: 'Loss'); "
            "pass monitor= one of those, or add the metric to Metrics(...)"
        )
        assert checkpoints(tmp_path) == []

    def test_monitor_of_another_phase_fails_at_first_checkpoint(self, tmp_path: Path) -> None:
        """A metric Metrics records only for validation is still an error at the first training checkpoint."""
        learner = test_learner(
            Checkpointer(tmp_path, monitor="Score"), Recorder(),
            Metrics(Scripted("Score", [1.0, 1.0])),
        )
        with pytest.raises(ValueError) as info:
            trio.run(fit, learner, 2)
        assert str(info.value) == (
            "Checkpointer monitors 'Score', which Metrics did not record for TrainingPhase() (recorded: 'Loss'); "
            "pass monitor= one of those, or add the metric to Metrics(...)"
        )
        assert checkpoints(tmp_path) == []

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_failed_write_keeps_earlier_checkpoints(
        self, tmp_path: Path, runner: type, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A write that fails ends the fit with a clear error; earlier files, 'latest' and the folder are intact."""
        learner = test_learner(
            Checkpointer(tmp_path, keep_top_k=1), Recorder(), Metrics(), n_batches=2, runner=runner()
        )
        trio.run(fit, learner, 2)
        before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
        real_save = torch.save

        def full_disk(obj: Any, f: Any, *args: Any, **kw: Any) -> None:
            real_save(obj, f, *args, **kw)
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(torch, "save", full_disk)
        with pytest.raises(CheckpointError) as info:
            trio.run(fit, learner, 1)
        monkeypatch.setattr(torch, "save", real_save)
        assert re.fullmatch(
            rf"Checkpointer could not write {re.escape(str(tmp_path))}/checkpoint_epoch_003_loss_[0-9.e+-]+\.pt: "
            rf"No space left on device; earlier checkpoints and 'latest' are as they were; free disk space \(or fix "
            rf"the folder\), then resume from {re.escape(str(tmp_path))}",
            str(info.value),
        ), str(info.value)
        after = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
        assert after == before

    def test_corrupted_latest_checkpoint(self, tmp_path: Path) -> None:
        """A corrupted checkpoint is a clear error on resume; the earlier checkpoints still resume."""
        learner = test_learner(Checkpointer(tmp_path), Recorder(), Metrics(), n_batches=2)
        trio.run(fit, learner, 2)
        first, last = checkpoints(tmp_path)
        (tmp_path / last).write_bytes(b"garbage")
        earlier = (tmp_path / first).read_bytes()
        fresh = test_learner(Checkpointer(tmp_path), Recorder(), Metrics(), n_batches=2)
        with pytest.raises(
            CheckpointError,
            match=exact(
                f"cannot load {tmp_path / last}: the file is truncated or corrupted; load an earlier checkpoint instead"
            ),
        ):
            trio.run(lambda: fit(fresh, 1, resume=tmp_path))
        assert (tmp_path / first).read_bytes() == earlier
        trio.run(lambda: fit(fresh, 1, resume=tmp_path / first))
        assert fresh.cbstate.history[TrainingPhase()].epochs == 2


class StepClock(Callback):
    """Record when each step ends; make each step take a few milliseconds (as real steps do)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    @on(StepEnd)
    def tick(self, event: Any, phase: Any, learner: Any) -> None:
        time.sleep(0.004)
        self.times.append(time.perf_counter())


class TestDetached:
    @pytest.mark.parametrize("runner", RUNNERS)
    def test_slow_writes_overlap_with_training_only_when_detached(
        self, tmp_path: Path, runner: type, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Under ActorRunner training steps run while a (slow) checkpoint is written; under LinearRunner none do."""
        intervals: list[tuple[float, float]] = []
        real = durable_module._fsync

        def slow_fsync(fd: int) -> None:
            t0 = time.perf_counter()
            if stat.S_ISREG(os.fstat(fd).st_mode) and os.fstat(fd).st_size > 100:  # a checkpoint, not 'latest'
                time.sleep(0.1)
            real(fd)
            intervals.append((t0, time.perf_counter()))

        monkeypatch.setattr(durable_module, "_fsync", slow_fsync)
        clock = StepClock()
        learner = test_learner(Checkpointer(tmp_path), Recorder(), Metrics(), clock, n_batches=16, runner=runner())
        trio.run(fit, learner, 3)
        overlapping = [t for t in clock.times if any(a < t < b for a, b in intervals)]
        assert len(checkpoints(tmp_path)) == 3
        if runner is ActorRunner:
            assert overlapping
        else:
            assert not overlapping

    def test_snapshot_is_consistent(self, tmp_path: Path) -> None:
        """Under ActorRunner the checkpoint of epoch 1 holds the weights at the end of epoch 1, not later ones."""
        weights: list[torch.Tensor] = []

        class Weights(Callback):
            state_access = {"model": Read()}

            @on(EpochEnd, ValidationPhase)
            def keep(self, event: Any, phase: Any, learner: Any) -> None:
                weights.append(learner.model.c.detach().clone())

        learner = test_learner(
            Checkpointer(tmp_path), Recorder(), Metrics(), Weights(), n_batches=8, runner=ActorRunner()
        )
        trio.run(fit, learner, 3)
        for i, name in enumerate(checkpoints(tmp_path)):
            assert torch.equal(read_checkpoint(tmp_path / name)["model"]["c"], weights[i])

    def test_declarations(self, tmp_path: Path) -> None:
        """Read-only and detached, with a small inbox."""
        cb = Checkpointer(tmp_path)
        assert cb.detached and cb.inbox_size == 4
        assert cb.state_access == {"model": Read(), "optimizer": Read(), "cbstate": Read(), "callbacks": Read()}
        assert repr(Checkpointer(tmp_path, 3)) == f"Checkpointer({str(tmp_path)!r}, keep_top_k=3)"


# ------------------------------------------------------------------------------------------------------------
# Exact resume and runner parity
# ------------------------------------------------------------------------------------------------------------


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = torch.nn.Linear(4, 16)
        self.drop = torch.nn.Dropout(0.3)
        self.l2 = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.drop(torch.relu(self.l1(x))))


def classifier(folder: Path, runner: type, seed: int) -> Learner:
    """A dropout MLP on shuffled data with Adam, a one-cycle schedule, early stopping, clipping and accuracy."""
    g = torch.Generator().manual_seed(1234)
    xs = torch.randn(64, 4, generator=g)
    ys = (xs.sum(1) > 0).long() + (xs[:, 0] > 1).long()
    train = DataLoader(TensorDataset(xs[:48], ys[:48]), batch_size=8, shuffle=True)
    valid = DataLoader(TensorDataset(xs[48:], ys[48:]), batch_size=8)
    torch.manual_seed(seed)
    return Learner(
        Net(),
        torch.nn.functional.cross_entropy,
        data=(train, valid),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        callbacks=[
            Scheduler({LearningRate: one_cycle(24, 0.05)}),
            EarlyStopping(NumberSinceBest(50), monitor="Accuracy", mode="max"),
            GradientClipping(0.5),
            Metrics(accuracy),
            Checkpointer(folder, keep_top_k=2),
            Recorder(),
        ],
        use_default_callbacks=False,
        runner=runner(),
    )


def assert_same_run(a: Learner, b: Learner) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for key in ("model", "optimizer", "callbacks", "cbstate", "epoch", "step"):
        assert same_tree(sa[key], sb[key]), key


class TestResume:
    @pytest.mark.parametrize("runner", RUNNERS)
    def test_two_plus_two_equals_four(self, tmp_path: Path, runner: type) -> None:
        """2 epochs, then a resume for 2 more, give bit-exactly the weights, history and checkpoints of 4 straight."""
        straight = classifier(tmp_path / "straight", runner, seed=7)
        trio.run(fit, straight, 4)

        half = classifier(tmp_path / "resumed", runner, seed=7)
        trio.run(fit, half, 2)
        resumed = classifier(tmp_path / "resumed", runner, seed=99)  # a new process: other initial weights
        assert not torch.equal(resumed.model.l1.weight, straight.model.l1.weight)
        result = trio.run(lambda: fit(resumed, 2, resume=tmp_path / "resumed"))

        assert result.epochs == 2
        assert_same_run(straight, resumed)
        assert checkpoints(tmp_path / "straight") == checkpoints(tmp_path / "resumed")
        for name in checkpoints(tmp_path / "straight"):
            assert same_tree(
                read_checkpoint(tmp_path / "straight" / name), read_checkpoint(tmp_path / "resumed" / name)
            )

    def test_load_checkpoint_then_fit(self, tmp_path: Path) -> None:
        """learner.load_checkpoint(path) then fit is the same as fit(..., resume=path)."""
        half = classifier(tmp_path / "a", LinearRunner, seed=7)
        trio.run(fit, half, 1)
        path = tmp_path / "a" / checkpoints(tmp_path / "a")[0]
        one = classifier(tmp_path / "b", LinearRunner, seed=1)
        one.load_checkpoint(path)
        trio.run(fit, one, 1)
        two = classifier(tmp_path / "c", LinearRunner, seed=2)
        trio.run(lambda: fit(two, 1, resume=path))
        assert_same_run(one, two)


class TestRunnerParity:
    def test_library_set_is_identical_under_both_runners(self, tmp_path: Path) -> None:
        """Scheduler, EarlyStopping, Checkpointer, GradientClipping, Metrics: identical results under both runners."""
        runs = {}
        for runner in RUNNERS:
            learner = classifier(tmp_path / runner.__name__, runner, seed=3)
            runs[runner] = (learner, trio.run(fit, learner, 3))
        (a, ra), (b, rb) = runs[LinearRunner], runs[ActorRunner]
        assert (ra.epochs, ra.stopped) == (rb.epochs, rb.stopped)
        assert_same_run(a, b)
        names = checkpoints(tmp_path / "LinearRunner")
        assert names == checkpoints(tmp_path / "ActorRunner") and len(names) == 2
        for name in names:
            assert same_tree(
                read_checkpoint(tmp_path / "LinearRunner" / name), read_checkpoint(tmp_path / "ActorRunner" / name)
            )


# ------------------------------------------------------------------------------------------------------------
# Adversarial folders and states (issue #10)
# ------------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python process (this checkout importable) and return what it printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.run(
        [sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=timeout, env=env,
        cwd=ROOT,
    )


class TestPruningStaysInItsFolder:
    def test_crafted_kept_names_are_never_deleted(self, tmp_path: Path) -> None:
        """A resumed kept-file list naming ../victim, an absolute path, 'latest' or another file deletes none."""
        folder = tmp_path / "ckpt"
        victim = tmp_path / "victim.txt"
        victim.write_text("keep me")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        absolute = elsewhere / "checkpoint_epoch_001_loss_0.5.pt"
        absolute.write_text("keep me too")
        learner = test_learner(Checkpointer(folder, keep_top_k=1), Recorder(), Metrics(), n_batches=2)
        trio.run(fit, learner, 1)
        (folder / "notes.txt").write_text("mine")
        latest = folder / (folder / "latest").read_text().strip()
        state = read_checkpoint(latest)
        crafted = ["../victim.txt", str(absolute), "latest", "notes.txt", "sub/checkpoint_epoch_001_loss_0.5.pt"]
        state["callbacks"]["Checkpointer"]["saved"][:0] = [[0, 1e9, name] for name in crafted]
        torch.save(state, latest)

        resumed = test_learner(Checkpointer(folder, keep_top_k=1), Recorder(), Metrics(), n_batches=2)
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            trio.run(lambda: fit(resumed, 2, resume=folder))
        assert victim.exists() and absolute.exists() and (folder / "notes.txt").exists()
        assert (folder / "latest").is_file()
        expected = (
            f"Checkpointer: the state it loaded lists files it does not write in {folder}: "
            f"{', '.join(map(repr, crafted))}; they are dropped from its list and never deleted "
            f"(was the checkpoint altered?)"
        )
        assert [str(w.message) for w in warned if "Checkpointer" in str(w.message)] == [expected]
        kept = sorted(p.name for p in resumed.get_callback(Checkpointer).paths)
        assert kept == checkpoints(folder) and 1 <= len(kept) <= 2  # the best and the latest

    def test_pruning_skips_names_that_are_not_its_own(self, tmp_path: Path) -> None:
        """A kept list set directly still never deletes outside its naming scheme and folder."""
        folder = tmp_path / "ckpt"
        victim = tmp_path / "victim.txt"
        victim.write_text("keep me")
        cb = Checkpointer(folder, keep_top_k=1)
        outside = tmp_path / "checkpoint_epoch_001_loss_0.5.pt"
        outside.write_text("x")
        (folder / "checkpoint_epoch_001_loss_0.5.pt").symlink_to(outside)
        cb._saved = [(0, 1e9, "../victim.txt"), (0, 1e9, "checkpoint_epoch_001_loss_0.5.pt")]
        learner = test_learner(cb, Recorder(), Metrics(), n_batches=2)
        with pytest.warns(UserWarning, match=r"^Checkpointer does not delete '\.\./victim\.txt'"):
            trio.run(fit, learner, 1)
        assert victim.read_text() == "keep me" and outside.read_text() == "x"


class TestDiskFull:
    @pytest.mark.parametrize("runner", RUNNERS)
    def test_torch_stream_writer_failure_is_a_checkpoint_error(
        self, tmp_path: Path, runner: type, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """torch's RuntimeError from a failed write is a CheckpointError naming the file; earlier files stay."""
        learner = test_learner(Checkpointer(tmp_path), Recorder(), Metrics(), n_batches=2, runner=runner())
        trio.run(fit, learner, 1)
        before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
        real_save = torch.save
        failure = RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
            "file write failed"
        )

        def full_disk(obj: Any, f: Any, *args: Any, **kw: Any) -> None:
            real_save(obj, f, *args, **kw)
            raise failure

        monkeypatch.setattr(torch, "save", full_disk)
        with pytest.raises(CheckpointError) as info:
            trio.run(fit, learner, 1)
        monkeypatch.setattr(torch, "save", real_save)
        assert re.fullmatch(
            rf"Checkpointer could not write {re.escape(str(tmp_path))}/checkpoint_epoch_002_loss_[0-9.e+-]+\.pt: "
            rf"RuntimeError: {re.escape(str(failure))}; earlier checkpoints and 'latest' are as they were; free "
            rf"disk space \(or fix the folder\), then resume from {re.escape(str(tmp_path))}",
            str(info.value),
        ), str(info.value)
        assert info.value.__cause__ is failure
        assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before

    @pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
    def test_file_size_limit_in_a_real_process(self, tmp_path: Path) -> None:
        """A real failed write (RLIMIT_FSIZE, 'File too large') is a CheckpointError; no temporary stays."""
        done = run_python(DISK_FULL, str(tmp_path))
        assert done.returncode == 0, done.stderr
        kind, message, listing = done.stdout.strip().split("\n")
        assert kind == "CheckpointError"
        assert re.fullmatch(
            rf"Checkpointer could not write {re.escape(str(tmp_path))}/checkpoint_epoch_003_loss_[0-9.e+-]+\.pt: "
            rf"File too large; earlier checkpoints and 'latest' are as they were; free disk space \(or fix the "
            rf"folder\), then resume from {re.escape(str(tmp_path))}",
            message,
        ), message
        names = listing.split(",")
        assert len(names) == 3 and "latest" in names and not [n for n in names if n.endswith(".tmp")]


DISK_FULL = """
import os, resource, signal, sys
import trio
from asyncloop import Checkpointer, Metrics, Recorder, fit, test_learner
folder = sys.argv[1]
learner = test_learner(Checkpointer(folder), Recorder(), Metrics(), n_batches=2)
trio.run(fit, learner, 2)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (512, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    trio.run(fit, learner, 1)
except Exception as exc:
    print(type(exc).__name__)
    print(str(exc).replace("\\n", " "))
print(",".join(sorted(os.listdir(folder))))
"""


OLD = 1_000_000_000.0  # 2001: before this process started


class TestStaleTemporaries:
    @staticmethod
    def _populate(folder: Path) -> tuple[list[str], list[str]]:
        """Stale temporaries a killed Checkpointer leaves, and files that are not (or not stale): (stale, kept)."""
        folder.mkdir(exist_ok=True)
        stale = [
            ".checkpoint_epoch_001_loss_0.5.pt.abcd_123.tmp",
            ".checkpoint_epoch_012_accuracy_0.75.pt.zzzzzzzz.tmp",
            ".latest.k2j3h4g5.tmp",
            ".asyncloop-probe-q1w2e3r4",
        ]
        kept = [
            ".checkpoint_notes.tmp",  # not the temporary of a checkpoint name
            ".other.pt.abcd1234.tmp",  # not a checkpoint's
            "checkpoint_epoch_001_loss_0.5.pt.abcd1234.tmp",  # not hidden: not a temporary it makes
            ".checkpoint_epoch_002_loss_0.4.pt.abcd1234.tmp.bak",
            "notes.txt",
        ]
        for name in stale + kept:
            (folder / name).write_bytes(b"x" * 100)
        for name in stale + kept:
            os.utime(folder / name, (OLD, OLD))
        fresh = ".checkpoint_epoch_003_loss_0.3.pt.fresh123.tmp"  # written now: another live writer's, left alone
        (folder / fresh).write_bytes(b"x")
        old_dir = folder / ".checkpoint_epoch_004_loss_0.2.pt.dir12345.tmp"
        old_dir.mkdir()
        os.utime(old_dir, (OLD, OLD))
        link = folder / ".checkpoint_epoch_005_loss_0.1.pt.link1234.tmp"
        link.symlink_to(folder / "notes.txt")
        return stale, [*kept, fresh, old_dir.name, link.name]

    def test_a_new_checkpointer_removes_stale_temporaries(self, tmp_path: Path) -> None:
        """Building a Checkpointer removes its own temporaries older than this process, and nothing else."""
        stale, kept = self._populate(tmp_path)
        Checkpointer(tmp_path)
        assert sorted(os.listdir(tmp_path)) == sorted(kept)
        assert not any((tmp_path / name).exists() for name in stale)

    def test_fit_with_resume_removes_stale_temporaries(self, tmp_path: Path) -> None:
        """A resumed fit (its Checkpointer loading its state) removes stale temporaries; checkpoints stay."""
        learner = test_learner(Checkpointer(tmp_path), Recorder(), Metrics(), n_batches=2)
        trio.run(fit, learner, 1)
        stale, kept = self._populate(tmp_path)
        trio.run(lambda: fit(learner, 1, resume=tmp_path))
        written = [name for name in os.listdir(tmp_path) if name.endswith(".pt")]
        assert len(written) == 2 and sorted(os.listdir(tmp_path)) == sorted([*kept, *written, "latest"])
        assert not any((tmp_path / name).exists() for name in stale)

    @pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
    def test_sigkill_during_a_write_then_a_new_process_cleans_up(self, tmp_path: Path) -> None:
        """A process killed mid-write leaves a temporary; the next process's Checkpointer removes it."""
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready and proc.stdout.readline() == b"writing\n"  # type: ignore[union-attr]
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()  # type: ignore[union-attr]
        temporaries = [n for n in os.listdir(tmp_path) if n.startswith(".checkpoint_") and n.endswith(".tmp")]
        assert len(temporaries) == 1
        done = run_python(
            "import os, sys\nfrom asyncloop import Checkpointer\nCheckpointer(sys.argv[1])\n"
            "print(','.join(sorted(os.listdir(sys.argv[1]))))",
            str(tmp_path),
        )
        assert done.returncode == 0, done.stderr
        assert [n for n in done.stdout.strip().split(",") if n.endswith(".tmp")] == []


KILLED_WRITER = """
import os, stat, sys, time
import trio
from asyncloop import Checkpointer, Metrics, Recorder, fit, test_learner
from asyncloop import _durable

def hang(fd):
    if stat.S_ISREG(os.fstat(fd).st_mode) and os.fstat(fd).st_size > 100:
        print("writing", flush=True)
        time.sleep(120)

_durable._fsync = hang
learner = test_learner(Checkpointer(sys.argv[1]), Recorder(), Metrics(), n_batches=2)
trio.run(fit, learner, 1)
"""


class CkptDictTraining(AbstractTrainingPhase):
    """A custom training phase (the supervised step on ``{"x", "y"}`` dict batches)."""

    __test__ = False

    async def step(self, learner: Any, batch: Any) -> Any:
        async def step_fn(handle: Any, state: Any) -> None:
            learner.model.train()
            state.loss = (learner.model(state.xs) - state.ys).abs().mean()
            learner.optimizer.zero_grad()
            state.loss.backward()
            state.loss = state.loss.detach()
            learner.optimizer.step()

        return await run_step(step_fn, learner, self, {"xs": batch["x"], "ys": batch["y"]})


class CkptDictValidation(AbstractValidationPhase):
    """A custom validation phase on dict batches."""

    __test__ = False

    async def step(self, learner: Any, batch: Any) -> Any:
        async def step_fn(handle: Any, state: Any) -> None:
            with torch.no_grad():
                state.loss = (learner.model(state.xs) - state.ys).abs().mean()

        return await run_step(step_fn, learner, self, {"xs": batch["x"], "ys": batch["y"]})


def dict_learner(*callbacks: Callback, n_batches: int = 2, **kw: Any) -> Learner:
    learner = test_learner(*callbacks, n_batches=n_batches, **kw)
    batches = [{"x": xs, "y": ys} for xs, ys in learner.data["training"]]
    learner.data = {"training": batches, "validation": batches}
    return learner


class TestMonitorUnderAnyPhase:
    def test_custom_training_phase(self, tmp_path: Path) -> None:
        """The default monitor (training Loss) is found under a custom training phase: no nan in the names."""
        learner = dict_learner(Checkpointer(tmp_path), Recorder(), Metrics())
        trio.run(lambda: fit(learner, 2, phases=(CkptDictTraining(), None)))
        losses = learner.cbstate.metrics_epoch[CkptDictTraining()].values("Loss")
        assert checkpoints(tmp_path) == [f"checkpoint_epoch_{i + 1:03d}_loss_{v!r}.pt" for i, v in enumerate(losses)]

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_validation_phase_matches_a_custom_validation_phase(self, tmp_path: Path, runner: type) -> None:
        """phase=ValidationPhase finds the values of the custom AbstractValidationPhase that ran instead."""
        cb = Checkpointer(tmp_path, phase=ValidationPhase)
        learner = dict_learner(cb, Recorder(), Metrics(), runner=runner())
        trio.run(lambda: fit(learner, 2, phases=(CkptDictTraining(), CkptDictValidation())))
        losses = learner.cbstate.metrics_epoch[CkptDictValidation()].values("Loss")
        assert checkpoints(tmp_path) == [f"checkpoint_epoch_{i + 1:03d}_loss_{v!r}.pt" for i, v in enumerate(losses)]

    def test_monitor_recorded_nowhere(self, tmp_path: Path) -> None:
        """A validation monitor in a fit without validation is an error naming the monitor, phases and metrics."""
        learner = test_learner(Checkpointer(tmp_path, phase=ValidationPhase), Recorder(), Metrics(), n_batches=2)
        with pytest.raises(ValueError) as info:
            trio.run(lambda: fit(learner, 2, phases=(TrainingPhase(), None)))
        assert str(info.value) == (
            "Checkpointer monitors 'Loss' under ValidationPhase or any AbstractValidationPhase, and no such phase "
            "recorded it during this fit (recorded: TrainingPhase(): 'Loss'); pass phase= a phase that runs (e.g. "
            "TrainingPhase), run a validation phase (validation data, phases=(..., ValidationPhase())), or add the "
            "metric to Metrics(...)"
        )
        assert not any("nan" in name for name in checkpoints(tmp_path))

    def test_without_metrics(self, tmp_path: Path) -> None:
        """Without Metrics there is no value to name a checkpoint by: a clear error, not a nan name."""
        learner = test_learner(Checkpointer(tmp_path), Recorder(), n_batches=2)
        with pytest.raises(RuntimeError) as info:
            trio.run(fit, learner, 2)
        assert str(info.value) == (
            "Checkpointer names checkpoints by the monitored metric 'Loss' that Metrics records, and there is no "
            "Metrics; add Metrics() (a default callback)"
        )
        assert checkpoints(tmp_path) == []

    def test_validation_every_n_epochs(self, tmp_path: Path) -> None:
        """With validation every 2 epochs, epochs before the first validation are not saved; later ones carry
        the latest validation value."""
        cb = Checkpointer(tmp_path, phase=ValidationPhase)
        learner = test_learner(cb, Recorder(), Metrics(), n_batches=2)
        trio.run(lambda: fit(learner, 3, val_every_n_epochs=2))
        (value,) = learner.cbstate.metrics_epoch[ValidationPhase()].values("Loss")
        assert checkpoints(tmp_path) == [f"checkpoint_epoch_00{i}_loss_{value!r}.pt" for i in (2, 3)]


class TestStepCheckpoints:
    @pytest.mark.parametrize("runner", RUNNERS)
    def test_every_n_steps_keeps_the_newest(self, tmp_path: Path, runner: type) -> None:
        """every_n_steps writes checkpoint_step_{steps:07d}.pt every n training steps, keeping only the newest."""
        cb = Checkpointer(tmp_path, every_n_steps=3, save_last=True)
        learner = test_learner(cb, Recorder(), Metrics(), n_batches=4, runner=runner())
        trio.run(fit, learner, 2)
        names = checkpoints(tmp_path)
        assert [n for n in names if n.startswith("checkpoint_step_")] == ["checkpoint_step_0000006.pt"]
        assert len([n for n in names if n.startswith("checkpoint_epoch_")]) == 2
        assert (tmp_path / "last.pt").exists()
        assert same_tree(torch.load(tmp_path / "last.pt", weights_only=True)["model"], learner.model.state_dict())

    def test_only_due_steps_reach_the_actor(self, tmp_path: Path) -> None:
        """Under the ActorRunner a step checkpointer's actor gets only the due StepEnds (steps 3 and 6 of 8), so a
        long write never fills its inbox with the steps in between; resumed counts stay right (step 6 is due)."""
        handled = {}
        for every in (None, 3):
            learner = test_learner(Checkpointer(tmp_path / str(every), every_n_steps=every), Recorder(), Metrics(),
                                   n_batches=4, runner=ActorRunner())
            result = trio.run(fit, learner, 2)
            (stats,) = [s for s in result.statistics if s.name == "Checkpointer"]
            handled[every] = stats.events
        assert handled[3] - handled[None] == 2
        assert [n for n in checkpoints(tmp_path / "3") if n.startswith("checkpoint_step_")] == [
            "checkpoint_step_0000006.pt"]

    def test_detached_copies_reuse_the_written_ones_and_hold_each_steps_weights(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Under the ActorRunner a step checkpoint copies the state into the buffers of the previous one once
        it is written (no fresh allocation), each file holds the weights of its own step, and no copy is kept
        after the fit."""
        import asyncloop.callbacks._checkpointer as module

        saved: list[tuple[int, dict[str, torch.Tensor], torch.Tensor]] = []
        real_save = module.save_file

        def recording_save(state: Any, path: Path) -> None:
            if Path(path).name.startswith("checkpoint_step_"):
                weight = next(iter(state["model"].values()))
                saved.append((state["step"], {k: v.clone() for k, v in state["model"].items()}, weight))
            real_save(state, path)

        monkeypatch.setattr(module, "save_file", recording_save)
        cb = Checkpointer(tmp_path, every_n_steps=2)
        weights: dict[int, dict[str, torch.Tensor]] = {}

        class Watch(Callback):
            """Inline: keeps each step's weights, and before a due step waits until the last copy came back."""

            state_access = {"model": Read(), "cbstate": {"history": Read()}}

            @on(StepEnd, AbstractTrainingPhase)
            def step_end(self, event: Any, phase: Any, learner: Any) -> None:
                steps = learner.cbstate.history[phase].steps
                weights[steps] = {k: v.detach().clone() for k, v in learner.model.state_dict().items()}
                time.sleep(0.002)  # longer than the flush interval: every event hands the outbox over
                deadline = time.monotonic() + 10
                while steps % 2 == 1 and steps > 1 and cb._pool._spare is None and time.monotonic() < deadline:
                    time.sleep(0.001)

        runner = ActorRunner(flush_interval=0.001)
        learner = test_learner(cb, Recorder(), Metrics(), Watch(), n_batches=6, runner=runner)
        trio.run(fit, learner, 1)
        assert [step for step, _, _ in saved] == [2, 4, 6]
        for step, model, _ in saved:
            assert same_tree(model, weights[step])
        # the written tensors are kept alive here, so a fresh copy could not land at the same address
        assert saved[1][2] is saved[0][2] and saved[2][2] is saved[1][2]
        assert cb._pool._spare is None

    def test_save_last_is_the_newest_state(self, tmp_path: Path) -> None:
        """save_last keeps last.pt with the state of the newest checkpoint."""
        learner = test_learner(Checkpointer(tmp_path, save_last=True), Recorder(), Metrics(), n_batches=2)
        trio.run(fit, learner, 2)
        last = torch.load(tmp_path / "last.pt", weights_only=True)
        newest = torch.load(tmp_path / checkpoints(tmp_path)[-1], weights_only=True)
        assert same_tree(last["model"], newest["model"]) and last["epoch"] == 2

    def test_resume_from_a_step_checkpoint_restarts_the_epoch(self, tmp_path: Path) -> None:
        """A resume from a mid-epoch step checkpoint starts the interrupted epoch over: epochs are not advanced."""
        learner = test_learner(Checkpointer(tmp_path, every_n_steps=3), Recorder(), Metrics(), n_batches=4)
        trio.run(lambda: fit(learner, 1, max_steps=3))  # epoch 1 ends after 3 steps: an epoch checkpoint too
        later = test_learner(Checkpointer(tmp_path, every_n_steps=3), Recorder(), Metrics(), n_batches=4)
        trio.run(lambda: fit(later, 1, resume=tmp_path / "checkpoint_step_0000003.pt"))
        history = later.cbstate.history[TrainingPhase()]
        assert (history.epochs, history.steps) == (1, 7)

    def test_bad_arguments(self, tmp_path: Path) -> None:
        """every_n_steps must be a positive int and save_last a bool."""
        with pytest.raises(ValueError, match=exact("Checkpointer: every_n_steps must be None or an int >= 1, got 0")):
            Checkpointer(tmp_path, every_n_steps=0)
        with pytest.raises(TypeError, match=exact("Checkpointer: save_last must be True or False, got 1")):
            Checkpointer(tmp_path, save_last=1)  # type: ignore[arg-type]

    def test_state_loads_across_kinds(self, tmp_path: Path) -> None:
        """A step checkpointer's state is keyed 'Checkpointer': a plain Checkpointer resumes from it."""
        cb = Checkpointer(tmp_path, every_n_steps=2)
        assert type(cb).__name__ == "Checkpointer" and isinstance(cb, Checkpointer)
        learner = test_learner(cb, Recorder(), Metrics(), n_batches=2)
        trio.run(fit, learner, 1)
        assert "Checkpointer" in read_checkpoint(tmp_path)["callbacks"]
        later = test_learner(Checkpointer(tmp_path), Recorder(), Metrics(), n_batches=2)
        assert trio.run(lambda: fit(later, 1, resume=tmp_path)).epochs == 1
