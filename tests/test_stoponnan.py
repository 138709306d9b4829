"""Tests for asyncloop.callbacks._stoponnan: stop on a NaN or infinite training loss, before the update."""

from __future__ import annotations

import math
import pytest
import torch
import trio

from asyncloop import (
    CancelFittingException,
    CustomCallback,
    Read,
    Recorder,
    StepEnd,
    StopOnNaNLoss,
    TrainingPhase,
    ValidationPhase,
    epoch,
    fit,
    test_learner,
)


class TestStopOnNaNLoss:
    def test_seed_case(self) -> None:
        """Seed #39: a NaN loss stops fit(1) before any epoch completes; the result says why."""
        learner = test_learner(Recorder(), StopOnNaNLoss(), coeff=math.nan)
        result = trio.run(fit, learner, 1)
        assert result.stopped is True
        assert isinstance(result.reason, CancelFittingException)
        assert str(result.reason) == "Encountered NaN loss"
        assert learner.cbstate.history[TrainingPhase()].epochs == 0
        assert learner.cbstate.history[TrainingPhase()].steps == 0

    @pytest.mark.parametrize(
        ("bad", "message"), [(math.nan, "Encountered NaN loss"), (math.inf, "Encountered Inf loss")]
    )
    def test_stops_before_the_update(self, bad: float, message: str) -> None:
        """A NaN or infinite loss stops the fit at BackwardEnd: the bad step never updates the weights."""
        after_good_step: list[torch.Tensor] = []
        learner = test_learner(
            Recorder(),
            StopOnNaNLoss(),
            CustomCallback(lambda l: after_good_step.append(l.model.c.detach().clone()), StepEnd, TrainingPhase,
                           access={"model": Read()}),
            n_batches=3,
        )
        good = learner.data.training
        xs = good[1][0]
        learner.data = ([good[0], (xs, xs * bad), good[2]], [])
        before = learner.model.c.detach().clone()
        result = trio.run(fit, learner, 1)
        assert str(result.reason) == message
        assert len(after_good_step) == 1
        assert not torch.equal(after_good_step[0], before)
        assert torch.equal(learner.model.c.detach(), after_good_step[0])
        assert learner.cbstate.history[TrainingPhase()].steps == 1

    def test_negative_infinity_message(self) -> None:
        """A loss of -inf is reported as '-Inf'."""
        learner = test_learner(StopOnNaNLoss(), n_batches=1)
        learner.loss_fn = lambda preds, ys: preds.sum() * 0 - math.inf
        result = trio.run(fit, learner, 1)
        assert str(result.reason) == "Encountered -Inf loss"

    def test_epoch_raises(self) -> None:
        """epoch() lets StopOnNaNLoss's CancelFittingException propagate."""
        learner = test_learner(StopOnNaNLoss(), coeff=math.nan, n_batches=1)
        with pytest.raises(CancelFittingException, match=r"^Encountered NaN loss$"):
            trio.run(epoch, learner, TrainingPhase())

    def test_validation_is_not_checked(self) -> None:
        """Only training losses are checked: a NaN validation loss does not stop anything."""
        learner = test_learner(Recorder(), StopOnNaNLoss(), coeff=math.nan, n_batches=2)
        trio.run(epoch, learner, ValidationPhase())
        assert learner.cbstate.history[ValidationPhase()].steps == 2

    def test_finite_losses_train_normally(self) -> None:
        """With finite losses the fit is not stopped."""
        result = trio.run(fit, test_learner(StopOnNaNLoss(), n_batches=2), 2)
        assert (result.stopped, result.epochs) == (False, 2)

    def test_state_access(self) -> None:
        """StopOnNaNLoss reads only step.loss."""
        assert StopOnNaNLoss.state_access == {"step": {"loss": Read()}}
