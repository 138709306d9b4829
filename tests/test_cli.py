"""Tests for asyncloop._cli: ``asyncloop log show|follow FILE`` and ``asyncloop log subscribe HOST PORT``."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import trio

from asyncloop import EventLogBackend, StreamServer, log_to
from asyncloop._cli import format_record, main
from asyncloop.loggables import Audio, Histogram, Image, RuntimeEvent, Text, Value
from asyncloop.logging._records import make_record


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def write_log(path: Path, n: int = 3) -> None:
    backend = EventLogBackend(path, run="cli")
    for i in range(n):
        log_to(backend, Value(i / 2), "Loss", i + 1, ("Step", "TrainingPhase", "Metrics"))
    backend.close()


class TestShow:
    def test_one_line_per_record(self, tmp_path: Path) -> None:
        """show prints every record on its own line: time, run, seq, kind, tag, index, value."""
        write_log(tmp_path / "run.alog")
        status, out, err = run_cli("log", "show", str(tmp_path / "run.alog"))
        lines = out.splitlines()
        assert (status, err, len(lines)) == (0, "", 5)
        assert lines[0].split(" ")[2:6] == ["cli", "#0", "open", "asyncloop"]
        assert lines[2].endswith(" cli #2 value Step/TrainingPhase/Metrics/Loss [2] 0.5")
        assert lines[4].endswith("close asyncloop [0] records=5")

    def test_json_lines(self, tmp_path: Path) -> None:
        """--json prints one JSON object per record, bytes as base64."""
        path = tmp_path / "run.alog"
        backend = EventLogBackend(path)
        log_to(backend, Image(np.full((1, 1, 1), 255, dtype=np.uint8)), "img", 1)
        backend.close()
        status, out, _ = run_cli("log", "show", "--json", str(path))
        records = [json.loads(line) for line in out.splitlines()]
        assert status == 0 and [r["kind"] for r in records] == ["open", "image", "close"]
        assert records[1]["value"] == {"dtype": "uint8", "shape": [1, 1, 1], "data": "/w=="}

    def test_torn_tail_is_noted(self, tmp_path: Path) -> None:
        """A torn tail is skipped with a note on stderr; the exit status stays 0."""
        path = tmp_path / "run.alog"
        write_log(path)
        path.write_bytes(path.read_bytes()[:-5])
        status, out, err = run_cli("log", "show", str(path))
        assert (status, len(out.splitlines())) == (0, 4)
        torn = len(path.read_bytes()) - _end(path)
        assert err == f"asyncloop: note: the last {torn} bytes of {path} are a torn or corrupt record; skipped\n"

    def test_not_an_event_log(self, tmp_path: Path) -> None:
        """A file that is not an event log gives exit status 1 and the reason."""
        path = tmp_path / "x.csv"
        path.write_text("a,b\n")
        message = f"asyncloop: error: {path} is not an asyncloop event log (bad magic bytes)\n"
        assert run_cli("log", "show", str(path)) == (1, "", message)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file gives exit status 1."""
        status, _, err = run_cli("log", "show", str(tmp_path / "nope.alog"))
        assert status == 1 and err.startswith("asyncloop: error: [Errno 2] No such file or directory")

    def test_usage(self) -> None:
        """Without a command, argparse prints the usage and exits with status 2."""
        with pytest.raises(SystemExit) as info:
            main([], out=io.StringIO(), err=io.StringIO())
        assert info.value.code == 2


def _end(path: Path) -> int:
    from asyncloop.logging import read_events

    with read_events(path) as reader:
        list(reader)
    return reader.end


class TestFollow:
    def test_prints_records_as_they_come(self, tmp_path: Path) -> None:
        """follow prints records written while it runs and stops at the close record with --until-close."""
        path = tmp_path / "live.alog"

        def write() -> None:
            time.sleep(0.05)
            write_log(path, n=4)

        writer = threading.Thread(target=write)
        writer.start()
        status, out, _ = run_cli("log", "follow", "--poll", "0.01", "--idle-timeout", "20", "--until-close", str(path))
        writer.join()
        assert status == 0
        assert [line.split(" ")[4] for line in out.splitlines()] == ["open", *["value"] * 4, "close"]

    def test_idle_timeout(self, tmp_path: Path) -> None:
        """With --idle-timeout, follow ends after that long without records."""
        write_log(tmp_path / "run.alog")
        status, out, _ = run_cli("log", "follow", "--poll", "0.01", "--idle-timeout", "0.1", "--json",
                                 str(tmp_path / "run.alog"))
        assert status == 0 and len(out.splitlines()) == 5


    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--poll", "0"], "argument --poll: expected a finite number of seconds > 0, got '0'"),
            (["--poll", "nan"], "argument --poll: expected a finite number of seconds > 0, got 'nan'"),
            (["--poll", "soon"], "argument --poll: expected a number of seconds, got 'soon'"),
            (["--idle-timeout", "-1"], "argument --idle-timeout: expected a finite number of seconds >= 0, got '-1'"),
        ],
    )
    def test_bad_numbers_are_usage_errors(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
    ) -> None:
        """A bad --poll or --idle-timeout is an argparse error (status 2, one line naming the option), not a traceback."""
        with pytest.raises(SystemExit) as info:
            main(["log", "follow", *argv, str(tmp_path / "run.alog")], out=io.StringIO(), err=io.StringIO())
        assert info.value.code == 2
        assert capsys.readouterr().err.endswith(f"asyncloop log follow: error: {message}\n")

    @pytest.mark.parametrize("action", ["show", "follow"])
    def test_value_error_from_the_reader(self, action: str) -> None:
        """A ValueError from the reader (here: a path with a NUL byte) is a one-line error with status 1."""
        assert run_cli("log", action, "--json", "run\x00.alog") == (1, "", "asyncloop: error: embedded null byte\n")


class TestSubscribe:
    async def test_prints_the_stream(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """subscribe prints a live stream's records until the server closes; the token comes from the environment."""
        monkeypatch.setenv("ASYNCLOOP_STREAM_TOKEN", "s3cret")
        result: list[tuple[int, str, str]] = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                async with StreamServer(token="s3cret") as server:
                    port = str(server.port)
                    nursery.start_soon(trio.to_thread.run_sync,
                                       lambda: result.append(run_cli("log", "subscribe", "127.0.0.1", port)))
                    await server.wait_for_subscribers(1)
                    server.publish(make_record(Value(1.5), "Loss", 3, ("Step",), run="live", seq=0))
        status, out, _ = result[0]
        assert status == 0 and out.endswith(" live #0 value Step/Loss [3] 1.5\n")

    def test_bad_port(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A port outside 1..65535 is an argparse error with status 2."""
        with pytest.raises(SystemExit) as info:
            main(["log", "subscribe", "localhost", "0"], out=io.StringIO(), err=io.StringIO())
        assert info.value.code == 2
        assert capsys.readouterr().err.endswith(
            "asyncloop log subscribe: error: argument port: expected a port number in 1..65535, got '0'\n")

    async def test_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A refused subscription gives exit status 1 and the server's reason."""
        monkeypatch.delenv("ASYNCLOOP_STREAM_TOKEN", raising=False)
        async with StreamServer(token="s3cret") as server:
            port = str(server.port)
            result = await trio.to_thread.run_sync(lambda: run_cli("log", "subscribe", "127.0.0.1", port))
        assert result == (1, "", "asyncloop: error: the stream server refused the subscription: bad token\n")


class TestFormatRecord:
    @pytest.mark.parametrize(("loggable", "summary"), [
        (Value(0.25), "0.25"),
        (Text("hi"), "'hi'"),
        (Image(np.zeros((2, 3, 1))), "uint8[2x3x1]"),
        (Audio([0.0, 0.5], sample_rate=100), "float32[2] at 100 Hz"),
        (Histogram([1.0, 3.0]), "n=2 min=1.0 max=3.0 mean=2.0"),
        (RuntimeEvent("StepEnd", "TrainingPhase", steps=2), "phase='TrainingPhase' epochs=0 steps=2 steps_epoch=0"),
    ])
    def test_summaries(self, loggable: object, summary: str) -> None:
        """Each kind of record is summarised on one line."""
        record = make_record(loggable, "x", 7, ("Step",), run="r", seq=3)  # type: ignore[arg-type]
        assert format_record(record).endswith(f" r #3 {record['kind']} Step/x [7] {summary}")

    def test_dropped_notice(self) -> None:
        """A stream's dropped notice says how many records were lost."""
        assert format_record({"kind": "dropped", "t": 0.0, "count": 4}).endswith(" dropped 4 records")


def test_python_dash_m(tmp_path: Path) -> None:
    """'python -m asyncloop log show FILE' runs the command line."""
    write_log(tmp_path / "run.alog", n=1)
    done = subprocess.run([sys.executable, "-m", "asyncloop", "log", "show", str(tmp_path / "run.alog")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 3
