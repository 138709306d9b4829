"""asyncloop against its peers (pytorch-ignite, Lightning, fastai), side by side in one run (issue 14).

Runs every scenario for every framework, each framework in its own subprocess (``worker.py``: it imports torch
and that framework only), then writes the Markdown table, the JSON and the plots under bench/results/peers/
and prints which of the issue's targets hold in this run.

Scenarios: (a) minimal trainer, no callbacks; (b) the defaults or the closest equivalent (progress + metrics);
(c) 1, 10, 50 trivial callbacks on step end; (d) a slow observer releasing the GIL (sleeps one bare step per
step); (e) a GIL-bound observer (one bare step of pure-Python work per step); (f) checkpoint stall (a ~105 MB
model checkpointed every N steps); (g) memory: RSS and a detached logger's lag over many tiny steps.

Usage: ``bash bench/peers/run.sh`` (creates bench/peers/.venv, then runs this with it), or
``python bench/peers/suite.py --smoke`` (seconds, asyncloop only: what CI runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

PEERS = ("ignite", "lightning", "fastai")
#: mode -> workload -> (steps, warm-up, rounds, scenarios); "ckpt" is the checkpoint stall (whole fits).
PLANS = {
    "full": {"tiny": (300, 50, 9, "abcde"), "small": (200, 40, 7, "abcde"), "medium": (20, 4, 3, "abd"),
             "ckpt": (2400, 0, 5, "f")},
    "quick": {"tiny": (300, 60, 3, "abcde"), "small": (200, 40, 3, "abcde"), "medium": (12, 3, 1, "abd"),
              "ckpt": (1600, 0, 1, "f")},
    "smoke": {"tiny": (60, 10, 1, "abcde"), "ckpt_smoke": (10, 0, 1, "f")},
}
#: Checkpoints further apart (~0.5 s of training) than a durable save of 105 MB takes here: three per full fit.
CKPT_EVERY = {"full": 800, "quick": 800, "smoke": 5}
MEMORY_STEPS = {"full": 100_000, "quick": 20_000, "smoke": 1_000}
LABELS = {"a": "minimal, no callbacks", "b": "defaults (progress + metrics)", "c": "trivial callbacks on step end",
          "d": "slow observer releasing the GIL", "e": "GIL-bound observer", "f": "checkpoint stall"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="seconds, asyncloop only (CI)")
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="a few minutes")
    p.add_argument("--frameworks", default=None, help="comma-separated subset of asyncloop,ignite,lightning,fastai")
    p.add_argument("--workloads", default=None, help="comma-separated subset of the mode's workloads")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "peers"))
    p.add_argument("--note", default="", help="a line recorded with the results (e.g. the machine's load)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild results.md, the targets and the plots from the measurements in OUT/results.json")
    a = p.parse_args(argv)
    if a.report_only:
        return rebuild(Path(a.out))
    a.mode = a.mode or "full"
    frameworks = a.frameworks.split(",") if a.frameworks else (
        ["asyncloop"] if a.mode == "smoke" else ["asyncloop", *PEERS])
    plan = PLANS[a.mode]
    if a.workloads:
        plan = {w: plan[w] for w in a.workloads.split(",")}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    import torch

    torch.set_num_threads(1)
    calibration = {}
    runs = []
    for workload, (steps, warmup, rounds, scenarios) in plan.items():
        extra = []
        if "f" in scenarios:
            extra = ["--ckpt-every", str(CKPT_EVERY[a.mode])]
            calibration[workload] = {}
        else:
            calibration[workload] = calibrate(workload, steps, warmup)
            c = calibration[workload]
            print(f"{workload}: bare step {c['bare_step_us']:.0f} us; observers: time.sleep({c['sleep_arg_us']:.0f} us)"
                  f" blocks {c['sleep_blocks_us']:.0f} us, gil_work({c['gil_n']}) takes {c['gil_us']:.0f} us",
                  flush=True)
            extra = ["--sleep", repr(c["sleep_arg_us"] / 1e6), "--gil", str(c["gil_n"])]
        fws = (["torch"] if "f" in scenarios else []) + frameworks
        for fw in fws:
            target = raw / f"{fw}_{workload}.json"
            cmd = [sys.executable, str(HERE / "worker.py"), fw, workload, "--steps", str(steps), "--warmup",
                   str(warmup), "--rounds", str(rounds), "--scenarios", scenarios, "--out", str(target), *extra]
            if fw == "asyncloop" and workload == "tiny":
                cmd += ["--memory-steps", str(MEMORY_STEPS[a.mode])]
            print("$", " ".join(Path(c).name if i < 2 else c for i, c in enumerate(cmd)), flush=True)
            proc = subprocess.run(cmd, env=env)
            if proc.returncode:
                print(f"worker {fw}/{workload} failed (exit {proc.returncode})", file=sys.stderr)
                return proc.returncode
            runs.append(json.loads(target.read_text()))
    meta = {
        "mode": a.mode,
        "command": command_line(a),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "seconds": time.perf_counter() - t0,
        "note": a.note,
        "plans": {w: dict(zip(("steps", "warmup", "rounds", "scenarios"), v)) for w, v in plan.items()},
        "ckpt_every": CKPT_EVERY[a.mode],
        "memory_steps": MEMORY_STEPS[a.mode],
        "calibration": calibration,
    }
    import report

    summary = report.build(meta, runs)
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    md = report.markdown(meta, summary)
    (out / "results.md").write_text(md)
    report.plots(summary, out)
    print(md)
    print(f"wrote {out}/results.md, results.json, callbacks.png, observer.png in {meta['seconds']:.0f} s")
    return 0


def rebuild(out: Path) -> int:
    """The report again from the recorded measurements (no new measurement)."""
    import report

    data = json.loads((out / "results.json").read_text())
    summary = report.build(data["meta"], data["runs"])
    (out / "results.json").write_text(json.dumps({"meta": data["meta"], "summary": summary, "runs": data["runs"]},
                                                 indent=1))
    (out / "results.md").write_text(report.markdown(data["meta"], summary))
    report.plots(summary, out)
    print(f"rebuilt {out}/results.md, results.json and the plots from the recorded runs")
    return 0


def calibrate(workload: str, steps: int, warmup: int) -> dict:
    """The bare step of this workload, and the observers' parameters that make each cost one bare step."""
    batches = common.StampedBatches(common.make_batches(workload, steps), warmup)
    common.bare(workload, batches)
    times = []
    for _ in range(5):
        common.bare(workload, batches)
        s = batches.stamps
        times.append((s[-1] - s[warmup]) / (len(s) - 1 - warmup))
    step = statistics.median(times)
    arg = common.calibrate_sleep(step)
    n = common.calibrate_gil(step)
    gil = statistics.median(common._median_time(lambda: common.gil_work(n), 21) for _ in range(3))
    return {"bare_step_us": step * 1e6, "sleep_arg_us": arg * 1e6,
            "sleep_blocks_us": common.measured_sleep(arg, 500) * 1e6, "gil_n": n, "gil_us": gil * 1e6}


def command_line(a) -> str:
    if a.mode == "full" and not a.frameworks and not a.workloads:
        return "bash bench/peers/run.sh"
    parts = ["python bench/peers/suite.py"]
    if a.mode != "full":
        parts.append(f"--{a.mode}")
    if a.frameworks:
        parts.append(f"--frameworks {a.frameworks}")
    if a.workloads:
        parts.append(f"--workloads {a.workloads}")
    return " ".join(parts)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
