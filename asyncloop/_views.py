"""Protected views (private): what a handler receives as ``learner``, enforcing its callback's ``state_access``.

Rules (FluxTraining's, with the shallow-permission hole closed for containers):

* reading a field absent from the tree raises ``ProtectedError("Read access to Learner.model disallowed.")``;
* writing a field needs ``Write()`` exactly: ``ProtectedError("Write access to Learner.model disallowed.")``;
* a nested dict in the tree yields a nested protected view;
* ``Read()`` on a :class:`PropDict` or ``dict`` gives a read-only view of it; other objects (tensors, modules,
  histories) are returned as they are -- do not mutate what you only declared ``Read()`` on.

Every view is compiled: its class is a :class:`Protected` subclass built once per tree shape from the
*normalised* tree (see :func:`asyncloop._access.normalise`), holding one reader per declared field
(:func:`_field_reader`, the only place that says how a declared field is read and handed out). Declared
identifier fields are properties, so the hot path of a handler (``learner.step.loss``,
``learner.cbstate.history[phase]``) reads them without a failed lookup or a tree walk; other declared keys are
read through ``view[key]``, ``view.get(key)`` or ``getattr(view, key)`` by the same reader.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from ._access import Permission, Write, normalise
from ._containers import PropDict
from ._exceptions import ProtectedError

_set = object.__setattr__

#: The default ``value`` of a field reader: read the field from the view's object by attribute.
_UNREAD: Any = object()
_ABSENT = object()

#: The tree of every read-only view (the view of a ``Read()`` dict): nothing in it, so nothing is writable;
#: its class, :class:`_ReadOnlyView`, reads every key. Never mutated; recognised by identity.
_READ_ONLY: dict[Any, Any] = {}

#: Methods of a dict that change it: a read-only view refuses them.
_MUTATORS = frozenset({"clear", "pop", "popitem", "update", "setdefault", "default_factory"})

#: A field reader: ``reader(view)`` reads the field by attribute; ``reader(view, value)`` hands out ``value``,
#: the field as read otherwise (``view[key]``), under the same rule.
Reader = Callable[..., Any]


def _view(obj: Any, perms: Any, name: str, cls: type[Protected] | None = None) -> Protected:
    """A view of ``obj`` under ``perms``, named ``name`` in error messages: what ``Protected(obj, perms, name)``
    returns, built without ``__init__`` (a hot path: nested views and snapshot views are built per step).

    ``cls``: the class compiled from ``perms`` when the caller has it (a field reader); then ``perms`` must be
    the normalised tree it was compiled from. Without it, ``perms`` may be any tree: it is normalised and
    compiled once per tree object (cached by identity, so the tree must not be mutated afterwards).
    """
    if cls is None:
        perms, cls = _compile(perms)
    view = object.__new__(cls)
    _set(view, "_obj", obj)
    _set(view, "_perms", perms)
    _set(view, "_name", name)
    return view


# --------------------------------------------------------------------------------------------------------------
# Compilation: one Protected subclass per tree shape, its declared fields as readers
# --------------------------------------------------------------------------------------------------------------

#: id(tree) -> (tree, its normalised tree, its class): the lookup of ``_view`` (trees are class attributes, a
#: handful per program; the entry holds the tree, so its id stays its own).
_ROOTS: dict[int, tuple[Any, dict[Any, Any], type[Protected]]] = {}
#: Tree shape -> its compiled class.
_CLASSES: dict[Any, type[Protected]] = {}


def _compile(tree: Any) -> tuple[dict[Any, Any], type[Protected]]:
    """The normalised tree of the root tree ``tree`` and its compiled class (``TypeError`` for a bad tree)."""
    known = _ROOTS.get(id(tree))
    if known is not None and known[0] is tree:
        return known[1], known[2]
    perms = normalise(tree)
    cls = _compiled(perms)
    if len(_ROOTS) < 4096:
        _ROOTS[id(tree)] = (tree, perms, cls)
    return perms, cls


def _shape(perms: dict[Any, Any]) -> Any:
    """A hashable key for a normalised tree's structure."""
    return tuple((key, _shape(perm) if perm.__class__ is dict else perm.__class__) for key, perm in perms.items())


def _compiled(perms: dict[Any, Any]) -> type[Protected]:
    """The class of views under the normalised tree ``perms``, built once per tree shape."""
    key = _shape(perms)
    cls = _CLASSES.get(key)
    if cls is None:
        cls = _CLASSES[key] = _build(perms)
    return cls


def _build(perms: dict[Any, Any]) -> type[Protected]:
    fields: dict[Any, Reader] = {}
    namespace: dict[str, Any] = {"__slots__": (), "_fields": fields}
    for key, perm in perms.items():
        reader = fields[key] = _field_reader(key, perm)
        if isinstance(key, str) and key.isidentifier() and not hasattr(Protected, key):
            namespace[key] = property(reader)
    cls = type("Protected", (Protected,), namespace)
    cls.__qualname__ = "Protected"
    cls.__module__ = Protected.__module__
    return cls


def _field_reader(key: Any, perm: Permission | dict[Any, Any]) -> Reader:
    """How a declared field is read and handed out -- the one copy of that rule.

    ``Write()``: the value itself. ``Read()``: the value itself, or a read-only view if it is a dict. A subtree:
    a nested view under it. Read by attribute, a missing key of a :class:`PropDict` is an ``AttributeError``
    (so ``hasattr`` is False). A nested view is built per read (keeping one would keep the field's previous
    object -- an earlier step's tensors -- alive; the ablation bench measured no saving from caching them).
    """
    # The read is spelled out here, not in a helper: readers run on every handler call.
    missing = f"PropDict has no key {key!r}"
    raw = perm.__class__ is Write
    nested = perm.__class__ is dict
    child_perms: dict[Any, Any] = perm if nested else _READ_ONLY  # type: ignore[assignment]
    child_cls = _compiled(child_perms) if nested else _ReadOnlyView

    def read(self: Protected, value: Any = _UNREAD) -> Any:
        if value is _UNREAD:
            obj = self._obj
            if obj.__class__ is PropDict:  # skip PropDict.__getattr__
                try:
                    value = obj[key]
                except KeyError:
                    raise AttributeError(missing) from None
            else:
                value = getattr(obj, key)
        if raw or not (nested or isinstance(value, dict)):
            return value  # Write(), or Read() of anything but a dict: the object itself
        return _view(value, child_perms, type(value).__name__, child_cls)

    return read


# --------------------------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------------------------


class Protected:
    """A view of ``obj`` that allows only the accesses in ``perms`` (see :mod:`asyncloop.state` for the rules).

    ``Protected(obj, perms, name)`` returns an instance of the class compiled for ``perms`` (a subclass named
    ``Protected``); ``perms`` is normalised first, so any mapping works and a bad leaf raises ``TypeError``.
    ``name`` (default: the class name of ``obj``) is what error messages call ``obj``. Pitfall: the tree is
    compiled once per tree object: do not mutate a tree once a view was built from it (views keep its old rules).
    ``key in view``, ``len(view)`` and iteration over keys are not checked (FluxTraining's ``haskey``).
    """

    __slots__ = ("_obj", "_perms", "_name")

    #: Declared key -> its reader (see _field_reader); each compiled class has its own.
    _fields: ClassVar[dict[Any, Reader]] = {}

    def __new__(cls, obj: Any, perms: Any, name: str | None = None) -> Protected:
        return _view(obj, perms, name or type(obj).__name__)

    def __getattr__(self, name: str) -> Any:
        # Reached for names that are not properties of the compiled class: undeclared names, declared keys that
        # are not identifiers (getattr(view, "a b")), and declared fields whose read raised AttributeError (a
        # missing key): the reader runs again, so that error comes out.
        reader = self._fields.get(name)
        if reader is None:
            raise ProtectedError(f"Read access to {self._name}.{name} disallowed.")
        return reader(self)

    def __setattr__(self, name: str, value: Any) -> None:
        if self._perms.get(name).__class__ is not Write:
            raise ProtectedError(f"Write access to {self._name}.{name} disallowed.")
        setattr(self._obj, name, value)

    def __delattr__(self, name: str) -> None:
        if self._perms.get(name).__class__ is not Write:
            raise ProtectedError(f"Write access to {self._name}.{name} disallowed.")
        delattr(self._obj, name)

    def __getitem__(self, key: Any) -> Any:
        reader = self._fields.get(key)
        if reader is None:
            raise ProtectedError(f"Read access to {self._name}[{key!r}] disallowed.")
        return reader(self, self._obj[key])

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._perms.get(key).__class__ is not Write:
            raise ProtectedError(f"Write access to {self._name}[{key!r}] disallowed.")
        self._obj[key] = value

    def get(self, key: Any, default: Any = None) -> Any:
        """``view[key]`` if the key exists, else ``default``; still checks the permission."""
        reader = self._fields.get(key)
        if reader is None:
            raise ProtectedError(f"Read access to {self._name}[{key!r}] disallowed.")
        obj = self._obj
        if key not in obj:  # also for a defaultdict: reading must not insert the key
            return default
        return reader(self, obj[key])

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


def _read_only(value: Any) -> Any:
    """What a read-only view hands out for ``value``: a read-only view of a dict, anything else as it is."""
    return _view(value, _READ_ONLY, type(value).__name__, _ReadOnlyView) if isinstance(value, dict) else value


class _ReadOnlyView(Protected):
    """The read-only view ``Read()`` gives of a dict (``learner.step`` under ``{"step": Read()}``): every key
    readable at any depth, nothing writable.

    The view's own attributes (methods, slots, dunders) come first, as for ``Protected``: read a key that shares a
    method's name as ``view[key]``.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        # Reached when a normal lookup fails: every key read (learner.step.loss), a dict mutator, a missing key.
        obj = _OBJ_OF(self)
        if obj.__class__ is PropDict:
            try:
                value = obj[name]
            except KeyError:
                raise AttributeError(f"PropDict has no key {name!r}") from None
        elif name in _MUTATORS:
            raise ProtectedError(f"Write access to {self._name}.{name} disallowed.")
        else:
            value = getattr(obj, name)
        return _read_only(value)

    def __getitem__(self, key: Any) -> Any:
        obj = _OBJ_OF(self)
        value = obj.get(key, _ABSENT)  # dict.get: a defaultdict does not insert the key
        if value is _ABSENT:
            factory = getattr(obj, "default_factory", None)
            value = factory() if factory is not None and isinstance(obj, defaultdict) else obj[key]
        return _read_only(value)

    def get(self, key: Any, default: Any = None) -> Any:
        obj = _OBJ_OF(self)
        if key not in obj:  # also for a defaultdict: reading must not insert the key
            return default
        return _read_only(obj[key])

    def __contains__(self, key: Any) -> bool:
        return key in _OBJ_OF(self)

    def __len__(self) -> int:
        return len(_OBJ_OF(self))

    def __iter__(self) -> Iterator[Any]:
        return iter(_OBJ_OF(self))

    def keys(self) -> Any:
        return _OBJ_OF(self).keys()

