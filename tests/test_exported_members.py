"""Pin asyncloop's public surface: ``__all__`` and the import-surface table of API.md."""

from __future__ import annotations

import importlib

import pytest

import asyncloop

#: Every name ``asyncloop.__all__`` exports today, sorted. Changing the public surface means changing this list.
EXPORTED = [
    "AbstractMetric", "AbstractTrainingPhase", "AbstractValidationPhase", "ActorRunner", "BackwardBegin",
    "BackwardEnd", "CSVBackend", "Callback", "CallbackCondition", "CallbackCycleError", "CallbackGraphError",
    "CancelEpochException", "CancelFittingException", "CancelStepException", "Check", "CheckpointError", "Checkpointer",
    "ConditionalCallback", "ConflictResolution", "CustomCallback", "DDPStrategy", "DetachedWriterError", "Disjunction",
    "EarlyStopped", "EarlyStopping", "EpochBegin", "EpochEnd", "EvaluationPhase", "Event", "EventLogBackend", "EventLogFormatError", "FitBegin", "FitEnd", "FitException",
    "FitResult", "FrequencyThrottle", "GL", "GarbageCollect", "GradientAccumulation", "GradientClipping",
    "Histogram", "History", "HyperParameter", "Image", "InvalidValue", "LRFinderResult", "Learner", "LearningRate",
    "LinearRunner", "LogConfig", "LogEvents", "LogHistograms", "LogHyperParams", "LogMetrics", "LogTraces",
    "LogVisualization", "LoggerBackend", "Loss",
    "LossBegin", "Metric", "Metrics", "MetricsPrinter", "MissingStateError", "MixedPrecision",
    "Never", "NoConflict", "NotDefined",
    "NumberLimit", "NumberSinceBest", "PQ", "Patience", "Phase", "ProcessActorError", "ProgressPrinter", "PropDict", "ProtectedError",
    "RankFailedError", "Read", "Recorder", "RunFirst", "SanityCheck", "SanityCheckException", "Scheduler", "StepBegin", "StepEnd",
    "StopOnNaNLoss", "Strategy", "StreamBackend", "StreamError", "StreamServer", "TensorBoardBackend", "Text", "Threshold", "TimeLimit",
    "TimeThrottle", "ToDevice", "ToGPU", "Traces", "TrainingPhase", "Unresolvable", "ValidationPhase", "Value",
    "Warmup", "Write", "WriteConflictError", "accesses", "accuracy", "callback_graph", "epoch", "events", "fit",
    "load_model", "log_to", "loggables", "lr_find", "on", "one_cycle", "phases", "predict", "rank_zero_only", "run_epoch", "run_step",
    "save_model", "seed_everything", "set_hyperparameter", "step", "stopping", "subscribe", "test_learner", "throttle",
    "validate",
]

#: The names of API.md's import-surface table, with the public namespace each is also importable from
#: ("asyncloop" where the top level is its only home: its defining module is private).
API_PROVIDED = {
    # training
    **dict.fromkeys(["Learner", "fit", "epoch", "step", "run_step", "run_epoch", "FitResult"], "asyncloop"),
    # events
    **dict.fromkeys(
        ["Event", "FitBegin", "FitEnd", "EpochBegin", "EpochEnd", "StepBegin", "LossBegin", "BackwardBegin",
         "BackwardEnd", "StepEnd"],
        "asyncloop.events",
    ),
    # phases
    **dict.fromkeys(
        ["Phase", "AbstractTrainingPhase", "AbstractValidationPhase", "TrainingPhase", "ValidationPhase"],
        "asyncloop.phases",
    ),
    # callbacks API
    **dict.fromkeys(
        ["Callback", "on", "ConflictResolution", "NotDefined", "NoConflict", "RunFirst", "Unresolvable",
         "callback_graph"],
        "asyncloop",
    ),
    **dict.fromkeys(["Read", "Write", "accesses"], "asyncloop.state"),
    # runners
    **dict.fromkeys(["LinearRunner", "ActorRunner"], "asyncloop.runners"),
    # control flow
    **dict.fromkeys(
        ["FitException", "CancelStepException", "CancelEpochException", "CancelFittingException", "ProtectedError",
         "SanityCheckException"],
        "asyncloop",
    ),
    # state
    **dict.fromkeys(["PropDict", "History"], "asyncloop.state"),
    # built-in callbacks
    **dict.fromkeys(
        ["Recorder", "Metrics", "Metric", "AbstractMetric", "Loss", "accuracy", "ProgressPrinter", "MetricsPrinter",
         "StopOnNaNLoss", "Checkpointer", "EarlyStopping", "Scheduler", "ToDevice", "ToGPU", "GarbageCollect",
         "CustomCallback", "ConditionalCallback", "CallbackCondition", "FrequencyThrottle", "TimeThrottle",
         "throttle", "SanityCheck", "Check", "Traces"],
        "asyncloop.callbacks",
    ),
    # logging
    **dict.fromkeys(
        ["LoggerBackend", "log_to", "TensorBoardBackend", "LogMetrics", "LogHyperParams", "LogHistograms",
         "LogVisualization", "LogTraces", "LogEvents"],
        "asyncloop.logging",
    ),
    # hyperparameters
    **dict.fromkeys(
        ["HyperParameter", "LearningRate", "set_hyperparameter", "one_cycle"], "asyncloop.hyperparameters"
    ),
    # helpers
    **dict.fromkeys(["save_model", "load_model"], "asyncloop"),
    "test_learner": "asyncloop.testing",
}

#: The public modules: those API.md and docs/ name. Every other module of the package is private (``_name``).
PUBLIC_MODULES = [
    "asyncloop", "asyncloop.callbacks", "asyncloop.events", "asyncloop.hyperparameters", "asyncloop.loggables",
    "asyncloop.logging", "asyncloop.phases", "asyncloop.runners", "asyncloop.service", "asyncloop.state",
    "asyncloop.stopping",
    "asyncloop.testing",
]

#: API.md's early stopping criteria, which live in ``asyncloop.stopping``.
STOPPING = [
    "Patience", "NumberSinceBest", "InvalidValue", "TimeLimit", "NumberLimit", "Threshold", "GL", "PQ", "Warmup",
    "Disjunction", "Never",
]

#: Names of API.md's table that live in a namespace module: ``asyncloop.<module>.<name>``.
API_IN_MODULE = {
    **dict.fromkeys(STOPPING, "stopping"),
    **dict.fromkeys(["Value", "Text", "Image", "Histogram"], "loggables"),
}



class TestAll:
    def test_all_is_pinned(self) -> None:
        """asyncloop.__all__ holds exactly the pinned names, without duplicates."""
        assert sorted(asyncloop.__all__) == EXPORTED
        assert len(set(asyncloop.__all__)) == len(asyncloop.__all__)

    @pytest.mark.parametrize("name", EXPORTED)
    def test_exported_name_exists(self, name: str) -> None:
        """Every name in __all__ is an attribute of the package."""
        assert hasattr(asyncloop, name)

    def test_star_import(self) -> None:
        """'from asyncloop import *' binds exactly __all__."""
        namespace: dict[str, object] = {}
        exec("from asyncloop import *", namespace)
        assert sorted(k for k in namespace if k != "__builtins__") == EXPORTED


class TestApiSurface:
    @pytest.mark.parametrize(("name", "module"), sorted(API_PROVIDED.items()))
    def test_importable_from_package_and_module(self, name: str, module: str) -> None:
        """Each provided API.md name is importable from asyncloop and from its own module, as the same object."""
        assert name in asyncloop.__all__
        assert getattr(importlib.import_module(module), name) is getattr(asyncloop, name)

    @pytest.mark.parametrize("name", EXPORTED)
    def test_module_is_asyncloop(self, name: str) -> None:
        """Every exported class and function reports asyncloop as its module, never a private one."""
        obj = getattr(asyncloop, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__module__ == "asyncloop"

    def test_public_modules_are_pinned(self) -> None:
        """Only the modules the contract and docs name are public; the kernel is private."""
        import pkgutil

        public = sorted(
            ["asyncloop"]
            + [
                info.name
                for info in pkgutil.walk_packages(asyncloop.__path__, "asyncloop.")
                if not any(part.startswith("_") for part in info.name.split("."))
            ]
        )
        assert public == PUBLIC_MODULES

    @pytest.mark.parametrize("module", PUBLIC_MODULES)
    def test_public_all_lists_public_names(self, module: str) -> None:
        """A public module's __all__ lists only public names that exist in it."""
        namespace = importlib.import_module(module)
        for name in namespace.__all__:
            assert not name.startswith("_")
            assert hasattr(namespace, name)

    @pytest.mark.parametrize(("name", "module"), sorted(API_IN_MODULE.items()))
    def test_namespace_modules(self, name: str, module: str) -> None:
        """Stopping criteria and loggables are reachable as asyncloop.stopping.X / asyncloop.loggables.X."""
        assert module in asyncloop.__all__
        namespace = getattr(asyncloop, module)
        assert namespace is importlib.import_module(f"asyncloop.{module}")
        assert hasattr(namespace, name)

    @pytest.mark.parametrize(("name", "module"), sorted(API_IN_MODULE.items()))
    def test_namespace_names_also_at_top_level(self, name: str, module: str) -> None:
        """API.md asks for every name of its table at the top level: criteria and loggables are there too."""
        assert name in asyncloop.__all__
        assert getattr(asyncloop, name) is getattr(getattr(asyncloop, module), name)

    def test_runners_subpackage(self) -> None:
        """Both runners are importable from asyncloop.runners too."""
        from asyncloop import runners

        assert runners.LinearRunner is asyncloop.LinearRunner
        assert runners.ActorRunner is asyncloop.ActorRunner

    def test_version(self) -> None:
        """The package has a version string."""
        assert isinstance(asyncloop.__version__, str)
