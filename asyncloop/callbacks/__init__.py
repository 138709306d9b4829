"""The callback library."""

from .checkpointer import Checkpointer
from .conditional import CallbackCondition, ConditionalCallback, FrequencyThrottle, TimeThrottle, throttle
from .custom import CustomCallback
from .earlystopping import EarlyStopping
from .garbagecollect import GarbageCollect
from .helpers import GradientAccumulation, GradientClipping, MixedPrecision
from .metrics import AbstractMetric, Loss, Metric, Metrics, TorchMetric, accuracy
from .printers import MetricsPrinter, ProgressPrinter
from .recorder import Recorder
from .sanitycheck import CHECKS, DEFAULT_CHECKS, Check, SanityCheck
from .scheduler import Scheduler
from .stoponnan import StopOnNaNLoss
from .todevice import ToDevice, ToGPU
from .traces import Traces

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
