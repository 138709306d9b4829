"""A training service: an HTTP API and a live web page over concurrent asyncloop fits, all in one trio loop.

``asyncloop serve`` runs it; ``examples/service/`` embeds it and talks to it. The parts:

* :class:`TrainingService`: jobs (a :class:`JobSpec` each), run as ordinary trio tasks of one nursery;
* :func:`create_app`: the quart-trio ASGI app (routes in :mod:`asyncloop.service._app`);
* :func:`serve`: hypercorn serving that app inside the current trio loop;
* :func:`parse_spec`: the strict validation of a submitted spec (a ``ValueError`` whose ``field`` names the key).

Needs the ``service`` extra (``pip install asyncloop[service]``: hypercorn and quart-trio). See docs/services.md.
"""

try:
    import hypercorn  # noqa: F401
    import quart_trio  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is installed wherever the tests run
    raise ImportError(
        f"asyncloop.service needs hypercorn and quart-trio ({exc}); install them with: pip install 'asyncloop[service]'"
    ) from exc

from ._app import create_app as create_app
from ._app import serve as serve
from ._jobs import FINAL_STATES as FINAL_STATES
from ._jobs import STATES as STATES
from ._jobs import Job as Job
from ._jobs import JobFeed as JobFeed
from ._jobs import TrainingService as TrainingService
from ._run import run_service as run_service
from ._spec import JobSpec as JobSpec
from ._spec import parse_spec as parse_spec

__all__ = [
    "FINAL_STATES",
    "STATES",
    "Job",
    "JobFeed",
    "JobSpec",
    "TrainingService",
    "create_app",
    "parse_spec",
    "run_service",
    "serve",
]


def _claim_public_names() -> None:
    """Report ``asyncloop.service`` as the module of its public classes and functions (as ``asyncloop`` does)."""
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) or callable(obj) and hasattr(obj, "__code__"):
            obj.__module__ = __name__


_claim_public_names()
