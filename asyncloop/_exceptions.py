"""Every exception asyncloop raises, and the control-flow exceptions callbacks raise (private module).

All of them are importable from the top level (``asyncloop.CheckpointError``). Hierarchy::

    Exception
    ├── FitException                  control flow: raise from a handler to change the loop
    │   ├── CancelStepException       skip the rest of the step (no StepEnd)
    │   ├── CancelEpochException      skip the rest of the epoch (EpochEnd still fires)
    │   └── CancelFittingException    stop the fit; fit() returns FitResult(stopped=True)
    │       └── EarlyStopped          raised by EarlyStopping: criterion, monitor, value, epoch
    ├── SanityCheckException          a SanityCheck found an error-level problem
    ├── CheckpointError               a checkpoint could not be written or read (names the file)
    ├── StreamError                   a stream server refused a subscription, or the connection broke
    ├── RuntimeError
    │   ├── RankFailedError           distributed: another rank's session failed (names the rank and error)
    │   └── ProcessActorError         a process actor's worker died, or raised an error that does not pickle
    ├── AttributeError
    │   └── ProtectedError            a handler touched learner state outside its state_access
    └── ValueError
        ├── CallbackGraphError        the callback set cannot be ordered (raised by Learner(...))
        │   ├── WriteConflictError    two callbacks write the same state and no resolution says how
        │   ├── CallbackCycleError    the ordering constraints form a cycle
        │   ├── DetachedWriterError   a detached callback declares Write() access
        │   └── MissingStateError     a callback reads cbstate state that no callback writes
        └── EventLogFormatError       a file is not an asyncloop event log (or a newer or corrupt one)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stopping import StoppingCriterion


class FitException(Exception):
    """Base of the exceptions that change the control flow of a fit."""


class ProcessActorError(RuntimeError):
    """A process actor's worker (``detached = "process"``) failed in a way its own error cannot say: it died
    (killed, out of memory), or it raised an exception that cannot be pickled (then the message is
    ``"module.Type: message"`` and a note holds the worker's traceback)."""


class CancelStepException(FitException):
    """Cancel the current step: the rest of the step and its ``StepEnd`` are skipped, the epoch goes on."""


class CancelEpochException(FitException):
    """Cancel the current epoch: the remaining steps are skipped and ``EpochEnd`` still fires."""


class CancelFittingException(FitException):
    """Stop the fit. ``fit`` catches it, fires ``FitEnd`` and returns ``FitResult(stopped=True, reason=exc)``.

    ``epoch``/``step`` and the ``run_*`` functions let it propagate.
    """


class ProtectedError(AttributeError):
    """A handler read or wrote learner state its callback's ``state_access`` does not grant."""


class SanityCheckException(Exception):
    """Raised by :class:`asyncloop.SanityCheck` when a check with ``throw_error=True`` fails."""


class CallbackGraphError(ValueError):
    """The callbacks cannot be ordered. Raised when the learner's callbacks are set, never mid-fit.

    ``callbacks`` holds the callbacks involved.
    """

    def __init__(self, message: str, *callbacks: Any) -> None:
        super().__init__(message)
        self.callbacks = callbacks


class WriteConflictError(CallbackGraphError):
    """Two callbacks write overlapping state and ``resolve_conflict`` does not order them."""


class CallbackCycleError(CallbackGraphError):
    """The ordering constraints (``run_after``, conflict resolutions, writer-before-reader) form a cycle."""


class DetachedWriterError(CallbackGraphError):
    """A callback with ``detached = True`` declares ``Write()`` access; only read-only callbacks may be detached."""


class MissingStateError(CallbackGraphError):
    """A callback reads a ``cbstate`` key that no callback of the set writes (e.g. ``Metrics`` without
    ``Recorder``); state the user sets before ``fit`` goes in the reader's ``optional_reads``."""


class EarlyStopped(CancelFittingException):
    """The :class:`CancelFittingException` raised by :class:`asyncloop.EarlyStopping`.

    ``fit`` returns it as ``FitResult.reason``; its message names the criterion, and ``criterion``, ``monitor``,
    ``value`` (the monitored value that triggered it) and ``epoch`` say the rest.
    """

    def __init__(self, message: str, criterion: StoppingCriterion, monitor: str, value: float, epoch: int) -> None:
        super().__init__(message)
        self.criterion, self.monitor, self.value, self.epoch = criterion, monitor, value, epoch


class CheckpointError(Exception):
    """A checkpoint could not be written or read. The message names the file and what to do."""


class StreamError(Exception):
    """The stream server refused a subscription or broke the protocol, or the connection was lost."""


class EventLogFormatError(ValueError):
    """The file is not an asyncloop event log, or one of a newer format version; or, when appending to it, it has
    a corrupt record with more data after it."""


class RankFailedError(RuntimeError):
    """Raised on every other rank when one rank's distributed session ended with an error (docs/distributed.md).

    The message names the failing rank and its error (``"rank 1 failed: ValueError: boom"``); ``rank`` and
    ``error`` (that text) hold them, ``None`` when the error could not be read. The failing rank itself raises its
    own error.
    """

    def __init__(self, message: str, rank: int | None = None, error: str | None = None) -> None:
        super().__init__(message)
        self.rank = rank
        self.error = error


class _Aborted(BaseException):
    """Internal: raised inside the worker to unwind it when the session is cancelled or an actor failed."""
