"""One-cycle learning-rate scheduling: find the peak with ``lr_find``, schedule it with ``Scheduler``.

fastai's recipe, in asyncloop:

1. ``lr_find`` runs the learning-rate range test (an exponential sweep over a few steps) and suggests a rate;
   the learner is exactly as before afterwards (weights, optimizer, RNG), so the fit below starts fresh.
2. ``Scheduler({LearningRate: one_cycle(n_steps, max_lr)})`` sets the rate at every training step: up from
   ``max_lr / 25`` along a sine for the first quarter of the steps, then down to ``max_lr / 1e5``. Size
   ``n_steps`` to the whole fit (epochs times batches per epoch): past it the schedule oscillates.
3. ``cbstate.hyperparams`` records the rate of every step (``LogHyperParams`` would send it to TensorBoard).

For comparison the same model, from the same initial weights, also trains with the suggested rate held
constant. scikit-learn's 8x8 handwritten digits (shipped inside scikit-learn, the ``demo`` extra) and a small
MLP; every run is seeded.

    python examples/one_cycle.py [--quick] [--runner linear]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import torch
import trio

import asyncloop
from asyncloop import LearningRate, Scheduler, ValidationPhase, one_cycle


def digits_batches(seed: int = 0) -> tuple[list, list]:
    """scikit-learn's 8x8 digits as 64 features in [0, 1]: 80% for training in batches of 32, 20% for validation."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    train_x, valid_x, train_y, valid_y = train_test_split(images / 16.0, labels, test_size=0.2, stratify=labels,
                                                          random_state=seed)

    def batches(x, y, size):
        xs, ys = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
        return [(xs[i : i + size], ys[i : i + size]) for i in range(0, len(xs), size)]

    return batches(train_x, train_y, 32), batches(valid_x, valid_y, 256)


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one-cycle learning-rate scheduling, with the LR range test")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (for CI)")
    parser.add_argument("--runner", choices=("actor", "linear"), default="actor")
    args = parser.parse_args(argv)

    data = digits_batches()
    torch.manual_seed(0)
    weights = mlp().state_dict()
    epochs = 4 if args.quick else 10
    n_steps = epochs * len(data[0])

    def learner(*callbacks: asyncloop.Callback) -> asyncloop.Learner:
        model = mlp()
        model.load_state_dict(weights)  # every run starts from the same weights
        return asyncloop.Learner(
            model,
            torch.nn.functional.cross_entropy,
            data=data,
            optimizer=torch.optim.Adam,  # a factory params -> optimizer
            callbacks=[asyncloop.Recorder(), asyncloop.Metrics(asyncloop.accuracy), *callbacks],
            runner=asyncloop.ActorRunner() if args.runner == "actor" else asyncloop.LinearRunner(),
            use_default_callbacks=False,  # quiet: no progress bar or epoch table
            seed=0,
        )

    # 1. The LR range test.
    finder = trio.run(partial(asyncloop.lr_find, learner(), start_lr=1e-5, end_lr=1.0))
    max_lr = finder.suggestion
    print(f"lr_find suggests {max_lr:.3g} (steepest descent of the smoothed loss over {len(finder.lrs)} steps)")

    # 2. One cycle up to the suggestion, and the suggestion held constant, for the same number of steps.
    results = {}
    for name, schedule in (("one_cycle", one_cycle(n_steps, max_lr)), ("constant", lambda t: max_lr)):
        run = learner(Scheduler({LearningRate: schedule}))
        trio.run(asyncloop.fit, run, epochs)
        _, loss = run.cbstate.metrics_epoch[ValidationPhase()].last("Loss")
        _, accuracy = run.cbstate.metrics_epoch[ValidationPhase()].last("Accuracy")
        results[name] = (loss, accuracy, run.cbstate.hyperparams.values("LearningRate"))

    # 3. The schedule as it was applied, step by step.
    lrs = results["one_cycle"][2]
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    print(f"one_cycle: {len(lrs)} steps; lr {lrs[0]:.3g} at step 1, peak {lrs[peak]:.3g} at step {peak + 1}, "
          f"{lrs[-1]:.3g} at the last step")
    for name, (loss, accuracy, _) in results.items():
        print(f"{name:>9}: {epochs} epochs, validation loss {loss:.4f}, accuracy {accuracy:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
