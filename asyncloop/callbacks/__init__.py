"""The callback library."""

from .conditional import CallbackCondition, ConditionalCallback, FrequencyThrottle, TimeThrottle, throttle
from .custom import CustomCallback
from .metrics import AbstractMetric, Loss, Metric, Metrics, TorchMetric, accuracy
from .printers import MetricsPrinter, ProgressPrinter
from .recorder import Recorder
from .stoponnan import StopOnNaNLoss

__all__ = [
    "AbstractMetric",
    "CallbackCondition",
    "ConditionalCallback",
    "CustomCallback",
    "FrequencyThrottle",
    "Loss",
    "Metric",
    "Metrics",
    "MetricsPrinter",
    "ProgressPrinter",
    "Recorder",
    "StopOnNaNLoss",
    "TimeThrottle",
    "TorchMetric",
    "accuracy",
    "throttle",
]
