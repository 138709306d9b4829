"""asyncloop: train PyTorch models through a callback runtime built on trio.

A port of Julia's FluxTraining (Learner, events, phases, callbacks that declare the state they read and write,
a dependency graph that orders them), where every callback can be an actor: the graph decides which handlers
may run at the same time, and read-only callbacks run detached so I/O overlaps with training.

The public surface is re-exported here; every name is also importable from its own module.
"""

from . import events, loggables, phases, stopping
from ._callback import Callback as Callback
from ._callback import ConflictResolution as ConflictResolution
from ._callback import NoConflict as NoConflict
from ._callback import NotDefined as NotDefined
from ._callback import RunFirst as RunFirst
from ._callback import Unresolvable as Unresolvable
from ._callback import on as on
from .callbacks._checkpointer import Checkpointer as Checkpointer
from .callbacks._conditional import CallbackCondition as CallbackCondition
from .callbacks._conditional import ConditionalCallback as ConditionalCallback
from .callbacks._conditional import FrequencyThrottle as FrequencyThrottle
from .callbacks._conditional import TimeThrottle as TimeThrottle
from .callbacks._conditional import throttle as throttle
from .callbacks._custom import CustomCallback as CustomCallback
from .callbacks._earlystopping import EarlyStopping as EarlyStopping
from .callbacks._garbagecollect import GarbageCollect as GarbageCollect
from .callbacks._helpers import GradientAccumulation as GradientAccumulation
from .callbacks._helpers import GradientClipping as GradientClipping
from .callbacks._helpers import MixedPrecision as MixedPrecision
from .callbacks._metrics import AbstractMetric as AbstractMetric
from .callbacks._metrics import Loss as Loss
from .callbacks._metrics import Metric as Metric
from .callbacks._metrics import Metrics as Metrics
from .callbacks._metrics import accuracy as accuracy
from .callbacks._printers import MetricsPrinter as MetricsPrinter
from .callbacks._printers import ProgressPrinter as ProgressPrinter
from .callbacks._recorder import Recorder as Recorder
from .callbacks._sanitycheck import Check as Check
from .callbacks._sanitycheck import SanityCheck as SanityCheck
from .callbacks._scheduler import Scheduler as Scheduler
from .callbacks._stoponnan import StopOnNaNLoss as StopOnNaNLoss
from .callbacks._todevice import ToDevice as ToDevice
from .callbacks._todevice import ToGPU as ToGPU
from .callbacks._traces import Traces as Traces
from ._model_io import load_model as load_model
from ._rng import seed_everything as seed_everything
from ._model_io import save_model as save_model
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
from ._distributed import DDPStrategy as DDPStrategy
from ._distributed import Strategy as Strategy
from ._distributed import rank_zero_only as rank_zero_only
from ._evaluation import EvaluationPhase as EvaluationPhase
from ._evaluation import predict as predict
from ._evaluation import validate as validate
from ._exceptions import CallbackCycleError as CallbackCycleError
from ._exceptions import CheckpointError as CheckpointError
from ._exceptions import ProcessActorError as ProcessActorError
from ._exceptions import EarlyStopped as EarlyStopped
from ._exceptions import EventLogFormatError as EventLogFormatError
from ._exceptions import StreamError as StreamError
from ._exceptions import CallbackGraphError as CallbackGraphError
from ._exceptions import CancelEpochException as CancelEpochException
from ._exceptions import CancelFittingException as CancelFittingException
from ._exceptions import CancelStepException as CancelStepException
from ._exceptions import DetachedWriterError as DetachedWriterError
from ._exceptions import FitException as FitException
from ._exceptions import ProtectedError as ProtectedError
from ._exceptions import RankFailedError as RankFailedError
from ._exceptions import SanityCheckException as SanityCheckException
from ._exceptions import MissingStateError as MissingStateError
from ._exceptions import WriteConflictError as WriteConflictError
from ._graph import callback_graph as callback_graph
from .hyperparameters import HyperParameter as HyperParameter
from .hyperparameters import LearningRate as LearningRate
from .hyperparameters import one_cycle as one_cycle
from .hyperparameters import set_hyperparameter as set_hyperparameter
from ._learner import Learner as Learner
from ._lr_find import LRFinderResult as LRFinderResult
from ._lr_find import lr_find as lr_find
from .loggables import Histogram as Histogram
from .loggables import Image as Image
from .loggables import Text as Text
from .loggables import Value as Value
from .logging import CSVBackend as CSVBackend
from .logging import EventLogBackend as EventLogBackend
from .logging import LogConfig as LogConfig
from .logging import LogEvents as LogEvents
from .logging import LogHistograms as LogHistograms
from .logging import LogHyperParams as LogHyperParams
from .logging import LogMetrics as LogMetrics
from .logging import LogTraces as LogTraces
from .logging import LogVisualization as LogVisualization
from .logging import LoggerBackend as LoggerBackend
from .logging import StreamBackend as StreamBackend
from .logging import StreamServer as StreamServer
from .logging import TensorBoardBackend as TensorBoardBackend
from .logging import log_to as log_to
from .logging import subscribe as subscribe
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
from .stopping import Disjunction as Disjunction
from .stopping import GL as GL
from .stopping import InvalidValue as InvalidValue
from .stopping import Never as Never
from .stopping import NumberLimit as NumberLimit
from .stopping import NumberSinceBest as NumberSinceBest
from .stopping import PQ as PQ
from .stopping import Patience as Patience
from .stopping import Threshold as Threshold
from .stopping import TimeLimit as TimeLimit
from .stopping import Warmup as Warmup
from .testing import test_learner as test_learner
from ._training import FitResult as FitResult
from ._training import epoch as epoch
from ._training import fit as fit
from ._training import run_epoch as run_epoch
from ._training import run_step as run_step
from ._training import step as step

from ._version import __version__ as __version__

__all__ = [
    "AbstractMetric",
    "AbstractTrainingPhase",
    "AbstractValidationPhase",
    "ActorRunner",
    "BackwardBegin",
    "BackwardEnd",
    "CSVBackend",
    "Callback",
    "CallbackCondition",
    "CallbackCycleError",
    "CallbackGraphError",
    "CancelEpochException",
    "CancelFittingException",
    "CancelStepException",
    "CheckpointError",
    "Check",
    "Checkpointer",
    "ConditionalCallback",
    "ConflictResolution",
    "CustomCallback",
    "DDPStrategy",
    "DetachedWriterError",
    "Disjunction",
    "EarlyStopped",
    "EarlyStopping",
    "EpochBegin",
    "EpochEnd",
    "EvaluationPhase",
    "Event",
    "EventLogBackend",
    "EventLogFormatError",
    "FitBegin",
    "FitEnd",
    "FitException",
    "FitResult",
    "FrequencyThrottle",
    "GL",
    "GarbageCollect",
    "GradientAccumulation",
    "GradientClipping",
    "Histogram",
    "History",
    "HyperParameter",
    "Image",
    "InvalidValue",
    "LRFinderResult",
    "Learner",
    "LearningRate",
    "LinearRunner",
    "LogConfig",
    "LogEvents",
    "LogHistograms",
    "LogHyperParams",
    "LogMetrics",
    "LogTraces",
    "LogVisualization",
    "LoggerBackend",
    "Loss",
    "LossBegin",
    "Metric",
    "Metrics",
    "MetricsPrinter",
    "MissingStateError",
    "MixedPrecision",
    "Never",
    "NoConflict",
    "NotDefined",
    "NumberLimit",
    "NumberSinceBest",
    "PQ",
    "Patience",
    "Phase",
    "ProcessActorError",
    "ProgressPrinter",
    "PropDict",
    "ProtectedError",
    "RankFailedError",
    "Read",
    "Recorder",
    "RunFirst",
    "SanityCheck",
    "SanityCheckException",
    "Scheduler",
    "StepBegin",
    "StepEnd",
    "StopOnNaNLoss",
    "Strategy",
    "StreamBackend",
    "StreamServer",
    "StreamError",
    "TensorBoardBackend",
    "Text",
    "Threshold",
    "TimeLimit",
    "TimeThrottle",
    "ToDevice",
    "ToGPU",
    "Traces",
    "TrainingPhase",
    "Unresolvable",
    "ValidationPhase",
    "Value",
    "Warmup",
    "Write",
    "WriteConflictError",
    "accesses",
    "accuracy",
    "callback_graph",
    "epoch",
    "events",
    "fit",
    "load_model",
    "log_to",
    "loggables",
    "lr_find",
    "on",
    "one_cycle",
    "phases",
    "predict",
    "rank_zero_only",
    "run_epoch",
    "run_step",
    "save_model",
    "seed_everything",
    "set_hyperparameter",
    "step",
    "stopping",
    "subscribe",
    "test_learner",
    "throttle",
    "validate",
]


def _claim_public_names() -> None:
    """Report ``asyncloop`` as the module of every exported class and function (httpx's habit): reprs,
    tracebacks and docs show ``asyncloop.Learner``, never the private module that defines it."""
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) or callable(obj) and hasattr(obj, "__code__"):
            obj.__module__ = "asyncloop"


_claim_public_names()
