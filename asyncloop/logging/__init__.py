"""Logging: backends (TensorBoard, CSV, a crash-safe msgpack event log, a live TCP stream) and the Log* callbacks.

Every logging callback is a detached actor: under the :class:`asyncloop.ActorRunner` its backends' I/O runs in
the logger's worker thread, never on the training thread or on a trio event loop. See docs/logging.md.

* backends: :class:`LoggerBackend`, :func:`log_to`, :class:`TensorBoardBackend`, :class:`CSVBackend`,
  :class:`EventLogBackend`, :class:`StreamBackend` (with :class:`StreamServer`);
* callbacks: :class:`LogMetrics`, :class:`LogHyperParams`, :class:`LogConfig` (with the :class:`HParams` loggable), :class:`LogHistograms`, :class:`LogVisualization`,
  :class:`LogTraces`, :class:`LogEvents`;
* readers: :func:`read_events`, :func:`follow` (event log), :func:`subscribe` (stream).
"""

from ._backend import LoggerBackend as LoggerBackend
from ._backend import default_run_name as default_run_name
from ._backend import log_to as log_to
from ._callbacks import LogConfig as LogConfig
from ._callbacks import LogEvents as LogEvents
from ._callbacks import LogHistograms as LogHistograms
from ._callbacks import LogHyperParams as LogHyperParams
from ._callbacks import LogMetrics as LogMetrics
from ._callbacks import LogTraces as LogTraces
from ._callbacks import LogVisualization as LogVisualization
from ._csvlog import CSVBackend as CSVBackend
from ._eventlog import EventLogBackend as EventLogBackend
from ._eventlog import EventLogFormatError as EventLogFormatError
from ._eventlog import EventLogReader as EventLogReader
from ._eventlog import follow as follow
from ._eventlog import read_events as read_events
from ._hparams import HParams as HParams
from ._records import decode_array as decode_array
from ._stream_backend import StreamBackend as StreamBackend
from ._stream_client import StreamError as StreamError
from ._stream_client import Subscription as Subscription
from ._stream_client import subscribe as subscribe
from ._stream_server import StreamServer as StreamServer
from ._stream_server import StreamStatistics as StreamStatistics
from ._tensorboard import TensorBoardBackend as TensorBoardBackend

__all__ = [
    "CSVBackend",
    "EventLogBackend",
    "EventLogFormatError",
    "EventLogReader",
    "HParams",
    "LogConfig",
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
