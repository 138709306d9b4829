"""Tests for asyncloop.callbacks._todevice: ToDevice / ToGPU move the model in place and every batch."""

from __future__ import annotations

import warnings
from collections import namedtuple
from typing import Any

import pytest
import torch
import trio

from asyncloop import (
    ActorRunner,
    Callback,
    LinearRunner,
    Metrics,
    Read,
    Recorder,
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
from asyncloop.callbacks._todevice import _move_optimizer_state, move_to
from matchers import exact

RUNNERS = [LinearRunner, ActorRunner]


class Seen(Callback):
    """Record the dtype of xs after ToDevice ran."""

    state_access = {"step": {"xs": Read()}}
    run_after = (ToDevice,)

    def __init__(self) -> None:
        self.dtypes: list[torch.dtype] = []

    @on(StepBegin)
    def seen(self, event: Any, phase: Any, learner: Any) -> None:
        self.dtypes.append(learner.step.xs.dtype)


class TestToDevice:
    def test_seed_to_device(self) -> None:
        """Seed #40: ToDevice(cpu, cpu) trains for 3 epochs without a warning."""
        cpu = lambda x: x.cpu()  # noqa: E731
        learner = test_learner(ToDevice(cpu, cpu), Recorder(), Metrics())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = trio.run(fit, learner, 3)
        assert result.epochs == 3

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_data_fn_applies_to_every_batch(self, runner: type) -> None:
        """data_fn transforms xs and ys at every StepBegin, before callbacks that read them."""
        seen = Seen()
        learner = test_learner(ToDevice(lambda t: t.double(), lambda m: m.double()), seen, n_batches=2, runner=runner())
        trio.run(fit, learner, 1)
        assert seen.dtypes == [torch.float64] * 4
        assert learner.model.c.dtype == torch.float64

    def test_model_moves_in_place_and_optimizer_state_is_kept(self) -> None:
        """The model is moved in place: parameters, the optimizer and its state are the same objects afterwards."""
        learner = test_learner(
            ToDevice("cpu"), Recorder(), optimizer=lambda p: torch.optim.Adam(p, lr=0.01), n_batches=2
        )
        trio.run(fit, learner, 1)
        opt, param = learner.optimizer, learner.model.c
        moments = opt.state[param]["exp_avg"]
        trio.run(fit, learner, 1)
        assert learner.optimizer is opt and learner.model.c is param
        assert opt.state[param]["exp_avg"] is moments

    def test_optimizer_state_follows_its_parameters(self) -> None:
        """Optimizer state tensors that are elsewhere than their parameter move to it; scalar steps stay put."""
        p = torch.nn.Parameter(torch.zeros(2, device="meta"))  # stands in for a parameter moved to a GPU
        opt = torch.optim.Adam([p])
        step = torch.tensor(3.0)
        opt.state[p] = {"step": step, "exp_avg": torch.ones(2)}
        _move_optimizer_state(opt)
        assert opt.state[p]["exp_avg"].device == p.device
        assert opt.state[p]["step"] is step

    def test_device_shortcut_moves_nested_batches(self) -> None:
        """ToDevice(device) moves tensors inside tuples, named tuples, lists and dicts."""
        Pair = namedtuple("Pair", "a b")
        batch = {"x": [torch.zeros(1), (torch.ones(1), "label")], "p": Pair(torch.zeros(1), 3)}
        moved = move_to(batch, torch.device("cpu"))
        assert isinstance(moved["p"], Pair) and moved["p"].b == 3 and moved["x"][1][1] == "label"
        assert repr(ToDevice("cpu")) == "ToDevice('cpu')"

    def test_model_fn_must_move_in_place(self) -> None:
        """A model_fn that returns another object is an error: the optimizer would keep the old parameters."""
        learner = test_learner(ToDevice(lambda t: t, lambda m: torch.nn.Linear(1, 1)))
        with pytest.raises(TypeError) as info:
            trio.run(epoch, learner, TrainingPhase())
        assert str(info.value) == (
            "ToDevice: model_fn returned a new object instead of moving the model in place; the optimizer would keep "
            "optimizing the old parameters. Use a function like lambda m: m.to(device)"
        )

    def test_bad_arguments(self) -> None:
        """ToDevice takes a device or two functions."""
        with pytest.raises(TypeError, match=r"^ToDevice takes a device \(ToDevice\('cuda'\)\) or two functions"):
            ToDevice(lambda t: t)  # type: ignore[call-arg]
        with pytest.raises(
            TypeError, match=exact("pass ToDevice(device) or ToDevice(data_fn, model_fn), not a device and a model_fn")
        ):
            ToDevice("cpu", lambda m: m)

    def test_declarations(self) -> None:
        """It writes the model, the optimizer (state moves) and the batch."""
        assert ToDevice("cpu").state_access == {
            "model": Write(),
            "optimizer": Write(),
            "step": {"xs": Write(), "ys": Write()},
        }


class TestToGPU:
    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
    def test_without_cuda_it_warns_and_stays_on_the_cpu(self) -> None:
        """Without CUDA, ToGPU() warns once and trains on the CPU."""
        with pytest.warns(UserWarning, match=exact("ToGPU(): CUDA is not available, training stays on the CPU")):
            cb = ToGPU()
        assert isinstance(cb, ToDevice) and cb.device == torch.device("cpu") and repr(cb) == "ToGPU()"
        learner = test_learner(cb, Recorder(), n_batches=2)
        trio.run(fit, learner, 1)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_with_cuda(self) -> None:  # pragma: no cover - needs a GPU
        """With CUDA the model, its optimizer state and the batches are on the GPU."""
        learner = test_learner(ToGPU(), Recorder(), n_batches=2, optimizer=lambda p: torch.optim.Adam(p))
        trio.run(fit, learner, 1)
        assert learner.model.c.is_cuda
        assert learner.optimizer.state[learner.model.c]["exp_avg"].is_cuda
