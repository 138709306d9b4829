"""``test_learner``: the tiny, fast learner FluxTraining's tests train (``testlearner``)."""

from __future__ import annotations

from typing import Any

import torch

from ._callback import Callback
from ._learner import Learner

__all__ = ["test_learner", "ScalarModel"]


class ScalarModel(torch.nn.Module):
    """``x -> x * c`` with one trainable scalar ``c``, initialised uniformly in [0, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = torch.nn.Parameter(torch.rand(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.c


def _mae(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (preds - targets).abs().mean()


def test_learner(
    *callbacks: Callback,
    n_batches: int = 16,
    batch_size: int = 8,
    coeff: float = 3.0,
    lr: float = 1e-3,
    use_default_callbacks: bool = False,
    **kw: Any,
) -> Learner:
    """A learner for a one-parameter regression, for testing callbacks.

    The model is :class:`ScalarModel` (``x * c``); the data is ``n_batches`` batches ``(xs, xs * coeff)`` with
    ``xs`` whole numbers 1..100 as float32, one list used for both training and validation; the loss is the mean
    absolute error; the optimizer ``torch.optim.SGD(lr=lr)``. Uses torch's global RNG: seed it for repeatable
    runs. Five epochs bring ``c`` within 0.1 of ``coeff``. Extra keywords go to :class:`Learner`.
    """
    model = ScalarModel()
    batches = []
    for _ in range(n_batches):
        xs = torch.randint(1, 101, (batch_size,)).float()
        batches.append((xs, xs * coeff))
    kw.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=lr))
    return Learner(
        model,
        _mae,
        data=(batches, batches),
        callbacks=callbacks,
        use_default_callbacks=use_default_callbacks,
        **kw,
    )


test_learner.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
