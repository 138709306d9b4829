"""Tests for asyncloop.callbacks._sanitycheck: Check, the default checks and the SanityCheck callback."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import trio
from torch.utils.data import DataLoader, TensorDataset

from asyncloop import (
    ActorRunner,
    Check,
    Learner,
    LinearRunner,
    Recorder,
    SanityCheck,
    SanityCheckException,
    ToDevice,
    fit,
    test_learner,
)
from asyncloop.callbacks._sanitycheck import CHECKS, DEFAULT_CHECKS
from matchers import exact

RUNNERS = [LinearRunner, ActorRunner]


def quiet(*checks: Check, **kw: object) -> SanityCheck:
    return SanityCheck(checks, file=io.StringIO(), **kw)  # type: ignore[arg-type]


class TestSeedCases:
    def test_checks_pass(self) -> None:
        """Seed #28: the four default checks pass on a sound learner; nothing is printed, no warning."""
        out = io.StringIO()
        learner = test_learner(SanityCheck(file=out), Recorder())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            trio.run(fit, learner, 1)
        assert out.getvalue() == ""
        assert len(learner.get_callback(SanityCheck).checks) == 4

    def test_training_iterator_present(self) -> None:
        """Seed #29: only the first check, without defaults, passes."""
        trio.run(fit, test_learner(quiet(CHECKS[0], use_default=False)), 1)

    def test_no_training_iterator(self) -> None:
        """Seed #30: without training data, fit raises."""
        learner = test_learner(quiet(CHECKS[2]))
        learner.data.training = None
        with pytest.raises(ValueError):
            trio.run(fit, learner, 1)

    def test_iterators_over_tuples(self) -> None:
        """Seed #31: batches of (xs, ys) pass the tuple check."""
        trio.run(fit, test_learner(quiet(CHECKS[2])), 1)

    def test_not_tuples(self) -> None:
        """Seed #32: data that is not made of pairs fails the tuple check with a SanityCheckException."""
        learner = test_learner(quiet(CHECKS[2]))
        learner.data.training = range(1, 17)
        with pytest.raises(SanityCheckException):
            trio.run(fit, learner, 1)

    def test_optimization_step(self) -> None:
        """Seed #33: model and loss are compatible with the data."""
        trio.run(fit, test_learner(quiet(CHECKS[3])), 1)

    def test_model_returning_nonsense(self) -> None:
        """Seed #34: a model returning a string fails the model/loss check."""
        learner = test_learner(quiet(CHECKS[3]))
        learner.model = lambda x: "hi"
        with pytest.raises(SanityCheckException):
            trio.run(fit, learner, 1)

    def test_wrong_loss_arity(self) -> None:
        """Seed #35: a loss function taking one argument fails the model/loss check."""
        learner = test_learner(quiet(CHECKS[3]))
        learner.loss_fn = lambda x: True
        with pytest.raises(SanityCheckException):
            trio.run(fit, learner, 1)


class TestSanityCheck:
    @pytest.mark.parametrize("runner", RUNNERS)
    def test_report_format(self, runner: type) -> None:
        """Failures are reported as FluxTraining does; an ERROR raises before the first step."""
        out = io.StringIO()
        learner = test_learner(SanityCheck(file=out), Recorder(), runner=runner())
        learner.data = {"training": range(4)}
        with pytest.raises(SanityCheckException) as info:
            trio.run(fit, learner, 1)
        assert str(info.value) == "2 sanity check(s) failed; see above"
        assert all(h.steps == 0 for h in learner.cbstate.history.values())
        assert out.getvalue() == "\n".join(
            [
                "3/4 sanity checks failed:",
                "---",
                "1: Has validation data iterator (WARNING)",
                "",
                DEFAULT_CHECKS[1].message,
                "---",
                "2: Data iterators iterate over tuples (ERROR)",
                "",
                DEFAULT_CHECKS[2].message,
                "---",
                "3: Model and loss function compatible with data (ERROR)",
                "",
                DEFAULT_CHECKS[3].message,
                "",
            ]
        )

    def test_warnings_do_not_stop_training(self) -> None:
        """A failed warning-level check is reported and training goes on."""
        out = io.StringIO()
        learner = test_learner(SanityCheck(file=out), Recorder(), n_batches=2)
        learner.data = {"training": learner.data.training}
        assert trio.run(fit, learner, 1).epochs == 1
        assert out.getvalue().startswith("1/4 sanity checks failed:\n---\n1: Has validation data iterator (WARNING)\n")

    def test_custom_checks_run_before_defaults_when_asked(self) -> None:
        """Custom checks are kept, and use_default=True adds the defaults after them."""
        mine = Check(lambda learner: True, "Mine")
        assert SanityCheck([mine]).checks == (mine,)
        assert SanityCheck([mine], use_default=True).checks == (mine, *DEFAULT_CHECKS)
        assert CHECKS is DEFAULT_CHECKS

    def test_runs_once_per_fit(self) -> None:
        """The checks run at the first training epoch of each fit only."""
        calls = []
        learner = test_learner(quiet(Check(lambda learner: calls.append(1) or True, "count")), n_batches=2)
        trio.run(fit, learner, 3)
        trio.run(fit, learner, 2)
        assert len(calls) == 2

    def test_checks_leave_rng_and_model_state_alone(self) -> None:
        """Shuffled data and dropout train the same with and without a SanityCheck (RNG and mode restored)."""

        def run(with_check: bool) -> torch.Tensor:
            g = torch.Generator().manual_seed(0)
            xs = torch.randn(32, 3, generator=g)
            data = DataLoader(TensorDataset(xs, xs.sum(1, keepdim=True)), batch_size=8, shuffle=True)
            torch.manual_seed(0)
            model = torch.nn.Sequential(
                torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1)
            )
            callbacks = [Recorder(), *([quiet()] if with_check else [])]
            learner = Learner(
                model, torch.nn.functional.mse_loss, data=(data, data), callbacks=callbacks, use_default_callbacks=False
            )
            trio.run(fit, learner, 2)
            return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()])

        assert torch.equal(run(True), run(False))

    def test_uses_the_to_device_data_fn(self) -> None:
        """The model/loss check moves the batch with the learner's ToDevice."""
        moved = []
        learner = test_learner(quiet(CHECKS[3]), ToDevice(lambda t: moved.append(1) or t, lambda m: m))
        trio.run(fit, learner, 1)
        assert len(moved) >= 2

    def test_bad_checks(self) -> None:
        """Only Check objects are accepted."""
        with pytest.raises(TypeError, match=exact("SanityCheck: checks[0] must be a Check, got 'x'")):
            SanityCheck(["x"])  # type: ignore[list-item]
