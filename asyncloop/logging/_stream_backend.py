"""StreamBackend: the logger backend that publishes each loggable to a :class:`StreamServer`'s subscribers."""

from __future__ import annotations

import threading

from ..loggables import Loggable
from ._backend import LoggerBackend, default_run_name
from ._records import make_record
from ._stream_server import StreamServer


class StreamBackend(LoggerBackend):
    """Publish every loggable as a record (the event log's format) to the subscribers of ``server``.

    Never blocks and never fails because of a subscriber. ``run`` names the run in every record (default: a
    fresh :func:`default_run_name`); ``seq`` counts this backend's records, so a subscriber can tell runs and
    gaps apart. ``flush``/``close`` do nothing: the server outlives the fit.
    """

    def __init__(self, server: StreamServer, *, run: str | None = None) -> None:
        if not isinstance(server, StreamServer):
            raise TypeError(f"StreamBackend takes a StreamServer, got {server!r}")
        if run is not None and not isinstance(run, str):
            raise TypeError(f"run must be a str or None, got {run!r}")
        self.server = server
        self.run = run if run is not None else default_run_name()
        self._seq = 0
        self._lock = threading.Lock()

    def log_to(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...] = ()) -> None:
        with self._lock:  # publish in seq order
            self.server.publish(make_record(loggable, name, index, group, run=self.run, seq=self._seq))
            self._seq += 1

    def __repr__(self) -> str:
        return f"StreamBackend({self.server!r}, run={self.run!r})"
