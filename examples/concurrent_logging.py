"""Concurrent async logging: two fits train at once in one trio program, each sending its metrics to a slow
remote service with an ``async`` callback, while the program's event loop goes on serving other tasks.

* ``RemoteLogger`` is a read-only callback with ``async`` handlers that ``await`` a (simulated) HTTP call per
  training step and per epoch. It sets ``detached = True``: under the ``ActorRunner`` it gets a snapshot of
  the metrics it declared and sends them from the program's event loop while the training thread goes on;
  nothing is dropped (its inbox is bounded: when full, the loop waits), and when ``fit`` returns every record
  has been sent.
* Each fit also writes an event log with the built-in ``LogMetrics`` (another detached actor, in its own
  thread).
* The two fits, and a heartbeat that stands for the rest of a service (health checks, requests), run in one
  nursery; the heartbeat records the longest delay of its ticks (on a busy machine the loop's thread also waits
  for a CPU core and for the GIL, so this is a measurement, not a bound).

At the end the same single fit runs once more under the ``LinearRunner``, where every send is awaited in line,
so training waits for the network: the printed times (wall clock, measured here, machine dependent) show the
difference.

    python examples/concurrent_logging.py [--quick] [--latency 0.01]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import trio

import asyncloop
from asyncloop import (
    AbstractTrainingPhase,
    Callback,
    EpochEnd,
    EventLogBackend,
    LogMetrics,
    Metrics,
    Read,
    Recorder,
    StepEnd,
    on,
)
from asyncloop.logging import read_events


class SlowService:
    """A remote metrics service: every ``send`` takes ``latency`` seconds (as an HTTP POST would)."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.received: list[dict] = []

    async def send(self, record: dict) -> None:
        await trio.sleep(self.latency)  # stands for `await client.post(url, json=record)` (httpx, asks, ...)
        self.received.append(record)


class RemoteLogger(Callback):
    """Send each training step's loss and each epoch's metrics to ``service``, tagged with ``run``."""

    state_access = {"cbstate": {"metrics_step": Read(), "metrics_epoch": Read()}}
    run_after = (Recorder, Metrics)
    detached = True  # read-only: under the ActorRunner its sends overlap with training

    def __init__(self, service: SlowService, run: str) -> None:
        self.service, self.run = service, run

    @on(StepEnd, AbstractTrainingPhase)
    async def send_step(self, event, phase, learner):
        step, loss = learner.cbstate.metrics_step[phase].last("Loss")
        await self.service.send({"run": self.run, "step": step, "loss": float(loss)})

    @on(EpochEnd)
    async def send_epoch(self, event, phase, learner):
        metrics = learner.cbstate.metrics_epoch[phase]
        values = {name: float(metrics.last(name)[1]) for name in metrics.keys()}
        epoch = metrics.last("Loss")[0]
        await self.service.send({"run": self.run, "phase": type(phase).__name__, "epoch": epoch, **values})


def make_learner(seed: int, service: SlowService, run: str, log: Path, runner: asyncloop.ActorRunner |
                 asyncloop.LinearRunner, n: int) -> asyncloop.Learner:
    """A classifier of the quadrant rule ``x0 * x1 > 0``, logging to ``service`` and to the event log ``log``."""
    generator = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, 2, generator=generator)
    batches = [(x, (x[:, 0] * x[:, 1] > 0).long()) for x in xs.split(32)]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    return asyncloop.Learner(
        model,
        torch.nn.functional.cross_entropy,
        data=(batches[: len(batches) * 3 // 4], batches[len(batches) * 3 // 4 :]),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        callbacks=[Recorder(), Metrics(asyncloop.accuracy), RemoteLogger(service, run),
                   LogMetrics(EventLogBackend(log, run=run))],
        runner=runner,
        use_default_callbacks=False,  # quiet: no progress bars from two fits at once
    )


async def heartbeat(gaps: list[float], period: float = 0.005) -> None:
    """Tick every ``period`` seconds; keep the longest time between two ticks in ``gaps[0]``."""
    last = time.perf_counter()
    while True:
        await trio.sleep(period)
        now = time.perf_counter()
        gaps[0] = max(gaps[0], now - last - period)
        last = now


async def two_fits(args: argparse.Namespace, folder: Path, service: SlowService) -> dict[str, float]:
    """Fit two learners at once under the ActorRunner, with a heartbeat; return each fit's wall time."""
    learners = {run: make_learner(seed, service, run, folder / f"{run}.alog", asyncloop.ActorRunner(), args.n)
                for seed, run in enumerate(("fit-a", "fit-b"))}
    times: dict[str, float] = {}
    gaps = [0.0]

    async def fit(run: str) -> None:
        start = time.perf_counter()
        await asyncloop.fit(learners[run], args.epochs)
        times[run] = time.perf_counter() - start

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat, gaps)
        async with trio.open_nursery() as fits:
            for run in learners:
                fits.start_soon(fit, run)
        nursery.cancel_scope.cancel()
    times["heartbeat gap"] = gaps[0]
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="two fits at once, each logging to a slow service with an "
                                                 "async callback")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (for CI)")
    parser.add_argument("--latency", type=float, default=0.01, help="seconds per send to the service (0.01)")
    args = parser.parse_args(argv)
    args.epochs, args.n = (2, 2048) if args.quick else (5, 4096)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        service = SlowService(args.latency)
        times = trio.run(two_fits, args, folder, service)
        steps_per_fit = args.epochs * (args.n // 32 * 3 // 4)
        for run in ("fit-a", "fit-b"):
            steps = [r["step"] for r in service.received if r["run"] == run and "step" in r]
            epochs = [r for r in service.received if r["run"] == run and "epoch" in r]
            with read_events(folder / f"{run}.alog") as reader:
                values = sum(1 for record in reader if record["kind"] == "value")
            in_order = steps == list(range(1, steps_per_fit + 1))
            print(f"{run}: {times[run]:.2f}s under the ActorRunner; the service received {len(steps)} steps "
                  f"(all, in order: {in_order}) and {len(epochs)} epoch summaries; event log: {values} values")
        print(f"meanwhile the heartbeat's longest delay was {times['heartbeat gap'] * 1000:.0f} ms (its event loop "
              f"shares the CPU with both fits)")
        network = steps_per_fit * args.latency

        linear = make_learner(0, SlowService(args.latency), "fit-a", folder / "linear.alog", asyncloop.LinearRunner(),
                              args.n)
        start = time.perf_counter()
        trio.run(asyncloop.fit, linear, args.epochs)
        print(f"the same fit under the LinearRunner: {time.perf_counter() - start:.2f}s (each of its {steps_per_fit} "
              f"sends, {network:.2f}s in all, holds up training)")
        last = {run: [r for r in service.received if r["run"] == run and r.get("phase") == "ValidationPhase"][-1]
                for run in ("fit-a", "fit-b")}
        accuracies = ", ".join(f"{run} {r['Accuracy']:.3f}" for run, r in last.items())
        print(f"concurrent_logging: {args.epochs} epochs each; validation accuracy {accuracies}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
