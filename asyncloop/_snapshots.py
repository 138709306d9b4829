"""Snapshots for detached callbacks (private): copies of learner state that stay valid while training goes on.

A detached callback's handlers run later, on another task, so ``Callback.snapshot`` copies exactly the paths
of its ``state_access`` out of the learner (:func:`snapshot_tree`, on the training thread, at every event the
callback receives) and hands the copy out behind the same protection. How each top-level field is taken --
shared, every tensor cloned, or copied -- is the field table's ``snapshot`` rule
(:data:`asyncloop._access.FIELD_TABLE`); everything below is copied by :func:`snapshot`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ._access import field_facts, normalise
from ._containers import PhaseDict, PropDict


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


def _clone_tree(value: Any, pool: TensorPool | None = None, path: tuple[Any, ...] = ()) -> Any:
    """``value`` with every tensor in its dicts, lists and tuples detached and cloned; other leaves shared.

    With ``pool`` a tensor is copied into the pool's spare buffer for its ``path`` when it has one that fits.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().clone() if pool is None else pool.copy(path, value)
    if isinstance(value, dict):
        return {k: _clone_tree(v, pool, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone_tree(v, pool, (*path, i)) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_clone_tree(v, pool, (*path, i)) for i, v in enumerate(value))
    return value


class TensorPool:
    """Copies of a state's tensors into the buffers of an earlier copy that was handed back.

    A fresh copy of a large tensor costs mostly page faults: the allocator maps new memory and the kernel zeroes
    every page before the copy touches it (a 100 MB ``clone`` ~26 ms here, a ``copy_`` into a buffer already
    mapped ~5 ms). The owner copies with :meth:`begin`, :meth:`copy` per tensor (keyed by its path in the state)
    and :meth:`end`, which returns the CPU buffers used (an accelerator tensor is cloned and not kept); once
    nothing reads them any more (the checkpoint is written) it hands them back with :meth:`recycle` -- from any
    thread: the hand-back is one attribute store, and a copy taken meanwhile simply allocates. Pitfall: between
    two copies the pool keeps one copy's worth of memory; :meth:`clear` drops it.
    """

    __slots__ = ("_spare", "_taking", "_given")

    def __init__(self) -> None:
        self._spare: dict[tuple[Any, ...], torch.Tensor] | None = None
        self._taking: dict[tuple[Any, ...], torch.Tensor] = {}
        self._given: dict[tuple[Any, ...], torch.Tensor] = {}

    def begin(self) -> None:
        spare, self._spare = self._spare, None
        self._taking, self._given = spare or {}, {}

    def copy(self, key: tuple[Any, ...], tensor: torch.Tensor) -> torch.Tensor:
        """A detached copy of ``tensor``, written into the spare buffer for ``key`` when it matches."""
        tensor = tensor.detach()
        if tensor.device.type != "cpu":  # accelerator memory is not held between copies (its allocator caches)
            return tensor.clone()
        buffer = self._taking.pop(key, None)
        if (
            buffer is not None
            and buffer.shape == tensor.shape
            and buffer.dtype == tensor.dtype
            and buffer.device == tensor.device
            and tensor.layout is torch.strided
            and not tensor.is_quantized
            and buffer.stride() == tensor.stride()
        ):
            buffer.copy_(tensor)
        else:
            buffer = tensor.clone()
        self._given[key] = buffer
        return buffer

    def end(self) -> dict[tuple[Any, ...], torch.Tensor]:
        given, self._given, self._taking = self._given, {}, {}
        return given

    def recycle(self, buffers: dict[tuple[Any, ...], torch.Tensor] | None) -> None:
        """Hand back buffers that :meth:`end` returned, once nothing reads them."""
        if buffers:
            self._spare = buffers

    def clear(self) -> None:
        self._spare = None


def snapshot(value: Any, clone: bool = False) -> Any:
    """A copy of ``value`` that stays valid while the training loop goes on.

    Fresh tensors are shared (detached, no copy); tensors the loop mutates in place are cloned: parameters, and
    every tensor when ``clone`` is true (what ``snapshot_tree`` asks for under ``model`` and ``optimizer``).
    Modules are deep copied (weights cloned), optimizers become :class:`OptimizerSnapshot`, containers and
    histories are copied (objects with a ``__snapshot__`` method decide themselves; gradients are cloned).
    Anything else is shared by reference. Pitfall: a PropDict or PhaseDict copies its values without ``clone``.
    """
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, torch.Tensor):
        if clone or isinstance(value, torch.nn.Parameter):
            return value.detach().clone()
        return value.detach()
    cls = type(value)
    if cls is not PropDict and cls is not PhaseDict:  # they have no hook: skip the failing lookup (hot path)
        snap = getattr(cls, "__snapshot__", None)
        if snap is not None:
            return snap(value)
    if isinstance(value, PropDict):
        return PropDict({k: snapshot(v) for k, v in value.items()})
    if isinstance(value, PhaseDict):
        new = PhaseDict(value.default_factory)
        for key, item in list(value.items()):
            new[key] = snapshot(item)
        return new
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


def snapshot_tree(obj: Any, perms: Any) -> PropDict:
    """Copy exactly the paths of ``perms`` out of ``obj`` (missing keys stay missing) into nested PropDicts.

    ``obj`` is the root of the field table (the learner): a top-level ``Read()`` field is shared, cloned or
    copied as :data:`asyncloop._access.FIELD_TABLE` says (``data``, ``epoch_data``, ``loss_fn`` and
    ``callbacks`` shared; every tensor below ``model`` and ``optimizer`` cloned); everything else goes through
    :func:`snapshot`. The walk is compiled once per tree object, from its normalised tree (a detached
    callback's snapshot runs on the training thread at every event it receives); do not mutate the tree.
    """
    known = _SNAPSHOTTERS.get(id(perms))
    if known is None or known[0] is not perms:
        known = (perms, _snapshotter(normalise(perms), top=True, clone=False))
        if len(_SNAPSHOTTERS) < 4096:
            _SNAPSHOTTERS[id(perms)] = known  # holds the tree: its id stays its own
    return known[1](obj)


#: id(tree) -> (tree, its compiled snapshot function).
_SNAPSHOTTERS: dict[int, tuple[Any, Callable[[Any], PropDict]]] = {}

_NESTED, _SHARED, _COPIED = 0, 1, 2
#: class -> whether its instances are mappings (an ABC isinstance check is slow on the hot path).
_IS_MAPPING: dict[type, bool] = {}


def _snapshotter(perms: dict[Any, Any], top: bool, clone: bool) -> Callable[[Any], PropDict]:
    parts: list[tuple[Any, int, Any]] = []
    for key, perm in perms.items():
        rule = field_facts(key, top).snapshot
        deep = clone or rule == "clone"
        if perm.__class__ is dict:
            parts.append((key, _NESTED, _snapshotter(perm, False, deep)))
        elif rule == "share":
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
