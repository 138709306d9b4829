"""A long-running trio service that trains models and streams every fit's logs to any number of subscribers.

    python examples/logging_service.py --fits 3 --port 8765
    python examples/logging_subscriber.py 8765        # in another terminal, or several
    asyncloop log subscribe 127.0.0.1 8765             # the same from the command line

Each fit also writes an event log and TensorBoard files under --log-dir (`asyncloop log show runs/fit-0.alog`,
`tensorboard --logdir runs/tb`). Set ASYNCLOOP_STREAM_TOKEN in every terminal to require a shared token.
"""

from __future__ import annotations

import argparse
import itertools
import os

import torch
import trio

import asyncloop
from asyncloop import (
    ActorRunner,
    EpochEnd,
    EventLogBackend,
    FitEnd,
    LogMetrics,
    Metrics,
    Recorder,
    StreamBackend,
    StreamServer,
    TensorBoardBackend,
    ValidationPhase,
)
from asyncloop.logging import LogEvents


async def train(server: StreamServer, run: str, log_dir: str, epochs: int) -> asyncloop.Learner:
    """One fit, logged to the live stream, to an event log and to TensorBoard."""
    stream = StreamBackend(server, run=run)
    event_log = EventLogBackend(os.path.join(log_dir, f"{run}.alog"), run=run)
    tensorboard = TensorBoardBackend(os.path.join(log_dir, "tb", run))
    learner = asyncloop.test_learner(
        Recorder(),
        Metrics(),
        LogMetrics(stream, event_log, tensorboard),
        LogEvents(stream, events=(EpochEnd, FitEnd)),
        runner=ActorRunner(),
    )
    await asyncloop.fit(learner, epochs)
    return learner


async def heartbeat(ticks: list[int]) -> None:
    """Stands for the rest of the service (requests, health checks): it keeps running while models train."""
    while True:
        await trio.sleep(0.01)
        ticks[0] += 1


async def main(args: argparse.Namespace) -> None:
    token = os.environ.get("ASYNCLOOP_STREAM_TOKEN")
    async with StreamServer(port=args.port, token=token) as server:
        print(f"streaming on 127.0.0.1:{server.port}", flush=True)
        if args.wait_for:
            await server.wait_for_subscribers(args.wait_for)
        ticks = [0]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat, ticks)
            for i in itertools.count() if args.fits == 0 else range(args.fits):
                torch.manual_seed(i)
                learner = await train(server, f"fit-{i}", args.log_dir, args.epochs)
                _, loss = learner.cbstate.metrics_epoch[ValidationPhase()].last("Loss")
                print(f"fit-{i}: validation loss {loss:.3f}", flush=True)
            nursery.cancel_scope.cancel()
        stats = server.statistics()
        print(f"the event loop ran {ticks[0]} heartbeats meanwhile; streamed {stats.published} records to "
              f"{args.wait_for or 'any'} subscriber(s), {stats.dropped} dropped", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument("--fits", type=int, default=3, help="how many fits to run; 0 runs until Ctrl-C")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per fit")
    parser.add_argument("--wait-for", type=int, default=0, metavar="N", help="wait for N subscribers first")
    parser.add_argument("--log-dir", default="runs", help="folder for event logs and TensorBoard files")
    trio.run(main, parser.parse_args())
