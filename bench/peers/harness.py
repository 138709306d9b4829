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


#: Steps before each checkpoint whose mean is the in-run baseline (:func:`in_run_lost`).
PRE_STEPS = 100


def in_run_lost(stamps: list[float], every: int, pre: int = PRE_STEPS) -> list[float]:
    """Training time lost to each checkpoint of one fit, in ms, measured inside that fit (drift-free).

    The checkpoint after step ``c`` (``c`` a multiple of ``every``) falls into step ``c``'s interval, from batch
    ``c`` handed out to batch ``c + 1``. Its cost is the time the ``every - pre`` steps from there took beyond
    the mean of the ``pre`` steps before it, with that window's 5 slowest steps left out (a stray slow step there
    would count ``every - pre`` times). A checkpoint whose window runs past the fit's last batch is left out;
    none is measured when ``every < 2 * pre``. Free of the 10-20% drift of the step time between two fits, not of
    the drift within one: the paired bare loop's value over the same windows (it saves nothing) shows that, and
    ``harness.run`` subtracts it."""
    if every < 2 * pre:  # too few steps between checkpoints for a baseline (the smoke mode)
        return []
    dt = [b - a for a, b in zip(stamps, stamps[1:])]
    post = every - pre
    out = []
    for c in range(every, len(dt) + 1, every):
        if c - 1 + post > len(dt):
            break
        before = sorted(dt[c - 1 - pre: c - 1])[: pre - 5]
        out.append((sum(dt[c - 1: c - 1 + post]) - post * statistics.fmean(before)) * 1e3)
    return out


def run(configs: list[Config], workload: str, steps: int, warmup: int, rounds: int, whole: bool = False,
        bare_kwargs: dict | None = None, log=print, ckpt_every: int = 0) -> dict:
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
            bare_in_run = in_run_lost(batches.stamps, ckpt_every) if ckpt_every else []
            cw, cc, cf, _ = _measure(batches, cfg.fn, cfg.drained, whole)
            res = results[cfg.name]
            if ckpt_every:
                cfg_in_run = in_run_lost(batches.stamps, ckpt_every)
                res.setdefault("in_run_ms", []).append(cfg_in_run)
                res.setdefault("bare_in_run_ms", []).append(bare_in_run)
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
        if res.get("in_run_ms"):  # per round: the mean over its checkpoints, minus the paired bare loop's
            per_round = [statistics.fmean(c) - statistics.fmean(b) for c, b in zip(res["in_run_ms"],
                                                                                  res["bare_in_run_ms"]) if c and b]
            if per_round:
                res["in_run_lost_ms"] = statistics.median(per_round)
                res["in_run_bias_ms"] = statistics.median(statistics.fmean(b) for b in res["bare_in_run_ms"] if b)
        if "fit" in res:
            res["fit_over_bare_us"] = statistics.median(c - b for c, b in zip(res["fit"], res["bare_fit"]))
    return results


def tmpdir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("PEERS_TMP"))
