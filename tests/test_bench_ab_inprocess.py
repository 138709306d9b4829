"""Tests for bench/ab_inprocess.py: two source trees' asyncloop A/B'd in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")
SCRIPT = os.path.join(ROOT, "bench", "ab_inprocess.py")


def test_a_tree_without_the_package_is_refused_with_what_to_pass(tmp_path) -> None:
    """A folder without asyncloop/ is refused with a message naming what to pass instead."""
    done = subprocess.run([sys.executable, SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"{tmp_path} has no asyncloop/ package: pass the root of an asyncloop source tree" in done.stderr


def test_a_tiny_run_of_this_tree_against_itself_reports_every_configuration(tmp_path) -> None:
    """Against a copy of itself (the old side imported as asyncloop_old), one short round writes a row per
    configuration with both sides' overhead and the paired difference."""
    out = tmp_path / "ab.json"
    done = subprocess.run(
        [sys.executable, SCRIPT, ROOT, "--rounds", "1", "--steps", "30", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows] == ["linear_none", "linear_defaults", "actor_defaults"]
    for row in rows:
        assert len(row["rounds"]["old"]) == len(row["rounds"]["new"]) == 1
        assert len(row["new_minus_old"]) == 2
