"""A/B of direct delivery on the peers suite's asyncloop scenarios: thread and process observers, GIL or not.

For each repeat and workload (tiny, small), the peers suite's worker (``bench/peers/worker.py``, in the peers
environment ``bench/peers/.venv`` that ``bench/peers/run.sh`` creates) runs asyncloop's defaults (b), slow
observer (d) and GIL-bound observer (e) scenarios twice, once with direct delivery (shipped) and once with
``--delivery loop`` (every detached actor's events through the caller's loop), in alternating order. Each
configuration is paired with a bare loop inside the worker as in the suite; the observers count until they
handled their last event. Per configuration and setting: the median over repeats of the worker's median paired
difference (us per step) and ratio to bare. Observer calibration: the suite's (one bare step), done here once
per workload.

Run (after ``bash bench/peers/run.sh --smoke`` created the environment): ``bench/peers/.venv/bin/python
bench/direct_delivery_suite.py --repeats 3`` (~5 minutes); prints a table and writes
bench/results/direct_delivery_suite.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
PEERS = HERE / "peers"
sys.path.insert(0, str(PEERS))

import suite  # noqa: E402

PLANS = {"tiny": (300, 50, 5), "small": (200, 40, 5)}
CONFIGS = ("actor_defaults", "actor_sleep", "process_sleep", "actor_gil", "process_gil")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "results" / "direct_delivery_suite.json"))
    a = p.parse_args()
    t_start = time.perf_counter()
    runs: dict = {w: {"direct": [], "loop": []} for w in PLANS}
    calibration = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workload, (steps, warmup, _) in PLANS.items():
            calibration[workload] = suite.calibrate(workload, steps, warmup)
        for r in range(a.repeats):
            for workload, (steps, warmup, rounds) in PLANS.items():
                c = calibration[workload]
                for delivery in (("direct", "loop") if r % 2 == 0 else ("loop", "direct")):
                    out = Path(tmp) / f"{workload}_{delivery}_{r}.json"
                    cmd = [sys.executable, str(PEERS / "worker.py"), "asyncloop", workload, "--steps", str(steps),
                           "--warmup", str(warmup), "--rounds", str(rounds), "--scenarios", "bde",
                           "--sleep", repr(c["sleep_arg_us"] / 1e6), "--gil", str(c["gil_n"]),
                           "--delivery", delivery, "--out", str(out)]
                    subprocess.run(cmd, cwd=PEERS, check=True, capture_output=True)
                    configs = json.loads(out.read_text())["configs"]
                    runs[workload][delivery].append({
                        name: {"over_bare_us": configs[name]["over_bare_us"], "ratio": configs[name]["ratio"]}
                        for name in CONFIGS})
                print(f"repeat {r + 1}/{a.repeats}, {workload} done", flush=True)
    print(f"\n## Direct delivery vs through the caller's loop, peers-suite scenarios ({a.repeats} repeats, "
          f"{time.perf_counter() - t_start:.0f} s)")
    print("| workload | configuration | direct: over bare (us) / ratio | through the loop: over bare (us) / ratio |")
    print("|---|---|---:|---:|")
    summary: dict = {}
    for workload in PLANS:
        for name in CONFIGS:
            row = {}
            for delivery in ("direct", "loop"):
                values = runs[workload][delivery]
                row[delivery] = {k: statistics.median(v[name][k] for v in values) for k in ("over_bare_us", "ratio")}
            summary.setdefault(workload, {})[name] = row
            d, lp = row["direct"], row["loop"]
            print(f"| {workload} | {name} | {d['over_bare_us']:+.0f} / {d['ratio']:.2f} | "
                  f"{lp['over_bare_us']:+.0f} / {lp['ratio']:.2f} |")
    Path(a.out).write_text(json.dumps({
        "repeats": a.repeats, "plans": PLANS, "calibration": calibration, "machine": platform.platform(),
        "load": os.getloadavg(), "summary": summary, "runs": runs}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
