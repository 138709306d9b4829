"""Resume after a crash: a training process dies mid-epoch; a new one goes on from the last checkpoint.

1. A child process (this script with ``--child``) trains for N epochs with a ``Checkpointer`` and an event log.
   In epoch 3 a callback kills it with ``os._exit`` in the middle of a step: no ``finally``, no flush, no
   ``FitEnd``, as after a power cut or an out-of-memory kill.
2. The parent builds the same learner and calls ``fit(learner, until_epoch=N, resume=folder)``: the latest
   complete checkpoint (named by the file ``latest``) restores the weights, the optimizer, every callback's
   state, the histories and the random state, and training continues to epoch N. Checkpoints are written
   atomically (temporary file, fsync, rename), so a crash leaves complete checkpoints only.
3. For comparison the parent also trains the same learner for N epochs without a crash: the resumed weights
   are bit for bit the same.

The event log survives too: ``asyncloop log show`` reads what the dead process wrote (minus a torn last
record, which it skips), and the resumed fit appends to the same file under the same run name, marking the
rewind to the checkpoint's step.

    python examples/resume_after_crash.py [--quick] [--runner linear]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import trio

import asyncloop
from asyncloop import AbstractTrainingPhase, Callback, Checkpointer, EventLogBackend, LogMetrics, StepEnd, on
from asyncloop.logging import read_events

CRASH_EPOCH, CRASH_STEP = 3, 16


class Crash(Callback):
    """Kill the process at training step ``step`` of epoch ``epoch`` (a stand-in for any hard crash)."""

    state_access = {"cbstate": {"history": asyncloop.Read()}}
    run_after = (asyncloop.Recorder,)

    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step

    @on(StepEnd, AbstractTrainingPhase)
    def maybe_crash(self, event, phase, learner):
        history = learner.cbstate.history[phase]
        if history.epochs + 1 == self.epoch and history.steps_epoch == self.step:
            print(f"child: killed in epoch {self.epoch}, step {self.step}", flush=True)
            os._exit(3)


def make_learner(folder: Path, runner: str, *extra: Callback) -> asyncloop.Learner:
    """The same learner in every process: data, initial weights and random state all come from seed 0."""
    generator = torch.Generator().manual_seed(0)
    xs = torch.randn(1536, 8, generator=generator)
    ys = (xs[:, :4].sum(dim=1) > xs[:, 4:].sum(dim=1)).long()
    train = [(xs[i : i + 32], ys[i : i + 32]) for i in range(0, 1024, 32)]
    valid = [(xs[1024:], ys[1024:])]
    asyncloop.seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(64, 2))
    return asyncloop.Learner(
        model,
        torch.nn.functional.cross_entropy,
        data=(train, valid),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),  # momentum: optimizer state
        callbacks=[
            asyncloop.Recorder(),
            asyncloop.Metrics(asyncloop.accuracy),
            Checkpointer(folder / "checkpoints"),
            # inline (detached=False): every point is in the file before the crash; a detached logger's pending
            # points would die with the process, and the log could end before the checkpoint's step
            LogMetrics(EventLogBackend(folder / "events.alog", run="crashy"), detached=False),
            *extra,
        ],
        runner=asyncloop.ActorRunner() if runner == "actor" else asyncloop.LinearRunner(),
        use_default_callbacks=False,  # quiet: no progress bar or epoch table
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="resume a fit from its last checkpoint after a hard crash")
    parser.add_argument("--quick", action="store_true", help="4 epochs instead of 6 (for CI)")
    parser.add_argument("--runner", choices=("actor", "linear"), default="actor")
    parser.add_argument("--child", type=Path, metavar="FOLDER", help=argparse.SUPPRESS)  # the process that dies
    args = parser.parse_args(argv)
    epochs = 4 if args.quick else 6

    if args.child:  # 1. train until the crash
        learner = make_learner(args.child, args.runner, Crash(CRASH_EPOCH, CRASH_STEP))
        trio.run(asyncloop.fit, learner, epochs)
        return 0  # never reached

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        child = subprocess.run([sys.executable, __file__, "--child", str(folder), "--runner", args.runner],
                               capture_output=True, text=True)
        print(child.stdout, end="")
        print(f"child exited with status {child.returncode}; checkpoints left: "
              f"{sorted(p.name for p in (folder / 'checkpoints').glob('*.pt'))}")
        latest = (folder / "checkpoints" / "latest").read_text().strip()

        # 2. a new process (here: the parent) goes on from the latest complete checkpoint
        resumed = make_learner(folder, args.runner)
        result = trio.run(lambda: asyncloop.fit(resumed, until_epoch=epochs, resume=folder / "checkpoints"))
        history = resumed.cbstate.history[asyncloop.TrainingPhase()]
        print(f"resumed from {latest}: {result.epochs} more epochs, {history.epochs} in total")

        # 3. the same run without a crash
        straight = make_learner(Path(tmp) / "straight", args.runner)
        trio.run(asyncloop.fit, straight, epochs)
        same = all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
                                                     straight.model.state_dict().values()))
        print(f"identical to an uninterrupted run: {same}")

        with read_events(folder / "events.alog") as reader:  # what `asyncloop log show` prints
            kinds = [record["kind"] for record in reader]
        print(f"event log: {kinds.count('open')} sessions, {kinds.count('value')} values, {kinds.count('rewind')} "
              f"rewind, {kinds.count('close')} closed (the dead process never closed its session)")
        _, accuracy = resumed.cbstate.metrics_epoch[asyncloop.ValidationPhase()].last("Accuracy")
        print(f"resume_after_crash: {epochs} epochs, validation accuracy {accuracy:.3f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
