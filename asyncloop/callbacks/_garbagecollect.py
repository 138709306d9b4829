"""GarbageCollect: run Python's garbage collector (and trim the C heap) every few steps."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from typing import Any

from .._callback import Callback, on
from ..events import StepEnd
from ..phases import Phase


def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return None


class GarbageCollect(Callback):
    """Every ``n_steps`` steps (training and validation alike), run ``gc.collect()`` and, on Linux with glibc,
    ``malloc_trim(0)`` to hand freed memory back to the system.

    Use it against memory that piles up in long runs (reference cycles, fragmented heaps from data loading). It
    runs on the training thread: a collection stalls the loop (and, holding the GIL, every thread) for its
    duration, so keep ``n_steps`` large. It touches no learner state.

    Example::

        learner = Learner(model, loss_fn, data=data, callbacks=[GarbageCollect(500)])
    """

    def __init__(self, n_steps: int = 100) -> None:
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"GarbageCollect: n_steps must be an int >= 1, got {n_steps!r}")
        self.n_steps = n_steps
        self._count = 0
        self._trim = _malloc_trim()
        self.collections = 0

    @on(StepEnd)
    def step_end(self, event: StepEnd, phase: Phase, learner: Any) -> None:
        self._count += 1
        if self._count >= self.n_steps:
            self._count = 0
            gc.collect()
            if self._trim is not None:
                self._trim(0)
            self.collections += 1

    def __repr__(self) -> str:
        return f"GarbageCollect({self.n_steps})"
