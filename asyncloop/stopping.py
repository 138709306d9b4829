"""Early-stopping criteria: the port of EarlyStopping.jl that :class:`asyncloop.EarlyStopping` consumes.

A criterion is an immutable value; its *state* lives outside it and is threaded through pure functions, exactly as
in EarlyStopping.jl::

    state = criterion.update(loss, state)            # an out-of-sample (validation) value; state=None initialises
    state = criterion.update_training(loss, state)   # a training value (most criteria ignore it)
    criterion.done(state)                            # time to stop?
    criterion.message(state)                         # why

States are plain data (numbers, tuples, dicts, lists), so they can be saved in a checkpoint and loaded without
unpickling code. Criteria combine with ``|`` or ``+`` into a :class:`Disjunction` (stop when any one is done)::

    from asyncloop.stopping import InvalidValue, NumberSinceBest, TimeLimit

    criterion = NumberSinceBest(5) | InvalidValue() | TimeLimit(2.5)   # 2.5 hours

| criterion | stops when |
|---|---|
| :class:`Never` | never |
| :class:`InvalidValue` | any value (training or validation) was NaN, Inf or -Inf |
| :class:`TimeLimit` | more than ``t`` elapsed since the first update (a number is hours) |
| :class:`NumberLimit` | ``n`` validation updates happened |
| :class:`NumberSinceBest` | ``n`` validation updates since the best (lowest) value |
| :class:`Threshold` | the value dropped below ``value`` |
| :class:`GL` | the generalisation loss ``100 * (loss / abs(min_loss) - 1)`` exceeds ``alpha`` |
| :class:`PQ` | ``GL / P`` exceeds ``alpha`` (``P``: training progress over the last ``k`` training values) |
| :class:`Patience` | ``n`` *consecutive increases* of the value |
| :class:`Warmup` | its inner criterion is done, ignoring the first ``n`` updates |
| :class:`Disjunction` | any of its criteria is done |

Every criterion treats lower values as better; :class:`asyncloop.EarlyStopping` negates ``mode="max"`` metrics
before it feeds them, so ``Threshold``, ``GL`` and ``PQ`` (which assume positive losses) are meant for ``"min"``.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from typing import Any

from ._exceptions import EarlyStopped

__all__ = [
    "StoppingCriterion",
    "Never",
    "InvalidValue",
    "TimeLimit",
    "NumberLimit",
    "NumberSinceBest",
    "Threshold",
    "GL",
    "PQ",
    "Patience",
    "UP",
    "Warmup",
    "Disjunction",
    "EarlyStopped",
]


def _positive_int(name: str, value: Any, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: {name} must be an int > 0, got {value!r}")
    return value


def _positive(name: str, value: Any, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{owner}: {name} must be a number > 0, got {value!r}")
    return float(value)


class StoppingCriterion:
    """Base class of the criteria. The defaults ignore every value and never stop.

    Subclasses override :meth:`update` (validation values), :meth:`update_training` (training values),
    :meth:`done` and :meth:`message`; states must be plain data (see the module docstring).
    """

    __slots__ = ()

    def update(self, loss: float, state: Any = None) -> Any:
        """Fold an out-of-sample value into ``state`` (``None``: the first update) and return the new state."""
        return state

    def update_training(self, loss: float, state: Any = None) -> Any:
        """Fold a training value into ``state`` and return the new state."""
        return state

    def done(self, state: Any) -> bool:
        """Whether to stop now."""
        return False

    def message(self, state: Any) -> str:
        """Why the criterion stopped."""
        return f"Stop triggered by {self!r} stopping criterion."

    def __or__(self, other: StoppingCriterion) -> StoppingCriterion:
        return Disjunction(self, other)

    __add__ = __or__

    def _leaves(self) -> list[StoppingCriterion]:
        return [self]

    def __contains__(self, other: object) -> bool:
        """``a in b``: ``a`` is ``b`` or one of its disjuncts (``Never()`` is in everything), as EarlyStopping.jl."""
        return isinstance(other, Never) or other in self._leaves()


@dataclass(frozen=True, repr=False)
class Never(StoppingCriterion):
    """Never stop. ``Disjunction()`` is ``Never()``."""

    def __repr__(self) -> str:
        return "Never()"


@dataclass(frozen=True, repr=False)
class InvalidValue(StoppingCriterion):
    """Stop once any value, training or validation, is NaN, Inf or -Inf. State: a bool that latches."""

    def update(self, loss: float, state: Any = None) -> bool:
        return bool(state) or not math.isfinite(loss)

    update_training = update

    def done(self, state: Any) -> bool:
        return bool(state)

    def message(self, state: Any) -> str:
        return "Stopping early as `NaN`, `Inf` or `-Inf` encountered."

    def __repr__(self) -> str:
        return "InvalidValue()"


def _as_timedelta(t: Any) -> datetime.timedelta:
    if isinstance(t, datetime.timedelta):
        delta = t
    elif isinstance(t, (int, float)) and not isinstance(t, bool):
        delta = datetime.timedelta(milliseconds=round(3_600_000 * t))
    else:
        raise TypeError(f"TimeLimit: t must be a number of hours or a datetime.timedelta, got {t!r}")
    if delta <= datetime.timedelta(0):
        raise ValueError(f"TimeLimit: t must be positive, got {t!r}")
    return delta


@dataclass(frozen=True, init=False, repr=False)
class TimeLimit(StoppingCriterion):
    """Stop once more than ``t`` elapsed since the first update (training or validation).

    ``t`` is a ``datetime.timedelta`` or a number of **hours** (rounded to milliseconds), as EarlyStopping.jl;
    default 30 minutes. State: the wall-clock time (``time.time()``) of the first update, so the limit counts the
    time since the first fit even across a resume.
    """

    t: datetime.timedelta

    def __init__(self, t: Any = datetime.timedelta(minutes=30)) -> None:
        object.__setattr__(self, "t", _as_timedelta(t))

    def update(self, loss: float, state: Any = None) -> float:
        return time.time() if state is None else state

    update_training = update

    def done(self, state: Any) -> bool:
        return state is not None and time.time() - state > self.t.total_seconds()

    def __repr__(self) -> str:
        return f"TimeLimit({self.t.total_seconds() / 3600!r})"


@dataclass(frozen=True, repr=False)
class NumberLimit(StoppingCriterion):
    """Stop after ``n`` validation updates (training updates do not count). State: the count."""

    n: int = 100

    def __post_init__(self) -> None:
        _positive_int("n", self.n, "NumberLimit")

    def update(self, loss: float, state: Any = None) -> int:
        return 1 if state is None else state + 1

    def done(self, state: Any) -> bool:
        return state is not None and state >= self.n

    def __repr__(self) -> str:
        return f"NumberLimit({self.n})"


@dataclass(frozen=True, repr=False)
class _CountToN(StoppingCriterion):
    """A criterion whose state is ``(reference value, count)`` and that stops when the count reaches ``n``.

    ``n`` must be an int > 0; errors and the repr name the public class (``_label``), e.g. ``Patience(5)``.
    """

    n: int
    _label = "?"

    def __post_init__(self) -> None:
        _positive_int("n", self.n, self._label)

    def done(self, state: Any) -> bool:
        return state is not None and state[1] == self.n

    def __repr__(self) -> str:
        return f"{self._label}({self.n})"


@dataclass(frozen=True, repr=False)
class NumberSinceBest(_CountToN):
    """Stop when the last ``n`` validation values brought no new best (lowest) value.

    State: ``(best, number_since_best)``. A value equal to the best is not an improvement. This is "no improvement
    for ``n`` epochs", what ``EarlyStopping(n)`` means.
    """

    n: int = 6
    _label = "NumberSinceBest"

    def update(self, loss: float, state: Any = None) -> tuple[float, int]:
        if state is None:
            return (loss, 0)
        best, count = state
        return (loss, 0) if loss < best else (best, count + 1)


@dataclass(frozen=True, repr=False)
class Threshold(StoppingCriterion):
    """Stop as soon as a validation value drops below ``value``. State: the last value."""

    value: float = 0.0

    def update(self, loss: float, state: Any = None) -> float:
        return loss

    def done(self, state: Any) -> bool:
        return state is not None and state < self.value

    def __repr__(self) -> str:
        return f"Threshold({self.value!r})"


def _generalization_loss(loss: float, min_loss: float) -> float:
    if min_loss == 0:
        return math.inf if loss > 0 else (0.0 if loss == 0 else -math.inf)
    return 100 * (loss / abs(min_loss) - 1)


@dataclass(frozen=True, repr=False)
class GL(StoppingCriterion):
    """Stop when the generalisation loss ``100 * (loss / abs(min_loss) - 1)`` exceeds ``alpha`` (Prechelt's GL).

    State: ``(loss, min_loss)`` of the validation values. Assumes positive losses.
    """

    alpha: float = 2.0

    def __post_init__(self) -> None:
        _positive("alpha", self.alpha, "GL")

    def update(self, loss: float, state: Any = None) -> tuple[float, float]:
        return (loss, loss) if state is None else (loss, min(loss, state[1]))

    def done(self, state: Any) -> bool:
        return state is not None and _generalization_loss(state[0], state[1]) > self.alpha

    def __repr__(self) -> str:
        return f"GL({self.alpha!r})"


@dataclass(frozen=True, repr=False)
class PQ(StoppingCriterion):
    """Prechelt's progress-modified generalisation loss: stop when ``GL / P > alpha`` or ``P <= tol``.

    ``P = 1000 * (mean(tl) / min(tl) - 1)`` over the last ``k`` training values ``tl`` (most recent first);
    ``GL`` as :class:`GL`. Only checked right after a validation value that follows a training value, once ``k``
    training values were seen. ``k`` is an int >= 2 or ``math.inf``. State: a dict with ``training_losses``,
    ``waiting`` (a training value came after the last validation value), ``loss`` and ``min_loss``.
    """

    alpha: float = 0.75
    k: int | float = 5
    tol: float = 2.220446049250313e-16

    def __post_init__(self) -> None:
        _positive("alpha", self.alpha, "PQ")
        k = self.k
        if isinstance(k, bool) or not (isinstance(k, int) or k == math.inf) or k < 2:
            raise ValueError(f"PQ: k must be an int >= 2 or math.inf, got {k!r}")
        _positive("tol", self.tol, "PQ")

    def update_training(self, loss: float, state: Any = None) -> dict[str, Any]:
        if state is None:
            return {"training_losses": [loss], "waiting": True, "loss": None, "min_loss": None}
        kept = state["training_losses"] if len(state["training_losses"]) < self.k else state["training_losses"][:-1]
        return {**state, "training_losses": [loss, *kept], "waiting": True}

    def update(self, loss: float, state: Any = None) -> dict[str, Any]:
        if state is None:
            return {"training_losses": [], "waiting": False, "loss": loss, "min_loss": loss}
        min_loss = loss if state["min_loss"] is None else min(loss, state["min_loss"])
        return {**state, "waiting": False, "loss": loss, "min_loss": min_loss}

    def done(self, state: Any) -> bool:
        if state is None or state["loss"] is None or state["waiting"]:
            return False
        losses = state["training_losses"]
        if len(losses) < self.k:
            return False
        progress = 1000 * (sum(losses) / len(losses) / min(losses) - 1)
        if not progress > self.tol:
            return True
        return _generalization_loss(state["loss"], state["min_loss"]) / progress > self.alpha

    def __repr__(self) -> str:
        return f"PQ({self.alpha!r}, {self.k!r}, {self.tol!r})"


@dataclass(frozen=True, repr=False)
class Patience(_CountToN):
    """Stop after ``n`` *consecutive increases* of the validation value (Prechelt's UP); a non-increase resets.

    State: ``(loss, n_increases)``. Not "no improvement for ``n`` epochs": that is :class:`NumberSinceBest`.
    """

    n: int = 5
    _label = "Patience"

    def update(self, loss: float, state: Any = None) -> tuple[float, int]:
        if state is None:
            return (loss, 0)
        return (loss, state[1] + 1 if loss > state[0] else 0)


#: Prechelt's name for :class:`Patience`.
UP = Patience


@dataclass(frozen=True, repr=False)
class Warmup(StoppingCriterion):
    """Ignore the first ``n`` updates (training and validation both count), then apply ``criterion``.

    State: ``(count, inner_state)``; update ``n + 1`` starts the inner criterion afresh.
    """

    criterion: StoppingCriterion = InvalidValue()
    n: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.criterion, StoppingCriterion):
            raise TypeError(f"Warmup wraps a stopping criterion, got {self.criterion!r}")
        _positive_int("n", self.n, "Warmup")

    def _step(self, training: bool, loss: float, state: Any) -> tuple[int, Any]:
        fn = self.criterion.update_training if training else self.criterion.update
        if state is None:
            return (1, fn(loss, None))
        count, inner = state
        count += 1
        if count <= self.n:
            return (count, inner)
        return (count, fn(loss, None if count == self.n + 1 else inner))

    def update(self, loss: float, state: Any = None) -> tuple[int, Any]:
        return self._step(False, loss, state)

    def update_training(self, loss: float, state: Any = None) -> tuple[int, Any]:
        return self._step(True, loss, state)

    def done(self, state: Any) -> bool:
        return state is not None and state[0] > self.n and self.criterion.done(state[1])

    def message(self, state: Any) -> str:
        return self.criterion.message(state[1])

    def __repr__(self) -> str:
        return f"Warmup({self.criterion!r}, {self.n})"


class Disjunction(StoppingCriterion):
    """Stop when any of ``criteria`` is done; the message joins the messages of those that are.

    ``Disjunction()`` is :class:`Never`, ``Disjunction(c)`` is ``c``, and ``a | b`` (or ``a + b``) is
    ``Disjunction(a, b)``. A criterion already contained is not added twice. State: ``{"a": ..., "b": ...}``.
    """

    __slots__ = ("a", "b")
    a: StoppingCriterion
    b: StoppingCriterion

    def __new__(cls, *criteria: StoppingCriterion) -> Any:  # type: ignore[misc]
        for c in criteria:
            if not isinstance(c, StoppingCriterion):
                raise TypeError(f"Disjunction combines stopping criteria such as Patience(3), got {c!r}")
        if not criteria:
            return Never()
        combined = criteria[0]
        for c in criteria[1:]:
            if combined in c:
                combined = c
            elif c in combined:
                continue
            else:
                pair = object.__new__(cls)
                object.__setattr__(pair, "a", combined)
                object.__setattr__(pair, "b", c)
                combined = pair
        return combined

    def __init__(self, *criteria: StoppingCriterion) -> None:
        pass

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Disjunction is immutable")

    def _leaves(self) -> list[StoppingCriterion]:
        return [*self.a._leaves(), *self.b._leaves()]

    def __contains__(self, other: object) -> bool:
        return isinstance(other, Never) or (other in self._leaves() if not isinstance(other, Disjunction) else False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Disjunction) and (self.a, self.b) == (other.a, other.b)

    def __hash__(self) -> int:
        return hash((Disjunction, self.a, self.b))

    def update(self, loss: float, state: Any = None) -> dict[str, Any]:
        state = state or {"a": None, "b": None}
        return {"a": self.a.update(loss, state["a"]), "b": self.b.update(loss, state["b"])}

    def update_training(self, loss: float, state: Any = None) -> dict[str, Any]:
        state = state or {"a": None, "b": None}
        return {"a": self.a.update_training(loss, state["a"]), "b": self.b.update_training(loss, state["b"])}

    def done(self, state: Any) -> bool:
        return state is not None and (self.a.done(state["a"]) or self.b.done(state["b"]))

    def message(self, state: Any) -> str:
        parts = [c.message(state[k]) for k, c in (("a", self.a), ("b", self.b)) if c.done(state[k])]
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"Disjunction({', '.join(map(repr, self._leaves()))})"
