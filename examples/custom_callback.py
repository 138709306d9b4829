"""Custom callbacks and a custom training phase, in the style of FluxTraining's docs.

* ``GradientNorm`` -- a callback that reads ``learner.step.grads`` at ``BackwardEnd`` and writes the global
  gradient norm of every step to ``learner.cbstate.grad_norms`` (so it declares ``Read()`` and ``Write()``);
* ``EpochReport`` -- a read-only callback with an ``async`` handler that appends a line per training epoch to a
  log file; ``run_after`` puts it after the ``MetricsPrinter``, and it is ``detached``, so under the
  ``ActorRunner`` its file I/O overlaps with training;
* ``ClippedTrainingPhase`` -- a custom phase: ``step`` is written with ``run_step`` (forward, loss, backward,
  gradient clipping, optimizer step, dispatching the usual events), ``epoch`` with ``run_epoch``, cutting the
  epoch short with ``CancelEpochException`` once a batch's loss is below a target.

This example runs the custom phase epoch by epoch with ``asyncloop.epoch``; ``fit(learner, n,
phases=(ClippedTrainingPhase(), None))`` runs it under ``fit`` (see ``examples/dict_batches.py``). Two callbacks
that write the same state, and ``resolve_conflict`` ordering them, are in ``examples/conflict.py``.

    python examples/custom_callback.py [--quick] [--runner linear]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import trio

import asyncloop
from asyncloop import (
    AbstractTrainingPhase,
    BackwardBegin,
    BackwardEnd,
    Callback,
    EpochEnd,
    LossBegin,
    Read,
    Write,
    on,
)


class GradientNorm(Callback):
    """Record the global L2 norm of the gradients of every training step in ``cbstate.grad_norms``."""

    state_access = {"step": {"grads": Read()}, "cbstate": {"grad_norms": Write()}}

    def init(self, learner):
        # init gets the unprotected learner and must be idempotent: it runs whenever the callback is (re)added.
        if "grad_norms" not in learner.cbstate:
            learner.cbstate.grad_norms = []

    @on(BackwardEnd, AbstractTrainingPhase)
    def record(self, event, phase, learner):
        norms = torch.stack([g.norm() for g in learner.step.grads.values()])
        learner.cbstate.grad_norms.append(norms.norm().item())


class EpochReport(Callback):
    """After every training epoch, append its loss and mean gradient norm to a log file (async I/O)."""

    state_access = {"cbstate": {"history": Read(), "metrics_epoch": Read(), "grad_norms": Read()}}
    run_after = (asyncloop.MetricsPrinter,)  # report after the epoch's table has been printed
    detached = True  # read-only: under ActorRunner it handles a snapshot while training goes on

    def __init__(self, path: Path) -> None:
        self.path = path

    @on(EpochEnd, AbstractTrainingPhase)
    async def report(self, event, phase, learner):
        cbstate = learner.cbstate
        steps = cbstate.history[phase].steps_epoch
        norms = cbstate.grad_norms[-steps:] if steps else [float("nan")]
        epoch, loss = cbstate.metrics_epoch[phase].last("Loss")
        line = f"epoch {epoch}: {steps} steps, loss {loss:.4f}, mean gradient norm {sum(norms) / len(norms):.3f}"
        async with await trio.open_file(self.path, "a") as f:
            await f.write(line + "\n")


class ClippedTrainingPhase(AbstractTrainingPhase):
    """Supervised training with gradient-norm clipping; an epoch stops early once a batch loss is small.

    Subclassing ``AbstractTrainingPhase`` makes every handler registered for training phases (Recorder,
    Metrics, StopOnNaNLoss, the printers, the callbacks above) run for this phase too, and its epochs use
    ``learner.data["training"]``.
    """

    max_norm = 1.0
    target_loss = 0.004

    async def epoch(self, learner, data):
        async def epoch_fn(handle):
            for batch in data:
                state = await self.step(learner, batch)
                if "loss" in state and state.loss.item() < self.target_loss:
                    raise asyncloop.CancelEpochException("reached the target loss")

        learner.epoch_data = data  # what ProgressPrinter sizes its bar by
        await asyncloop.run_epoch(epoch_fn, learner, self)

    async def step(self, learner, batch):
        xs, ys = batch

        async def step_fn(handle, state):
            model = learner.model
            model.train()
            state.preds = model(state.xs)
            await handle(LossBegin())
            state.loss = learner.loss_fn(state.preds, state.ys)
            await handle(BackwardBegin())
            learner.optimizer.zero_grad()
            state.loss.backward()
            state.grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
            await handle(BackwardEnd())  # callbacks see the raw gradients (StopOnNaNLoss, GradientNorm)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_norm)
            learner.optimizer.step()

        return await asyncloop.run_step(step_fn, learner, self, {"xs": xs, "ys": ys})


async def train(learner, n_epochs):
    phase, validation = ClippedTrainingPhase(), asyncloop.ValidationPhase()
    for _ in range(n_epochs):
        await asyncloop.epoch(learner, phase)  # runs phase.epoch on learner.data["training"]
        await asyncloop.epoch(learner, validation)


def make_data(n, generator):
    xs = torch.rand(n, 1, generator=generator) * 4 - 2
    ys = torch.sin(2 * xs) + 0.05 * torch.randn(n, 1, generator=generator)
    return [(xs[i : i + 32], ys[i : i + 32]) for i in range(0, n, 32)]


def main(argv=None):
    parser = argparse.ArgumentParser(description="custom callbacks and a custom phase")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (for CI)")
    parser.add_argument("--runner", choices=("actor", "linear"), default="actor")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "report.txt"
        learner = asyncloop.Learner(
            model,
            torch.nn.functional.mse_loss,
            data=(make_data(2048, generator), make_data(512, generator)),
            optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
            callbacks=[GradientNorm(), EpochReport(log)],
            runner=asyncloop.ActorRunner() if args.runner == "actor" else asyncloop.LinearRunner(),
        )
        trio.run(train, learner, 4 if args.quick else 8)

        print(f"{log.name}:")
        print(log.read_text(), end="")
    history = learner.cbstate.history[ClippedTrainingPhase()]
    _, valid_loss = learner.cbstate.metrics_epoch[asyncloop.ValidationPhase()].last("Loss")
    print(f"custom_callback: {history.epochs} epochs, {history.steps} steps, validation loss {valid_loss:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
