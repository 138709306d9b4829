"""Tests for asyncloop.callbacks._recorder: completed epochs and steps per phase in cbstate.history."""

from __future__ import annotations

from typing import Any

import trio

from asyncloop import (
    CancelStepException,
    CustomCallback,
    History,
    Recorder,
    StepBegin,
    TrainingPhase,
    ValidationPhase,
    Write,
    epoch,
    fit,
    test_learner,
)
from asyncloop.state import PhaseDict


def history(learner: Any, phase: Any) -> History:
    return learner.cbstate.history[phase]


class TestRecorder:
    def test_seed_case(self) -> None:
        """Seed #27: history starts at zero; after fit(10) with 16 batches: 10 epochs, 160 steps, 16 this epoch."""
        learner = test_learner(Recorder(), coeff=3.0)
        assert history(learner, TrainingPhase()) == History(0, 0, 0)
        trio.run(fit, learner, 10)
        assert history(learner, TrainingPhase()) == History(epochs=10, steps=160, steps_epoch=16)

    def test_counts_per_phase(self) -> None:
        """Training and validation are counted separately."""
        learner = test_learner(Recorder(), n_batches=3)
        trio.run(epoch, learner, TrainingPhase())
        assert history(learner, TrainingPhase()) == History(1, 3, 3)
        assert history(learner, ValidationPhase()) == History(0, 0, 0)
        trio.run(epoch, learner, ValidationPhase(), learner.data.validation[:2])
        assert history(learner, ValidationPhase()) == History(1, 2, 2)

    def test_steps_epoch_resets_each_epoch(self) -> None:
        """steps_epoch restarts at every EpochBegin while steps keeps counting."""
        learner = test_learner(Recorder(), n_batches=3)
        trio.run(epoch, learner, TrainingPhase())
        trio.run(epoch, learner, TrainingPhase(), learner.data.training[:1])
        assert history(learner, TrainingPhase()) == History(2, 4, 1)

    def test_cancelled_steps_are_not_counted(self) -> None:
        """A cancelled step has no StepEnd, so it is not counted."""
        calls = {"n": 0}

        def cancel_odd(_: Any) -> None:
            calls["n"] += 1
            if calls["n"] % 2:
                raise CancelStepException("odd")

        learner = test_learner(Recorder(), CustomCallback(cancel_odd, StepBegin), n_batches=4)
        trio.run(epoch, learner, TrainingPhase())
        assert history(learner, TrainingPhase()) == History(1, 2, 2)

    def test_init_creates_history_once(self) -> None:
        """init creates cbstate.history as a PhaseDict of History, and keeps an existing one."""
        learner = test_learner(Recorder())
        h = learner.cbstate.history
        assert isinstance(h, PhaseDict)
        assert h.default_factory is History
        learner.replace_callback(Recorder())
        assert learner.cbstate.history is h

    def test_state_access(self) -> None:
        """The Recorder writes cbstate.history and nothing else."""
        assert Recorder.state_access == {"cbstate": {"history": Write()}}
