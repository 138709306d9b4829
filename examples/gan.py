"""A tiny GAN trained by ``fit``: a custom training phase whose step uses two optimizers.

The generator maps noise to 1-d samples; the discriminator tells them from real samples drawn from N(3, 0.5).
Each step first updates the discriminator with its own optimizer, then the generator with ``learner.optimizer``,
dispatching ``LossBegin``/``BackwardBegin``/``BackwardEnd`` around the generator's update so that callbacks
(``Metrics``' loss, gradient clipping, ...) see the generator's loss as ``step.loss``; the discriminator's loss
goes to ``step.d_loss``.

The discriminator's optimizer lives in a small stateful callback (``DiscriminatorOptimizer``), so checkpoints
hold its state too and ``fit(..., resume=)`` continues the GAN exactly. No validation: ``phases=(GANTraining(),
None)``. The ``Checkpointer`` names files by the generator's loss, recorded under ``GANTraining``.

    python examples/gan.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import trio

import asyncloop
from asyncloop import (
    AbstractTrainingPhase,
    BackwardBegin,
    BackwardEnd,
    Callback,
    Checkpointer,
    Learner,
    LossBegin,
    Metrics,
    run_step,
)

NOISE = 4


class DiscriminatorOptimizer(Callback):
    """Holds the discriminator's optimizer, so that checkpoints save and restore its state. Handles no event."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(dict(state))


class GANTraining(AbstractTrainingPhase):
    """One discriminator update, then one generator update; ``batch`` is a tensor of real samples."""

    async def step(self, learner: Learner, batch: torch.Tensor) -> Any:
        generator, discriminator = learner.model["generator"], learner.model["discriminator"]
        d_optimizer = learner.get_callback(DiscriminatorOptimizer).optimizer
        bce = learner.loss_fn

        async def step_fn(handle: Any, state: Any) -> None:
            real = state.xs
            ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
            fake = generator(torch.randn(len(real), NOISE))
            # the discriminator: real -> 1, fake -> 0 (fake detached: the generator is not updated here)
            d_loss = bce(discriminator(real), ones) + bce(discriminator(fake.detach()), zeros)
            d_optimizer.zero_grad()
            d_loss.backward()
            d_optimizer.step()
            state.d_loss = d_loss.detach()
            # the generator: make the discriminator say 1; the events callbacks know
            state.preds, state.ys = fake, ones  # Metrics weighs the loss by the batch size of ys
            await handle(LossBegin())
            state.loss = bce(discriminator(fake), ones)
            await handle(BackwardBegin())
            learner.optimizer.zero_grad()
            state.loss.backward()
            state.loss = state.loss.detach()
            await handle(BackwardEnd())
            learner.optimizer.step()

        return await run_step(step_fn, learner, self, {"xs": batch})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs (as the tests run it)")
    args = parser.parse_args()
    torch.manual_seed(0)
    real = 3.0 + 0.5 * torch.randn(2048, 1)
    batches = list(real.split(64))
    generator = torch.nn.Sequential(torch.nn.Linear(NOISE, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    discriminator = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    model = torch.nn.ModuleDict({"generator": generator, "discriminator": discriminator})
    folder = tempfile.mkdtemp(prefix="gan-")
    learner = Learner(
        model,
        torch.nn.functional.binary_cross_entropy_with_logits,
        data={"training": batches},
        optimizer=torch.optim.Adam(generator.parameters(), lr=1e-2),  # the generator's
        callbacks=[
            DiscriminatorOptimizer(torch.optim.Adam(discriminator.parameters(), lr=1e-2)),
            Metrics(),
            Checkpointer(folder, keep_top_k=1),
        ],
    )
    epochs = 6 if args.quick else 20
    result = trio.run(partial(asyncloop.fit, learner, epochs, phases=(GANTraining(), None)))
    with torch.no_grad():
        samples = generator(torch.randn(4096, NOISE))
    print(f"{result.epochs} epochs; generated mean {samples.mean():.2f} (real 3.00), std {samples.std():.2f} (0.50)")
    print("kept:", sorted(name for name in os.listdir(folder) if name.startswith("checkpoint_")))


if __name__ == "__main__":
    main()
