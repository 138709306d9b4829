"""Tests for asyncloop.logging._stream_server: the server, its subscribers' buffers, connection bounds and hostile
clients (loopback only)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import trio

import asyncloop
from asyncloop import StreamServer, subscribe
from asyncloop.logging import StreamError
from asyncloop.logging._framing import MAX_HELLO_SIZE
from asyncloop.logging._records import pack, unpack
from streams import HOST, collect, frame, hello


def decode_frames(data: bytes) -> list[dict]:
    out = []
    while len(data) >= 4 and len(data) >= 4 + (size := int.from_bytes(data[:4], "big")):
        out.append(unpack(data[4 : 4 + size]))
        data = data[4 + size :]
    return out


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    received = b""
    try:
        while chunk := await stream.receive_some(65536):
            received += chunk
    except trio.BrokenResourceError:  # reset by the server: what arrived before still counts
        pass
    return received



class TestStreamServer:
    async def test_listens_on_a_free_loopback_port(self) -> None:
        """By default the server listens on 127.0.0.1 and a free port, reported by .port."""
        async with StreamServer() as server:
            assert server.host == HOST
            assert 0 < server.port < 65536
            assert repr(server) == f"StreamServer(127.0.0.1:{server.port}, open)"
        assert repr(server) == "StreamServer(127.0.0.1, closed)"

    async def test_lifecycle_errors(self) -> None:
        """Publishing or reading the port before start, and reopening, are refused with the fix."""
        server = StreamServer()
        with pytest.raises(
            RuntimeError,
            match=r"^the StreamServer is not running; publish inside 'async with StreamServer\(\) as server'$",
        ):
            server.publish({"kind": "x"})
        with pytest.raises(
            RuntimeError,
            match=r"^the StreamServer is not listening; read \.port inside 'async with StreamServer\(\)'$",
        ):
            server.port  # noqa: B018
        async with server:
            pass
        server.publish({"kind": "x"})  # after close: discarded
        with pytest.raises(
            RuntimeError,
            match=r"^Cannot reopen a StreamServer once it has been used; create a new one$",
        ):
            async with server:
                pass

    @pytest.mark.parametrize(("kwargs", "error", "message"), [
        ({"port": -1}, ValueError, r"^port must be an int in 0\.\.65535 \(0 picks a free port\), got -1$"),
        ({"host": 1}, TypeError, r"^host must be a str such as '127\.0\.0\.1', got 1$"),
        ({"token": ""}, TypeError, r"^token must be a non-empty str or None, got ''$"),
        ({"buffer_size": 0}, ValueError, r"^buffer_size must be an int >= 1, got 0$"),
        ({"max_frame_size": 1.5}, ValueError, r"^max_frame_size must be an int >= 1, got 1\.5$"),
        ({"handshake_timeout": -1}, ValueError, r"^handshake_timeout must be a number of seconds >= 0, got -1$"),
    ])
    def test_bad_arguments(self, kwargs: dict[str, Any], error: type, message: str) -> None:
        """Bad options are refused at construction."""
        with pytest.raises(error, match=message):
            StreamServer(**kwargs)

    async def test_fans_out_in_order_and_ends_on_close(self) -> None:
        """Every subscriber gets every record published from a thread, in order; closing ends their iteration."""
        got: dict[str, list[dict]] = {"a": [], "b": []}
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                async with StreamServer() as server:
                    for key in got:
                        nursery.start_soon(collect, server.port, got[key])
                    await server.wait_for_subscribers(2)
                    records = [{"kind": "value", "i": i} for i in range(500)]
                    await trio.to_thread.run_sync(lambda: [server.publish(r) for r in records])
        assert [r["i"] for r in got["a"]] == [r["i"] for r in got["b"]] == list(range(500))
        assert server.statistics() == asyncloop.logging.StreamStatistics(0, 500, 0, 0, 0)

    async def test_token(self) -> None:
        """With a token, only subscribers that send it are accepted."""
        got: list[dict] = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                async with StreamServer(token="s3cret") as server:
                    for wrong in ("guess", None):
                        with pytest.raises(
                            StreamError,
                            match=r"^the stream server refused the subscription: bad token$",
                        ):
                            await collect(server.port, got, wrong)
                    nursery.start_soon(collect, server.port, got, "s3cret")
                    await server.wait_for_subscribers(1)
                    server.publish({"kind": "value", "i": 1})
        assert got == [{"kind": "value", "i": 1}]
        assert server.statistics().refused == 2

    async def test_slow_subscriber_gets_gaps_announced(self) -> None:
        """A subscriber that does not read loses the oldest records; each gap is announced where it is."""
        blob = "x" * 65536
        received: list[dict] = []
        with trio.fail_after(30):
            async with StreamServer(buffer_size=16) as server:
                async with subscribe(HOST, server.port) as records:
                    await server.wait_for_subscribers(1)
                    t0 = time.perf_counter()
                    for i in range(400):  # 26 MB: more than the socket buffers and the 16-record buffer hold
                        server.publish({"kind": "text", "i": i, "value": blob})
                    publish_seconds = time.perf_counter() - t0
                    async for record in records:
                        received.append(record)
                        if record.get("i") == 399:
                            break
        assert publish_seconds < 5  # publishing never waited for the subscriber
        notices = [r for r in received if r["kind"] == "dropped"]
        data = [r["i"] for r in received if r["kind"] == "text"]
        assert notices and data[-1] == 399
        assert len(data) + sum(n["count"] for n in notices) == 400
        last = -1
        for record in received:  # the count of each notice is exactly the gap before the next record
            if record["kind"] == "dropped":
                last += record["count"]
            else:
                assert record["i"] == last + 1
                last = record["i"]
        assert server.statistics().dropped == sum(n["count"] for n in notices)

    async def test_oversized_records_are_dropped_and_announced(self) -> None:
        """A record larger than max_frame_size is not sent; subscribers see a gap of one."""
        got: list[dict] = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                async with StreamServer(max_frame_size=200) as server:
                    nursery.start_soon(collect, server.port, got)
                    await server.wait_for_subscribers(1)
                    server.publish({"kind": "value", "i": 0})
                    server.publish({"kind": "text", "value": "x" * 1000})
                    server.publish({"kind": "value", "i": 2})
        assert [(r["kind"], r.get("i"), r.get("count")) for r in got] == [
            ("value", 0, None), ("dropped", None, 1), ("value", 2, None)]

    async def test_hostile_clients_lose_only_their_connection(self) -> None:
        """Garbage, oversized or malformed hellos, wrong tokens, chatter and silence close only that connection."""
        good: list[dict] = []
        replies: dict[str, list[dict]] = {}
        durations: list[float] = []
        hostile = {
            "http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "oversized": b"\xff\xff\xff\xff" + b"x" * 100,
            "too long": frame(b"\x00" * (MAX_HELLO_SIZE + 1)),
            "not msgpack": frame(b"\xc1\xc1"),
            "not a hello": frame(pack({"kind": "subscribe"})),
            "list": frame(pack([1, 2, 3])),
            "wrong token": hello("guess"),
            "no token": hello(None),
            "old protocol": hello("s3cret", protocol=0),
            "hello plus junk": hello("s3cret") + b"junk",
            "half a hello": hello("s3cret")[:6],
            "silent": b"",
        }

        async def attack(name: str, payload: bytes, port: int) -> None:
            stream = await trio.open_tcp_stream(HOST, port)
            if payload:
                await stream.send_all(payload)
            if name == "half a hello":
                await stream.send_eof()
            replies[name] = decode_frames(await read_until_eof(stream))
            await stream.aclose()

        async def chatty(port: int) -> None:
            stream = await trio.open_tcp_stream(HOST, port)
            await stream.send_all(hello("s3cret"))
            await trio.sleep(0.05)
            await stream.send_all(b"more data")
            replies["chatty"] = decode_frames(await read_until_eof(stream))[:1]
            await stream.aclose()

        def publish(server: StreamServer) -> None:
            for i in range(300):
                t0 = time.perf_counter()
                server.publish({"kind": "value", "i": i})
                durations.append(time.perf_counter() - t0)
                time.sleep(0.001)

        with trio.fail_after(30):
            async with trio.open_nursery() as outer:
                async with StreamServer(token="s3cret", handshake_timeout=0.3) as server:
                    outer.start_soon(collect, server.port, good, "s3cret")
                    await server.wait_for_subscribers(1)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(trio.to_thread.run_sync, publish, server)
                        for name, payload in hostile.items():
                            nursery.start_soon(attack, name, payload, server.port)
                        nursery.start_soon(chatty, server.port)
        assert [r["i"] for r in good] == list(range(300))  # every record, in order, no gap
        assert max(durations) < 0.5
        errors = {name: [r.get("message") for r in frames] for name, frames in replies.items()}
        assert errors == {
            "http": ["the hello is too large (1195725856 bytes, at most 4096)"],
            "oversized": ["the hello is too large (4294967295 bytes, at most 4096)"],
            "too long": ["the hello is too large (4097 bytes, at most 4096)"],
            "not msgpack": ["the hello is not msgpack"],
            "not a hello": ["the first frame must be a hello"],
            "list": ["the first frame must be a hello"],
            "wrong token": ["bad token"],
            "no token": ["bad token"],
            "old protocol": ["unsupported protocol 0; this server speaks 1"],
            "hello plus junk": ["unexpected data after the hello"],
            "half a hello": ["the connection closed in the middle of the hello"],
            "silent": ["no hello within the handshake timeout"],
            "chatty": [None],  # welcomed, then cut off for talking
        }
        stats = server.statistics()
        assert (stats.refused, stats.errors, stats.dropped) == (len(hostile) + 1, 0, 0)

    async def test_body_errors_are_not_wrapped(self) -> None:
        """An error inside 'async with StreamServer()' propagates as itself, not in an exception group."""
        with pytest.raises(ValueError, match=r"^inside$"):
            async with StreamServer():
                raise ValueError("inside")

    async def test_cancellation(self) -> None:
        """Cancelling the block that holds the server closes it and is absorbed by the cancel scope."""
        with trio.move_on_after(0.05) as scope:
            async with StreamServer() as server:
                await trio.sleep(10)
        assert scope.cancelled_caught
        assert repr(server) == "StreamServer(127.0.0.1, closed)"


def open_fds() -> int:
    """How many file descriptors this process has open now (Linux)."""
    return len(os.listdir("/proc/self/fd"))


async def wait_until(condition: Any, seconds: float = 10.0) -> None:
    """Poll ``condition()`` until it is true; fail after ``seconds``."""
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.01)


class TestConnectionBounds:
    @pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts file descriptors in /proc/self/fd")
    async def test_idle_connections_cannot_exhaust_file_descriptors(self) -> None:
        """Connections that never send a hello are held at most max_pending_handshakes at a time; the rest are
        closed at once, and a subscriber with the token is served once the idle ones time out."""
        got: list[dict] = []
        idle: list[trio.SocketStream] = []
        with trio.fail_after(30):
            async with StreamServer(token="s3cret", max_pending_handshakes=4, max_connections=8,
                                    handshake_timeout=1.0) as server:
                before = open_fds()
                try:
                    for _ in range(60):
                        idle.append(await trio.open_tcp_stream(HOST, server.port))
                    await trio.sleep(0.5)  # let the server accept what it will
                    held = open_fds() - before - len(idle)  # the server's side of the idle connections
                    assert held <= 4 + 1  # the four it waits for, and at most one being turned away
                    await wait_until(lambda: server.statistics().rejected == 56)
                    assert server.statistics().connections == 4
                    with pytest.raises(StreamError, match=r"^the stream server refused the subscription: too many "
                                                          r"connections waiting for their handshake \(at most 4\); "
                                                          r"try again later$"):
                        await collect(server.port, got, "s3cret")
                    await wait_until(lambda: server.statistics().connections == 0)  # timed out and refused
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(collect, server.port, got, "s3cret")
                        await server.wait_for_subscribers(1)
                        server.publish({"kind": "value", "i": 1})
                        await wait_until(lambda: bool(got))
                        nursery.cancel_scope.cancel()
                finally:
                    for stream in idle:
                        await stream.aclose()
        assert got == [{"kind": "value", "i": 1}]
        stats = server.statistics()
        assert (stats.refused, stats.rejected, stats.errors) == (4, 57, 0)

    async def test_max_connections_bounds_subscribers(self) -> None:
        """Past max_connections, a subscriber is turned away with the reason; a freed slot takes the next one."""
        got: list[list[dict]] = [[], []]
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery, StreamServer(max_connections=2) as server:
                first = subscribe(HOST, server.port)
                await first.__aenter__()
                nursery.start_soon(collect, server.port, got[0])
                await server.wait_for_subscribers(2)
                with pytest.raises(StreamError, match=r"^the stream server refused the subscription: too many "
                                                      r"connections \(the server takes at most 2\); try again "
                                                      r"later$"):
                    await collect(server.port, got[1])
                assert server.statistics().rejected == 1
                await first.aclose()
                await wait_until(lambda: server.statistics().connections == 1)
                nursery.start_soon(collect, server.port, got[1])
                await server.wait_for_subscribers(2)
                server.publish({"kind": "value", "i": 1})
        assert got == [[{"kind": "value", "i": 1}]] * 2

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"max_connections": 0}, r"^max_connections must be an int >= 1, got 0$"),
        ({"max_pending_handshakes": 1.5}, r"^max_pending_handshakes must be an int >= 1, got 1\.5$"),
    ])
    def test_bad_bounds(self, kwargs: dict[str, Any], message: str) -> None:
        """The bounds must be positive ints."""
        with pytest.raises(ValueError, match=message):
            StreamServer(**kwargs)

    def test_defaults(self) -> None:
        """By default a server holds at most 64 connections, 16 of them waiting for their handshake."""
        server = StreamServer()
        assert (server.max_connections, server.max_pending_handshakes, server.handshake_timeout) == (64, 16, 5.0)
