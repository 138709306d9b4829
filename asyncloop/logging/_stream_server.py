"""The live stream's server: publish log records over TCP to any number of subscribers, without ever stalling
training (the frames are those of :mod:`asyncloop.logging._framing`).

Shape::

    async with asyncloop.StreamServer(port=8765, token="s3cret") as server:   # in a long-running trio service
        learner = Learner(..., callbacks=[LogMetrics(StreamBackend(server))])
        await asyncloop.fit(learner, 10)                                       # as many fits as you like

    async for record in asyncloop.subscribe("127.0.0.1", 8765, token="s3cret"):  # in another process
        print(record["name"], record["index"], record["value"])

Guarantees:

* publishing never waits: :meth:`StreamServer.publish` encodes the record in the caller's thread, appends it
  to a queue and wakes the server's trio loop (coalesced, through ``TrioToken.run_sync_soon``);
* each subscriber has a bounded buffer (``buffer_size`` records and ``buffer_bytes`` bytes). When it is full the
  **oldest** records are dropped, so a slow subscriber sees fresh data; the drops are counted and announced in
  its stream as ``{"kind": "dropped", "t": float, "count": n}`` right where the gap is;
* a client that sends garbage, an oversized or malformed hello, a wrong token, or nothing within
  ``handshake_timeout`` seconds gets an error frame and is disconnected, and so does one whose hello arrives
  together with more data; a subscriber that sends anything after it was welcomed is disconnected without an
  error frame (records may be on their way to it). No other connection notices;
* records larger than ``max_frame_size`` are not sent (counted as dropped for every subscriber);
* the server holds at most ``max_connections`` connections (64), of which at most ``max_pending_handshakes`` (16)
  have not finished their handshake; a connection beyond either bound gets an error frame (``"too many
  connections ..."``) and is closed at once, so idle clients cannot exhaust the process's file descriptors.

The stream is live: a subscriber receives the records published after it connected. To see a run from the
start, also write an event log (:class:`asyncloop.logging.EventLogBackend`).
"""

from __future__ import annotations

import errno
import hmac
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from ._framing import (_CHUNK, DEFAULT_MAX_FRAME_SIZE, MAX_HELLO_SIZE, PROTOCOL_VERSION, _frame, _FrameReader,
                       _OversizedFrame, _ProtocolError)
from ._records import pack, unpack


#: accept() errors that mean "out of descriptors or memory for now": wait a little and accept again.
_ACCEPT_CAPACITY_ERRNOS = {getattr(errno, name) for name in ("EMFILE", "ENFILE", "ENOMEM", "ENOBUFS")
                           if hasattr(errno, name)}
_ACCEPT_RETRY_SECONDS = 0.1


@dataclass(frozen=True)
class StreamStatistics:
    """A snapshot of a :class:`StreamServer`'s counters.

    ``subscribers`` connected now; ``published`` records handed to the server; ``dropped`` records not sent to
    some subscriber (summed over subscribers); ``refused`` connections closed for a bad handshake, bad input or
    a silent client; ``errors`` unexpected errors in connection handlers (each closed only its connection);
    ``rejected`` connections closed as soon as they were accepted because the server held ``max_connections``
    connections or ``max_pending_handshakes`` unfinished handshakes; ``connections`` open now (subscribers and
    clients still in their handshake).
    """

    subscribers: int
    published: int
    dropped: int
    refused: int
    errors: int
    rejected: int = 0
    connections: int = 0


def _dropped_notice(count: int) -> bytes:
    return _frame(pack({"kind": "dropped", "t": time.time(), "count": count}))


class _Subscriber:
    """A subscriber's buffer: frames to send, and ints marking where that many records were dropped."""

    __slots__ = ("frames", "nbytes", "dropped", "lot", "peer")

    def __init__(self, peer: str) -> None:
        self.frames: deque[bytes | int] = deque()
        self.nbytes = 0
        self.dropped = 0
        self.lot = trio.lowlevel.ParkingLot()
        self.peer = peer


_UNOPENED, _OPEN, _CLOSED = "unopened", "open", "closed"
_OVERSIZED = b"<oversized>"  # a pending entry standing for a record too large to send (compared by identity)


class StreamServer:
    """A TCP server that fans log records out to subscribers; use it as ``async with StreamServer() as server``.

    Args:
        host: the address to listen on; the default is loopback only. Listen on other addresses only behind a
            firewall and with a ``token``: the stream is not encrypted.
        port: the port; 0 (default) picks a free one, then read :attr:`port`.
        token: if set, subscribers must send this shared secret in their hello.
        buffer_size: per subscriber, the most records waiting to be sent (default 1024).
        buffer_bytes: per subscriber, the most bytes waiting to be sent (default 16 MiB).
        max_frame_size: the largest record payload sent (default 16 MiB).
        handshake_timeout: seconds a client has to send its hello (default 5).
        close_timeout: on a normal exit, seconds to let subscribers receive what is buffered for them.
        max_connections: the most connections held at once, subscribers and handshakes together (default 64).
        max_pending_handshakes: the most connections held that have not finished their handshake (default 16).

    Connections beyond either bound are accepted, sent an error frame (``"too many connections ..."``) and closed
    at once, so neither the listen backlog nor the process's file descriptors fill up: a client opening
    hundreds of connections and never saying hello cannot make the training process run out of descriptors
    (and fail to open its checkpoint or log files). The server uses at most ``max_connections`` + 2 descriptors
    per listening address (the listener, and one connection being turned away); keep ``max_connections`` well
    below the process's limit (``ulimit -n``, often 1024). The pitfall: without a ``token``, anyone who can
    connect can take every slot by subscribing, which keeps other subscribers out (training is unaffected).

    :meth:`publish` (and :class:`StreamBackend`) may be called from any thread, including a fit's worker and
    the detached loggers' threads; it never blocks. One server can serve many fits, one after another or at
    the same time. On leaving the ``async with`` block normally, buffered records are sent (up to
    ``close_timeout``) and every connection is closed, which ends the subscribers' iteration.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        buffer_size: int = 1024,
        buffer_bytes: int = 16 * 1024 * 1024,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        handshake_timeout: float = 5.0,
        close_timeout: float = 5.0,
        max_connections: int = 64,
        max_pending_handshakes: int = 16,
    ) -> None:
        if not isinstance(host, str):
            raise TypeError(f"host must be a str such as '127.0.0.1', got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535 (0 picks a free port), got {port!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise TypeError(f"token must be a non-empty str or None, got {token!r}")
        for name, value in (("buffer_size", buffer_size), ("buffer_bytes", buffer_bytes),
                            ("max_frame_size", max_frame_size), ("max_connections", max_connections),
                            ("max_pending_handshakes", max_pending_handshakes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name, seconds in (("handshake_timeout", handshake_timeout), ("close_timeout", close_timeout)):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {seconds!r}")
        self.host = host
        self._port = port
        self._token = token.encode() if token is not None else None
        self.buffer_size = buffer_size
        self.buffer_bytes = buffer_bytes
        self.max_frame_size = max_frame_size
        self.handshake_timeout = float(handshake_timeout)
        self.close_timeout = float(close_timeout)
        self.max_connections = max_connections
        self.max_pending_handshakes = max_pending_handshakes
        self._connections = 0  # open connections, handshaking or subscribed
        self._handshaking = 0  # of which still in their handshake
        self._rejected = 0
        self._state = _UNOPENED
        self._listeners: list[trio.SocketListener] = []
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._pending: deque[bytes] = deque()
        self._pending_limit = max(buffer_size, 1024) * 4
        self._overflow = 0
        self._pending_lock = threading.Lock()
        self._scheduled = False
        self._subscribers: set[_Subscriber] = set()
        self._changed = trio.lowlevel.ParkingLot()
        self._pumps = 0
        self._closing = False
        self._published = self._dropped = self._refused = self._errors = 0
        self._cm: Any = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port the server listens on (the first listener's, if the host resolved to several)."""
        if not self._listeners:
            raise RuntimeError("the StreamServer is not listening; read .port inside 'async with StreamServer()'")
        return self._listeners[0].socket.getsockname()[1]

    async def __aenter__(self) -> StreamServer:
        if self._state != _UNOPENED:
            raise RuntimeError("Cannot reopen a StreamServer once it has been used; create a new one")
        self._cm = self._serve()
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._cm.__aexit__(*exc_info)

    @asynccontextmanager
    async def _serve(self) -> AsyncIterator[StreamServer]:
        self._listeners = await trio.open_tcp_listeners(self._port, host=self.host)
        self._trio_token = trio.lowlevel.current_trio_token()
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                for listener in self._listeners:
                    nursery.start_soon(self._accept, listener, nursery)
                self._state = _OPEN
                try:
                    yield self
                except BaseException as exc:
                    body_error = exc
                    raise
                else:
                    await self._drain()
                finally:
                    self._state = _CLOSED
                    self._closing = True
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if body_error is not None and _only(group, body_error):
                raise body_error from None
            raise

    async def _drain(self) -> None:
        self._closing = True
        self._deliver()
        for sub in list(self._subscribers):
            sub.lot.unpark_all()
        with trio.move_on_after(self.close_timeout):
            while self._pumps:
                await self._changed.park()

    # -- publishing (any thread) -----------------------------------------------------------------------------
    def publish(self, record: Mapping[str, Any]) -> None:
        """Queue ``record`` (a msgpack-encodable mapping) for every subscriber. Thread-safe; never blocks.

        Raises ``RuntimeError`` before the server is started; after it closed, records are discarded.
        """
        state = self._state
        if state == _UNOPENED:
            raise RuntimeError("the StreamServer is not running; publish inside 'async with StreamServer() as server'")
        if state == _CLOSED:
            return
        payload = pack(record)
        framed = _frame(payload) if len(payload) <= self.max_frame_size else _OVERSIZED
        with self._pending_lock:
            self._pending.append(framed)
            if len(self._pending) > self._pending_limit:  # the server's loop is not keeping up: shed the oldest
                self._pending.popleft()
                self._overflow += 1
        if not self._scheduled:
            self._scheduled = True
            try:
                self._trio_token.run_sync_soon(self._deliver)  # type: ignore[union-attr]
            except trio.RunFinishedError:
                self._scheduled = False

    def _deliver(self) -> None:
        """Move queued frames into the subscribers' buffers (server loop; never raises)."""
        self._scheduled = False
        try:
            with self._pending_lock:
                frames = list(self._pending)
                self._pending.clear()
                lost, self._overflow = self._overflow, 0
            subscribers = list(self._subscribers)
            self._published += lost + len(frames)
            if lost:  # shed before they reached the buffers: older than every frame in ``frames``
                for sub in subscribers:
                    self._gap(sub, lost)
            for frame in frames:
                for sub in subscribers:
                    if frame is _OVERSIZED:
                        self._gap(sub, 1)
                    else:
                        self._offer(sub, frame)
            for sub in subscribers:
                sub.lot.unpark_all()
        except BaseException:  # pragma: no cover - a run_sync_soon callback must never raise
            self._errors += 1

    def _offer(self, sub: _Subscriber, frame: bytes) -> None:
        sub.frames.append(frame)
        sub.nbytes += len(frame)
        self._trim(sub)

    def _gap(self, sub: _Subscriber, count: int) -> None:
        """Mark ``count`` records dropped at the tail of ``sub``'s buffer (announced when the pump gets there)."""
        frames = sub.frames
        if frames and isinstance(frames[-1], int):
            frames[-1] += count
        else:
            frames.append(count)
        self._dropped += count
        self._trim(sub)

    def _trim(self, sub: _Subscriber) -> None:
        """Drop the oldest entries while the buffer is over its bounds (keeping at least the newest)."""
        frames = sub.frames
        while len(frames) > self.buffer_size or (sub.nbytes > self.buffer_bytes and len(frames) > 1):
            item = frames.popleft()
            if isinstance(item, int):
                sub.dropped += item  # already counted
            else:
                sub.nbytes -= len(item)
                sub.dropped += 1
                self._dropped += 1

    # -- connections (server loop) ---------------------------------------------------------------------------
    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept connections forever; hand each to :meth:`_handle`, or turn it away when a bound is reached."""
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    await trio.sleep(_ACCEPT_RETRY_SECONDS)  # out of descriptors (not by us: we hold our bound)
                    continue
                if self._connections >= self.max_connections:
                    reason = f"too many connections (the server takes at most {self.max_connections}); try again later"
                elif self._handshaking >= self.max_pending_handshakes:
                    reason = (f"too many connections waiting for their handshake (at most "
                              f"{self.max_pending_handshakes}); try again later")
                else:
                    self._connections += 1
                    self._handshaking += 1
                    nursery.start_soon(self._handle, stream)
                    continue
                self._rejected += 1
                await self._turn_away(stream, reason)

    async def _turn_away(self, stream: trio.SocketStream, reason: str) -> None:
        """Send ``reason`` as an error frame if it goes out at once (a fresh socket's buffer is empty), and close."""
        try:
            with trio.move_on_after(0.1):
                await stream.send_all(_frame(pack({"kind": "error", "message": reason})))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        """Serve one accepted connection (counted in ``_connections`` and ``_handshaking`` by :meth:`_accept`)."""
        sub: _Subscriber | None = None
        handshaking = True
        try:
            reader = _FrameReader(stream, MAX_HELLO_SIZE)
            refusal: str | None = "no hello within the handshake timeout"
            with trio.move_on_after(self.handshake_timeout):
                refusal = await self._handshake(reader)
            handshaking = False
            self._handshaking -= 1
            if refusal is not None:
                self._refused += 1
                await self._refuse(stream, refusal)
                return
            sub = _Subscriber(_peer(stream))
            await stream.send_all(_frame(pack({"kind": "welcome", "protocol": PROTOCOL_VERSION})))
            self._subscribers.add(sub)
            self._changed.unpark_all()
            await self._serve_subscriber(stream, sub)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # one connection's trouble never reaches the server
            self._errors += 1
        finally:
            if sub is not None:
                self._subscribers.discard(sub)
            try:
                await trio.aclose_forcefully(stream)
            finally:  # counted until its descriptor is closed
                if handshaking:
                    self._handshaking -= 1
                self._connections -= 1
                self._changed.unpark_all()

    async def _handshake(self, reader: _FrameReader) -> str | None:
        """None if the hello is acceptable, else the reason for refusing it."""
        try:
            payload = await reader.read()
        except _OversizedFrame as exc:
            return f"the hello is too large ({exc.size} bytes, at most {exc.limit})"
        except _ProtocolError:
            return "the connection closed in the middle of the hello"
        if payload is None:
            return "the connection closed before the hello"
        try:
            hello = unpack(payload)
        except ValueError:
            return "the hello is not msgpack"
        if not isinstance(hello, dict) or hello.get("kind") != "hello":
            return "the first frame must be a hello"
        if hello.get("protocol") != PROTOCOL_VERSION:
            return f"unsupported protocol {hello.get('protocol')!r}; this server speaks {PROTOCOL_VERSION}"
        if self._token is not None:
            token = hello.get("token")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self._token):
                return "bad token"
        if reader.buffer:
            return "unexpected data after the hello"
        return None

    async def _refuse(self, stream: trio.SocketStream, reason: str) -> None:
        with trio.move_on_after(min(1.0, self.handshake_timeout) or 0.1):
            await stream.send_all(_frame(pack({"kind": "error", "message": reason})))

    async def _serve_subscriber(self, stream: trio.SocketStream, sub: _Subscriber) -> None:
        self._pumps += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_input, stream, nursery.cancel_scope)
                await self._pump(stream, sub)
                nursery.cancel_scope.cancel()
        finally:
            self._pumps -= 1
            self._changed.unpark_all()

    async def _watch_input(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        """A subscriber sends nothing after its hello: any data (or EOF) ends its connection."""
        try:
            data = await stream.receive_some(_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if data:
            self._refused += 1
        scope.cancel()

    async def _pump(self, stream: trio.SocketStream, sub: _Subscriber) -> None:
        while True:
            batch: list[bytes] = []
            size = 0
            gap, sub.dropped = sub.dropped, 0  # dropped from the head of the buffer: before everything in it
            frames = sub.frames
            while frames and size < _CHUNK:
                item = frames.popleft()
                if isinstance(item, int):
                    gap += item
                    continue
                if gap:
                    batch.append(_dropped_notice(gap))
                    gap = 0
                sub.nbytes -= len(item)
                size += len(item)
                batch.append(item)
            if gap:
                batch.append(_dropped_notice(gap))
            if batch:
                try:
                    await stream.send_all(b"".join(batch))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the subscriber went away
            elif self._closing:
                return
            else:
                await sub.lot.park()

    async def wait_for_subscribers(self, n: int = 1) -> None:
        """Wait until at least ``n`` subscribers are connected (e.g. before starting a fit they must see whole)."""
        while len(self._subscribers) < n:
            await self._changed.park()

    def statistics(self) -> StreamStatistics:
        """The server's counters now."""
        return StreamStatistics(len(self._subscribers), self._published, self._dropped, self._refused, self._errors,
                                self._rejected, self._connections)

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self._listeners and self._state == _OPEN else self.host
        return f"StreamServer({where}, {self._state})"


def _only(group: BaseExceptionGroup, exc: BaseException) -> bool:
    leaves = []

    def walk(g: BaseExceptionGroup) -> None:
        for e in g.exceptions:
            walk(e) if isinstance(e, BaseExceptionGroup) else leaves.append(e)

    walk(group)
    return bool(leaves) and all(e is exc for e in leaves)


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except (OSError, ValueError):  # pragma: no cover
        return "?"
