"""Tests for asyncloop.callbacks._scheduler: Scheduler sets hyperparameters on the live optimizer every step."""

from __future__ import annotations

import warnings
from typing import Any

import networkx as nx
import pytest
import torch
import trio

from asyncloop import (
    AbstractTrainingPhase,
    ActorRunner,
    Callback,
    CancelStepException,
    LearningRate,
    LinearRunner,
    Read,
    Recorder,
    Scheduler,
    StepBegin,
    ToDevice,
    ToGPU,
    TrainingPhase,
    Write,
    epoch,
    fit,
    on,
    test_learner,
)
from asyncloop.hyperparameters import WeightDecay, constant, cosine, linear, per_epoch, polynomial
from matchers import exact

RUNNERS = [LinearRunner, ActorRunner]


class LrSpy(Callback):
    """Record the lr of every param group at BackwardBegin (after the Scheduler set it)."""

    state_access = {"optimizer": Read()}
    run_after = (Scheduler,)

    def __init__(self) -> None:
        self.seen: list[list[float]] = []

    @on(StepBegin, AbstractTrainingPhase)
    def spy(self, event: Any, phase: Any, learner: Any) -> None:
        self.seen.append([g["lr"] for g in learner.optimizer.param_groups])


class TestScheduler:
    def test_seed_scheduler(self) -> None:
        """Seed #36 with the true values: a per-epoch Poly(1e-4, p=1, max_iter=10) gives 1e-4, then 9e-5."""
        schedule = per_epoch(polynomial(1e-4, 0.0, 10), 16)
        learner = test_learner(Recorder(), Scheduler({LearningRate: schedule}), n_batches=16)
        trio.run(epoch, learner, TrainingPhase())
        index, value = learner.cbstate.hyperparams.last("LearningRate")
        assert (index, value) == (15, 1e-4)
        trio.run(epoch, learner, TrainingPhase())
        index, value = learner.cbstate.hyperparams.last("LearningRate")
        assert index == 31 and value == pytest.approx(9e-5, rel=1e-12)

    def test_regression_122_no_cycle_with_to_gpu(self) -> None:
        """Seed #38 / FluxTraining #122: Scheduler + ToGPU + Recorder form no cycle; ToDevice runs first."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            to_gpu = ToGPU()
        learner = test_learner(Recorder(), Scheduler({LearningRate: cosine(0.0, 0.0, 1)}), to_gpu)
        graph = learner.graph
        assert nx.is_directed_acyclic_graph(graph)
        assert nx.has_path(graph, 2, 1)  # ToGPU -> Scheduler

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_t_counts_steps_across_epochs_and_sets_every_group(self, runner: type) -> None:
        """t = 1, 2, ... over all training steps; every param group gets the value; indices are completed steps."""
        model = torch.nn.Linear(1, 1)
        opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=1.0)
        spy = LrSpy()
        learner = test_learner(
            Recorder(), Scheduler({LearningRate: lambda t: t / 100}), spy, n_batches=3, runner=runner()
        )
        learner.model, learner.optimizer = model, opt
        learner.data = [(torch.ones(2, 1), torch.ones(2, 1))] * 3, [(torch.ones(2, 1), torch.ones(2, 1))] * 3
        trio.run(fit, learner, 2)
        hp = learner.cbstate.hyperparams
        assert hp.indices("LearningRate") == [0, 1, 2, 3, 4, 5]
        assert hp.values("LearningRate") == [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
        assert spy.seen == [[t / 100] * 2 for t in range(1, 7)]
        assert [g["lr"] for g in opt.param_groups] == [0.06, 0.06]
        trio.run(fit, learner, 1)  # t goes on in the next fit
        assert learner.cbstate.hyperparams.last("LearningRate") == (8, 0.09)

    def test_validation_steps_are_not_scheduled(self) -> None:
        """Only training steps advance t and set values."""
        learner = test_learner(Recorder(), Scheduler({LearningRate: lambda t: float(t)}), n_batches=2)
        trio.run(fit, learner, 1)
        assert learner.cbstate.hyperparams.values("LearningRate") == [1.0, 2.0]

    def test_cancelled_step_is_recorded_once(self) -> None:
        """G.11: a step cancelled after the Scheduler ran is retried at the same index; its record is replaced."""

        class CancelSecond(Callback):
            run_after = (Scheduler,)

            def __init__(self) -> None:
                self.n = 0

            @on(StepBegin, AbstractTrainingPhase)
            def maybe_cancel(self, event: Any, phase: Any, learner: Any) -> None:
                self.n += 1
                if self.n == 2:
                    raise CancelStepException("skip")

        learner = test_learner(Recorder(), Scheduler({LearningRate: lambda t: float(t)}), CancelSecond(), n_batches=4)
        trio.run(epoch, learner, TrainingPhase())
        hp = learner.cbstate.hyperparams
        assert hp.indices("LearningRate") == [0, 1, 2]
        assert hp.values("LearningRate") == [1.0, 3.0, 4.0]
        assert learner.cbstate.history[TrainingPhase()].steps == 3

    def test_user_hyperparameter_and_merged_access(self) -> None:
        """Any HyperParameter can be scheduled; the Scheduler's access merges its own with each one's."""
        scheduler = Scheduler({LearningRate: constant(0.001), WeightDecay: linear(0.0, 0.1, 2)})
        assert scheduler.state_access == {
            "cbstate": {"hyperparams": Write(), "history": Read()},
            "optimizer": Write(),
        }
        learner = test_learner(Recorder(), scheduler, n_batches=2)
        trio.run(epoch, learner, TrainingPhase())
        assert learner.cbstate.hyperparams.values("WeightDecay") == [0.0, 0.1]
        assert learner.optimizer.param_groups[0]["weight_decay"] == 0.1

    def test_empty_scheduler(self) -> None:
        """Seeds #24-#26: an empty Scheduler is fine and creates cbstate.hyperparams."""
        learner = test_learner(Recorder(), Scheduler())
        trio.run(fit, learner, 1)
        assert len(learner.cbstate.hyperparams) == 0

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_same_values_under_both_runners(self, runner: type) -> None:
        """Both runners give the same hyperparameter history and weights."""
        schedule = cosine(0.01, 0.0, 32)
        learner = test_learner(Recorder(), Scheduler({LearningRate: schedule}), n_batches=8, runner=runner())
        trio.run(fit, learner, 2)
        torch.manual_seed(0)
        ref = test_learner(Recorder(), Scheduler({LearningRate: schedule}), n_batches=8)
        trio.run(fit, ref, 2)
        assert learner.cbstate.hyperparams.values("LearningRate") == ref.cbstate.hyperparams.values("LearningRate")
        assert torch.equal(learner.model.c, ref.model.c)

    def test_state_dict(self) -> None:
        """The schedule position t is saved and restored."""
        scheduler = Scheduler({LearningRate: constant(0.1)})
        trio.run(fit, test_learner(Recorder(), scheduler, n_batches=3), 1)
        assert scheduler.state_dict() == {"t": 4}
        other = Scheduler({LearningRate: constant(0.1)})
        other.load_state_dict({"t": 4})
        assert other.state_dict() == {"t": 4}

    def test_bad_arguments(self) -> None:
        """A non-dict, a non-hyperparameter key or a non-callable schedule is rejected."""
        with pytest.raises(TypeError, match=r"^Scheduler takes a dict \{HyperParameter: schedule\}"):
            Scheduler(LearningRate)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=exact("expected a HyperParameter subclass such as LearningRate, got 'lr'")):
            Scheduler({"lr": constant(1.0)})  # type: ignore[dict-item]
        with pytest.raises(
            TypeError, match=exact("the schedule for LearningRate must be a callable t -> value, got 0.1")
        ):
            Scheduler({LearningRate: 0.1})  # type: ignore[dict-item]

    def test_repr(self) -> None:
        """The repr shows the schedules."""
        assert repr(Scheduler({LearningRate: constant(0.1)})) == "Scheduler({LearningRate: constant(value=0.1)})"

    def test_with_to_device_order(self) -> None:
        """With a ToDevice, the write conflict on the optimizer is resolved: ToDevice runs first."""
        learner = test_learner(Scheduler({LearningRate: constant(0.1)}), ToDevice("cpu"), Recorder())
        assert learner.graph.has_edge(1, 0)
