"""The harness of the slow-observer A/Bs (``early_handover.py``, ``switch_interval.py``).

One process, one learner per configuration, rounds interleaved: in each round, for each setting, a bare torch
loop, then a fit with the defaults, then a bare loop, then a fit with the defaults plus a detached observer that
sleeps one bare step at every ``StepEnd`` (calibrated: the ``time.sleep`` argument whose measured duration is one
bare step). Per setting: the median over rounds of (fit - paired bare) in us per step, for the defaults, for the
observer until it handled its last event (its backlog counts) and for the loop alone (until the last batch);
*hidden* = 1 - (observer - defaults) / one bare step. Prints a table and writes
bench/results/<slug>_<workload>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import trio  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "peers"))
import common  # noqa: E402

import asyncloop as al  # noqa: E402

DEVNULL = open(os.devnull, "w")  # noqa: SIM115
#: A setting of an A/B: keyword arguments for its ``ActorRunner``, and a function called (with True) before each
#: of its fits and (with False) after the run, for a setting that is not a runner argument (a module constant).
Setting = tuple[dict, Callable[[bool], None] | None]


def constant(module: object, name: str, value: object) -> Callable[[bool], None]:
    """A setting's function for a module constant: ``module.name`` is ``value`` while on, and back to the value it
    had when this was called (the shipped one) when off."""
    shipped = getattr(module, name)

    def apply(on: bool) -> None:
        setattr(module, name, value if on else shipped)

    return apply


class Stamped:
    """The batches, stamping when the first timed one (after the warm-up) and the end are reached."""

    def __init__(self, batches: list, warmup: int) -> None:
        self.batches, self.warmup = batches, warmup
        self.t0 = self.t1 = 0.0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i == self.warmup:
                self.t0 = time.perf_counter()
            yield batch
        self.t1 = time.perf_counter()


class Observer(al.Callback):
    """Sleeps ``seconds`` at every StepEnd on its actor thread; remembers when it finished the last one."""

    state_access = {"step": {"loss": al.Read()}}
    detached = True

    def __init__(self, seconds: float) -> None:
        self.seconds, self.last = seconds, 0.0

    @al.on(al.StepEnd)
    def step_end(self, event, phase, learner) -> None:
        time.sleep(self.seconds)
        self.last = time.perf_counter()


def main(title: str, slug: str, settings: dict[str, Setting], description: str) -> None:
    """Run the A/B of ``settings`` (name -> setting) from the command line; ``slug`` names the results file."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workload", choices=["tiny", "small"], default="small")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--rounds", type=int, default=9)
    a = p.parse_args()
    torch.set_num_threads(1)
    w, n = a.workload, a.steps
    data = Stamped(common.make_batches(w, n), n // 8)
    steps = n - n // 8

    def per_step(end: float | None = None) -> float:
        return ((end or data.t1) - data.t0) / steps * 1e6

    def bare() -> float:
        common.bare(w, data)
        return per_step()

    for _ in range(2):
        bare()
    base = statistics.median(bare() for _ in range(3)) / 1e6
    sleep = common.calibrate_sleep(base)
    observer = Observer(sleep)

    def learner(callbacks: list, runner_kwargs: dict) -> al.Learner:
        printers = [al.ProgressPrinter(file=DEVNULL), al.MetricsPrinter(file=DEVNULL)]
        return al.Learner(common.make_model(w), common.loss_fn, data=(data, None), optimizer=common.make_optimizer,
                          callbacks=printers + callbacks, runner=al.ActorRunner(**runner_kwargs))

    learners = {name: {"defaults": learner([], kwargs), "observer": learner([observer], kwargs)}
                for name, (kwargs, _) in settings.items()}
    rows: dict[str, dict[str, list[float]]] = {s: {"defaults": [], "observer": [], "loop": []} for s in settings}
    t_start = time.perf_counter()
    try:
        for _ in range(a.rounds):
            for setting, (_, apply) in settings.items():
                if apply is not None:
                    apply(True)
                for name, lrn in learners[setting].items():
                    b = bare()
                    trio.run(al.fit, lrn, 1)
                    if name == "observer":
                        rows[setting]["observer"].append(per_step(max(data.t1, observer.last)) - b)
                        rows[setting]["loop"].append(per_step() - b)
                    else:
                        rows[setting]["defaults"].append(per_step() - b)
    finally:
        for _, apply in settings.values():
            if apply is not None:
                apply(False)
    print(f"## {title}, {w} workload: {n} steps (warm-up {n // 8}), {a.rounds} interleaved rounds, bare step "
          f"{base * 1e6:.0f} us, observer sleeps {common.measured_sleep(sleep, 200) * 1e6:.0f} us per step; "
          f"{time.perf_counter() - t_start:.0f} s")
    print("| setting | defaults over bare (us) | observer over bare (us) | loop alone over bare (us) | hidden |")
    print("|---|---:|---:|---:|---:|")
    summary = {}
    for setting, r in rows.items():
        d, o, lp = (statistics.median(r[k]) for k in ("defaults", "observer", "loop"))
        hidden = 1 - (o - d) / (base * 1e6)
        summary[setting] = {"defaults_us": d, "observer_us": o, "loop_us": lp, "hidden": hidden, "rounds": r}
        print(f"| {setting} | {d:+.0f} | {o:+.0f} | {lp:+.0f} | {hidden:.0%} |")
    out = Path(__file__).parent / "results" / f"{slug}_{w}.json"
    out.write_text(json.dumps({"workload": w, "steps": n, "rounds": a.rounds, "bare_step_us": base * 1e6,
                               "machine": platform.platform(), "load": os.getloadavg(), "results": summary}, indent=1))
    print(f"wrote {out}")

