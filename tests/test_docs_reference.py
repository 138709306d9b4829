"""The callback reference pages (docs/reference/*.md) run as shown and print what they say they print.

The ```python blocks of a page run top to bottom as one script, in a fresh namespace and a temporary folder.
Every ``print(...)`` is followed by ``# expected`` comment lines; ``...`` in them matches anything, and trailing
spaces are ignored.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs" / "reference").glob("*.md"))


def script_and_expected(page: Path) -> tuple[str, list[str]]:
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    code = "\n".join(blocks)
    expected: list[str] = []
    lines = code.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("print("):
            j = i + 1
            while j < len(lines) and lines[j].startswith("# "):
                expected.append(lines[j][2:])
                j += 1
    return code, expected


def matches(pattern: str, line: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("..."))
    return re.fullmatch(regex, line) is not None


def test_pages_exist() -> None:
    """There is a reference page per callback group."""
    assert {p.name for p in PAGES} >= {
        "checkpointing-and-resume.md",
        "early-stopping.md",
        "scheduling.md",
        "training-helpers.md",
        "metrics.md",
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_runs_and_prints_what_it_shows(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's code runs without error and its output matches the comments under each print."""
    code, expected = script_and_expected(page)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, str(page), "exec"), {"__name__": "__docs__"})
    output = [line.rstrip() for line in out.getvalue().splitlines()]
    assert len(output) == len(expected), f"printed:\n{out.getvalue()}\nexpected:\n" + "\n".join(expected)
    for pattern, line in zip(expected, output):
        assert matches(pattern, line), f"{line!r} does not match {pattern!r}"
