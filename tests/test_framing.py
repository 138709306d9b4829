"""Tests for asyncloop.logging._framing: the length-prefixed frames and the reader that enforces their limit."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from asyncloop.logging._framing import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_HELLO_SIZE,
    PROTOCOL_VERSION,
    _frame,
    _FrameReader,
    _OversizedFrame,
    _ProtocolError,
)
from streams import frame


async def reader_over(data: bytes, max_size: int = 100) -> _FrameReader:
    """A reader over a stream that holds ``data``, then ends."""
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(data)
    await send.aclose()
    return _FrameReader(receive, max_size)


class TestFraming:
    def test_protocol_constants(self) -> None:
        """Protocol 1, hellos of at most 4 KiB and frames of at most 16 MiB by default."""
        assert (PROTOCOL_VERSION, MAX_HELLO_SIZE, DEFAULT_MAX_FRAME_SIZE) == (1, 4096, 16 * 1024 * 1024)

    def test_frame_is_a_length_prefix_and_the_payload(self) -> None:
        """A frame is the payload's 4-byte big-endian length followed by the payload."""
        assert _frame(b"abc") == b"\x00\x00\x00\x03abc" == frame(b"abc")
        assert _frame(b"") == b"\x00\x00\x00\x00"

    async def test_reads_frames_in_order_then_none(self) -> None:
        """The reader returns each payload in order, including empty ones, and None at a clean end of stream."""
        reader = await reader_over(_frame(b"one") + _frame(b"") + _frame(b"x" * 100))
        assert [await reader.read() for _ in range(4)] == [b"one", b"", b"x" * 100, None]
        assert reader.buffer == bytearray()

    async def test_oversized_frame(self) -> None:
        """A length prefix above the limit is refused before its payload is read."""
        reader = await reader_over(_frame(b"x" * 101))
        with pytest.raises(_OversizedFrame, match=r"^a frame of 101 bytes, more than the limit of 100 bytes$") as info:
            await reader.read()
        assert (info.value.size, info.value.limit) == (101, 100)
        assert isinstance(info.value, _ProtocolError)

    @pytest.mark.parametrize("data", [b"\x00\x00", _frame(b"abc")[:-1]])
    async def test_end_of_stream_mid_frame(self, data: bytes) -> None:
        """A stream that ends inside a length prefix or a payload is a protocol error."""
        reader = await reader_over(data)
        with pytest.raises(_ProtocolError, match=r"^the connection closed in the middle of a frame$"):
            await reader.read()
