"""Tests for asyncloop.testing: test_learner, the tiny regression learner FluxTraining's tests train."""

from __future__ import annotations

import torch
import trio

from asyncloop import Learner, Recorder, fit, test_learner
from asyncloop.testing import ScalarModel


class TestTestLearner:
    def test_model_is_one_scalar(self) -> None:
        """The model has one trainable scalar c in [0, 1) and computes x * c."""
        learner = test_learner()
        model = learner.model
        assert isinstance(model, ScalarModel)
        params = list(model.parameters())
        assert len(params) == 1 and params[0].shape == ()
        assert 0.0 <= model.c.item() < 1.0
        xs = torch.tensor([1.0, 2.0])
        assert torch.equal(model(xs), xs * model.c)

    def test_data(self) -> None:
        """The data is n_batches batches (xs, xs * coeff), xs whole numbers 1..100 as float32, shared by both phases."""
        learner = test_learner(n_batches=5, batch_size=4, coeff=2.5)
        assert learner.data.training is learner.data.validation
        assert len(learner.data.training) == 5
        for xs, ys in learner.data.training:
            assert xs.shape == (4,) and xs.dtype == torch.float32
            assert torch.equal(xs, xs.round())
            assert 1 <= xs.min().item() and xs.max().item() <= 100
            assert torch.equal(ys, xs * 2.5)

    def test_defaults(self) -> None:
        """By default: 16 batches of 8, coeff 3, SGD with lr 1e-3, mean absolute error, no default callbacks."""
        learner = test_learner()
        assert len(learner.data.training) == 16
        xs, ys = learner.data.training[0]
        assert xs.shape == (8,)
        assert torch.equal(ys, xs * 3.0)
        assert learner.callbacks == []
        opt = learner.optimizer
        assert type(opt) is torch.optim.SGD
        assert opt.param_groups[0]["lr"] == 1e-3
        preds, targets = torch.tensor([1.0, 5.0]), torch.tensor([2.0, 2.0])
        assert learner.loss_fn(preds, targets).item() == 2.0

    def test_lr(self) -> None:
        """lr sets the SGD learning rate."""
        assert test_learner(lr=0.5).optimizer.param_groups[0]["lr"] == 0.5

    def test_callbacks_and_defaults(self) -> None:
        """Positional callbacks are installed; use_default_callbacks=True adds the five defaults."""
        recorder = Recorder()
        assert test_learner(recorder).callbacks == [recorder]
        names = [cb.name for cb in test_learner(use_default_callbacks=True).callbacks]
        assert names == ["ProgressPrinter", "MetricsPrinter", "StopOnNaNLoss", "Recorder", "Metrics"]

    def test_extra_keywords_go_to_learner(self) -> None:
        """Extra keywords (here optimizer) are passed to Learner."""
        learner = test_learner(optimizer=lambda params: torch.optim.Adam(params, lr=0.1))
        assert isinstance(learner, Learner)
        assert type(learner.optimizer) is torch.optim.Adam

    def test_seeded_runs_repeat(self) -> None:
        """With torch's RNG seeded, two test learners are identical."""
        torch.manual_seed(7)
        a = test_learner(n_batches=2)
        torch.manual_seed(7)
        b = test_learner(n_batches=2)
        assert torch.equal(a.model.c, b.model.c)
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a.data.training, b.data.training))

    def test_converges(self) -> None:
        """test_learner(coeff=3.0) trained for 5 epochs ends with c within 0.1 of 3."""
        learner = test_learner(coeff=3.0)
        trio.run(fit, learner, 5)
        assert abs(learner.model.c.item() - 3.0) < 0.1

    def test_is_not_collected_as_a_test(self) -> None:
        """test_learner is marked so pytest does not collect it as a test when imported into a test module."""
        assert test_learner.__test__ is False  # type: ignore[attr-defined]
