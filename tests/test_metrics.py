"""Tests for asyncloop.callbacks._metrics: Metric, Loss, Metrics, accuracy and the torchmetrics adapter."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchmetrics
import trio

from asyncloop import (
    AbstractMetric,
    Learner,
    Loss,
    Metric,
    Metrics,
    Phase,
    ProtectedError,
    Read,
    Recorder,
    TrainingPhase,
    ValidationPhase,
    Write,
    accuracy,
    epoch,
    fit,
    test_learner,
)
from asyncloop.callbacks._metrics import TorchMetric
from asyncloop.state import PhaseDict, SeriesHistory
from matchers import exact


def mae(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return (preds - ys).abs().mean()


def max_error(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return (preds - ys).abs().max()


def step_series(learner: Learner, phase: Phase) -> SeriesHistory:
    return learner.cbstate.metrics_step[phase]


def epoch_series(learner: Learner, phase: Phase) -> SeriesHistory:
    return learner.cbstate.metrics_epoch[phase]


def unequal_batches_learner(*metrics: Any) -> Learner:
    """A test learner whose validation data has batches of 2 and 6 samples."""
    learner = test_learner(Recorder(), Metrics(*metrics))
    xs = torch.arange(1.0, 9.0)
    learner.data = {"validation": [(xs[:2], xs[:2] * 3), (xs[2:], xs[2:] * 3.5)]}
    return learner


class TestAccuracy:
    def test_seed_cases(self) -> None:
        """Seed #46: accuracy of one-hot targets against equal or confident predictions is 1."""
        targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        assert accuracy(targets, targets).item() == 1.0
        assert accuracy(torch.tensor([[0.9, 0.1], [0.1, 0.9]]), targets).item() == 1.0

    def test_class_index_targets(self) -> None:
        """Targets may be class indices; the result is the fraction of rows whose argmax matches."""
        preds = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
        assert accuracy(preds, torch.tensor([0, 1, 1, 0])).item() == 0.5

    def test_scalar_predictions(self) -> None:
        """Scalar predictions have no class axis and are rejected."""
        with pytest.raises(ValueError, match=exact("accuracy needs predictions with a class axis, got a scalar")):
            accuracy(torch.tensor(1.0), torch.tensor(1.0))


class TestMetric:
    def test_name_from_function(self) -> None:
        """A Metric's default name is the function name with a capital first letter."""
        assert Metric(accuracy).name == "Accuracy"
        assert Metric(max_error).name == "Max_error"
        assert Metric(mae, name="MAE").name == "MAE"

    def test_bad_arguments(self) -> None:
        """Metric needs a callable and a Phase class."""
        with pytest.raises(TypeError, match=exact("Metric needs a function fn(preds, targets), got 3")):
            Metric(3)  # type: ignore[arg-type]
        with pytest.raises(
            TypeError, match=exact("phase must be a Phase class such as ValidationPhase, got ValidationPhase()")
        ):
            Metric(mae, phase=ValidationPhase())  # type: ignore[arg-type]

    def test_repr(self) -> None:
        """Metrics repr with their names."""
        assert repr(Metric(accuracy)) == "Metric(Accuracy)"
        assert repr(Loss()) == "Loss('Loss')"
        assert repr(Metrics(accuracy)) == "Metrics(Loss, Accuracy)"

    def test_device_is_applied(self) -> None:
        """device is applied to predictions and targets before the function."""
        seen = []

        def spy(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
            seen.append((preds.dtype, ys.dtype))
            return mae(preds, ys)

        learner = test_learner(Recorder(), Metrics(Metric(spy, device=lambda t: t.double())), n_batches=1)
        trio.run(epoch, learner, ValidationPhase())
        assert seen == [(torch.float64, torch.float64)]


class TestMetrics:
    def test_loss_is_always_first(self) -> None:
        """Metrics() tracks the loss; extra metrics follow it, plain functions wrapped in Metric."""
        assert [type(m) for m in Metrics().metrics] == [Loss]
        metrics = Metrics(accuracy, Metric(mae, name="MAE")).metrics
        assert [m.name for m in metrics] == ["Loss", "Accuracy", "MAE"]
        assert isinstance(metrics[1], Metric) and metrics[1].fn is accuracy

    def test_only_a_loss_only_metrics_gets_the_learner_itself(self) -> None:
        """Metrics() with just the loss gets the Learner itself (no view); with another metric, or as a subclass,
        its handlers get a protected view, so a custom metric reading undeclared state raises ProtectedError."""
        assert Metrics()._takes_learner()
        assert not Metrics(accuracy)._takes_learner()

        class Sub(Metrics):
            pass

        assert not Sub()._takes_learner()

        class Nosy(AbstractMetric):
            name = "Nosy"

            def reset(self) -> None:
                pass

            def update(self, learner: Any, phase: Phase) -> None:
                learner.model

            def step_value(self) -> Any:
                return None

            def epoch_value(self) -> Any:
                return None

        with pytest.raises(ProtectedError, match="Read access to Learner.model disallowed."):
            trio.run(fit, test_learner(Recorder(), Metrics(Nosy()), n_batches=1), 1)

    def test_phase_restriction(self) -> None:
        """Seed #10: a metric restricted to ValidationPhase is tracked in validation only, per step and per epoch."""
        learner = test_learner(Metrics(Metric(accuracy, phase=ValidationPhase)), Recorder())
        trio.run(fit, learner, 1)
        assert "Accuracy" in step_series(learner, ValidationPhase())
        assert "Accuracy" not in step_series(learner, TrainingPhase())
        assert "Accuracy" in epoch_series(learner, ValidationPhase())
        assert "Accuracy" not in epoch_series(learner, TrainingPhase())
        assert "Loss" in epoch_series(learner, TrainingPhase())

    def test_step_and_epoch_indices(self) -> None:
        """Step values are pushed at the 1-based step count, epoch values at the 1-based epoch count."""
        learner = test_learner(Recorder(), Metrics(), n_batches=3)
        trio.run(fit, learner, 2)
        assert step_series(learner, TrainingPhase()).indices("Loss") == [1, 2, 3, 4, 5, 6]
        assert epoch_series(learner, TrainingPhase()).indices("Loss") == [1, 2]
        assert epoch_series(learner, ValidationPhase()).indices("Loss") == [1, 2]

    def test_step_values_are_the_step_losses(self) -> None:
        """The Loss step values are the losses of the steps, as Python floats."""
        learner = test_learner(Recorder(), Metrics(), n_batches=2)
        losses = [mae(learner.model(xs), ys).item() for xs, ys in learner.data.validation]
        trio.run(epoch, learner, ValidationPhase())
        values = step_series(learner, ValidationPhase()).values("Loss")
        assert values == pytest.approx(losses)
        assert all(type(v) is float for v in values)

    def test_epoch_value_is_batch_size_weighted(self) -> None:
        """The epoch value is the mean of the step values weighted by batch size (not the mean of batches)."""
        learner = unequal_batches_learner(Metric(max_error))
        (x1, y1), (x2, y2) = learner.data.validation
        with torch.no_grad():
            loss1, loss2 = mae(learner.model(x1), y1).item(), mae(learner.model(x2), y2).item()
            max1, max2 = max_error(learner.model(x1), y1).item(), max_error(learner.model(x2), y2).item()
        trio.run(epoch, learner, ValidationPhase())
        series = epoch_series(learner, ValidationPhase())
        assert series.last("Loss")[1] == pytest.approx((2 * loss1 + 6 * loss2) / 8, rel=1e-6)
        assert series.last("Max_error")[1] == pytest.approx((2 * max1 + 6 * max2) / 8, rel=1e-6)
        assert series.last("Loss")[1] != pytest.approx((loss1 + loss2) / 2, rel=1e-3)

    def test_metrics_reset_every_epoch(self) -> None:
        """Each epoch value covers only that epoch's steps."""
        learner = test_learner(Recorder(), Metrics(), n_batches=2)
        first, second = learner.data.validation
        with torch.no_grad():
            expected = [mae(learner.model(xs), ys).item() for xs, ys in (first, second)]
        trio.run(epoch, learner, ValidationPhase(), [first])
        trio.run(epoch, learner, ValidationPhase(), [second])
        assert epoch_series(learner, ValidationPhase()).values("Loss") == pytest.approx(expected)

    def test_duplicate_names(self) -> None:
        """Two metrics with the same name are an error naming them and the fix."""
        with pytest.raises(
            ValueError,
            match=exact(
                "Multiple metrics have the same name: 'Accuracy'; give them distinct names with Metric(fn, name=...)"
            ),
        ):
            Metrics(accuracy, Metric(accuracy))

    def test_duplicate_of_the_loss(self) -> None:
        """A metric named 'Loss' clashes with the built-in loss."""
        with pytest.raises(ValueError, match=r"^Multiple metrics have the same name: 'Loss'; "):
            Metrics(Metric(mae, name="Loss"))

    def test_not_a_metric(self) -> None:
        """Something that is neither callable nor a metric is rejected."""
        with pytest.raises(
            TypeError, match=exact("Metrics takes metric functions fn(preds, targets) or AbstractMetric objects, got 3")
        ):
            Metrics(3)

    def test_custom_abstract_metric(self) -> None:
        """Any AbstractMetric subclass can be tracked; None values are not pushed."""

        class CountSteps(AbstractMetric):
            name = "Steps"

            def reset(self) -> None:
                self.n = 0

            def update(self, learner: Any, phase: Phase) -> None:
                self.n += 1

            def step_value(self) -> Any:
                return None

            def epoch_value(self) -> Any:
                return self.n

        learner = test_learner(Recorder(), Metrics(CountSteps()), n_batches=3)
        trio.run(epoch, learner, TrainingPhase())
        assert epoch_series(learner, TrainingPhase()).last("Steps") == (1, 3)
        assert "Steps" not in step_series(learner, TrainingPhase())

    def test_torchmetrics_metric(self) -> None:
        """A torchmetrics metric is accepted and its epoch value is computed over the whole epoch."""
        learner = unequal_batches_learner(torchmetrics.MeanSquaredError())
        assert isinstance(learner.get_callback(Metrics).metrics[1], TorchMetric)
        (x1, y1), (x2, y2) = learner.data.validation
        with torch.no_grad():
            preds = torch.cat([learner.model(x1), learner.model(x2)])
        expected = ((preds - torch.cat([y1, y2])) ** 2).mean().item()
        trio.run(epoch, learner, ValidationPhase())
        assert epoch_series(learner, ValidationPhase()).last("MeanSquaredError")[1] == pytest.approx(expected)
        assert "MeanSquaredError" not in step_series(learner, ValidationPhase())

    def test_torchmetrics_phase_restriction(self) -> None:
        """TorchMetric(phase=...) computes only in that phase."""
        metric = TorchMetric(torchmetrics.MeanAbsoluteError(), name="MAE", phase=ValidationPhase)
        learner = test_learner(Recorder(), Metrics(metric), n_batches=2)
        trio.run(fit, learner, 1)
        assert "MAE" in epoch_series(learner, ValidationPhase())
        assert "MAE" not in epoch_series(learner, TrainingPhase())

    def test_init_creates_series_once(self) -> None:
        """init creates metrics_step and metrics_epoch as PhaseDicts of SeriesHistory, keeping existing ones."""
        learner = test_learner(Recorder(), Metrics())
        step, ep = learner.cbstate.metrics_step, learner.cbstate.metrics_epoch
        assert isinstance(step, PhaseDict) and step.default_factory is SeriesHistory
        assert isinstance(ep, PhaseDict)
        learner.replace_callback(Metrics(accuracy))
        assert learner.cbstate.metrics_step is step
        assert learner.cbstate.metrics_epoch is ep

    def test_declarations(self) -> None:
        """Metrics writes the metric series, reads the history and the step, and runs after the Recorder."""
        assert Metrics.state_access == {
            "cbstate": {"metrics_step": Write(), "metrics_epoch": Write(), "history": Read()},
            "step": Read(),
        }
        assert Metrics.run_after == (Recorder,)


class TestBatchSize:
    @pytest.mark.parametrize(
        ("ys", "expected"),
        [
            (torch.zeros(5, 3), 5),
            (torch.tensor(2.0), 1),
            ((torch.zeros(4), torch.zeros(4, 2)), 4),
            ([torch.zeros(3, 2), torch.zeros(3)], 3),
            ({"boxes": torch.zeros(6, 4), "labels": torch.zeros(6)}, 6),
            ({"outer": {"inner": torch.zeros(7)}}, 7),
            ({"names": ["a", "b", "c"]}, 3),
            ([[torch.zeros(2, 4), torch.zeros(2)], torch.zeros(2)], 2),
            (({"mask": torch.zeros(5, 1)}, torch.zeros(5)), 5),
            (["cat", "dog"], 2),
            ([[1, 2], [3, 4], [5, 6]], 3),
            ((), 0),
            ({}, 0),
            (3.5, 1),
        ],
        ids=[
            "tensor", "scalar-tensor", "tuple", "list", "dict", "nested-dict", "dict-of-list", "nested-list",
            "tuple-led-by-dict", "list-of-str", "list-of-samples", "empty-tuple", "empty-dict", "number",
        ],
    )
    def test_rows(self, ys: Any, expected: int) -> None:
        """_batch_size counts the rows of the leading tensor of tuple/list/dict targets, else the length, else 1."""
        from asyncloop.callbacks._metrics import _batch_size

        assert _batch_size(ys) == expected

    def test_tuple_and_dict_targets_weight_the_epoch_value(self) -> None:
        """A metric over tuple or dict targets weights each step by the rows of its leading tensor."""
        for wrap in (lambda t: (t, t.sum()), lambda t: {"y": t, "n": len(t)}):
            metric = Metric(lambda preds, ys: preds.sum(), name="Sum")
            for rows, value in ((2, 1.0), (6, 3.0)):
                step = {"preds": torch.tensor(value), "ys": wrap(torch.zeros(rows))}
                metric.update(type("L", (), {"step": type("S", (), step)()})(), TrainingPhase())
            assert metric.epoch_value() == pytest.approx((2 * 1.0 + 6 * 3.0) / 8)


class TestLossAdd:
    def test_add_returns_the_step_value(self) -> None:
        """Loss.add counts a step by batch size and returns the value step_value() then reports (CPU: a float)."""
        loss = Loss()
        assert loss.add(torch.tensor(2.0), torch.zeros(3)) == 2.0
        value = loss.add(torch.tensor(4.0, requires_grad=True), torch.zeros(1))
        assert value == 4.0 and type(value) is float and loss.step_value() == value
        assert loss.epoch_value() == pytest.approx((3 * 2.0 + 4.0) / 4)
