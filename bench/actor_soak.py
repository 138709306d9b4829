"""Memory and actor lag over a long run: 100k tiny steps with the defaults plus a detached logger.

The tiny workload (Linear(32, 32) -> ReLU -> Linear(32, 1), batch 32, SGD) under the ActorRunner with the default
callbacks (printers to /dev/null) and ``LogMetrics(EventLogBackend(...))`` (every step's loss, detached on its
thread, or with ``--process`` in a worker process). ``--steps`` steps in epochs of ``--epoch`` steps over a
cycling set of 64 batches, no validation. Every ``--every`` steps an inline probe records the process's RSS
(``/proc/self/statm``; with ``--process`` the worker's too) and each detached actor's backlog (events published
and not yet handled). Flat means: RSS after the first sample grows by less than a few MB, and the backlog stays
bounded by the inbox (1024 events).

Run: ``.venv/bin/python bench/actor_soak.py [--process]`` (writes bench/results/actor_soak[_process].json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import trio

import asyncloop as al
from asyncloop.logging import EventLogBackend, read_events

DEVNULL = open(os.devnull, "w")  # noqa: SIM115
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


class Cycle:
    """``n`` batches cycling over a small set (a sized iterable, like a DataLoader epoch)."""

    def __init__(self, batches: list, n: int) -> None:
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        k = len(self.batches)
        for i in range(self.n):
            yield self.batches[i % k]


class Probe(al.Callback):
    """Inline: every ``every`` training steps, record the time, RSS and each detached actor's backlog."""

    state_access = {"cbstate": {"history": al.Read()}}
    run_after = (al.Recorder,)

    def __init__(self, every: int, runner: al.ActorRunner, workers: list) -> None:
        self.every, self.runner, self.workers = every, runner, workers
        self.samples: list[dict] = []
        self.t0 = time.perf_counter()

    @al.on(al.StepEnd, al.TrainingPhase)
    def sample(self, event, phase, learner) -> None:
        steps = learner.cbstate.history[phase].steps
        if steps % self.every:
            return
        actors = self.runner._delivery.actors.values()
        self.samples.append({
            "steps": steps, "seconds": time.perf_counter() - self.t0, "rss_mb": rss_mb(),
            "worker_rss_mb": [rss_mb(w.process.pid) for w in self.workers if w.process.is_alive()],
            "backlog": {a.callback.name: a.enqueued - a.processed for a in actors},
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--epoch", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=5_000)
    parser.add_argument("--process", action="store_true", help="the logger in a worker process")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    g = torch.Generator().manual_seed(1)
    data = Cycle([(torch.randn(32, 32, generator=g), torch.randn(32, 1, generator=g)) for _ in range(64)],
                 args.epoch)
    folder = tempfile.mkdtemp(prefix="asyncloop-soak-")
    log = os.path.join(folder, "soak.alog")
    runner = al.ActorRunner()
    workers: list = []
    probe = Probe(args.every, runner, workers)
    learner = al.Learner(
        model, torch.nn.functional.mse_loss, data=(data, None), optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
        callbacks=[al.ProgressPrinter(file=DEVNULL), al.MetricsPrinter(file=DEVNULL),
                   al.LogMetrics(EventLogBackend(log), detached="process" if args.process else True), probe],
        runner=runner)
    workers.extend(w for _, w in runner._delivery.workers.values())
    t0 = time.perf_counter()
    result = trio.run(al.fit, learner, args.steps // args.epoch)
    wall = time.perf_counter() - t0
    runner.shutdown()
    records = sum(1 for r in read_events(log) if r["kind"] == "value")
    logger = next(s for s in result.statistics if s.name == "LogMetrics")
    first, last = probe.samples[0], probe.samples[-1]
    growth = last["rss_mb"] - first["rss_mb"]
    print(f"{args.steps} tiny steps in {wall:.0f} s ({wall / args.steps * 1e6:.0f} us/step); logger "
          f"{'in a worker process' if args.process else 'on its thread'}; {records} values logged")
    print("| steps | s | RSS MB | worker RSS MB | backlog (events) |")
    print("|---:|---:|---:|---:|---|")
    for s in probe.samples:
        print(f"| {s['steps']} | {s['seconds']:.0f} | {s['rss_mb']:.1f} | "
              f"{', '.join(f'{x:.1f}' for x in s['worker_rss_mb']) or '-'} | {s['backlog']} |")
    print(f"RSS {first['rss_mb']:.1f} MB at step {first['steps']} -> {last['rss_mb']:.1f} MB at step {last['steps']} "
          f"({growth:+.1f} MB); LogMetrics peak lag {logger.peak_lag} events, peak inbox {logger.peak_inbox}")
    out = Path(__file__).parent / "results" / f"actor_soak{'_process' if args.process else ''}.json"
    out.write_text(json.dumps({
        "meta": {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M"),
                 "python": platform.python_version(), "torch": torch.__version__, "load": os.getloadavg(),
                 "wall_s": wall, "values_logged": records},
        "samples": probe.samples, "rss_growth_mb": growth, "peak_lag": logger.peak_lag,
        "peak_inbox": logger.peak_inbox}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
