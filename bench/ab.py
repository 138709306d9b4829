"""A/B of one asyncloop configuration between two source trees (two commits), in alternating subprocesses.

Each subprocess imports asyncloop from its tree (PYTHONPATH) and bench/overhead.py from it too, warms up, then
times 5 pairs (bare loop, configuration) of 2000 tiny steps; we keep the median per-step difference to the bare
loop (wall and process CPU). Rounds alternate which tree runs first. Used to check that a refactor costs
nothing per step: ``git worktree add /tmp/old <commit>`` then
``.venv/bin/python bench/ab.py /tmp/old . linear_defaults 6``.

usage: ab.py OLD_TREE NEW_TREE CONFIG [rounds]   (CONFIG: linear_none, linear_defaults, actor_defaults)

Pitfall: a process's memory layout alone moves a tiny step's overhead by ~10 us either way, so differences of that
size between trees are noise here; bench/ab_inprocess.py runs both trees in one process and resolves them.
"""
import json, subprocess, sys, statistics
old, new, config = sys.argv[1:4]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 6
child = r'''
import sys, time, json, os
os.environ["OMP_NUM_THREADS"]="1"
sys.path.insert(0, sys.argv[1] + "/bench")
import overhead as ov, torch
torch.set_num_threads(1)
cfg = sys.argv[2]
batches = ov.StampedBatches(ov.make_batches(2000))
def run():
    if cfg == "bare": ov.bare(batches)
    elif cfg == "linear_none": ov.run_asyncloop(batches, "linear", defaults=False)
    elif cfg == "linear_defaults": ov.run_asyncloop(batches, "linear")
    elif cfg == "actor_defaults": ov.run_asyncloop(batches, "actor")
out = {"bare": [], cfg: []}
for _ in range(2): ov.bare(batches); run()
for _ in range(5):
    for name, fn in (("bare", lambda: ov.bare(batches)), (cfg, run)):
        c0 = time.process_time(); fn(); c = (time.process_time() - c0) / 2000 * 1e6
        out[name].append((batches.us_per_step(200), c))
print(json.dumps(out))
'''
res = {"old": [], "new": []}
for r in range(rounds):
    for label, tree in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
        env = dict(__import__("os").environ, PYTHONPATH=tree)
        p = subprocess.run([sys.executable, "-c", child, tree, config], capture_output=True, text=True, env=env)
        if p.returncode: print(p.stderr[-2000:]); sys.exit(1)
        d = json.loads(p.stdout.strip().splitlines()[-1])
        diffs = [c[0] - b[0] for b, c in zip(d["bare"], d[config])]
        cdiffs = [c[1] - b[1] for b, c in zip(d["bare"], d[config])]
        res[label].append((statistics.median(diffs), statistics.median(cdiffs), min(x[0] for x in d["bare"])))
for label in ("old", "new"):
    w = [x[0] for x in res[label]]; c = [x[1] for x in res[label]]; b = [x[2] for x in res[label]]
    print(f"{config:<16}{label}: wall over bare median {statistics.median(w):+.1f} us (runs {', '.join(f'{x:+.0f}' for x in w)}); CPU over bare {statistics.median(c):+.1f} us; bare min {min(b):.0f} us")
