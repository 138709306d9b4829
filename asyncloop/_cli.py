"""The ``asyncloop`` command line (also ``python -m asyncloop``).

::

    asyncloop demo [--quick] [--epochs N] [--runner {actor,linear}] [--out DIR]
                                                train a small CNN on handwritten digits (needs asyncloop[demo])
    asyncloop serve [--host H] [--port P] [--dir D] [--max-running N] [--max-queued N] [--stream-port P]
                                                run the training service (HTTP API and web page; needs the
                                                `service` extra); Ctrl-C stops it and cancels its jobs
    asyncloop log show [--json] FILE            print the records of an event log
    asyncloop log follow [--json] [--poll S] [--idle-timeout S] [--until-close] FILE
                                                print records as they are appended (Ctrl-C to stop)
    asyncloop log subscribe [--json] HOST PORT  print the records of a live stream; the token, if the
                                                server needs one, is read from $ASYNCLOOP_STREAM_TOKEN

Exit status: 0 on success, 1 when the file is not an event log, cannot be read, or the stream refused us, 2 for
bad arguments (e.g. ``--poll 0``). A record with odd field values (a NaN time, a str histogram sum) is printed as
best it can be and does not change the status. Every printed line has its control characters escaped: a crafted
log or a hostile stream server cannot drive the terminal.
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

from ._demo import add_demo_command, at_least


TOKEN_ENV = "ASYNCLOOP_STREAM_TOKEN"


def _printable(text: str) -> str:
    """The text with its control characters escaped (imported late: ``asyncloop --help`` stays fast)."""
    from .logging._records import printable

    return printable(text)


def _brief(value: Any) -> str:
    """``repr(value)``, with bytes as their length (an image's data would fill the screen)."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    try:
        return repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to print>"


def _fields(value: Any) -> str:
    """A value as it is: ``key=repr`` for each entry of a map, else its repr."""
    if isinstance(value, dict):
        return " ".join(f"{k if isinstance(k, str) else repr(k)}={_brief(v)}" for k, v in value.items())
    return _brief(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tag(record: dict) -> str:
    group, name = record.get("group", []), record.get("name", "")
    parts = [g if isinstance(g, str) else _brief(g) for g in group] if isinstance(group, list) else [_brief(group)]
    return "/".join([*parts, name if isinstance(name, str) else _brief(name)])


def _summary(kind: Any, value: Any) -> str:
    """The value in a few words; a value whose fields are not what its kind has is shown as it is."""
    if kind in ("value", "text") or not isinstance(value, dict):
        return _brief(value)
    if kind in ("image", "audio"):
        dtype, shape, rate = value.get("dtype"), value.get("shape", []), value.get("sample_rate")
        if (isinstance(dtype, str) and isinstance(shape, list) and all(type(n) is int for n in shape)
                and ("sample_rate" not in value or _number(rate))):
            extra = f" at {rate} Hz" if "sample_rate" in value else ""
            return f"{dtype}[{'x'.join(str(n) for n in shape)}]{extra}"
    elif kind == "histogram":
        num, total = value.get("num", 0), value.get("sum", 0.0)
        if _number(num) and _number(total):
            try:
                mean = total / num if num else float("nan")
            except (OverflowError, ZeroDivisionError):
                mean = float("nan")
            return f"n={num} min={_brief(value.get('min'))} max={_brief(value.get('max'))} mean={mean!r}"
    return _fields(value)


def _stamp(t: Any) -> str:
    """Local time with milliseconds; ``t=...`` for a time no calendar holds (NaN, huge, not a number)."""
    try:
        if not _number(t):
            raise TypeError(t)
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    except (TypeError, ValueError, OverflowError, OSError):
        return f"t={_brief(t)}"


def format_record(record: dict) -> str:
    """One line for a record: time, run, seq, kind, tag, index and a summary of the value.

    Never raises, whatever the record holds (a stream server may send any map): a field that is not what the
    format says is shown as its repr (a NaN time as ``t=nan``, a histogram with a str sum as its fields). Control
    characters are escaped (see :func:`asyncloop.logging._records.printable`), so the line is safe to print to a terminal.
    """
    kind = record.get("kind", "?")
    kind_text = kind if isinstance(kind, str) else _brief(kind)
    stamp = _stamp(record.get("t", 0))
    if kind == "dropped":
        count = record.get("count")
        return _printable(f"{stamp} dropped {count if type(count) is int else _brief(count)} records")

    def plain(key: str) -> str:
        value = record.get(key, "")
        return value if isinstance(value, str) else str(value) if type(value) is int else _brief(value)

    return _printable(
        f"{stamp} {plain('run')} #{plain('seq')} {kind_text} {_tag(record)} [{plain('index')}] "
        f"{_summary(kind, record.get('value'))}"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {k if isinstance(k, str) else _jsonable(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float)):
        return value
    return _brief(value)  # a msgpack extension type, a timestamp: its repr


def _json_line(record: dict) -> str:
    """The record as one line of JSON (ASCII only: every control character is escaped)."""
    try:
        return json.dumps(_jsonable(record))
    except RecursionError:  # nested deeper than Python's recursion limit allows: the top level, inner values as repr
        return json.dumps({k if isinstance(k, str) else _brief(k): _brief(v) for k, v in record.items()})


def _print_records(records: Iterable[dict], as_json: bool, out: TextIO) -> None:
    for record in records:
        line = _json_line(record) if as_json else format_record(record)
        print(line, file=out, flush=True)


def _show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .logging._eventlog import read_events

    with read_events(args.file) as reader:
        _print_records(reader, args.json, out)
    if reader.trailing:
        print(
            _printable(f"asyncloop: note: the last {reader.trailing} bytes of {args.file} are a torn or corrupt record; "
                   f"skipped"),
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

    from .logging._stream_client import subscribe

    async def run() -> None:
        async with subscribe(args.host, args.port, os.environ.get(TOKEN_ENV)) as records:
            async for record in records:
                _print_records([record], args.json, out)

    trio.run(run)
    return 0


def _serve(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        from .service import run_service
    except ImportError as exc:
        print(_printable(f"asyncloop: error: {exc}"), file=err)
        return 1
    import trio

    from .service._app import only_error

    try:
        trio.run(lambda: run_service(args.dir, host=args.host, port=args.port, max_running=args.max_running,
                                     max_queued=args.max_queued, stream_port=args.stream_port, out=out))
    except BaseExceptionGroup as group:  # the service's nurseries wrap the error: report it as itself
        error = only_error(group)
        if isinstance(error, (OSError, KeyboardInterrupt)):
            raise error from None
        raise
    return 0


def _add_serve_command(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="run the training service: an HTTP API and a web page over concurrent fits",
        description="Run the training service in one trio program (hypercorn + quart-trio): submit, list, follow "
                    "and cancel training jobs over HTTP, and watch their loss curves on its web page at "
                    "http://HOST:PORT/. Each job writes its event log and checkpoints under --dir. Ctrl-C (or "
                    "SIGTERM) stops it; running jobs are cancelled within a step. See docs/services.md.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                       "only; the API has no authentication, so expose it only behind a proxy that adds one)")
    serve.add_argument("--port", type=lambda t: 0 if t == "0" else _port(t), default=8000,
                       help="port to listen on (default 8000; 0 picks a free one and prints it)")
    serve.add_argument("--dir", default="runs/service", help="folder for the jobs' event logs and checkpoints "
                       "(default runs/service)")
    serve.add_argument("--max-running", type=at_least(1), default=2, metavar="N",
                       help="jobs that train at the same time (default 2); later jobs wait their turn")
    serve.add_argument("--max-queued", type=at_least(1), default=16, metavar="N",
                       help="jobs that may wait (default 16); more are refused with 429")
    serve.add_argument("--stream-port", type=lambda t: 0 if t == "0" else _port(t), default=None, metavar="P",
                       help=f"also publish every job on asyncloop's live stream on this port (for "
                            f"`asyncloop log subscribe`; token from ${TOKEN_ENV})")
    serve.set_defaults(run=_serve)


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
    add_demo_command(commands)  # its options live with the demo, which examples/demo.py shares
    _add_serve_command(commands)
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
    from .logging._stream_client import StreamError

    try:
        return args.run(args, out, err)
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (EventLogFormatError, StreamError, OSError, ValueError) as exc:
        print(_printable(f"asyncloop: error: {exc}"), file=err)
        return 1
    except KeyboardInterrupt:
        return 130
