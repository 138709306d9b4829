"""Tests for asyncloop._learner: construction, data, optimizer handling and the callback utilities."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
import torch
import trio

from asyncloop import (
    Callback,
    Checkpointer,
    CustomCallback,
    EarlyStopping,
    Learner,
    LinearRunner,
    Metrics,
    MetricsPrinter,
    ProgressPrinter,
    PropDict,
    Recorder,
    StepEnd,
    StopOnNaNLoss,
    TrainingPhase,
    accuracy,
    fit,
    Write,
    test_learner,
)
from matchers import exact

DEFAULT_NAMES = ["ProgressPrinter", "MetricsPrinter", "StopOnNaNLoss", "Recorder", "Metrics"]


def mse(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(preds, ys)


def names(learner: Learner) -> list[str]:
    return [cb.name for cb in learner.callbacks]


class Counter(Callback):
    """Counts how often init() is called."""

    def __init__(self) -> None:
        self.inits = 0

    def init(self, learner: Any) -> None:
        self.inits += 1


class TestConstructor:
    def test_fields(self) -> None:
        """A learner exposes model, loss_fn, optimizer, data, step, cbstate, callbacks and a LinearRunner."""
        model = torch.nn.Linear(1, 1)
        learner = Learner(model, mse, use_default_callbacks=False)
        assert learner.model is model
        assert learner.loss_fn is mse
        assert isinstance(learner.optimizer, torch.optim.Optimizer)
        assert learner.data == PropDict() and isinstance(learner.data, PropDict)
        assert learner.step == PropDict() and isinstance(learner.step, PropDict)
        assert learner.cbstate == PropDict() and isinstance(learner.cbstate, PropDict)
        assert learner.callbacks == []
        assert isinstance(learner.runner, LinearRunner)

    def test_model_must_be_callable(self) -> None:
        """A model that is not callable is rejected."""
        with pytest.raises(TypeError, match=exact("model must be a torch.nn.Module, got int")):
            Learner(3, mse)

    def test_loss_fn_must_be_callable(self) -> None:
        """A loss_fn that is not callable is rejected."""
        with pytest.raises(
            TypeError, match=exact("loss_fn must be a callable loss_fn(preds, targets) -> tensor, got 'mse'")
        ):
            Learner(torch.nn.Linear(1, 1), "mse")  # type: ignore[arg-type]

    def test_runner_must_be_a_runner(self) -> None:
        """runner must be a Runner instance."""
        with pytest.raises(TypeError, match=exact("runner must be LinearRunner() or ActorRunner(), got 'linear'")):
            Learner(torch.nn.Linear(1, 1), mse, runner="linear")  # type: ignore[arg-type]

    def test_runner_belongs_to_one_learner(self) -> None:
        """A runner instance cannot be shared by two learners."""
        runner = LinearRunner()
        Learner(torch.nn.Linear(1, 1), mse, runner=runner, use_default_callbacks=False)
        with pytest.raises(
            ValueError,
            match=exact("this LinearRunner already belongs to another Learner; create one runner per learner"),
        ):
            Learner(torch.nn.Linear(1, 1), mse, runner=runner, use_default_callbacks=False)

    def test_repr(self) -> None:
        """repr names the model type, the callbacks and the runner."""
        learner = Learner(torch.nn.Linear(1, 1), mse, callbacks=[Recorder()], use_default_callbacks=False)
        assert repr(learner) == "Learner(model=Linear, callbacks=[Recorder], runner=LinearRunner())"


class TestDefaultCallbacks:
    def test_defaults_are_added(self) -> None:
        """With use_default_callbacks, the five defaults are appended in FluxTraining's order."""
        learner = Learner(torch.nn.Linear(1, 1), mse)
        assert names(learner) == DEFAULT_NAMES

    def test_defaults_follow_user_callbacks(self) -> None:
        """Default callbacks are appended after the user's."""
        learner = Learner(torch.nn.Linear(1, 1), mse, callbacks=[Counter()])
        assert names(learner) == ["Counter", *DEFAULT_NAMES]

    def test_no_defaults(self) -> None:
        """use_default_callbacks=False adds nothing."""
        assert Learner(torch.nn.Linear(1, 1), mse, use_default_callbacks=False).callbacks == []

    def test_default_of_same_type_is_not_added(self) -> None:
        """A passed callback of a default's exact type replaces that default, keeping the passed instance."""
        recorder, metrics = Recorder(), Metrics(accuracy)
        learner = Learner(torch.nn.Linear(1, 1), mse, callbacks=[metrics, recorder])
        assert names(learner) == ["Metrics", "Recorder", "ProgressPrinter", "MetricsPrinter", "StopOnNaNLoss"]
        assert learner.get_callback(Recorder) is recorder
        assert learner.get_callback(Metrics) is metrics

    def test_subclass_does_not_replace_default(self) -> None:
        """De-duplication is by exact type: a subclass of a default does not stop the default being added."""

        class QuietPrinter(MetricsPrinter):
            pass

        learner = Learner(torch.nn.Linear(1, 1), mse, callbacks=[QuietPrinter()])
        assert names(learner) == ["QuietPrinter", *DEFAULT_NAMES]


class TestData:
    def test_pair(self) -> None:
        """A pair becomes data.training and data.validation."""
        train, valid = [1], [2]
        learner = Learner(torch.nn.Linear(1, 1), mse, data=(train, valid), use_default_callbacks=False)
        assert learner.data == PropDict(training=train, validation=valid)
        assert learner.data.training is train

    def test_list_pair(self) -> None:
        """A two-element list works like a pair."""
        learner = Learner(torch.nn.Linear(1, 1), mse, data=[[1], [2]], use_default_callbacks=False)
        assert learner.data == PropDict(training=[1], validation=[2])

    def test_mapping(self) -> None:
        """A mapping is used by key."""
        learner = Learner(torch.nn.Linear(1, 1), mse, data={"training": [1]}, use_default_callbacks=False)
        assert learner.data == PropDict(training=[1])

    def test_propdict_is_used_as_is(self) -> None:
        """A PropDict is used as the learner's data without copying."""
        data = PropDict(training=[1], validation=[2])
        learner = Learner(torch.nn.Linear(1, 1), mse, data=data, use_default_callbacks=False)
        assert learner.data is data

    def test_empty(self) -> None:
        """() gives empty data."""
        learner = Learner(torch.nn.Linear(1, 1), mse, data=(), use_default_callbacks=False)
        assert learner.data == PropDict()

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (([1],), "got tuple of length 1"),
            (([1], [2], [3]), "got tuple of length 3"),
            (5, "got int"),
        ],
    )
    def test_bad_data(self, data: Any, message: str) -> None:
        """Data that is neither (), a pair nor a mapping is rejected with the accepted forms."""
        with pytest.raises(
            TypeError,
            match=exact(
                "data must be (), a pair (train_batches, valid_batches) or a mapping with keys "
                f"'training'/'validation', {message}"
            ),
        ):
            Learner(torch.nn.Linear(1, 1), mse, data=data)

    def test_unknown_mapping_keys(self) -> None:
        """A data mapping key that is no phase's data_key is an error naming the allowed keys."""
        with pytest.raises(
            ValueError,
            match=exact(
                "data has unknown key(s) 'train', 'val'; use 'training' and 'validation' (the data_key of "
                "TrainingPhase and ValidationPhase), or the data_key of a Phase class you defined"
            ),
        ):
            Learner(torch.nn.Linear(1, 1), mse, data={"train": [1], "val": [2]})

    def test_custom_phase_data_key(self) -> None:
        """A custom phase's data_key is an allowed mapping key once the phase class exists."""

        class Holdout(TrainingPhase):
            data_key = "holdout_for_test_learner"

        learner = Learner(torch.nn.Linear(1, 1), mse, data={"holdout_for_test_learner": [1]})
        assert learner.data == PropDict(holdout_for_test_learner=[1])


class TestArguments:
    def test_single_callback_is_not_a_list(self) -> None:
        """A single callback passed as callbacks= is an error showing the list to pass."""
        with pytest.raises(
            TypeError,
            match=exact(
                "callbacks must be a list of callbacks, got the single callback EarlyStopping(NumberSinceBest(3)); "
                "pass a list: callbacks=[EarlyStopping(NumberSinceBest(3))]"
            ),
        ):
            Learner(torch.nn.Linear(1, 1), mse, callbacks=EarlyStopping(3))  # type: ignore[arg-type]

    def test_callback_class_is_not_a_list(self) -> None:
        """A callback class passed as callbacks= is an error showing the list of instances to pass."""
        with pytest.raises(
            TypeError,
            match=exact("callbacks must be a list of callback instances, got the class Recorder; "
                        "pass callbacks=[Recorder()]"),
        ):
            Learner(torch.nn.Linear(1, 1), mse, callbacks=Recorder)  # type: ignore[arg-type]

    def test_one_argument_loss_fn(self) -> None:
        """A loss_fn that cannot take (preds, targets) is an error at construction, not at the first step."""

        def loss(preds: torch.Tensor) -> torch.Tensor:
            return preds.sum()

        with pytest.raises(TypeError) as info:
            Learner(torch.nn.Linear(1, 1), loss)  # type: ignore[arg-type]
        assert str(info.value) == (
            f"loss_fn must take two arguments, loss_fn(preds, targets), but {loss!r} has the signature "
            "(preds: 'torch.Tensor') -> 'torch.Tensor'; wrap it: loss_fn=lambda preds, targets: ..."
        )

    def test_loss_modules_and_builtins_pass(self) -> None:
        """Loss modules, functions with defaults or *args, and callables without a signature are accepted."""
        for loss in (torch.nn.MSELoss(), torch.nn.functional.mse_loss, lambda *args: args[0].sum(), max):
            Learner(torch.nn.Linear(1, 1), loss)

    def test_monitor_no_metrics_records(self) -> None:
        """EarlyStopping and Checkpointer monitoring a metric no Metrics records fail when the learner is built."""
        with pytest.raises(
            ValueError,
            match=exact(
                "EarlyStopping monitors 'Accuracy', which no Metrics records (recorded: 'Loss'); "
                "pass monitor= one of those, or add the metric to Metrics(...)"
            ),
        ):
            Learner(torch.nn.Linear(1, 1), mse, callbacks=[EarlyStopping(3, monitor="Accuracy")])
        learner = Learner(torch.nn.Linear(1, 1), mse, callbacks=[Metrics(accuracy)])
        learner.add_callback(EarlyStopping(3, monitor="Accuracy"))  # recorded: fine
        with pytest.raises(ValueError, match="^Checkpointer monitors 'F1'"):
            learner.add_callback(Checkpointer(tempfile.mkdtemp(), monitor="F1"))
        assert not any(isinstance(cb, Checkpointer) for cb in learner.callbacks)

    def test_monitor_unknowable_without_metrics_or_with_custom_writer(self) -> None:
        """Without Metrics the unwritten metrics_epoch is the error (MissingStateError); with another writer of
        metrics_epoch the monitor cannot be known at build time and is checked during the fit."""

        class MyMetrics(Callback):
            state_access = {"cbstate": {"metrics_epoch": Write()}}
            run_after = (Metrics,)

        from asyncloop import MissingStateError

        with pytest.raises(MissingStateError, match=r"^EarlyStopping reads cbstate.metrics_epoch, which no callback"):
            Learner(torch.nn.Linear(1, 1), mse, callbacks=[EarlyStopping(3, monitor="X")], use_default_callbacks=False)
        Learner(torch.nn.Linear(1, 1), mse, callbacks=[MyMetrics(), EarlyStopping(3, monitor="X")])


class TestOptimizer:
    def test_instance_is_kept(self) -> None:
        """An optimizer instance is used as given."""
        model = torch.nn.Linear(1, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        assert Learner(model, mse, optimizer=opt).optimizer is opt

    def test_factory_is_called_with_the_model_parameters(self) -> None:
        """A factory is called once with the model's parameters, on first use."""
        model = torch.nn.Linear(1, 1)
        calls = []

        def factory(params: Any) -> torch.optim.Optimizer:
            calls.append(1)
            return torch.optim.SGD(params, lr=0.1)

        learner = Learner(model, mse, optimizer=factory)
        opt = learner.optimizer
        assert isinstance(opt, torch.optim.SGD)
        assert learner.optimizer is opt
        assert len(calls) == 1
        assert opt.param_groups[0]["params"] == list(model.parameters())

    def test_none_means_adam(self) -> None:
        """optimizer=None builds torch.optim.Adam over the model's parameters."""
        model = torch.nn.Linear(1, 1)
        opt = Learner(model, mse).optimizer
        assert type(opt) is torch.optim.Adam
        assert opt.param_groups[0]["params"] == list(model.parameters())

    def test_bad_optimizer(self) -> None:
        """An optimizer that is neither an Optimizer, a factory nor None is rejected."""
        with pytest.raises(
            TypeError,
            match=exact("optimizer must be a torch.optim.Optimizer, a factory params -> Optimizer, or None, got 'sgd'"),
        ):
            Learner(torch.nn.Linear(1, 1), mse, optimizer="sgd")  # type: ignore[arg-type]

    def test_factory_optimizer_follows_a_new_model(self) -> None:
        """With a factory, reassigning learner.model rebuilds the optimizer over the new model's parameters."""
        learner = test_learner(n_batches=2)
        old = learner.optimizer
        new_model = torch.nn.Linear(1, 1)
        learner.model = new_model
        assert learner.model is new_model
        assert learner.optimizer is not old
        assert learner.optimizer.param_groups[0]["params"] == list(new_model.parameters())

    def test_factory_optimizer_trains_the_new_model(self) -> None:
        """After reassigning the model, fit updates the new model's weights."""
        learner = test_learner(n_batches=2)
        trio.run(fit, learner, 1)
        new_model = type(learner.model)()
        before = new_model.c.detach().clone()
        learner.model = new_model
        trio.run(fit, learner, 1)
        assert not torch.equal(new_model.c.detach(), before)

    def test_instance_optimizer_with_a_new_model_is_an_error(self) -> None:
        """An optimizer instance that optimizes none of the new model's parameters makes fit fail with the fix."""
        model = torch.nn.Linear(1, 1)
        data = [(torch.ones(2, 1), torch.ones(2, 1))]
        learner = Learner(model, mse, data=(data, data), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                          use_default_callbacks=False)
        learner.model = torch.nn.Linear(1, 1)
        with pytest.raises(
            ValueError,
            match=exact(
                "learner.optimizer does not optimize any parameter of learner.model (was the model replaced?); "
                "assign a new optimizer, or pass optimizer as a factory such as "
                "lambda params: torch.optim.SGD(params, lr=0.1) so that it follows the model"
            ),
        ):
            trio.run(fit, learner, 1)

    def test_assigning_a_new_optimizer(self) -> None:
        """Assigning learner.optimizer replaces it."""
        learner = test_learner()
        opt = torch.optim.SGD(learner.model.parameters(), lr=1.0)
        learner.optimizer = opt
        assert learner.optimizer is opt

    def test_factory_needs_a_module(self) -> None:
        """A factory cannot build an optimizer for a model that is not a torch.nn.Module."""
        learner = Learner(lambda x: x, mse, use_default_callbacks=False)
        with pytest.raises(
            TypeError,
            match=exact("cannot build an optimizer for a model of type function; use a torch.nn.Module or assign "
                        "learner.optimizer yourself"),
        ):
            learner.optimizer


class TestCallbackUtilities:
    @pytest.fixture
    def learner(self) -> Learner:
        """FluxTraining's callbackutils fixture: a test learner with the default callbacks."""
        return test_learner(use_default_callbacks=True, n_batches=2)

    def test_get_callback(self, learner: Learner) -> None:
        """Seed #41: get_callback returns the first callback of a type, or None."""
        assert isinstance(learner.get_callback(Metrics), Metrics)
        assert learner.get_callback(CustomCallback) is None

    def test_get_callback_matches_subclasses(self, learner: Learner) -> None:
        """get_callback matches with isinstance, so a base class finds its subclasses."""
        assert learner.get_callback(Callback) is learner.callbacks[0]

    def test_remove_callback(self, learner: Learner) -> None:
        """Seed #42: remove_callback returns the removed instance; afterwards get_callback is None."""
        metrics = learner.get_callback(Metrics)
        assert learner.remove_callback(Metrics) is metrics
        assert learner.get_callback(Metrics) is None
        assert learner.remove_callback(Metrics) is None

    def test_replace_callback(self, learner: Learner) -> None:
        """Seed #43: replace_callback returns the old instance; replacing an absent type adds it and returns None."""
        old = learner.get_callback(Metrics)
        new = Metrics(accuracy)
        assert learner.replace_callback(new) is old
        assert learner.get_callback(Metrics) is new
        assert learner.callbacks.index(new) == 4
        learner.remove_callback(Metrics)
        assert learner.replace_callback(old) is None
        assert learner.get_callback(Metrics) is old

    def test_add_callback(self, learner: Learner) -> None:
        """Seed #44 (with a CustomCallback in place of a Checkpointer): add_callback makes the callback present."""
        assert learner.get_callback(CustomCallback) is None
        cb = CustomCallback(lambda learner: None, StepEnd)
        assert learner.add_callback(cb) is None
        assert learner.get_callback(CustomCallback) is cb
        assert learner.callbacks[-1] is cb

    def test_set_callbacks(self, learner: Learner) -> None:
        """Seed #45: set_callbacks replaces all callbacks."""
        assert len(learner.callbacks) != 1
        learner.set_callbacks([Metrics(accuracy)])
        assert len(learner.callbacks) == 1

    def test_set_callbacks_keeps_the_runner(self, learner: Learner) -> None:
        """Unlike FluxTraining, set_callbacks keeps the learner's runner."""
        runner = learner.runner
        learner.set_callbacks([Recorder()])
        assert learner.runner is runner

    def test_empty_learner(self) -> None:
        """Seed #47: an empty learner has no callbacks; set_callbacks/add_callback of Recorder and Metrics give two.

        (Metrics alone is now a MissingStateError: it reads cbstate.history, which Recorder writes; issue #12.)
        """
        learner = test_learner()
        assert learner.callbacks == []
        assert learner.get_callback(Metrics) is None
        learner.set_callbacks([Recorder(), Metrics()])
        assert len(learner.callbacks) == 2
        assert learner.get_callback(Metrics) is not None
        other = test_learner()
        other.add_callback(Recorder())
        other.add_callback(Metrics())
        assert len(other.callbacks) == 2

    def test_metrics_count(self) -> None:
        """Seed #47: Metrics(accuracy) tracks Loss and Accuracy; replacing it with Metrics() leaves only Loss."""
        learner = test_learner(Metrics(accuracy), Recorder())  # Recorder: Metrics reads its history (issue #12)
        assert len(learner.callbacks[0].metrics) == 2
        learner.replace_callback(Metrics())
        assert len(learner.callbacks[0].metrics) == 1

    def test_init_is_called_on_add_replace_and_set(self) -> None:
        """init runs for the new callback on add_callback, replace_callback and set_callbacks."""
        learner = test_learner()
        a, b, c = Counter(), Counter(), Counter()
        learner.add_callback(a)
        assert a.inits == 1
        learner.replace_callback(b)
        assert (a.inits, b.inits) == (1, 1)
        learner.set_callbacks([c])
        assert (b.inits, c.inits) == (1, 1)

    def test_callbacks_property_is_a_copy(self, learner: Learner) -> None:
        """Mutating learner.callbacks does not change the learner; use the methods instead."""
        learner.callbacks.append(Recorder())
        learner.callbacks.clear()
        assert names(learner) == DEFAULT_NAMES

    def test_graph_is_rebuilt(self, learner: Learner) -> None:
        """The callback graph follows the callback list."""
        assert learner.graph.number_of_nodes() == 5
        learner.remove_callback(Metrics)
        assert learner.graph.number_of_nodes() == 4

    @pytest.mark.parametrize("method", ["add_callback", "replace_callback"])
    def test_non_callback_is_rejected(self, learner: Learner, method: str) -> None:
        """add_callback/replace_callback reject non-callbacks with a clear TypeError."""
        with pytest.raises(
            TypeError, match=exact("callback is 'Recorder', not a Callback; callbacks must subclass asyncloop.Callback")
        ):
            getattr(learner, method)("Recorder")

    @pytest.mark.parametrize("method", ["add_callback", "replace_callback"])
    def test_class_instead_of_instance_is_rejected(self, learner: Learner, method: str) -> None:
        """Passing a callback class instead of an instance says to call it."""
        with pytest.raises(TypeError, match=exact("callback is the class Recorder; pass an instance: Recorder()")):
            getattr(learner, method)(Recorder)

    def test_set_callbacks_rejects_non_callbacks(self, learner: Learner) -> None:
        """set_callbacks names the position of the bad entry and leaves the callbacks unchanged."""
        with pytest.raises(
            TypeError, match=exact("callbacks[1] is 3, not a Callback; callbacks must subclass asyncloop.Callback")
        ):
            learner.set_callbacks([Recorder(), 3])  # type: ignore[list-item]
        assert names(learner) == DEFAULT_NAMES

    def test_constructor_rejects_non_callbacks(self) -> None:
        """Learner(callbacks=...) rejects non-callbacks and classes, naming the position."""
        with pytest.raises(
            TypeError, match=exact("callbacks[0] is None, not a Callback; callbacks must subclass asyncloop.Callback")
        ):
            Learner(torch.nn.Linear(1, 1), mse, callbacks=[None])  # type: ignore[list-item]
        with pytest.raises(
            TypeError, match=exact("callbacks[1] is the class StopOnNaNLoss; pass an instance: StopOnNaNLoss()")
        ):
            Learner(torch.nn.Linear(1, 1), mse, callbacks=[Recorder(), StopOnNaNLoss])  # type: ignore[list-item]

    def test_callbacks_cannot_change_during_fit(self) -> None:
        """Changing callbacks from inside a running fit raises RuntimeError saying to do it between fits."""
        errors = []

        def add(_: Any) -> None:
            try:
                learner.add_callback(ProgressPrinter())
            except RuntimeError as exc:
                errors.append(str(exc))

        learner = test_learner(CustomCallback(add, StepEnd), n_batches=1)
        trio.run(fit, learner, 1)
        assert errors == ["callbacks cannot be changed while fit() is running; change them between fits"] * 2
        assert len(learner.callbacks) == 1


class TestReassignment:
    def test_data_assignment_is_normalised(self) -> None:
        """Assigning learner.data accepts the constructor's forms and stores a PropDict."""
        learner = test_learner()
        learner.data = ([1], [2])
        assert learner.data == PropDict(training=[1], validation=[2])
        learner.data = {"training": [3]}
        assert learner.data == PropDict(training=[3])
        with pytest.raises(TypeError, match=r"^data must be \(\), a pair "):
            learner.data = 5

    def test_loss_fn_and_data_may_change_between_fits(self) -> None:
        """loss_fn and data (a pair, as for the constructor) may be reassigned between fits; the next fit uses them."""
        learner = test_learner(Recorder(), Metrics(), n_batches=2)
        trio.run(fit, learner, 1)
        learner.loss_fn = lambda preds, ys: (preds - ys).abs().mean() * 0 + 1e5
        learner.data = (learner.data.training[:1], learner.data.validation[:1])
        trio.run(fit, learner, 1)
        assert learner.cbstate.metrics_epoch[TrainingPhase()].last("Loss") == (2, 1e5)
        assert learner.cbstate.history[TrainingPhase()].steps == 3


    def test_runner_may_change_between_fits(self) -> None:
        """A runner assigned after construction takes over the callbacks: the next fit records as before, and the
        old runner is free to serve another learner."""
        from asyncloop import ActorRunner, LinearRunner

        learner = test_learner(Recorder(), Metrics(), n_batches=2)
        old = learner.runner
        learner.runner = ActorRunner()
        trio.run(fit, learner, 1)
        assert learner.cbstate.metrics_epoch[TrainingPhase()].last("Loss")[0] == 1
        assert isinstance(learner.runner, ActorRunner)
        test_learner(runner=old)  # released: no "already belongs to another Learner"
        with pytest.raises(TypeError, match=exact("runner must be LinearRunner() or ActorRunner(), got 3")):
            learner.runner = 3  # type: ignore[assignment]
        learner.runner = LinearRunner()
        trio.run(fit, learner, 1)
        assert learner.cbstate.history[TrainingPhase()].epochs == 2


class TestReviewRegressions:
    def test_model_class_instead_of_instance(self) -> None:
        """Passing a model class is refused with the fix in the message."""
        with pytest.raises(TypeError, match=r"^model is the class Linear; pass an instance: Linear\(\.\.\.\)$"):
            Learner(torch.nn.Linear, torch.nn.functional.mse_loss)

    def test_loss_class_instead_of_instance(self) -> None:
        """Passing a loss class is refused with the fix in the message."""
        with pytest.raises(TypeError, match=r"^loss_fn is the class MSELoss; pass an instance \(MSELoss\(\)\) or a function$"):
            Learner(torch.nn.Linear(1, 1), torch.nn.MSELoss)

    def test_runner_is_free_again_after_a_failed_learner(self) -> None:
        """A runner whose Learner failed to build can be given to another Learner."""
        from asyncloop import LinearRunner

        runner = LinearRunner()
        with pytest.raises(TypeError):
            Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, callbacks=[object()], runner=runner)
        Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, runner=runner, use_default_callbacks=False)
