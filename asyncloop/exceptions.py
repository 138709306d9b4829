"""Exceptions raised by asyncloop, and the control-flow exceptions callbacks raise.

Hierarchy::

    Exception
    ├── FitException                  control flow: raise from a handler to change the loop
    │   ├── CancelStepException       skip the rest of the step (no StepEnd)
    │   ├── CancelEpochException      skip the rest of the epoch (EpochEnd still fires)
    │   └── CancelFittingException    stop the fit; fit() returns FitResult(stopped=True)
    ├── SanityCheckException          a SanityCheck found an error-level problem
    ├── AttributeError
    │   └── ProtectedError            a handler touched learner state outside its state_access
    └── ValueError
        └── CallbackGraphError        the callback set cannot be ordered (raised by Learner(...))
            ├── WriteConflictError    two callbacks write the same state and no resolution says how
            ├── CallbackCycleError    the ordering constraints form a cycle
            └── DetachedWriterError   a detached callback declares Write() access
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FitException",
    "CancelStepException",
    "CancelEpochException",
    "CancelFittingException",
    "ProtectedError",
    "SanityCheckException",
    "CallbackGraphError",
    "WriteConflictError",
    "CallbackCycleError",
    "DetachedWriterError",
]


class FitException(Exception):
    """Base of the exceptions that change the control flow of a fit."""


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
