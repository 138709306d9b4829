"""The paired, interleaved timing harness a worker runs for one framework on one workload.

Every configuration is timed right after a bare loop over the same batches in the same process; the rounds
rotate the order of the configurations. Per pair we keep the configuration's and the bare loop's us/step (wall
and CPU), their difference and their ratio; the report takes medians over the rounds.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import common


class Unsupported(Exception):
    """A configuration this version of the framework cannot run: reported as n/a with the message."""


@dataclass
class Config:
    name: str
    scenario: str
    fn: Callable  # batches -> the trained model
    base: str | None = None  # the configuration whose cost an observer's is counted against
    drained: bool = False  # the window ends when the observer (or checkpoint writer) is done, not at the last batch
    callbacks: int | None = None
    samples: dict = field(default_factory=dict)


def _measure(batches: common.StampedBatches, fn, drained: bool, whole: bool) -> tuple[float, float, float, object]:
    """Run ``fn``; return (wall us/step, CPU us/step, whole-fit wall us/step, model).

    The window starts when the first batch after the warm-up is drawn. It ends when the last batch has been
    used; for a ``drained`` configuration (a detached observer) when the observer finished its last event if
    that is later (time lost to the backlog counts). ``whole`` (the checkpoint stall): no warm-up, and the
    third value runs until the fit returned (writers drained, an epoch-end checkpoint included). CPU time is
    the process's and its waited-for children's, until the last batch (until the fit returned for ``drained``
    and ``whole``: a detached observer's CPU counts)."""
    common.LAST_DONE[0] = 0.0
    if whole:  # the last fit's files reach the disk now, not as writeback stealing CPU from this one
        os.sync()
    gc.collect()
    children0 = common._cpu() - time.process_time()
    model = fn(batches)
    returned = time.perf_counter()
    s, c, w = batches.stamps, batches.cpu, batches.warmup
    steps = len(s) - 1 - w
    if drained or whole:
        cpu = common._cpu() - children0 - c[w]
    else:
        cpu = c[-1] - c[w]
    end = max(s[-1], common.LAST_DONE[0]) if drained and not whole else s[-1]
    # the third value: until the fit returned (``whole``), else until the last batch (the loop alone, without
    # a detached observer's backlog)
    third = returned if whole else s[-1]
    return (end - s[w]) / steps * 1e6, cpu / steps * 1e6, (third - s[w]) / steps * 1e6, model


def run(configs: list[Config], workload: str, steps: int, warmup: int, rounds: int, whole: bool = False,
        bare_kwargs: dict | None = None, log=print) -> dict:
    """Time every configuration against the bare loop; returns {name: result dict}."""
    batches = common.StampedBatches(common.make_batches(workload, steps), 0 if whole else warmup)
    bare_kwargs = bare_kwargs or {}

    def bare_fn(b):
        return common.bare(workload, b, **bare_kwargs)

    results: dict[str, dict] = {}
    reference = bare_fn(batches)
    live = []
    for cfg in configs:  # one untimed pre-warm each, which also checks the weights
        try:
            model = cfg.fn(batches)
        except Unsupported as exc:
            results[cfg.name] = {"scenario": cfg.scenario, "na": str(exc)}
            log(f"  {cfg.name}: {exc}")
            continue
        diff = common.weights_diff(model, reference)
        results[cfg.name] = {"scenario": cfg.scenario, "base": cfg.base, "callbacks": cfg.callbacks,
                             "weights_max_abs_diff": diff, "same_weights": diff == 0.0,
                             "wall": [], "cpu": [], "bare_wall": [], "bare_cpu": []}
        if diff != 0.0:
            log(f"  WEIGHTS DIFFER: {cfg.name} max |diff| {diff:.3g} from the bare loop's")
        live.append(cfg)
    gc.collect()
    gc.freeze()
    for r in range(rounds):
        order = live[r % len(live):] + live[: r % len(live)] if live else []
        for cfg in order:
            bw, bc, bf, _ = _measure(batches, bare_fn, cfg.drained, whole)
            cw, cc, cf, _ = _measure(batches, cfg.fn, cfg.drained, whole)
            res = results[cfg.name]
            res["wall"].append(cw)
            res["cpu"].append(cc)
            res["bare_wall"].append(bw)
            res["bare_cpu"].append(bc)
            if whole:
                res.setdefault("fit", []).append(cf)
                res.setdefault("bare_fit", []).append(bf)
            elif cfg.drained:
                res.setdefault("loop", []).append(cf)
        log(f"  round {r + 1}/{rounds} done")
    gc.unfreeze()
    for res in results.values():
        if "na" in res:
            continue
        d = [c - b for c, b in zip(res["wall"], res["bare_wall"])]
        dc = [c - b for c, b in zip(res["cpu"], res["bare_cpu"])]
        res.update(
            us_per_step=statistics.median(res["wall"]),
            bare_us_per_step=statistics.median(res["bare_wall"]),
            over_bare_us=statistics.median(d),
            ratio=statistics.median(c / b for c, b in zip(res["wall"], res["bare_wall"])),
            cpu_us_per_step=statistics.median(res["cpu"]),
            cpu_over_bare_us=statistics.median(dc),
        )
        if "loop" in res:
            res["loop_over_bare_us"] = statistics.median(c - b for c, b in zip(res["loop"], res["bare_wall"]))
        if "fit" in res:
            res["fit_over_bare_us"] = statistics.median(c - b for c, b in zip(res["fit"], res["bare_fit"]))
    return results


def tmpdir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("PEERS_TMP"))
