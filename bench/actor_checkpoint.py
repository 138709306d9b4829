"""Checkpoint stall: training time lost per checkpoint of a ~100 MB model, against a synchronous torch.save.

The model holds ~100 MB of float32 (a frozen 25 M-parameter table, as when fine-tuning, and the tiny workload's
MLP as its trained head, batch 32), SGD, one torch thread: the step is cheap, so the stall is not lost in the
noise of a slow step. A ``Checkpointer(every_n_steps=N)`` saves the full training state (durably: temporary file, fsync,
rename) every N training steps. Each round runs one epoch of ``--steps`` steps for:

* ``none``: the defaults (printers to /dev/null) without a Checkpointer, under the ActorRunner;
* ``actor``: the same plus the Checkpointer, under the ActorRunner (detached: the training thread only clones
  the state, a worker thread writes it);
* ``linear``: the same under the LinearRunner (inline: the loop waits for every write);

* ``actor_inbox`` / ``process_inbox``: the same Checkpointer with an inbox that holds the steps between two
  checkpoints (``inbox_size = every + 8``), on its thread / with ``detached = "process"`` (torch.save runs in a
  worker process; the cloned state goes through shared memory). The shipped ``inbox_size = 4`` counts every
  ``StepEnd`` (each is an event for it, most with nothing to write), so a write that takes longer than four
  steps makes the loop wait for it;

and times ``sync_save``: the training state (``training_state(learner)``, tensors not cloned) saved with
``torch.save`` to a file in the same folder and fsynced: what a synchronous checkpoint costs. Time lost per checkpoint = (epoch time - ``none``'s epoch time in the same
round) / step checkpoints per epoch, over the training window (first batch handed out to the end of the epoch's
batches; ``--steps 3001 --every 1000``: three step checkpoints inside it, each further apart than a save takes). The epoch checkpoint at ``FitEnd`` is
outside the window (``fit`` waits for its write before it returns; the JSON has the whole fits' times too). Rounds interleave the
configurations in rotating order; we report medians. Target: ``actor`` loses at most 15% of ``sync_save``.

Run: ``.venv/bin/python bench/actor_checkpoint.py`` (writes bench/results/actor_checkpoint.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import trio

import asyncloop as al
from asyncloop._checkpoint import training_state

DEVNULL = open(os.devnull, "w")  # noqa: SIM115


class FineTuned(torch.nn.Module):
    """A ~100 MB model whose training step is cheap: a frozen 25 M-parameter table (as in fine-tuning) and a small
    trained head. The checkpoint holds all of it; the step costs what a tiny MLP's does."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(25_000_000) * 0.01, requires_grad=False)
        self.head = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        return self.head(xs + self.table[:32])


def make_learner(batches, runner: str, folder: str | None, every: int, process: bool = False,
                 inbox: int | None = None) -> al.Learner:
    torch.manual_seed(0)
    model = FineTuned()
    callbacks = [al.ProgressPrinter(file=DEVNULL), al.MetricsPrinter(file=DEVNULL)]
    if folder is not None:
        checkpointer = al.Checkpointer(folder, every_n_steps=every)
        if process:
            checkpointer.detached = "process"  # torch.save in a worker process: its pickling holds no GIL of ours
        if inbox is not None:
            checkpointer.inbox_size = inbox  # every StepEnd is an event in its inbox, not just the due ones
        callbacks.append(checkpointer)
    return al.Learner(model, torch.nn.functional.mse_loss, data=(batches, None),
                      optimizer=lambda p: torch.optim.SGD(p, lr=1e-4), callbacks=callbacks,
                      runner=al.ActorRunner() if runner == "actor" else al.LinearRunner())


class Stamped:
    """The batches, stamping when the first is handed out and when the iteration ends."""

    def __init__(self, batches: list) -> None:
        self.batches = batches
        self.window = (0.0, 0.0)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        t0 = time.perf_counter()
        yield from self.batches
        self.window = (t0, time.perf_counter())


def timed_fit(learner: al.Learner) -> tuple[float, float]:
    """(training time: first batch to the end of the epoch's iteration, the whole fit until it returned)."""
    t0 = time.perf_counter()
    trio.run(al.fit, learner, 1)
    total = time.perf_counter() - t0
    start, end = learner.data.training.window
    return end - start, total


def sync_save(learner: al.Learner, folder: str) -> float:
    """What the inline Checkpointer does, without its bookkeeping: take the state (no clone) and torch.save it to
    a file, fsynced."""
    t0 = time.perf_counter()
    state = training_state(learner, clone=False)
    path = os.path.join(folder, "sync.pt")
    torch.save(state, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    os.remove(path)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3001)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    batches = Stamped([(torch.randn(32, 32, generator=g), torch.randn(32, 1, generator=g))
                       for _ in range(args.steps)])
    root = tempfile.mkdtemp(prefix="asyncloop-ckpt-", dir=os.environ.get("CKPT_DIR"))
    try:
        learners = {
            "none": make_learner(batches, "actor", None, args.every),
            "actor": make_learner(batches, "actor", os.path.join(root, "actor"), args.every),
            "linear": make_learner(batches, "linear", os.path.join(root, "linear"), args.every),
            "actor_inbox": make_learner(batches, "actor", os.path.join(root, "ai"), args.every, inbox=args.every + 8),
            "process_inbox": make_learner(batches, "actor", os.path.join(root, "pi"), args.every, process=True,
                                          inbox=args.every + 8),
        }
        size_mb = sum(p.numel() * p.element_size() for p in learners["none"].model.parameters()) / 1e6
        for learner in learners.values():  # warm-up
            timed_fit(learner)
        per_epoch = (args.steps - 1) // args.every  # step checkpoints inside the training window
        times: dict[str, list[float]] = {name: [] for name in (*learners, "sync_save")}
        fits: dict[str, list[float]] = {name: [] for name in learners}
        lost: dict[str, list[float]] = {"actor": [], "linear": [], "actor_inbox": [], "process_inbox": []}
        names = list(learners)
        for r in range(args.repeats):
            round_s = {}
            for name in names[r % len(names):] + names[: r % len(names)]:
                round_s[name], whole = timed_fit(learners[name])
                times[name].append(round_s[name])
                fits[name].append(whole)
            times["sync_save"].append(sync_save(learners["none"], root))
            for name in lost:
                lost[name].append((round_s[name] - round_s["none"]) / per_epoch)
        save = statistics.median(times["sync_save"])
        rows = {name: {"lost_per_checkpoint_ms": statistics.median(v) * 1e3,
                       "spread_ms": [min(v) * 1e3, max(v) * 1e3],
                       "share_of_sync_save": statistics.median(v) / save} for name, v in lost.items()}
        print(f"model {size_mb:.0f} MB, {args.steps} steps per epoch, a checkpoint every {args.every} steps, "
              f"{args.repeats} rounds; epoch without checkpoints {statistics.median(times['none']):.2f} s; "
              f"synchronous torch.save {save * 1e3:.0f} ms (spread {min(times['sync_save']) * 1e3:.0f}.."
              f"{max(times['sync_save']) * 1e3:.0f})")
        print("| runner | time lost per checkpoint (ms) | spread (ms) | share of a synchronous save |")
        print("|---|---:|---:|---:|")
        for name, row in rows.items():
            lo, hi = row["spread_ms"]
            print(f"| {name} | {row['lost_per_checkpoint_ms']:.0f} | {lo:.0f}..{hi:.0f} | "
                  f"{row['share_of_sync_save']:.0%} |")
        shares = {name: rows[name]["share_of_sync_save"] for name in ("actor", "actor_inbox", "process_inbox")}
        noisy = any(v < 0 for v in shares.values()) or any(rows[n]["spread_ms"][0] < 0 for n in shares)
        verdict = ("target: ActorRunner loses <= 15% of a synchronous save: "
                   + ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
                   + (": INCONCLUSIVE (a configuration lost less than none in some round: the noise exceeds the "
                      "effect)" if noisy else
                      ": HOLDS for " + ", ".join(n for n, v in shares.items() if v <= 0.15)
                      if min(shares.values()) <= 0.15 else ": MISSED"))
        print(verdict)
        out = Path(__file__).parent / "results" / "actor_checkpoint.json"
        out.write_text(json.dumps({
            "meta": {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M"),
                     "python": platform.python_version(), "torch": torch.__version__, "load": os.getloadavg(),
                     "model_mb": size_mb, "sync_save_ms": save * 1e3},
            "rows": rows, "training_s": times, "whole_fit_s": fits, "target": verdict}, indent=1))
        print(f"wrote {out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
