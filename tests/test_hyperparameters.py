"""Tests for asyncloop.hyperparameters: HyperParameter, LearningRate, set_hyperparameter and schedule shapes."""

from __future__ import annotations

import math

import pytest
import torch

from asyncloop import HyperParameter, LearningRate, Read, Write, one_cycle, set_hyperparameter, test_learner
from asyncloop.hyperparameters import (
    Momentum,
    WeightDecay,
    constant,
    cosine,
    cosine_restarts,
    exponential,
    linear,
    merge_access,
    multistep,
    per_epoch,
    polynomial,
    sequence,
    sine,
    step_decay,
    triangular,
)
from matchers import exact


def two_group_optimizer() -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.5}], lr=0.1, momentum=0.9)
    return model, opt


class TestHyperParameter:
    def test_learning_rate_sets_every_param_group(self) -> None:
        """set_hyperparameter(learner, LearningRate, v) sets lr in every param group of the live optimizer."""
        model, opt = two_group_optimizer()
        learner = test_learner(optimizer=opt)
        set_hyperparameter(learner, LearningRate, 0.01)
        assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
        assert learner.optimizer is opt

    def test_state_is_kept(self) -> None:
        """Setting a hyperparameter never rebuilds the optimizer state."""
        learner = test_learner(optimizer=lambda p: torch.optim.Adam(p, lr=0.1))
        opt = learner.optimizer
        learner.model.c.grad = torch.tensor(1.0)
        opt.step()
        moments = opt.state[learner.model.c]["exp_avg"]
        set_hyperparameter(learner, LearningRate, 0.5)
        assert opt.state[learner.model.c]["exp_avg"] is moments
        assert opt.param_groups[0]["lr"] == 0.5

    def test_tensor_hyperparameters_stay_tensors(self) -> None:
        """A tensor lr (capturable optimizers) is filled in place."""
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.Adam([p], lr=torch.tensor(0.1))
        learner = test_learner(optimizer=opt)
        lr = opt.param_groups[0]["lr"]
        set_hyperparameter(learner, LearningRate, 0.25)
        assert opt.param_groups[0]["lr"] is lr and lr.item() == 0.25

    def test_weight_decay_and_momentum(self) -> None:
        """WeightDecay sets weight_decay; Momentum sets momentum (SGD) or betas[0] (Adam)."""
        model, opt = two_group_optimizer()
        learner = test_learner(optimizer=opt)
        set_hyperparameter(learner, WeightDecay, 1e-4)
        set_hyperparameter(learner, Momentum, 0.8)
        assert [(g["weight_decay"], g["momentum"]) for g in opt.param_groups] == [(1e-4, 0.8), (1e-4, 0.8)]
        adam = torch.optim.Adam(model.parameters(), betas=(0.9, 0.99))
        learner.optimizer = adam
        set_hyperparameter(learner, Momentum, 0.5)
        assert adam.param_groups[0]["betas"] == (0.5, 0.99)

    def test_user_defined(self) -> None:
        """A user hyperparameter declares its own state access and setter."""

        class Temperature(HyperParameter):
            state_access = {"model": Write()}

            @classmethod
            def set(cls, learner, value):
                learner.model.temperature = value

        learner = test_learner()
        set_hyperparameter(learner, Temperature, 2.0)
        assert learner.model.temperature == 2.0
        assert Temperature.name == "Temperature"

    def test_param_group_key_shortcut(self) -> None:
        """param_group_key alone gives optimizer Write access and a setter."""

        class Dampening(HyperParameter):
            param_group_key = "dampening"

        assert Dampening.state_access == {"optimizer": Write()}
        model, opt = two_group_optimizer()
        set_hyperparameter(test_learner(optimizer=opt), Dampening, 0.1)
        assert [g["dampening"] for g in opt.param_groups] == [0.1, 0.1]

    def test_used_as_a_class(self) -> None:
        """Hyperparameters are classes, not instances; other values are rejected."""
        with pytest.raises(
            TypeError,
            match=exact("LearningRate is used as a class: Scheduler({LearningRate: schedule}), not LearningRate()"),
        ):
            LearningRate()
        with pytest.raises(TypeError, match=exact("expected a HyperParameter subclass such as LearningRate, got 'lr'")):
            set_hyperparameter(test_learner(), "lr", 0.1)  # type: ignore[arg-type]

    def test_missing_setter(self) -> None:
        """A hyperparameter without a key or a setter says what to define."""

        class Nothing(HyperParameter):
            pass

        with pytest.raises(
            NotImplementedError,
            match=exact("Nothing must define param_group_key or a classmethod set(cls, learner, value)"),
        ):
            set_hyperparameter(test_learner(), Nothing, 1)


class TestMergeAccess:
    def test_deep_union_with_write_winning(self) -> None:
        """Trees merge deeply; Write beats Read; a Read leaf over a subtree with writes widens to Write."""
        a = {"cbstate": {"hyperparams": Write(), "history": Read()}, "step": Read()}
        b = {"cbstate": {"history": Write(), "other": Read()}, "optimizer": Write(), "step": {"xs": Write()}}
        assert merge_access(a, b) == {
            "cbstate": {"hyperparams": Write(), "history": Write(), "other": Read()},
            "step": Write(),
            "optimizer": Write(),
        }
        assert merge_access({"step": Read()}, {"step": {"xs": Read()}}) == {"step": Read()}


class TestSchedules:
    def test_constant_and_linear(self) -> None:
        """linear goes from start at t=1 to end at t=n_steps and stays there."""
        assert constant(0.3)(100) == 0.3
        s = linear(0.0, 1.0, 5)
        assert [s(t) for t in range(1, 8)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]

    def test_cosine(self) -> None:
        """cosine anneals from start at t=1 to end at t=n_steps+1."""
        s = cosine(1.0, 0.0, 4)
        assert s(1) == 1.0 and s(3) == pytest.approx(0.5) and s(5) == 0.0 and s(9) == 0.0

    def test_step_and_exponential(self) -> None:
        """step_decay multiplies every step_size steps; exponential every step."""
        s = step_decay(1.0, 0.5, 2)
        assert [s(t) for t in range(1, 6)] == [1.0, 1.0, 0.5, 0.5, 0.25]
        e = exponential(2.0, 0.5)
        assert [e(t) for t in (1, 2, 3)] == [2.0, 1.0, 0.5]

    def test_cosine_restarts(self) -> None:
        """cosine_restarts anneals over each cycle and restarts at start; mult grows each next cycle."""
        s = cosine_restarts(1.0, 0.0, 4)
        assert [round(s(t), 3) for t in range(1, 10)] == [1.0, 0.854, 0.5, 0.146, 1.0, 0.854, 0.5, 0.146, 1.0]
        g = cosine_restarts(1.0, 0.0, 2, mult=2)
        assert [round(g(t), 3) for t in range(1, 8)] == [1.0, 0.5, 1.0, 0.854, 0.5, 0.146, 1.0]

    def test_multistep(self) -> None:
        """multistep multiplies by gamma after each milestone; a list and a tuple are the same schedule."""
        s = multistep(1.0, 0.5, [2, 4])
        assert [s(t) for t in range(1, 7)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
        assert s == multistep(1.0, 0.5, (2, 4))
        assert repr(s) == "multistep(start=1.0, gamma=0.5, milestones=(2, 4))"

    def test_sine_and_triangular_cycles(self) -> None:
        """sine and triangular cycle from low up to high and back over period steps; decay shrinks each cycle."""
        s = sine(0.0, 1.0, 4)
        assert [round(s(t), 3) for t in range(1, 10)] == [0.0, 0.707, 1.0, 0.707, 0.0, 0.707, 1.0, 0.707, 0.0]
        tri = triangular(0.1, 1.1, 4)
        assert [round(tri(t), 3) for t in range(1, 6)] == [0.1, 0.6, 1.1, 0.6, 0.1]
        tri2 = triangular(0.0, 1.0, 4, decay=0.5)
        assert [tri2(t) for t in range(1, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.25, 0.5, 0.25, 0.0]

    def test_new_shapes_validate(self) -> None:
        """Bad periods, milestones and decays of the new shapes are errors saying what to pass."""
        with pytest.raises(ValueError, match=exact("cosine_restarts: period must be an int >= 1, got 0")):
            cosine_restarts(1.0, 0.0, 0)
        with pytest.raises(ValueError, match=exact("cosine_restarts: mult must be an int >= 1, got 1.5")):
            cosine_restarts(1.0, 0.0, 2, mult=1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=exact("multistep: milestones must be strictly increasing, got [4, 2]")):
            multistep(1.0, 0.1, [4, 2])
        with pytest.raises(ValueError, match=exact("multistep: milestones must not be empty, e.g. [30, 80]")):
            multistep(1.0, 0.1, [])
        with pytest.raises(ValueError, match=exact("multistep: each milestone must be an int >= 1, got 0")):
            multistep(1.0, 0.1, [0, 3])
        with pytest.raises(
            TypeError, match=exact("multistep: milestones must be a list of step counts such as [30, 80], got 30")
        ):
            multistep(1.0, 0.1, 30)
        with pytest.raises(ValueError, match=exact("sine: period must be an int >= 1, got 0")):
            sine(0.0, 1.0, 0)
        with pytest.raises(ValueError, match=exact("triangular: decay must be > 0 (1.0 keeps the amplitude), got 0")):
            triangular(0.0, 1.0, 4, decay=0)
        with pytest.raises(ValueError, match=exact("triangular: high must be a finite number, got nan")):
            triangular(0.0, math.nan, 4)

    def test_polynomial_is_parameter_schedulers_poly(self) -> None:
        """polynomial(λ, 0, 10) is Poly(λ, p=1, max_iter=10): λ(1 - (t-1)/10)."""
        s = polynomial(1e-4, 0.0, 10)
        assert s(1) == 1e-4 and s(2) == pytest.approx(9e-5) and s(11) == 0.0
        assert polynomial(1.0, 0.0, 2, power=2.0)(2) == 0.25

    def test_sequence_and_per_epoch(self) -> None:
        """sequence restarts t for each part; per_epoch holds a value for an epoch."""
        s = sequence((linear(0.0, 1.0, 3), 3), (constant(5.0), 1))
        assert [s(t) for t in range(1, 6)] == [0.0, 0.5, 1.0, 5.0, 5.0]
        p = per_epoch(lambda e: e * 10, 4)
        assert [p(t) for t in (1, 4, 5, 8, 9)] == [10, 10, 20, 20, 30]

    def test_one_cycle_formula(self) -> None:
        """one_cycle follows FluxTraining's onecycle: sine warm-up to max_val, sine decay to end_val."""
        s = one_cycle(100, 0.01)
        assert s(1) == pytest.approx(0.01 / 25)
        assert s(25) == pytest.approx((0.01 - 0.0004) * abs(math.sin(math.pi * 24 / 50)) + 0.0004)
        assert s(26) == pytest.approx(0.01)
        assert s(100) == pytest.approx((0.01 - 1e-7) * abs(math.sin(math.pi * 149 / 150)) + 1e-7)
        assert max(s(t) for t in range(1, 101)) == pytest.approx(0.01)
        custom = one_cycle(10, 1.0, 0.1, 0.0, pct_start=0.5)
        assert custom(1) == 0.1 and custom(6) == pytest.approx(1.0)
        assert repr(custom) == "one_cycle(10, 1.0, 0.1, 0.0, pct_start=0.5)"

    def test_schedules_are_values(self) -> None:
        """Schedule objects compare equal by parameters and print them."""
        assert cosine(1.0, 0.0, 10) == cosine(1.0, 0.0, 10)
        assert repr(linear(0.0, 1.0, 5)) == "linear(start=0.0, end=1.0, n_steps=5)"

    def test_bad_arguments(self) -> None:
        """Step counts must be positive ints; one_cycle needs a decay phase."""
        with pytest.raises(ValueError, match=exact("n_steps must be an int >= 1, got 0")):
            cosine(1.0, 0.0, 0)
        with pytest.raises(ValueError, match=exact("pct_start must be in (0, 1), got 1.5")):
            one_cycle(10, 0.1, pct_start=1.5)
        with pytest.raises(TypeError, match=exact("sequence part 0 must be a (schedule, n_steps) pair, got 3")):
            sequence(3)  # type: ignore[arg-type]
