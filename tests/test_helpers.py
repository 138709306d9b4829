"""Tests for asyncloop.callbacks._helpers: GradientClipping, GradientAccumulation and MixedPrecision."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import trio

from asyncloop import (
    AbstractTrainingPhase,
    ActorRunner,
    BackwardEnd,
    Callback,
    GradientAccumulation,
    GradientClipping,
    Learner,
    LinearRunner,
    LossBegin,
    Metrics,
    MixedPrecision,
    Phase,
    Read,
    Recorder,
    StepEnd,
    TrainingPhase,
    Write,
    fit,
    on,
)
from matchers import exact

RUNNERS = [LinearRunner, ActorRunner]


def batches(n: int, size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        xs = torch.randn(size, 3, generator=g)
        out.append((xs, xs @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1))
    return out


def linear_learner(*callbacks: Callback, data: Any, lr: float = 0.1, runner: type = LinearRunner) -> Learner:
    torch.manual_seed(0)
    return Learner(
        torch.nn.Linear(3, 1),
        torch.nn.functional.mse_loss,
        data=data,
        optimizer=lambda p: torch.optim.SGD(p, lr=lr),
        callbacks=[Recorder(), *callbacks],
        use_default_callbacks=False,
        runner=runner(),
    )


class Spy(Callback):
    """After the helpers, record gradients, the step controls and the dtype of predictions."""

    state_access = {"step": Read()}
    run_after = (GradientClipping, GradientAccumulation, MixedPrecision)

    def __init__(self) -> None:
        self.grads: list[list[torch.Tensor]] = []
        self.norms: list[Any] = []
        self.accumulate: list[bool] = []
        self.pred_dtypes: list[tuple[str, torch.dtype]] = []
        self.autocast_in_handlers: list[bool] = []

    @on(LossBegin)
    def loss_begin(self, event: Any, phase: Phase, learner: Any) -> None:
        self.pred_dtypes.append((type(phase).__name__, learner.step.preds.dtype))
        self.autocast_in_handlers.append(torch.is_autocast_enabled("cpu"))

    @on(BackwardEnd, AbstractTrainingPhase)
    def backward_end(self, event: Any, phase: Phase, learner: Any) -> None:
        self.grads.append([g.clone() for g in learner.step.grads.values()])
        self.norms.append(learner.step.get("grad_norm"))
        self.accumulate.append(bool(learner.step.get("accumulate", False)))

    @on(StepEnd)
    def step_end(self, event: Any, phase: Phase, learner: Any) -> None:
        self.autocast_in_handlers.append(torch.is_autocast_enabled("cpu"))


class TestGradientClipping:
    @pytest.mark.parametrize("runner", RUNNERS)
    def test_norm_clipping_matches_torch(self, runner: type) -> None:
        """Gradients are rescaled exactly as clip_grad_norm_ does; the pre-clip norm is in step.grad_norm."""
        data = batches(1, 8)
        spy = Spy()
        learner = linear_learner(GradientClipping(0.5), spy, data=(data, data), runner=runner)
        reference = copy.deepcopy(learner.model)
        trio.run(fit, learner, 1)
        xs, ys = data[0]
        torch.nn.functional.mse_loss(reference(xs), ys).backward()
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        expected = [p.grad for p in reference.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(spy.grads[0], expected))
        assert torch.equal(spy.norms[0], norm) and norm > 0.5

    def test_value_clipping(self) -> None:
        """max_value clamps every gradient element."""
        data = batches(2, 8)
        spy = Spy()
        trio.run(fit, linear_learner(GradientClipping(max_value=0.01), spy, data=(data, data)), 1)
        assert all(g.abs().max() <= 0.01 for step in spy.grads for g in step)

    def test_bad_arguments(self) -> None:
        """Exactly one of max_norm / max_value, positive."""
        with pytest.raises(
            ValueError, match=exact("GradientClipping takes either max_norm or max_value, not both and not neither")
        ):
            GradientClipping()
        with pytest.raises(ValueError, match=exact("GradientClipping: max_norm must be a number > 0, got -1")):
            GradientClipping(-1)
        assert repr(GradientClipping(max_value=2)) == "GradientClipping(max_value=2.0)"

    def test_declarations(self) -> None:
        """It writes the gradients (and grad_norm), reads the scaler and the accumulate flag."""
        assert GradientClipping(1.0).state_access == {
            "step": {"grads": Write(), "grad_norm": Write(), "grad_scaler": Read(), "accumulate": Read()},
            "optimizer": Read(),
        }


class Unsized:
    """An iterable without a length."""

    def __init__(self, data: list[Any]) -> None:
        self.data = data

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)


class TestGradientAccumulation:
    @pytest.mark.parametrize("runner", RUNNERS)
    def test_equivalent_to_a_larger_batch(self, runner: type) -> None:
        """Accumulating 2 batches of 4 equals one step on the batch of 8 (mean loss)."""
        small = batches(4, 4)
        large = [(torch.cat([small[i][0], small[i + 1][0]]), torch.cat([small[i][1], small[i + 1][1]])) for i in (0, 2)]
        accumulated = linear_learner(GradientAccumulation(2), data=(small, small), runner=runner)
        plain = linear_learner(data=(large, large))
        trio.run(fit, accumulated, 2)
        trio.run(fit, plain, 2)
        for a, b in zip(accumulated.model.parameters(), plain.model.parameters()):
            assert torch.allclose(a, b, atol=1e-6)

    def test_last_step_of_an_epoch_closes_the_group(self) -> None:
        """With a known epoch length the last step always updates, so no gradients carry over between epochs."""
        data = batches(3, 4)
        spy = Spy()
        trio.run(fit, linear_learner(GradientAccumulation(2), spy, data=(data, data)), 2)
        assert spy.accumulate == [True, False, False, True, False, False]

    def test_unknown_length_spans_epochs(self) -> None:
        """With an iterable of unknown length a group may span epochs."""
        data = batches(3, 4)
        spy = Spy()
        trio.run(fit, linear_learner(GradientAccumulation(2), spy, data={"training": Unsized(data)}), 2)
        assert spy.accumulate == [True, False, True, False, True, False]

    def test_loss_metric_is_unscaled(self) -> None:
        """The recorded loss is the real loss; only backward sees the 1/n scale."""
        data = batches(2, 4)
        learner = linear_learner(GradientAccumulation(2), Metrics(), data=(data, data))
        reference = copy.deepcopy(learner.model)
        trio.run(fit, learner, 1)
        first = torch.nn.functional.mse_loss(reference(data[0][0]), data[0][1]).item()
        assert learner.cbstate.metrics_step[TrainingPhase()].values("Loss")[0] == pytest.approx(first, rel=1e-6)

    def test_clipping_waits_for_the_update(self) -> None:
        """GradientClipping clips only the accumulated gradients, at the updating step."""
        data = batches(4, 4)
        spy = Spy()
        trio.run(fit, linear_learner(GradientAccumulation(2), GradientClipping(1e-3), spy, data=(data, data)), 1)
        assert [n is not None for n in spy.norms] == [False, True, False, True]

    def test_state_dict_and_arguments(self) -> None:
        """The open group is saved; n_steps must be a positive int."""
        cb = GradientAccumulation(3)
        cb.load_state_dict({"in_group": 2})
        assert cb.state_dict() == {"in_group": 2}
        with pytest.raises(ValueError, match=exact("GradientAccumulation: n_steps must be an int >= 1, got 0")):
            GradientAccumulation(0)


class TestMixedPrecision:
    @pytest.mark.parametrize("runner", RUNNERS)
    def test_bf16_autocast_on_cpu(self, runner: type) -> None:
        """Forward passes run in bfloat16 (training and validation); handlers never run under autocast."""
        data = batches(2, 4)
        spy = Spy()
        learner = linear_learner(MixedPrecision(), spy, data=(data, data), runner=runner)
        trio.run(fit, learner, 1)
        assert spy.pred_dtypes == [("TrainingPhase", torch.bfloat16)] * 2 + [("ValidationPhase", torch.bfloat16)] * 2
        assert not any(spy.autocast_in_handlers)
        assert learner.model.weight.dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")

    def test_autocast_is_left_when_the_forward_fails(self) -> None:
        """An error in the forward pass leaves autocast too (the training step's `with`)."""
        calls = []

        class Flaky(torch.nn.Linear):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                calls.append(torch.is_autocast_enabled("cpu"))
                raise RuntimeError("boom")

        learner = linear_learner(MixedPrecision(), data=(batches(1, 2), batches(1, 2)))
        learner.model = Flaky(3, 1)
        learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=0.1)
        with pytest.raises(RuntimeError, match=r"^boom"):
            trio.run(fit, learner, 1)
        assert calls == [True]

    def test_grad_scaler(self) -> None:
        """With a grad scaler the loss is scaled for backward and the scaler's state is checkpointed."""
        data = batches(4, 8)
        cb = MixedPrecision(grad_scaler=True)
        learner = linear_learner(cb, Metrics(), data=(data, data), lr=0.05)
        trio.run(fit, learner, 3)
        losses = learner.cbstate.metrics_epoch[TrainingPhase()].values("Loss")
        assert losses[-1] < losses[0]
        state = cb.state_dict()["grad_scaler"]
        assert state["scale"] > 1 and set(state) >= {"scale", "growth_factor", "backoff_factor", "growth_interval"}
        fresh = MixedPrecision(grad_scaler=True)
        fresh.load_state_dict({"grad_scaler": state})
        assert fresh.scaler("cpu").get_scale() == state["scale"]

    def test_clipping_unscales_first(self) -> None:
        """GradientClipping unscales the gradients before measuring them."""
        data = batches(1, 8)
        spy = Spy()
        learner = linear_learner(MixedPrecision(grad_scaler=True), GradientClipping(100.0), spy, data=(data, data))
        reference = copy.deepcopy(learner.model)
        trio.run(fit, learner, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(reference(data[0][0]), data[0][1])
        loss.backward()
        expected = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()])
        assert spy.norms[0] == pytest.approx(expected.item(), rel=1e-3)

    def test_bad_dtype_and_declarations(self) -> None:
        """Only float16 and bfloat16; it writes the autocast and grad_scaler controls and reads the model."""
        with pytest.raises(
            ValueError, match=exact("MixedPrecision: dtype must be torch.float16 or torch.bfloat16, got torch.float64")
        ):
            MixedPrecision(torch.float64)
        assert MixedPrecision.state_access == {"step": {"autocast": Write(), "grad_scaler": Write()}, "model": Read()}
        assert repr(MixedPrecision(torch.bfloat16)) == "MixedPrecision(torch.bfloat16)"
