"""Tests for asyncloop.callbacks._traces: Traces records values per step into cbstate.trace_history."""

from __future__ import annotations

import warnings

import pytest
import torch
import trio

from asyncloop import (
    ActorRunner,
    LinearRunner,
    Read,
    Recorder,
    Traces,
    TrainingPhase,
    ValidationPhase,
    Write,
    fit,
    test_learner,
)
from asyncloop.state import PhaseDict, SeriesHistory
from matchers import exact

RUNNERS = [LinearRunner, ActorRunner]


class TestTraces:
    def test_seed_traces(self) -> None:
        """Seed #11: traces restricted to ValidationPhase appear there and not in training."""
        traces = Traces(
            {"keya": lambda learner: learner.step.ys.sum(), "keyb": lambda learner: learner.step.preds.sum()},
            ValidationPhase,
        )
        learner = test_learner(traces, Recorder())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            trio.run(fit, learner, 1)
        history = learner.cbstate.trace_history
        assert isinstance(history, PhaseDict)
        assert "keya" in history[ValidationPhase()] and "keyb" in history[ValidationPhase()]
        assert "keya" not in history[TrainingPhase()]

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_values_and_indices(self, runner: type) -> None:
        """Values are pushed at index history[phase].steps; tensors are detached and read back as numbers."""
        traces = Traces({"loss2": lambda learner: learner.step.loss**2}, TrainingPhase)
        learner = test_learner(traces, Recorder(), n_batches=3, runner=runner())
        trio.run(fit, learner, 2)
        series: SeriesHistory = learner.cbstate.trace_history[TrainingPhase()]
        assert series.indices("loss2") == [1, 2, 3, 4, 5, 6]
        assert all(isinstance(v, float) for v in series.values("loss2"))

    def test_tensors_are_detached(self) -> None:
        """A trace never keeps the autograd graph alive."""
        learner = test_learner(Traces({"preds": lambda learner: learner.step.preds}), Recorder(), n_batches=1)
        trio.run(fit, learner, 1)
        value = learner.cbstate.trace_history[TrainingPhase()].last("preds")[1]
        assert isinstance(value, torch.Tensor) and not value.requires_grad and value.grad_fn is None

    def test_extra_access(self) -> None:
        """access= lets a trace read more than the step."""
        traces = Traces({"c": lambda learner: learner.model.c}, access={"model": Read()})
        assert traces.state_access == {
            "cbstate": {"history": Read(), "trace_history": Write()},
            "step": Read(),
            "model": Read(),
        }
        learner = test_learner(traces, Recorder(), n_batches=3)
        trio.run(fit, learner, 1)
        values = learner.cbstate.trace_history[TrainingPhase()].values("c")
        assert values[-1] == learner.model.c.item() and values[0] != values[-1]  # copies, not the live parameter

    def test_bad_arguments(self) -> None:
        """Duplicate names, non-callables and non-phase classes are rejected."""
        with pytest.raises(ValueError, match=exact("Multiple traces have the same name: 'a'")):
            Traces([("a", len), ("a", len)])
        with pytest.raises(
            TypeError, match=exact("Traces takes a dict {name: fn(learner)} or (name, fn) pairs, got ('a', 3)")
        ):
            Traces({"a": 3})  # type: ignore[dict-item]
        with pytest.raises(
            TypeError, match=exact("Traces: phase must be a Phase class such as TrainingPhase, got 'training'")
        ):
            Traces({"a": len}, "training")  # type: ignore[arg-type]
