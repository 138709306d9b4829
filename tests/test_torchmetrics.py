"""torchmetrics metrics in Metrics: accumulated on the metric's device, computed once per epoch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchmetrics
import trio

from asyncloop import (
    ActorRunner,
    Learner,
    LinearRunner,
    Metrics,
    Recorder,
    TrainingPhase,
    ValidationPhase,
    accuracy,
    fit,
)

RUNNERS = [LinearRunner, ActorRunner]


class Spy(torchmetrics.Metric):
    """A sum metric that records how it is driven."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.inputs: list[tuple[type, torch.device, bool]] = []
        self.computes = 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.inputs.append((type(preds), preds.device, preds.requires_grad))
        self.total += preds.sum()

    def compute(self) -> torch.Tensor:
        self.computes += 1
        return self.total


def classifier(*metrics: Any, runner: type = LinearRunner) -> Learner:
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(40, 5, generator=g)
    ys = xs[:, :3].argmax(1)
    sizes = [8, 8, 8, 16]  # unequal batches: epoch values must weight by samples
    data, start = [], 0
    for n in sizes:
        data.append((xs[start : start + n], ys[start : start + n]))
        start += n
    torch.manual_seed(0)
    return Learner(
        torch.nn.Linear(5, 3),
        torch.nn.functional.cross_entropy,
        data=(data, data),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
        callbacks=[Recorder(), Metrics(*metrics)],
        use_default_callbacks=False,
        runner=runner(),
    )


class TestTorchMetrics:
    def test_accumulates_on_device_and_computes_once_per_epoch(self) -> None:
        """update() gets detached tensors every step (no host sync); compute() runs once per epoch; state on device."""
        spy = Spy()
        learner = classifier(spy)
        trio.run(fit, learner, 2)
        assert len(spy.inputs) == 16  # 4 training + 4 validation steps, 2 epochs
        assert all(kind is torch.Tensor and not grad for kind, _, grad in spy.inputs)
        assert {device for _, device, _ in spy.inputs} == {spy.device}
        assert spy.computes == 4  # one per epoch and phase
        assert isinstance(spy.total, torch.Tensor) and spy.total.device == spy.device
        assert "Spy" not in learner.cbstate.metrics_step[TrainingPhase()]
        assert len(learner.cbstate.metrics_epoch[ValidationPhase()].values("Spy")) == 2

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_epoch_value_matches_the_batch_weighted_accuracy(self, runner: type) -> None:
        """MulticlassAccuracy (micro) over an epoch equals Metrics' batch-size-weighted accuracy; reset per epoch."""
        tm = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")
        learner = classifier(tm, accuracy, runner=runner)
        trio.run(fit, learner, 3)
        series = learner.cbstate.metrics_epoch[ValidationPhase()]
        ours, theirs = series.values("Accuracy"), series.values("MulticlassAccuracy")
        assert theirs == pytest.approx(ours, abs=1e-6)
        assert len(set(theirs)) > 1  # reset every epoch: the values move as the model learns

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_metric_follows_predictions_to_the_gpu(self) -> None:  # pragma: no cover - needs a GPU
        """A CPU metric moves to the device of the predictions and accumulates there."""
        from asyncloop import ToDevice

        spy = Spy()
        learner = classifier(spy)
        learner.add_callback(ToDevice("cuda"))
        trio.run(fit, learner, 1)
        assert spy.device.type == "cuda" and spy.total.is_cuda
