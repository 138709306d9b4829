"""The learning-rate finder: ``lr_find``, the fastai/Lightning LR range test, and its result ``LRFinderResult``.

The sweep is an ordinary :func:`asyncloop.fit` of one training epoch on a *temporary* learner that shares the
user's model (and optimizer) but none of their callbacks except those that change how a step computes
(:class:`asyncloop.ToDevice`, :class:`asyncloop.MixedPrecision`, :class:`asyncloop.GradientClipping`, as deep
copies), plus the private ``_Sweep`` callback that sets the LR at every ``StepBegin`` and reads the loss at every
``StepEnd``. Printers, checkpointers, loggers, the Recorder and the Scheduler never see the sweep, so nothing is
printed or written and the user's ``cbstate`` and callbacks are not touched. What the sweep does change (the
weights and buffers, their gradients, the modules' train/eval modes, the optimizer's state and param groups, the
global RNG states; the device and dtype of the weights, which a ``ToDevice`` taking part changes) is saved first
and restored in a ``finally``, also on an error or a cancellation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ._access import Read, Write
from ._callback import Callback, ConflictResolution, NotDefined, RunFirst, on
from ._checkpoint import rng_state, set_rng_state
from ._exceptions import CancelFittingException
from ._learner import Learner
from .callbacks._helpers import GradientClipping, MixedPrecision
from .callbacks._todevice import ToDevice
from .events import StepBegin, StepEnd
from .hyperparameters import LearningRate, set_hyperparameter
from .phases import AbstractTrainingPhase, Phase
from .runners import ActorRunner, LinearRunner
from ._training import fit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: fastai's and Lightning's constants: EMA factor of the smoothed loss, divergence factor over the best smoothed
#: loss, and the points the steepest-descent rule leaves out at the start and the end of the curve.
_BETA = 0.98
_DIVERGENCE = 4.0
_SKIP_BEGIN, _SKIP_END = 10, 1

#: The user's callbacks that take part in the sweep (copied): they change how a step computes, not what is kept.
_STEP_CALLBACKS = (ToDevice, MixedPrecision, GradientClipping)


@dataclass(frozen=True)
class LRFinderResult:
    """What :func:`lr_find` returns: the LR range test's curve and the suggested learning rate.

    * ``lrs``: the learning rate of each recorded step, growing exponentially from ``start_lr``;
    * ``losses``: the smoothed training loss after each of those steps (an exponential moving average with
      ``beta = 0.98`` and bias correction, as fastai and Lightning): the curve to read;
    * ``raw_losses``: the unsmoothed loss of each step;
    * ``suggestion``: the LR at the steepest descent of ``losses`` (Lightning's rule: leave out the first 10 and
      the last point, take the point where the curve's gradient, numpy's central difference, is most negative;
      with exponentially spaced LRs that is the steepest slope against log LR), or ``None`` when too few points remain; then ``reason`` says why;
    * ``stopped``: why the sweep ended before ``num_steps`` steps (the loss diverged, was NaN/inf, or the data
      ran out), or ``None`` when it ran them all.

    The suggestion is a starting point, not an oracle: look at the curve (``plot``) and prefer an LR somewhat
    below the one where the loss is lowest.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float | None
    reason: str | None = None
    stopped: str | None = None

    def plot(self, path: Any = None) -> Figure:
        """Draw the smoothed loss against the LR on a log axis, the suggestion marked; return the figure.

        With ``path`` the figure is also saved there (any format matplotlib knows from the suffix). Needs
        matplotlib, which asyncloop does not install: without it this raises ``ImportError`` saying so.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise ImportError(
                "LRFinderResult.plot needs matplotlib, which is not installed: pip install matplotlib"
            ) from exc
        fig = Figure()
        ax = fig.add_subplot()
        ax.plot(self.lrs, self.losses, label="smoothed loss")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        if self.suggestion is not None:
            i = self.lrs.index(self.suggestion)
            ax.plot([self.suggestion], [self.losses[i]], "o", color="red", label=f"suggestion {self.suggestion:.2e}")
        ax.legend()
        if path is not None:
            fig.savefig(path)
        return fig


def _check_args(start_lr: Any, end_lr: Any, num_steps: Any) -> None:
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"lr_find: {name} must be a finite number, got {value!r}")
    if not start_lr > 0:
        raise ValueError(f"lr_find: start_lr must be > 0 (the sweep is exponential), got {start_lr!r}")
    if not end_lr > start_lr:
        raise ValueError(
            f"lr_find: end_lr must be greater than start_lr, got start_lr={start_lr!r}, end_lr={end_lr!r}"
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"lr_find: num_steps must be an int >= 2, got {num_steps!r}")


class _Cycle:
    """``num_steps`` batches of ``data``, starting over when a pass ends; stops early if a pass yields nothing
    (an exhausted iterator), and records that in ``exhausted``."""

    def __init__(self, data: Iterable[Any], num_steps: int) -> None:
        self.data, self.num_steps, self.exhausted = data, num_steps, False

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self) -> Iterator[Any]:
        n = 0
        while n < self.num_steps:
            before = n
            for batch in self.data:
                yield batch
                n += 1
                if n == self.num_steps:
                    return
            if n == before:
                if n == 0:
                    raise ValueError("lr_find: the training data yielded no batches")
                self.exhausted = True
                return


class _Sweep(Callback):
    """Set the LR of step ``i`` at its ``StepBegin``; record the loss at its ``StepEnd``; stop on divergence."""

    state_access = {"optimizer": Write(), "step": {"loss": Read()}}

    def __init__(self, lrs: list[float]) -> None:
        self.schedule = lrs
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.raw_losses: list[float] = []
        self.stopped: str | None = None
        self._avg = 0.0
        self._best = math.inf

    def resolve_conflict(self, other: Callback) -> ConflictResolution:
        if isinstance(other, ToDevice):
            return RunFirst(other)  # as the Scheduler: the model and its optimizer state move first
        return NotDefined()

    @on(StepBegin, AbstractTrainingPhase)
    def step_begin(self, event: StepBegin, phase: Phase, learner: Any) -> None:
        set_hyperparameter(learner, LearningRate, self.schedule[len(self.lrs)])

    @on(StepEnd, AbstractTrainingPhase)
    def step_end(self, event: StepEnd, phase: Phase, learner: Any) -> None:
        lr = self.schedule[len(self.lrs)]
        loss = float(learner.step.loss)
        if not math.isfinite(loss):
            self.stopped = f"the loss was {loss} at lr={lr:.3g}"
            raise CancelFittingException(self.stopped)
        i = len(self.lrs)
        self._avg = _BETA * self._avg + (1 - _BETA) * loss
        smoothed = self._avg / (1 - _BETA ** (i + 1))
        self.lrs.append(lr)
        self.raw_losses.append(loss)
        self.losses.append(smoothed)
        if i > 0 and smoothed > _DIVERGENCE * self._best:
            self.stopped = (
                f"the loss diverged at lr={lr:.3g}: smoothed loss {smoothed:.4g} > {_DIVERGENCE:g} x the best "
                f"{self._best:.4g}"
            )
            raise CancelFittingException(self.stopped)
        self._best = min(self._best, smoothed)


def _suggest(lrs: list[float], losses: list[float]) -> tuple[float | None, str | None]:
    """Lightning's steepest-descent rule; ``(lr, None)`` or ``(None, reason)``."""
    inner = losses[_SKIP_BEGIN:-_SKIP_END]
    if len(inner) < 2:
        return None, (
            f"only {len(losses)} losses were recorded; the steepest-descent rule leaves out the first {_SKIP_BEGIN} "
            f"and the last {_SKIP_END} and needs 2 more: raise num_steps (or lower end_lr if the loss diverged early)"
        )
    steepest = int(torch.gradient(torch.tensor(inner, dtype=torch.float64))[0].argmin())
    return lrs[_SKIP_BEGIN + steepest], None


def _matches(tensor: Any, value: torch.Tensor) -> bool:
    return (
        isinstance(tensor, torch.Tensor)
        and tensor.device == value.device
        and tensor.dtype == value.dtype
        and tensor.shape == value.shape
    )


class _Restore:
    """What the sweep changes on the shared model and optimizer, saved to be put back exactly."""

    def __init__(self, learner: Learner) -> None:
        model = learner.model
        self.model = model if isinstance(model, torch.nn.Module) else None
        self.optimizer = learner._optimizer
        self.rng = rng_state()
        if self.model is not None:
            # Copies on the same device and dtype. Put back in place when the tensor still matches; a ToDevice
            # taking part moves the shared model (Module.to keeps parameter objects, replaces buffers), and then
            # the copies themselves go back, on the original device and dtype.
            self.params = [
                (p, p.detach().clone(), None if p.grad is None else p.grad.detach().clone())
                for p in self.model.parameters()
            ]
            self.buffers = [
                (m, k, b.detach().clone()) for m in self.model.modules() for k, b in m._buffers.items() if b is not None
            ]
            self.modes = [(m, m.training) for m in self.model.modules()]
        if self.optimizer is not None:
            self.optimizer_state = copy.deepcopy(self.optimizer.state_dict())

    def restore(self) -> None:
        if self.model is not None:
            with torch.no_grad():
                for p, value, grad in self.params:
                    if _matches(p, value):
                        p.copy_(value)
                    else:
                        p.data = value
                    p.grad = grad
                for m, k, value in self.buffers:
                    if _matches(m._buffers[k], value):
                        m._buffers[k].copy_(value)
                    else:
                        m._buffers[k] = value
            for m, training in self.modes:
                m.training = training
        if self.optimizer is not None:
            self.optimizer.load_state_dict(self.optimizer_state)
        set_rng_state(self.rng)


async def lr_find(
    learner: Learner, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100
) -> LRFinderResult:
    """Run the LR range test on ``learner`` and return the curve and a suggested learning rate.

    Trains on ``learner.data.training`` for up to ``num_steps`` steps (starting the data over when it is
    shorter), the LR growing exponentially from ``start_lr`` (step 1) to ``end_lr`` (step ``num_steps``), and
    records the smoothed training loss; stops early when the smoothed loss exceeds 4 x the best so far, or a loss
    is NaN/inf (fastai's rule). See :class:`LRFinderResult` for the suggestion's rule.

    The learner is exactly as before afterwards, also when the sweep fails or is cancelled: weights, buffers,
    gradients, train/eval modes, optimizer state and LR, callbacks, ``cbstate`` and the RNG states. Only the
    callbacks that change how a step computes take part (copies of ``ToDevice``, ``MixedPrecision`` and
    ``GradientClipping``); the others (printers, checkpointers, loggers, the Recorder, metrics, a Scheduler, a
    ``GradientAccumulation``) do not run, so the sweep prints and writes nothing. The built-in
    ``TrainingPhase`` step is used. A training iterator that cannot be iterated twice (a generator) is used once.

    Example::

        result = trio.run(lr_find, learner)
        result.suggestion        # e.g. 0.0023
        result.plot("lr.png")    # needs matplotlib
    """
    if not isinstance(learner, Learner):
        raise TypeError(f"lr_find takes a Learner(model, loss_fn, data=...), got {learner!r}")
    _check_args(start_lr, end_lr, num_steps)
    train = learner.data.get("training")
    if train is None:
        raise ValueError("lr_find: learner has no training data: pass data=(train_batches, valid_batches) to Learner")
    if learner.session is not None:
        raise RuntimeError("lr_find cannot run while a fit of this learner is running; call it between fits")
    ratio = end_lr / start_lr
    schedule = [start_lr * ratio ** (i / (num_steps - 1)) for i in range(num_steps)]
    sweep = _Sweep(schedule)
    data = _Cycle(train, num_steps)
    optimizer = learner._optimizer if learner._optimizer is not None else learner._optimizer_factory
    runner = ActorRunner() if isinstance(learner.runner, ActorRunner) else LinearRunner()
    step_callbacks = [copy.deepcopy(cb) for cb in learner.callbacks if isinstance(cb, _STEP_CALLBACKS)]
    saved = _Restore(learner)
    try:
        temporary = Learner(
            learner.model,
            learner.loss_fn,
            data=(data, None),
            optimizer=optimizer,
            callbacks=[*step_callbacks, sweep],
            use_default_callbacks=False,
            runner=runner,
        )
        await fit(temporary, 1)
    finally:
        saved.restore()
    stopped = sweep.stopped
    if stopped is None and data.exhausted:
        stopped = f"the training data ran out after {len(sweep.lrs)} batches (an iterator is used only once)"
    suggestion, reason = _suggest(sweep.lrs, sweep.losses)
    return LRFinderResult(list(sweep.lrs), list(sweep.losses), list(sweep.raw_losses), suggestion, reason, stopped)
