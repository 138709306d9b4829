"""What a process actor's start-up costs: spawn + imports, and whether training waits for it.

For ``--repeats`` fresh learners (tiny workload, defaults with printers to /dev/null, plus
``LogMetrics(EventLogBackend(...), detached="process")``), each in a fresh runner:

* ``build_ms``: ``Learner(...)`` (it spawns the worker and returns without waiting);
* ``ready_s``: from the spawn until the worker reported ready (``spawn`` start method: a new interpreter imports
  torch and asyncloop);
* ``fit1_s`` / ``fit1_wait_s``: a fit of ``--steps`` steps started right after the learner was built: its wall
  time, and how long its loop waited for the logger (``ActorStatistics.loop_wait_time``: a full inbox, and the
  drain at the end);
* ``fit2_s`` / ``fit2_wait_s``: the same fit again (the worker is kept: no start-up);
* ``thread_s``: the same fit with the logger on a thread, for comparison.

Run: ``.venv/bin/python bench/actor_startup.py`` (writes bench/results/actor_startup.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import trio

import asyncloop as al
from asyncloop.logging import EventLogBackend

DEVNULL = open(os.devnull, "w")  # noqa: SIM115


def make_learner(batches, folder: str, detached) -> al.Learner:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    logger = al.LogMetrics(EventLogBackend(os.path.join(folder, f"{time.perf_counter_ns()}.alog")), detached=detached)
    return al.Learner(model, torch.nn.functional.mse_loss, data=(batches, None),
                      optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
                      callbacks=[al.ProgressPrinter(file=DEVNULL), al.MetricsPrinter(file=DEVNULL), logger],
                      runner=al.ActorRunner())


def fit(learner: al.Learner) -> tuple[float, float]:
    t0 = time.perf_counter()
    result = trio.run(al.fit, learner, 1)
    wall = time.perf_counter() - t0
    return wall, next(s for s in result.statistics if s.name == "LogMetrics").loop_wait_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 32, generator=g), torch.randn(32, 1, generator=g)) for _ in range(args.steps)]
    folder = tempfile.mkdtemp(prefix="asyncloop-startup-")
    rows = []
    fit(make_learner(batches, folder, True))  # warm this process's imports and caches
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        learner = make_learner(batches, folder, "process")
        build = time.perf_counter() - t0
        (_, worker), = learner.runner._delivery.workers.values()
        fit1, wait1 = fit(learner)
        fit2, wait2 = fit(learner)
        thread, _ = fit(make_learner(batches, folder, True))
        rows.append({"build_ms": build * 1e3, "ready_s": worker.startup_seconds, "fit1_s": fit1,
                     "fit1_wait_s": wait1, "fit2_s": fit2, "fit2_wait_s": wait2, "thread_s": thread})
        learner.runner.shutdown()
    print(f"{args.steps} tiny steps per fit, {args.repeats} fresh learners")
    print("| | " + " | ".join(rows[0]) + " |")
    print("|---|" + "---:|" * len(rows[0]))
    for i, row in enumerate(rows):
        print(f"| {i + 1} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print("| median | " + " | ".join(f"{v:.2f}" for v in med.values()) + " |")
    out = Path(__file__).parent / "results" / "actor_startup.json"
    out.write_text(json.dumps({"meta": {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                                        "date": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()},
                               "rows": rows, "median": med}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
