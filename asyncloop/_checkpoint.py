"""The learner's training state: everything a fit needs to go on exactly, as plain data, in memory or a file.

* :func:`training_state` / :func:`load_training_state` -- the whole state of a run as plain data: model and
  optimizer ``state_dict``s, the ``state_dict()`` of every stateful callback, the shared ``cbstate`` histories
  (epoch/step counters, metrics, hyperparameters, traces; encoded by :mod:`asyncloop._plaindata`) and the
  learner's own random state (torch CPU and CUDA, Python's ``random``, NumPy; see :mod:`asyncloop._rng`), not
  the global generators' (which may belong to another learner fitting at the same time).
  ``Learner.state_dict()`` and ``Learner.load_state_dict()`` call them.
* :func:`save_checkpoint` / :func:`load_checkpoint` -- that state in a file (written atomically, loaded with
  ``torch.load(..., weights_only=True)``: loading a file never runs code from it).

Loading is all or nothing, and strict by default: a checkpoint whose optimizer class differs from the learner's,
that holds the state of a callback the learner lacks, or that lacks the state of one of the learner's stateful
callbacks is refused with a :class:`CheckpointError` naming each mismatch; ``strict=False`` loads the rest and
warns once per mismatch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ._checkpoint_files import read_checkpoint
from ._durable import save_file
from ._exceptions import CheckpointError
from ._plaindata import SKIP, a_type, decode_cbstate, encode, is_plain, malformed
from ._rng import global_state, set_global_state
from ._snapshots import TensorPool, _clone_tree
from .phases import TrainingPhase

if TYPE_CHECKING:
    from ._callback import Callback
    from ._learner import Learner

FORMAT = "asyncloop.training_state"
VERSION = 1


# --------------------------------------------------------------------------------------------------------------
# RNG states
# --------------------------------------------------------------------------------------------------------------


#: The global generators' states (what a checkpoint holds is the *learner's* state: ``learner.random_state.get()``).
rng_state = global_state
set_rng_state = set_global_state


# --------------------------------------------------------------------------------------------------------------
# The learner's training state
# --------------------------------------------------------------------------------------------------------------


def callback_key(callbacks: list[Callback], index: int) -> str:
    """``"Scheduler"`` for the first Scheduler, ``"Scheduler#1"`` for the second, and so on.

    A wrapped callback counts as what it wraps (``type(cb.inner)``), so throttling one keeps its key.
    """
    name = type(callbacks[index].inner).__name__
    occurrence = sum(1 for cb in callbacks[:index] if type(cb.inner).__name__ == name)
    return name if occurrence == 0 else f"{name}#{occurrence}"


def training_state(learner: Learner, *, clone: bool = True, pool: TensorPool | None = None) -> dict[str, Any]:
    """The full training state of ``learner`` as plain data (``Learner.state_dict()``).

    With ``clone`` every tensor is a copy, so the result stays valid while training goes on (what a detached
    :class:`asyncloop.Checkpointer` needs); with a ``pool`` (between its ``begin`` and ``end``) the model's and
    optimizer's tensors are copied into its spare buffers. ``cbstate`` entries that are not plain data nor known
    histories are left out with a warning.
    """
    model = learner.model
    state: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if isinstance(model, torch.nn.Module):
        weights = model.state_dict()
        state["model"] = _clone_tree(dict(weights), pool, ("model",)) if clone else dict(weights)
    if learner._optimizer is not None or (
        learner._optimizer_factory is not None and isinstance(model, torch.nn.Module)
    ):
        opt = learner.optimizer.state_dict()
        state["optimizer"] = _clone_tree(opt, pool, ("optimizer",)) if clone else opt
        state["optimizer_class"] = type(learner.optimizer).__qualname__
    callbacks = learner._callbacks
    cb_states: dict[str, Any] = {}
    for i, cb in enumerate(callbacks):
        fn = getattr(cb, "state_dict", None)
        if fn is None:
            continue
        key = callback_key(callbacks, i)
        value = fn()
        if not is_plain(value):
            raise CheckpointError(
                f"{cb.name}.state_dict() returned something other than plain data (dicts, lists, tuples, numbers, "
                f"strings, tensors): {value!r}; a checkpoint must load without unpickling code"
            )
        cb_states[key] = _clone_tree(value) if clone else value
    state["callbacks"] = cb_states
    cbstate: dict[str, Any] = {}
    for key, value in list(learner.cbstate.items()):
        encoded = encode(value, clone)
        if encoded is SKIP:
            warnings.warn(
                f"cbstate[{key!r}] ({type(value).__name__}) is not plain data and is left out of the training state",
                stacklevel=2,
            )
            continue
        cbstate[key] = encoded
    state["cbstate"] = cbstate
    history = learner.cbstate.get("history")
    train = history.get(TrainingPhase()) if isinstance(history, Mapping) else None
    state["epoch"] = train.epochs if train is not None else 0
    state["step"] = train.steps if train is not None else 0
    state["rng"] = learner.random_state.get()
    return state


def _rng_problem(rng: Any) -> str | None:
    """What keeps ``rng`` from being the RNG states :func:`rng_state` writes, or None."""
    if not isinstance(rng, Mapping):
        return f"its rng states are {a_type(rng)}, not a dict"
    size = torch.get_rng_state().numel()
    own = rng.get("torch")
    if not (isinstance(own, torch.Tensor) and own.dtype == torch.uint8 and own.shape == (size,)):
        return f"its rng['torch'] is not torch's generator state (a uint8 tensor of {size} bytes)"
    cuda = rng.get("cuda", [])
    states = cuda if isinstance(cuda, (list, tuple)) else [None]
    if not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in states):
        return "its rng['cuda'] is not a list of CUDA generator states (uint8 tensors)"
    if "python" in rng and not _is_words(rng["python"], 3, 1, 625, 624):
        return "its rng['python'] is not Python's random state (version, 625 ints, gauss)"
    if "numpy" in rng and not (_is_words(rng["numpy"], 5, 1, 624, 624) and rng["numpy"][0] == "MT19937"):
        return "its rng['numpy'] is not NumPy's random state (name, 624 ints, position, has_gauss, gauss)"
    return None


def _is_words(state: Any, length: int, index: int, words: int, last: int) -> bool:
    """Whether ``state`` is a sequence of ``length`` whose item ``index`` is ``words`` 32-bit ints (the last one at
    most ``last`` when ``words`` counts a position too) and whose other items are scalars, as Python and NumPy save
    a Mersenne Twister."""
    if not isinstance(state, (list, tuple)) or len(state) != length:
        return False
    keys = state[index]
    if not (isinstance(keys, (list, tuple)) and len(keys) == words and all(type(k) is int for k in keys)):
        return False
    if not all(0 <= k < 2**32 for k in keys) or (words > last and keys[-1] > last):
        return False
    scalars = (int, float, str, type(None))
    return all(type(v) in scalars for i, v in enumerate(state) if i != index)


def _check_state(state: Any, where: str) -> dict[str, Any]:
    """Check that ``state`` has the shape :func:`training_state` writes; return its ``cbstate``, decoded.

    Anything else raises :class:`CheckpointError` naming ``where`` and the bad part. Changes nothing.
    """
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not an asyncloop training state (no format {FORMAT!r} marker)")
    if "version" not in state:
        raise malformed(where, "it has no version")
    version = state["version"]
    if type(version) is not int:
        raise malformed(where, f"its version is {version!r}, not an int")
    if version > VERSION:
        raise CheckpointError(
            f"{where} was written by a newer asyncloop (state version {version}, this one reads {VERSION}); "
            f"upgrade asyncloop"
        )
    for key in ("epoch", "step"):
        if key in state and type(state[key]) is not int:
            raise malformed(where, f"its {key} is {state[key]!r}, not an int")
    if "optimizer_class" in state and type(state["optimizer_class"]) is not str:
        raise malformed(where, f"its optimizer_class is {a_type(state['optimizer_class'])}, not a str")
    weights = state.get("model")
    if isinstance(weights, Mapping):
        for name, value in weights.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                raise malformed(where, f"its model weights hold {name!r}: {a_type(value)}, not a tensor")
    callbacks = state.get("callbacks", {})
    if not isinstance(callbacks, Mapping) or not all(isinstance(key, str) for key in callbacks):
        raise malformed(where, f"its callbacks' states are {a_type(callbacks)}, not a dict")
    if "rng" in state:
        problem = _rng_problem(state["rng"])
        if problem is not None:
            raise malformed(where, problem)
    return decode_cbstate(state.get("cbstate", {}), where)


_MISMATCH_HINT = (
    "build the learner with the same model, optimizer and callbacks as when the checkpoint was written"
)


def _model_mismatch(model: torch.nn.Module, weights: Any) -> str | None:
    """What keeps ``weights`` from loading strictly into ``model``, or None."""
    if not isinstance(weights, Mapping):
        return f"its model weights are a {type(weights).__name__}, not a state_dict"
    own = model.state_dict()
    problems = []
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing:
        problems.append(f"missing weights {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected weights {', '.join(str(k) for k in unexpected)}")
    for key, value in own.items():
        saved = weights.get(key)
        if isinstance(value, torch.Tensor) and isinstance(saved, torch.Tensor) and saved.shape != value.shape:
            problems.append(f"{key} has shape {tuple(saved.shape)} in the checkpoint, {tuple(value.shape)} in the model")
    return "; ".join(problems) or None


def _optimizer_mismatch(optimizer: torch.optim.Optimizer, saved: Any) -> str | None:
    """What keeps the optimizer state ``saved`` from loading into ``optimizer``, or None."""
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    if not isinstance(groups, (list, tuple)) or not isinstance(saved.get("state"), Mapping):
        return "its optimizer state is not an optimizer state_dict"
    if len(groups) != len(optimizer.param_groups):
        return f"its optimizer has {len(groups)} parameter group(s), the learner's has {len(optimizer.param_groups)}"
    for i, (group, own) in enumerate(zip(groups, optimizer.param_groups)):
        params = group.get("params") if isinstance(group, Mapping) else None
        if not isinstance(params, (list, tuple)) or len(params) != len(own["params"]):
            count = len(params) if isinstance(params, (list, tuple)) else "no"
            return (
                f"parameter group {i} of its optimizer has {count} parameter(s), the learner's has "
                f"{len(own['params'])}"
            )
    return None


def _compatibility(learner: Learner, state: Mapping[str, Any]) -> tuple[list[str], bool]:
    """What in ``state`` does not match the learner's optimizer class and stateful callbacks (one sentence each),
    and whether the optimizer state can be loaded (its class matches, or the state does not name it)."""
    problems: list[str] = []
    optimizer_ok = True
    saved_class = state.get("optimizer_class")
    if "optimizer" in state and saved_class is not None:
        own = type(learner.optimizer).__qualname__
        if own != saved_class:
            problems.append(f"its optimizer is {saved_class}, the learner's is {own}")
            optimizer_ok = False
    callbacks = learner._callbacks
    saved = state.get("callbacks", {})
    keys = [callback_key(callbacks, i) for i in range(len(callbacks))]
    with_state = {key for key, cb in zip(keys, callbacks) if getattr(cb, "state_dict", None) is not None}
    for key in saved:
        if key not in with_state:
            problems.append(f"it holds the state of {key}, which this learner lacks")
    for key, cb in zip(keys, callbacks):
        stateful = getattr(cb, "load_state_dict", None) is not None and getattr(cb, "state_dict", None) is not None
        if stateful and key not in saved:
            problems.append(f"it holds no state for the learner's {key}")
    return problems, optimizer_ok


def load_training_state(
    learner: Learner, state: Mapping[str, Any], *, where: str = "the state", strict: bool = True
) -> None:
    """Restore ``learner`` from :func:`training_state` (``Learner.load_state_dict()``).

    Model and optimizer ``load_state_dict`` (tensors move to where the parameters are), every stateful
    callback's ``load_state_dict`` (matched by class name and occurrence; with ``strict=False``, callbacks absent
    from the state keep theirs), the saved ``cbstate`` entries (replaced), and the RNG states.

    All or nothing: a state that does not fit the learner (other model weights or shapes, another optimizer
    layout, a callback that rejects its state) raises :class:`CheckpointError` naming ``where`` and what does
    not match, and leaves the learner as it was. So does a malformed state (a file that loads with
    ``weights_only=True`` can hold anything: a version that is a string, a cbstate that is a list, a History
    without its fields, RNG states of the wrong shape...), checked before anything is changed.

    ``strict`` (the default) also refuses a state whose optimizer class differs from the learner's, that holds
    the state of a callback the learner lacks, or that lacks the state of one of the learner's stateful callbacks,
    naming each mismatch. ``strict=False`` warns once per mismatch and loads the rest: another optimizer class
    keeps the learner's optimizer state, a callback without saved state keeps its own.
    """
    cbstate = _check_state(state, where)
    if learner.session is not None:
        raise RuntimeError(
            "cannot load a training state while fit() is running; load it before fit, or use fit(..., resume=path)"
        )
    had_optimizer = learner._optimizer
    problems, optimizer_ok = _compatibility(learner, state)
    if problems and strict:
        learner._optimizer = had_optimizer
        raise CheckpointError(
            f"cannot load {where} into this learner: {'; '.join(problems)}; nothing was changed; "
            f"{_MISMATCH_HINT}, or pass strict=False to load the rest"
        )
    for problem in problems:
        kept = " (the learner keeps its optimizer state)" if problem.startswith("its optimizer is") else ""
        warnings.warn(f"loading {where} with strict=False: {problem}{kept}", stacklevel=3)
    model = learner.model
    if "model" in state:
        if not isinstance(model, torch.nn.Module):
            raise CheckpointError(f"{where} has model weights, but learner.model is not a torch.nn.Module")
        problem = _model_mismatch(model, state["model"])
        if problem is not None:
            learner._optimizer = had_optimizer
            raise CheckpointError(f"cannot load {where} into this learner: {problem}; {_MISMATCH_HINT}")
    load_optimizer = "optimizer" in state and optimizer_ok
    if load_optimizer:
        problem = _optimizer_mismatch(learner.optimizer, state["optimizer"])
        if problem is not None:
            learner._optimizer = had_optimizer
            raise CheckpointError(f"cannot load {where} into this learner: {problem}; {_MISMATCH_HINT}")

    # Snapshot what loading changes, so that a failure part way (a callback rejecting its state, ...) is undone.
    callbacks = learner._callbacks
    saved = state.get("callbacks", {})
    stateful = [
        (callback_key(callbacks, i), cb)
        for i, cb in enumerate(callbacks)
        if getattr(cb, "load_state_dict", None) is not None and getattr(cb, "state_dict", None) is not None
    ]
    before = {
        "model": _clone_tree(model.state_dict()) if "model" in state else None,
        "optimizer": _clone_tree(learner.optimizer.state_dict()) if load_optimizer else None,
        "callbacks": [(cb, _clone_tree(cb.state_dict())) for key, cb in stateful if key in saved],
        "cbstate": dict(learner.cbstate),
        "rng": learner.random_state.get(),
    }
    try:
        if "model" in state:
            model.load_state_dict(state["model"])
        if load_optimizer:
            learner.optimizer.load_state_dict(state["optimizer"])
        for i, cb in enumerate(callbacks):
            key = callback_key(callbacks, i)
            fn = getattr(cb, "load_state_dict", None)
            if fn is not None and key in saved:
                fn(saved[key])
        learner.cbstate.update(cbstate)
        if "rng" in state:
            learner.random_state.set(state["rng"])
    except Exception as exc:
        if before["model"] is not None:
            model.load_state_dict(before["model"])
        if before["optimizer"] is not None:
            if had_optimizer is None:
                learner._optimizer = None
            else:
                learner.optimizer.load_state_dict(before["optimizer"])
        for cb, cb_state in before["callbacks"]:
            cb.load_state_dict(cb_state)
        learner.cbstate.clear()
        learner.cbstate.update(before["cbstate"])
        learner.random_state.set(before["rng"])
        raise CheckpointError(
            f"cannot load {where} into this learner ({type(exc).__name__}: {exc}); nothing was changed; "
            f"{_MISMATCH_HINT}"
        ) from exc


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------


def save_checkpoint(learner: Learner, path: str | os.PathLike[str]) -> None:
    """Write ``learner.state_dict()`` to ``path`` atomically."""
    save_file(training_state(learner, clone=False), path)


def load_checkpoint(learner: Learner, path: str | os.PathLike[str], *, strict: bool = True) -> None:
    """Restore ``learner`` from a checkpoint file (or a Checkpointer folder: its latest checkpoint); ``strict`` as
    for :func:`load_training_state`."""
    load_training_state(learner, read_checkpoint(path), where=str(path), strict=strict)
