"""``cbstate`` as plain data: what a training state saves of the shared histories, and how it comes back.

Plain data is ``None``, bools, ints, floats, strings and tensors, in lists, tuples and dicts keyed by strings or
ints: what ``torch.load(weights_only=True)`` loads without running code. The histories are encoded as tagged
dicts (``{"__type__": "History", ...}``); a :class:`asyncloop.state.PhaseDict` keys its entries by phase *class
name*, looked up again among the :class:`asyncloop.Phase` subclasses defined when loading.

Pitfall: a custom phase must be defined (imported) before a state that mentions it is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._exceptions import CheckpointError
from .phases import Phase
from ._containers import History, PhaseDict, SeriesHistory
from ._snapshots import _clone_tree

_PLAIN = (type(None), bool, int, float, str, torch.Tensor)


def is_plain(value: Any) -> bool:
    """Whether ``value`` is plain data (see the module docstring), at any depth."""
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and is_plain(v) for k, v in value.items())
    return False


def _phase_name(phase: Phase) -> str:
    return type(phase).__qualname__


def _phase_classes(cls: type[Phase] = Phase) -> list[type[Phase]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_phase_classes(sub))
    return found


def _phase_from_name(name: str) -> Phase:
    """The phase whose class has this qualified name; the latest definition wins (a re-run notebook cell)."""
    matches = [c for c in _phase_classes() if c.__qualname__ == name]
    if not matches:
        raise CheckpointError(
            f"the checkpoint has state for the phase {name!r}, but no Phase subclass of that name is defined; "
            f"define (import) the custom phase before loading the checkpoint"
        )
    return matches[-1]()


_FACTORIES: dict[str, Callable[[], Any]] = {"History": History, "SeriesHistory": SeriesHistory}


class _Skip:
    def __repr__(self) -> str:
        return "<skip>"


#: What :func:`encode` returns for an entry that cannot be saved as plain data.
SKIP = _Skip()


def encode(value: Any, clone: bool) -> Any:
    """One ``cbstate`` entry as plain data, or :data:`SKIP` when it is neither plain nor a known history.

    With ``clone`` the tensors are copies, so the result stays valid while training goes on.
    """
    if isinstance(value, History):
        return {"__type__": "History", "epochs": value.epochs, "steps": value.steps, "steps_epoch": value.steps_epoch}
    if isinstance(value, SeriesHistory):
        series = value.state_dict()
        if not is_plain(series):
            return SKIP
        return {"__type__": "SeriesHistory", "series": _clone_tree(series) if clone else series}
    if isinstance(value, PhaseDict):
        factory = getattr(value.default_factory, "__name__", None)
        if factory not in _FACTORIES:
            return SKIP
        items = []
        for phase, entry in list(value.items()):
            encoded = encode(entry, clone)
            if encoded is SKIP or not isinstance(phase, Phase):
                return SKIP
            items.append((_phase_name(phase), encoded))
        return {"__type__": "PhaseDict", "factory": factory, "items": items}
    if is_plain(value):
        return _clone_tree(value) if clone else value
    return SKIP


def decode(value: Any) -> Any:
    """The ``cbstate`` entry :func:`encode` encoded; an unknown tag or phase raises :class:`CheckpointError`."""
    if isinstance(value, dict) and "__type__" in value:
        kind = value["__type__"]
        if kind == "History":
            return History(value["epochs"], value["steps"], value["steps_epoch"])
        if kind == "SeriesHistory":
            series = SeriesHistory()
            series.load_state_dict(value["series"])
            return series
        if kind == "PhaseDict":
            out = PhaseDict(_FACTORIES[value["factory"]])
            for name, entry in value["items"]:
                out[_phase_from_name(name)] = decode(entry)
            return out
        raise CheckpointError(f"unknown entry type {kind!r} in a checkpoint's cbstate")
    return value
