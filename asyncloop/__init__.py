"""asyncloop: train PyTorch models through a callback runtime built on trio.

A port of Julia's FluxTraining (Learner, events, phases, callbacks that declare the state they read and write,
a dependency graph that orders them), where every callback can be an actor: the graph decides which handlers
may run at the same time, and read-only callbacks run detached so I/O overlaps with training.

The public surface is re-exported here; every name is also importable from its own module.
"""

from . import events, phases
from .callback import Callback as Callback
from .callback import ConflictResolution as ConflictResolution
from .callback import NoConflict as NoConflict
from .callback import NotDefined as NotDefined
from .callback import RunFirst as RunFirst
from .callback import Unresolvable as Unresolvable
from .callback import on as on
from .callbacks.conditional import CallbackCondition as CallbackCondition
from .callbacks.conditional import ConditionalCallback as ConditionalCallback
from .callbacks.conditional import FrequencyThrottle as FrequencyThrottle
from .callbacks.conditional import TimeThrottle as TimeThrottle
from .callbacks.conditional import throttle as throttle
from .callbacks.custom import CustomCallback as CustomCallback
from .callbacks.metrics import AbstractMetric as AbstractMetric
from .callbacks.metrics import Loss as Loss
from .callbacks.metrics import Metric as Metric
from .callbacks.metrics import Metrics as Metrics
from .callbacks.metrics import accuracy as accuracy
from .callbacks.printers import MetricsPrinter as MetricsPrinter
from .callbacks.printers import ProgressPrinter as ProgressPrinter
from .callbacks.recorder import Recorder as Recorder
from .callbacks.stoponnan import StopOnNaNLoss as StopOnNaNLoss
from .events import BackwardBegin as BackwardBegin
from .events import BackwardEnd as BackwardEnd
from .events import EpochBegin as EpochBegin
from .events import EpochEnd as EpochEnd
from .events import Event as Event
from .events import FitBegin as FitBegin
from .events import FitEnd as FitEnd
from .events import LossBegin as LossBegin
from .events import StepBegin as StepBegin
from .events import StepEnd as StepEnd
from .exceptions import CallbackCycleError as CallbackCycleError
from .exceptions import CallbackGraphError as CallbackGraphError
from .exceptions import CancelEpochException as CancelEpochException
from .exceptions import CancelFittingException as CancelFittingException
from .exceptions import CancelStepException as CancelStepException
from .exceptions import DetachedWriterError as DetachedWriterError
from .exceptions import FitException as FitException
from .exceptions import ProtectedError as ProtectedError
from .exceptions import SanityCheckException as SanityCheckException
from .exceptions import WriteConflictError as WriteConflictError
from .graph import callback_graph as callback_graph
from .learner import Learner as Learner
from .phases import AbstractTrainingPhase as AbstractTrainingPhase
from .phases import AbstractValidationPhase as AbstractValidationPhase
from .phases import Phase as Phase
from .phases import TrainingPhase as TrainingPhase
from .phases import ValidationPhase as ValidationPhase
from .runners import ActorRunner as ActorRunner
from .runners import LinearRunner as LinearRunner
from .state import History as History
from .state import PropDict as PropDict
from .state import Read as Read
from .state import Write as Write
from .state import accesses as accesses
from .testing import test_learner as test_learner
from .training import FitResult as FitResult
from .training import epoch as epoch
from .training import fit as fit
from .training import run_epoch as run_epoch
from .training import run_step as run_step
from .training import step as step

__version__ = "0.1.0"

__all__ = [
    "AbstractMetric",
    "AbstractTrainingPhase",
    "AbstractValidationPhase",
    "ActorRunner",
    "BackwardBegin",
    "BackwardEnd",
    "Callback",
    "CallbackCondition",
    "CallbackCycleError",
    "CallbackGraphError",
    "CancelEpochException",
    "CancelFittingException",
    "CancelStepException",
    "ConditionalCallback",
    "ConflictResolution",
    "CustomCallback",
    "DetachedWriterError",
    "EpochBegin",
    "EpochEnd",
    "Event",
    "FitBegin",
    "FitEnd",
    "FitException",
    "FitResult",
    "FrequencyThrottle",
    "History",
    "Learner",
    "LinearRunner",
    "Loss",
    "LossBegin",
    "Metric",
    "Metrics",
    "MetricsPrinter",
    "NoConflict",
    "NotDefined",
    "Phase",
    "ProgressPrinter",
    "PropDict",
    "ProtectedError",
    "Read",
    "Recorder",
    "RunFirst",
    "SanityCheckException",
    "StepBegin",
    "StepEnd",
    "StopOnNaNLoss",
    "TimeThrottle",
    "TrainingPhase",
    "Unresolvable",
    "ValidationPhase",
    "WriteConflictError",
    "Write",
    "accesses",
    "accuracy",
    "callback_graph",
    "epoch",
    "events",
    "fit",
    "on",
    "phases",
    "run_epoch",
    "run_step",
    "step",
    "test_learner",
    "throttle",
]
