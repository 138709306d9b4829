"""A/B of asyncloop between two source trees in ONE process, fits interleaved, each paired with a bare loop.

``bench/ab.py`` runs each tree in its own subprocess; on this VM a process's memory layout alone moves a tiny
step's overhead by ~10 us either way, so an A/B across processes can read a real 10 us gain as a loss (it did,
`bench/results/ab_session8.txt`). Here the old tree's package is copied under another name (``asyncloop_old``;
asyncloop imports itself relatively, so the copy is self-contained), both are imported into this process, and
every round runs each configuration of both trees in a shuffled order, each fit right after a bare loop over the
same batches. Reported: the median over the rounds of each fit's per-step overhead over its bare loop (wall and
process CPU), and the median of the paired per-round differences new - old.

    git worktree add /tmp/old <commit>
    .venv/bin/python bench/ab_inprocess.py /tmp/old --rounds 21 --out bench/results/ab_inprocess.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old_tree", help="a source tree (e.g. a git worktree) whose asyncloop/ is the A side")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--workload", default="tiny")
    parser.add_argument("--out", default=None)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    source = os.path.join(args.old_tree, "asyncloop")
    if not os.path.isdir(source):
        raise SystemExit(f"{args.old_tree} has no asyncloop/ package: pass the root of an asyncloop source tree")
    os.environ["OMP_NUM_THREADS"] = "1"
    tmp = tempfile.mkdtemp(prefix="asyncloop-ab-")
    shutil.copytree(source, os.path.join(tmp, "asyncloop_old"), ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, tmp)
    import torch
    import trio

    import asyncloop
    import asyncloop_old
    import overhead as ov

    torch.set_num_threads(1)
    ov.WORKLOAD = args.workload
    batches = ov.StampedBatches(ov.make_batches(args.steps))

    def fit(module, defaults: bool, runner: str = "linear") -> None:
        callbacks = [module.ProgressPrinter(file=ov.DEVNULL), module.MetricsPrinter(file=ov.DEVNULL)] if defaults else []
        learner = module.Learner(
            ov.make_model(), torch.nn.functional.mse_loss, data=(batches, None),
            optimizer=lambda p: torch.optim.SGD(p, lr=0.01), callbacks=callbacks, use_default_callbacks=defaults,
            runner=module.ActorRunner() if runner == "actor" else module.LinearRunner(),
        )
        trio.run(module.fit, learner, 1)

    configs = {}
    for side, module in (("old", asyncloop_old), ("new", asyncloop)):
        configs[f"{side}:linear_none"] = lambda m=module: fit(m, False)
        configs[f"{side}:linear_defaults"] = lambda m=module: fit(m, True)
        configs[f"{side}:actor_defaults"] = lambda m=module: fit(m, True, "actor")
    warm = args.steps // 10

    def measure(fn) -> tuple[float, float]:
        c0 = time.process_time()
        fn()
        return batches.us_per_step(warm), (time.process_time() - c0) / args.steps * 1e6

    for fn in configs.values():  # untimed pre-warm of each
        ov.bare(batches)
        fn()
    gc.collect()
    gc.freeze()
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    order = list(configs)
    shuffle = random.Random(0).shuffle
    started = time.time()
    for _ in range(args.rounds):
        shuffle(order)
        for name in order:
            bare_wall, bare_cpu = measure(lambda: ov.bare(batches))
            wall, cpu = measure(configs[name])
            rounds[name].append((wall - bare_wall, cpu - bare_cpu))
    rows = []
    print(f"{args.rounds} rounds x {args.steps} {args.workload} steps, {time.time() - started:.0f} s; us per step over "
          f"the paired bare loop (median of rounds), wall / CPU")
    print(f"{'config':17} {'old':>15} {'new':>15} {'new - old (paired)':>20} {'rounds new < old':>17}")
    for config in ("linear_none", "linear_defaults", "actor_defaults"):
        old, new = rounds[f"old:{config}"], rounds[f"new:{config}"]
        dwall = [b[0] - a[0] for a, b in zip(old, new)]
        dcpu = [b[1] - a[1] for a, b in zip(old, new)]
        row = {
            "config": config,
            "old": [statistics.median(x[0] for x in old), statistics.median(x[1] for x in old)],
            "new": [statistics.median(x[0] for x in new), statistics.median(x[1] for x in new)],
            "new_minus_old": [statistics.median(dwall), statistics.median(dcpu)],
            "rounds_new_faster": sum(d < 0 for d in dwall),
            "rounds": {"old": old, "new": new},
        }
        rows.append(row)
        print(f"{config:17} {row['old'][0]:+7.1f} / {row['old'][1]:+5.1f} {row['new'][0]:+7.1f} / {row['new'][1]:+5.1f} "
              f"{row['new_minus_old'][0]:+9.1f} / {row['new_minus_old'][1]:+6.1f} {row['rounds_new_faster']:>10}/{args.rounds}")
    shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"old_tree": args.old_tree, "rounds": args.rounds, "steps": args.steps, "workload": args.workload,
                       "note": args.note, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
