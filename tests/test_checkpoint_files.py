"""Tests for asyncloop._checkpoint_files: a checkpoint read by file or by folder (its 'latest' pointer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncloop._checkpoint import save_checkpoint
from asyncloop._checkpoint_files import read_checkpoint
from asyncloop._exceptions import CheckpointError
from matchers import exact
from training_states import trained


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
