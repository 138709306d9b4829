"""Tests for asyncloop.logging._eventlog: the crash-safe msgpack event log, its readers and follow()."""

from __future__ import annotations

import errno
import io
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncloop import (
    Callback,
    Checkpointer,
    EventLogBackend,
    LogMetrics,
    Metrics,
    Read,
    Recorder,
    StepEnd,
    TrainingPhase,
    fit,
    log_to,
    on,
    test_learner,
    validate,
)
from asyncloop.loggables import Audio, Histogram, Image, RuntimeEvent, Text, Value
from asyncloop.logging import EventLogFormatError, decode_array, follow, read_events
from asyncloop.logging import _eventlog as eventlog
from asyncloop.logging._eventlog import HEADER, HEADER_SIZE, MAGIC, frame
from asyncloop.logging._records import is_record, make_record, pack

RECORDS = [
    make_record(Value(0.5), "Loss", 1, ("Step", "TrainingPhase", "Metrics"), run="r", seq=0),
    make_record(Text("héllo"), "Note", 1, ("Step",), run="r", seq=1),
    make_record(Image(np.zeros((2, 3, 3))), "Picture", 2, ("Step",), run="r", seq=2),
    make_record(Histogram(np.arange(5.0), bins=4), "w", 2, ("Step", "Histograms", "Weights"), run="r", seq=3),
    make_record(RuntimeEvent("StepEnd", "TrainingPhase", steps=2), "StepEnd", 2, ("Events", "TrainingPhase"),
                run="r", seq=4),
    make_record(Value(float("inf")), "Loss", 2, ("Step", "TrainingPhase", "Metrics"), run="r", seq=5),
]
FRAMES = [frame(pack(r)) for r in RECORDS]
LOG = HEADER + b"".join(FRAMES)
#: ENDS[k] is the offset just past the k-th whole record (ENDS[0] is the end of the header).
ENDS = [HEADER_SIZE + sum(len(f) for f in FRAMES[:k]) for k in range(len(FRAMES) + 1)]


def read_bytes(data: bytes) -> list[dict]:
    return list(read_events(io.BytesIO(data)))


def whole_records_before(offset: int) -> int:
    """How many records end at or before ``offset``."""
    return sum(1 for end in ENDS[1:] if end <= offset)


class TestFormat:
    def test_header_bytes(self) -> None:
        """The header is the 8-byte magic, the format version 1 and two reserved zero bytes."""
        assert MAGIC == b"\x89ALG\r\n\x1a\n"
        assert HEADER == b"\x89ALG\r\n\x1a\n\x00\x01\x00\x00"
        assert eventlog.FORMAT_VERSION == 1

    def test_record_frame(self) -> None:
        """A record is its length, its msgpack payload and the CRC-32 of both, big-endian."""
        payload = msgpack.packb({"kind": "value"})
        framed = frame(payload)
        assert framed[:4] == len(payload).to_bytes(4, "big")
        assert framed[4:-4] == payload
        assert framed[-4:] == zlib.crc32(framed[:-4]).to_bytes(4, "big")

    def test_record_keys(self) -> None:
        """Every record has kind, t, run, seq, name, group, index and value."""
        assert set(RECORDS[0]) == {"kind", "t", "run", "seq", "name", "group", "index", "value"}
        assert all(is_record(r) for r in RECORDS)
        assert not is_record({"kind": "value"})
        assert not is_record({**RECORDS[0], "seq": True})
        assert not is_record({**RECORDS[0], "group": ["Step", 1]})

    def test_arrays_decode(self) -> None:
        """Image and audio values decode back to NumPy arrays."""
        image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
        assert np.array_equal(decode_array(Image(image).encode()), image)
        audio = Audio([0.25, -0.5], sample_rate=100).encode()
        assert decode_array(audio).tolist() == [0.25, -0.5]
        with pytest.raises(ValueError, match=r"^not an encoded array: "):
            decode_array({"dtype": "complex", "shape": [1], "data": b""})


class TestEventLogBackend:
    def test_writes_a_session(self, tmp_path: Path) -> None:
        """Logging opens the file with an 'open' record; close adds a 'close' record; seq counts them all."""
        path = tmp_path / "run.alog"
        backend = EventLogBackend(path, run="r1")
        log_to(backend, Value(1.5), "Loss", 1, ("Step", "TrainingPhase", "Metrics"))
        log_to(backend, Text("done"), "Note", 1)
        backend.close()
        backend.close()
        records = list(read_events(path))
        assert [r["kind"] for r in records] == ["open", "value", "text", "close"]
        assert [r["seq"] for r in records] == [0, 1, 2, 3]
        assert {r["run"] for r in records} == {"r1"}
        assert records[0]["value"]["format"] == 1 and records[0]["value"]["pid"] == os.getpid()
        assert records[1]["group"] == ["Step", "TrainingPhase", "Metrics"] and records[1]["value"] == 1.5
        assert records[3]["value"] == {"records": 4}

    def test_reopen_appends_a_new_session(self, tmp_path: Path) -> None:
        """After close, logging again appends another open/close session; seq keeps counting."""
        path = tmp_path / "run.alog"
        backend = EventLogBackend(path, run="r")
        for i in range(2):
            log_to(backend, Value(i), "x", i)
            backend.close()
        assert [(r["kind"], r["seq"]) for r in read_events(path)] == [
            ("open", 0), ("value", 1), ("close", 2), ("open", 3), ("value", 4), ("close", 5)]

    def test_seq_continues_across_backends_per_run(self, tmp_path: Path) -> None:
        """A new backend (as in a new process) appending to a log continues its run's seq; another run counts alone."""
        path = tmp_path / "run.alog"
        for run in ("r", "r", "other", "r"):
            backend = EventLogBackend(path, run=run)
            log_to(backend, Value(1), "x", 1)
            backend.close()
        assert [(r["run"], r["kind"], r["seq"]) for r in read_events(path)] == [
            ("r", "open", 0), ("r", "value", 1), ("r", "close", 2),
            ("r", "open", 3), ("r", "value", 4), ("r", "close", 5),
            ("other", "open", 0), ("other", "value", 1), ("other", "close", 2),
            ("r", "open", 6), ("r", "value", 7), ("r", "close", 8)]

    def test_rewind_is_marked(self, tmp_path: Path) -> None:
        """A session whose first training-step point is at or before its run's last one writes a rewind record first."""
        path = tmp_path / "run.alog"
        train, val = ("Step", "TrainingPhase", "Metrics"), ("Step", "ValidationPhase", "Metrics")
        first = EventLogBackend(path, run="r")
        for step in range(1, 6):
            log_to(first, Value(step), "Loss", step, train)
        log_to(first, Value(0), "Loss", 9, val)
        first.close()
        resumed = EventLogBackend(path, run="r")  # a new process resuming from a checkpoint at step 3
        log_to(resumed, Value(0), "Loss", 4, val)  # validation steps are another axis: no rewind for them
        log_to(resumed, Value(4), "Loss", 4, train)
        log_to(resumed, Value(5), "Loss", 5, train)
        resumed.close()
        records = list(read_events(path))
        assert [(r["kind"], r["index"]) for r in records[8:]] == [
            ("open", 0), ("value", 4), ("rewind", 4), ("value", 4), ("value", 5), ("close", 0)]
        assert records[10]["value"] == {"step": 4} and records[10]["seq"] == 10
        fresh = EventLogBackend(path, run="r")  # a continued fit: no rewind
        log_to(fresh, Value(6), "Loss", 6, train)
        fresh.close()
        assert [r["kind"] for r in read_events(path)][-3:] == ["open", "value", "close"]

    async def test_validate_after_fit_is_no_rewind(self, tmp_path: Path) -> None:
        """validate() after a fit logs EvaluationPhase steps from 1 into the same run: another axis, no rewind."""
        path = tmp_path / "run.alog"
        learner = test_learner(Recorder(), Metrics(), LogMetrics(EventLogBackend(path, run="r")), n_batches=4)
        await fit(learner, 2)
        await validate(learner)
        assert "rewind" not in [r["kind"] for r in read_events(path)]

    def test_resume_after_a_crash_mid_epoch_marks_the_rewind(self, tmp_path: Path) -> None:
        """A fit resumed after a crash mid-epoch continues its run's seq and writes a rewind at the replayed step."""

        class Crash(Callback):
            state_access = {"cbstate": {"history": Read()}}

            @on(StepEnd, TrainingPhase)
            def crash(self, event: StepEnd, phase: TrainingPhase, learner: Any) -> None:
                if learner.cbstate.history[phase].steps == 6:
                    raise RuntimeError("power cut")

        path, folder = tmp_path / "run.alog", tmp_path / "checkpoints"
        crashing = test_learner(Recorder(), Metrics(), Checkpointer(folder),
                                LogMetrics(EventLogBackend(path, run="r")), Crash(), n_batches=4)
        with pytest.raises(RuntimeError, match="power cut"):
            trio.run(fit, crashing, 2)
        resumed = test_learner(Recorder(), Metrics(), Checkpointer(folder), LogMetrics(EventLogBackend(path, run="r")),
                               n_batches=4)
        trio.run(lambda: fit(resumed, 1, resume=folder))  # from the checkpoint of epoch 1 (step 4)
        records = list(read_events(path))
        assert [r["seq"] for r in records] == list(range(len(records)))
        rewinds = [i for i, r in enumerate(records) if r["kind"] == "rewind"]
        assert len(rewinds) == 1 and records[rewinds[0]]["value"] == {"step": 5}
        after = records[rewinds[0] + 1]
        assert (after["group"], after["index"]) == (["Step", "TrainingPhase", "Metrics"], 5)

    def test_mode_w_replaces(self, tmp_path: Path) -> None:
        """mode='w' replaces an existing log on its first open."""
        path = tmp_path / "run.alog"
        path.write_bytes(LOG)
        backend = EventLogBackend(path, mode="w")
        log_to(backend, Value(1), "x", 1)
        backend.close()
        assert [r["kind"] for r in read_events(path)] == ["open", "value", "close"]

    def test_append_cuts_a_torn_tail(self, tmp_path: Path) -> None:
        """Appending to a log whose last record is torn first cuts it off, so the log stays whole."""
        path = tmp_path / "run.alog"
        path.write_bytes(LOG[: ENDS[2] + 5])
        backend = EventLogBackend(path, run="again")
        log_to(backend, Value(9), "x", 1)
        backend.close()
        with read_events(path) as reader:
            records = list(reader)
        assert records[:2] == RECORDS[:2]
        assert [r["kind"] for r in records[2:]] == ["open", "value", "close"]
        assert reader.trailing == 0

    def test_append_refuses_to_cut_off_data_after_a_corrupt_record(self, tmp_path: Path) -> None:
        """Appending to a log with a corrupt record followed by more data raises and leaves the file byte for byte unchanged."""
        path = tmp_path / "run.alog"
        data = bytearray(LOG)
        data[ENDS[2] + 6] ^= 0xFF  # inside the payload of the third record; three more whole records follow
        path.write_bytes(data)
        backend = EventLogBackend(path, run="again")
        with pytest.raises(EventLogFormatError) as info:
            log_to(backend, Value(9), "x", 1)
        assert str(info.value) == (
            f"{path} has a corrupt record at byte {ENDS[2]}, followed by more data ({len(LOG) - ENDS[2]} bytes "
            f"to the end of the file); appending would cut that data off, so the file was left as it is. Log "
            f"with mode='w' to start a new log there, or copy the readable records (read_events() stops at "
            f"byte {ENDS[2]}) to a new log and append to that"
        )
        assert path.read_bytes() == data

    def test_append_cuts_a_corrupt_last_record(self, tmp_path: Path) -> None:
        """A corrupt record that nothing follows is a tail: it is cut off and the log appended to."""
        path = tmp_path / "run.alog"
        data = bytearray(LOG)
        data[ENDS[-2] + 6] ^= 0xFF
        path.write_bytes(data)
        backend = EventLogBackend(path, run="again")
        log_to(backend, Value(9), "x", 1)
        backend.close()
        records = list(read_events(path))
        assert records[:-3] == RECORDS[:-1] and [r["kind"] for r in records[-3:]] == ["open", "value", "close"]

    def test_append_completes_a_partial_header(self, tmp_path: Path) -> None:
        """A file holding part of the header (a writer killed at creation) is started afresh."""
        path = tmp_path / "run.alog"
        path.write_bytes(HEADER[:5])
        backend = EventLogBackend(path)
        log_to(backend, Value(1), "x", 1)
        backend.close()
        assert [r["kind"] for r in read_events(path)] == ["open", "value", "close"]

    def test_refuses_to_append_to_another_file(self, tmp_path: Path) -> None:
        """A file that is not an event log is never appended to."""
        path = tmp_path / "notes.txt"
        path.write_text("my notes, not a log\n")
        backend = EventLogBackend(path)
        with pytest.raises(
            EventLogFormatError,
            match=r"^.*notes\.txt is not an asyncloop event log \(bad magic bytes\)$",
        ):
            backend.log_to(Value(1), "x", 1)
        assert path.read_text() == "my notes, not a log\n"

    def test_refuses_oversized_records(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A record above MAX_RECORD_SIZE is refused with a clear error and nothing is written."""
        monkeypatch.setattr(eventlog, "MAX_RECORD_SIZE", 400)
        path = tmp_path / "run.alog"
        backend = EventLogBackend(path)
        with pytest.raises(
            ValueError,
            match=r"^a text record of \d+ bytes exceeds the event log's limit of 400 bytes; log a smaller text$",
        ):
            backend.log_to(Text("x" * 1000), "big", 1)
        backend.log_to(Value(1), "x", 1)
        backend.close()
        assert [(r["kind"], r["seq"]) for r in read_events(path)] == [("open", 0), ("value", 1), ("close", 2)]

    def test_creates_the_folder(self, tmp_path: Path) -> None:
        """The log's folder is created when the first record is written."""
        backend = EventLogBackend(tmp_path / "logs" / "today" / "run.alog")
        backend.log_to(Value(1), "x", 1)
        backend.close()
        assert len(list(read_events(tmp_path / "logs" / "today" / "run.alog"))) == 3

    def test_fsync_option(self, tmp_path: Path) -> None:
        """fsync=True forces records to disk at flush and close."""
        backend = EventLogBackend(tmp_path / "run.alog", fsync=True)
        backend.log_to(Value(1), "x", 1)
        backend.flush()
        backend.close()
        assert len(list(read_events(tmp_path / "run.alog"))) == 3

    def test_threads_write_whole_records(self, tmp_path: Path) -> None:
        """Several threads logging at once produce whole records with distinct, consecutive seq numbers."""
        path = tmp_path / "run.alog"
        backend = EventLogBackend(path)

        def work(name: str) -> None:
            for i in range(200):
                backend.log_to(Value(i), name, i)

        threads = [threading.Thread(target=work, args=(f"t{k}",)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        backend.close()
        records = list(read_events(path))
        assert [r["seq"] for r in records] == list(range(802))
        for k in range(4):
            assert [r["index"] for r in records if r["name"] == f"t{k}"] == list(range(200))

    @pytest.mark.parametrize(("kwargs", "error", "message"), [
        ({"mode": "x"}, ValueError, r"^mode must be 'a' \(append\) or 'w' \(replace\), got 'x'$"),
        ({"run": 5}, TypeError, r"^run must be a str or None, got 5$"),
    ])
    def test_bad_arguments(self, tmp_path: Path, kwargs: dict[str, Any], error: type, message: str) -> None:
        """Bad options are refused at construction."""
        with pytest.raises(error, match=message):
            EventLogBackend(tmp_path / "x.alog", **kwargs)


class TestReadEvents:
    def test_reads_every_record(self, tmp_path: Path) -> None:
        """A whole log reads back as the records written, from a path or a file object."""
        path = tmp_path / "run.alog"
        path.write_bytes(LOG)
        assert list(read_events(path)) == RECORDS
        assert list(read_events(str(path))) == RECORDS
        assert read_bytes(LOG) == RECORDS

    def test_torn_tail_is_skipped(self) -> None:
        """A record cut short at the end is skipped without an error; trailing counts its bytes."""
        with read_events(io.BytesIO(LOG[:-3])) as reader:
            assert list(reader) == RECORDS[:-1]
        assert reader.trailing == len(FRAMES[-1]) - 3
        assert reader.end == ENDS[-2]

    def test_corrupt_record_ends_the_log(self) -> None:
        """A record failing its checksum ends reading there; nothing after it is trusted."""
        data = bytearray(LOG)
        data[ENDS[3] + 10] ^= 0x40
        assert read_bytes(bytes(data)) == RECORDS[:3]

    def test_payload_that_is_not_a_record(self) -> None:
        """A whole frame whose payload is not a record map ends the log too."""
        assert read_bytes(HEADER + frame(pack([1, 2, 3])) + FRAMES[0]) == []
        assert read_bytes(HEADER + frame(b"\xc1") + FRAMES[0]) == []

    def test_huge_length_prefix(self) -> None:
        """A length above MAX_RECORD_SIZE is treated as corruption, not read."""
        assert read_bytes(HEADER + b"\xff\xff\xff\xff" + b"x" * 100) == []

    @pytest.mark.parametrize("data", [b"", HEADER[:1], HEADER[:11]])
    def test_empty_or_partial_header(self, data: bytes) -> None:
        """An empty file, or one holding part of the header, is an empty log."""
        assert read_bytes(data) == []

    def test_wrong_magic(self, tmp_path: Path) -> None:
        """A file that is not an event log is refused at once, naming the file."""
        path = tmp_path / "data.csv"
        path.write_text("run,phase\n")
        with pytest.raises(
            EventLogFormatError,
            match=r"^.*data\.csv is not an asyncloop event log \(bad magic bytes\)$",
        ):
            read_events(path)

    def test_newer_version(self) -> None:
        """A log of a newer format version is refused with the fix."""
        data = MAGIC + (2).to_bytes(2, "big") + b"\x00\x00"
        with pytest.raises(
            EventLogFormatError,
            match=r"^<stream> is an event log of format version 2; this asyncloop reads version 1, upgrade asyncloop "
                  r"to read it$",
        ):
            read_events(io.BytesIO(data))

    def test_format_error_is_a_value_error(self) -> None:
        """EventLogFormatError is a ValueError."""
        assert issubclass(EventLogFormatError, ValueError)


# --------------------------------------------------------------------------------------------------------------
# Fuzzing the reader
# --------------------------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TestFuzzedReader:
    @FUZZ
    @given(st.integers(min_value=0, max_value=len(LOG)))
    def test_any_truncation(self, n: int) -> None:
        """A log cut anywhere reads as exactly the records that ended before the cut."""
        assert read_bytes(LOG[:n]) == RECORDS[: whole_records_before(n)]

    @FUZZ
    @given(st.lists(st.tuples(st.integers(min_value=HEADER_SIZE, max_value=len(LOG) - 1),
                              st.integers(min_value=0, max_value=7)), min_size=1, max_size=3,
                    unique_by=lambda flip: flip[0]))
    def test_bit_flips(self, flips: list[tuple[int, int]]) -> None:
        """Flipped bits after the header end the log at the first damaged record; nothing damaged is yielded."""
        data = bytearray(LOG)
        for offset, bit in flips:
            data[offset] ^= 1 << bit
        first = min(offset for offset, _ in flips)
        assert read_bytes(bytes(data)) == RECORDS[: whole_records_before(first)]

    @FUZZ
    @given(st.integers(min_value=0, max_value=HEADER_SIZE - 1), st.integers(min_value=0, max_value=7))
    def test_header_bit_flips(self, offset: int, bit: int) -> None:
        """A flipped magic or version byte is a format error; the reserved bytes are ignored."""
        data = bytearray(LOG)
        data[offset] ^= 1 << bit
        if offset < HEADER_SIZE - 2:
            with pytest.raises(EventLogFormatError):
                read_bytes(bytes(data))
        else:
            assert read_bytes(bytes(data)) == RECORDS

    @FUZZ
    @given(st.binary(max_size=300))
    def test_garbage_after_the_records(self, garbage: bytes) -> None:
        """Whatever follows the last record, the records before it are read and nothing else is."""
        records = read_bytes(LOG + garbage)
        assert records[: len(RECORDS)] == RECORDS
        assert all(is_record(r) for r in records)

    @FUZZ
    @given(st.binary(max_size=400))
    def test_garbage_after_the_header(self, garbage: bytes) -> None:
        """Random bytes after a valid header never raise and never yield anything but records."""
        assert all(is_record(r) for r in read_bytes(HEADER + garbage))

    @FUZZ
    @given(st.binary(max_size=64))
    def test_random_files(self, data: bytes) -> None:
        """Random bytes either read as a (possibly empty) log or fail with EventLogFormatError only."""
        try:
            records = read_bytes(data)
        except EventLogFormatError:
            assert not MAGIC.startswith(data[:8]) or data[:8] == MAGIC
        else:
            assert all(is_record(r) for r in records)

    @FUZZ
    @given(st.lists(st.one_of(st.floats(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=20)), max_size=8))
    def test_written_values_read_back(self, values: list[Any]) -> None:
        """Any number or text written through the backend's framing reads back unchanged."""
        records = [make_record(Text(v) if isinstance(v, str) else Value(v), "x", i, (), run="r", seq=i)
                   for i, v in enumerate(values)]
        data = HEADER + b"".join(frame(pack(r)) for r in records)
        back = read_bytes(data)
        assert len(back) == len(records)
        for got, want in zip(back, records):
            assert got["value"] == want["value"] or (got["value"] != got["value"] and want["value"] != want["value"])


# --------------------------------------------------------------------------------------------------------------
# A writer killed mid-write
# --------------------------------------------------------------------------------------------------------------

WRITER = """
import sys
from asyncloop.logging import EventLogBackend
from asyncloop.loggables import Text

backend = EventLogBackend(sys.argv[1], run="killed")
blob = "x" * 200_000  # big records: a kill is likely to land inside a write
i = 0
while True:
    backend.log_to(Text(blob), "blob", i)
    if i == 20:
        print("ready", flush=True)
    i += 1
"""


class TestKilledWriter:
    def test_log_stays_readable_up_to_the_last_whole_record(self, tmp_path: Path) -> None:
        """A writer killed with SIGKILL leaves a log whose records are all whole and consecutive."""
        path = tmp_path / "killed.alog"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready and proc.stdout.readline() == b"ready\n"  # type: ignore[union-attr]
            time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()  # type: ignore[union-attr]
        assert proc.returncode == -signal.SIGKILL
        with read_events(path) as reader:
            records = list(reader)
        assert records[0]["kind"] == "open"
        blobs = records[1:]
        assert len(blobs) > 20
        assert [r["seq"] for r in records] == list(range(len(records)))
        assert [r["index"] for r in blobs] == list(range(len(blobs)))
        assert all(r["value"] == "x" * 200_000 for r in blobs)
        assert reader.end + reader.trailing == path.stat().st_size
        # A new writer repairs the tail and appends after the last whole record.
        backend = EventLogBackend(path, run="after")
        backend.log_to(Value(1), "x", 0)
        backend.close()
        with read_events(path) as again:
            assert [r["run"] for r in again][len(records):] == ["after"] * 3
        assert again.trailing == 0


# --------------------------------------------------------------------------------------------------------------
# follow()
# --------------------------------------------------------------------------------------------------------------


class TestFollow:
    def test_yields_records_as_they_are_appended(self, tmp_path: Path) -> None:
        """follow sees records written by another thread while it runs, and stops at 'until'."""
        path = tmp_path / "live.alog"
        backend = EventLogBackend(path)

        def write() -> None:
            for i in range(5):
                backend.log_to(Value(i), "x", i)
                time.sleep(0.01)
            backend.close()

        writer = threading.Thread(target=write)
        writer.start()
        records = list(follow(path, poll_interval=0.01, idle_timeout=10, until=lambda r: r["kind"] == "close"))
        writer.join()
        assert [r["kind"] for r in records] == ["open", *["value"] * 5, "close"]

    def test_waits_for_the_file_and_a_partial_record(self, tmp_path: Path) -> None:
        """follow waits for the file to appear and for a half-written record to be completed."""
        path = tmp_path / "later.alog"

        def write() -> None:
            time.sleep(0.05)
            with open(path, "wb", buffering=0) as f:
                f.write(LOG[: HEADER_SIZE - 4])
                time.sleep(0.05)
                f.write(LOG[HEADER_SIZE - 4 : ENDS[1] + 7])
                time.sleep(0.05)
                f.write(LOG[ENDS[1] + 7 : ENDS[2]])

        writer = threading.Thread(target=write)
        writer.start()
        records = list(follow(path, poll_interval=0.01, idle_timeout=10, until=lambda r: r["seq"] == 1))
        writer.join()
        assert records == RECORDS[:2]

    def test_idle_timeout(self, tmp_path: Path) -> None:
        """Without new records, follow stops after idle_timeout seconds (also if the file never appears)."""
        path = tmp_path / "run.alog"
        path.write_bytes(LOG)
        t0 = time.monotonic()
        assert list(follow(path, poll_interval=0.01, idle_timeout=0.1)) == RECORDS
        assert list(follow(tmp_path / "missing.alog", poll_interval=0.01, idle_timeout=0.05)) == []
        assert time.monotonic() - t0 < 5

    def test_restarts_when_the_file_is_rewritten(self, tmp_path: Path) -> None:
        """If the log shrinks below what was read (rewritten), follow starts over at its first record."""
        path = tmp_path / "run.alog"
        path.write_bytes(LOG)
        seen: list[dict] = []

        def rewrite() -> None:
            while len(seen) < len(RECORDS):
                time.sleep(0.01)
            path.write_bytes(HEADER + FRAMES[1])

        writer = threading.Thread(target=rewrite)
        writer.start()
        for record in follow(path, poll_interval=0.01, idle_timeout=10):
            seen.append(record)
            if len(seen) == len(RECORDS) + 1:
                break
        writer.join()
        assert seen == [*RECORDS, RECORDS[1]]

    def test_wrong_magic_raises(self, tmp_path: Path) -> None:
        """follow refuses a file that is not an event log."""
        path = tmp_path / "x.txt"
        path.write_text("hello world, not a log")
        with pytest.raises(EventLogFormatError, match=r"is not an asyncloop event log \(bad magic bytes\)$"):
            list(follow(path, poll_interval=0.01, idle_timeout=1))

    def test_bad_poll_interval(self, tmp_path: Path) -> None:
        """poll_interval must be positive."""
        with pytest.raises(ValueError, match=r"^poll_interval must be > 0, got 0$"):
            next(follow(tmp_path / "x", poll_interval=0))


# --------------------------------------------------------------------------------------------------------------
# Failed writes (disk full, file-size limit, quota)
# --------------------------------------------------------------------------------------------------------------

FSIZE_WRITER = """
import resource
import signal
import sys

from asyncloop.logging import EventLogBackend
from asyncloop.loggables import Text

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # exceeding the limit is then EFBIG, not death
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
backend = EventLogBackend(sys.argv[1], run="full")
backend.log_to(Text("before"), "small", 0)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), hard))
for i in range(1, 4):
    try:
        backend.log_to(Text("y" * 3000), "big", i)
    except OSError as exc:
        print("failed", i, exc.errno, flush=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
for i in range(4, 8):
    backend.log_to(Text("after"), "small", i)
backend.close()
"""


class FlakyFile:
    """A file whose ``write`` fails on demand, like a disk that fills up: part of the bytes, then ENOSPC."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.fail = False

    def write(self, data: Any) -> int:
        if self.fail:
            self.fail = False
            self._f.write(bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> list[FlakyFile]:
    """Every file the event log opens for appending is a FlakyFile (listed here)."""
    files: list[FlakyFile] = []

    def fake_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115
        if mode == "ab":
            files.append(FlakyFile(f))
            return files[-1]
        return f

    monkeypatch.setattr(eventlog, "open", fake_open, raising=False)
    return files


class TestFailedWrites:
    @pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
    def test_file_size_limit(self, tmp_path: Path) -> None:
        """Records that hit a file-size limit are cut off whole; every record written once there is room again is readable."""
        path = tmp_path / "full.alog"
        done = subprocess.run([sys.executable, "-c", FSIZE_WRITER, str(path), "5000"], capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "failed 2 27\nfailed 3 27\n"  # EFBIG
        with read_events(path) as reader:
            records = list(reader)
        assert [(r["name"], r["index"]) for r in records] == [
            ("asyncloop", 0), ("small", 0), ("big", 1), *[("small", i) for i in range(4, 8)], ("asyncloop", 0)]
        assert [r["seq"] for r in records] == list(range(len(records)))
        assert reader.trailing == 0 and reader.end == path.stat().st_size

    def test_disk_full_cuts_the_partial_record(self, tmp_path: Path, flaky: list[FlakyFile]) -> None:
        """A write that fails half-way raises the OSError and leaves the log ending at its last whole record."""
        path = tmp_path / "run.alog"
        backend = EventLogBackend(path, run="r")
        backend.log_to(Value(1), "x", 1)
        flaky[0].fail = True
        with pytest.raises(OSError, match=r"No space left on device"):
            backend.log_to(Text("y" * 1000), "big", 2)
        with read_events(path) as reader:
            assert [r["kind"] for r in reader] == ["open", "value"]
        assert reader.trailing == 0
        for i in range(3, 6):
            backend.log_to(Value(i), "x", i)
        backend.close()
        records = list(read_events(path))
        assert [(r["kind"], r["index"]) for r in records] == [
            ("open", 0), ("value", 1), ("value", 3), ("value", 4), ("value", 5), ("close", 0)]
        assert [r["seq"] for r in records] == list(range(6))

    def test_failed_open_record(self, tmp_path: Path, flaky: list[FlakyFile], monkeypatch: pytest.MonkeyPatch) -> None:
        """If even the 'open' record cannot be written, nothing is left of it and the next log_to opens afresh."""
        path = tmp_path / "run.alog"
        backend = EventLogBackend(path, run="r")
        real_write = FlakyFile.write

        def fail_first(self: FlakyFile, data: Any) -> int:
            if self is flaky[0] and not getattr(self, "failed", False):
                self.failed = True  # type: ignore[attr-defined]
                self.fail = True
            return real_write(self, data)

        monkeypatch.setattr(FlakyFile, "write", fail_first)
        with pytest.raises(OSError, match=r"No space left on device"):
            backend.log_to(Value(1), "x", 1)
        backend.log_to(Value(2), "x", 2)
        backend.close()
        with read_events(path) as reader:
            assert [(r["kind"], r["seq"]) for r in reader] == [("open", 0), ("value", 1), ("close", 2)]
        assert reader.trailing == 0

    def test_stops_appending_when_the_cut_fails(
        self, tmp_path: Path, flaky: list[FlakyFile], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the partial record cannot be cut off either, the backend stops appending (saying so) until closed."""
        path = tmp_path / "run.alog"
        backend = EventLogBackend(path, run="r")
        backend.log_to(Value(1), "x", 1)

        def no_truncate(fd: int, length: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "ftruncate", no_truncate)
        flaky[0].fail = True
        stopped = (
            f"{path}: a write failed ([Errno 28] No space left on device) and the partial record it left could not "
            f"be cut off ([Errno 5] Input/output error); this EventLogBackend stopped appending, so no record "
            f"lands behind it. close() it and log again: reopening cuts the partial record off"
        )
        with pytest.raises(OSError) as info:
            backend.log_to(Text("y" * 1000), "big", 2)
        assert str(info.value) == stopped
        size = path.stat().st_size
        with pytest.raises(OSError) as again:
            backend.log_to(Value(3), "x", 3)
        assert str(again.value) == stopped
        assert path.stat().st_size == size  # nothing appended behind the partial record
        with read_events(path) as reader:
            assert [r["kind"] for r in reader] == ["open", "value"]
        assert reader.trailing > 0
        backend.close()  # no close record behind the partial one
        assert path.stat().st_size == size
        monkeypatch.undo()
        backend.log_to(Value(4), "x", 4)
        backend.close()
        with read_events(path) as reader:
            assert [(r["kind"], r["index"]) for r in reader] == [
                ("open", 0), ("value", 1), ("open", 0), ("value", 4), ("close", 0)]
        assert reader.trailing == 0

    def test_reopening_never_cuts_off_whole_records(self, tmp_path: Path) -> None:
        """Whole records after a partial one (within its claimed length) are not mistaken for a torn tail."""
        path = tmp_path / "run.alog"
        big = frame(pack(make_record(Text("y" * 5000), "big", 9, (), run="r", seq=9)))
        data = HEADER + FRAMES[0] + big[:40] + FRAMES[1] + FRAMES[2]
        path.write_bytes(data)
        backend = EventLogBackend(path, run="again")
        with pytest.raises(EventLogFormatError, match=rf"^{re.escape(str(path))} has a corrupt record at byte "
                                                      rf"{ENDS[1]}, followed by more data "):
            log_to(backend, Value(9), "x", 1)
        assert path.read_bytes() == data

    @FUZZ
    @given(st.integers(min_value=1, max_value=len(FRAMES[-1]) - 1))
    def test_a_torn_tail_is_still_cut(self, n: int) -> None:
        """A last record cut anywhere, with nothing after it, is still recognised as a torn tail."""
        f = io.BytesIO(LOG[: ENDS[-2] + n])
        assert eventlog._is_torn_tail(f, ENDS[-2], ENDS[-2] + n)

    def test_a_large_torn_tail_is_recognised_quickly(self) -> None:
        """Looking for whole records after a 16 MB torn record of random bytes takes a moment, not a CRC per offset."""
        data = np.random.default_rng(0).integers(0, 256, size=16 << 20, dtype=np.uint8).tobytes()
        big = frame(pack({**RECORDS[2], "value": {"dtype": "uint8", "shape": [len(data)], "data": data}}))
        torn = LOG + big[:-100]
        t0 = time.perf_counter()
        assert eventlog._is_torn_tail(io.BytesIO(torn), len(LOG), len(torn))
        assert time.perf_counter() - t0 < 5


def test_a_pickled_backend_starts_closed_and_continues_the_run(tmp_path: Path) -> None:
    """An EventLogBackend pickles even while open (a process actor's copy): the copy starts closed, and its opening
    continues the run's seq in the same file."""
    import pickle

    backend = EventLogBackend(tmp_path / "run.alog", run="r")
    backend.log_to(Value(1.0), "Loss", 1, ("Step",))
    copy = pickle.loads(pickle.dumps(backend))
    backend.close()
    copy.log_to(Value(2.0), "Loss", 2, ("Step",))
    copy.close()
    records = list(read_events(tmp_path / "run.alog"))
    assert [r["kind"] for r in records] == ["open", "value", "close", "open", "value", "close"]
    assert [r["seq"] for r in records] == list(range(6))
