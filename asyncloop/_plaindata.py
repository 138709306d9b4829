"""``cbstate`` as plain data: what a training state saves of the shared histories, and how it comes back.

Plain data is ``None``, bools, ints, floats, strings and tensors, in lists, tuples and dicts keyed by strings or
ints: what ``torch.load(weights_only=True)`` loads without running code. The histories are encoded as tagged
dicts (``{"__type__": "History", ...}``); a :class:`asyncloop.state.PhaseDict` keys its entries by phase *class
name*, looked up again among the :class:`asyncloop.Phase` subclasses defined when loading.

:func:`decode` checks what it decodes: a file that loads with ``weights_only=True`` can still hold anything, so
a malformed entry is a :class:`CheckpointError` naming the file and the entry, never a bare ``KeyError``.

Pitfall: a custom phase must be defined (imported) before a state that mentions it is loaded.
"""

from __future__ import annotations

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


def _phase_from_name(name: str, where: str) -> Phase:
    """The phase whose class has this qualified name; the latest definition wins (a re-run notebook cell)."""
    matches = [c for c in _phase_classes() if c.__qualname__ == name]
    if not matches:
        raise CheckpointError(
            f"cannot load {where}: it has state for the phase {name!r}, but no Phase subclass of that name is "
            f"defined; define (import) the custom phase before loading the checkpoint"
        )
    return matches[-1]()


_FACTORIES: dict[str, type] = {"History": History, "SeriesHistory": SeriesHistory}
_HISTORY_FIELDS = ("epochs", "steps", "steps_epoch")

#: How every message about a malformed state ends.
ALTERED = "it was not written by asyncloop, or was altered; load another checkpoint"


def a_type(value: Any) -> str:
    """``"a list"``, ``"an int"``: the type of ``value`` with its article, for messages."""
    name = type(value).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def malformed(where: str, problem: str) -> CheckpointError:
    """The error for a state that is not what asyncloop writes: ``cannot load {where}: {problem}; ...``."""
    return CheckpointError(f"cannot load {where}: {problem}; {ALTERED}")


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


def decode(value: Any, *, where: str = "the state", part: str = "a cbstate entry") -> Any:
    """The ``cbstate`` entry :func:`encode` encoded, checked as it is decoded.

    A malformed entry raises :class:`CheckpointError` (``cannot load {where}: {part} ...``): a History without
    its int fields, series that are not a dict of equally long ``(indices, values)`` lists, a PhaseDict of an
    unknown factory or whose items are not ``(phase name, entry)`` pairs of the factory's type, an unknown tag.
    So does a phase no class is defined for. Decoding builds new objects only: nothing is changed on failure.
    """
    if not (isinstance(value, dict) and "__type__" in value):
        return value
    kind = value["__type__"]
    if kind == "History":
        for field in _HISTORY_FIELDS:
            number = value.get(field)
            if type(number) is not int or number < 0:
                raise malformed(where, f"{part} is a History without the int field {field!r}")
        return History(*(value[field] for field in _HISTORY_FIELDS))
    if kind == "SeriesHistory":
        return _decode_series(value.get("series"), where, part)
    if kind == "PhaseDict":
        return _decode_phase_dict(value, where, part)
    raise malformed(where, f"{part} has the unknown entry type {kind!r}")


def _decode_series(series: Any, where: str, part: str) -> SeriesHistory:
    if not isinstance(series, dict) or not all(isinstance(name, str) for name in series):
        raise malformed(where, f"{part} is a SeriesHistory whose series are not a dict")
    for name, pair in series.items():
        if not (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(half, (list, tuple)) for half in pair)
            and len(pair[0]) == len(pair[1])
        ):
            problem = f"is a SeriesHistory whose series {name!r} is not a pair of equally long lists"
            raise malformed(where, f"{part} {problem}")
    out = SeriesHistory()
    out.load_state_dict(series)
    return out


def _decode_phase_dict(value: dict[str, Any], where: str, part: str) -> PhaseDict:
    name = value.get("factory")
    factory = _FACTORIES.get(name) if isinstance(name, str) else None
    if factory is None:
        raise malformed(where, f"{part} is a PhaseDict of the unknown factory {name!r}")
    items = value.get("items")
    if not isinstance(items, (list, tuple)) or not all(
        isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str) for item in items
    ):
        raise malformed(where, f"{part} is a PhaseDict whose items are not a list of (phase name, entry) pairs")
    out = PhaseDict(factory)
    for phase, entry in items:
        entry_part = f"{part}[{phase!r}]"
        decoded = decode(entry, where=where, part=entry_part)
        if not isinstance(decoded, factory):
            raise malformed(where, f"{entry_part} is {a_type(decoded)}, not a {name}")
        out[_phase_from_name(phase, where)] = decoded
    return out


#: The ``cbstate`` entries the built-in callbacks own: what each must decode to (a PhaseDict's factory, or None).
_KNOWN: dict[str, tuple[type, type | None]] = {
    "history": (PhaseDict, History),
    "metrics_step": (PhaseDict, SeriesHistory),
    "metrics_epoch": (PhaseDict, SeriesHistory),
    "trace_history": (PhaseDict, SeriesHistory),
    "hyperparams": (SeriesHistory, None),
}


def decode_cbstate(cbstate: Any, where: str) -> dict[str, Any]:
    """A saved ``cbstate`` (a dict of entries :func:`encode` wrote) decoded, every entry checked.

    Besides what :func:`decode` checks, the entries the built-in callbacks own must be what they write
    (``history`` a PhaseDict of History, ``hyperparams`` a SeriesHistory, ...). Anything else raises
    :class:`CheckpointError` naming ``where`` and the entry.
    """
    if not isinstance(cbstate, dict):
        raise malformed(where, f"its cbstate is {a_type(cbstate)}, not a dict")
    out: dict[str, Any] = {}
    for key, value in cbstate.items():
        if not isinstance(key, str):
            raise malformed(where, f"its cbstate has the key {key!r}, not a name")
        part = f"cbstate[{key!r}]"
        try:
            decoded = decode(value, where=where, part=part)
        except CheckpointError:
            raise
        except Exception as exc:  # e.g. a custom phase class that cannot be built without arguments
            raise malformed(where, f"{part} cannot be decoded ({type(exc).__name__}: {exc})") from exc
        known = _KNOWN.get(key)
        if known is not None:
            kind, factory = known
            if not isinstance(decoded, kind) or (factory is not None and decoded.default_factory is not factory):
                expected = kind.__name__ if factory is None else f"{kind.__name__} of {factory.__name__}"
                raise malformed(where, f"{part} is {a_type(decoded)}, not a {expected}")
        out[key] = decoded
    return out
