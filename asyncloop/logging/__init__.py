"""Logging: backends (TensorBoard, CSV, a crash-safe msgpack event log, a live TCP stream) and the Log* callbacks.

Every logging callback is a detached actor: under the :class:`asyncloop.ActorRunner` its backends' I/O runs in
the logger's worker thread, never on the training thread or on a trio event loop. See docs/logging.md.

* backends: :class:`LoggerBackend`, :func:`log_to`, :class:`TensorBoardBackend`, :class:`CSVBackend`,
  :class:`EventLogBackend`, :class:`StreamBackend` (with :class:`StreamServer`);
* callbacks: :class:`LogMetrics`, :class:`LogHyperParams`, :class:`LogHistograms`, :class:`LogVisualization`,
  :class:`LogTraces`, :class:`LogEvents`;
* readers: :func:`read_events`, :func:`follow` (event log), :func:`subscribe` (stream).
"""

from .backend import LoggerBackend as LoggerBackend
from .backend import default_run_name as default_run_name
from .backend import log_to as log_to
from .callbacks import LogEvents as LogEvents
from .callbacks import LogHistograms as LogHistograms
from .callbacks import LogHyperParams as LogHyperParams
from .callbacks import LogMetrics as LogMetrics
from .callbacks import LogTraces as LogTraces
from .callbacks import LogVisualization as LogVisualization
from .csvlog import CSVBackend as CSVBackend
from .eventlog import EventLogBackend as EventLogBackend
from .eventlog import EventLogFormatError as EventLogFormatError
from .eventlog import EventLogReader as EventLogReader
from .eventlog import follow as follow
from .eventlog import read_events as read_events
from .records import decode_array as decode_array
from .stream import StreamBackend as StreamBackend
from .stream import StreamError as StreamError
from .stream import StreamServer as StreamServer
from .stream import StreamStatistics as StreamStatistics
from .stream import Subscription as Subscription
from .stream import subscribe as subscribe
from .tensorboard import TensorBoardBackend as TensorBoardBackend

__all__ = [
    "CSVBackend",
    "EventLogBackend",
    "EventLogFormatError",
    "EventLogReader",
    "LogEvents",
    "LogHistograms",
    "LogHyperParams",
    "LogMetrics",
    "LogTraces",
    "LogVisualization",
    "LoggerBackend",
    "StreamBackend",
    "StreamError",
    "StreamServer",
    "StreamStatistics",
    "Subscription",
    "TensorBoardBackend",
    "decode_array",
    "default_run_name",
    "follow",
    "log_to",
    "read_events",
    "subscribe",
]
