"""Issue 14's runtime targets, each measured side by side with a bare torch loop in the same run.

Scenarios (``--scenario``, default all; ``--workload tiny|small`` where it applies):

* ``overhead``: the default callbacks under each runner (``linear_defaults``, ``actor_defaults``) and no callback
  (``linear_none``). Target: ActorRunner <= LinearRunner + 10 us per step.
* ``gil``: a GIL-bound observer (pure-Python work of about one bare step at every StepEnd, no default callbacks)
  inline (``linear_gil``), as a thread actor (``thread_gil``) and as a process actor (``process_gil``); the same
  with the defaults (``thread_gil_defaults``, ``process_gil_defaults``). Target (small): process <= 1.25x bare.
* ``blocking``: an observer that blocks (``time.sleep``) one bare step per step under the ActorRunner with the
  defaults, on a thread (``actor_blocking``) and in a process (``process_blocking``). Hidden share =
  1 - (config - actor_defaults) / blocked time. Target: >= 85% on small, >= 50% on tiny.
* ``scale``: 0, 1, 10 and 50 trivial inline callbacks on StepEnd (no defaults), both runners. Target: <= 2 us per
  extra callback (slope of a least-squares line). Also counts how often the graph and plans are built per fit.

Method (as bench/overhead.py): the same model, data and optimizer for every configuration; the batch iterable
stamps ``perf_counter`` and ``process_time`` (CPU of the whole process, every thread) per batch; us/step is the
mean over the steps after the warm-up. Each configuration keeps one learner for the whole run (a process actor's
worker is spawned once, when its learner is built, and warmed up before timing) and runs one epoch per round;
rounds interleave the configurations in rotating order, each timed right after a bare loop (pairs), and we
report the median of the per-pair differences and ratios. A process actor's own CPU is in its worker process and
not in the CPU column (the training process pays the pickling and the pipe).

Run: ``.venv/bin/python bench/actor_targets.py --workload small --scenario gil`` (writes
bench/results/actor_<scenario>_<workload>.json).
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

import torch
import trio

sys.path.insert(0, str(Path(__file__).parent))
import overhead as ov

import asyncloop as al

DEVNULL = open(os.devnull, "w")  # noqa: SIM115


class Stamped(ov.StampedBatches):
    """Batches that stamp wall and CPU time as each is handed out."""

    def __init__(self, batches: list) -> None:
        super().__init__(batches)
        self.cpu: list[float] = []

    def __iter__(self):
        stamps, cpu = self.stamps, self.cpu
        stamps.clear()
        cpu.clear()
        for batch in self.batches:
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            yield batch
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())

    def cpu_us_per_step(self, warmup: int) -> float:
        c = self.cpu[warmup:]
        return (c[-1] - c[0]) / (len(c) - 1) * 1e6


def burn(n: int) -> int:
    """Pure-Python work: holds the GIL for its whole duration."""
    x = 0
    for i in range(n):
        x += i * i
    return x


class GilObserver(al.Callback):
    """A read-only observer doing pure-Python work (``burn(n)``) at every StepEnd, e.g. building protobufs."""

    state_access = {"step": {"loss": al.Read()}}
    detached = True

    def __init__(self, n: int) -> None:
        self.n = n
        self.total = 0.0

    def snapshot(self, event, phase, learner, *, copy=True):
        return float(learner.step.loss)

    @al.on(al.StepEnd, al.AbstractTrainingPhase)
    def step_end(self, event, phase, loss) -> None:
        burn(self.n)
        self.total += loss


class ProcessGilObserver(GilObserver):
    detached = "process"


class ProcessBlockingObserver(ov.BlockingObserver):
    detached = "process"


class Trivial(al.Callback):
    """An inline callback with an empty StepEnd handler."""

    @al.on(al.StepEnd, al.AbstractTrainingPhase)
    def step_end(self, event, phase, learner) -> None:
        pass


def make_learner(batches, runner: str, callbacks=(), defaults: bool = True) -> al.Learner:
    cbs = [al.ProgressPrinter(file=DEVNULL), al.MetricsPrinter(file=DEVNULL)] if defaults else []
    return al.Learner(
        ov.make_model(), torch.nn.functional.mse_loss, data=(batches, None),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01), callbacks=[*cbs, *callbacks],
        use_default_callbacks=defaults,
        runner=al.ActorRunner() if runner == "actor" else al.LinearRunner(),
    )


def bare_loop(batches):
    model = ov.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def run() -> None:
        for xs, ys in batches:
            loss = torch.nn.functional.mse_loss(model(xs), ys)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def fitter(learner: al.Learner, batches: Stamped):
    def run() -> None:
        trio.run(al.fit, learner, 1)
        # The window ends when fit returns (after the last events, the drain of every actor and teardown),
        # not when the last batch was handed out: an actor that lags must not hide its cost.
        batches.stamps[-1] = time.perf_counter()
        batches.cpu[-1] = time.process_time()

    return run


def measure(configs: dict, batches: Stamped, repeats: int, warmup: int) -> dict:
    """Rounds of (bare, config) pairs for every config, in rotating order; per-pair differences and ratios."""
    bare = configs.pop("bare")
    for fn in [bare, *configs.values()]:  # pre-warm (a process actor's worker comes up here)
        fn()
        fn()
    gc.collect()
    gc.freeze()
    names = list(configs)
    out = {n: {"wall": [], "cpu": [], "bare_wall": [], "bare_cpu": []} for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            gc.collect()
            bare()
            out[name]["bare_wall"].append(batches.us_per_step(warmup))
            out[name]["bare_cpu"].append(batches.cpu_us_per_step(warmup))
            gc.collect()
            configs[name]()
            out[name]["wall"].append(batches.us_per_step(warmup))
            out[name]["cpu"].append(batches.cpu_us_per_step(warmup))
    rows = {}
    for name, m in out.items():
        diffs = [a - b for a, b in zip(m["wall"], m["bare_wall"])]
        rows[name] = {
            "us_per_step": statistics.median(m["wall"]),
            "bare_us_per_step": statistics.median(m["bare_wall"]),
            "us_over_bare": statistics.median(diffs),
            "us_over_bare_spread": [min(diffs), max(diffs)],
            "ratio_to_bare": statistics.median(a / b for a, b in zip(m["wall"], m["bare_wall"])),
            "cpu_us_over_bare": statistics.median(a - b for a, b in zip(m["cpu"], m["bare_cpu"])),
            "rounds": m,
        }
    return rows


def print_table(rows: dict) -> None:
    print("| config | us/step | paired bare | us over bare (wall) | spread | CPU us over bare | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        lo, hi = r["us_over_bare_spread"]
        print(f"| {name} | {r['us_per_step']:.0f} | {r['bare_us_per_step']:.0f} | {r['us_over_bare']:+.0f} | "
              f"{lo:+.0f}..{hi:+.0f} | {r['cpu_us_over_bare']:+.0f} | {r['ratio_to_bare']:.2f} |")


def bare_step_us(batches, warmup: int) -> float:
    """The bare step at its least disturbed (minimum of 7 runs), as the observer's work is calibrated by its
    minimum: on a loaded machine a median would make the observer heavier than a step."""
    run = bare_loop(batches)
    run()
    times = []
    for _ in range(7):
        run()
        times.append(batches.us_per_step(warmup))
    return min(times)


def calibrate_burn(target_us: float) -> int:
    n = 1000
    while True:
        t0 = time.perf_counter()
        burn(n)
        dt = (time.perf_counter() - t0) * 1e6
        if dt > 2000:
            break
        n *= 2
    per = min(_timed_burn(n) for _ in range(5)) / n
    return max(1, int(target_us / per))


def _timed_burn(n: int) -> float:
    t0 = time.perf_counter()
    burn(n)
    return (time.perf_counter() - t0) * 1e6


def scenario_configs(scenario: str, batches, bare_us: float) -> tuple[dict, dict]:
    configs: dict = {"bare": bare_loop(batches)}
    notes: dict = {}
    if scenario == "overhead":
        configs["linear_none"] = fitter(make_learner(batches, "linear", defaults=False), batches)
        configs["linear_defaults"] = fitter(make_learner(batches, "linear"), batches)
        configs["actor_defaults"] = fitter(make_learner(batches, "actor"), batches)
    elif scenario == "gil":
        n = calibrate_burn(bare_us)
        notes["burn_n"] = n
        notes["burn_us"] = statistics.median(_timed_burn(n) for _ in range(20))
        configs["actor_none"] = fitter(make_learner(batches, "actor", defaults=False), batches)
        configs["linear_gil"] = fitter(make_learner(batches, "linear", [GilObserver(n)], defaults=False), batches)
        configs["thread_gil"] = fitter(make_learner(batches, "actor", [GilObserver(n)], defaults=False), batches)
        configs["process_gil"] = fitter(make_learner(batches, "actor", [ProcessGilObserver(n)], defaults=False), batches)
        configs["actor_defaults"] = fitter(make_learner(batches, "actor"), batches)
        configs["thread_gil_defaults"] = fitter(make_learner(batches, "actor", [GilObserver(n)]), batches)
        configs["process_gil_defaults"] = fitter(make_learner(batches, "actor", [ProcessGilObserver(n)]), batches)
    elif scenario == "blocking":
        sleep_s = ov.calibrate_sleep(bare_us / 1e6)
        notes["sleep_arg_us"] = sleep_s * 1e6
        notes["blocks_us"] = ov.measured_sleep(sleep_s, 1000) * 1e6
        configs["actor_defaults"] = fitter(make_learner(batches, "actor"), batches)
        configs["actor_blocking"] = fitter(make_learner(batches, "actor", [ov.BlockingObserver(sleep_s)]), batches)
        configs["process_blocking"] = fitter(make_learner(batches, "actor", [ProcessBlockingObserver(sleep_s)]), batches)
    elif scenario == "scale":
        for runner in ("linear", "actor"):
            for k in (0, 1, 10, 50):
                configs[f"{runner}_{k}"] = fitter(make_learner(batches, runner, [Trivial() for _ in range(k)],
                                                              defaults=False), batches)
    return configs, notes


def build_counts(batches) -> dict:
    """How often one fit builds the callback graph and compiles plans (counted by wrapping them)."""
    import asyncloop._learner as learner_mod
    from asyncloop.runners._base import Runner

    counts = {"graph": 0, "plans": 0}
    graph_fn, compile_fn = learner_mod.callback_graph, Runner._compile_plan

    def graph(*a, **k):
        counts["graph"] += 1
        return graph_fn(*a, **k)

    learner = make_learner(batches, "actor", [Trivial() for _ in range(10)])
    plans_of = type(learner.runner)._compile_plan

    def plans(self, *a, **k):
        counts["plans"] += 1
        return plans_of(self, *a, **k)

    learner_mod.callback_graph = graph
    type(learner.runner)._compile_plan = plans
    try:
        result = {}
        for fit in (1, 2):
            counts.update(graph=0, plans=0)
            trio.run(al.fit, learner, 1)
            result[f"fit{fit}"] = dict(counts)
    finally:
        learner_mod.callback_graph = graph_fn
        type(learner.runner)._compile_plan = plans_of
    del compile_fn
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["overhead", "gil", "blocking", "scale"], action="append")
    parser.add_argument("--workload", choices=["tiny", "small"], default="small")
    parser.add_argument("--steps", type=int, default=None, help="default: 2000 (tiny), 600 (small)")
    parser.add_argument("--warmup", type=int, default=None, help="default: steps // 8")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ov.WORKLOAD = args.workload
    torch.set_num_threads(1)
    steps = args.steps or (2000 if args.workload == "tiny" else 600)
    warmup = args.warmup or steps // 8
    batches = Stamped(ov.make_batches(steps))
    bare_us = bare_step_us(batches, warmup)
    for scenario in args.scenario or ["overhead", "gil", "blocking", "scale"]:
        configs, notes = scenario_configs(scenario, batches, bare_us)
        t0 = time.perf_counter()
        rows = measure(configs, batches, args.repeats, warmup)
        print(f"\n## {scenario}, {args.workload} workload: {steps} steps (warm-up {warmup}), {args.repeats} paired "
              f"rounds, bare step {bare_us:.0f} us at calibration; {notes}; {time.perf_counter() - t0:.0f} s")
        print_table(rows)
        verdicts = targets(scenario, args.workload, rows, notes)
        if scenario == "scale":
            notes["builds_per_fit"] = build_counts(batches)
            print(f"graph builds / plan compilations per fit: {notes['builds_per_fit']}")
        for line in verdicts:
            print(line)
        out = Path(__file__).parent / "results" / f"actor_{scenario}_{args.workload}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "python": platform.python_version(),
                "torch": torch.__version__, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
                "load": os.getloadavg(), "steps": steps, "warmup": warmup, "bare_step_us": bare_us, **notes}
        out.write_text(json.dumps({"meta": meta, "rows": rows, "targets": verdicts}, indent=1))
        print(f"wrote {out}")


def targets(scenario: str, workload: str, rows: dict, notes: dict) -> list[str]:
    def verdict(ok: bool) -> str:
        return "HOLDS" if ok else "MISSED"

    lines = []
    if scenario == "overhead":
        d = rows["actor_defaults"]["us_over_bare"] - rows["linear_defaults"]["us_over_bare"]
        c = rows["actor_defaults"]["cpu_us_over_bare"] - rows["linear_defaults"]["cpu_us_over_bare"]
        lines.append(f"target ActorRunner <= LinearRunner + 10 us: {d:+.1f} us wall ({c:+.1f} us CPU): "
                     f"{verdict(d <= 10)}")
    elif scenario == "gil":
        for name in ("process_gil", "thread_gil", "linear_gil"):
            r = rows[name]["ratio_to_bare"]
            lines.append(f"{name}: {r:.2f}x bare" + (f" (target <= 1.25x: {verdict(r <= 1.25)})"
                                                      if name == "process_gil" else ""))
    elif scenario == "blocking":
        blocked = notes["blocks_us"]
        base = rows["actor_defaults"]["us_over_bare"]
        need = 0.85 if workload == "small" else 0.5
        for name in ("actor_blocking", "process_blocking"):
            hidden = 1 - (rows[name]["us_over_bare"] - base) / blocked
            notes[f"{name}_hidden"] = hidden
            lines.append(f"{name}: hides {hidden:.0%} of {blocked:.0f} us (target >= {need:.0%}): "
                         f"{verdict(hidden >= need)}")
    elif scenario == "scale":
        xs = [0, 1, 10, 50]
        for runner in ("linear", "actor"):
            wall = _slope(xs, [rows[f"{runner}_{k}"]["us_over_bare"] for k in xs])
            cpu = _slope(xs, [rows[f"{runner}_{k}"]["cpu_us_over_bare"] for k in xs])
            notes[f"{runner}_us_per_callback"] = {"wall": wall, "cpu": cpu}
            lines.append(f"{runner}: {cpu:.2f} us CPU ({wall:+.2f} us wall) per extra inline callback (least squares "
                         f"over 0/1/10/50; target <= 2): {verdict(cpu <= 2 and wall <= 2)}")
    return lines


def _slope(xs: list[int], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


if __name__ == "__main__":
    main()
