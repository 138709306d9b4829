"""Learner state containers and the permission model that guards them.

* :class:`PropDict` -- a dict with attribute access (``learner.step.loss``).
* :class:`History` -- completed epochs/steps per phase, kept by :class:`asyncloop.Recorder`.
* :class:`SeriesHistory` -- named series of ``(index, value)`` pairs (metrics, hyperparameters, traces).
* :class:`Read` / :class:`Write` -- leaves of a callback's ``state_access`` tree.
* :class:`Protected` -- the view of the learner a handler receives: it enforces the tree at run time.

Permission rules (FluxTraining's, with the shallow-permission hole closed for containers):

* reading a field absent from the tree raises ``ProtectedError("Read access to Learner.model disallowed.")``;
* writing a field needs ``Write()`` exactly: ``ProtectedError("Write access to Learner.model disallowed.")``;
* a nested dict in the tree yields a nested protected view;
* ``Read()`` on a :class:`PropDict` or ``dict`` gives a read-only view of it; other objects (tensors, modules,
  histories) are returned as they are -- do not mutate what you only declared ``Read()`` on.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ._exceptions import ProtectedError
from ._values import ValueClass

__all__ = [
    "PropDict",
    "History",
    "PhaseDict",
    "SeriesHistory",
    "Permission",
    "Read",
    "Write",
    "Protected",
    "accesses",
    "validate_state_access",
    "snapshot",
    "LEARNER_FIELDS",
]

#: The learner fields a ``state_access`` tree may name at its top level.
LEARNER_FIELDS = ("model", "loss_fn", "optimizer", "data", "step", "cbstate", "callbacks", "epoch_data")


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

    def __snapshot__(self) -> PropDict:
        return PropDict({k: snapshot(v) for k, v in self.items()})


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

    def __snapshot__(self) -> PhaseDict:
        new = PhaseDict(self.default_factory)
        for key, value in list(self.items()):
            new[key] = snapshot(value)
        return new

    def __repr__(self) -> str:
        return f"PhaseDict({dict(self)!r})"


def _as_python(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


class SeriesHistory:
    """Named series of ``(index, value)`` pairs, appended in order (FluxTraining's ``MVHistory``).

    Values may be pushed as one-element tensors so that no host sync happens while training; they are
    converted to Python numbers when read with :meth:`last` or :meth:`values`.
    """

    __slots__ = ("_series", "_len", "_frozen")

    def __init__(self) -> None:
        self._series: dict[str, tuple[list[Any], list[Any]]] = {}
        self._len: dict[str, int] = {}
        self._frozen = False

    def push(self, name: str, index: int, value: Any) -> None:
        """Append ``value`` at ``index`` to the series ``name``."""
        if self._frozen:
            raise TypeError("this SeriesHistory is a read-only snapshot; it cannot be pushed to")
        series = self._series.get(name)
        if series is None:
            series = self._series[name] = ([], [])
        series[0].append(index)
        series[1].append(value)
        self._len[name] = len(series[0])

    def replace_last(self, name: str, index: int, value: Any) -> None:
        """Replace the last ``(index, value)`` of ``name`` (copy-on-write: earlier snapshots keep the old pair)."""
        if self._frozen:
            raise TypeError("this SeriesHistory is a read-only snapshot; it cannot be changed")
        indices, values, n = self._get(name)
        self._series = {**self._series, name: ([*indices[: n - 1], index], [*values[: n - 1], value])}

    def _get(self, name: str) -> tuple[list[Any], list[Any], int]:
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
        values[n - 1] = _as_python(values[n - 1])
        return indices[n - 1], values[n - 1]

    def values(self, name: str) -> list[Any]:
        """All values of ``name``, in push order."""
        _, values, n = self._get(name)
        for i in range(n):
            values[i] = _as_python(values[i])
        return values[:n]

    def indices(self, name: str) -> list[int]:
        """All indices of ``name``, in push order."""
        indices, _, n = self._get(name)
        return indices[:n]

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
        self._series = {name: (list(idx), list(vals)) for name, (idx, vals) in state.items()}
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


class Permission(ValueClass):
    """A leaf of a ``state_access`` tree. Instances of one permission type are equal."""

    __slots__ = ()


class Read(Permission):
    """Read access to a learner field (and everything below it)."""

    __slots__ = ()


class Write(Permission):
    """Read and write access. For conflict analysis a ``Write()`` path is a write, not also a read."""

    __slots__ = ()


def validate_state_access(tree: Any, owner: str) -> dict[str, Any]:
    """Check a ``state_access`` tree and return it; raise ``TypeError`` naming the bad part and the fix."""
    if not isinstance(tree, Mapping):
        raise TypeError(
            f"{owner}.state_access must be a dict such as {{'step': {{'loss': Read()}}}}, got {tree!r}"
        )
    for key in tree:
        if key not in LEARNER_FIELDS:
            raise TypeError(
                f"{owner}.state_access names {key!r}, which is not a Learner field; "
                f"use one of: {', '.join(LEARNER_FIELDS)}"
            )
    _validate_subtree(tree, owner, "state_access")
    return dict(tree)


def _validate_subtree(tree: Mapping[Any, Any], owner: str, where: str) -> None:
    for key, value in tree.items():
        here = f"{where}[{key!r}]"
        if not isinstance(key, str):
            raise TypeError(f"{owner}.{here}: keys must be strings, got {type(key).__name__}")
        if isinstance(value, Permission):
            continue
        if isinstance(value, type) and issubclass(value, Permission):
            raise TypeError(f"{owner}.{here} is the class {value.__name__}; use {value.__name__}() instead")
        if isinstance(value, Mapping):
            _validate_subtree(value, owner, here)
            continue
        raise TypeError(f"{owner}.{here} must be Read(), Write() or a nested dict, got {value!r}")


def accesses(tree: Mapping[str, Any], perm: Permission) -> list[tuple[str, ...]]:
    """Every path in ``tree`` whose leaf is a ``perm``: ``accesses({"x": Read()}, Read()) == [("x",)]``."""
    found: list[tuple[str, ...]] = []

    def walk(node: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, (*prefix, key))
            elif type(value) is type(perm):
                found.append((*prefix, key))

    walk(tree, ())
    return found


class _AllRead(dict):
    """Permission tree that grants read access to every key (used for read-only container views).

    A ``dict`` subclass so that ``get`` stays a C call on the hot path: ``__missing__`` answers every key.
    """

    def __missing__(self, key: Any) -> Any:
        return _READ_ONLY


_READ = Read()
_READ_ONLY = _AllRead()
_ABSENT = object()


def _guard(value: Any, perm: Any) -> Any:
    if perm.__class__ is Write:
        return value
    if perm is _READ_ONLY or perm.__class__ is Read:
        if isinstance(value, dict):
            return _view(value, _READ_ONLY, type(value).__name__)
        return value
    return _view(value, perm, type(value).__name__)


_set = object.__setattr__

#: Methods of a dict that change it: a read-only view refuses them.
_MUTATORS = frozenset({"clear", "pop", "popitem", "update", "setdefault", "default_factory"})


def _view(obj: Any, perms: Mapping[str, Any], name: str, cls: type | None = None) -> Protected:
    """Build a Protected without running ``__init__`` (a hot path: nested views are built per step).

    ``cls``: the view class of ``perms`` when the caller already knows it (``_compiled(perms)``).
    """
    view = object.__new__(cls or _compiled(perms))
    _set(view, "_obj", obj)
    _set(view, "_perms", perms)
    _set(view, "_name", name)
    _set(view, "_views", None)
    return view


# --------------------------------------------------------------------------------------------------------------
# Compiled views: one Protected subclass per permission tree, its declared fields as properties
# --------------------------------------------------------------------------------------------------------------

#: Permission-tree shape -> its Protected subclass (trees are few: one per callback class).
_COMPILED: dict[Any, type] = {}
#: id(tree) -> (tree, its subclass): the lookup on the hot path (nested views are built per step).
_COMPILED_BY_ID: dict[int, tuple[Any, type]] = {}


def _shape(perms: Mapping[str, Any]) -> Any:
    """A hashable key for a permission tree's structure."""
    return tuple(
        (key, _shape(perm) if isinstance(perm, Mapping) else perm.__class__)
        for key, perm in perms.items()
    )


def _compiled(perms: Mapping[str, Any]) -> type:
    """The Protected subclass for ``perms`` (cached per tree shape).

    Each declared field whose name is an identifier (and not a method of the view) becomes a property that
    applies exactly the rule ``Protected.__getattr__`` applies, without looking the permission up. Undeclared
    names still reach ``__getattr__`` and raise ``ProtectedError``; writes still go through ``__setattr__``.
    """
    if perms is _READ_ONLY:
        return _ReadOnlyView
    if not isinstance(perms, dict):
        return Protected
    known = _COMPILED_BY_ID.get(id(perms))
    if known is not None and known[0] is perms:
        return known[1]
    try:
        key = _shape(perms)
    except TypeError:  # an unhashable key in a hand-built tree: no compiled fast path
        return Protected
    cls = _COMPILED.get(key)
    if cls is None:
        cls = _COMPILED[key] = _build(perms)
    if len(_COMPILED_BY_ID) < 4096:  # trees are class attributes: a handful per program
        _COMPILED_BY_ID[id(perms)] = (perms, cls)  # the tree is kept alive, so its id stays its own
    return cls


def _build(perms: Mapping[str, Any]) -> type:
    namespace: dict[str, Any] = {"__slots__": ()}
    for name, perm in perms.items():
        if isinstance(name, str) and name.isidentifier() and not hasattr(Protected, name):
            namespace[name] = property(_field_getter(name, perm))
    cls = type("Protected", (Protected,), namespace)
    cls.__qualname__ = "Protected"
    cls.__module__ = Protected.__module__
    return cls


def _field_getter(name: str, perm: Any) -> Any:
    # The read of the field is spelled out in each getter (no helper call): these run on every handler call.
    missing = f"PropDict has no key {name!r}"

    if perm.__class__ is Write:

        def get_write(self: Protected) -> Any:
            obj = self._obj
            if obj.__class__ is PropDict:
                try:
                    return obj[name]
                except KeyError:
                    raise AttributeError(missing) from None
            return getattr(obj, name)

        return get_write

    child_perms = _READ_ONLY if perm.__class__ is Read else perm
    child_cls = _compiled(child_perms)
    read_only = child_perms is _READ_ONLY
    # learner.step is a new PropDict every step: a cached view of it would keep the previous step's tensors
    # (and its autograd graph) alive into the next step, so its view is built per read instead.
    cached = name != "step"

    def get_view(self: Protected) -> Any:
        obj = self._obj
        if obj.__class__ is PropDict:
            try:
                value = obj[name]
            except KeyError:
                raise AttributeError(missing) from None
        else:
            value = getattr(obj, name)
        if read_only and not isinstance(value, dict):
            return value  # Read() on a non-container: the object itself
        if not cached:
            return _view(value, child_perms, type(value).__name__, child_cls)
        views = self._views
        if views is None:
            views = {}
            _set(self, "_views", views)
        else:
            view = views.get(name)
            if view is not None and _OBJ_OF(view) is value:
                return view
        view = views[name] = _view(value, child_perms, type(value).__name__, child_cls)
        return view

    return get_view


class Protected:
    """A view of ``obj`` that allows only the accesses in ``perms`` (see the module docstring for the rules).

    ``key in view``, ``len(view)`` and iteration over keys are not checked (FluxTraining's ``haskey``).
    """

    __slots__ = ("_obj", "_perms", "_name", "_views")

    def __new__(cls, obj: Any, perms: Mapping[str, Any], name: str | None = None) -> Protected:
        # A permission tree gets its own subclass whose declared fields are properties (see _compiled): the
        # hot path of a handler reads them without the failed lookup and the tree walk of __getattr__.
        if cls is Protected:
            cls = _compiled(perms)
        return object.__new__(cls)

    def __init__(self, obj: Any, perms: Mapping[str, Any], name: str | None = None) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_perms", perms)
        object.__setattr__(self, "_name", name or type(obj).__name__)
        object.__setattr__(self, "_views", None)

    def __getattr__(self, name: str) -> Any:
        # Declared identifier fields are properties of the compiled subclass and never get here; read-only
        # views of dicts are _ReadOnlyView, which has its own lookup.
        perm = self._perms.get(name)
        if perm is None:
            raise ProtectedError(f"Read access to {self._name}.{name} disallowed.")
        obj = self._obj
        if obj.__class__ is PropDict:  # skip PropDict.__getattr__: this is the hot path of every handler
            try:
                value = obj[name]
            except KeyError:
                raise AttributeError(f"PropDict has no key {name!r}") from None
        else:
            value = getattr(obj, name)
        if perm.__class__ is Write:
            return value
        # Nested views are cached per field while the field holds the same object (the hot path reads
        # learner.cbstate.<x> and learner.step.<x> on every event).
        views = self._views
        if views is None:
            views = {}
            _set(self, "_views", views)
        view = views.get(name)
        if view is not None and _OBJ_OF(view) is value:
            return view
        view = _guard(value, perm)
        if isinstance(view, Protected):
            views[name] = view
        return view

    def __setattr__(self, name: str, value: Any) -> None:
        if self._perms.get(name).__class__ is not Write:
            raise ProtectedError(f"Write access to {self._name}.{name} disallowed.")
        setattr(self._obj, name, value)

    def __delattr__(self, name: str) -> None:
        if self._perms.get(name).__class__ is not Write:
            raise ProtectedError(f"Write access to {self._name}.{name} disallowed.")
        delattr(self._obj, name)

    def __getitem__(self, key: Any) -> Any:
        perm = self._perms.get(key)
        if perm is None:
            raise ProtectedError(f"Read access to {self._name}[{key!r}] disallowed.")
        return _guard(self._obj[key], perm)

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._perms.get(key).__class__ is not Write:
            raise ProtectedError(f"Write access to {self._name}[{key!r}] disallowed.")
        self._obj[key] = value

    def get(self, key: Any, default: Any = None) -> Any:
        """``view[key]`` if the key exists, else ``default``; still checks the permission."""
        perm = self._perms.get(key)
        if perm is None:
            raise ProtectedError(f"Read access to {self._name}[{key!r}] disallowed.")
        obj = self._obj
        if key not in obj:  # also for a defaultdict: reading must not insert the key
            return default
        value = obj[key]
        return _guard(value, perm)

    def __contains__(self, key: Any) -> bool:
        return key in self._obj

    def __len__(self) -> int:
        return len(self._obj)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._obj)

    def keys(self) -> Any:
        return self._obj.keys()

    def __repr__(self) -> str:
        return f"Protected({self._name}, {dict(self._perms)!r})"


_OBJ_OF = Protected._obj.__get__  # type: ignore[attr-defined]  # the slot's C getter


class _ReadOnlyView(Protected):
    """The read-only view ``Read()`` gives of a dict (``learner.step`` under ``{"step": Read()}``): every key
    readable at any depth, nothing writable.

    Reads are its hot path (``learner.step.loss`` in a handler), so ``__getattribute__`` looks keys up directly
    instead of failing a normal lookup first. The view's own attributes (methods, slots, dunders) come first,
    as for ``Protected``.
    """

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        if name in _VIEW_ATTRIBUTES:
            return object.__getattribute__(self, name)
        obj = _OBJ_OF(self)
        if obj.__class__ is PropDict:
            try:
                value = obj[name]
            except KeyError:
                raise AttributeError(f"PropDict has no key {name!r}") from None
        elif name in _MUTATORS:
            raise ProtectedError(f"Write access to {object.__getattribute__(self, '_name')}.{name} disallowed.")
        else:
            value = getattr(obj, name)
        return _view(value, _READ_ONLY, type(value).__name__) if isinstance(value, dict) else value

    def __getattr__(self, name: str) -> Any:
        # Python calls this after __getattribute__ raised AttributeError (a missing key, a refused mutator):
        # repeat that lookup so the same error comes out, never Protected's generic one.
        return _ReadOnlyView.__getattribute__(self, name)

    def __getitem__(self, key: Any) -> Any:
        obj = _OBJ_OF(self)
        value = obj.get(key, _ABSENT)  # dict.get: a defaultdict does not insert the key
        if value is _ABSENT:
            factory = getattr(obj, "default_factory", None)
            value = factory() if factory is not None and isinstance(obj, defaultdict) else obj[key]
        return _view(value, _READ_ONLY, type(value).__name__) if isinstance(value, dict) else value

    def get(self, key: Any, default: Any = None) -> Any:
        obj = _OBJ_OF(self)
        if key not in obj:  # also for a defaultdict: reading must not insert the key
            return default
        value = obj[key]
        return _view(value, _READ_ONLY, type(value).__name__) if isinstance(value, dict) else value

    def __contains__(self, key: Any) -> bool:
        return key in _OBJ_OF(self)

    def __len__(self) -> int:
        return len(_OBJ_OF(self))

    def __iter__(self) -> Iterator[Any]:
        return iter(_OBJ_OF(self))

    def keys(self) -> Any:
        return _OBJ_OF(self).keys()


#: Names a read-only view answers itself (before looking at the dict's keys), as ``Protected`` does.
_VIEW_ATTRIBUTES = frozenset(dir(_ReadOnlyView))


# --------------------------------------------------------------------------------------------------------------
# Snapshots for detached callbacks
# --------------------------------------------------------------------------------------------------------------


class OptimizerSnapshot:
    """A frozen copy of an optimizer's state: ``state_dict()`` and ``param_groups``, safe to read from another task."""

    __slots__ = ("_state", "param_groups", "type_name")

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._state = _clone_tree(optimizer.state_dict())
        self.param_groups = self._state["param_groups"]
        self.type_name = type(optimizer).__name__

    def state_dict(self) -> dict[str, Any]:
        return self._state

    def __repr__(self) -> str:
        return f"OptimizerSnapshot({self.type_name})"


def _clone_tree(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone_tree(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_clone_tree(v) for v in value)
    return value


def snapshot(value: Any, clone: bool = False) -> Any:
    """A copy of ``value`` that stays valid while the training loop goes on.

    Fresh tensors are shared (detached, no copy); tensors the loop mutates in place are cloned: parameters, and
    every tensor when ``clone`` is true (what ``snapshot_tree`` asks for under ``model`` and ``optimizer``).
    Modules are deep copied (weights cloned), optimizers become :class:`OptimizerSnapshot`, containers and
    histories are copied (objects with a ``__snapshot__`` method decide themselves; gradients are cloned).
    Anything else is shared by reference.
    """
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, torch.Tensor):
        if clone or isinstance(value, torch.nn.Parameter):
            return value.detach().clone()
        return value.detach()
    snap = getattr(type(value), "__snapshot__", None)
    if snap is not None:
        return snap(value)
    if isinstance(value, torch.nn.Module):
        return copy.deepcopy(value)
    if isinstance(value, torch.optim.Optimizer):
        return OptimizerSnapshot(value)
    if isinstance(value, dict):
        return {k: snapshot(v, clone) for k, v in value.items()}
    if isinstance(value, list):
        return [snapshot(v, clone) for v in value]
    if isinstance(value, tuple):
        return tuple(snapshot(v, clone) for v in value)
    return value


#: Learner fields the loop never mutates in place: a snapshot shares them instead of copying.
_SHARED_FIELDS = frozenset({"data", "epoch_data", "loss_fn", "callbacks"})


#: Learner fields whose tensors the loop updates in place: a snapshot clones every tensor below them.
_MUTATED_FIELDS = frozenset({"model", "optimizer"})


def snapshot_tree(obj: Any, perms: Mapping[str, Any], top: bool = True, clone: bool = False) -> PropDict:
    """Copy exactly the paths of ``perms`` out of ``obj`` (missing keys stay missing).

    At the top level (the learner), ``data``, ``epoch_data``, ``loss_fn`` and ``callbacks`` are shared, not
    copied: the loop only iterates or calls them; tensors below ``model`` and ``optimizer`` are cloned.

    The walk is compiled once per tree (a detached callback's snapshot runs on the training thread at every
    event it receives).
    """
    key = (id(perms), top, clone)
    known = _SNAPSHOTTERS.get(key)
    if known is None or known[0] is not perms:
        known = (perms, _snapshotter(perms, top, clone))
        if len(_SNAPSHOTTERS) < 4096:
            _SNAPSHOTTERS[key] = known  # holds the tree: its id stays its own
    return known[1](obj)


#: (id(tree), top, clone) -> (tree, its compiled snapshot function).
_SNAPSHOTTERS: dict[tuple[int, bool, bool], tuple[Any, Any]] = {}

_NESTED, _SHARED, _COPIED = 0, 1, 2
#: class -> whether its instances are mappings (an ABC isinstance check is slow on the hot path).
_IS_MAPPING: dict[type, bool] = {}


def _snapshotter(perms: Mapping[str, Any], top: bool, clone: bool) -> Any:
    parts: list[tuple[Any, int, Any]] = []
    for key, perm in perms.items():
        deep = clone or (top and key in _MUTATED_FIELDS)
        if isinstance(perm, Mapping):
            parts.append((key, _NESTED, _snapshotter(perm, False, deep)))
        elif top and key in _SHARED_FIELDS:
            parts.append((key, _SHARED, None))
        else:
            parts.append((key, _COPIED, deep))

    def snap(obj: Any) -> PropDict:
        out = PropDict()
        cls = obj.__class__
        is_map = _IS_MAPPING.get(cls)
        if is_map is None:
            is_map = _IS_MAPPING[cls] = isinstance(obj, Mapping)
        for key, kind, arg in parts:
            try:
                value = obj[key] if is_map else getattr(obj, key)
            except (KeyError, AttributeError):
                continue
            if kind == _NESTED:
                out[key] = arg(value)
            elif kind == _SHARED:
                out[key] = value
            elif value.__class__ is torch.Tensor:  # the common leaf (a loss, a batch): snapshot() inlined
                out[key] = value.detach().clone() if arg else value.detach()
            else:
                out[key] = snapshot(value, arg)
        return out

    return snap
