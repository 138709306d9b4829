"""Tests for asyncloop.logging._stream_client: subscribe, its argument checks and misbehaving servers, and a
subscriber following a fit in another process (loopback only)."""

from __future__ import annotations

import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import asyncloop
from asyncloop import Metrics, Recorder, StreamServer, TrainingPhase, ValidationPhase, fit, subscribe, test_learner
from asyncloop.logging import StreamError
from asyncloop.logging._records import pack
from streams import HOST, collect, frame


class TestSubscribe:
    @pytest.mark.parametrize(("args", "kwargs", "error", "message"), [
        ((HOST, 0), {}, ValueError, r"^port must be an int in 1\.\.65535, got 0$"),
        ((HOST, 80, 5), {}, TypeError, r"^token must be a str or None, got 5$"),
        ((HOST, 80), {"max_frame_size": 0}, ValueError, r"^max_frame_size must be an int >= 1, got 0$"),
        ((HOST, 80), {"timeout": 0}, ValueError, r"^timeout must be a number of seconds > 0, got 0$"),
    ])
    def test_bad_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any], error: type, message: str) -> None:
        """Bad arguments are refused before connecting."""
        with pytest.raises(error, match=message):
            subscribe(*args, **kwargs)

    async def test_nothing_listening(self) -> None:
        """Subscribing to a closed port fails with the connection error."""
        async with StreamServer() as server:
            port = server.port
        with pytest.raises(OSError):
            async for _ in subscribe(HOST, port):
                pass

    async def test_frame_larger_than_the_client_limit(self) -> None:
        """A record larger than the subscriber's max_frame_size ends its iteration with a StreamError."""
        with trio.fail_after(20):
            async with StreamServer() as server:
                async with subscribe(HOST, server.port, max_frame_size=100) as records:
                    await server.wait_for_subscribers(1)
                    server.publish({"kind": "text", "value": "x" * 500})
                    with pytest.raises(
                        StreamError,
                        match=r"^the stream server sent a frame of \d+ bytes, more than the limit of 100 bytes; "
                              r"subscribe with a larger max_frame_size$",
                    ):
                        await records.__anext__()

    async def test_misbehaving_servers(self) -> None:
        """A server that answers badly, breaks off mid-frame or stays silent gives a StreamError."""
        replies = {
            "odd": frame(pack({"kind": "greetings"})),
            "torn": frame(pack({"kind": "welcome", "protocol": 1})) + b"\x00\x00\x01\x00abc",
            "closed": b"",
            "silent": None,
        }

        async def fake(reply: bytes | None, stream: trio.SocketStream) -> None:
            await stream.receive_some(1024)
            if reply is None:
                await trio.sleep_forever()
            await stream.send_all(reply)
            await stream.aclose()

        messages = {}
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for name, reply in replies.items():
                    handler = partial(fake, reply)
                    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=HOST))
                    port = listeners[0].socket.getsockname()[1]
                    with pytest.raises(StreamError) as info:
                        async for _ in subscribe(HOST, port, timeout=0.3):
                            pass
                    messages[name] = str(info.value)
                nursery.cancel_scope.cancel()
        assert messages == {
            "odd": "the stream server answered the hello with 'greetings', not 'welcome'",
            "torn": "lost the connection to the stream server: the connection closed in the middle of a frame",
            "closed": "the stream server closed the connection during the handshake",
            "silent": "the stream server did not answer the hello within 0.3 seconds",
        }

    async def test_refusal_message_is_escaped(self) -> None:
        """A server's refusal message reaches the StreamError with its control characters escaped."""

        async def refuse(stream: trio.SocketStream) -> None:
            await stream.receive_some(1024)
            await stream.send_all(frame(pack({"kind": "error", "message": "no\x1b]0;pwned\x07\x9b2J"})))
            await stream.aclose()

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(partial(trio.serve_tcp, refuse, 0, host=HOST))
                with pytest.raises(StreamError) as info:
                    await collect(listeners[0].socket.getsockname()[1], [])
                nursery.cancel_scope.cancel()
        assert str(info.value) == r"the stream server refused the subscription: no\x1b]0;pwned\x07\x9b2J"

    async def test_aclose_ends_iteration(self) -> None:
        """After aclose, iteration ends; aclose is idempotent."""
        async with StreamServer() as server:
            records = subscribe(HOST, server.port)
            await records.__aenter__()
            await records.aclose()
            await records.aclose()
            assert [r async for r in records] == []


SERVICE = """
import sys
import torch
import trio
from asyncloop import ActorRunner, LogMetrics, Metrics, Recorder, StreamBackend, StreamServer, fit, test_learner

async def main():
    async with StreamServer(token="s3cret") as server:
        print(server.port, flush=True)
        with trio.fail_after(60):
            await server.wait_for_subscribers(1)
        torch.manual_seed(0)
        learner = test_learner(Recorder(), Metrics(), LogMetrics(StreamBackend(server, run="remote")), n_batches=4,
                               runner=ActorRunner())
        await fit(learner, 2)

trio.run(main)
"""


class TestAcrossProcesses:
    async def test_follow_a_fit_in_another_process(self, tmp_path: Path) -> None:
        """A subscriber follows a fit running in another process, and sees exactly its metrics."""
        got: list[dict] = []
        proc = await trio.lowlevel.open_process([sys.executable, "-c", SERVICE], stdout=subprocess.PIPE)
        try:
            with trio.fail_after(60):
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await proc.stdout.receive_some(1)  # type: ignore[union-attr]
                    assert chunk, "the service exited before printing its port"
                    line += chunk
                await collect(int(line), got, "s3cret")
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.move_on_after(10):
                    await proc.wait()
            await proc.stdout.aclose()  # type: ignore[union-attr]
        torch_reference = test_learner(Recorder(), Metrics(), n_batches=4)  # the same seed (conftest) and data
        await fit(torch_reference, 2)
        expected = torch_reference.cbstate
        assert {r["run"] for r in got} == {"remote"}
        for phase in (TrainingPhase(), ValidationPhase()):
            for unit, histories in (("Step", expected.metrics_step), ("Epoch", expected.metrics_epoch)):
                mine = [r for r in got if r["group"] == [unit, type(phase).__name__, "Metrics"]]
                assert [r["index"] for r in mine] == histories[phase].indices("Loss")
                assert [r["value"] for r in mine] == histories[phase].values("Loss")


def test_subscribe_is_exported() -> None:
    """asyncloop.subscribe is the stream client."""
    assert asyncloop.subscribe is subscribe
    assert threading.current_thread() is threading.main_thread()
