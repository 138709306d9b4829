"""Log records: the dicts the event log stores and the live stream sends (format version 1).

Every record is a msgpack map with these keys (more may be added within a version; readers ignore them):

========  =============  ===================================================================================
key       type           meaning
========  =============  ===================================================================================
``kind``  str            ``"value"``, ``"text"``, ``"image"``, ``"histogram"``, ``"audio"``, ``"event"``,
                         ``"hparams"`` (a loggable's ``kind``), or ``"open"`` / ``"close"`` (a writer opened or closed
                         the log) / ``"rewind"`` (a resumed fit starts over at a training step)
``t``     float          wall-clock time the record was made (Unix seconds)
``run``   str            the backend's run name
``seq``   int            0, 1, 2, ... per run and file in an event log (every session continues it), per run
                         and backend on the live stream: a gap means lost records
``name``  str            the loggable's name (``"Loss"``); ``"asyncloop"`` for open/close
``group`` list of str    e.g. ``["Step", "TrainingPhase", "Metrics"]``
``index`` int            the step or epoch the value belongs to
``value`` see below      the loggable's ``encode()``
========  =============  ===================================================================================

Values: a number (``value``), a str (``text``), ``{"dtype": "uint8", "shape": [H, W, C], "data": bytes}``
(``image``, row-major), ``{"min", "max", "num", "nonfinite", "sum", "sum_squares", "edges", "counts"}``
(``histogram``), ``{"dtype": "float32", "shape": [n], "data": bytes, "sample_rate"}`` (``audio``,
little-endian), ``{"phase", "epochs", "steps", "steps_epoch"}`` (``event``, with the event's class name as
``name``), ``{"hparams": {str: number or str}, "metrics": {str: float} or None}`` (``hparams``; ``metrics`` is None
at a run's start), ``{"format", "asyncloop", "pid", "host"}`` (``open``), ``{"records"}`` (``close``) and ``{"step"}`` (``rewind``).
:func:`decode_array` turns the array dicts back into NumPy arrays.

The live stream adds one control record, ``{"kind": "dropped", "t": float, "count": int}``: ``count`` records
were dropped for this subscriber just before it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from .._version import __version__
from ..loggables import Loggable


#: Version of the record schema and of the event-log file format.
FORMAT_VERSION = 1

_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("kind", str),
    ("t", (int, float)),
    ("run", str),
    ("seq", int),
    ("name", str),
    ("group", list),
    ("index", int),
)


def make_record(loggable: Loggable, name: str, index: int, group: tuple[str, ...], *, run: str, seq: int) -> dict:
    """The record for one ``log_to`` call."""
    return {
        "kind": loggable.kind,
        "t": time.time(),
        "run": run,
        "seq": seq,
        "name": name,
        "group": list(group),
        "index": index,
        "value": loggable.encode(),
    }


def control_record(kind: str, value: Any, *, run: str, seq: int) -> dict:
    """An ``open``, ``close`` or ``rewind`` record."""
    return {"kind": kind, "t": time.time(), "run": run, "seq": seq, "name": "asyncloop", "group": [], "index": 0,
            "value": value}


def open_value() -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "asyncloop": __version__, "pid": os.getpid(), "host": socket.gethostname()}


def pack(record: Mapping[str, Any]) -> bytes:
    """Encode a record as msgpack (bytes stay ``bin``, strings ``str``)."""
    return msgpack.packb(record, use_bin_type=True)


def unpack(payload: bytes) -> Any:
    """Decode msgpack; raises ``ValueError`` for anything that is not exactly one msgpack object."""
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types (ExtraData, FormatError, StackError, ...)
        raise ValueError(f"not a msgpack object: {exc}") from exc


def is_record(obj: Any) -> bool:
    """True if ``obj`` has the keys and types every record has (``kind``, ``t``, ``run``, ``seq``, ...)."""
    if not isinstance(obj, dict) or "value" not in obj:
        return False
    for key, types in _FIELDS:
        value = obj.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            return False
    return all(isinstance(g, str) for g in obj["group"])


_DTYPES = {"uint8": "|u1", "float32": "<f4", "float64": "<f8"}


def decode_array(value: Mapping[str, Any]) -> np.ndarray:
    """The NumPy array of an ``image`` or ``audio`` record's value (``{"dtype", "shape", "data"}``)."""
    try:
        dtype = np.dtype(_DTYPES[value["dtype"]])
        shape = tuple(int(n) for n in value["shape"])
        return np.frombuffer(value["data"], dtype=dtype).reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an encoded array: {exc}") from exc


def printable(text: str) -> str:
    """``text`` with every character a terminal could act on written as a Python escape (``\\x1b``, ``\\n``).

    Escapes what ``repr`` escapes in a string (C0 and C1 controls, DEL, line and paragraph separators, format
    characters such as bidi overrides, unassigned code points) but adds no quotes and leaves backslashes alone,
    so an already escaped ``repr`` passes through unchanged. Use it on any string from a log file or a stream
    server before printing it: raw, ``"\\x1b]0;title\\x07"`` retitles a terminal and ``"\\x1b]52;..."`` writes
    its clipboard.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
