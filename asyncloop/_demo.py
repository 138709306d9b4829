"""The demo: a small CNN learns scikit-learn's 8x8 handwritten digits under the ActorRunner.

``asyncloop demo`` (the command line), ``python examples/demo.py`` and ``bash scripts/demo.sh`` all run
:func:`main`. One run shows the pieces a real training run needs, each doing its job while the model trains:

* the data: ``sklearn.datasets.load_digits`` (1,797 images, shipped inside scikit-learn: no download), split
  into training, validation and a held-out test set (stratified, seeded);
* ``Metrics(accuracy)``, a one-cycle learning rate (``Scheduler({LearningRate: one_cycle(...)})``),
  ``EarlyStopping`` and a ``Checkpointer`` keeping the best epoch (and the latest), both by validation loss
  (less noisy than the accuracy of 270 validation images);
* TensorBoard files and an event log (``LogMetrics``, ``LogHyperParams``, ``LogConfig``, ``LogEvents``),
  written by detached actors so the training loop never waits for the disk;
* at the end: the best checkpoint is loaded and evaluated once on the test set (``asyncloop.predict``), a PNG
  of the loss, accuracy and learning-rate curves is drawn (matplotlib, Agg backend), and the demo prints where
  everything went.

Each run writes into a new folder ``OUT/version_N`` (as Lightning's ``lightning_logs/version_N``), so running it
again never mixes two runs' checkpoints or logs. The heavy imports (torch, scikit-learn, matplotlib) happen in
:func:`run`, so building the command line stays cheap.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

#: Epochs of a full run and of ``--quick``; early stopping may end a run sooner.
EPOCHS, QUICK_EPOCHS = 16, 3
#: Peak learning rate of the one-cycle schedule (Adam).
MAX_LR = 0.003
#: Batch size for training; validation and test use larger batches.
BATCH_SIZE = 32
#: Epochs without a lower validation loss before early stopping ends the run.
PATIENCE = 4
#: Default of ``--min-accuracy``: the run fails (exit status 1) below this test accuracy. Chance is 0.1.
MIN_ACCURACY = 0.8
DEFAULT_OUT = Path("runs") / "demo"

DESCRIPTION = """\
Train a small convolutional network on scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside
scikit-learn: no download) with asyncloop: accuracy, a one-cycle learning-rate schedule, early stopping,
checkpoints, TensorBoard and an event log, under the ActorRunner (loggers and the checkpointer run as detached
actors, overlapping with training). The best checkpoint is then evaluated on a held-out test set.

Writes into a new folder OUT/version_N: checkpoints/, tensorboard/, events.alog (read it with
`asyncloop log show`) and curves.png (loss, accuracy and learning rate by epoch). Exits with status 1 when the
test accuracy is below --min-accuracy."""

EPILOG = """\
examples:
  asyncloop demo                     # the full run: under a minute on 2 CPU cores
  asyncloop demo --quick             # a few seconds (what CI runs)
  asyncloop demo --runner linear     # the same run under the LinearRunner: the same numbers
  tensorboard --logdir runs/demo     # then watch every run's curves"""

MISSING_EXTRA = (
    "the demo needs scikit-learn (the digits data set) and matplotlib (the plot), which are not installed; "
    "install them with: pip install 'asyncloop[demo]'"
)


def at_least(low: int) -> Any:
    """An argparse ``type``: an int >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value

    return parse


def _fraction(text: str) -> float:
    """An argparse ``type``: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected an accuracy between 0 and 1, got {text!r}")
    return value


def _folder(text: str) -> Path:
    """An argparse ``type``: a folder that may not exist yet, but is not a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, but {text!r} is a file; pass a folder (it is created "
                                         "if missing)")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (shared by ``asyncloop demo`` and ``examples/demo.py``)."""
    parser.add_argument("--epochs", type=at_least(1), default=None, metavar="N",
                        help=f"training epochs (default {EPOCHS}, or {QUICK_EPOCHS} with --quick); early stopping "
                             "may end the run sooner")
    parser.add_argument("--runner", choices=("actor", "linear"), default="actor",
                        help="callback runner: 'actor' (default) runs callbacks as actors, loggers and the "
                             "checkpointer detached; 'linear' runs them one by one, inline")
    parser.add_argument("--out", type=_folder, default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for the run's files; each run writes to a new DIR/version_N (default "
                             f"{DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EPOCHS} epochs, a few seconds: checks that everything works (for CI)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data split, the weights and the "
                                                            "shuffling (default 0)")
    parser.add_argument("--min-accuracy", type=_fraction, default=MIN_ACCURACY, metavar="A",
                        help=f"exit with status 1 when the test accuracy is below A (default {MIN_ACCURACY}; "
                             "chance is 0.1)")


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The demo's own parser (``examples/demo.py``)."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def add_demo_command(commands: Any) -> None:
    """Add ``demo`` to the ``asyncloop`` command line's subcommands (``commands``: an ``add_subparsers`` result)."""
    parser = commands.add_parser("demo", help="train a small CNN on handwritten digits, with every feature on",
                                 description=DESCRIPTION, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a demo run produced: its folder, its files and its figures."""

    folder: Path
    checkpoints: Path
    best_checkpoint: Path
    tensorboard: Path
    event_log: Path
    plot: Path
    epochs: int
    stopped_early: bool
    best_epoch: int
    best_valid_accuracy: float
    test_accuracy: float
    elapsed: float


def new_run_folder(out: Path) -> Path:
    """A new, empty ``out/version_N``: ``N`` one above the highest existing version (0 for the first)."""
    out.mkdir(parents=True, exist_ok=True)
    versions = [int(m.group(1)) for p in out.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
    n = max(versions, default=-1) + 1
    while True:
        folder = out / f"version_{n}"
        try:
            folder.mkdir()  # exclusive: two demos started at once get different folders
            return folder
        except FileExistsError:
            n += 1


def load_splits(seed: int) -> dict[str, tuple[Any, Any]]:
    """The digits as ``(images, labels)`` tensors per split: ``train`` 65%, ``valid`` 15%, ``test`` 20%.

    Images are ``(n, 1, 8, 8)`` float32 scaled to [0, 1] (the raw pixels are 0..16); splits are stratified by
    label, so every split has each digit in the same proportion.
    """
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    rest_x, test_x, rest_y, test_y = train_test_split(images, labels, test_size=0.2, stratify=labels,
                                                      random_state=seed)
    train_x, valid_x, train_y, valid_y = train_test_split(rest_x, rest_y, test_size=0.15 / 0.8, stratify=rest_y,
                                                          random_state=seed)

    def tensors(x: Any, y: Any) -> tuple[Any, Any]:
        return torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(y, dtype=torch.long)

    return {"train": tensors(train_x, train_y), "valid": tensors(valid_x, valid_y), "test": tensors(test_x, test_y)}


def cnn() -> Any:
    """Two 3x3 convolutions, a 2x2 max-pool and two linear layers: about 70k parameters, 10 logits."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Flatten(),
        nn.Dropout(0.25),
        nn.Linear(32 * 4 * 4, 128), nn.ReLU(),
        nn.Linear(128, 10),
    )


@dataclass(frozen=True)
class Curves:
    """The series the plot draws, copied out of a learner's ``cbstate`` (a checkpoint load replaces them)."""

    train_loss: tuple[list[int], list[float]]
    valid_loss: tuple[list[int], list[float]]
    train_accuracy: tuple[list[int], list[float]]
    valid_accuracy: tuple[list[int], list[float]]
    learning_rate: tuple[list[float], list[float]]  # by epoch (fractional), one point per training step

    @classmethod
    def of(cls, learner: Any) -> Curves:
        from asyncloop import TrainingPhase, ValidationPhase

        cbstate = learner.cbstate
        train, valid = cbstate.metrics_epoch[TrainingPhase()], cbstate.metrics_epoch[ValidationPhase()]

        def series(history: Any, name: str) -> tuple[list[int], list[float]]:
            return (history.indices(name), [float(v) for v in history.values(name)]) if name in history else ([], [])

        steps_per_epoch = max(cbstate.history[TrainingPhase()].steps_epoch, 1)
        lr_steps, lrs = series(cbstate.hyperparams, "LearningRate") if "hyperparams" in cbstate else ([], [])
        return cls(series(train, "Loss"), series(valid, "Loss"), series(train, "Accuracy"),
                   series(valid, "Accuracy"), ([(i + 1) / steps_per_epoch for i in lr_steps], lrs))


def plot_curves(curves: Curves, path: Path, test_accuracy: float | None = None, best_epoch: int | None = None) -> None:
    """Draw the loss (log scale) and accuracy by epoch, training and validation, and the learning rate by step into
    ``path``; a dashed line marks the test accuracy and a dotted one the best epoch, when given."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    for ax, name, train, valid in ((loss_ax, "loss", curves.train_loss, curves.valid_loss),
                                   (acc_ax, "accuracy", curves.train_accuracy, curves.valid_accuracy)):
        ax.plot(*train, marker="o", markersize=3, label="training")
        ax.plot(*valid, marker="o", markersize=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
    loss_ax.set_yscale("log")
    if test_accuracy is not None:
        acc_ax.axhline(test_accuracy, color="k", linestyle="--", linewidth=1,
                       label=f"test, best epoch: {test_accuracy:.3f}")
    loss_ax.legend()
    acc_ax.legend(loc="lower right")
    lr_ax.plot(*curves.learning_rate)
    lr_ax.set_xlabel("epoch")
    lr_ax.set_title("learning rate (one cycle)")
    lr_ax.grid(alpha=0.3)
    fig.suptitle("asyncloop demo: a small CNN on scikit-learn's 8x8 digits")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(args: argparse.Namespace, folder: Path) -> Outcome:
    """Train, test and plot into ``folder``; the progress bar and the epoch table print as it goes."""
    import torch
    import trio
    from torch.utils.data import DataLoader, TensorDataset

    import asyncloop
    from asyncloop import (
        ActorRunner,
        Checkpointer,
        EarlyStopping,
        EpochEnd,
        EventLogBackend,
        FitBegin,
        FitEnd,
        Learner,
        LearningRate,
        LinearRunner,
        LogConfig,
        LogEvents,
        LogHyperParams,
        LogMetrics,
        Metrics,
        Scheduler,
        TensorBoardBackend,
        ValidationPhase,
        accuracy,
        one_cycle,
    )

    splits = load_splits(args.seed)
    asyncloop.seed_everything(args.seed)  # the initial weights; the learner takes its random state from here
    model = cnn()
    train_data = DataLoader(TensorDataset(*splits["train"]), batch_size=BATCH_SIZE, shuffle=True)
    valid_data = DataLoader(TensorDataset(*splits["valid"]), batch_size=256)
    test_data = DataLoader(TensorDataset(*splits["test"]), batch_size=256)

    checkpoints, tensorboard, event_log, plot = (folder / "checkpoints", folder / "tensorboard",
                                                 folder / "events.alog", folder / "curves.png")
    tb = TensorBoardBackend(tensorboard)
    events = EventLogBackend(event_log, run=f"demo-{folder.name}")
    config = {"model": "cnn", "epochs": args.epochs, "batch_size": BATCH_SIZE, "max_lr": MAX_LR,
              "patience": PATIENCE, "runner": args.runner, "seed": args.seed}
    checkpointer = Checkpointer(checkpoints, keep_top_k=1, monitor="Loss", phase=ValidationPhase)
    learner = Learner(
        model,
        torch.nn.functional.cross_entropy,
        data=(train_data, valid_data),
        optimizer=lambda params: torch.optim.Adam(params, lr=MAX_LR),
        callbacks=[
            Metrics(accuracy),
            Scheduler({LearningRate: one_cycle(args.epochs * len(train_data), MAX_LR)}),
            EarlyStopping(PATIENCE),  # PATIENCE epochs without a lower validation loss end the run
            checkpointer,  # the best epoch by validation loss, and always the latest
            LogMetrics(tb, events),
            LogHyperParams(tb, events),
            LogConfig(config, tb, events),
            LogEvents(events, events=(FitBegin, EpochEnd, FitEnd)),
        ],
        runner=ActorRunner() if args.runner == "actor" else LinearRunner(),
    )
    result = trio.run(asyncloop.fit, learner, args.epochs)

    valid = learner.cbstate.metrics_epoch[ValidationPhase()]
    accuracies = dict(zip(valid.indices("Accuracy"), valid.values("Accuracy")))
    best = checkpointer.best
    assert best is not None  # at least one epoch ran and was checkpointed
    best_epoch = int(re.search(r"checkpoint_epoch_(\d+)_", best.name).group(1))  # type: ignore[union-attr]
    curves = Curves.of(learner)  # the whole run's curves, before the best epoch's state replaces them

    # Lightning's trainer.test(ckpt_path="best"): the best epoch's weights, once, on data no epoch has seen.
    # predict runs no callbacks, so the test leaves the run's logs as the fit wrote them.
    learner.load_checkpoint(best)
    logits = trio.run(asyncloop.predict, learner, test_data)
    test_accuracy = float((logits.argmax(dim=1) == splits["test"][1]).float().mean())
    plot_curves(curves, plot, test_accuracy, best_epoch)
    return Outcome(
        folder=folder, checkpoints=checkpoints, best_checkpoint=best, tensorboard=tensorboard, event_log=event_log,
        plot=plot, epochs=result.epochs, stopped_early=result.stopped, best_epoch=best_epoch,
        best_valid_accuracy=float(accuracies[best_epoch]), test_accuracy=test_accuracy, elapsed=result.elapsed,
    )


def _report(outcome: Outcome, runner: str, out: TextIO) -> None:
    how = f"stopped early ({PATIENCE} epochs without a lower validation loss)" if outcome.stopped_early else "completed"
    lines = [
        "",
        f"demo: {outcome.epochs} epoch{'' if outcome.epochs == 1 else 's'} {how} in {outcome.elapsed:.1f}s under "
        f"the {runner} runner",
        f"demo: test accuracy {outcome.test_accuracy:.3f} (best checkpoint: epoch {outcome.best_epoch}, "
        f"validation accuracy {outcome.best_valid_accuracy:.3f}; chance is 0.1)",
        f"demo: everything went to {outcome.folder}",
        f"  checkpoints     {outcome.checkpoints}  (best: {outcome.best_checkpoint.name}; resume with "
        f"fit(learner, n, resume=...))",
        f"  tensorboard     {outcome.tensorboard}  (tensorboard --logdir {outcome.tensorboard})",
        f"  event log       {outcome.event_log}  (asyncloop log show {outcome.event_log})",
        f"  plot            {outcome.plot}",
    ]
    print("\n".join(lines), file=out, flush=True)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the demo as ``args`` say (from :func:`add_arguments`); return the exit status (0, or 1 when the extra is
    missing or the test accuracy is below ``args.min_accuracy``)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        print(f"asyncloop demo: error: {MISSING_EXTRA}", file=err)
        return 1
    if args.epochs is None:
        args.epochs = QUICK_EPOCHS if args.quick else EPOCHS
    folder = new_run_folder(args.out)
    outcome = train(args, folder)
    _report(outcome, args.runner, out)
    if outcome.test_accuracy < args.min_accuracy:
        print(f"asyncloop demo: the model did not learn: test accuracy {outcome.test_accuracy:.3f} < "
              f"{args.min_accuracy} (--min-accuracy)", file=err)
        return 1
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the demo; return the exit status."""
    return run(make_parser(prog).parse_args(argv))
