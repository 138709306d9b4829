"""``validate`` and ``predict``: evaluating a learner outside ``fit`` (private).

* :func:`validate` runs one epoch of :class:`EvaluationPhase` (a :class:`ValidationPhase` of its own) with the
  callbacks, in a session like ``fit``'s, and returns the epoch's metric values. Its series live under
  ``EvaluationPhase()`` in ``cbstate``, so the validation history of ``fit`` is never touched. No ``FitBegin`` or
  ``FitEnd`` fires: nothing that acts on fit boundaries (the ``Checkpointer``'s final checkpoint) runs, and
  ``EarlyStopping`` ignores evaluation epochs. Handlers on ``AbstractValidationPhase`` and ``ValidationPhase``
  run, as they would in a fit's validation epoch.
* :func:`predict` fires no events: it calls the model on every batch's inputs on a fresh thread (torch's thread
  count carried over), under ``torch.no_grad()`` and ``eval()``, and gathers the outputs on the CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from ._exceptions import _Aborted
from ._session import in_session
from ._threads import run_in_thread
from .phases import ValidationPhase

if TYPE_CHECKING:
    from ._learner import Learner


class EvaluationPhase(ValidationPhase):
    """The phase :func:`asyncloop.validate` runs: a validation epoch whose series are kept apart from ``fit``'s.

    Its metrics land in ``learner.cbstate.metrics_epoch[EvaluationPhase()]`` and its counts in
    ``learner.cbstate.history[EvaluationPhase()]``; ``fit``'s ``ValidationPhase()`` entries never change.
    Handlers on ``ValidationPhase`` and ``AbstractValidationPhase`` run for it (it is a subclass); ``EarlyStopping``
    skips it. For batches the built-in validation step cannot take (dict batches, several inputs), subclass it
    and override ``step`` (see :func:`asyncloop.run_step`), then pass ``validate(learner, phase=MyEvaluation())``.
    """

    __slots__ = ()


#: One instance, so the session's dispatcher cache matches it by identity across calls.
_EVALUATION = EvaluationPhase()


def _check_iterable(data: Any, fn: str) -> None:
    if data is None or isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"{fn}: data must be an iterable of batches (a DataLoader, a list of batches), got {type(data).__name__}"
        )


async def validate(learner: Learner, data: Any = None, *, phase: EvaluationPhase | None = None) -> dict[str, Any]:
    """Run one validation epoch over ``data`` with the callbacks and return its metric values by name.

    ``data`` defaults to the learner's validation data (``learner.data["validation"]``). The result holds every
    value :class:`asyncloop.Metrics` recorded for this epoch, e.g. ``{"Loss": 0.31, "Accuracy": 0.9}``: scalars as
    ``float``, anything else (a confusion matrix) as recorded. Without a ``Metrics`` callback it is ``{}``.

    The epoch runs as :class:`EvaluationPhase`: its values are also kept, one per call, in
    ``learner.cbstate.metrics_epoch[EvaluationPhase()]``; the validation history of ``fit`` is never changed,
    ``Checkpointer`` writes nothing and ``EarlyStopping`` neither judges nor stops. No ``FitBegin``/``FitEnd``
    fires; callbacks' ``teardown`` runs afterwards, as after any session. The model is put in ``eval()`` mode for
    the epoch (custom steps included) and its former mode is restored afterwards, also after an error.
    ``phase``: an :class:`EvaluationPhase` subclass instance whose ``step`` handles your batches.

    A trio async function like ``fit``: ``trio.run(asyncloop.validate, learner)``. It refuses to run while a
    ``fit`` of the same learner runs; a ``CancelFittingException`` raised by a callback propagates.
    """
    if phase is None:
        phase = _EVALUATION
    elif not isinstance(phase, EvaluationPhase):
        raise TypeError(
            f"validate: phase must be an EvaluationPhase instance (subclass EvaluationPhase to give it your own "
            f"step), got {phase!r}"
        )
    if data is None:
        data = learner.data.get("validation")
        if data is None:
            raise ValueError(
                "validate: the learner has no validation data; pass it as validate(learner, data), or give the "
                "learner data=(train_batches, valid_batches)"
            )
    else:
        _check_iterable(data, "validate")
    return await in_session(learner, _validate, learner, phase, data)


async def _validate(learner: Learner, phase: EvaluationPhase, data: Iterable[Any]) -> dict[str, Any]:
    model = learner.model
    mode = model.training if isinstance(model, torch.nn.Module) else None
    try:
        if mode:
            model.eval()  # before EpochBegin: a custom evaluation step evaluates too
        strategy = learner.session.strategy  # type: ignore[union-attr]
        if strategy is not None:  # each rank validates its share; Metrics reduces the values across ranks
            data = strategy.shard(data, learner.seed or 0)
        await phase.epoch(learner, data)
    finally:
        if mode is not None:
            model.train(mode)
    return _epoch_values(learner.cbstate, phase)


def _epoch_values(cbstate: Any, phase: EvaluationPhase) -> dict[str, Any]:
    """The values ``Metrics`` recorded for ``phase``'s latest epoch (none from an earlier call)."""
    series = cbstate["metrics_epoch"].get(phase) if "metrics_epoch" in cbstate else None
    if series is None:
        return {}
    history = cbstate["history"].get(phase) if "history" in cbstate else None
    values: dict[str, Any] = {}
    for name in series.keys():
        index, value = series.last(name)
        if history is not None and index != history.epochs:
            continue
        values[name] = _plain(value)
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return float(value) if value.numel() == 1 else value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


# --------------------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------------------


async def predict(learner: Learner, data: Any) -> torch.Tensor | list[Any]:
    """The model's outputs over ``data``, on the CPU: one tensor when every batch gives a tensor, else a list.

    Each batch is an ``(xs, ys)`` pair or bare inputs. The rule: a tuple or list of length 2 is a pair and only
    its first item goes to the model; anything else (a tensor, a dict, a tuple of another length) is passed to
    the model as it is. Pitfall: a model that takes a 2-tuple of inputs must get batches ``((a, b), None)``.

    Inputs are moved to the model's device (that of its first parameter or buffer), so a GPU model works
    without callbacks. Tensor outputs of the same trailing shape are concatenated along dim 0; otherwise (dicts,
    tuples, 0-d tensors, varying shapes) the result is the list of per-batch outputs, tensors moved to the CPU.
    Empty data gives ``[]``.

    The model runs in ``eval()`` mode under ``torch.no_grad()``; its mode is restored afterwards, also after an
    error. No events fire and no callback runs (``ToDevice`` included). The work runs on a fresh thread, with
    the caller's torch thread count, so the caller's event loop stays responsive; cancelling the caller stops
    it after the current batch. It refuses to run while a ``fit`` of the same learner runs, except from inside
    that fit (a handler or a custom phase), where it runs inline.
    """
    model = learner.model
    if not callable(model):
        raise TypeError(f"predict: learner.model must be callable (a torch.nn.Module), got {type(model).__name__}")
    _check_iterable(data, "predict")
    session = learner.session
    if session is not None:
        if session.in_worker():
            return _predict(model, data, lambda: False)
        raise RuntimeError(
            "predict: fit() is running for this learner; await it first, or predict from inside it "
            "(a handler or a custom phase)"
        )
    return await _in_thread(model, data)


async def _in_thread(model: Any, data: Iterable[Any]) -> torch.Tensor | list[Any]:
    """:func:`_predict` on a fresh thread; on cancellation, ask it to stop after its batch and wait for it."""
    num_threads = torch.get_num_threads()
    stop = threading.Event()

    def main() -> torch.Tensor | list[Any]:
        torch.set_num_threads(num_threads)  # a fresh thread starts with torch's default, often far too few
        return _predict(model, data, stop.is_set)

    return await run_in_thread(main, name="asyncloop-predict", on_cancel=stop.set)


def _model_device(model: Any) -> torch.device | None:
    if not isinstance(model, torch.nn.Module):
        return None
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _inputs(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0]
    return batch


def _predict(model: Any, data: Iterable[Any], stopped: Callable[[], bool]) -> torch.Tensor | list[Any]:
    from .callbacks._todevice import move_to  # lazily: the callback library imports this module

    device = _model_device(model)
    mode = model.training if isinstance(model, torch.nn.Module) else None
    outputs: list[Any] = []
    try:
        if mode:
            model.eval()
        with torch.no_grad():
            for batch in data:
                if stopped():
                    raise _Aborted()
                xs = _inputs(batch)
                if device is not None:
                    xs = move_to(xs, device)
                outputs.append(move_to(model(xs), torch.device("cpu")))
    finally:
        if mode is not None:
            model.train(mode)
    return _gather(outputs)


def _gather(outputs: list[Any]) -> torch.Tensor | list[Any]:
    first = outputs[0] if outputs else None
    if (
        isinstance(first, torch.Tensor)
        and first.dim() >= 1
        and all(isinstance(o, torch.Tensor) and o.shape[1:] == first.shape[1:] and o.dim() >= 1 for o in outputs)
    ):
        return torch.cat(outputs)
    return outputs
