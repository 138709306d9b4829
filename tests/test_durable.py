"""Tests for asyncloop._durable: atomic durable writes, and safe loading that never runs code from a file."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from asyncloop import load_model, save_model
from asyncloop._checkpoint import save_checkpoint
from asyncloop._checkpoint_files import read_checkpoint, write_latest
from asyncloop._durable import atomic_write, current_umask, load_file
from asyncloop._exceptions import CheckpointError
from matchers import exact
from training_states import bounded, trained


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

    @pytest.mark.filterwarnings("ignore:Detected pickle protocol")
    @pytest.mark.parametrize("how", ["torch.save", "pickle protocol 2", "pickle protocol 5"])
    def test_code_calling_pickle_says_it_needs_code(self, tmp_path: Path, how: str) -> None:
        """A pickle whose __reduce__ calls os.system is refused as needing code (not as corrupted), and nothing runs."""
        marker = tmp_path / "ran"

        class Shell:
            def __reduce__(self) -> Any:
                return (os.system, (f"touch {marker}",))

        path = tmp_path / "evil.pt"
        if how == "torch.save":
            torch.save({"format": "asyncloop.training_state", "model": Shell()}, path)
        else:
            path.write_bytes(pickle.dumps(Shell(), protocol=int(how[-1])))
        with pytest.raises(
            CheckpointError,
            match=exact(
                f"cannot load {path}: it holds objects that need code to load ({os.system.__module__}.system), and "
                f"asyncloop loads only plain data and tensors, so nothing in it ran; load it with "
                f"torch.load(weights_only=False) yourself only if you trust where it came from"
            ),
        ):
            trained().load_checkpoint(path)
        assert not marker.exists()

    @pytest.mark.parametrize("data", [b"garbage", bytes(range(256)) * 4, b""])
    def test_garbage_is_corrupted_not_code(self, tmp_path: Path, data: bytes) -> None:
        """Bytes that are no pickle at all (torch's unpickler rejects their opcodes too) read as corrupted."""
        path = tmp_path / "g.pt"
        path.write_bytes(data)
        with pytest.raises(
            CheckpointError,
            match=exact(f"cannot load {path}: the file is truncated or corrupted; load an earlier checkpoint instead"),
        ):
            read_checkpoint(path)

    @pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
    def test_a_fifo_is_refused_without_blocking(self, tmp_path: Path) -> None:
        """A FIFO passed as a checkpoint is refused at once (never opened for a blocking read)."""
        fifo = tmp_path / "pipe.pt"
        os.mkfifo(fifo)
        error = bounded(lambda: read_checkpoint(fifo), release=fifo)
        assert isinstance(error, CheckpointError)
        assert str(error) == f"{fifo} is a FIFO, not a checkpoint file; pass the path of a checkpoint file"


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

    @pytest.mark.parametrize(
        "failure",
        [
            OSError(errno.ENOSPC, "No space left on device"),
            RuntimeError(
                "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                "file write failed"
            ),
        ],
    )
    def test_save_file_failure_is_a_checkpoint_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
    ) -> None:
        """A full disk (OSError, or torch's RuntimeError) is a CheckpointError naming file and cause; old file stays."""
        from asyncloop._durable import save_file

        path = tmp_path / "d.pt"
        save_file({"a": 1}, path)
        real_save = torch.save

        def failing(obj: Any, f: Any, *args: Any, **kw: Any) -> None:
            real_save(obj, f, *args, **kw)
            raise failure

        monkeypatch.setattr(torch, "save", failing)
        cause = "No space left on device" if isinstance(failure, OSError) else f"RuntimeError: {failure}"
        with pytest.raises(
            CheckpointError,
            match=exact(
                f"could not write {path}: {cause}; the file is as it was; free disk space (or fix the folder) and "
                f"save again"
            ),
        ) as info:
            save_file({"a": 2}, path)
        assert info.value.__cause__ is failure
        monkeypatch.setattr(torch, "save", real_save)
        assert os.listdir(tmp_path) == ["d.pt"]
        assert load_file(path) == {"a": 1}

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


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_tensors_in_a_protocol_torch_cannot_read_are_not_code(tmp_path: Path) -> None:
    """A torch file of plain tensors in pickle protocol 4 (which weights_only cannot parse) is not called code."""
    path = tmp_path / "p4.pt"
    torch.save({"t": torch.ones(2), "n": {"u": torch.zeros(3), "v": [torch.ones(1)]}}, path, pickle_protocol=4)
    with pytest.raises(
        CheckpointError,
        match=exact(f"cannot load {path}: the file is truncated or corrupted; load an earlier checkpoint instead"),
    ):
        read_checkpoint(path)


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="no POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("writer", ["checkpoint", "latest", "save_model"])
def test_files_respect_the_umask(tmp_path: Path, umask: int, writer: str) -> None:
    """Checkpoints, the latest pointer and save_model files get 0o666 less the umask, as open() would give."""
    old = os.umask(umask)
    try:
        if writer == "checkpoint":
            save_checkpoint(trained(), tmp_path / "f")
        elif writer == "latest":
            write_latest(tmp_path, "f")
        else:
            save_model(torch.nn.Linear(2, 1), tmp_path / "f")
        assert current_umask() == umask
    finally:
        os.umask(old)
    name = "latest" if writer == "latest" else "f"
    assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(0o666 & ~umask)
    assert os.listdir(tmp_path) == [name]
