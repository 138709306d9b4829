"""Saving and loading: the learner's full training state, model weights, atomic writes, safe loading.

* :func:`training_state` / :func:`load_training_state` -- the whole state of a run as plain data: model and
  optimizer ``state_dict``s, the ``state_dict()`` of every stateful callback, the shared ``cbstate`` histories
  (epoch/step counters, metrics, hyperparameters, traces) and the RNG states (torch CPU and CUDA, Python's
  ``random``, NumPy's global generator when NumPy is installed). ``Learner.state_dict()`` and
  ``Learner.load_state_dict()`` call them.
* :func:`save_checkpoint` / :func:`load_checkpoint` -- that state in a file.
* :func:`save_model` / :func:`load_model` -- weights only.
* :func:`atomic_write` -- temporary file in the same folder, flush, fsync, rename, fsync the folder: a crash
  leaves the old file or the new one, never a torn one.

Everything saved is plain data (dicts, lists, tuples, numbers, strings, tensors), and everything is loaded with
``torch.load(..., weights_only=True)``: loading a file never runs code from it. Phases, which key the per-phase
histories, are saved by class name and looked up among the already defined :class:`asyncloop.Phase` subclasses.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from ._exceptions import CheckpointError

from .phases import Phase
from ._containers import History, PhaseDict, SeriesHistory
from ._snapshots import _clone_tree
from ._views import Protected

if TYPE_CHECKING:
    from ._learner import Learner

__all__ = [
    "training_state",
    "load_training_state",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "save_model",
    "load_model",
    "atomic_write",
    "LATEST",
]

FORMAT = "asyncloop.training_state"
MODEL_FORMAT = "asyncloop.model"
VERSION = 1
#: Name of the pointer file a :class:`asyncloop.Checkpointer` keeps next to its checkpoints.
LATEST = "latest"


# --------------------------------------------------------------------------------------------------------------
# Atomic, durable writes
# --------------------------------------------------------------------------------------------------------------


def _fsync(fd: int) -> None:
    os.fsync(fd)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``folder`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        _fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically: ``write(file)`` into a temporary file next to it, fsync, rename, fsync the folder.

    On any error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            _fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


# --------------------------------------------------------------------------------------------------------------
# Plain-data encoding of cbstate
# --------------------------------------------------------------------------------------------------------------

_PLAIN = (type(None), bool, int, float, str, torch.Tensor)


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in value.items())
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


def _encode(value: Any, clone: bool) -> Any:
    """Encode one cbstate entry as plain data, or return ``_SKIP``."""
    if isinstance(value, History):
        return {"__type__": "History", "epochs": value.epochs, "steps": value.steps, "steps_epoch": value.steps_epoch}
    if isinstance(value, SeriesHistory):
        series = value.state_dict()
        if not _is_plain(series):
            return _SKIP
        return {"__type__": "SeriesHistory", "series": _clone_tree(series) if clone else series}
    if isinstance(value, PhaseDict):
        factory = getattr(value.default_factory, "__name__", None)
        if factory not in _FACTORIES:
            return _SKIP
        items = []
        for phase, entry in list(value.items()):
            encoded = _encode(entry, clone)
            if encoded is _SKIP or not isinstance(phase, Phase):
                return _SKIP
            items.append((_phase_name(phase), encoded))
        return {"__type__": "PhaseDict", "factory": factory, "items": items}
    if _is_plain(value):
        return _clone_tree(value) if clone else value
    return _SKIP


def _decode(value: Any) -> Any:
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
                out[_phase_from_name(name)] = _decode(entry)
            return out
        raise CheckpointError(f"unknown entry type {kind!r} in a checkpoint's cbstate")
    return value


class _Skip:
    def __repr__(self) -> str:
        return "<skip>"


_SKIP = _Skip()


# --------------------------------------------------------------------------------------------------------------
# RNG states
# --------------------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The global RNG states: torch CPU (and every CUDA device, if CUDA is initialised), ``random``, NumPy."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    version, internal, gauss = random.getstate()
    state["python"] = (version, list(internal), gauss)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is optional
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = (str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached))
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (parts absent here, e.g. CUDA without a GPU, are skipped)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        try:
            import numpy as np
        except ImportError:  # pragma: no cover
            return
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# --------------------------------------------------------------------------------------------------------------
# The learner's training state
# --------------------------------------------------------------------------------------------------------------


def callback_key(callbacks: list[Any], index: int) -> str:
    """``"Scheduler"`` for the first Scheduler, ``"Scheduler#1"`` for the second, and so on."""
    name = _callback_class(callbacks[index]).__name__
    occurrence = sum(1 for cb in callbacks[:index] if _callback_class(cb).__name__ == name)
    return name if occurrence == 0 else f"{name}#{occurrence}"


def _callback_class(cb: Any) -> type:
    return type(getattr(cb, "wrapped", None) or cb)


def unprotect(learner: Any) -> Learner:
    """The learner behind a handler's protected view (for library callbacks that declared what they read)."""
    return object.__getattribute__(learner, "_obj") if isinstance(learner, Protected) else learner


def training_state(learner: Learner, *, clone: bool = True) -> dict[str, Any]:
    """The full training state of ``learner`` as plain data (``Learner.state_dict()``).

    With ``clone`` every tensor is a copy, so the result stays valid while training goes on (what a detached
    :class:`asyncloop.Checkpointer` needs). ``cbstate`` entries that are not plain data nor known histories are
    left out with a warning.
    """
    model = learner.model
    state: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if isinstance(model, torch.nn.Module):
        weights = model.state_dict()
        state["model"] = {k: v.detach().clone() for k, v in weights.items()} if clone else dict(weights)
    if learner._optimizer is not None or (
        learner._optimizer_factory is not None and isinstance(model, torch.nn.Module)
    ):
        opt = learner.optimizer.state_dict()
        state["optimizer"] = _clone_tree(opt) if clone else opt
    callbacks = learner._callbacks
    cb_states: dict[str, Any] = {}
    for i, cb in enumerate(callbacks):
        fn = getattr(cb, "state_dict", None)
        if fn is None:
            continue
        key = callback_key(callbacks, i)
        value = fn()
        if not _is_plain(value):
            raise CheckpointError(
                f"{cb.name}.state_dict() returned something other than plain data (dicts, lists, tuples, numbers, "
                f"strings, tensors): {value!r}; a checkpoint must load without unpickling code"
            )
        cb_states[key] = _clone_tree(value) if clone else value
    state["callbacks"] = cb_states
    cbstate: dict[str, Any] = {}
    for key, value in list(learner.cbstate.items()):
        encoded = _encode(value, clone)
        if encoded is _SKIP:
            warnings.warn(
                f"cbstate[{key!r}] ({type(value).__name__}) is not plain data and is left out of the training state",
                stacklevel=2,
            )
            continue
        cbstate[key] = encoded
    state["cbstate"] = cbstate
    history = learner.cbstate.get("history")
    from .phases import TrainingPhase

    train = history.get(TrainingPhase()) if isinstance(history, Mapping) else None
    state["epoch"] = train.epochs if train is not None else 0
    state["step"] = train.steps if train is not None else 0
    state["rng"] = rng_state()
    return state


def _check_state(state: Any, where: str) -> None:
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not an asyncloop training state (no format {FORMAT!r} marker)")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{where} was written by a newer asyncloop (state version {state['version']}, this one reads {VERSION}); "
            f"upgrade asyncloop"
        )


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


def load_training_state(learner: Learner, state: Mapping[str, Any], *, where: str = "the state") -> None:
    """Restore ``learner`` from :func:`training_state` (``Learner.load_state_dict()``).

    Model and optimizer ``load_state_dict`` (tensors move to where the parameters are), every stateful
    callback's ``load_state_dict`` (matched by class name and occurrence; callbacks absent from the state keep
    theirs), the saved ``cbstate`` entries (replaced), and the RNG states.

    All or nothing: a state that does not fit the learner (other model weights or shapes, another optimizer
    layout, a callback that rejects its state) raises :class:`CheckpointError` naming ``where`` and what does
    not match, and leaves the learner as it was.
    """
    _check_state(state, where)
    if learner.session is not None:
        raise RuntimeError(
            "cannot load a training state while fit() is running; load it before fit, or use fit(..., resume=path)"
        )
    model = learner.model
    if "model" in state:
        if not isinstance(model, torch.nn.Module):
            raise CheckpointError(f"{where} has model weights, but learner.model is not a torch.nn.Module")
        problem = _model_mismatch(model, state["model"])
        if problem is not None:
            raise CheckpointError(f"cannot load {where} into this learner: {problem}; {_MISMATCH_HINT}")
    had_optimizer = learner._optimizer
    if "optimizer" in state:
        problem = _optimizer_mismatch(learner.optimizer, state["optimizer"])
        if problem is not None:
            learner._optimizer = had_optimizer
            raise CheckpointError(f"cannot load {where} into this learner: {problem}; {_MISMATCH_HINT}")
    cbstate = {key: _decode(value) for key, value in state.get("cbstate", {}).items()}

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
        "optimizer": _clone_tree(learner.optimizer.state_dict()) if "optimizer" in state else None,
        "callbacks": [(cb, _clone_tree(cb.state_dict())) for key, cb in stateful if key in saved],
        "cbstate": dict(learner.cbstate),
        "rng": rng_state(),
    }
    try:
        if "model" in state:
            model.load_state_dict(state["model"])
        if "optimizer" in state:
            learner.optimizer.load_state_dict(state["optimizer"])
        for i, cb in enumerate(callbacks):
            key = callback_key(callbacks, i)
            fn = getattr(cb, "load_state_dict", None)
            if fn is not None and key in saved:
                fn(saved[key])
        learner.cbstate.update(cbstate)
        if "rng" in state:
            set_rng_state(state["rng"])
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
        set_rng_state(before["rng"])
        raise CheckpointError(
            f"cannot load {where} into this learner ({type(exc).__name__}: {exc}); nothing was changed; "
            f"{_MISMATCH_HINT}"
        ) from exc


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------


def _save(obj: Any, path: str | os.PathLike[str]) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


_CORRUPT = "the file is truncated or corrupted; load an earlier checkpoint instead"


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a file written by asyncloop safely (``torch.load(weights_only=True)``) and return its contents.

    A folder means the checkpoint its ``latest`` pointer names. A missing, truncated or corrupted file, or one
    that needs code to load, raises :class:`CheckpointError` naming the file; nothing on disk is changed.
    """
    path = Path(path)
    if path.is_dir():
        pointer = path / LATEST
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except OSError:
            raise CheckpointError(
                f"{path} is a folder without a {LATEST!r} pointer file; pass the path of a checkpoint file"
            ) from None
        path = path / name
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file") from None
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise CheckpointError(f"cannot load {path}: {_CORRUPT}") from exc
        raise CheckpointError(
            f"cannot load {path}: it holds objects that need code to load, and asyncloop loads only plain data "
            f"and tensors; it was not written by asyncloop"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"cannot load {path}: {_CORRUPT}") from exc


def save_checkpoint(learner: Learner, path: str | os.PathLike[str]) -> None:
    """Write ``learner.state_dict()`` to ``path`` atomically."""
    _save(training_state(learner, clone=False), path)


def load_checkpoint(learner: Learner, path: str | os.PathLike[str]) -> None:
    """Restore ``learner`` from a checkpoint file (or a Checkpointer folder: its latest checkpoint)."""
    load_training_state(learner, read_checkpoint(path), where=str(path))


def save_model(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Save the weights of ``model`` (its ``state_dict``, on the CPU) to ``path``, atomically.

    Only tensors are saved, never code: rebuild the model and call :func:`load_model` to load them.

    Example::

        save_model(learner.model, "model.pt")
        model = load_model("model.pt", MyModel())
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"save_model saves a torch.nn.Module's weights, got {type(model).__name__}")
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _save({"format": MODEL_FORMAT, "version": VERSION, "model": weights}, path)


def load_model(path: str | os.PathLike[str], model: torch.nn.Module | None = None) -> Any:
    """Load weights saved by :func:`save_model` (or the model of a training checkpoint) without unpickling code.

    With ``model``, load the weights into it (strictly) and return it; without, return the ``state_dict``.

    Example::

        model = load_model("model.pt", MyModel())   # weights written by save_model
        weights = load_model("checkpoints")          # the model of a Checkpointer folder's latest checkpoint
    """
    data = read_checkpoint(path)
    if not isinstance(data, Mapping) or data.get("format") not in (MODEL_FORMAT, FORMAT) or "model" not in data:
        raise CheckpointError(
            f"{path} holds no asyncloop model weights; was it written by save_model or a Checkpointer?"
        )
    weights = data["model"]
    if model is None:
        return weights
    model.load_state_dict(weights)
    return model
