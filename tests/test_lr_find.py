"""Tests for asyncloop._lr_find: the LR range test, its suggestion, and a learner left exactly as it was."""

from __future__ import annotations

import copy
import math
import random
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trio
from torch.utils.data import DataLoader, TensorDataset

from asyncloop import (
    AbstractTrainingPhase,
    ActorRunner,
    Callback,
    Checkpointer,
    LearningRate,
    Learner,
    LinearRunner,
    LRFinderResult,
    Scheduler,
    StepEnd,
    ToDevice,
    TrainingPhase,
    fit,
    lr_find,
    on,
    one_cycle,
    test_learner,
)
from matchers import exact

RUNNERS = [LinearRunner, ActorRunner]


def regression_data(n_batches: int = 16, batch_size: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a noiseless linear regression on standard-normal inputs (plain SGD is stable below lr ~ 1)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 1, generator=g)
    batches = []
    for _ in range(n_batches):
        xs = torch.randn(batch_size, 8, generator=g)
        batches.append((xs, xs @ w))
    return batches


def regression_learner(runner: type = LinearRunner, **kw: Any) -> Learner:
    """A linear model on :func:`regression_data` with MSE and SGD(lr=0.01)."""
    torch.manual_seed(0)
    batches = regression_data()
    kw.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=0.01))
    kw.setdefault("use_default_callbacks", False)
    return Learner(torch.nn.Linear(8, 1), torch.nn.functional.mse_loss, data=(batches, batches), runner=runner(), **kw)


class DropoutNet(torch.nn.Module):
    """A small net with dropout and a batch norm buffer: the sweep draws random numbers and changes buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def rich_learner(runner: type, folder: Path) -> Learner:
    """Dropout + batch norm, a shuffling DataLoader, Adam, the default callbacks, a Scheduler and a Checkpointer."""
    torch.manual_seed(1)
    xs = torch.randn(96, 8)
    ys = xs.sum(dim=1, keepdim=True)
    loader = DataLoader(TensorDataset(xs, ys), batch_size=16, shuffle=True)
    return Learner(
        DropoutNet(),
        torch.nn.functional.mse_loss,
        data=(loader, loader),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
        callbacks=[Scheduler({LearningRate: one_cycle(30, 1e-2)}), Checkpointer(folder)],
        runner=runner(),
    )


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def global_rng() -> tuple[Any, ...]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def assert_same_rng(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    assert torch.equal(a[0], b[0])
    assert a[1] == b[1]
    assert np.array_equal(a[2], b[2])


def assert_same_tree(a: Any, b: Any) -> None:
    """Equal nested dicts/lists with tensors compared by ``torch.equal``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tree(x, y)
    else:
        assert a == b


# -- the sweep ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_suggestion_falls_in_the_known_good_range(runner: type) -> None:
    """On a linear regression where SGD is stable below lr ~ 1, the suggestion lies between 1e-3 and 1."""
    learner = regression_learner(runner)
    result = trio.run(lambda: lr_find(learner, start_lr=1e-5, end_lr=10.0, num_steps=100))
    assert isinstance(result, LRFinderResult)
    assert result.suggestion is not None and result.reason is None
    assert 1e-3 <= result.suggestion <= 1.0
    assert result.suggestion in result.lrs


def test_lrs_grow_exponentially_from_start_to_end_and_the_data_cycles() -> None:
    """With 3 batches and 10 steps the data starts over, and the LRs run geometrically from start_lr to end_lr."""
    learner = regression_learner()
    learner.data = (regression_data(n_batches=3), None)
    result = trio.run(lambda: lr_find(learner, start_lr=1e-6, end_lr=1e-3, num_steps=10))
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses) == 10
    assert result.lrs[0] == pytest.approx(1e-6) and result.lrs[-1] == pytest.approx(1e-3)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert ratios == pytest.approx([1e3 ** (1 / 9)] * 9)
    assert result.stopped is None


def test_losses_are_the_bias_corrected_moving_average_of_the_raw_losses() -> None:
    """losses[i] is fastai's smoothed loss: the EMA (beta 0.98) of raw_losses[:i+1] divided by 1 - 0.98**(i+1)."""
    learner = regression_learner()
    result = trio.run(lambda: lr_find(learner, start_lr=1e-6, end_lr=1e-4, num_steps=20))
    avg = 0.0
    for i, (raw, smoothed) in enumerate(zip(result.raw_losses, result.losses)):
        avg = 0.98 * avg + 0.02 * raw
        assert smoothed == pytest.approx(avg / (1 - 0.98 ** (i + 1)))
    assert result.losses[0] == pytest.approx(result.raw_losses[0])


def test_divergence_stops_the_sweep_early() -> None:
    """When the smoothed loss exceeds 4x the best, the sweep stops before num_steps and says why."""
    learner = regression_learner()
    result = trio.run(lambda: lr_find(learner, start_lr=1e-4, end_lr=1e3, num_steps=100))
    assert len(result.lrs) < 100
    assert result.stopped is not None and result.stopped.startswith("the loss diverged at lr=")
    assert result.losses[-1] > 4 * min(result.losses[:-1])
    assert max(result.lrs) < 1e3


def test_a_nan_loss_stops_the_sweep_and_is_not_recorded() -> None:
    """A NaN loss ends the sweep; the curve keeps only the finite losses before it."""
    calls = []

    def loss_fn(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        loss = torch.nn.functional.mse_loss(preds, ys)
        return loss * float("nan") if len(calls) == 15 else loss

    learner = regression_learner()
    learner.loss_fn = loss_fn
    result = trio.run(lambda: lr_find(learner, start_lr=1e-6, end_lr=1e-4, num_steps=50))
    assert len(result.lrs) == 14
    assert all(math.isfinite(x) for x in result.losses)
    assert result.stopped == f"the loss was nan at lr={1e-6 * 100 ** (14 / 49):.3g}"


def test_too_short_a_curve_gives_no_suggestion_and_says_why() -> None:
    """With fewer than 13 points Lightning's rule has nothing to choose from: suggestion None, reason given."""
    learner = regression_learner()
    result = trio.run(lambda: lr_find(learner, start_lr=1e-6, end_lr=1e-4, num_steps=12))
    assert result.suggestion is None
    assert result.reason == (
        "only 12 losses were recorded; the steepest-descent rule leaves out the first 10 and the last 1 and needs 2 "
        "more: raise num_steps (or lower end_lr if the loss diverged early)"
    )


def test_the_suggestion_is_at_the_steepest_descent() -> None:
    """The suggestion is the LR where the central-difference gradient of the trimmed smoothed curve is lowest."""
    learner = regression_learner()
    result = trio.run(lambda: lr_find(learner, start_lr=1e-5, end_lr=10.0, num_steps=60))
    inner = np.array(result.losses[10:-1])
    assert result.suggestion == result.lrs[10 + int(np.gradient(inner).argmin())]


def test_an_exhausted_iterator_ends_the_sweep() -> None:
    """A generator of 5 batches gives 5 points and a note that the data ran out."""
    learner = regression_learner()
    learner.data = ((b for b in regression_data(n_batches=5)), None)
    result = trio.run(lambda: lr_find(learner, num_steps=20))
    assert len(result.lrs) == 5
    assert result.stopped == "the training data ran out after 5 batches (an iterator is used only once)"
    assert result.suggestion is None


def test_empty_training_data_is_a_clear_error() -> None:
    """Training data that yields no batch raises a ValueError saying so."""
    learner = regression_learner()
    learner.data = ([], None)
    with pytest.raises(ValueError, match=exact("lr_find: the training data yielded no batches")):
        trio.run(lambda: lr_find(learner, num_steps=5))


# -- the learner is left as it was -----------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_learner_is_exactly_as_before_and_nothing_is_printed_or_written(
    runner: type, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Weights, buffers, grads, modes, optimizer state, callbacks' state, cbstate and RNG are unchanged; no output."""
    learner = rich_learner(runner, tmp_path / "ckpt")
    trio.run(fit, learner, 1)
    learner.model.eval()
    files = files_under(tmp_path)
    capfd.readouterr()
    weights = copy.deepcopy(learner.model.state_dict())
    grads = [None if p.grad is None else p.grad.clone() for p in learner.model.parameters()]
    optimizer = learner.optimizer
    opt_state = copy.deepcopy(optimizer.state_dict())
    cb_states = [copy.deepcopy(cb.state_dict()) for cb in learner.callbacks if hasattr(cb, "state_dict")]
    history = copy.deepcopy(learner.cbstate.history)
    metrics = copy.deepcopy({p: h.state_dict() for p, h in learner.cbstate.metrics_epoch.items()})
    hyperparams = copy.deepcopy(learner.cbstate.hyperparams.state_dict())
    cbstate_objects = dict(learner.cbstate)
    rng = global_rng()

    result = trio.run(lambda: lr_find(learner, num_steps=30))

    assert len(result.lrs) >= 2
    assert capfd.readouterr() == ("", "")
    assert files_under(tmp_path) == files
    assert_same_tree(learner.model.state_dict(), weights)
    assert all(not m.training for m in learner.model.modules())
    for p, g in zip(learner.model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert learner.optimizer is optimizer
    assert_same_tree(optimizer.state_dict(), opt_state)
    assert_same_tree([cb.state_dict() for cb in learner.callbacks if hasattr(cb, "state_dict")], cb_states)
    assert learner.cbstate.history == history
    assert_same_tree({p: h.state_dict() for p, h in learner.cbstate.metrics_epoch.items()}, metrics)
    assert_same_tree(learner.cbstate.hyperparams.state_dict(), hyperparams)
    assert dict(learner.cbstate).keys() == cbstate_objects.keys()
    assert all(learner.cbstate[k] is v for k, v in cbstate_objects.items())
    assert_same_rng(global_rng(), rng)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_fit_after_lr_find_gives_the_same_weights_as_without(runner: type, tmp_path: Path) -> None:
    """lr_find then fit ends with exactly the weights of the same fit without lr_find (dropout, shuffling)."""
    plain = rich_learner(runner, tmp_path / "a")
    trio.run(fit, plain, 2)
    expected = copy.deepcopy(plain.model.state_dict())

    swept = rich_learner(runner, tmp_path / "b")
    trio.run(lambda: lr_find(swept, num_steps=20))
    trio.run(fit, swept, 2)
    assert_same_tree(swept.model.state_dict(), expected)


def test_an_optimizer_factory_is_left_unbuilt() -> None:
    """A learner whose optimizer comes from a factory gets a fresh one at its first fit, not the sweep's."""
    learner = regression_learner()
    trio.run(lambda: lr_find(learner, num_steps=20))
    assert learner._optimizer is None
    assert learner.optimizer.param_groups[0]["lr"] == 0.01
    assert learner.optimizer.state_dict()["state"] == {}


def test_a_failing_sweep_restores_the_learner_and_raises_the_error() -> None:
    """An error at the 5th loss propagates as itself, and the weights and optimizer are as before."""
    learner = regression_learner(optimizer=None)
    trio.run(fit, learner, 1)
    weights = copy.deepcopy(learner.model.state_dict())
    opt_state = copy.deepcopy(learner.optimizer.state_dict())
    calls = []

    def loss_fn(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return torch.nn.functional.mse_loss(preds, ys)

    learner.loss_fn = loss_fn
    with pytest.raises(RuntimeError, match="^boom"):
        trio.run(lambda: lr_find(learner, num_steps=20))
    assert_same_tree(learner.model.state_dict(), weights)
    assert_same_tree(learner.optimizer.state_dict(), opt_state)


def test_a_cancelled_sweep_restores_the_learner() -> None:
    """Cancelling the caller mid-sweep stops it, and the weights are as before."""
    learner = regression_learner()
    weights = copy.deepcopy(learner.model.state_dict())
    started, release = threading.Event(), threading.Event()
    calls = []

    def loss_fn(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 5:
            started.set()
            release.wait(60)  # a guard against a hang, not a timing assertion
        return torch.nn.functional.mse_loss(preds, ys)

    learner.loss_fn = loss_fn

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: lr_find(learner, num_steps=1000))
            await trio.to_thread.run_sync(started.wait, 60)
            nursery.cancel_scope.cancel()
            release.set()

    trio.run(main)
    assert len(calls) < 1000
    assert_same_tree(learner.model.state_dict(), weights)
    assert learner.session is None


def test_the_default_callbacks_do_not_run_during_the_sweep(capfd: pytest.CaptureFixture[str]) -> None:
    """With the default callbacks (printers, Recorder, Metrics) installed, the sweep prints and records nothing."""
    torch.manual_seed(0)
    learner = test_learner(use_default_callbacks=True)
    before = {k: copy.deepcopy(v) for k, v in learner.cbstate.items()}
    capfd.readouterr()
    result = trio.run(lambda: lr_find(learner, start_lr=1e-6, end_lr=1.0, num_steps=16))
    assert len(result.lrs) >= 2
    assert capfd.readouterr() == ("", "")
    assert learner.cbstate.history == before["history"]
    assert learner.cbstate.history[TrainingPhase()].steps == 0


def test_lr_find_refuses_to_run_during_a_fit_of_the_learner() -> None:
    """While a session of the learner is running, lr_find raises a RuntimeError saying to call it between fits."""
    learner = regression_learner()
    learner.attach_session(object())  # type: ignore[arg-type]
    try:
        with pytest.raises(
            RuntimeError,
            match=exact("lr_find cannot run while a fit of this learner is running; call it between fits"),
        ):
            trio.run(lr_find, learner)
    finally:
        learner.attach_session(None)


# -- arguments -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"start_lr": 0.0}, ValueError, "lr_find: start_lr must be > 0 (the sweep is exponential), got 0.0"),
        ({"start_lr": -1e-3}, ValueError, "lr_find: start_lr must be > 0 (the sweep is exponential), got -0.001"),
        (
            {"start_lr": 1e-2, "end_lr": 1e-3},
            ValueError,
            "lr_find: end_lr must be greater than start_lr, got start_lr=0.01, end_lr=0.001",
        ),
        (
            {"start_lr": 1e-2, "end_lr": 1e-2},
            ValueError,
            "lr_find: end_lr must be greater than start_lr, got start_lr=0.01, end_lr=0.01",
        ),
        ({"num_steps": 1}, ValueError, "lr_find: num_steps must be an int >= 2, got 1"),
        ({"num_steps": 10.0}, ValueError, "lr_find: num_steps must be an int >= 2, got 10.0"),
        ({"num_steps": True}, ValueError, "lr_find: num_steps must be an int >= 2, got True"),
        ({"start_lr": "1e-3"}, TypeError, "lr_find: start_lr must be a finite number, got '1e-3'"),
        ({"end_lr": float("inf")}, TypeError, "lr_find: end_lr must be a finite number, got inf"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict[str, Any], error: type, message: str) -> None:
    """Each bad argument raises before anything runs, with a message that says what is expected."""
    learner = regression_learner()
    with pytest.raises(error, match=exact(message)):
        trio.run(lambda: lr_find(learner, **kwargs))


def test_a_learner_without_training_data_is_a_clear_error() -> None:
    """No training data: a ValueError that says how to pass it."""
    learner = Learner(torch.nn.Linear(2, 1), torch.nn.functional.mse_loss)
    with pytest.raises(
        ValueError,
        match=exact(
            "lr_find: learner has no training data: pass data=(train_batches, valid_batches) to Learner"
        ),
    ):
        trio.run(lr_find, learner)


def test_something_else_than_a_learner_is_a_clear_error() -> None:
    """Passing a model instead of a learner raises a TypeError."""
    with pytest.raises(TypeError, match=exact("lr_find takes a Learner(model, loss_fn, data=...), got 3")):
        trio.run(lr_find, 3)


# -- plot ------------------------------------------------------------------------------------------------------------


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without matplotlib, plot raises ImportError naming pip install matplotlib."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = LRFinderResult([1e-3, 1e-2], [1.0, 0.5], [1.0, 0.5], None, "short")
    with pytest.raises(
        ImportError, match=exact("LRFinderResult.plot needs matplotlib, which is not installed: pip install matplotlib")
    ):
        result.plot()


def test_plot_draws_loss_against_lr_on_a_log_axis_and_saves_it(tmp_path: Path) -> None:
    """With matplotlib, plot returns a figure with a log LR axis and the suggestion marked, saved to path."""
    pytest.importorskip("matplotlib")
    learner = regression_learner()
    result = trio.run(lambda: lr_find(learner, start_lr=1e-5, end_lr=10.0, num_steps=60))
    path = tmp_path / "lr.png"
    fig = result.plot(path)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    curve, mark = ax.lines
    assert list(curve.get_xdata()) == result.lrs and list(curve.get_ydata()) == result.losses
    assert list(mark.get_xdata()) == [result.suggestion]
    assert path.stat().st_size > 0


def test_a_model_moved_by_to_device_is_moved_back() -> None:
    """A ToDevice that converts the model (here to float64) takes part in the sweep; afterwards every parameter
    and buffer is back in float32 with its old values, the parameters the same objects, the optimizer empty."""
    torch.manual_seed(0)
    model = DropoutNet()
    xs = torch.randn(64, 8)
    batches = [(xs[i : i + 16], xs[i : i + 16].sum(dim=1, keepdim=True)) for i in range(0, 64, 16)]
    to_double = ToDevice(lambda x: x.double(), lambda m: m.double())
    learner = Learner(
        model, torch.nn.functional.mse_loss, data=(batches, None), callbacks=[to_double], use_default_callbacks=False
    )
    optimizer = learner.optimizer  # built, with no state yet
    params = list(model.parameters())
    weights = copy.deepcopy(model.state_dict())
    seen = []

    class Spy(Callback):
        @on(StepEnd, AbstractTrainingPhase)
        def look(self, event: Any, phase: Any, learner: Any) -> None:
            seen.append(learner.step.loss.dtype)

    learner.add_callback(Spy())  # not a step callback: it does not take part
    result = trio.run(lambda: lr_find(learner, num_steps=8))
    assert len(result.lrs) == 8 and seen == []
    assert list(model.parameters()) == params
    assert all(t.dtype != torch.float64 for t in model.state_dict().values())
    assert_same_tree(model.state_dict(), weights)
    assert learner.optimizer is optimizer and optimizer.state_dict()["state"] == {}


def test_the_step_callbacks_take_part_as_copies() -> None:
    """ToDevice's data_fn runs on the sweep's batches (float64 losses), and the user's instance is not the one used."""
    torch.manual_seed(0)
    batches = regression_data(n_batches=4)
    calls: list[int] = []

    def data_fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x.double()

    to_double = ToDevice(data_fn, lambda m: m.double())
    learner = Learner(
        torch.nn.Linear(8, 1), torch.nn.functional.mse_loss, data=(batches, None), callbacks=[to_double],
        use_default_callbacks=False,
    )
    result = trio.run(lambda: lr_find(learner, num_steps=4))
    assert len(result.lrs) == 4
    assert len(calls) == 8  # xs and ys of 4 steps
    assert learner.model.weight.dtype == torch.float32
    assert learner.callbacks == [to_double]
