"""Two callbacks that write the same state, a deliberate conflict, and ``resolve_conflict`` settling it.

Fine-tuning a network whose first layer is "pretrained" and frozen, with gradient noise as a regulariser
(Neelakantan et al., 2015). Both callbacks change the gradients in place at ``BackwardEnd``, so both declare
``Write()`` on ``step.grads``, and their order matters:

* noise, then freeze: the frozen layer's gradients end up zero, so it stays exactly as it was;
* freeze, then noise: the frozen layer gets noise as gradients and drifts: a silent bug.

asyncloop refuses to guess. Building a learner with both and no rule is a ``WriteConflictError`` naming both
callbacks and the path, raised by ``Learner(...)``, before any training. ``FreezeLayers.resolve_conflict`` says
``RunFirst(other)`` for ``GradientNoise``; the graph then orders them, and a third callback that *reads* the
gradients (``GradientNorm``) runs after both writers, so it records what the optimizer will apply. Under the
``ActorRunner`` the graph is what decides the order, exactly as under the ``LinearRunner``.

    python examples/conflict.py [--quick] [--runner linear]
"""

from __future__ import annotations

import argparse
import sys

import torch
import trio

import asyncloop
from asyncloop import AbstractTrainingPhase, BackwardEnd, Callback, Read, Write, on


class GradientNoise(Callback):
    """Add Gaussian noise to every gradient of every training step (``std`` decays as ``(1 + t) ** -0.55``)."""

    state_access = {"step": {"grads": Write()}}

    def __init__(self, std: float = 0.05) -> None:
        self.std = std
        self.t = 0

    def init(self, learner):
        self.t = 0

    @on(BackwardEnd, AbstractTrainingPhase)
    def add_noise(self, event, phase, learner):
        self.t += 1
        std = self.std * (1 + self.t) ** -0.55
        for grad in learner.step.grads.values():
            grad.add_(std * torch.randn_like(grad))  # drawn from the learner's own random state


class FreezeLayers(Callback):
    """Zero the gradients of the parameters whose names start with one of ``prefixes``: those stay as they are."""

    state_access = {"step": {"grads": Write()}}

    def __init__(self, *prefixes: str) -> None:
        self.prefixes = prefixes

    def resolve_conflict(self, other):
        # Asked for every other callback that writes step.grads. Anything that changes gradients must run
        # before the freeze, or the frozen layers would move.
        if isinstance(other, GradientNoise):
            return asyncloop.RunFirst(other)
        return asyncloop.NotDefined()

    @on(BackwardEnd, AbstractTrainingPhase)
    def freeze(self, event, phase, learner):
        for name, grad in learner.step.grads.items():
            if name.startswith(self.prefixes):
                grad.zero_()


class GradientNorm(Callback):
    """Record the global norm of the gradients the optimizer will apply, per layer group, in ``cbstate``."""

    state_access = {"step": {"grads": Read()}, "cbstate": {"grad_norms": Write()}}

    def init(self, learner):
        if "grad_norms" not in learner.cbstate:
            learner.cbstate.grad_norms = {"frozen": [], "trained": []}

    @on(BackwardEnd, AbstractTrainingPhase)
    def record(self, event, phase, learner):
        norms = {"frozen": 0.0, "trained": 0.0}
        for name, grad in learner.step.grads.items():
            norms["frozen" if name.startswith("0.") else "trained"] += grad.pow(2).sum().item()
        for key, value in norms.items():
            learner.cbstate.grad_norms[key].append(value**0.5)


class NaiveFreeze(FreezeLayers):
    """The same freeze without an opinion on the order: the conflict stays unresolved."""

    def resolve_conflict(self, other):
        return asyncloop.NotDefined()


def make_data(n: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The quadrant rule ``x0 * x1 > 0`` on ``n`` Gaussian points, in batches of 32."""
    xs = torch.randn(n, 2, generator=generator)
    ys = (xs[:, 0] * xs[:, 1] > 0).long()
    return [(xs[i : i + 32], ys[i : i + 32]) for i in range(0, n, 32)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a write conflict between two callbacks, resolved")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (for CI)")
    parser.add_argument("--runner", choices=("actor", "linear"), default="actor")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    data = (make_data(1024 if args.quick else 4096, generator), make_data(512, generator))

    # 1. Without a rule the learner is refused, with a message that names both callbacks and the fix.
    try:
        asyncloop.Learner(model, torch.nn.functional.cross_entropy, data=data,
                          callbacks=[GradientNoise(), NaiveFreeze("0.")])
    except asyncloop.WriteConflictError as exc:
        print("without resolve_conflict:", str(exc).splitlines()[0])

    # 2. With FreezeLayers.resolve_conflict the graph orders the three callbacks.
    callbacks = [GradientNorm(), FreezeLayers("0."), GradientNoise()]
    for a, b, reason in asyncloop.callback_graph(callbacks).edges(data="reason"):
        print(f"  {type(callbacks[a]).__name__} -> {type(callbacks[b]).__name__}: {reason}")

    frozen_before = model[0].weight.detach().clone()
    head_before = model[2].weight.detach().clone()
    learner = asyncloop.Learner(
        model,
        torch.nn.functional.cross_entropy,
        data=data,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        callbacks=[asyncloop.Metrics(asyncloop.accuracy), *callbacks],
        runner=asyncloop.ActorRunner() if args.runner == "actor" else asyncloop.LinearRunner(),
    )
    trio.run(asyncloop.fit, learner, 2 if args.quick else 5)

    norms = learner.cbstate.grad_norms
    _, accuracy = learner.cbstate.metrics_epoch[asyncloop.ValidationPhase()].last("Accuracy")
    print(f"frozen layer unchanged: {torch.equal(model[0].weight, frozen_before)}; "
          f"head changed: {not torch.equal(model[2].weight, head_before)}")
    print(f"largest gradient norm applied: frozen {max(norms['frozen']):.3g}, trained {max(norms['trained']):.3g}")
    print(f"conflict: {len(norms['trained'])} steps, validation accuracy {accuracy:.3f} with a frozen first layer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
