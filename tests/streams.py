"""Helpers shared by the stream tests: the loopback host, a frame and hello encoder of their own, and a subscriber
that collects records (importable from test modules: tests/ is on sys.path)."""

from __future__ import annotations

from typing import Any

from asyncloop import subscribe
from asyncloop.logging._framing import PROTOCOL_VERSION
from asyncloop.logging._records import pack

HOST = "127.0.0.1"


def frame(payload: bytes) -> bytes:
    """``payload`` as one frame: its 4-byte big-endian length, then the bytes."""
    return len(payload).to_bytes(4, "big") + payload


def hello(token: str | None = None, protocol: int = PROTOCOL_VERSION) -> bytes:
    """A subscriber's hello frame."""
    return frame(pack({"kind": "hello", "protocol": protocol, "token": token}))


async def collect(port: int, into: list[dict], token: str | None = None, **kw: Any) -> None:
    """Subscribe to the server on ``port`` and append every record to ``into`` until the stream ends."""
    async with subscribe(HOST, port, token, **kw) as records:
        async for record in records:
            into.append(record)
