"""SanityCheck: check the learner's set-up before the first training step, and explain what is wrong."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from .._callback import Callback, on
from ..events import EpochBegin, FitBegin
from .._exceptions import SanityCheckException
from ..phases import AbstractTrainingPhase, Phase
from .._access import Read


@dataclass(frozen=True)
class Check:
    """One sanity check: ``check_fn(learner) -> bool`` (True means fine).

    ``throw_error``: a failure stops training (``SanityCheckException``); otherwise it is a warning.
    ``message`` explains the problem and how to fix it. ``check_fn`` receives the learner as the
    :class:`SanityCheck` sees it (``data``, ``epoch_data``, ``model``, ``loss_fn``, ``optimizer`` and
    ``callbacks`` readable); an exception it raises propagates.

    Example::

        Check(lambda learner: len(learner.data.training) > 0, "Training data is not empty", True,
              "learner.data.training has no batches.")
    """

    check_fn: Callable[[Any], bool]
    name: str
    throw_error: bool = True
    message: str = ""


def _training_data(learner: Any) -> Any:
    data = learner.epoch_data
    return data if data is not None else learner.data.get("training")


def _first_batch(learner: Any) -> Any:
    return next(iter(_training_data(learner)))


def _has_training_data(learner: Any) -> bool:
    return _training_data(learner) is not None


def _has_validation_data(learner: Any) -> bool:
    return learner.data.get("validation") is not None


def _iterates_over_pairs(learner: Any) -> bool:
    try:
        batch = _first_batch(learner)
        xs, ys = batch
    except Exception:
        return False
    return True


def _data_fn(learner: Any) -> Callable[[Any], Any]:
    from ._todevice import ToDevice

    for cb in learner.callbacks:
        if isinstance(cb.inner, ToDevice):
            return cb.inner.data_fn
    return lambda value: value


def _model_and_loss_compatible(learner: Any) -> bool:
    try:
        xs, ys = _first_batch(learner)
        move = _data_fn(learner)
        xs, ys = move(xs), move(ys)
        model = learner.model
        was_training = getattr(model, "training", None)
        if was_training:
            model.eval()  # no batch-norm statistics updates, no dropout
        try:
            with torch.no_grad():
                loss = learner.loss_fn(model(xs), ys)
        finally:
            if was_training:
                model.train()
    except Exception:
        return False
    if isinstance(loss, torch.Tensor):
        return loss.numel() == 1 and (loss.is_floating_point() or loss.is_complex())
    return False


#: The checks ``SanityCheck()`` runs, in this order (FluxTraining's ``CHECKS``).
DEFAULT_CHECKS: tuple[Check, ...] = (
    Check(
        _has_training_data,
        "Has training data iterator",
        True,
        "The learner has no training data. Pass it when creating the learner, "
        "Learner(model, loss_fn, data=(train_batches, valid_batches)), or to fit(learner, n, data=...).",
    ),
    Check(
        _has_validation_data,
        "Has validation data iterator",
        False,
        "The learner has no validation data, so validation epochs are skipped and metrics, early stopping and "
        "checkpoints only see training values. Pass data=(train_batches, valid_batches) to the learner.",
    ),
    Check(
        _iterates_over_pairs,
        "Data iterators iterate over tuples",
        True,
        "Iterating over the training data must yield (xs, ys) pairs, e.g. a list of (inputs, targets) tuples or a "
        "torch DataLoader over a TensorDataset(inputs, targets).",
    ),
    Check(
        _model_and_loss_compatible,
        "Model and loss function compatible with data",
        True,
        "loss_fn(model(xs), ys) must return a scalar float tensor for the first training batch (xs, ys). Check "
        "that the model accepts the inputs, that the loss takes (preds, targets) in that order, and that it is "
        "reduced to a scalar (e.g. reduction='mean').",
    ),
)

#: FluxTraining's name for :data:`DEFAULT_CHECKS`.
CHECKS = DEFAULT_CHECKS


class SanityCheck(Callback):
    """Run sanity checks once per fit, at the first training ``EpochBegin``, and report every failure.

    ``checks`` are :class:`Check` objects; ``use_default`` (default: only when ``checks`` is empty) adds
    :data:`DEFAULT_CHECKS` (training data present, validation data present (a warning), batches are ``(xs, ys)``
    pairs, ``loss_fn(model(xs), ys)`` is a scalar). Failures are printed as FluxTraining does::

        2/4 sanity checks failed:
        ---
        1: Has validation data iterator (WARNING)

        The learner has no validation data, ...

    and if any failed check is an error, ``SanityCheckException`` is raised before the first step. The checks
    run the model once in eval mode without gradients on the first batch (moved by a :class:`ToDevice` if there
    is one) and keep the RNG states as they were, so adding a SanityCheck does not change training. Pitfall: a
    one-shot iterator (a generator) as training data loses the batch the checks read.

    Example::

        learner = Learner(model, loss_fn, data=data, callbacks=[SanityCheck()])
    """

    state_access = {
        "data": Read(),
        "epoch_data": Read(),
        "model": Read(),
        "loss_fn": Read(),
        "optimizer": Read(),
        "callbacks": Read(),
    }

    def __init__(
        self, checks: Iterable[Check] = (), use_default: bool | None = None, *, file: TextIO | None = None
    ) -> None:
        checks = tuple(checks)
        for i, check in enumerate(checks):
            if not isinstance(check, Check):
                raise TypeError(f"SanityCheck: checks[{i}] must be a Check, got {check!r}")
        if use_default is None:
            use_default = not checks
        self.checks: tuple[Check, ...] = (
            (*checks, *(c for c in DEFAULT_CHECKS if c not in checks)) if use_default else checks
        )
        self.file = file
        self._checked = False

    @on(FitBegin)
    def fit_begin(self, event: FitBegin, phase: Phase, learner: Any) -> None:
        self._checked = False

    @on(EpochBegin, AbstractTrainingPhase)
    def epoch_begin(self, event: EpochBegin, phase: Phase, learner: Any) -> None:
        if self._checked:
            return
        self._checked = True
        failed = self.run_checks(learner)
        if failed:
            self.report(failed)
            if any(c.throw_error for c in failed):
                raise SanityCheckException(f"{sum(c.throw_error for c in failed)} sanity check(s) failed; see above")

    def run_checks(self, learner: Any) -> list[Check]:
        """Run every check (RNG states preserved) and return the failed ones, in order."""
        py_state = random.getstate()
        devices = (
            list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        )
        with torch.random.fork_rng(devices=devices):
            try:
                return [c for c in self.checks if not c.check_fn(learner)]
            finally:
                random.setstate(py_state)

    def report(self, failed: list[Check]) -> None:
        """Print the failures in FluxTraining's format."""
        file = self.file if self.file is not None else sys.stdout
        lines = [f"{len(failed)}/{len(self.checks)} sanity checks failed:"]
        for i, check in enumerate(failed, 1):
            lines += ["---", f"{i}: {check.name} ({'ERROR' if check.throw_error else 'WARNING'})", "", check.message]
        print("\n".join(lines), file=file, flush=True)

    def __repr__(self) -> str:
        return f"SanityCheck({len(self.checks)} checks)"
