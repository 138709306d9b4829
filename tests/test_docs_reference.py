"""The callback reference pages (docs/reference/*.md) run as shown and print what they say they print.

The ```python blocks of a page run top to bottom as one script, in a fresh namespace and a temporary folder.
Every ``print(...)`` is followed by ``# expected`` comment lines; ``...`` in them matches anything, and trailing
spaces are ignored.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docs_snippets import python_blocks, run_and_check

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs" / "reference").glob("*.md"))


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
    run_and_check("\n".join(python_blocks(page)), str(page), tmp_path, monkeypatch)
