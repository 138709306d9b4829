"""Hyperparameters and schedules: what :class:`asyncloop.Scheduler` sets, and the shapes it sets them to.

A **hyperparameter** is a :class:`HyperParameter` subclass (used as the class itself, never instantiated): it
declares the learner state it writes (``state_access``) and how to set a value (``set``). :class:`LearningRate`
sets ``"lr"`` in every param group of the live optimizer; defining another one is a few lines::

    class WeightDecay(asyncloop.HyperParameter):
        param_group_key = "weight_decay"      # sets optimizer.param_groups[i]["weight_decay"]

    class Dropout(asyncloop.HyperParameter):
        state_access = {"model": asyncloop.Write()}

        @classmethod
        def set(cls, learner, value):
            for m in learner.model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = value

A **schedule** is any callable ``t -> value`` with ``t = 1, 2, ...`` counting training steps across epochs. The
shapes below are small immutable callables (they compare equal and print their parameters); compose them with
:class:`sequence` and :class:`per_epoch`::

    warmup_then_cosine = sequence((linear(0.0, 1e-3, 100), 100), (cosine(1e-3, 1e-5, 900), 900))

FluxTraining's docs (ParameterSchedulers.jl) also use cosine annealing with warm restarts
(:class:`cosine_restarts`), step decay at a list of milestones (:class:`multistep`) and sine or triangular
cycles (:class:`sine`, :class:`triangular`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ._access import Permission, Read, Write

__all__ = [
    "HyperParameter",
    "LearningRate",
    "WeightDecay",
    "Momentum",
    "set_hyperparameter",
    "merge_access",
    "one_cycle",
    "constant",
    "linear",
    "cosine",
    "step_decay",
    "multistep",
    "cosine_restarts",
    "sine",
    "triangular",
    "exponential",
    "polynomial",
    "sequence",
    "per_epoch",
]


class HyperParameter:
    """Base class of schedulable hyperparameters; subclasses are used as classes (``LearningRate``), not instances.

    Override ``state_access`` and the classmethod :meth:`set`, or just set ``param_group_key`` to set that key in
    every param group of ``learner.optimizer`` (then ``state_access`` is ``{"optimizer": Write()}``). ``name``
    (default: the class name) is the key under which :class:`asyncloop.Scheduler` records values in
    ``cbstate.hyperparams``.

    Example::

        class Dampening(HyperParameter):
            param_group_key = "dampening"

        Scheduler({LearningRate: one_cycle(1000, 0.1), Dampening: constant(0.1)})
    """

    state_access: ClassVar[Mapping[str, Any]] = {}
    param_group_key: ClassVar[str | None] = None
    name: ClassVar[str] = "HyperParameter"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in vars(cls):
            cls.name = cls.__name__
        if cls.param_group_key is not None and "state_access" not in vars(cls):
            cls.state_access = {"optimizer": Write()}

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{cls.__name__} is used as a class: Scheduler({{{cls.__name__}: schedule}}), not {cls.__name__}()"
        )

    @classmethod
    def set(cls, learner: Any, value: Any) -> None:
        """Set the hyperparameter to ``value`` on ``learner`` (a protected view holding ``state_access``)."""
        key = cls.param_group_key
        if key is None:
            raise NotImplementedError(
                f"{cls.__name__} must define param_group_key or a classmethod set(cls, learner, value)"
            )
        for group in learner.optimizer.param_groups:
            _set_group(group, key, value)


def _set_group(group: dict[str, Any], key: str, value: Any) -> None:
    current = group.get(key)
    if isinstance(current, torch.Tensor):
        current.fill_(value)  # tensor hyperparameters (capturable/fused optimizers) stay tensors
    else:
        group[key] = value


class LearningRate(HyperParameter):
    """The learning rate: ``param_groups[i]["lr"]`` of the live optimizer, in every group."""

    param_group_key = "lr"


class WeightDecay(HyperParameter):
    """Weight decay: ``param_groups[i]["weight_decay"]`` in every group."""

    param_group_key = "weight_decay"


class Momentum(HyperParameter):
    """Momentum: ``"momentum"`` (SGD, RMSprop) or the first of ``"betas"`` (Adam family), in every group."""

    state_access = {"optimizer": Write()}

    @classmethod
    def set(cls, learner: Any, value: Any) -> None:
        for group in learner.optimizer.param_groups:
            if "betas" in group:
                group["betas"] = (value, *tuple(group["betas"])[1:])
            elif "momentum" in group:
                _set_group(group, "momentum", value)
            else:
                raise KeyError("the optimizer's param groups have no 'momentum' or 'betas' to set Momentum on")


def _check_hyperparameter(h: Any) -> type[HyperParameter]:
    if isinstance(h, type) and issubclass(h, HyperParameter) and h is not HyperParameter:
        return h
    raise TypeError(f"expected a HyperParameter subclass such as LearningRate, got {h!r}")


def set_hyperparameter(learner: Any, hyperparameter: type[HyperParameter], value: Any) -> None:
    """Set ``hyperparameter`` to ``value`` now, e.g. ``set_hyperparameter(learner, LearningRate, 0.01)``.

    :class:`LearningRate` sets every param group of the live ``learner.optimizer``; the optimizer's state (Adam
    moments, momentum buffers) is kept.

    Example::

        set_hyperparameter(learner, LearningRate, 1e-4)   # e.g. before fine-tuning
        trio.run(fit, learner, 2)
    """
    _check_hyperparameter(hyperparameter).set(learner, value)


def merge_access(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Merge two ``state_access`` trees deeply: the union of their paths, ``Write()`` winning over ``Read()``.

    A ``Read()`` leaf over a subtree that contains writes becomes ``Write()`` (the only tree that grants both).
    """
    out: dict[str, Any] = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
            continue
        mine = out[key]
        if isinstance(mine, Mapping) and isinstance(value, Mapping):
            out[key] = merge_access(mine, value)
        elif isinstance(mine, Permission) and isinstance(value, Permission):
            out[key] = Write() if Write() in (mine, value) else Read()
        else:
            leaf, tree = (mine, value) if isinstance(mine, Permission) else (value, mine)
            out[key] = Write() if leaf == Write() or _has_write(tree) else Read()
    return out


def _has_write(tree: Mapping[str, Any]) -> bool:
    return any(_has_write(v) if isinstance(v, Mapping) else v == Write() for v in tree.values())


# --------------------------------------------------------------------------------------------------------------
# Schedules: callables t -> value, t = 1, 2, ...
# --------------------------------------------------------------------------------------------------------------


def _check_steps(name: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    return n


@dataclass(frozen=True)
class constant:
    """``t -> value``."""

    value: float

    def __call__(self, t: int) -> float:
        return self.value


@dataclass(frozen=True)
class _Anneal:
    """A schedule from ``start`` to ``end`` over ``n_steps`` steps (an int >= 1), then ``end``."""

    start: float
    end: float
    n_steps: int

    def __post_init__(self) -> None:
        _check_steps("n_steps", self.n_steps)

    def _done(self, t: int) -> float:
        """How far ``t`` is through ``t = 1 .. n_steps + 1``: 0.0 at ``t = 1``, 1.0 from ``t = n_steps + 1`` on."""
        return min(max(t - 1, 0) / self.n_steps, 1.0)


@dataclass(frozen=True)
class linear(_Anneal):
    """From ``start`` at ``t = 1`` to ``end`` at ``t = n_steps`` in a straight line, then ``end``.

    With ``start=0`` this is a linear warm-up.
    """

    def __call__(self, t: int) -> float:
        if self.n_steps == 1 or t >= self.n_steps:
            return self.end
        frac = max(t - 1, 0) / (self.n_steps - 1)
        return self.start + (self.end - self.start) * frac


@dataclass(frozen=True)
class cosine(_Anneal):
    """Cosine annealing from ``start`` at ``t = 1`` to ``end`` at ``t = n_steps + 1``, then ``end``."""

    def __call__(self, t: int) -> float:
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * self._done(t))) / 2


@dataclass(frozen=True)
class step_decay:
    """``start * gamma ** ((t - 1) // step_size)``: multiply by ``gamma`` every ``step_size`` steps."""

    start: float
    gamma: float
    step_size: int

    def __post_init__(self) -> None:
        _check_steps("step_size", self.step_size)

    def __call__(self, t: int) -> float:
        return self.start * self.gamma ** (max(t - 1, 0) // self.step_size)


def _check_number(who: str, name: str, x: Any) -> None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{who}: {name} must be a finite number, got {x!r}")


@dataclass(frozen=True, init=False)
class multistep:
    """Step decay at a list of milestones: ``start * gamma ** k``, ``k`` the number of milestones ``m`` with
    ``t > m`` (so the value drops after ``m`` steps, as ``torch.optim.lr_scheduler.MultiStepLR``).

    ``milestones`` is a non-empty, strictly increasing sequence of ints >= 1; ``multistep(1.0, 0.1, [30, 80])``
    is ``1.0`` for steps 1..30, ``0.1`` for 31..80, ``0.01`` after.
    """

    start: float
    gamma: float
    milestones: tuple[int, ...]

    def __init__(self, start: float, gamma: float, milestones: Any) -> None:
        _check_number("multistep", "start", start)
        _check_number("multistep", "gamma", gamma)
        try:
            ms = tuple(milestones)
        except TypeError:
            raise TypeError(f"multistep: milestones must be a list of step counts such as [30, 80], got {milestones!r}")
        if not ms:
            raise ValueError("multistep: milestones must not be empty, e.g. [30, 80]")
        for m in ms:
            _check_steps("multistep: each milestone", m)
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise ValueError(f"multistep: milestones must be strictly increasing, got {list(ms)!r}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "milestones", ms)

    def __call__(self, t: int) -> float:
        return self.start * self.gamma ** sum(1 for m in self.milestones if t > m)


@dataclass(frozen=True)
class cosine_restarts:
    """Cosine annealing with warm restarts (SGDR; ParameterSchedulers' ``CosAnneal(restart=true)``).

    Each cycle anneals from ``start`` at its first step towards ``end`` and restarts at ``start``: the first cycle
    has ``period`` steps, each next one ``mult`` times as many (an int >= 1, as PyTorch's
    ``CosineAnnealingWarmRestarts(T_0=period, T_mult=mult)``). Within a cycle of ``n`` steps, step ``i = 0 ..
    n - 1`` is ``end + (start - end) * (1 + cos(pi * i / n)) / 2``.
    """

    start: float
    end: float
    period: int
    mult: int = 1

    def __post_init__(self) -> None:
        _check_number("cosine_restarts", "start", self.start)
        _check_number("cosine_restarts", "end", self.end)
        _check_steps("cosine_restarts: period", self.period)
        _check_steps("cosine_restarts: mult", self.mult)

    def __call__(self, t: int) -> float:
        i, n = max(t - 1, 0), self.period
        while i >= n:
            i -= n
            n *= self.mult
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * i / n)) / 2


@dataclass(frozen=True)
class _Cycle:
    low: float
    high: float
    period: int
    decay: float = 1.0

    def __post_init__(self) -> None:
        who = type(self).__name__
        _check_number(who, "low", self.low)
        _check_number(who, "high", self.high)
        _check_steps(f"{who}: period", self.period)
        _check_number(who, "decay", self.decay)
        if self.decay <= 0:
            raise ValueError(f"{who}: decay must be > 0 (1.0 keeps the amplitude), got {self.decay!r}")

    def _wave(self, frac: float) -> float:
        raise NotImplementedError

    def __call__(self, t: int) -> float:
        cycle, i = divmod(max(t - 1, 0), self.period)
        amplitude = (self.high - self.low) * self.decay**cycle
        return self.low + amplitude * self._wave(i / self.period)


@dataclass(frozen=True)
class sine(_Cycle):
    """Sine cycles between ``low`` and ``high`` (ParameterSchedulers' ``Sin``): ``low`` at ``t = 1``, ``high``
    half a ``period`` later, ``low`` again at ``t = period + 1``: ``low + (high - low) * |sin(pi * (t - 1) /
    period)|``. ``decay`` multiplies the amplitude every cycle (``0.5`` is ``SinDecay2``)."""

    def _wave(self, frac: float) -> float:
        return abs(math.sin(math.pi * frac))


@dataclass(frozen=True)
class triangular(_Cycle):
    """Triangular cycles (cyclical learning rates; ParameterSchedulers' ``Triangle``): a straight line from
    ``low`` at ``t = 1`` up to ``high`` half a ``period`` later and back to ``low`` at ``t = period + 1``.
    ``decay`` multiplies the amplitude every cycle (``0.5`` is CLR's ``triangular2``)."""

    def _wave(self, frac: float) -> float:
        return 1 - abs(2 * frac - 1)


@dataclass(frozen=True)
class exponential:
    """``start * gamma ** (t - 1)``."""

    start: float
    gamma: float

    def __call__(self, t: int) -> float:
        return self.start * self.gamma ** max(t - 1, 0)


@dataclass(frozen=True)
class polynomial(_Anneal):
    """``(start - end) * (1 - (t - 1) / n_steps) ** power + end`` up to ``t = n_steps + 1``, then ``end``.

    ``polynomial(1e-4, 0.0, 10)`` is ParameterSchedulers' ``Poly(λ=1e-4, p=1, max_iter=10)``.
    """

    power: float = 1.0

    def __call__(self, t: int) -> float:
        return (self.start - self.end) * (1 - self._done(t)) ** self.power + self.end


@dataclass(frozen=True, init=False)
class sequence:
    """Run schedules one after another: ``sequence((s1, n1), (s2, n2), ...)``.

    Each schedule gets its own ``t = 1, 2, ...``; the last one continues past its count.
    """

    parts: tuple[tuple[Callable[[int], Any], int], ...]

    def __init__(self, *parts: tuple[Callable[[int], Any], int]) -> None:
        if not parts:
            raise ValueError("sequence needs at least one (schedule, n_steps) pair")
        for i, part in enumerate(parts):
            if not (isinstance(part, tuple) and len(part) == 2 and callable(part[0])):
                raise TypeError(f"sequence part {i} must be a (schedule, n_steps) pair, got {part!r}")
            _check_steps(f"sequence part {i}'s n_steps", part[1])
        object.__setattr__(self, "parts", tuple(parts))

    def __call__(self, t: int) -> Any:
        for schedule, n in self.parts[:-1]:
            if t <= n:
                return schedule(t)
            t -= n
        return self.parts[-1][0](t)


@dataclass(frozen=True)
class per_epoch:
    """Hold ``schedule`` constant within an epoch: ``t -> schedule(ceil(t / steps_per_epoch))``.

    ParameterSchedulers' ``Interpolator(schedule, steps_per_epoch)``: ``schedule`` counts epochs ``1, 2, ...``.
    """

    schedule: Callable[[int], Any]
    steps_per_epoch: int

    def __post_init__(self) -> None:
        _check_steps("steps_per_epoch", self.steps_per_epoch)

    def __call__(self, t: int) -> Any:
        return self.schedule(math.ceil(t / self.steps_per_epoch))


@dataclass(frozen=True)
class _OneCycle:
    n_steps: int
    max_val: float
    start_val: float
    end_val: float
    pct_start: float

    def __call__(self, t: int) -> float:
        warmup = math.ceil(self.n_steps * self.pct_start)
        warmdown = self.n_steps - warmup
        if t <= warmup:
            return (self.max_val - self.start_val) * abs(math.sin(math.pi * (t - 1) / (2 * warmup))) + self.start_val
        t -= warmup
        return (self.max_val - self.end_val) * abs(
            math.sin(math.pi * (t + warmdown - 1) / (2 * warmdown))
        ) + self.end_val

    def __repr__(self) -> str:
        return (
            f"one_cycle({self.n_steps}, {self.max_val!r}, {self.start_val!r}, {self.end_val!r}, "
            f"pct_start={self.pct_start!r})"
        )


def one_cycle(
    n_steps: int,
    max_val: float,
    start_val: float | None = None,
    end_val: float | None = None,
    *,
    pct_start: float = 0.25,
    div: float = 25.0,
    div_final: float = 1e5,
) -> Callable[[int], float]:
    """A one-cycle schedule over ``n_steps`` steps: ``start_val`` up to ``max_val``, then down to ``end_val``.

    FluxTraining's ``onecycle``, same formula: the first ``ceil(n_steps * pct_start)`` steps rise along a sine
    quarter-wave from ``start_val`` (default ``max_val / div``) to ``max_val``; the rest fall along a sine to
    ``end_val`` (default ``max_val / div_final``). Pitfall: past ``n_steps`` the sine keeps oscillating, so size
    ``n_steps`` to the whole fit, e.g. ``one_cycle(n_epochs * len(train_batches), 0.01)``.

    Example::

        schedule = one_cycle(10 * len(train_batches), 0.01)
        learner = Learner(model, loss_fn, data=data, callbacks=[Scheduler({LearningRate: schedule})])
        trio.run(fit, learner, 10)
    """
    _check_steps("n_steps", n_steps)
    if not 0 < pct_start < 1:
        raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
    if math.ceil(n_steps * pct_start) >= n_steps:
        raise ValueError(
            f"one_cycle needs at least one decay step: n_steps={n_steps} is too small for pct_start={pct_start}"
        )
    start = max_val / div if start_val is None else start_val
    end = max_val / div_final if end_val is None else end_val
    return _OneCycle(n_steps, max_val, start, end, pct_start)
