"""EarlyStopping: stop the fit when a stopping criterion (``asyncloop.stopping``) says so."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._callback import Callback, on
from .._evaluation import EvaluationPhase
from ..events import EpochEnd
from ..phases import AbstractTrainingPhase, AbstractValidationPhase, Phase
from .._access import Read
from ..stopping import Disjunction as _Disjunction
from ..stopping import EarlyStopped, NumberSinceBest, StoppingCriterion
from ._metrics import Metrics
from ._checkpointer import infer_mode
from ._monitor import monitored_epoch_value
from ._recorder import Recorder



def _as_criterion(c: Any) -> StoppingCriterion:
    if isinstance(c, StoppingCriterion):
        return c
    if isinstance(c, int) and not isinstance(c, bool):
        return NumberSinceBest(c)
    raise TypeError(
        f"EarlyStopping takes stopping criteria from asyncloop.stopping (e.g. NumberSinceBest(3)) or an int n "
        f"(no improvement for n epochs), got {c!r}"
    )


def _phase_type(value: Any, name: str) -> type[Phase]:
    if isinstance(value, type) and issubclass(value, Phase):
        return value
    raise TypeError(f"EarlyStopping: {name} must be a Phase class such as AbstractValidationPhase, got {value!r}")


class EarlyStopping(Callback):
    """Stop the fit when ``criteria`` are met, judging a metric recorded by :class:`asyncloop.Metrics`.

    At every ``EpochEnd`` the epoch value of ``monitor`` (default ``"Loss"``; any metric ``Metrics`` records) is
    fed to the criterion: from a ``test_phase`` epoch (validation) as an out-of-sample value, from a
    ``train_phase`` epoch (training) as a training value, which only :class:`~asyncloop.stopping.PQ`,
    ``InvalidValue``, ``TimeLimit`` and ``Warmup`` use. With ``mode="max"`` the value is negated first, so
    "lower is better" holds for every criterion. The default ``mode=None`` is inferred from ``monitor`` as for
    :class:`asyncloop.Checkpointer`: ``"max"`` for metrics known to grow (accuracy, f1, precision, recall, auc,
    ...), ``"min"`` otherwise. When the criterion is done, it raises
    :class:`asyncloop.stopping.EarlyStopped` (a ``CancelFittingException``): ``fit`` fires ``FitEnd`` and
    returns ``FitResult(stopped=True, reason=...)``, the reason's message naming the criterion.

    ``EarlyStopping(n)`` with an int means ``NumberSinceBest(n)``: stop when ``n`` epochs brought no improvement
    of the monitored value, as FluxTraining's docstring promises. (FluxTraining itself used ``Patience(n)``,
    i.e. ``n`` *consecutive increases*, which never fires on a loss that plateaus; use ``Patience(n)`` for that.)
    Several criteria stop on the first one met. The criterion's state is saved in checkpoints.

    Inline, never detached: the stop must happen at this very epoch.

    Example::

        from asyncloop.stopping import InvalidValue, TimeLimit

        EarlyStopping(3)                                                # 3 epochs without a lower validation loss
        EarlyStopping(5, monitor="Accuracy", mode="max")                # 5 epochs without a higher accuracy
        EarlyStopping(InvalidValue() | TimeLimit(0.5))                  # NaN/Inf, or half an hour
    """

    state_access = {"cbstate": {"metrics_epoch": Read(), "history": Read()}}
    run_after = (Metrics, Recorder)

    def __init__(
        self,
        *criteria: Any,
        monitor: str = "Loss",
        mode: str | None = None,
        test_phase: type[Phase] = AbstractValidationPhase,
        train_phase: type[Phase] = AbstractTrainingPhase,
    ) -> None:
        if not criteria:
            raise TypeError("EarlyStopping needs a criterion, e.g. EarlyStopping(3) or EarlyStopping(Patience(5))")
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"EarlyStopping: monitor must be a metric name such as 'Loss', got {monitor!r}")
        mode = infer_mode(monitor, mode, "EarlyStopping")
        self.test_phase = _phase_type(test_phase, "test_phase")
        self.train_phase = _phase_type(train_phase, "train_phase")
        if issubclass(self.test_phase, self.train_phase) or issubclass(self.train_phase, self.test_phase):
            raise ValueError(
                f"EarlyStopping: test_phase {self.test_phase.__name__} and train_phase {self.train_phase.__name__} "
                f"overlap; pick phase types that do not include each other"
            )
        self.criterion: StoppingCriterion = _Disjunction(*(_as_criterion(c) for c in criteria))
        self.monitor = monitor
        self.mode = mode
        self.state: Any = None

    @on(EpochEnd)
    def epoch_end(self, event: EpochEnd, phase: Phase, learner: Any) -> None:
        if isinstance(phase, EvaluationPhase):
            return  # validate() neither feeds a fit's criterion nor stops anything
        is_test = isinstance(phase, self.test_phase)
        if not is_test and not isinstance(phase, self.train_phase):
            return
        value = self._value(learner, phase, required=is_test)
        if value is None:
            return
        fed = -value if self.mode == "max" else value
        criterion = self.criterion
        if is_test:
            self.state = criterion.update(fed, self.state)
        else:
            self.state = criterion.update_training(fed, self.state)
        if self.state is not None and criterion.done(self.state):
            epoch = learner.cbstate.history[phase].epochs
            raise EarlyStopped(criterion.message(self.state), criterion, self.monitor, value, epoch)

    def _value(self, learner: Any, phase: Phase, required: bool) -> float | None:
        cbstate = learner.cbstate
        if "metrics_epoch" not in cbstate or "history" not in cbstate:
            raise RuntimeError(
                "EarlyStopping judges the epoch values Metrics records, counted by the Recorder; add Metrics() and "
                "Recorder() (both default callbacks)"
            )
        return monitored_epoch_value(cbstate, phase, self.monitor, who="EarlyStopping", strict=required)

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = state["state"]

    def __repr__(self) -> str:
        extra = (
            "" if (self.monitor, self.mode) == ("Loss", "min") else f", monitor={self.monitor!r}, mode={self.mode!r}"
        )
        return f"EarlyStopping({self.criterion!r}{extra})"
