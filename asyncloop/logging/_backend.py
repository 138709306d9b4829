"""The backend interface: :class:`LoggerBackend` and :func:`log_to`, which fans one loggable out to backends."""

from __future__ import annotations

import abc
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from ..loggables import Loggable


class LoggerBackend(abc.ABC):
    """Where logging callbacks send :mod:`asyncloop.loggables` (FluxTraining's ``LoggerBackend``).

    To support a new destination, subclass it and implement :meth:`log_to`; override :meth:`flush` and
    :meth:`close` if it holds resources. Semantics every backend follows:

    * ``log_to`` is plain sync code and may block: asyncloop only calls it from a detached logger's worker
      thread (or, under the ``LinearRunner``, from the training thread), never on a trio event loop;
    * detached loggers that share a backend instance call it one at a time, in the loop's event order (as the
      ``LinearRunner`` does), but it may still be called from several threads at once (an inline logger and a
      detached one, another learner's fit, a thread of yours): guard shared state with a lock;
    * it opens its resources lazily and :meth:`close` is idempotent; a closed backend reopens on the next
      ``log_to`` (one backend object can serve several fits);
    * it logs the loggable kinds it can show and silently skips the others;
    * it pickles (for a logger with ``detached="process"``, whose copy runs in a worker process): a pickled copy
      starts closed. :class:`LazyResource` does this for the resource it holds; a backend with other locks or open
      handles drops them in ``__getstate__``.

    The logging callbacks call :meth:`flush` at ``FitEnd`` and :meth:`close` when the run ends, however it ends
    (``Callback.teardown``).
    """

    @abc.abstractmethod
    def log_to(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...] = ()) -> None:
        """Log ``loggable`` under ``group`` and ``name`` at step ``index`` (unique per group and name)."""

    def flush(self) -> None:
        """Push buffered data to its destination. Default: nothing to do."""

    def close(self) -> None:
        """Flush and release resources (files, writers). Idempotent. Default: :meth:`flush`."""
        self.flush()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


R = TypeVar("R")


class LazyResource(Generic[R]):
    """The one resource (file, writer) a backend writes through: opened on first use, closed idempotently.

    ``log_to`` may run on several threads at once (see :class:`LoggerBackend`), so every use holds :attr:`lock`::

        with self._out.lock:
            self._out.use().write(...)

    :meth:`flush` and :meth:`close` take the lock themselves and do nothing while the resource is closed; after
    :meth:`close` the next :meth:`use` opens it again (one backend can serve several fits).
    """

    __slots__ = ("lock", "value", "_open", "_flush", "_close")

    def __init__(self, opener: Callable[[], R], *, flush: Callable[[R], Any], close: Callable[[R], Any]) -> None:
        self.lock = threading.Lock()
        #: The open resource, or ``None`` while closed.
        self.value: R | None = None
        self._open, self._flush, self._close = opener, flush, close

    def use(self) -> R:
        """The resource, opened now if it is closed. Call it with :attr:`lock` held."""
        value = self.value
        if value is None:
            value = self.value = self._open()
        return value

    def __getstate__(self) -> tuple[Any, Any, Any]:
        # Pickled (a process actor's copy): the copy starts closed, with a lock of its own.
        return self._open, self._flush, self._close

    def __setstate__(self, state: tuple[Any, Any, Any]) -> None:
        self.lock = threading.Lock()
        self.value = None
        self._open, self._flush, self._close = state

    def flush(self) -> None:
        """Flush the resource if it is open."""
        with self.lock:
            if self.value is not None:
                self._flush(self.value)

    def close(self) -> None:
        """Close the resource if it is open (idempotent)."""
        with self.lock:
            value, self.value = self.value, None
            if value is not None:
                self._close(value)


def _as_group(group: Any) -> tuple[str, ...]:
    if isinstance(group, str):
        return (group,)
    if isinstance(group, tuple) and all(isinstance(g, str) for g in group):
        return group
    if isinstance(group, list) and all(isinstance(g, str) for g in group):
        return tuple(group)
    raise TypeError(f"group must be a str or a tuple of str, got {group!r}")


def _as_backends(backends: Any) -> tuple[LoggerBackend, ...]:
    if isinstance(backends, LoggerBackend):
        return (backends,)
    if isinstance(backends, (tuple, list)) and all(isinstance(b, LoggerBackend) for b in backends):
        return tuple(backends)
    raise TypeError(f"log_to takes a LoggerBackend or a tuple of them, got {backends!r}")


def log_to(
    backends: LoggerBackend | Iterable[LoggerBackend],
    loggable: Loggable,
    name: str,
    index: int,
    group: str | tuple[str, ...] = (),
) -> None:
    """Log ``loggable`` to every backend of ``backends`` as ``name`` at ``index`` under ``group``.

    ``group`` is a str or a tuple of str (e.g. ``("Step", "TrainingPhase", "Metrics")``); TensorBoard joins it
    with the name into the tag ``Step/TrainingPhase/Metrics/Loss``. Every backend gets the loggable even if an
    earlier one raised; the first error is then re-raised.
    """
    targets = _as_backends(backends)
    if not isinstance(loggable, Loggable):
        raise TypeError(f"log_to takes a loggable such as loggables.Value(0.5), got {loggable!r}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r}")
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"index must be an int, got {index!r}")
    groups = _as_group(group)
    error: Exception | None = None
    for backend in targets:
        try:
            backend.log_to(loggable, name, index, groups)
        except Exception as exc:
            exc.add_note(f"asyncloop: raised by {backend!r}.log_to({loggable!r}, {name!r}, {index})")
            error = error or exc
    if error is not None:
        raise error


def default_run_name() -> str:
    """A fresh run name: local time plus a random suffix, e.g. ``"20261125-101500-3fa2c1"``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def is_training_step(group: tuple[str, ...]) -> bool:
    """Whether a point of this group is indexed by training steps: ``Step/<phase>/...`` where ``<phase>`` names a
    training phase (``TrainingPhase`` or any loaded subclass of ``AbstractTrainingPhase``).

    The backends use it to tell where a resumed fit starts: its first such point. Steps of a validation phase,
    of ``validate()``'s ``EvaluationPhase`` or of any other phase are not training steps: a ``validate()`` after a
    fit must not look like the fit restarting at step 1.
    """
    return training_step_test()(group)


def training_step_test() -> Callable[[tuple[str, ...]], bool]:
    """:func:`is_training_step` with the training phases' names looked up once, for a loop over many groups (the
    records of a log being reopened)."""
    names = _training_phase_names()
    return lambda group: bool(group) and group[0] == "Step" and (len(group) == 1 or group[1] in names)


def _training_phase_names() -> set[str]:
    """The class names of ``AbstractTrainingPhase`` and every subclass loaded now (user phases included)."""
    from ..phases import AbstractTrainingPhase

    names: set[str] = set()
    todo = [AbstractTrainingPhase]
    while todo:
        cls = todo.pop()
        if cls.__name__ not in names:
            names.add(cls.__name__)
            todo.extend(cls.__subclasses__())
    return names
