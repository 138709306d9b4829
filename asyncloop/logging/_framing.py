"""The stream's wire format: length-prefixed msgpack frames, the reader that enforces their size limit, and the
protocol errors it raises (shared by :mod:`asyncloop.logging._stream_server` and
:mod:`asyncloop.logging._stream_client`).

Wire protocol, version 1. Every frame is a 4-byte big-endian length ``N`` followed by ``N`` bytes of msgpack:

1. the subscriber sends ``{"kind": "hello", "protocol": 1, "token": str | None}`` (at most 4 KiB);
2. the server answers ``{"kind": "welcome", "protocol": 1}``, or ``{"kind": "error", "message": str}`` and
   closes the connection;
3. the server sends records (see :mod:`asyncloop.logging._records`) until it shuts down; the subscriber sends
   nothing more.
"""

from __future__ import annotations

import trio


PROTOCOL_VERSION = 1
#: Default largest frame payload, both ways (16 MiB).
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
#: The largest hello a server accepts.
MAX_HELLO_SIZE = 4096
_CHUNK = 65536


class _ProtocolError(Exception):
    """Internal: a peer broke the framing (an oversized frame, EOF mid-frame)."""


class _OversizedFrame(_ProtocolError):
    """Internal: a length prefix above the reader's limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a frame of {size} bytes, more than the limit of {limit} bytes")
        self.size, self.limit = size, limit


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


class _FrameReader:
    """Reads length-prefixed frames from a trio stream, refusing frames above ``max_size``."""

    def __init__(self, stream: trio.abc.ReceiveStream, max_size: int) -> None:
        self.stream = stream
        self.max_size = max_size
        self.buffer = bytearray()

    async def _fill(self, n: int) -> bool:
        """Buffer at least ``n`` bytes; False on EOF before any byte of this frame arrived."""
        while len(self.buffer) < n:
            data = await self.stream.receive_some(_CHUNK)
            if not data:
                if self.buffer:
                    raise _ProtocolError("the connection closed in the middle of a frame")
                return False
            self.buffer += data
        return True

    async def read(self) -> bytes | None:
        """The next frame's payload, or None at a clean end of stream."""
        if not await self._fill(4):
            return None
        size = int.from_bytes(self.buffer[:4], "big")
        if size > self.max_size:
            raise _OversizedFrame(size, self.max_size)
        await self._fill(4 + size)
        payload = bytes(self.buffer[4 : 4 + size])
        del self.buffer[: 4 + size]
        return payload

