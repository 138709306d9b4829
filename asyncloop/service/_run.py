"""``asyncloop serve``: the service as a program, stopped cleanly by Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import TextIO

import trio

from ..logging._stream_server import StreamServer
from ._app import serve
from ._jobs import TrainingService


@contextlib.asynccontextmanager
async def _maybe_stream(host: str, port: int | None) -> AsyncIterator[StreamServer | None]:
    if port is None:
        yield None
        return
    try:
        server = StreamServer(host, port, token=os.environ.get("ASYNCLOOP_STREAM_TOKEN"))
        await server.__aenter__()
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open the live stream on {host}:{port}: {exc.strerror or exc}") from None
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_exit(server)
        yield server


async def run_service(folder: str, *, host: str = "127.0.0.1", port: int = 8000, max_running: int = 2,
                      max_queued: int = 16, max_jobs: int = 1000, stream_port: int | None = None,
                      out: TextIO | None = None) -> None:
    """Serve a :class:`TrainingService` on ``host:port`` until SIGINT or SIGTERM; then cancel its jobs and return.

    ``stream_port`` also publishes every job on a :class:`asyncloop.StreamServer` there (``0``: a free port), for
    ``asyncloop log subscribe``. Prints where it listens to ``out`` (default stdout).
    """
    out = out if out is not None else sys.stdout
    stop = trio.Event()

    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        async with _maybe_stream(host, stream_port) as stream:
            async with TrainingService(folder, max_running=max_running, max_queued=max_queued, max_jobs=max_jobs,
                                       stream=stream) as service:
                url = await nursery.start(serve, service, host, port)
                print(f"asyncloop service on {url} (jobs under {os.path.abspath(folder)})", file=out, flush=True)
                if stream is not None:
                    print(f"live stream on {host}:{stream.port} (asyncloop log subscribe {host} {stream.port})",
                          file=out, flush=True)
                print("Ctrl-C to stop", file=out, flush=True)
                await stop.wait()
                print("stopping: cancelling the running jobs", file=out, flush=True)
                nursery.cancel_scope.cancel()
