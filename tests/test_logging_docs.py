"""docs/logging.md runs as shown, and its service example works across two processes.

The page's ```python blocks run top to bottom as one script; every ``print(...)`` is followed by ``# expected``
lines (``...`` matches anything). Blocks that show an example file must equal that file; the example files run
as a real service and a real subscriber, in two interpreters.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from asyncloop._cli import main as cli_main
from docs_snippets import python_blocks, run_and_check

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "logging.md"
EXAMPLES = [ROOT / "examples" / "logging_service.py", ROOT / "examples" / "logging_subscriber.py"]


def blocks() -> list[str]:
    return python_blocks(PAGE)


def is_example(block: str) -> bool:
    return any(block == path.read_text() for path in EXAMPLES)


def test_examples_are_shown_as_they_are() -> None:
    """The page shows the service and subscriber examples verbatim."""
    shown = [block for block in blocks() if is_example(block)]
    assert len(shown) == len(EXAMPLES)


def test_page_runs_and_prints_what_it_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's code runs without error and prints what the comments under each print say."""
    code = "\n".join(block for block in blocks() if not is_example(block))
    run_and_check(code, str(PAGE), tmp_path, monkeypatch)


def test_service_and_subscriber(tmp_path: Path) -> None:
    """The service streams two fits to a subscriber in another process, and leaves readable event logs."""
    env = {**os.environ, "ASYNCLOOP_STREAM_TOKEN": "s3cret"}
    service = subprocess.Popen(
        [sys.executable, str(EXAMPLES[0]), "--fits", "2", "--epochs", "3", "--wait-for", "1",
         "--log-dir", str(tmp_path / "runs")],
        stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        first = service.stdout.readline()  # type: ignore[union-attr]
        port = re.fullmatch(r"streaming on 127\.0\.0\.1:(\d+)\n", first)
        assert port, first
        subscriber = subprocess.run([sys.executable, str(EXAMPLES[1]), port.group(1)], capture_output=True,
                                    text=True, env=env, timeout=120)
        rest, _ = service.communicate(timeout=120)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert (service.returncode, subscriber.returncode) == (0, 0), subscriber.stderr
    lines = subscriber.stdout.splitlines()
    assert len(lines) == 2 * (3 * 2 + 1) + 1
    assert lines[6] == "fit-0: done after 3 epochs" and lines[13] == "fit-1: done after 3 epochs"
    assert lines[-1] == "the service closed the stream; received {'value': 204, 'event': 14}"
    assert re.search(r"the event loop ran \d+ heartbeats meanwhile; streamed 218 records to 1 subscriber\(s\), "
                     r"0 dropped", rest)
    out = io.StringIO()
    assert cli_main(["log", "show", str(tmp_path / "runs" / "fit-1.alog")], out=out, err=io.StringIO()) == 0
    assert len(out.getvalue().splitlines()) == 2 + 2 * 3 * (16 + 1)
    assert sorted(os.listdir(tmp_path / "runs" / "tb")) == ["fit-0", "fit-1"]
