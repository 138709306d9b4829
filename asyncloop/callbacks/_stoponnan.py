"""StopOnNaNLoss: stop the fit on a NaN or infinite training loss, before the optimizer update."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._callback import Callback, on, pristine
from ..events import BackwardEnd
from .._exceptions import CancelFittingException
from ..phases import AbstractTrainingPhase, Phase
from .._access import Read


class StopOnNaNLoss(Callback):
    """Raise ``CancelFittingException("Encountered NaN loss")`` (or ``Inf``/``-Inf``) at ``BackwardEnd``.

    The check runs before the optimizer step, so non-finite gradients never reach the weights. ``fit`` then
    returns ``FitResult(stopped=True, reason=...)``. A default callback. Pitfall: on CUDA the check reads the
    loss on the host every step (a device sync) -- that is the price of stopping before the update.
    """

    state_access = {"step": {"loss": Read()}}

    @on(BackwardEnd, AbstractTrainingPhase)
    def check(self, event: BackwardEnd, phase: Phase, learner: Any) -> None:
        loss = learner.step["loss"]
        value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            kind = "NaN" if math.isnan(value) else ("Inf" if value > 0 else "-Inf")
            raise CancelFittingException(f"Encountered {kind} loss")

    def _takes_learner(self) -> bool:
        return pristine(self, StopOnNaNLoss)
