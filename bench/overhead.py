"""Per-step overhead of asyncloop vs a bare torch loop, on the tiny workload of the issue tracker.

Workloads: ``tiny`` (default) is Linear(32, 32) -> ReLU -> Linear(32, 1), batch 32; ``small`` is
Linear(256, 512) -> ReLU -> Linear(512, 1), batch 64; ``medium`` is the MLP 512-1024-1024-10, batch 256. All:
MSE, SGD(lr=0.01), 1 torch thread, the same pre-built in-memory batches for every configuration. The iterable
stamps ``time.perf_counter()`` each time it hands out a batch; us/step is the mean step time over the window
after the warm-up steps. Configurations run interleaved, in rotating order, ``--repeats`` times; we report
medians, the ratio to the bare loop measured in the same round (median of per-round ratios) and the absolute
cost in us per step over that bare loop (median of per-round differences).

Configurations:

* ``bare``: hand-written torch loop.
* ``linear_none``: asyncloop with no callback at all (the loop's own cost: step state, event dispatch).
* ``linear_defaults`` / ``actor_defaults``: asyncloop with the default callbacks (ProgressPrinter to devnull,
  MetricsPrinter to devnull, StopOnNaNLoss, Recorder, Metrics) under each runner.
* ``bare_blocking``: the bare loop calling a blocking observer (``time.sleep(step)``) inline every step.
* ``linear_blocking`` / ``actor_blocking``: the defaults plus a detached observer that blocks for one bare
  step's duration at every StepEnd (``time.sleep`` with an argument calibrated so that the measured block
  equals the bare step: a VM's sleep overshoots by tens of microseconds).

Run: ``.venv/bin/python bench/overhead.py [--workload small|medium]`` (writes
bench/results/overhead_<workload>.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import trio  # noqa: E402

import asyncloop  # noqa: E402

DEVNULL = open(os.devnull, "w")


class StampedBatches:
    """A sized iterable of batches that records when each batch is handed out."""

    def __init__(self, batches: list) -> None:
        self.batches = batches
        self.stamps: list[float] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        stamps = self.stamps
        stamps.clear()
        for batch in self.batches:
            stamps.append(time.perf_counter())
            yield batch
        stamps.append(time.perf_counter())

    def us_per_step(self, warmup: int) -> float:
        s = self.stamps[warmup:]
        return (s[-1] - s[0]) / (len(s) - 1) * 1e6


#: name -> (layer widths, batch size): "tiny" is the issue tracker's workload, "small" one whose bare step here
#: (~0.5 ms) is what shared/reference/peer-overhead.md measured for "tiny" on a busier VM, "medium" a
#: compute-bound one.
WORKLOADS = {"tiny": ((32, 32, 1), 32), "small": ((256, 512, 1), 64), "medium": ((512, 1024, 1024, 10), 256)}
WORKLOAD = "tiny"


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    widths, _ = WORKLOADS[WORKLOAD]
    layers: list[torch.nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def make_batches(n: int) -> list:
    g = torch.Generator().manual_seed(1)
    widths, batch = WORKLOADS[WORKLOAD]
    return [(torch.randn(batch, widths[0], generator=g), torch.randn(batch, widths[-1], generator=g)) for _ in range(n)]


def bare(batches: StampedBatches, observer_s: float = 0.0) -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.functional.mse_loss
    for xs, ys in batches:
        preds = model(xs)
        loss = loss_fn(preds, ys)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if observer_s:
            time.sleep(observer_s)


class BlockingObserver(asyncloop.Callback):
    """A read-only callback whose handler blocks (like slow I/O) for a fixed time at every StepEnd."""

    state_access = {"step": {"loss": asyncloop.Read()}}
    detached = True

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    @asyncloop.on(asyncloop.StepEnd)
    def step_end(self, event, phase, learner) -> None:
        time.sleep(self.seconds)


def run_asyncloop(batches: StampedBatches, runner: str, observer_s: float = 0.0, defaults: bool = True) -> None:
    callbacks = [asyncloop.ProgressPrinter(file=DEVNULL), asyncloop.MetricsPrinter(file=DEVNULL)] if defaults else []
    if observer_s:
        callbacks.append(BlockingObserver(observer_s))
    learner = asyncloop.Learner(
        make_model(),
        torch.nn.functional.mse_loss,
        data=(batches, None),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
        callbacks=callbacks,
        use_default_callbacks=defaults,
        runner=asyncloop.ActorRunner() if runner == "actor" else asyncloop.LinearRunner(),
    )
    trio.run(asyncloop.fit, learner, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    parser.add_argument("--out", default=None, help="default: bench/results/overhead_<workload>.json")
    args = parser.parse_args()
    global WORKLOAD
    WORKLOAD = args.workload
    torch.set_num_threads(1)
    batches = StampedBatches(make_batches(args.steps))

    # Calibrate the blocking observer so that it really blocks for one bare step (time.sleep overshoots by
    # tens of microseconds on a VM, which matters at ~100 us steps).
    for _ in range(2):
        bare(batches)
    bare_step_s = statistics.median(_time(bare, batches, args.warmup) for _ in range(5)) / 1e6
    step_s = calibrate_sleep(bare_step_s)

    configs = {
        "bare": lambda: bare(batches),
        "linear_none": lambda: run_asyncloop(batches, "linear", defaults=False),
        "linear_defaults": lambda: run_asyncloop(batches, "linear"),
        "actor_defaults": lambda: run_asyncloop(batches, "actor"),
        "bare_blocking": lambda: bare(batches, step_s),
        "linear_blocking": lambda: run_asyncloop(batches, "linear", step_s),
        "actor_blocking": lambda: run_asyncloop(batches, "actor", step_s),
    }
    for fn in configs.values():  # pre-warm every configuration once
        fn()
    gc.collect()
    gc.freeze()
    results: dict[str, list[float]] = {name: [] for name in configs}
    ratios: dict[str, list[float]] = {name: [] for name in configs}
    diffs: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        round_us = {}
        for name in order:
            gc.collect()
            configs[name]()
            round_us[name] = batches.us_per_step(args.warmup)
            results[name].append(round_us[name])
        for name in names:
            ratios[name].append(round_us[name] / round_us["bare"])
            diffs[name].append(round_us[name] - round_us["bare"])

    rows = []
    blocked_s = measured_sleep(step_s, 1000)
    print(f"{args.workload} workload, {args.steps} steps (warm-up {args.warmup}), {args.repeats} interleaved repeats; "
          f"bare step {bare_step_s * 1e6:.0f} us; blocking observer: time.sleep({step_s * 1e6:.0f} us) "
          f"blocks {blocked_s * 1e6:.0f} us per step")
    print(f"{'config':<18}{'us/step median':>16}{'us/step min':>13}{'us over bare':>14}{'ratio to bare':>15}")
    for name in names:
        med, low, ratio = statistics.median(results[name]), min(results[name]), statistics.median(ratios[name])
        extra = statistics.median(diffs[name])
        rows.append({"config": name, "us_per_step_median": med, "us_per_step_min": low, "us_over_bare": extra,
                     "ratio_to_bare": ratio})
        print(f"{name:<18}{med:>16.0f}{low:>13.0f}{extra:>+14.0f}{ratio:>15.2f}")
    out = Path(args.out or Path(__file__).parent / "results" / f"overhead_{args.workload}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "trio": trio.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "bare_step_us": bare_step_s * 1e6,
        "observer_sleep_arg_us": step_s * 1e6,
        "observer_blocks_us": blocked_s * 1e6,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "workload": args.workload,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


def measured_sleep(request: float, n: int = 300) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        time.sleep(request)
    return (time.perf_counter() - t0) / n


def calibrate_sleep(target: float) -> float:
    """The ``time.sleep`` argument whose measured duration is closest to ``target`` seconds."""
    low, high = 0.0, target
    for _ in range(12):
        mid = (low + high) / 2
        if measured_sleep(mid) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _time(fn, batches: StampedBatches, warmup: int) -> float:
    fn(batches)
    return batches.us_per_step(warmup)


if __name__ == "__main__":
    main()
