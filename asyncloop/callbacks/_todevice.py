"""ToDevice / ToGPU: move the model (in place) and every batch to a device."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .._callback import Callback, on
from ..events import EpochBegin, FitBegin, StepBegin
from ..phases import Phase
from .._access import Write


def move_to(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (also inside tuples, lists and dicts) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=device.type == "cuda")
    if isinstance(value, tuple):
        return (
            type(value)(*(move_to(v, device) for v in value))
            if hasattr(value, "_fields")
            else tuple(move_to(v, device) for v in value)
        )
    if isinstance(value, list):
        return [move_to(v, device) for v in value]
    if isinstance(value, Mapping):
        return {k: move_to(v, device) for k, v in value.items()}
    return value


def _move_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Move optimizer state tensors to their parameter's device, in place (the state is kept, never rebuilt).

    Scalar ``step`` counters stay where they are (torch keeps them on the CPU unless the optimizer is capturable
    or fused, and handles both).
    """
    for param, state in optimizer.state.items():
        device = param.device
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.device != device and not (key == "step" and value.ndim == 0):
                state[key] = value.to(device)


class ToDevice(Callback):
    """Move the model to a device once per epoch (a no-op once it is there) and every batch at ``StepBegin``.

    ``ToDevice(data_fn, model_fn)``: ``step.xs = data_fn(xs)``, ``step.ys = data_fn(ys)`` at every step;
    ``model_fn(model)`` at ``FitBegin`` and every ``EpochBegin``. ``ToDevice(device)`` moves both (and every tensor
    inside tuple, list and dict batches) to ``device``.

    The model is moved **in place** (``model_fn`` must return the same module, as ``Module.to`` does), so the
    optimizer keeps its parameters and its state: tensors in the optimizer's state (Adam's moments, after loading
    a checkpoint, say) follow their parameters. FluxTraining rebuilt the optimizer state at every epoch instead.

    Example::

        learner = Learner(model, loss_fn, data=data, callbacks=[ToDevice("cuda")])
        learner = Learner(model, loss_fn, data=data, callbacks=[ToGPU()])   # the same, when CUDA is available
    """

    state_access = {"model": Write(), "optimizer": Write(), "step": {"xs": Write(), "ys": Write()}}

    def __init__(
        self,
        data_fn: Callable[[Any], Any] | str | torch.device,
        model_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        if isinstance(data_fn, (str, torch.device)):
            device = torch.device(data_fn)
            if model_fn is not None:
                raise TypeError("pass ToDevice(device) or ToDevice(data_fn, model_fn), not a device and a model_fn")
            self.device: torch.device | None = device
            self.data_fn: Callable[[Any], Any] = lambda value: move_to(value, device)
            self.model_fn: Callable[[Any], Any] = lambda model: model.to(device)
            return
        if not callable(data_fn) or not callable(model_fn):
            raise TypeError(
                f"ToDevice takes a device (ToDevice('cuda')) or two functions ToDevice(data_fn, model_fn), "
                f"got {data_fn!r}, {model_fn!r}"
            )
        self.device = None
        self.data_fn, self.model_fn = data_fn, model_fn

    @on(FitBegin)
    @on(EpochBegin)
    def move_model(self, event: Any, phase: Phase, learner: Any) -> None:
        model = learner.model
        moved = self.model_fn(model)
        if moved is not model:
            raise TypeError(
                f"{self.name}: model_fn returned a new object instead of moving the model in place; the optimizer "
                f"would keep optimizing the old parameters. Use a function like lambda m: m.to(device)"
            )
        if isinstance(model, torch.nn.Module) and any(True for _ in model.parameters()):
            try:
                optimizer = learner.optimizer
            except AttributeError:
                return
            _move_optimizer_state(optimizer)

    @on(StepBegin)
    def move_batch(self, event: StepBegin, phase: Phase, learner: Any) -> None:
        step = learner.step
        data_fn = self.data_fn
        step.xs = data_fn(step.xs)
        step.ys = data_fn(step.ys)

    def __repr__(self) -> str:
        return f"ToDevice({str(self.device)!r})" if self.device is not None else "ToDevice(data_fn, model_fn)"


class ToGPU(ToDevice):
    """``ToDevice("cuda")``: train on the current GPU. Without CUDA it warns and stays on the CPU (as Flux's ``gpu``).

    Example::

        learner = Learner(model, loss_fn, data=data, callbacks=[ToGPU()])
    """

    def __init__(self) -> None:
        if torch.cuda.is_available():
            super().__init__("cuda")
        else:
            warnings.warn("ToGPU(): CUDA is not available, training stays on the CPU", stacklevel=2)
            super().__init__("cpu")

    def __repr__(self) -> str:
        return "ToGPU()"
