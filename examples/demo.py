"""asyncloop demo: classify two interleaved spirals with a small MLP.

Trains with the default callbacks (a tqdm progress bar per epoch, a metrics table per epoch, NaN stop,
Recorder, Metrics) plus accuracy, under the ActorRunner: the progress bar and the table are detached actors,
so printing overlaps with training. The data is generated with torch from a fixed seed, so every run (under
either runner) trains the same weights.

    python examples/demo.py                  # 12 epochs, ActorRunner
    python examples/demo.py --runner linear  # the same run under the LinearRunner
    python examples/demo.py --quick          # a few seconds, for CI

Exits with status 1 if the model did not learn (validation accuracy below --min-accuracy).
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import trio

import asyncloop


def spirals(n: int, *, noise: float = 0.25, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of two interleaved spirals (2 arms, 1.75 turns each): inputs ``(n, 2)``, labels ``(n,)``."""
    labels = torch.arange(n) % 2
    t = torch.rand(n, generator=generator) * 1.75 * 2 * math.pi + 0.5
    angle = t + math.pi * labels
    points = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=1) / 4
    points += noise / 4 * torch.randn(n, 2, generator=generator)
    return points, labels


def batches(xs: torch.Tensor, ys: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split into ``(xs, ys)`` batches; a list, so the progress bar knows each epoch's length."""
    return [(xs[i : i + batch_size], ys[i : i + batch_size]) for i in range(0, len(xs), batch_size)]


def mlp(hidden: int = 64) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(2, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 2),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 12, or 4 with --quick)")
    parser.add_argument("--runner", choices=("actor", "linear"), default="actor", help="callback runner")
    parser.add_argument("--quick", action="store_true", help="a smaller data set and fewer epochs (for CI)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data and the initial weights")
    parser.add_argument("--min-accuracy", type=float, default=0.75, help="exit 1 below this validation accuracy")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 4 if args.quick else 12
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    n_train, n_valid = (2048, 512) if args.quick else (8192, 2048)
    train = batches(*spirals(n_train, generator=generator), batch_size=32)
    valid = batches(*spirals(n_valid, generator=generator), batch_size=256)

    runner = asyncloop.ActorRunner() if args.runner == "actor" else asyncloop.LinearRunner()
    learner = asyncloop.Learner(
        mlp(),
        torch.nn.functional.cross_entropy,
        data=(train, valid),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        callbacks=[asyncloop.Metrics(asyncloop.accuracy)],
        runner=runner,
    )
    result = trio.run(asyncloop.fit, learner, args.epochs)

    _, accuracy = learner.cbstate.metrics_epoch[asyncloop.ValidationPhase()].last("Accuracy")
    status = f"stopped early: {result.reason}" if result.stopped else "completed"
    print(
        f"demo: {result.epochs} epochs {status} in {result.elapsed:.1f}s with {runner!r}; "
        f"final validation accuracy {accuracy:.3f} (chance 0.5)"
    )
    if accuracy < args.min_accuracy:
        print(f"demo: the model did not learn (accuracy {accuracy:.3f} < {args.min_accuracy})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
