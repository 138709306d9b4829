"""Soaks (marked slow, outside CI: ``bash scripts/test.sh --run-slow tests/test_soak.py``): 1,000 fits in a row
and one 100,000-step fit under the ActorRunner stay flat in memory, threads and actor lag.

Each soak prints its figures (docs/reliability.md records them).
"""

from __future__ import annotations

import gc
import resource
import threading
from typing import Any

import pytest
import torch
import trio

import asyncloop as al

pytestmark = pytest.mark.slow


def rss_mib() -> float:
    """The process's resident set size now, in MiB (from /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


class Reader(al.Callback):
    """A detached logger stand-in: reads the loss and the history at every step."""

    detached = True
    state_access = {"step": {"loss": al.Read()}, "cbstate": {"history": al.Read()}}
    run_after = (al.Recorder,)

    def __init__(self) -> None:
        self.n = 0

    @al.on(al.StepEnd, al.TrainingPhase)
    def h(self, event: Any, phase: Any, learner: Any) -> None:
        self.n += 1


@pytest.mark.parametrize("runner", [al.LinearRunner, al.ActorRunner], ids=["linear", "actor"])
def test_a_thousand_fits(runner: type) -> None:
    """1,000 consecutive fits of one learner: RSS and the thread count end where they were after the first 100."""
    learner = al.test_learner(al.Recorder(), al.Metrics(), Reader(), n_batches=4, runner=runner())
    rss: list[float] = []
    for i in range(1000):
        trio.run(al.fit, learner, 1)
        if i in (99, 499, 999):
            gc.collect()
            rss.append(rss_mib())
    threads = threading.active_count()
    print(f"\n{runner.__name__}: 1000 fits; RSS after 100/500/1000 fits: {rss[0]:.1f}/{rss[1]:.1f}/{rss[2]:.1f} MiB; "
          f"threads at the end: {threads}")
    assert rss[2] - rss[0] < 20
    assert learner.cbstate.history[al.TrainingPhase()].epochs == 1000


def test_a_hundred_thousand_steps() -> None:
    """One fit of 100,000 tiny steps with the defaults plus a detached reader: RSS flat, the actor never lags
    by more than its inbox, every event handled."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    xs, ys = torch.randn(32, 32), torch.randn(32, 1)
    steps = 100_000
    marks: list[float] = []

    class Batches:
        def __len__(self) -> int:
            return steps

        def __iter__(self) -> Any:
            for i in range(steps):
                if i % 25_000 == 0:
                    gc.collect()
                    marks.append(rss_mib())
                yield xs, ys

    reader = Reader()
    learner = al.Learner(model, torch.nn.functional.mse_loss, data=(Batches(), None),
                         optimizer=lambda p: torch.optim.SGD(p, lr=0.001),
                         callbacks=[reader, al.ProgressPrinter(file=open("/dev/null", "w")),
                                    al.MetricsPrinter(file=open("/dev/null", "w"))],
                         runner=al.ActorRunner())
    result = trio.run(al.fit, learner, 1)
    stats = {s.name: s for s in result.statistics}
    print(f"\n100k steps in {result.elapsed:.1f} s; RSS at 0/25k/50k/75k steps: "
          + "/".join(f"{m:.1f}" for m in marks) + f" MiB; Reader peak lag {stats['Reader'].peak_lag} events, "
          f"peak inbox {stats['Reader'].peak_inbox}")
    assert reader.n == steps
    assert stats["Reader"].peak_inbox <= 1024
    assert marks[-1] - marks[1] < 20
