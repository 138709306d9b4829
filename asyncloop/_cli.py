"""The ``asyncloop`` command line (also ``python -m asyncloop``).

::

    asyncloop log show [--json] FILE            print the records of an event log
    asyncloop log follow [--json] [--poll S] [--idle-timeout S] [--until-close] FILE
                                                print records as they are appended (Ctrl-C to stop)
    asyncloop log subscribe [--json] HOST PORT  print the records of a live stream; the token, if the
                                                server needs one, is read from $ASYNCLOOP_STREAM_TOKEN

Exit status: 0 on success, 1 when the file is not an event log, cannot be read, or the stream refused us, 2 for
bad arguments (e.g. ``--poll 0``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

__all__ = ["main", "format_record"]

TOKEN_ENV = "ASYNCLOOP_STREAM_TOKEN"


def _tag(record: dict) -> str:
    return "/".join([*record.get("group", []), record.get("name", "")])


def _summary(kind: str, value: Any) -> str:
    if kind == "value":
        return repr(value)
    if kind == "text":
        return repr(value)
    if not isinstance(value, dict):
        return repr(value)
    if kind in ("image", "audio"):
        shape = "x".join(str(n) for n in value.get("shape", []))
        extra = f" at {value['sample_rate']} Hz" if "sample_rate" in value else ""
        return f"{value.get('dtype')}[{shape}]{extra}"
    if kind == "histogram":
        num = value.get("num", 0)
        mean = value.get("sum", 0.0) / num if num else float("nan")
        return f"n={num} min={value.get('min')!r} max={value.get('max')!r} mean={mean!r}"
    return " ".join(f"{k}={v!r}" for k, v in value.items())


def format_record(record: dict) -> str:
    """One line for a record: time, run, seq, kind, tag, index and a summary of the value."""
    kind = record.get("kind", "?")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("t", 0)))
    stamp += f".{int(record.get('t', 0) * 1000) % 1000:03d}"
    if kind == "dropped":
        return f"{stamp} dropped {record.get('count')} records"
    return (
        f"{stamp} {record.get('run', '')} #{record.get('seq', '')} {kind} {_tag(record)} "
        f"[{record.get('index', '')}] {_summary(kind, record.get('value'))}"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _print_records(records: Iterable[dict], as_json: bool, out: TextIO) -> None:
    for record in records:
        line = json.dumps(_jsonable(record)) if as_json else format_record(record)
        print(line, file=out, flush=True)


def _show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .logging._eventlog import read_events

    with read_events(args.file) as reader:
        _print_records(reader, args.json, out)
    if reader.trailing:
        print(
            f"asyncloop: note: the last {reader.trailing} bytes of {args.file} are a torn or corrupt record; "
            f"skipped",
            file=err,
        )
    return 0


def _follow(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .logging._eventlog import follow

    until = (lambda r: r["kind"] == "close") if args.until_close else None
    records = follow(args.file, poll_interval=args.poll, idle_timeout=args.idle_timeout, until=until)
    _print_records(records, args.json, out)
    return 0


def _subscribe(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import trio

    from .logging._stream import subscribe

    async def run() -> None:
        async with subscribe(args.host, args.port, os.environ.get(TOKEN_ENV)) as records:
            async for record in records:
                _print_records([record], args.json, out)

    trio.run(run)
    return 0


def _seconds(positive: bool) -> Any:
    """An argparse ``type``: a finite number of seconds, > 0 if ``positive`` else >= 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
        if not (value > 0 if positive else value >= 0) or value == float("inf"):
            bound = "> 0" if positive else ">= 0"
            raise argparse.ArgumentTypeError(f"expected a finite number of seconds {bound}, got {text!r}")
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 1..65535, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncloop", description="asyncloop command line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    log = commands.add_parser("log", help="read asyncloop event logs and live streams")
    actions = log.add_subparsers(dest="action", required=True)

    show = actions.add_parser("show", help="print the records of an event log")
    show.add_argument("file")
    show.add_argument("--json", action="store_true", help="one JSON object per line (bytes as base64)")
    show.set_defaults(run=_show)

    follow = actions.add_parser("follow", help="print the records of an event log as they are appended")
    follow.add_argument("file")
    follow.add_argument("--json", action="store_true", help="one JSON object per line (bytes as base64)")
    follow.add_argument("--poll", type=_seconds(positive=True), default=0.2, metavar="S", help="seconds between polls (0.2)")
    follow.add_argument("--idle-timeout", type=_seconds(positive=False), default=None, metavar="S",
                        help="stop after S seconds without a new record")
    follow.add_argument("--until-close", action="store_true", help="stop after the next 'close' record")
    follow.set_defaults(run=_follow)

    sub = actions.add_parser("subscribe", help=f"print the records of a live stream (token from ${TOKEN_ENV})")
    sub.add_argument("host")
    sub.add_argument("port", type=_port)
    sub.add_argument("--json", action="store_true", help="one JSON object per line (bytes as base64)")
    sub.set_defaults(run=_subscribe)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = _parser().parse_args(argv)
    from .logging._eventlog import EventLogFormatError
    from .logging._stream import StreamError

    try:
        return args.run(args, out, err)
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (EventLogFormatError, StreamError, OSError, ValueError) as exc:
        print(f"asyncloop: error: {exc}", file=err)
        return 1
    except KeyboardInterrupt:
        return 130
