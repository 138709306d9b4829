"""The containers of learner state (private): what ``learner.step`` and ``learner.cbstate`` hold.

* :class:`PropDict` -- a dict with attribute access (``learner.step.loss``); ``learner.step`` and
  ``learner.cbstate`` are PropDicts.
* :class:`History` -- completed epochs/steps per phase, kept by :class:`asyncloop.Recorder`.
* :class:`PhaseDict` -- a ``defaultdict`` keyed by phase (``cbstate.history[TrainingPhase()]``).
* :class:`SeriesHistory` -- named series of ``(index, value)`` pairs (metrics, hyperparameters, traces).
* :class:`Gradients` -- ``learner.step.grads``, a lazy mapping over the model's parameters.

Containers whose copy needs nothing but their own fields carry a ``__snapshot__`` method (the hook
:func:`asyncloop.state.snapshot` calls); the snapshot of PropDict and PhaseDict, which copies their values
recursively, is :func:`asyncloop.state.snapshot`'s own rule. This module imports nothing else of asyncloop.
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch


class PropDict(dict):
    """A ``dict`` whose keys can also be read and written as attributes: ``d.loss is d["loss"]``.

    A missing key raises ``AttributeError`` on attribute access (so ``hasattr`` works) and ``KeyError`` on
    item access.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"PropDict has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(f"PropDict has no key {name!r}") from None

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *(k for k in self if isinstance(k, str))]

    def __repr__(self) -> str:
        return f"PropDict({dict.__repr__(self)})"


@dataclass
class History:
    """Completed units of one phase: ``epochs``, ``steps`` (over all epochs) and ``steps_epoch`` (this epoch)."""

    epochs: int = 0
    steps: int = 0
    steps_epoch: int = 0

    def __snapshot__(self) -> History:
        return History(self.epochs, self.steps, self.steps_epoch)


class PhaseDict(defaultdict):
    """A ``defaultdict`` keyed by phase, e.g. ``cbstate.history[TrainingPhase()]``; missing phases are created."""

    def __repr__(self) -> str:
        return f"PhaseDict({dict(self)!r})"


def _as_python(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


#: Column storage: an index column is a :class:`_Run` while the indices are consecutive ints (no memory per
#: entry: steps and epochs count up by one), then an ``array("q")`` while every index is an int; a value column
#: an ``array("d")`` while every value is a float (8 bytes per entry, where a list holds a pointer and a boxed
#: number: ~70 bytes per step of a per-step metric); a push of anything else turns that column into a list.
_INDEX, _VALUE = "q", "d"


class _Run:
    """An index column ``start, start + 1, ...``: what a per-step or per-epoch series holds, in two ints."""

    __slots__ = ("start", "n")

    def __init__(self, start: int, n: int = 0) -> None:
        self.start, self.n = start, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return list(range(self.start, self.start + self.n)[i])
        return range(self.start, self.start + self.n)[i]

    def append(self, index: int) -> None:  # only ever called with the next index (see SeriesHistory.push)
        self.n += 1

    def tolist(self) -> list[int]:
        return list(range(self.start, self.start + self.n))


def _column(items: Any, code: str, runs: bool = True) -> Any:
    """``items`` as the compact column of type ``code`` when every item fits it exactly (consecutive indices as
    a :class:`_Run` unless ``runs`` is false), else as a list."""
    items = list(items)
    kind = int if code == _INDEX else float
    if all(item.__class__ is kind for item in items):
        if runs and code == _INDEX and items and items == list(range(items[0], items[0] + len(items))):
            return _Run(items[0], len(items))
        try:
            return array(code, items)
        except OverflowError:  # an int beyond 64 bits
            pass
    return items


class SeriesHistory:
    """Named series of ``(index, value)`` pairs, appended in order (FluxTraining's ``MVHistory``).

    Values may be pushed as one-element tensors so that no host sync happens while training; they are
    converted to Python numbers when read with :meth:`last` or :meth:`values`. Storage is compact while the
    indices are consecutive ints (no memory per entry; any ints: 8 bytes) and the values floats (8 bytes): a
    per-step loss over 100k steps holds ~0.8 MB, not ~8 MB.
    """

    __slots__ = ("_series", "_len", "_frozen")

    def __init__(self) -> None:
        self._series: dict[str, tuple[Any, Any]] = {}
        self._len: dict[str, int] = {}
        self._frozen = False

    def push(self, name: str, index: int, value: Any) -> None:
        """Append ``value`` at ``index`` to the series ``name``."""
        if self._frozen:
            raise TypeError("this SeriesHistory is a read-only snapshot; it cannot be pushed to")
        series = self._series.get(name)
        if series is None:
            first = _Run(index) if index.__class__ is int else []
            series = self._series[name] = (first, array(_VALUE))
        indices, values = series
        if (  # the hot path (a per-step metric): the next index of a run and a float, no Python-level call
            indices.__class__ is _Run
            and index.__class__ is int
            and index == indices.start + indices.n
            and values.__class__ is array
            and value.__class__ is float
        ):
            values.append(value)
            indices.n += 1
            self._len[name] = indices.n
            return
        if indices.__class__ is _Run:
            if index.__class__ is not int or index != indices.start + indices.n:
                indices, values = series = self._widen(name, index, value, run=True)
        elif indices.__class__ is array and index.__class__ is not int:
            indices, values = series = self._widen(name, index, value)
        if values.__class__ is array and value.__class__ is not float:
            indices, values = series = self._widen(name, index, value)
        try:
            indices.append(index)
        except OverflowError:
            indices, values = series = self._widen(name, index, 0.0, indices=True)
            indices.append(index)
        values.append(value)
        self._len[name] = len(indices)

    def _widen(self, name: str, index: Any, value: Any, indices: bool = False, run: bool = False) -> tuple[Any, Any]:
        """Turn the column of ``name`` that cannot hold ``index`` / ``value`` into a wider one: a run of
        consecutive indices into an array (or a list), an array into a list (copy-on-write: snapshots keep the
        columns they saw)."""
        old_indices, old_values = self._series[name]
        if run:
            old_indices = _column(old_indices.tolist(), _INDEX, runs=False) if index.__class__ is int \
                else old_indices.tolist()
        elif indices or (old_indices.__class__ is array and index.__class__ is not int):
            old_indices = list(old_indices)
        if old_values.__class__ is array and value.__class__ is not float:
            old_values = list(old_values)
        series = (old_indices, old_values)
        self._series = {**self._series, name: series}
        return series

    def replace_last(self, name: str, index: int, value: Any) -> None:
        """Replace the last ``(index, value)`` of ``name`` (copy-on-write: earlier snapshots keep the old pair)."""
        if self._frozen:
            raise TypeError("this SeriesHistory is a read-only snapshot; it cannot be changed")
        indices, values, n = self._get(name)
        pair = (_column([*indices[: n - 1], index], _INDEX), _column([*values[: n - 1], value], _VALUE))
        self._series = {**self._series, name: pair}

    def _get(self, name: str) -> tuple[Any, Any, int]:
        try:
            n = self._len[name]
        except KeyError:
            known = ", ".join(repr(k) for k in self._len) or "none"
            raise KeyError(f"no series named {name!r} (known: {known})") from None
        indices, values = self._series[name]
        return indices, values, n

    def last(self, name: str) -> tuple[int, Any]:
        """The last ``(index, value)`` pushed to ``name``; ``KeyError`` if there is none."""
        indices, values, n = self._get(name)
        if values.__class__ is not array:
            values[n - 1] = _as_python(values[n - 1])
        return indices[n - 1], values[n - 1]

    def values(self, name: str) -> list[Any]:
        """All values of ``name``, in push order."""
        _, values, n = self._get(name)
        if values.__class__ is array:
            return values[:n].tolist()
        for i in range(n):
            values[i] = _as_python(values[i])
        return values[:n]

    def indices(self, name: str) -> list[int]:
        """All indices of ``name``, in push order."""
        indices, _, n = self._get(name)
        return indices[:n].tolist() if indices.__class__ is array else indices[:n]  # a list or a _Run: a list

    def keys(self) -> list[str]:
        """The series names, in the order they were first pushed."""
        return list(self._len)

    def __contains__(self, name: object) -> bool:
        return name in self._len

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._len))

    def __len__(self) -> int:
        return len(self._len)

    def __repr__(self) -> str:
        return f"SeriesHistory({', '.join(f'{k}: {n}' for k, n in self._len.items())})"

    def __snapshot__(self) -> SeriesHistory:
        """A read-only view of the series as they are now; later pushes stay invisible to it (O(keys))."""
        view = SeriesHistory.__new__(SeriesHistory)
        view._series = self._series
        view._len = dict(self._len)
        view._frozen = True
        return view

    def state_dict(self) -> dict[str, Any]:
        """A plain, serialisable copy of all series."""
        return {name: (self.indices(name), self.values(name)) for name in self._len}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace all series with ``state`` (as returned by :meth:`state_dict`)."""
        self._series = {name: (_column(idx, _INDEX), _column(vals, _VALUE)) for name, (idx, vals) in state.items()}
        self._len = {name: len(idx) for name, (idx, _) in self._series.items()}


class Gradients(Mapping):
    """``learner.step.grads``: parameter name -> gradient, read lazily from the model's parameters.

    Creating it costs nothing per step; a snapshot (for detached callbacks) materialises a dict of the current
    gradient tensors. Parameters without a gradient are absent.
    """

    __slots__ = ("_params", "_index")

    def __init__(
        self, params: tuple[tuple[str, torch.nn.Parameter], ...], index: Mapping[str, torch.nn.Parameter] | None = None
    ) -> None:
        self._params = params
        self._index = dict(params) if index is None else index

    def __getitem__(self, name: str) -> torch.Tensor:
        grad = self._index[name].grad
        if grad is None:
            raise KeyError(name)
        return grad

    def __iter__(self) -> Iterator[str]:
        return (name for name, p in self._params if p.grad is not None)

    def __len__(self) -> int:
        return sum(1 for _, p in self._params if p.grad is not None)

    def items(self) -> Any:
        return [(name, p.grad) for name, p in self._params if p.grad is not None]

    def values(self) -> Any:
        return [p.grad for _, p in self._params if p.grad is not None]

    def __repr__(self) -> str:
        return f"Gradients({', '.join(self)})"

    def __snapshot__(self) -> dict[str, torch.Tensor]:
        # cloned: gradients change in place (accumulation, clipping, unscaling) before the actor reads them
        return {name: p.grad.detach().clone() for name, p in self._params if p.grad is not None}
