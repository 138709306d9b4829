"""A multi-input model fed dict batches, trained by ``fit`` through custom phases, with metrics and checkpoints.

Each batch is a dict ``{"points": (n, 2), "noise": (n, 3), "label": (n,)}`` and the model takes two inputs,
``model(points, noise)``. The built-in phases expect ``(xs, ys)`` pairs, so ``DictTraining`` and
``DictValidation`` give ``fit`` their own ``step`` (written with ``asyncloop.run_step``, dispatching the usual
events, so ``Metrics``, the printers, ``Checkpointer`` and ``EarlyStopping`` work as for the built-in phases):

    fit(learner, n_epochs, phases=(DictTraining(), DictValidation()))

``Checkpointer(phase=ValidationPhase)`` finds its monitored value under ``DictValidation``, the validation phase
that ran (any ``AbstractValidationPhase`` stands for ``ValidationPhase``), so the files carry the real accuracy.

    python examples/dict_batches.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from functools import partial
from typing import Any

import torch
import trio

import asyncloop
from asyncloop import (
    AbstractTrainingPhase,
    AbstractValidationPhase,
    BackwardBegin,
    BackwardEnd,
    Checkpointer,
    Learner,
    LossBegin,
    Metrics,
    ValidationPhase,
    accuracy,
    run_step,
)


class TwoInputNet(torch.nn.Module):
    """Classifies 2-d points; a second input (noise features) goes through its own branch."""

    def __init__(self) -> None:
        super().__init__()
        self.points = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU())
        self.extra = torch.nn.Linear(3, 32)
        self.head = torch.nn.Linear(32, 2)

    def forward(self, points: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.head(self.points(points) + self.extra(noise))


def inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The step state of a dict batch: ``xs`` holds the model's inputs, ``ys`` the targets (Metrics reads
    ``preds`` and ``ys``)."""
    return {"xs": (batch["points"], batch["noise"]), "ys": batch["label"]}


class DictTraining(AbstractTrainingPhase):
    """Forward on both inputs, loss, backward, optimizer step; the usual events in between."""

    async def step(self, learner: Learner, batch: dict[str, torch.Tensor]) -> Any:
        async def step_fn(handle: Any, state: Any) -> None:
            learner.model.train()
            state.preds = learner.model(*state.xs)
            await handle(LossBegin())
            state.loss = learner.loss_fn(state.preds, state.ys)
            await handle(BackwardBegin())
            learner.optimizer.zero_grad()
            state.loss.backward()
            state.loss = state.loss.detach()
            await handle(BackwardEnd())
            learner.optimizer.step()

        return await run_step(step_fn, learner, self, inputs(batch))


class DictValidation(AbstractValidationPhase):
    """Forward and loss under ``torch.no_grad()``, model in eval mode."""

    async def step(self, learner: Learner, batch: dict[str, torch.Tensor]) -> Any:
        async def step_fn(handle: Any, state: Any) -> None:
            learner.model.eval()
            with torch.no_grad():
                state.preds = learner.model(*state.xs)
                await handle(LossBegin())
                state.loss = learner.loss_fn(state.preds, state.ys)

        return await run_step(step_fn, learner, self, inputs(batch))


def make_batches(n: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    points = torch.randn(n, 2)
    label = (points[:, 0] * points[:, 1] > 0).long()
    noise = torch.randn(n, 3)
    return [
        {"points": points[i : i + batch_size], "noise": noise[i : i + batch_size], "label": label[i : i + batch_size]}
        for i in range(0, n, batch_size)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs (as the tests run it)")
    args = parser.parse_args()
    torch.manual_seed(0)
    batches = make_batches(1024, 64)
    folder = tempfile.mkdtemp(prefix="dict_batches-")
    learner = Learner(
        TwoInputNet(),
        torch.nn.functional.cross_entropy,
        data=(batches[:12], batches[12:]),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        callbacks=[
            Metrics(accuracy),
            Checkpointer(folder, keep_top_k=1, monitor="Accuracy", mode="max", phase=ValidationPhase),
        ],
    )
    epochs = 4 if args.quick else 10
    result = trio.run(partial(asyncloop.fit, learner, epochs, phases=(DictTraining(), DictValidation())))
    _, acc = learner.cbstate.metrics_epoch[DictValidation()].last("Accuracy")
    print(f"{result.epochs} epochs, validation accuracy {acc:.2f}")
    print("kept:", sorted(name for name in os.listdir(folder) if name.startswith("checkpoint_")))


if __name__ == "__main__":
    main()
