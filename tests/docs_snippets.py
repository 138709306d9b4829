"""Run the python blocks of a docs page and check what they print (shared by the docs tests).

Every ``print(...)`` in a page is followed by ``# expected`` comment lines; ``...`` in them matches anything.
A block that cannot run here (another library's code, a command needing two processes) is preceded by a line
``<!-- not run: REASON -->``: it is left out, and tests/test_docs_site.py checks no other block is.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import warnings
from pathlib import Path

import pytest


#: The comment that marks the next python block as not run, followed by the reason and ``-->``.
NOT_RUN = "<!-- not run:"


def marked_not_run(text: str, start: int) -> bool:
    """Whether the last non-blank line before offset ``start`` of ``text`` is a not-run marker."""
    return text[:start].rstrip("\n").rsplit("\n", 1)[-1].startswith(NOT_RUN)


def python_blocks(page: Path) -> list[str]:
    """The page's fenced ``python`` blocks, in order, except those marked not run."""
    text = page.read_text()
    return [
        m.group(1)
        for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
        if not marked_not_run(text, m.start())
    ]


def expected_prints(code: str) -> list[str]:
    """The ``# ...`` comment lines right under each ``print(...)`` of ``code``."""
    expected: list[str] = []
    lines = code.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("print("):
            j = i + 1
            while j < len(lines) and lines[j].startswith("# "):
                expected.append(lines[j][2:])
                j += 1
    return expected


def matches(pattern: str, line: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("..."))
    return re.fullmatch(regex, line) is not None


def run_and_check(code: str, filename: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``code`` in ``tmp_path`` and assert it prints exactly what its comments say."""
    expected = expected_prints(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, filename, "exec"), {"__name__": "__docs__"})
    output = [line.rstrip() for line in out.getvalue().splitlines()]
    assert len(output) == len(expected), f"printed:\n{out.getvalue()}\nexpected:\n" + "\n".join(expected)
    for pattern, line in zip(expected, output):
        assert matches(pattern, line), f"{line!r} does not match {pattern!r}"
