"""Training helpers: GradientClipping, GradientAccumulation and MixedPrecision.

They steer the built-in training step through its step-state controls (see :mod:`asyncloop._training`), which
a callback sets on ``learner.step`` before the step reaches them:

* ``autocast`` (at ``StepBegin``): a context manager the forward pass and the loss run in;
* ``zero_grad`` (default True), ``loss_scale``, ``grad_scaler`` (before ``BackwardBegin`` ends);
* ``accumulate`` (default False, up to ``BackwardEnd``): skip the optimizer step.

Each declares ``Write()`` access to exactly the controls it sets, so the callback graph orders and checks them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import Any

import torch

from .._callback import Callback, on
from ..events import BackwardEnd, EpochBegin, StepBegin
from ..phases import AbstractTrainingPhase, Phase
from .._access import Read, Write


class GradientClipping(Callback):
    """Clip the gradients at ``BackwardEnd`` of training steps, before the optimizer step.

    ``GradientClipping(max_norm)`` rescales all gradients together so that their ``norm_type`` norm is at most
    ``max_norm`` (``torch.nn.utils.clip_grad_norm_``'s formula); ``GradientClipping(max_value=v)`` clamps each
    element to ``[-v, v]``. The total norm before clipping is stored in ``learner.step.grad_norm`` (a tensor, no
    host sync) for loggers and :class:`asyncloop.Traces`.

    With :class:`MixedPrecision`'s grad scaler it unscales the gradients first (``scaler.unscale_``), and with
    :class:`GradientAccumulation` it clips only the accumulated gradients, at the step that updates the weights.

    Example::

        Learner(model, loss_fn, data=data, callbacks=[GradientClipping(1.0)])
    """

    state_access = {
        "step": {"grads": Write(), "grad_norm": Write(), "grad_scaler": Read(), "accumulate": Read()},
        "optimizer": Read(),
    }

    def __init__(
        self,
        max_norm: float | None = None,
        *,
        max_value: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = False,
    ) -> None:
        if (max_norm is None) == (max_value is None):
            raise ValueError("GradientClipping takes either max_norm or max_value, not both and not neither")
        for name, value in (("max_norm", max_norm), ("max_value", max_value)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise ValueError(f"GradientClipping: {name} must be a number > 0, got {value!r}")
        self.max_norm = None if max_norm is None else float(max_norm)
        self.max_value = None if max_value is None else float(max_value)
        self.norm_type = float(norm_type)
        self.error_if_nonfinite = error_if_nonfinite

    @on(BackwardEnd, AbstractTrainingPhase)
    def clip(self, event: BackwardEnd, phase: Phase, learner: Any) -> None:
        step = learner.step
        if step.get("accumulate", False):
            return
        scaler = step.get("grad_scaler")
        if scaler is not None and scaler.is_enabled():
            scaler.unscale_(learner.optimizer)
        grads = [g for g in _values(step.grads) if g is not None]
        if not grads:
            return
        if self.max_value is not None:
            for g in grads:
                g.clamp_(-self.max_value, self.max_value)
            return
        total = _total_norm(grads, self.norm_type, self.error_if_nonfinite)
        step.grad_norm = total
        coef = torch.clamp(self.max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.to(g.device))

    def __repr__(self) -> str:
        if self.max_value is not None:
            return f"GradientClipping(max_value={self.max_value!r})"
        return f"GradientClipping({self.max_norm!r})"


def _values(grads: Any) -> list[Any]:
    """The gradient tensors of ``step.grads`` (the parameters' own ``.grad``: in-place changes reach them)."""
    if isinstance(grads, Mapping):
        return list(grads.values())
    return list(grads)


def _total_norm(grads: list[torch.Tensor], norm_type: float, error_if_nonfinite: bool) -> torch.Tensor:
    """``torch.nn.utils.get_total_norm`` (torch >= 2.6), computed by hand on older torch."""
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:
        return get_total_norm(grads, norm_type, error_if_nonfinite)
    norms = torch.stack([torch.linalg.vector_norm(g.detach(), norm_type).to(grads[0].device) for g in grads])
    total = torch.linalg.vector_norm(norms, norm_type)
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients is non-finite, so it cannot be clipped")
    return total


class GradientAccumulation(Callback):
    """Accumulate gradients over ``n_steps`` training steps and update the weights once, as if the batch were
    ``n_steps`` times larger.

    Each step's loss is scaled by ``1 / n_steps`` for the backward pass (``learner.step.loss`` and the ``Loss``
    metric keep the unscaled value), gradients are zeroed only at the first step of a group, and the optimizer
    steps only at the last. ``StepEnd`` still fires every step, and the :class:`Scheduler`'s ``t`` still counts
    steps (not updates). When the epoch's length is known the last step of an epoch always closes the group,
    so checkpoints (taken between epochs) never hold half-accumulated gradients; with iterables of unknown
    length a group may span epochs.

    Example::

        Learner(model, loss_fn, data=data, callbacks=[GradientAccumulation(4)])   # 4 batches per update
    """

    state_access = {
        "step": {"zero_grad": Write(), "accumulate": Write(), "loss_scale": Write()},
        "epoch_data": Read(),
    }

    def __init__(self, n_steps: int) -> None:
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"GradientAccumulation: n_steps must be an int >= 1, got {n_steps!r}")
        self.n_steps = n_steps
        self._in_group = 0  # steps of the current (open) group done so far
        self._in_epoch = 0
        self._epoch_length: int | None = None

    @on(EpochBegin, AbstractTrainingPhase)
    def epoch_begin(self, event: EpochBegin, phase: Phase, learner: Any) -> None:
        data = learner.epoch_data
        self._epoch_length = len(data) if isinstance(data, Sized) else None
        self._in_epoch = 0

    @on(StepBegin, AbstractTrainingPhase)
    def step_begin(self, event: StepBegin, phase: Phase, learner: Any) -> None:
        step = learner.step
        first = self._in_group == 0
        self._in_group += 1
        self._in_epoch += 1
        last = self._in_group >= self.n_steps or self._in_epoch == self._epoch_length
        step.zero_grad = first
        step.accumulate = not last
        step.loss_scale = 1.0 / self.n_steps
        if last:
            self._in_group = 0

    def state_dict(self) -> dict[str, Any]:
        return {"in_group": self._in_group}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._in_group = int(state["in_group"])

    def __repr__(self) -> str:
        return f"GradientAccumulation({self.n_steps})"


class MixedPrecision(Callback):
    """Run the forward pass and the loss under ``torch.autocast``; on CUDA with float16, scale the loss.

    ``dtype`` defaults to ``torch.bfloat16`` on the CPU and ``torch.float16`` on CUDA; ``device_type`` defaults to
    the device of the model's first parameter, checked every step (so it follows a :class:`ToDevice`). With
    float16 on CUDA a ``torch.amp.GradScaler`` scales the loss for backward, unscales before the optimizer step
    (skipping steps with Inf/NaN gradients) and adapts its scale; its state is saved in checkpoints. Weights and
    optimizer state stay in float32. Validation steps run under autocast too.

    The autocast context is entered by the training step itself around the forward pass and the loss, on the
    thread that runs them, and always left, also when a step is cancelled or fails.

    Example::

        Learner(model, loss_fn, data=data, callbacks=[ToGPU(), MixedPrecision()])
    """

    state_access = {"step": {"autocast": Write(), "grad_scaler": Write()}, "model": Read()}

    def __init__(
        self,
        dtype: torch.dtype | None = None,
        *,
        device_type: str | None = None,
        grad_scaler: bool | None = None,
    ) -> None:
        if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"MixedPrecision: dtype must be torch.float16 or torch.bfloat16, got {dtype!r}")
        self.dtype = dtype
        self.device_type = device_type
        self.use_grad_scaler = grad_scaler
        self._contexts: dict[str, Any] = {}
        self._scaler: Any = None
        self._scaler_state: Any = None

    def _device_type(self, learner: Any) -> str:
        if self.device_type is not None:
            return self.device_type
        model = learner.model
        if isinstance(model, torch.nn.Module):
            for p in model.parameters():
                return p.device.type
        return "cpu"

    def _context(self, device_type: str) -> Any:
        ctx = self._contexts.get(device_type)
        if ctx is None:
            dtype = self.dtype or (torch.bfloat16 if device_type == "cpu" else torch.float16)
            ctx = self._contexts[device_type] = torch.autocast(device_type, dtype=dtype)
        return ctx

    def scaler(self, device_type: str) -> Any:
        """The grad scaler for ``device_type`` (``None`` when not scaling)."""
        dtype = self.dtype or (torch.bfloat16 if device_type == "cpu" else torch.float16)
        use = (
            self.use_grad_scaler
            if self.use_grad_scaler is not None
            else (dtype == torch.float16 and device_type == "cuda")
        )
        if not use:
            return None
        if self._scaler is None:
            self._scaler = torch.amp.GradScaler(device_type)
            if self._scaler_state is not None:
                self._scaler.load_state_dict(self._scaler_state)
                self._scaler_state = None
        return self._scaler

    @on(StepBegin)
    def step_begin(self, event: StepBegin, phase: Phase, learner: Any) -> None:
        device_type = self._device_type(learner)
        step = learner.step
        step.autocast = self._context(device_type)
        if isinstance(phase, AbstractTrainingPhase):
            scaler = self.scaler(device_type)
            if scaler is not None:
                step.grad_scaler = scaler

    def state_dict(self) -> dict[str, Any]:
        if self._scaler is not None:
            return {"grad_scaler": dict(self._scaler.state_dict())}
        return {"grad_scaler": self._scaler_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("grad_scaler")
        if saved is None:
            return
        if self._scaler is not None:
            self._scaler.load_state_dict(saved)
        else:
            self._scaler_state = saved

    def __repr__(self) -> str:
        return f"MixedPrecision({self.dtype!r})" if self.dtype is not None else "MixedPrecision()"
