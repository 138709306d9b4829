"""The callback library."""

from ._checkpointer import Checkpointer
from ._conditional import CallbackCondition, ConditionalCallback, FrequencyThrottle, TimeThrottle, throttle
from ._custom import CustomCallback
from ._earlystopping import EarlyStopping
from ._garbagecollect import GarbageCollect
from ._helpers import GradientAccumulation, GradientClipping, MixedPrecision
from ._metrics import AbstractMetric, Loss, Metric, Metrics, TorchMetric, accuracy
from ._printers import MetricsPrinter, ProgressPrinter
from ._recorder import Recorder
from ._sanitycheck import CHECKS, DEFAULT_CHECKS, Check, SanityCheck
from ._scheduler import Scheduler
from ._stoponnan import StopOnNaNLoss
from ._todevice import ToDevice, ToGPU
from ._traces import Traces

__all__ = [
    "AbstractMetric",
    "CHECKS",
    "CallbackCondition",
    "Check",
    "Checkpointer",
    "ConditionalCallback",
    "CustomCallback",
    "DEFAULT_CHECKS",
    "EarlyStopping",
    "FrequencyThrottle",
    "GarbageCollect",
    "GradientAccumulation",
    "GradientClipping",
    "Loss",
    "Metric",
    "Metrics",
    "MetricsPrinter",
    "MixedPrecision",
    "ProgressPrinter",
    "Recorder",
    "SanityCheck",
    "Scheduler",
    "StopOnNaNLoss",
    "TimeThrottle",
    "ToDevice",
    "ToGPU",
    "TorchMetric",
    "Traces",
    "accuracy",
    "throttle",
]
