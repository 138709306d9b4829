"""Tests for bench/instructions.py: instructions per step from two run lengths, against the bare loop."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

import instructions  # noqa: E402


def test_per_step_is_the_slope_between_the_two_run_lengths() -> None:
    """A configuration's instructions per step are (Ir(n2) - Ir(n1)) / (n2 - n1): its set-up cost, the same in
    both runs, drops out; the excess over bare is the medians' difference, also in % of the bare step."""
    runs = {
        ("bare", 50, 0): 1_000 + 50 * 800, ("bare", 450, 0): 1_000 + 450 * 800,
        ("bare", 50, 1): 1_000 + 50 * 802, ("bare", 450, 1): 1_000 + 450 * 802,
        ("loop", 50, 0): 90_000 + 50 * 880, ("loop", 450, 0): 90_000 + 450 * 880,
        ("loop", 50, 1): 95_000 + 50 * 884, ("loop", 450, 1): 95_000 + 450 * 884,
    }
    rows = instructions.summarise(runs, ["bare", "loop", "absent"], 50, 450)
    assert [r["config"] for r in rows] == ["bare", "loop"]
    assert rows[0]["per_step"] == [800, 802] and rows[0]["over_bare"] == 0
    assert rows[1]["per_step"] == [880, 884] and rows[1]["over_bare"] == 882 - 801
    assert rows[1]["over_bare_pct"] == round(100 * 81 / 801, 2)


def test_a_run_without_its_pair_is_left_out() -> None:
    """A repeat whose short or long run is missing (a crashed dump) does not count."""
    runs = {("bare", 50, 0): 0, ("bare", 450, 0): 400 * 800, ("loop", 450, 0): 400 * 900}
    rows = instructions.summarise(runs, ["bare", "loop"], 50, 450)
    assert [r["config"] for r in rows] == ["bare"]


def test_without_a_bare_loop_it_says_what_to_do() -> None:
    """The excess needs the bare loop: without it, the error says to keep it."""
    with pytest.raises(SystemExit, match="no bare loop was measured: keep 'bare' in --configs"):
        instructions.summarise({("loop", 50, 0): 0, ("loop", 450, 0): 1}, ["loop"], 50, 450)
