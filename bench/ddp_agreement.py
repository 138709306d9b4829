"""What the distributed agreement points cost per training step, next to the DDP step itself (docs/distributed.md).

Run on one machine with 2 gloo ranks:

    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 bench/ddp_agreement.py [steps] [rounds]

Each rank fits the same MLP (64-256-10, batch 32 per rank, default callbacks off) for ``steps`` training steps,
alternately with the agreement points on (as shipped) and off (``asyncloop._steps.agree`` replaced by a no-op on
both ranks, which is only safe because nothing stops here), ``rounds`` times each. It also times the bare
collectives: the 3-int ``all_reduce(MAX)`` of one agreement point and the DDP step of the same model without
asyncloop. Rank 0 prints medians: wall and process CPU time per step, in microseconds.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
import trio

import asyncloop
import asyncloop._steps as steps_module
from asyncloop import Learner

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 300
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(int(os.environ.get("RANK", "0")))
    return [(torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(n)]


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def fit_per_step(data: list[Any], agreement: bool) -> tuple[float, float]:
    real = steps_module.agree
    if not agreement:
        steps_module.agree = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        # Already sharded by hand: the learner deals a plain list round-robin, so give it both ranks' batches.
        learner = Learner(model(), torch.nn.functional.cross_entropy, data=(data, ()), use_default_callbacks=False,
                          optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
        c0, t0 = time.process_time(), time.perf_counter()
        trio.run(asyncloop.fit, learner, 1)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        steps_module.agree = real
    return wall / (len(data) // 2) * 1e6, cpu / (len(data) // 2) * 1e6


def bare_ddp_per_step(data: list[Any]) -> float:
    net = torch.nn.parallel.DistributedDataParallel(model())
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    t0 = time.perf_counter()
    for xs, ys in data:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(xs), ys).backward()
        opt.step()
    return (time.perf_counter() - t0) / len(data) * 1e6


def flag_all_reduce() -> float:
    times = []
    for _ in range(200):
        t = torch.zeros(3, dtype=torch.int32)
        t0 = time.perf_counter()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    torch.set_num_threads(1)
    data = batches(2 * STEPS)
    fit_per_step(data[:40], True)  # warm up: the process group is made here and kept
    results: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    for r in range(ROUNDS):
        for label in (("on", "off") if r % 2 == 0 else ("off", "on")):
            results[label].append(fit_per_step(data, label == "on"))
    bare = statistics.median(bare_ddp_per_step(data[:STEPS]) for _ in range(3))
    flag = flag_all_reduce()
    if dist.get_rank() == 0:
        for label in ("on", "off"):
            wall = statistics.median(w for w, _ in results[label])
            cpu = statistics.median(c for _, c in results[label])
            print(f"asyncloop DDP step, agreement {label:3}: wall {wall:7.0f} us  cpu {cpu:7.0f} us (median of {ROUNDS})")
        print(f"bare DDP step (no asyncloop):     wall {bare:7.0f} us")
        print(f"one agreement all_reduce (3 int): wall {flag:7.0f} us (median of 200); a built-in training step has 1")


if __name__ == "__main__":
    main()
