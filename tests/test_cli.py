"""Tests for asyncloop._cli: ``asyncloop log show|follow FILE`` and ``asyncloop log subscribe HOST PORT``."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncloop import EventLogBackend, StreamServer, log_to
from asyncloop._cli import format_record, main
from asyncloop.loggables import Audio, Histogram, Image, RuntimeEvent, Text, Value
from asyncloop.logging._eventlog import HEADER, frame
from asyncloop.logging._records import make_record, pack
from asyncloop.logging._framing import PROTOCOL_VERSION


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


class TestDemoCommand:
    """``asyncloop demo``: its options and errors here; its run and its files in tests/test_demo.py."""

    def test_help_explains_itself(self) -> None:
        """'python -m asyncloop demo --help' says what the demo trains, on what, what it writes, and every option."""
        done = subprocess.run([sys.executable, "-m", "asyncloop", "demo", "--help"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stderr == ""
        text = " ".join(done.stdout.split())
        assert text.startswith("usage: asyncloop demo [-h] [--epochs N] [--runner {actor,linear}] [--out DIR]")
        for phrase in ("scikit-learn's 8x8 handwritten digits", "no download", "one-cycle learning-rate schedule",
                       "early stopping", "TensorBoard", "ActorRunner", "OUT/version_N", "events.alog",
                       "asyncloop log show", "curves.png", "--quick", "--seed SEED", "--min-accuracy A",
                       "runs/demo"):
            assert phrase in text, phrase

    def test_listed_in_top_level_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """'asyncloop --help' lists the demo command with a one-line description."""
        with pytest.raises(SystemExit):
            main(["--help"])
        assert re.search(r"^    demo +train a small CNN on handwritten digits", capsys.readouterr().out, flags=re.M)

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--epochs", "0"], "asyncloop demo: error: argument --epochs: expected a whole number >= 1, got '0'"),
            (["--runner", "gpu"],
             "asyncloop demo: error: argument --runner: invalid choice: 'gpu' (choose from 'actor', 'linear')"),
            (["--quick", "extra"], "asyncloop: error: unrecognized arguments: extra"),
        ],
    )
    def test_bad_arguments(self, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
        """A bad demo option exits with status 2 and an argparse message naming it; nothing is trained."""
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", *argv])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == message


# --------------------------------------------------------------------------------------------------------------
# Odd records: whole and CRC-valid, with field values no writer of ours makes
# --------------------------------------------------------------------------------------------------------------

#: Anything a terminal would act on: C0 controls but the line feed that ends each line, DEL and C1 controls.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def odd(kind: str, value: Any, **fields: Any) -> dict:
    return {"kind": kind, "t": 1.5, "run": "r", "seq": 0, "name": "x", "group": ["Step"], "index": 1,
            "value": value, **fields}


def write_records(path: Path, records: list[dict]) -> None:
    path.write_bytes(HEADER + b"".join(frame(pack(r)) for r in records))


LAST = make_record(Value(0.5), "Loss", 9, ("Step",), run="r", seq=99)


KINDS = st.one_of(st.sampled_from(["value", "text", "image", "histogram", "audio", "event", "open", "close",
                                    "dropped"]), st.text(max_size=6))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=10),
                    st.binary(max_size=8))
ANY = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                   max_leaves=10)
#: Values shaped like the array and histogram dicts, with any field values.
VALUES = st.one_of(
    ANY,
    st.fixed_dictionaries({}, optional={"dtype": ANY, "shape": ANY, "data": ANY, "sample_rate": ANY}),
    st.fixed_dictionaries({}, optional={"num": ANY, "sum": ANY, "min": ANY, "max": ANY}),
)
TIMES = st.one_of(st.floats(), st.integers(-(2**63), 2**64 - 1))


class TestOddRecords:
    @pytest.mark.parametrize(("record", "line"), [
        (odd("value", 1.0, t=2**63), "t=9223372036854775808 r #0 value Step/x [1] 1.0"),
        (odd("value", 1.0, t=1e300), "t=1e+300 r #0 value Step/x [1] 1.0"),
        (odd("value", 1.0, t=float("nan")), "t=nan r #0 value Step/x [1] 1.0"),
        (odd("value", 1.0, t=-float("inf")), "t=-inf r #0 value Step/x [1] 1.0"),
        (odd("histogram", {"num": 2, "sum": "lots", "min": 1.0, "max": 3.0}),
         "histogram Step/x [1] num=2 sum='lots' min=1.0 max=3.0"),
        (odd("histogram", {"num": "two", "sum": 4.0}), "histogram Step/x [1] num='two' sum=4.0"),
        (odd("image", {"dtype": "uint8", "shape": 5, "data": b"\x00" * 5}),
         "image Step/x [1] dtype='uint8' shape=5 data=<5 bytes>"),
        (odd("image", {"dtype": ["u8"], "shape": [1], "data": b"\x00"}),
         "image Step/x [1] dtype=['u8'] shape=[1] data=<1 bytes>"),
        (odd("audio", {"dtype": "float32", "shape": [2], "data": b"", "sample_rate": "fast"}),
         "audio Step/x [1] dtype='float32' shape=[2] data=<0 bytes> sample_rate='fast'"),
        (odd("audio", [1, 2]), "audio Step/x [1] [1, 2]"),
        (odd("event", {b"raw": msgpack.ExtType(5, b"x")}), "event Step/x [1] b'raw'=ExtType(code=5, data=b'x')"),
    ])
    def test_show_prints_odd_records_and_goes_on(self, tmp_path: Path, record: dict, line: str) -> None:
        """show prints a whole record with odd field values as best it can, and the records after it."""
        path = tmp_path / "odd.alog"
        write_records(path, [record, LAST])
        status, out, err = run_cli("log", "show", str(path))
        lines = out.splitlines()
        assert (status, err, len(lines)) == (0, "", 2)
        assert lines[0].endswith(line) and (lines[0].startswith("t=") or not line.startswith("t="))
        assert lines[1].endswith(" r #99 value Step/Loss [9] 0.5")

    def test_json_prints_odd_records(self, tmp_path: Path) -> None:
        """--json prints every record too: bytes keys as base64, values JSON cannot hold as their repr."""
        path = tmp_path / "odd.alog"
        write_records(path, [odd("event", {b"\xff": msgpack.ExtType(5, b"x"), "t": msgpack.Timestamp(1)}), LAST])
        status, out, err = run_cli("log", "show", "--json", str(path))
        records = [json.loads(line) for line in out.splitlines()]
        assert (status, err, len(records)) == (0, "", 2)
        assert records[0]["value"] == {"/w==": "ExtType(code=5, data=b'x')",
                                       "t": "Timestamp(seconds=1, nanoseconds=0)"}

    def test_deeply_nested_value(self, tmp_path: Path) -> None:
        """A value nested as deep as msgpack allows is printed (cut short if need be), in both formats."""
        deep: Any = 0
        for _ in range(1020):
            deep = [deep]
        path = tmp_path / "deep.alog"
        write_records(path, [odd("value", deep), LAST])
        for flags in ([], ["--json"]):
            status, out, err = run_cli("log", "show", *flags, str(path))
            assert (status, err, len(out.splitlines())) == (0, "", 2)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])
    @given(st.lists(st.builds(odd, KINDS, VALUES, t=TIMES, run=st.text(max_size=8),
                              name=st.text(max_size=8), group=st.lists(st.text(max_size=4), max_size=3)),
                    min_size=1, max_size=4))
    def test_show_never_fails(self, tmp_path: Path, records: list[dict]) -> None:
        """Whatever msgpack values a whole record holds, show prints one clean line per record, in both formats."""
        path = tmp_path / "fuzz.alog"
        write_records(path, [*records, LAST])
        for flags in ([], ["--json"]):
            status, out, err = run_cli("log", "show", *flags, str(path))
            lines = out.splitlines()
            assert (status, err, len(lines)) == (0, "", len(records) + 1)
            assert not CONTROL.search(out)
        assert [json.loads(line)["seq"] for line in lines] == [0] * len(records) + [99]

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(["kind", "t", "run", "seq", "group",
                                                                            "name", "index", "value", "count"])),
                           VALUES, max_size=8))
    def test_format_record_takes_any_map(self, record: dict) -> None:
        """format_record turns any map a stream server may send into one line without control characters."""
        line = format_record(record)
        assert "\n" not in line and not CONTROL.search(line)


# --------------------------------------------------------------------------------------------------------------
# Control characters: a crafted log or a hostile server must not drive the terminal
# --------------------------------------------------------------------------------------------------------------

TITLE = "\x1b]0;pwned\x07"  # OSC 0: retitle the terminal
CLIPBOARD = "\x1b]52;c;aGk=\x07"  # OSC 52: write the clipboard
CLEAR = "\x1b[2J"  # CSI: clear the screen
C1_CSI = "\x9b2J"  # the same as a single C1 control


def hostile_record(seq: int = 0) -> dict:
    return {"kind": "text", "t": 1.5, "run": f"evil{TITLE}", "seq": seq, "name": CLEAR, "group": [C1_CSI, "a\nb"],
            "index": 1, "value": CLIPBOARD}


#: How a line shows hostile_record(): every control character escaped like Python string escapes.
HOSTILE_LINE = r"evil\x1b]0;pwned\x07 #0 text \x9b2J/a\nb/\x1b[2J [1] '\x1b]52;c;aGk=\x07'"


class TestControlCharacters:
    def test_show_escapes_user_strings(self, tmp_path: Path) -> None:
        """show escapes control characters in run names, tags, text values and value fields."""
        path = tmp_path / "evil.alog"
        image = odd("image", {"dtype": CLEAR, "shape": [1], "data": b"\x00"}, run="r")
        event = odd(f"k{CLEAR}", {TITLE: C1_CSI})
        write_records(path, [hostile_record(), image, event])
        status, out, err = run_cli("log", "show", str(path))
        lines = out.splitlines()
        assert (status, err, len(lines)) == (0, "", 3) and not CONTROL.search(out)
        assert lines[0].endswith(" " + HOSTILE_LINE)
        assert lines[1].endswith(r" r #0 image Step/x [1] \x1b[2J[1]")
        assert lines[2].endswith(r" r #0 k\x1b[2J Step/x [1] \x1b]0;pwned\x07='\x9b2J'")

    def test_json_escapes(self, tmp_path: Path) -> None:
        """--json output holds no control character either (JSON escapes, DEL included)."""
        path = tmp_path / "evil.alog"
        write_records(path, [{**hostile_record(), "value": "del\x7f"}])
        status, out, _ = run_cli("log", "show", "--json", str(path))
        assert status == 0 and not CONTROL.search(out.rstrip("\n"))
        assert json.loads(out)["run"] == f"evil{TITLE}" and json.loads(out)["value"] == "del\x7f"

    def test_error_messages_escape_file_names(self, tmp_path: Path) -> None:
        """Errors and notes that quote a file name escape its control characters."""
        path = tmp_path / f"x{TITLE}.alog"
        path.write_text("a,b\n")
        shown = str(path).replace("\x1b", r"\x1b").replace("\x07", r"\x07")
        assert run_cli("log", "show", str(path)) == (
            1, "", f"asyncloop: error: {shown} is not an asyncloop event log (bad magic bytes)\n")
        write_records(path, [LAST])
        path.write_bytes(path.read_bytes() + b"\x00\x00")
        assert run_cli("log", "show", str(path))[2] == (
            f"asyncloop: note: the last 2 bytes of {shown} are a torn or corrupt record; skipped\n")

    async def test_subscribe_escapes_server_strings(self) -> None:
        """subscribe escapes what a hostile server sends: records, and the message of a refusal."""

        async def evil(refuse: bool, stream: trio.SocketStream) -> None:
            await stream.receive_some(4096)
            if refuse:
                reply = [{"kind": "error", "message": f"go away{TITLE}{CLEAR}"}]
            else:
                reply = [{"kind": "welcome", "protocol": PROTOCOL_VERSION}, hostile_record(),
                         {"kind": "dropped", "t": "now", "count": CLIPBOARD}]
            await stream.send_all(b"".join(len(p).to_bytes(4, "big") + p for p in map(pack, reply)))
            await stream.aclose()

        results = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for refuse in (False, True):
                    listeners = await nursery.start(partial(trio.serve_tcp, partial(evil, refuse), 0, host="127.0.0.1"))
                    port = str(listeners[0].socket.getsockname()[1])
                    results.append(await trio.to_thread.run_sync(run_cli, "log", "subscribe", "127.0.0.1", port))
                nursery.cancel_scope.cancel()
        (status, out, err), refused = results
        lines = out.splitlines()
        assert (status, err, len(lines)) == (0, "", 2) and not CONTROL.search(out)
        assert lines[0].endswith(" " + HOSTILE_LINE)
        assert lines[1] == r"t='now' dropped '\x1b]52;c;aGk=\x07' records"
        assert refused == (1, "", r"asyncloop: error: the stream server refused the subscription: go away"
                                  r"\x1b]0;pwned\x07\x1b[2J" + "\n")
