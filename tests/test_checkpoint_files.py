"""Tests for asyncloop._checkpoint_files: a checkpoint read by file or by folder (its 'latest' pointer)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from asyncloop import fit
from asyncloop._checkpoint import save_checkpoint
from asyncloop._checkpoint_files import read_checkpoint
from asyncloop._exceptions import CheckpointError
from matchers import exact
from training_states import bounded, trained


class TestLatest:
    def test_folder_means_latest(self, tmp_path: Path) -> None:
        """A folder resolves through its 'latest' pointer; without one it is an error."""
        save_checkpoint(trained(), tmp_path / "x.pt")
        (tmp_path / "latest").write_text("x.pt\n")
        assert read_checkpoint(tmp_path)["epoch"] == 2
        with pytest.raises(
            CheckpointError,
            match=exact(
                f"{tmp_path / 'sub'} is a folder without a 'latest' pointer file; pass the path of a checkpoint file"
            ),
        ):
            (tmp_path / "sub").mkdir()
            read_checkpoint(tmp_path / "sub")

    def test_write_latest_points_at_a_checkpoint(self, tmp_path: Path) -> None:
        """write_latest replaces the folder's pointer atomically; reading the folder then reads that file."""
        from asyncloop._checkpoint_files import LATEST, write_latest

        save_checkpoint(trained(), tmp_path / "one.pt")
        write_latest(tmp_path, "nope.pt")
        write_latest(tmp_path, "one.pt")
        assert (tmp_path / LATEST).read_text() == "one.pt\n"
        assert read_checkpoint(tmp_path)["epoch"] == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "one.pt"]


class TestLatestStaysInTheFolder:
    @pytest.mark.parametrize("content", ["../x.pt", "ABSOLUTE", "sub/x.pt", ".", "..", "", "x.pt\nother.pt"])
    def test_latest_must_hold_a_plain_file_name(self, tmp_path: Path, content: str) -> None:
        """A 'latest' holding a path (../, absolute, with a separator), '.', '..' or nothing is refused, naming it."""
        save_checkpoint(trained(), tmp_path / "x.pt")  # a valid checkpoint outside the folder
        folder = tmp_path / "run"
        (folder / "sub").mkdir(parents=True)
        save_checkpoint(trained(), folder / "sub" / "x.pt")
        content = content.replace("ABSOLUTE", str(tmp_path / "x.pt"))
        (folder / "latest").write_text(content + "\n")
        with pytest.raises(
            CheckpointError,
            match=exact(
                f"{folder / 'latest'} must hold the name of a checkpoint file in {folder}, but holds "
                f"{content.strip()!r}; write the name of one of its checkpoints there, or pass the path of a "
                f"checkpoint file"
            ),
        ):
            read_checkpoint(folder)

    def test_latest_through_a_symlink_leaving_the_folder(self, tmp_path: Path) -> None:
        """A name in 'latest' that is a symlink to a file outside the folder is refused; one inside is followed."""
        save_checkpoint(trained(), tmp_path / "x.pt")
        folder = tmp_path / "run"
        folder.mkdir()
        (folder / "away.pt").symlink_to(tmp_path / "x.pt")
        (folder / "latest").write_text("away.pt\n")
        target = (tmp_path / "x.pt").resolve()
        with pytest.raises(
            CheckpointError,
            match=exact(
                f"{folder / 'latest'} names 'away.pt', which leads outside {folder} (to {target}); "
                f"pass the path of that checkpoint file itself if you trust it"
            ),
        ):
            read_checkpoint(folder)
        (tmp_path / "x.pt").rename(folder / "real.pt")
        (folder / "here.pt").symlink_to("real.pt")
        (folder / "latest").write_text("here.pt\n")
        assert read_checkpoint(folder)["epoch"] == 2

    @pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
    def test_latest_naming_a_fifo_does_not_hang(self, tmp_path: Path) -> None:
        """A 'latest' naming a FIFO is refused at once: resuming never blocks on it."""
        os.mkfifo(tmp_path / "pipe.pt")
        (tmp_path / "latest").write_text("pipe.pt\n")
        error = bounded(lambda: read_checkpoint(tmp_path), release=tmp_path / "pipe.pt")
        assert isinstance(error, CheckpointError)
        fifo = tmp_path / "pipe.pt"
        assert str(error) == f"{fifo} is a FIFO, not a checkpoint file; pass the path of a checkpoint file"

    @pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
    def test_latest_itself_a_fifo_does_not_hang(self, tmp_path: Path) -> None:
        """A 'latest' that is itself a FIFO is refused at once, naming it."""
        os.mkfifo(tmp_path / "latest")
        error = bounded(lambda: read_checkpoint(tmp_path), release=tmp_path / "latest")
        assert isinstance(error, CheckpointError)
        assert str(error) == (
            f"{tmp_path / 'latest'} is a FIFO, not a pointer file; delete it and pass the path of a checkpoint file"
        )

    @pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
    def test_resume_from_a_folder_whose_latest_names_a_fifo(self, tmp_path: Path) -> None:
        """fit(..., resume=folder) with 'latest' naming a FIFO ends with CheckpointError within its bound."""
        learner = trained()
        os.mkfifo(tmp_path / "pipe.pt")
        (tmp_path / "latest").write_text("pipe.pt\n")

        async def resume() -> None:
            with trio.fail_after(20):
                await fit(learner, 1, resume=tmp_path)

        error = bounded(lambda: trio.run(resume), release=tmp_path / "pipe.pt", timeout=20)
        assert isinstance(error, CheckpointError), error
