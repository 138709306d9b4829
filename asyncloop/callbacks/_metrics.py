"""Metrics: per-step and per-epoch metric values in ``learner.cbstate.metrics_step/metrics_epoch``.

Epoch values are batch-size-weighted means of the step values (fastai's choice; FluxTraining averaged batches
unweighted). Distributed, each rank's (sum, count) pairs are summed across ranks at ``EpochEnd`` (one
``all_reduce`` per epoch), so every rank's ``metrics_epoch`` holds the global values; step values stay the rank's. Step values computed on an accelerator stay there: they are pushed to the history as tensors and
reduced on the device, so the loop syncs with the host once per epoch, not once per step.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .._callback import Callback, on, pristine
from ..events import EpochBegin, EpochEnd, StepEnd
from ..phases import Phase
from .._access import Read, Write
from .._containers import PhaseDict, SeriesHistory
from .._distributed import Strategy, active_strategy
from ._recorder import Recorder


def accuracy(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose argmax over the last axis matches the target.

    ``targets`` may be class indices (shape ``(n,)``) or one-hot/probabilities with the shape of ``preds``.
    """
    if preds.ndim == 0:
        raise ValueError("accuracy needs predictions with a class axis, got a scalar")
    predicted = preds.argmax(dim=-1)
    if targets.shape == preds.shape and preds.ndim > 1:
        targets = targets.argmax(dim=-1)
    return (predicted == targets).float().mean()


def _batch_size(ys: Any) -> int:
    """Rows in a batch of targets ``ys``: the weight of its step in the epoch value.

    * a tensor: its first dimension (a 0-d tensor counts 1);
    * a dict (the fields of a batch): the rows of its first value;
    * a tuple or list: when its leading elements (first element, first value, nested) reach a tensor, the
      fields of a batch as ``default_collate`` builds them (``[boxes, labels]``, ``[[boxes, masks], labels]``):
      that tensor's rows; otherwise a batch of samples (``["cat", "dog"]``): its length;
    * anything else with a length: the length; a scalar: 1.

    Pitfall: an empty dict, tuple or list counts 0 rows, so its step adds nothing to the epoch value.
    """
    if isinstance(ys, torch.Tensor):
        return ys.shape[0] if ys.ndim else 1  # shape[0]: len(tensor) is several times slower
    if isinstance(ys, Mapping) and ys:
        return _batch_size(next(iter(ys.values())))
    if isinstance(ys, (tuple, list)) and ys:
        lead = _leading_tensor(ys[0])
        if lead is not None:
            return _batch_size(lead)
    try:
        return len(ys)
    except TypeError:  # a scalar
        return 1


def _leading_tensor(value: Any) -> torch.Tensor | None:
    """The tensor reached by following first elements of tuples/lists and first values of dicts, or None."""
    while not isinstance(value, torch.Tensor):
        if isinstance(value, (tuple, list)) and value:
            value = value[0]
        elif isinstance(value, Mapping) and value:
            value = next(iter(value.values()))
        else:
            return None
    return value


def _detached(value: Any) -> Any:
    """A step value that never syncs an accelerator: CPU tensors become numbers, others stay (detached) tensors."""
    if isinstance(value, torch.Tensor):
        if value.is_cpu:
            return value.item()
        return value.detach()
    return value


class AbstractMetric(abc.ABC):
    """Interface of the metrics :class:`Metrics` tracks.

    * ``name`` -- unique within one :class:`Metrics`;
    * :meth:`reset` -- at every ``EpochBegin``;
    * :meth:`update` -- at every ``StepEnd`` with the protected learner and the phase;
    * :meth:`step_value` -- the value of the last step, or ``None`` (nothing pushed);
    * :meth:`epoch_value` -- the value for the epoch so far, or ``None``.
    """

    name: str

    @abc.abstractmethod
    def reset(self) -> None: ...

    @abc.abstractmethod
    def update(self, learner: Any, phase: Phase) -> None: ...

    @abc.abstractmethod
    def step_value(self) -> Any: ...

    @abc.abstractmethod
    def epoch_value(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class _WeightedMean(AbstractMetric):
    """Batch-size-weighted mean of per-step values (shared by Metric and Loss)."""

    name = "?"
    phase: type[Phase] = Phase

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sum: Any = 0.0
        self._count = 0
        self._last: Any = None

    def _compute(self, step: Any) -> Any:
        raise NotImplementedError

    def update(self, learner: Any, phase: Phase) -> None:
        if not isinstance(phase, self.phase):
            self._last = None
            return
        step = learner.step
        self.add(self._compute(step), step.ys)

    def add(self, value: Any, ys: Any) -> Any:
        """Count one step's ``value`` for a batch with targets ``ys`` and return it as :meth:`step_value` will.

        The value is weighted by the batch size (rows of ``ys``, see ``_batch_size``). A CPU tensor becomes a
        number, an accelerator tensor stays a detached tensor, so this never syncs the device. Runs every step:
        the checks are inlined.
        """
        if value.__class__ is torch.Tensor:  # _detached
            value = value.item() if value.is_cpu else value.detach()
        elif isinstance(value, torch.Tensor):
            value = _detached(value)
        n = (ys.shape[0] if ys.ndim else 1) if ys.__class__ is torch.Tensor else _batch_size(ys)
        self._sum = self._sum + value * n
        self._count += n
        self._last = value
        return value

    def step_value(self) -> Any:
        return self._last

    def epoch_value(self) -> Any:
        if self._count == 0:
            return None
        mean = self._sum / self._count
        return mean.item() if isinstance(mean, torch.Tensor) else float(mean)


class Metric(_WeightedMean):
    """A metric computed as ``fn(preds, targets)`` every step; its epoch value is the batch-weighted mean.

    Args:
        fn: ``fn(preds, targets) -> number or scalar tensor``.
        name: shown in tables and logs; default ``fn.__name__`` with a capital first letter (``"Accuracy"``).
        device: applied to ``preds`` and ``targets`` before ``fn`` (e.g. ``lambda t: t.cpu()``); default none.
        phase: compute only in phases of this type, e.g. ``phase=ValidationPhase`` for expensive metrics.

    Example::

        Metrics(Metric(accuracy, phase=ValidationPhase), Metric(torch.nn.functional.mse_loss, name="MSE"))
    """

    def __init__(
        self,
        fn: Callable[[Any, Any], Any],
        *,
        name: str | None = None,
        device: Callable[[Any], Any] | None = None,
        phase: type[Phase] = Phase,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"Metric needs a function fn(preds, targets), got {fn!r}")
        if not (isinstance(phase, type) and issubclass(phase, Phase)):
            raise TypeError(f"phase must be a Phase class such as ValidationPhase, got {phase!r}")
        if name is None:
            raw = getattr(fn, "__name__", None) or type(fn).__name__
            name = raw[:1].upper() + raw[1:]
        self.fn, self.name, self.device, self.phase = fn, name, device, phase
        super().__init__()

    def _compute(self, step: Any) -> Any:
        preds, ys = step.preds, step.ys
        if self.device is not None:
            preds, ys = self.device(preds), self.device(ys)
        return self.fn(preds, ys)

    def __repr__(self) -> str:
        return f"Metric({self.name})"


class Loss(_WeightedMean):
    """The loss of every step (``learner.step.loss``); always the first metric of :class:`Metrics`."""

    def __init__(self, name: str = "Loss") -> None:
        self.name = name
        super().__init__()

    def _compute(self, step: Any) -> Any:
        return step.loss

    def update(self, learner: Any, phase: Phase) -> None:
        # _WeightedMean.update without the _compute call, with item access (Metrics.step_end inlines this)
        if not isinstance(phase, self.phase):
            self._last = None
            return
        step = learner.step
        self.add(step["loss"], step["ys"])

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


class TorchMetric(AbstractMetric):
    """Adapter for a ``torchmetrics.Metric``: updated with ``(preds, targets)``, accumulated on its device."""

    def __init__(self, metric: Any, *, name: str | None = None, phase: type[Phase] = Phase) -> None:
        self.metric = metric
        self.name = name or type(metric).__name__
        self.phase = phase
        self._updated = False

    def reset(self) -> None:
        self.metric.reset()
        self._updated = False

    def update(self, learner: Any, phase: Phase) -> None:
        if not isinstance(phase, self.phase):
            return
        step = learner.step
        preds, ys = step.preds.detach(), step.ys
        metric = self.metric
        device = getattr(metric, "device", None)
        if device is not None and isinstance(preds, torch.Tensor) and preds.device != device:
            metric.to(preds.device)
        metric.update(preds, ys)
        self._updated = True

    def step_value(self) -> Any:
        return None

    def epoch_value(self) -> Any:
        if not self._updated:
            return None
        value = self.metric.compute()
        return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value

    def __repr__(self) -> str:
        return f"TorchMetric({self.name})"


def _as_metric(m: Any) -> AbstractMetric:
    if isinstance(m, AbstractMetric):
        return m
    # Not imported yet: m cannot be one of its metrics (and importing it costs seconds).
    torchmetrics = sys.modules.get("torchmetrics")
    if torchmetrics is not None and isinstance(m, torchmetrics.Metric):
        return TorchMetric(m)
    if callable(m):
        return Metric(m)
    raise TypeError(f"Metrics takes metric functions fn(preds, targets) or AbstractMetric objects, got {m!r}")


def _reduce_across_ranks(metrics: list[AbstractMetric], strategy: Strategy) -> None:
    """Make every weighted-mean metric's (sum, count) the sum over all ranks: one ``all_reduce`` per epoch, on the
    worker thread, at the same point on every rank. ``torchmetrics`` metrics sync themselves in ``compute()``;
    other :class:`AbstractMetric` implementations keep their rank's values."""
    means = [m for m in metrics if isinstance(m, _WeightedMean)]
    if not means:
        return
    values: list[float] = []
    for m in means:
        values += [float(m._sum), float(m._count)]
    summed = strategy.reduce_sums(values)
    for i, m in enumerate(means):
        m._sum, m._count = summed[2 * i], round(summed[2 * i + 1])


class Metrics(Callback):
    """Track metrics: ``cbstate.metrics_step[phase]`` per step and ``cbstate.metrics_epoch[phase]`` per epoch.

    Arguments are :class:`AbstractMetric` objects (:class:`Metric`), ``torchmetrics`` metrics or plain
    functions ``fn(preds, targets)``; :class:`Loss` is always first. Step values are pushed at index
    ``history[phase].steps`` (1-based), epoch values at ``history[phase].epochs``. Names must be unique.
    A default callback (with only the loss).

    Example::

        learner = Learner(model, loss_fn, data=data, callbacks=[Metrics(accuracy)])
        trio.run(fit, learner, 3)
        learner.cbstate.metrics_epoch[ValidationPhase()].last("Accuracy")  # (3, 0.97)
    """

    state_access = {
        "cbstate": {"metrics_step": Write(), "metrics_epoch": Write(), "history": Read()},
        "step": Read(),
    }
    run_after = (Recorder,)

    def __init__(self, *metrics: Any) -> None:
        self.metrics: list[AbstractMetric] = [Loss(), *(_as_metric(m) for m in metrics)]
        names = [m.name for m in self.metrics]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"Multiple metrics have the same name: {', '.join(map(repr, duplicates))}; "
                f"give them distinct names with Metric(fn, name=...)"
            )

    def init(self, learner: Any) -> None:
        for key in ("metrics_step", "metrics_epoch"):
            if key not in learner.cbstate:
                learner.cbstate[key] = PhaseDict(SeriesHistory)

    @on(EpochBegin)
    def epoch_begin(self, event: EpochBegin, phase: Phase, learner: Any) -> None:
        for metric in self.metrics:
            metric.reset()

    @on(StepEnd)
    def step_end(self, event: StepEnd, phase: Phase, learner: Any) -> None:
        cbstate = learner.cbstate  # item access below: no PropDict.__getattr__ call every step
        series = cbstate["metrics_step"][phase]
        index = cbstate["history"][phase].steps
        for metric in self.metrics:
            if metric.__class__ is Loss and isinstance(phase, metric.phase):
                step = learner.step  # Loss.update inline (the first metric, every step): add returns the value
                value = metric.add(step["loss"], step["ys"])
            else:
                metric.update(learner, phase)
                value = metric.step_value()
            if value is not None:
                series.push(metric.name, index, value)

    @on(EpochEnd)
    def epoch_end(self, event: EpochEnd, phase: Phase, learner: Any) -> None:
        strategy = active_strategy()
        if strategy is not None and strategy.world_size > 1:
            _reduce_across_ranks(self.metrics, strategy)
        cbstate = learner.cbstate
        index = cbstate.history[phase].epochs
        series = cbstate.metrics_epoch[phase]
        for metric in self.metrics:
            value = metric.epoch_value()
            if value is not None:
                series.push(metric.name, index, value)

    def _takes_learner(self) -> bool:
        # Only the loss: a Metric's fn would get the step's containers themselves instead of read-only views.
        return pristine(self, Metrics) and all(type(m) is Loss for m in self.metrics)

    def __repr__(self) -> str:
        return f"Metrics({', '.join(m.name for m in self.metrics)})"
