"""What per-learner random state costs (docs/reproducibility.md): a region, a swap, a step alone and concurrent.

    python bench/rng.py [--steps 2000] [--repeats 5]

Prints the median of ``--repeats`` runs of each measure (for steps also the difference of the best runs, which
load from other processes disturbs least):

* ``region (owner)``: one region of the learner that owns the global generators (the lock only);
* ``region (swap)``: regions of two learners alternating, so every region saves one state and installs another;
* ``step, one fit``: per training step of a tiny fit (LinearRunner, no callbacks), with regions and with the
  regions replaced by a no-op (the cost before this feature), for one fit alone and for two fits at once.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Any

import torch
import trio

import asyncloop
from asyncloop import _rng


def _per_call(fn: Any, n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return (time.perf_counter() - t0) / n * 1e6


def owner_regions(n: int) -> None:
    state = _rng.LearnerRandomState(0)
    for _ in range(n):
        with state.region():
            pass


def swapping_regions(n: int) -> None:
    a, b = _rng.LearnerRandomState(0), _rng.LearnerRandomState(1)
    for _ in range(n // 2):
        with a.region():
            pass
        with b.region():
            pass


def _learner(steps: int, seed: int) -> asyncloop.Learner:
    xs = torch.randn(steps, 8, 4)
    batches = [(x, x.sum(dim=1, keepdim=True)) for x in xs]
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 1))
    return asyncloop.Learner(
        model, torch.nn.functional.mse_loss, data=(batches, None),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01), use_default_callbacks=False, seed=seed,
    )


def fits(steps: int, n_fits: int) -> float:
    learners = [_learner(steps, seed) for seed in range(n_fits)]

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for learner in learners:
                nursery.start_soon(asyncloop.fit, learner, 1)

    t0 = time.perf_counter()
    trio.run(run)
    return (time.perf_counter() - t0) / (steps * n_fits) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    med = lambda f: statistics.median(f() for _ in range(args.repeats))
    print(f"region (owner): {med(lambda: _per_call(owner_regions, 100_000)):8.2f} us")
    print(f"region (swap):  {med(lambda: _per_call(swapping_regions, 20_000)):8.2f} us")
    region = _rng.LearnerRandomState.region
    bare_region = lambda self: contextlib.nullcontext()  # the cost before this feature
    for n_fits in (1, 2):
        times: dict[str, list[float]] = {"guarded": [], "bare": []}
        swaps = _rng.swaps
        for _ in range(args.repeats):  # alternated, so that load drifts hit both alike
            times["guarded"].append(fits(args.steps, n_fits))
            _rng.LearnerRandomState.region = bare_region  # type: ignore[method-assign]
            try:
                times["bare"].append(fits(args.steps, n_fits))
            finally:
                _rng.LearnerRandomState.region = region  # type: ignore[method-assign]
        swaps = (_rng.swaps - swaps) / args.repeats
        guarded, bare = statistics.median(times["guarded"]), statistics.median(times["bare"])
        best = min(times["guarded"]) - min(times["bare"])
        print(
            f"step, {n_fits} fit(s): {guarded:8.2f} us with regions, {bare:8.2f} us without (medians; "
            f"{guarded - bare:+.2f} us/step, best runs {best:+.2f} us/step; "
            f"{swaps:.0f} swaps per run of {args.steps * n_fits} steps)"
        )

if __name__ == "__main__":
    main()
