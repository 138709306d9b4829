"""How much GIL-free work on a second thread slows a single-threaded training loop on this machine.

A detached writer (a checkpoint's serialisation, copy into the page cache, fsync) runs beside training on the
other core; on a VM the two vCPUs may share caches and memory bandwidth, so even work that never takes the GIL
can slow the training thread. This measures that directly: the workload's bare torch loop (bench/peers/common.py)
timed alone and while a background thread loops over one kind of GIL-free work on a 100 MB tensor:

* ``sleep``: wakes every 10 ms and does nothing (the cost of a second thread existing);
* ``crc``: ``zlib.crc32`` over the tensor's bytes (a streaming read; what ``torch.save`` does per record);
* ``copy``: ``dst.copy_(src)`` (a streaming read and write; a checkpoint's snapshot copy);
* ``write``: writes the bytes to a file (the page-cache copy of a save); ``write+fsync``: and fsyncs it;
* ``python process``: another *process* running pure-Python work non-stop (what a process actor's worker does
  with a GIL-bound observer): it shares no GIL with training, only the machine.

Conditions run interleaved, ``--rounds`` times; the table gives the median us/step and its ratio to ``none``
(median of per-round ratios). Run: ``.venv/bin/python bench/corun.py --workload small --rounds 7`` (writes
bench/results/corun_<workload>.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "peers"))
import common  # noqa: E402

KINDS = ("none", "sleep", "crc", "copy", "write", "write+fsync", "python process")


def _python_work(stop: Any) -> None:
    """Pure-Python work until ``stop`` is set (runs in a spawned process)."""
    while not stop.is_set():
        total = 0
        for i in range(20000):
            total += i * i % 7


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=["tiny", "small"], default="small")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    torch.set_num_threads(1)
    data = common.make_batches(a.workload, a.steps)
    src = torch.randn(5120, 5120)  # 105 MB, the size of the peers suite's checkpoint
    dst = torch.empty_like(src)
    raw = memoryview(src.numpy()).cast("B")
    scratch = Path(__file__).parent / "results" / ".corun.bin"

    def background(kind: str, stop: threading.Event) -> None:
        while not stop.is_set():
            if kind == "sleep":
                time.sleep(0.01)
            elif kind == "crc":
                zlib.crc32(raw)
            elif kind == "copy":
                dst.copy_(src)
            else:
                with open(scratch, "wb") as f:
                    f.write(raw)
                    if kind == "write+fsync":
                        f.flush()
                        os.fsync(f.fileno())

    def train() -> float:
        t0 = time.perf_counter()
        common.bare(a.workload, data)
        return (time.perf_counter() - t0) / len(data) * 1e6

    for _ in range(3):
        train()
    steps: dict[str, list[float]] = {k: [] for k in KINDS}
    ratios: dict[str, list[float]] = {k: [] for k in KINDS}
    try:
        for r in range(a.rounds):
            order = KINDS[r % len(KINDS):] + KINDS[: r % len(KINDS)]
            got = {}
            for kind in order:
                stop = threading.Event()
                thread = None
                if kind == "python process":
                    spawn = multiprocessing.get_context("spawn")
                    process_stop = spawn.Event()
                    process = spawn.Process(target=_python_work, args=(process_stop,))
                    process.start()
                    time.sleep(1.0)  # past the spawn and its imports
                    got[kind] = train()
                    process_stop.set()
                    process.join()
                    continue
                if kind != "none":
                    thread = threading.Thread(target=background, args=(kind, stop))
                    thread.start()
                    time.sleep(0.05)  # the background work is under way before the loop starts
                got[kind] = train()
                stop.set()
                if thread is not None:
                    thread.join()
            for kind in KINDS:
                steps[kind].append(got[kind])
                ratios[kind].append(got[kind] / got["none"])
    finally:
        scratch.unlink(missing_ok=True)
    print(f"{a.workload} workload, {a.steps} steps, {a.rounds} interleaved rounds; background work on a 105 MB tensor")
    print("| beside the training loop | us/step (median) | ratio to none (median of rounds) |")
    print("|---|---:|---:|")
    rows = []
    for kind in KINDS:
        med, ratio = statistics.median(steps[kind]), statistics.median(ratios[kind])
        rows.append({"background": kind, "us_per_step": med, "ratio": ratio, "rounds_us": steps[kind]})
        print(f"| {kind} | {med:.0f} | {ratio:.2f} |")
    out = Path(__file__).parent / "results" / f"corun_{a.workload}.json"
    out.write_text(json.dumps({"workload": a.workload, "steps": a.steps, "rounds": a.rounds,
                               "machine": platform.platform(), "load": os.getloadavg(),
                               "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
