"""Instructions per training step, counted by valgrind (callgrind): a measure this VM's noise cannot move.

Wall-clock differences of a few microseconds per step sit inside the noise of a 2-vCPU VM (single rounds of the
peers suite move by +-50 us); the number of instructions a step executes does not. This script runs each
configuration twice in one process under callgrind, for ``--n1`` and ``--n2`` steps, and reads the instruction
count of each run from a dump taken right after it: (Ir(n2) - Ir(n1)) / (n2 - n1) is the configuration's
instructions per step, free of its set-up and teardown. Everything the process executes counts, every thread
included: a detached actor's work is in its configuration's count (and varies a little with the threads'
timing, so each configuration is measured ``--repeats`` times).

Instructions are not time (cache misses and the CPU's parallelism are not counted), but for the Python code the
loop runs they track it closely, and they say which of two versions does less work, reproducibly. The bench
uses the peers suite's workloads and configurations (bench/peers); run it with the peers environment's Python
to count ignite too (``bash bench/peers/run.sh --smoke`` creates it), or with the project's to count asyncloop
alone:

    bench/peers/.venv/bin/python bench/instructions.py --out bench/results/instructions.json

Needs ``valgrind`` (with its headers, for the dump request) and a C compiler; takes ~3 minutes per configuration
pair on one core, mostly for importing torch under valgrind.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import glob
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))

#: A C function that asks callgrind to dump its counters, labelled (valgrind's client request).
_DUMP_C = r"""
#include <valgrind/callgrind.h>
void dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }
void zero(void) { CALLGRIND_ZERO_STATS; }
"""

ASYNCLOOP = ("linear_none", "linear_defaults", "actor_none", "actor_defaults")
IGNITE = ("engine_none", "engine_defaults")


def _configs(workload: str) -> dict:
    import common
    import fw_asyncloop

    fns = {"bare": lambda b: common.bare(workload, b)}
    modules = [fw_asyncloop]
    try:
        import fw_ignite
    except ImportError:  # the project's environment: asyncloop alone
        pass
    else:
        modules.append(fw_ignite)
    for module in modules:
        for config in module.configs(workload, {"a", "b"}, 0, tempfile.gettempdir()):
            fns[config.name] = config.fn
    return fns


def child(args: argparse.Namespace) -> None:
    """Under callgrind: run each configuration for n1 and n2 steps, dumping the counters after each run."""
    import torch

    import common

    torch.set_num_threads(1)
    lib = ctypes.CDLL(args.helper)
    fns = _configs(args.workload)
    names = [n for n in args.configs if n in fns]
    short = common.StampedBatches(common.make_batches(args.workload, args.n1), 0)
    long = common.StampedBatches(common.make_batches(args.workload, args.n2), 0)
    for name in names:  # warm: first-call costs (imports, caches) out of the measured runs
        fns[name](short)
    lib.zero()
    lib.dump(b"warm")
    for rep in range(args.repeats):
        for name in names:
            for n, batches in ((args.n1, short), (args.n2, long)):
                gc.collect()
                gc.freeze()  # no full collection of the imported modules inside a measured run
                lib.zero()
                fns[name](batches)
                lib.dump(f"{name}:{n}:{rep}".encode())


def _total(path: str) -> int:
    out = subprocess.run(["callgrind_annotate", "--threshold=1", path], capture_output=True, text=True).stdout
    found = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", out)
    if found is None:
        raise RuntimeError(f"callgrind_annotate found no totals in {path}")
    return int(found.group(1).replace(",", ""))


def _read(prefix: str) -> dict[tuple[str, int, int], int]:
    runs = {}
    for path in glob.glob(prefix + ".*"):
        with open(path) as f:
            label = next((line.split(": ", 3)[-1].strip() for line in f if line.startswith("desc: Trigger:")), "")
        if label.count(":") == 2:
            name, n, rep = label.split(":")
            runs[(name, int(n), int(rep))] = _total(path)
    return runs


def summarise(runs: dict[tuple[str, int, int], int], configs: list[str], n1: int, n2: int) -> list[dict]:
    """One row per configuration from the runs' instruction counts ``{(config, steps, repeat): Ir}``: its
    instructions per step in each repeat, ``(Ir(n2) - Ir(n1)) / (n2 - n1)``, and the median's excess over the bare
    loop's median, absolute and in % of the bare step."""
    per: dict[str, list[float]] = {}
    for (name, n, rep), ir in sorted(runs.items()):
        if n == n2 and (name, n1, rep) in runs:
            per.setdefault(name, []).append((ir - runs[(name, n1, rep)]) / (n2 - n1))
    if "bare" not in per:
        raise SystemExit("no bare loop was measured: keep 'bare' in --configs")
    bare = statistics.median(per["bare"])
    rows = []
    for name in [n for n in configs if n in per]:
        values = per[name]
        over = statistics.median(values) - bare
        rows.append({"config": name, "per_step": [round(v) for v in values], "over_bare": round(over),
                     "over_bare_pct": round(100 * over / bare, 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="tiny")
    parser.add_argument("--configs", nargs="*", default=["bare", *ASYNCLOOP, *IGNITE])
    parser.add_argument("--n1", type=int, default=50)
    parser.add_argument("--n2", type=int, default=450)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--note", default="")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--helper", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    for tool in ("valgrind", "callgrind_annotate", "cc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/instructions.py needs {tool}: apt-get install valgrind gcc")
    with tempfile.TemporaryDirectory() as tmp:
        source, helper = os.path.join(tmp, "dump.c"), os.path.join(tmp, "libdump.so")
        with open(source, "w") as f:
            f.write(_DUMP_C)
        subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", helper, source], check=True)
        prefix = os.path.join(tmp, "cg")
        started = time.time()
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}", sys.executable, __file__,
               "--child", "--helper", helper, "--workload", args.workload, "--n1", str(args.n1), "--n2",
               str(args.n2), "--repeats", str(args.repeats), "--configs", *args.configs]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"the run under callgrind failed (rc {done.returncode})")
        runs = _read(prefix)
        seconds = time.time() - started
    rows = summarise(runs, args.configs, args.n1, args.n2)
    print(f"Instructions per step (callgrind), workload {args.workload}, steps {args.n1} -> {args.n2}, "
          f"{args.repeats} repeats, {seconds:.0f} s")
    print(f"{'config':18} {'Ir/step (each repeat)':>28} {'over bare':>10} {'% of bare':>9}")
    for row in rows:
        each = ", ".join(f"{v:,}" for v in row["per_step"])
        print(f"{row['config']:18} {each:>28} {row['over_bare']:>+10,} {row['over_bare_pct']:>8.1f}%")
    ignite = next((r["over_bare"] for r in rows if r["config"] == "engine_none"), None)
    if ignite:
        for row in rows:
            if row["config"].endswith("_defaults") and not row["config"].startswith("engine"):
                print(f"{row['config']}: {row['over_bare'] / ignite:.2f} of ignite's minimal engine "
                      f"(target: at most 1/3)")
    if args.out:
        import torch

        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"workload": args.workload, "n1": args.n1, "n2": args.n2, "repeats": args.repeats,
                       "seconds": round(seconds), "note": args.note,
                       "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "python": platform.python_version(), "torch": torch.__version__, "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
