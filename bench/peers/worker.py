"""One framework on one workload, in its own process (it imports torch and that framework only).

usage: worker.py FRAMEWORK WORKLOAD --steps N --warmup W --rounds R --sleep S --gil N --scenarios abcdef
                 [--ckpt-every K] [--memory-steps M] --out FILE.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import common  # noqa: E402
import harness  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("framework")
    p.add_argument("workload")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--gil", type=int, default=0)
    p.add_argument("--scenarios", default="abcde")
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--memory-steps", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--delivery", choices=["direct", "loop"], default="direct",
                   help="asyncloop only: detached actors' delivery (loop: through the caller's loop, as before "
                        "direct delivery; bench/direct_delivery_suite.py)")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    common.SLEEP_S, common.GIL_N = a.sleep, a.gil
    fw = importlib.import_module(f"fw_{a.framework}")
    if a.framework == "asyncloop":
        from asyncloop.runners import _delivery

        _delivery.DIRECT = a.delivery == "direct"
    scenarios = set(a.scenarios)
    folder = harness.tmpdir(f"peers-{a.framework}-")
    out: dict = {"framework": a.framework, "workload": a.workload, "versions": versions(a.framework)}
    t0 = time.perf_counter()
    try:
        whole = scenarios == {"f"}
        configs = fw.configs(a.workload, scenarios, a.ckpt_every, folder)
        if configs:
            print(f"{a.framework} / {a.workload}: {len(configs)} configurations x {a.rounds} rounds", flush=True)
            out["configs"] = harness.run(configs, a.workload, a.steps, a.warmup, a.rounds, whole=whole,
                                         log=lambda m: print(m, flush=True),
                                         ckpt_every=a.ckpt_every if whole else 0)
        else:
            out["configs"] = {}
        if whole:
            out["ckpt_every"] = a.ckpt_every
            out["checkpoints_per_fit"] = a.steps // a.ckpt_every
            out["steps"] = a.steps
            if a.framework == "torch":
                out["torch_save_s"] = time_torch_save(a.workload, folder)
        if "c" in scenarios and hasattr(fw, "build_counts"):
            out["build_counts"] = fw.build_counts(a.workload, common.StampedBatches(
                common.make_batches(a.workload, min(a.steps, 200)), 0))
        if a.memory_steps and hasattr(fw, "memory"):
            every = max(1, a.memory_steps // 50)
            # a plain list: no per-batch stamps, whose own lists would grow by ~64 bytes a step
            batches = common.make_batches(a.workload, 1000) * (a.memory_steps // 1000)
            out["memory"] = {"steps": len(batches), "samples": fw.memory(a.workload, batches, every)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out["seconds"] = time.perf_counter() - t0
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


def time_torch_save(workload: str, folder: str) -> float:
    """Median seconds of a synchronous ``torch.save`` of the model's and optimizer's state (5 saves)."""
    model = common.make_model(workload)
    opt = common.make_optimizer(model.parameters())
    path = os.path.join(folder, "probe.pt")
    times = []
    for _ in range(5):
        t = time.perf_counter()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def versions(framework: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    names = {"asyncloop": ["asyncloop", "trio"], "ignite": ["pytorch-ignite"], "torch": [],
             "lightning": ["lightning", "pytorch-lightning"], "fastai": ["fastai", "fastcore", "fastprogress"]}
    out = {"torch": torch.__version__}
    for n in names.get(framework, []):
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    main()
