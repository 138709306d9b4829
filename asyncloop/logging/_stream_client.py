"""The live stream's client: :func:`subscribe` to a :class:`StreamServer` and iterate over its records.

The subscriber's side of the protocol in :mod:`asyncloop.logging._framing`: send a hello, expect a welcome,
then read records until the server closes the connection. A refused subscription, a broken or oversized frame
or a timeout is a :class:`StreamError`; a connection the host refuses is the socket's own ``OSError``.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from .._exceptions import StreamError
from ._framing import DEFAULT_MAX_FRAME_SIZE, PROTOCOL_VERSION, _frame, _FrameReader, _OversizedFrame, _ProtocolError
from ._records import pack, printable, unpack


class Subscription:
    """An async iterator over the records of a stream server; made by :func:`subscribe`.

    It connects on the first ``__anext__`` (or on ``async with``) and ends when the server closes the
    connection. Use ``async with`` to close the connection promptly when you stop early.
    """

    def __init__(self, host: str, port: int, token: str | None, *, max_frame_size: int, timeout: float) -> None:
        self.host, self.port, self._token = host, port, token
        self.max_frame_size = max_frame_size
        self.timeout = timeout
        self._stream: trio.SocketStream | None = None
        self._reader: _FrameReader | None = None
        self._closed = False

    async def _connect(self) -> None:
        try:
            with trio.fail_after(self.timeout):
                stream = await trio.open_tcp_stream(self.host, self.port)
        except trio.TooSlowError:
            raise StreamError(f"could not connect to {self.host}:{self.port} within {self.timeout} seconds") from None
        self._stream = stream
        self._reader = _FrameReader(stream, self.max_frame_size)
        hello = {"kind": "hello", "protocol": PROTOCOL_VERSION, "token": self._token}
        try:
            with trio.fail_after(self.timeout):
                await stream.send_all(_frame(pack(hello)))
                reply = await self._read()
        except trio.TooSlowError:
            await self.aclose()
            raise StreamError(f"the stream server did not answer the hello within {self.timeout} seconds") from None
        except BaseException:
            await self.aclose()
            raise
        if reply is None:
            await self.aclose()
            raise StreamError("the stream server closed the connection during the handshake")
        if reply.get("kind") == "error":
            await self.aclose()
            message = reply.get("message")
            message = printable(message) if isinstance(message, str) else repr(message)
            raise StreamError(f"the stream server refused the subscription: {message}")
        if reply.get("kind") != "welcome":
            await self.aclose()
            raise StreamError(f"the stream server answered the hello with {reply.get('kind')!r}, not 'welcome'")

    async def _read(self) -> dict | None:
        assert self._reader is not None
        try:
            payload = await self._reader.read()
        except _OversizedFrame as exc:
            raise StreamError(f"the stream server sent {exc}; subscribe with a larger max_frame_size") from None
        except _ProtocolError as exc:
            raise StreamError(f"lost the connection to the stream server: {exc}") from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise StreamError(f"lost the connection to the stream server: {exc}") from exc
        if payload is None:
            return None
        try:
            record = unpack(payload)
        except ValueError as exc:
            raise StreamError("the stream server sent a frame that is not msgpack") from exc
        if not isinstance(record, dict):
            raise StreamError("the stream server sent a frame that is not a record")
        return record

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict:
        if self._stream is None:
            if self._closed:
                raise StopAsyncIteration
            await self._connect()
        try:
            record = await self._read()
        except BaseException:
            await self.aclose()
            raise
        if record is None:
            await self.aclose()
            raise StopAsyncIteration
        return record

    async def __aenter__(self) -> Subscription:
        if self._stream is None and not self._closed:
            await self._connect()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; iteration then ends."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)


def subscribe(
    host: str,
    port: int,
    token: str | None = None,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    timeout: float = 10.0,
) -> Subscription:
    """Subscribe to a :class:`StreamServer`: ``async for record in asyncloop.subscribe("127.0.0.1", port): ...``.

    Yields the records published after the subscription was accepted, including ``"dropped"`` notices, and
    ends when the server shuts down. Raises :class:`StreamError` if the server refuses the subscription (e.g.
    a wrong ``token``), sends a frame larger than ``max_frame_size`` or breaks off mid-frame; ``timeout``
    bounds connecting and the handshake. Use ``async with subscribe(...) as records:`` to stop early cleanly.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an int in 1..65535, got {port!r}")
    if token is not None and not isinstance(token, str):
        raise TypeError(f"token must be a str or None, got {token!r}")
    if isinstance(max_frame_size, bool) or not isinstance(max_frame_size, int) or max_frame_size < 1:
        raise ValueError(f"max_frame_size must be an int >= 1, got {max_frame_size!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0 and not math.isinf(timeout)):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    return Subscription(host, port, token, max_frame_size=max_frame_size, timeout=float(timeout))
