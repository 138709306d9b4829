"""Learner state containers and the permission model that guards them (the public names; the kernel lives in
private modules).

* :class:`PropDict` -- a dict with attribute access (``learner.step.loss``).
* :class:`History` -- completed epochs/steps per phase, kept by :class:`asyncloop.Recorder`.
* :class:`PhaseDict` -- a ``defaultdict`` keyed by phase (``cbstate.history[TrainingPhase()]``).
* :class:`SeriesHistory` -- named series of ``(index, value)`` pairs (metrics, hyperparameters, traces).
* :class:`Read` / :class:`Write` (both :class:`Permission`) -- leaves of a callback's ``state_access`` tree;
  :func:`accesses` lists a tree's paths of one permission.
* :class:`Protected` -- the view of the learner a handler receives: it enforces the tree at run time.
* :func:`snapshot` -- the copy of learner state a detached callback's handlers receive.

Permission rules (FluxTraining's, with the shallow-permission hole closed for containers):

* reading a field absent from the tree raises ``ProtectedError("Read access to Learner.model disallowed.")``;
* writing a field needs ``Write()`` exactly: ``ProtectedError("Write access to Learner.model disallowed.")``;
* a nested dict in the tree yields a nested protected view;
* ``Read()`` on a :class:`PropDict` or ``dict`` gives a read-only view of it; other objects (tensors, modules,
  histories) are returned as they are -- do not mutate what you only declared ``Read()`` on.
"""

from __future__ import annotations

from ._access import Permission, Read, Write, accesses
from ._containers import History, PhaseDict, PropDict, SeriesHistory
from ._snapshots import snapshot
from ._views import Protected

__all__ = [
    "History",
    "Permission",
    "PhaseDict",
    "PropDict",
    "Protected",
    "Read",
    "SeriesHistory",
    "Write",
    "accesses",
    "snapshot",
]


def _claim_public_names() -> None:
    """Report this module as the home of the names defined in private modules (reprs, pickles and docs say
    ``asyncloop.state.SeriesHistory``); ``asyncloop`` then claims those it exports itself."""
    for name in __all__:
        obj = globals()[name]
        if obj.__module__.startswith("asyncloop._"):
            obj.__module__ = __name__


_claim_public_names()
