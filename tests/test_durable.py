"""Tests for asyncloop._durable: atomic durable writes, and safe loading that never runs code from a file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from asyncloop import load_model
from asyncloop._checkpoint import save_checkpoint
from asyncloop._checkpoint_files import read_checkpoint
from asyncloop._durable import atomic_write
from asyncloop._exceptions import CheckpointError
from matchers import exact
from training_states import trained


class TestSafeLoading:
    def test_corrupted_file(self, tmp_path: Path) -> None:
        """A truncated file is a clear error naming it; the file is left as it was."""
        path = tmp_path / "c.pt"
        save_checkpoint(trained(), path)
        data = path.read_bytes()[:200]
        path.write_bytes(data)
        learner = trained(seed=2)
        before = learner.model.c.detach().clone()
        with pytest.raises(
            CheckpointError,
            match=exact(f"cannot load {path}: the file is truncated or corrupted; load an earlier checkpoint instead"),
        ):
            learner.load_checkpoint(path)
        assert path.read_bytes() == data and torch.equal(learner.model.c, before)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file names the path."""
        with pytest.raises(CheckpointError, match=exact(f"no checkpoint at {tmp_path / 'nope.pt'}")):
            read_checkpoint(tmp_path / "nope.pt")

    @pytest.mark.filterwarnings("ignore:Detected pickle protocol")
    def test_never_unpickles_code(self, tmp_path: Path) -> None:
        """A file holding arbitrary objects is refused and nothing in it runs."""
        ran = []

        class Evil:
            def __reduce__(self) -> Any:
                return (ran.append, ("pwned",))

        path = tmp_path / "evil.pt"
        torch.save({"format": "asyncloop.model", "model": Evil()}, path)
        with pytest.raises(CheckpointError, match=r"holds objects that need code to load"):
            load_model(path)
        with open(tmp_path / "evil.pkl", "wb") as f:
            pickle.dump(Evil(), f)
        with pytest.raises(CheckpointError):
            read_checkpoint(tmp_path / "evil.pkl")
        assert ran == []


class TestAtomicWrite:
    def test_atomic_write_failure_keeps_the_old_file(self, tmp_path: Path) -> None:
        """An error while writing leaves the previous file intact and no temporary file behind."""
        path = tmp_path / "f.bin"
        atomic_write(path, lambda f: f.write(b"old"))

        def fail(f: Any) -> None:
            f.write(b"half")
            raise OSError("disk full")

        with pytest.raises(OSError, match=exact("disk full")):
            atomic_write(path, fail)
        assert path.read_bytes() == b"old"
        assert os.listdir(tmp_path) == ["f.bin"]

    def test_save_file_round_trip(self, tmp_path: Path) -> None:
        """save_file writes plain data atomically that load_file reads back, tensors on the CPU."""
        from asyncloop._durable import load_file, save_file

        save_file({"a": [1, 2.5, "x"], "t": torch.arange(3)}, tmp_path / "d.pt")
        data = load_file(tmp_path / "d.pt")
        assert data["a"] == [1, 2.5, "x"] and torch.equal(data["t"], torch.arange(3))
        assert os.listdir(tmp_path) == ["d.pt"]

    def test_fsync_dir_of_a_missing_folder_is_a_no_op(self, tmp_path: Path) -> None:
        """fsync_dir does nothing (and raises nothing) where the folder cannot be opened."""
        from asyncloop._durable import fsync_dir

        fsync_dir(tmp_path / "missing")
        fsync_dir(tmp_path)

    def test_a_folder_is_not_a_file(self, tmp_path: Path) -> None:
        """load_file of a folder says it is a folder, not a checkpoint file."""
        from asyncloop._durable import load_file

        with pytest.raises(CheckpointError, match=exact(f"{tmp_path} is a folder, not a checkpoint file")):
            load_file(tmp_path)
