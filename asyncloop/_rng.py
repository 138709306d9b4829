"""Per-learner random state: the global generators, lent to one learner at a time (private).

torch's default CPU generator, the CUDA generators, Python's ``random`` and NumPy's global generator are
process-wide, and two fits may run at once on two worker threads. So every :class:`asyncloop.Learner` owns a
:class:`LearnerRandomState`, and the loop's code that draws random numbers (each step, each ``iter()``/``next()``
on the epoch's data, the epoch events) runs in a :meth:`LearnerRandomState.region` (a built-in phase's step and
the ``next()`` that fetched its batch share one, see ``_steps.default_epoch``):

* a region takes one process-wide re-entrant lock, so no two learners' regions overlap;
* it installs the learner's state in the global generators unless they hold it already: the module tracks the
  *owner*, the learner whose state the global generators hold now. A region of the owner costs only the lock;
* on exit the state stays installed (the learner stays the owner). The next region of *another* learner first
  saves the globals back into the owner, then installs its own state (a *swap*).

A learner built without ``seed`` becomes the owner at once (its state is the global state of that moment), so
``torch.manual_seed(0); Learner(...)`` trains exactly as it always did. ``Learner(seed=s)`` starts from the state
``seed_everything(s)`` would give, without touching the global generators.

Pitfall: only regions are guarded. Code that draws random numbers on another thread while a fit runs (detached
actors, DataLoader workers, the caller's own code) draws from whichever learner owns the globals at that moment.
"""

from __future__ import annotations

import random
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import torch

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is optional
    np = None  # type: ignore[assignment]

#: The one lock every region of every learner takes (re-entrant: regions nest on the worker thread).
_LOCK = threading.RLock()
#: The learner state the global generators hold now (a weak reference), or None.
_owner: weakref.ReferenceType[LearnerRandomState] | None = None
#: How many times a region installed a learner's state (swaps); for tests and measurements.
swaps = 0


def _cuda_ready() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _capture() -> dict[str, Any]:
    """The global generators' states as they come (cheap: what a swap saves)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if _cuda_ready():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if np is not None:
        state["numpy"] = np.random.get_state()
    return state


def _install_raw(state: Mapping[str, Any]) -> None:
    """Install what :func:`_capture` returned (parts absent here, e.g. CUDA without a GPU, are skipped)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state and np is not None:
        np.random.set_state(state["numpy"])


def _convert(state: Mapping[str, Any], words: Any, numpy_state: Any) -> dict[str, Any]:
    """A copy of ``state`` with Python's words made by ``words`` and NumPy's state by ``numpy_state``."""
    out: dict[str, Any] = {"torch": state["torch"].clone()}
    if "cuda" in state:
        out["cuda"] = [t.clone() for t in state["cuda"]]
    if "python" in state:
        version, internal, gauss = state["python"]
        out["python"] = (version, words(internal), gauss)
    if "numpy" in state and np is not None:
        out["numpy"] = numpy_state(*state["numpy"])
    return out


def _plain(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A captured state as plain data (lists of ints, fresh tensors): what a checkpoint holds."""
    return _convert(
        raw,
        list,
        lambda kind, keys, pos, has_gauss, cached: (str(kind), keys.tolist(), int(pos), int(has_gauss), float(cached)),
    )


def _raw(state: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`_plain`, as :func:`_capture` returns it (a copy that shares nothing with ``state``)."""
    return _convert(
        state,
        tuple,
        lambda kind, keys, pos, has_gauss, cached: (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached),
    )


def global_state() -> dict[str, Any]:
    """The global RNG states as plain data: torch CPU (and every CUDA device, if CUDA is initialised),
    ``random``, NumPy."""
    return _plain(_capture())


def set_global_state(state: Mapping[str, Any]) -> None:
    """Install what :func:`global_state` returned (parts absent here, e.g. CUDA without a GPU, are skipped)."""
    _install_raw(_raw(state))


def seeded_state(seed: int) -> dict[str, Any]:
    """The global state :func:`seed_everything` gives (CUDA aside), computed without touching the globals."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    version, internal, gauss = random.Random(seed).getstate()
    state: dict[str, Any] = {"torch": generator.get_state(), "python": (version, list(internal), gauss)}
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.RandomState(seed).get_state()
        state["numpy"] = (str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached))
    return state


def check_seed(seed: Any, where: str) -> int | None:
    """``seed`` if it is None or an int >= 0, else a ``TypeError``/``ValueError`` that says what to pass."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{where} must be an int >= 0 or None, got {seed!r}; pass e.g. seed=0")
    if seed < 0 or seed >= 2**63:
        raise ValueError(f"{where} must be an int in [0, 2**63), got {seed}; pass e.g. seed=0")
    return seed


def seed_everything(seed: int) -> int:
    """Seed torch (CPU and every CUDA device), Python's ``random`` and NumPy's global generator; return ``seed``.

    As Lightning's ``seed_everything``, without environment variables (``PYTHONHASHSEED`` only matters for a
    new interpreter, and DataLoader workers seed themselves from torch). A :class:`asyncloop.Learner` built
    afterwards without ``seed`` starts from this state; ``Learner(seed=s)`` gives the same without touching the
    global generators, which is what concurrent fits need.
    """
    seed = check_seed(seed, "seed")  # type: ignore[assignment]
    if seed is None:
        raise TypeError("seed must be an int >= 0, got None; pass e.g. seed_everything(0)")
    with _LOCK:
        random.seed(seed)
        if np is not None:
            np.random.seed(seed % 2**32)
        torch.manual_seed(seed)  # seeds every CUDA device too (lazily when CUDA is not initialised yet)
    return seed


class LearnerRandomState:
    """One learner's random state, and the regions in which the global generators hold it."""

    __slots__ = ("__weakref__", "_cuda_seed", "_saved")

    def __init__(self, seed: int | None = None) -> None:
        self._saved: dict[str, Any] | None = None  # None while this is the owner: the globals hold the state
        self._cuda_seed = seed
        if seed is None:
            self.adopt_globals()
        else:
            self._saved = _raw(seeded_state(seed))

    def __deepcopy__(self, memo: dict[int, Any]) -> LearnerRandomState:
        """An independent copy holding this state now (never the owner: it draws nothing from this one's stream)."""
        copy = LearnerRandomState.__new__(LearnerRandomState)
        copy._cuda_seed = self._cuda_seed
        with _LOCK:
            copy._saved = _capture() if self.owns_globals() else _raw(_plain(self._saved))  # type: ignore[arg-type]
        return copy

    def __copy__(self) -> LearnerRandomState:
        return self.__deepcopy__({})

    def adopt_globals(self) -> None:
        """Make the global generators' current state this learner's (it becomes the owner)."""
        global _owner
        with _LOCK:
            self._save_owner()
            self._saved = None
            _owner = weakref.ref(self)

    @staticmethod
    def _save_owner() -> None:
        owner = _owner() if _owner is not None else None
        if owner is not None:
            owner._saved = _capture()

    def owns_globals(self) -> bool:
        """Whether the global generators hold this learner's state now."""
        return _owner is not None and _owner() is self

    def region(self) -> LearnerRandomState:
        """``with state.region():`` runs its body with the global generators holding this learner's state, and no
        other learner's region overlapping (regions nest)."""
        return self

    def __enter__(self) -> None:
        _LOCK.acquire()
        if _owner is None or _owner() is not self:
            try:
                self._install()
            except BaseException:
                _LOCK.release()
                raise

    def __exit__(self, *exc: object) -> None:
        _LOCK.release()

    def _install(self) -> None:
        global _owner, swaps
        self._save_owner()
        saved = self._saved
        assert saved is not None, "a learner that is not the owner has its state saved"
        _install_raw(saved)
        if "cuda" not in saved and _cuda_ready():
            torch.cuda.manual_seed_all(self._derived_cuda_seed(saved))
        self._saved = None
        _owner = weakref.ref(self)
        swaps += 1

    def _derived_cuda_seed(self, saved: Mapping[str, Any]) -> int:
        """CUDA generators for a learner whose state was taken before CUDA was initialised: its seed, or one drawn
        from a copy of its CPU state (so its CPU stream is unchanged)."""
        if self._cuda_seed is not None:
            return self._cuda_seed
        generator = torch.Generator()
        generator.set_state(saved["torch"])
        return int(torch.randint(2**62, (1,), generator=generator))

    def get(self) -> dict[str, Any]:
        """This learner's state, in :func:`global_state`'s form (a copy).

        Takes the lock only while this learner owns the globals (while another learner's region runs, it does
        not), so the caller's trio loop can read a state without waiting for another fit's step."""
        saved = self._saved
        if saved is not None and not self.owns_globals():
            return _plain(saved)
        with _LOCK:
            if self.owns_globals():
                return global_state()
            assert self._saved is not None
            return _plain(self._saved)

    def set(self, state: Mapping[str, Any]) -> None:
        """Replace this learner's state (and the globals' too while it owns them); parts ``state`` lacks (CUDA,
        NumPy) are kept."""
        raw = _raw(state)
        saved = self._saved
        if saved is not None and not self.owns_globals():
            self._saved = {**saved, **raw}
            return
        with _LOCK:
            if self.owns_globals():
                _install_raw(raw)
            else:
                assert self._saved is not None
                self._saved = {**self._saved, **raw}
