"""Tests for asyncloop._evaluation: validate (an evaluation epoch with the callbacks) and predict (no events)."""

from __future__ import annotations

import copy
import functools
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import trio
import trio.testing

from asyncloop import (
    AbstractTrainingPhase,
    AbstractValidationPhase,
    ActorRunner,
    Callback,
    Checkpointer,
    EarlyStopping,
    EpochBegin,
    EpochEnd,
    EvaluationPhase,
    Learner,
    LinearRunner,
    Metrics,
    PropDict,
    Read,
    Recorder,
    StepBegin,
    ValidationPhase,
    accuracy,
    epoch,
    fit,
    on,
    predict,
    run_step,
    test_learner,
    validate,
)
from docs_snippets import python_blocks, run_and_check
from matchers import exact

ROOT = Path(__file__).resolve().parent.parent
E = "EvaluationPhase"


def classifier(runner: Any = None, **kw: Any) -> Learner:
    """A small classifier with dropout, a Recorder, a loss and an accuracy metric, on fixed random data."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    batches = [(torch.randn(6, 4), torch.randint(0, 3, (6,))) for _ in range(4)]
    return Learner(
        model,
        torch.nn.functional.cross_entropy,
        data=(batches, batches[:3]),
        callbacks=[Recorder(), Metrics(accuracy), *kw.pop("callbacks", ())],
        use_default_callbacks=False,
        runner=runner,
        **kw,
    )


def series(learner: Learner, key: str, phase: Any) -> dict[str, Any]:
    """A plain copy of ``cbstate[key][phase]``'s series, for comparing before and after."""
    found = learner.cbstate[key].get(phase)
    return {} if found is None else {name: (found.indices(name), found.values(name)) for name in found.keys()}


class Hold(Callback):
    """Block the first training epoch until ``release`` is set, after setting ``started``."""

    def __init__(self, started: threading.Event, release: threading.Event) -> None:
        self.started, self.release = started, release

    @on(EpochBegin, AbstractTrainingPhase)
    def h(self, event: Any, phase: Any, learner: Any) -> None:
        self.started.set()
        self.release.wait(30)


class ModeLog(Callback):
    """Record whether the model is in training mode at every StepBegin."""

    state_access = {"model": Read()}

    def __init__(self) -> None:
        self.modes: list[bool] = []

    @on(StepBegin)
    def h(self, event: Any, phase: Any, learner: Any) -> None:
        self.modes.append(learner.model.training)


# ----------------------------------------------------------------------------------------------------------------
# validate
# ----------------------------------------------------------------------------------------------------------------


class TestValidate:
    @pytest.mark.parametrize("runner", [LinearRunner, ActorRunner])
    def test_values_match_the_last_validation_epoch_of_fit(self, runner: type) -> None:
        """validate returns exactly the metric values the last validation epoch of a fit recorded."""
        learner = classifier(runner())
        trio.run(fit, learner, 2)
        expected = {
            name: float(learner.cbstate.metrics_epoch[ValidationPhase()].last(name)[1]) for name in ("Loss", "Accuracy")
        }
        values = trio.run(validate, learner)
        assert values == expected
        assert all(type(v) is float for v in values.values())

    def test_fit_validation_history_is_never_changed(self) -> None:
        """Repeated validate calls leave fit's validation metrics and history alone and keep their own series."""
        learner = classifier()
        trio.run(fit, learner, 1)
        metrics = series(learner, "metrics_epoch", ValidationPhase())
        steps = series(learner, "metrics_step", ValidationPhase())
        history = copy.deepcopy(learner.cbstate.history[ValidationPhase()])
        first = trio.run(validate, learner)
        second = trio.run(validate, learner)
        assert series(learner, "metrics_epoch", ValidationPhase()) == metrics
        assert series(learner, "metrics_step", ValidationPhase()) == steps
        assert learner.cbstate.history[ValidationPhase()] == history
        assert learner.cbstate.history[EvaluationPhase()].epochs == 2
        own = learner.cbstate.metrics_epoch[EvaluationPhase()]
        assert own.indices("Loss") == [1, 2]
        assert [float(v) for v in own.values("Loss")] == [first["Loss"], second["Loss"]]

    def test_events_are_an_evaluation_epoch_without_fit_events(self, event_log: Any) -> None:
        """validate fires EpochBegin, validation steps and EpochEnd in EvaluationPhase, and no FitBegin/FitEnd."""
        learner = test_learner(Recorder(), event_log, n_batches=2)
        trio.run(validate, learner)
        step = [("StepBegin", E), ("LossBegin", E), ("StepEnd", E)]
        assert event_log.events == [("EpochBegin", E), *step, *step, ("EpochEnd", E)]

    def test_validation_handlers_run(self) -> None:
        """Handlers on AbstractValidationPhase and ValidationPhase run for the evaluation epoch."""
        seen: list[str] = []

        class Both(Callback):
            @on(EpochEnd, AbstractValidationPhase)
            def any_validation(self, event: Any, phase: Any, learner: Any) -> None:
                seen.append(type(phase).__name__)

        class Exact(Callback):
            @on(EpochEnd, ValidationPhase)
            def validation(self, event: Any, phase: Any, learner: Any) -> None:
                seen.append("exact")

        trio.run(validate, test_learner(Both(), Exact(), n_batches=1))
        assert sorted(seen) == ["EvaluationPhase", "exact"]

    def test_checkpointer_and_early_stopping_do_nothing(self, tmp_path: Path) -> None:
        """A Checkpointer writes no file and EarlyStopping neither judges nor stops during validate."""
        stopper = EarlyStopping(1)
        learner = classifier(callbacks=[Checkpointer(tmp_path), stopper])
        trio.run(validate, learner)  # before any fit too
        assert list(tmp_path.iterdir()) == []
        assert stopper.state is None
        trio.run(fit, learner, 1)
        files = sorted(p.name for p in tmp_path.iterdir())
        state = copy.deepcopy(stopper.state)
        for _ in range(3):  # a worse loss each time cannot stop anything: there is nothing to stop
            learner.model[2].bias.data += 1.0
            trio.run(validate, learner)
        assert sorted(p.name for p in tmp_path.iterdir()) == files
        assert stopper.state == state

    def test_series_survive_a_checkpoint(self, tmp_path: Path) -> None:
        """A checkpoint taken after validate calls holds the evaluation series, and loading restores them."""
        learner = classifier(callbacks=[Checkpointer(tmp_path)])
        trio.run(validate, learner)
        trio.run(fit, learner, 1)
        loaded = classifier()
        with pytest.warns(UserWarning, match="it holds the state of Checkpointer, which this learner lacks"):
            loaded.load_checkpoint(tmp_path, strict=False)  # no Checkpointer here: loading is strict by default
        assert loaded.cbstate.history[EvaluationPhase()].epochs == 1
        assert series(loaded, "metrics_epoch", EvaluationPhase()) == series(learner, "metrics_epoch", EvaluationPhase())

    @pytest.mark.parametrize("training", [True, False])
    def test_mode_is_restored(self, training: bool) -> None:
        """The model runs in eval mode during validate and is back in its former mode afterwards."""
        log = ModeLog()
        learner = classifier(callbacks=[log])
        learner.model.train(training)
        trio.run(validate, learner)
        assert log.modes == [False, False, False]
        assert learner.model.training is training

    def test_mode_is_restored_after_an_error(self) -> None:
        """An error in a step propagates and the model is back in training mode."""
        learner = classifier()
        learner.model.train()
        with pytest.raises(ValueError, match="Expected input batch_size"):
            trio.run(validate, learner, [(torch.randn(2, 4), torch.randint(0, 3, (3,)))])
        assert learner.model.training is True

    def test_data_argument(self) -> None:
        """validate(learner, data) evaluates the given batches instead of the learner's validation data."""
        learner = classifier()
        one = [learner.data.training[3]]
        values = trio.run(validate, learner, one)
        learner.model.eval()
        xs, ys = one[0]
        with torch.no_grad():
            assert values["Loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(learner.model(xs), ys)))
        assert learner.cbstate.history[EvaluationPhase()].steps == 1

    def test_custom_evaluation_phase(self) -> None:
        """A subclass of EvaluationPhase with its own step evaluates dict batches, in series of its own."""

        class DictEvaluation(EvaluationPhase):
            async def step(self, learner: Learner, batch: Any) -> PropDict:
                async def body(handle: Any, state: PropDict) -> None:
                    with torch.no_grad():
                        state.preds = learner.model(state.xs)
                        state.loss = torch.nn.functional.cross_entropy(state.preds, state.ys)

                return await run_step(body, learner, self, {"xs": batch["image"], "ys": batch["label"]})

        learner = classifier()
        data = [{"image": xs, "label": ys} for xs, ys in learner.data.validation]
        values = trio.run(functools.partial(validate, learner, data, phase=DictEvaluation()))
        plain = trio.run(validate, learner)
        assert values == pytest.approx(plain)
        assert learner.cbstate.history[DictEvaluation()].epochs == 1

    def test_refused_while_fit_runs_and_inline_inside_it(self) -> None:
        """validate refuses while a fit of the learner runs elsewhere, and runs inline from a custom phase in it."""
        started, release = threading.Event(), threading.Event()
        learner = classifier(callbacks=[Hold(started, release)])

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fit, learner, 1)
                await trio.to_thread.run_sync(started.wait, 30)
                try:
                    with pytest.raises(
                        RuntimeError,
                        match=exact(
                            "fit() is already running for this learner; await it before starting another, or use a "
                            "second Learner"
                        ),
                    ):
                        await validate(learner)
                finally:
                    release.set()

        trio.run(main)
        got: list[dict[str, Any]] = []

        class Validating(AbstractTrainingPhase):
            async def epoch(self, learner: Learner, data: Any) -> None:
                got.append(await validate(learner, data))

        trio.run(epoch, learner, Validating(), learner.data.validation)
        assert got == [trio.run(validate, learner)]

    def test_without_metrics_the_result_is_empty(self) -> None:
        """Without a Metrics callback validate runs the epoch and returns an empty dict."""
        learner = test_learner(Recorder(), n_batches=1)
        assert trio.run(validate, learner) == {}

    def test_no_validation_data(self) -> None:
        """A learner without validation data and no data argument is a clear error."""
        learner = Learner(torch.nn.Linear(2, 1), torch.nn.functional.mse_loss, data={"training": []})
        with pytest.raises(
            ValueError,
            match=exact(
                "validate: the learner has no validation data; pass it as validate(learner, data), or give the "
                "learner data=(train_batches, valid_batches)"
            ),
        ):
            trio.run(validate, learner)

    def test_data_not_iterable(self) -> None:
        """Data that is not an iterable of batches is a clear error."""
        with pytest.raises(
            TypeError,
            match=exact("validate: data must be an iterable of batches (a DataLoader, a list of batches), got int"),
        ):
            trio.run(validate, test_learner(), 3)

    def test_phase_must_be_an_evaluation_phase(self) -> None:
        """A phase that is not an EvaluationPhase is refused: its series would mix with fit's."""
        with pytest.raises(
            TypeError,
            match=exact(
                "validate: phase must be an EvaluationPhase instance (subclass EvaluationPhase to give it your own "
                "step), got ValidationPhase()"
            ),
        ):
            trio.run(functools.partial(validate, test_learner(), phase=ValidationPhase()))


# ----------------------------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------------------------


class Probe(torch.nn.Module):
    """A linear model that records, per call, its mode, whether grad is enabled, the thread and torch's threads."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.calls: list[tuple[bool, bool, int, int]] = []
        self.fail_at = fail_at

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled(), threading.get_ident(), torch.get_num_threads()))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise RuntimeError("boom")
        return self.linear(xs)


def probe_learner(model: torch.nn.Module) -> Learner:
    return Learner(model, torch.nn.functional.mse_loss, use_default_callbacks=False)


class TestPredict:
    def test_pairs_and_bare_inputs_give_the_concatenated_outputs(self) -> None:
        """(xs, ys) pairs and bare input tensors both give the model's outputs concatenated along dim 0."""
        model = Probe()
        learner = probe_learner(model)
        xs = [torch.randn(3, 4), torch.randn(2, 4)]
        with torch.no_grad():
            expected = model.linear(torch.cat(xs))
        pairs = trio.run(predict, learner, [(x, torch.zeros(len(x))) for x in xs])
        bare = trio.run(predict, learner, xs)
        assert torch.equal(pairs, expected) and torch.equal(bare, expected)
        assert pairs.device == torch.device("cpu") and not pairs.requires_grad

    def test_eval_no_grad_and_mode_restored(self) -> None:
        """The model runs in eval mode without grad on another thread with the caller's thread count."""
        model = Probe()
        model.train()
        before = torch.get_num_threads()
        torch.set_num_threads(3)
        try:
            trio.run(predict, probe_learner(model), [torch.randn(1, 4)])
        finally:
            torch.set_num_threads(before)
        ((training, grad, thread, threads),) = model.calls
        assert (training, grad, threads) == (False, False, 3)
        assert thread != threading.get_ident()
        assert model.training is True

    def test_mode_is_restored_after_an_error(self) -> None:
        """An error in the model propagates as itself and the model is back in training mode."""
        model = Probe(fail_at=2)
        model.train()
        with pytest.raises(RuntimeError, match=exact("boom")):
            trio.run(predict, probe_learner(model), [torch.randn(1, 4)] * 3)
        assert model.training is True
        assert len(model.calls) == 2

    def test_eval_mode_stays_eval(self) -> None:
        """A model already in eval mode stays in eval mode."""
        model = Probe().eval()
        trio.run(predict, probe_learner(model), [torch.randn(1, 4)])
        assert model.training is False

    def test_dict_inputs_are_passed_as_they_are(self) -> None:
        """A dict batch is the model's input, passed whole."""

        class TwoInputs(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.a, self.b = torch.nn.Linear(4, 1), torch.nn.Linear(3, 1)

            def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
                return self.a(batch["image"]) + self.b(batch["meta"])

        model = TwoInputs()
        data = [{"image": torch.randn(2, 4), "meta": torch.randn(2, 3)} for _ in range(2)]
        out = trio.run(predict, probe_learner(model), data)
        with torch.no_grad():
            expected = torch.cat([model(b) for b in data])
        assert torch.equal(out, expected)

    def test_non_tensor_outputs_give_a_list(self) -> None:
        """Tuple outputs give a list of per-batch outputs, their tensors on the CPU."""

        class Pair(torch.nn.Module):
            def forward(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return xs * 2, xs.sum()

        xs = [torch.ones(2, 3), torch.ones(1, 3)]
        out = trio.run(predict, probe_learner(Pair()), xs)
        assert isinstance(out, list) and len(out) == 2
        assert torch.equal(out[1][0], torch.full((1, 3), 2.0)) and float(out[1][1]) == 3.0

    def test_scalar_and_ragged_outputs_give_a_list(self) -> None:
        """0-d outputs, and outputs whose trailing shapes differ, give a list instead of a concatenation."""

        class Identity(torch.nn.Module):
            def forward(self, xs: torch.Tensor) -> torch.Tensor:
                return xs

        learner = probe_learner(Identity())
        scalars = trio.run(predict, learner, [torch.tensor(1.0), torch.tensor(2.0)])
        ragged = trio.run(predict, learner, [torch.ones(1, 2), torch.ones(1, 3)])
        assert [float(s) for s in scalars] == [1.0, 2.0]
        assert [tuple(r.shape) for r in ragged] == [(1, 2), (1, 3)]

    def test_inputs_go_to_the_model_device(self) -> None:
        """Inputs are moved to the device of the model's first parameter."""
        seen: list[torch.device] = []

        class Record(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("scale", torch.ones(1, dtype=torch.float64))

            def forward(self, xs: torch.Tensor) -> torch.Tensor:
                seen.append(xs.device)
                return xs * self.scale

        out = trio.run(predict, probe_learner(Record()), [torch.ones(2, 2)])
        assert seen == [torch.device("cpu")] and out.dtype == torch.float64

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_gpu_model_outputs_on_cpu(self) -> None:  # pragma: no cover - runs on a GPU machine
        """A model on the GPU gets its inputs moved there and its outputs come back on the CPU."""
        model = torch.nn.Linear(4, 2).cuda()
        out = trio.run(predict, probe_learner(model), [torch.randn(3, 4)])
        assert out.device == torch.device("cpu") and out.shape == (3, 2)

    def test_empty_data_gives_an_empty_list(self) -> None:
        """Empty data gives [] without calling the model."""
        model = Probe()
        assert trio.run(predict, probe_learner(model), []) == []
        assert model.calls == []

    def test_no_events_fire(self, event_log: Any) -> None:
        """predict runs no callback."""
        learner = test_learner(event_log)
        trio.run(predict, learner, [torch.ones(3)])
        assert event_log.events == []

    def test_cancelling_stops_after_the_current_batch(self) -> None:
        """A cancelled predict stops before the next batch, restores the mode and lets the cancellation through."""
        model = Probe()
        model.train()
        reached, go = threading.Event(), threading.Event()

        def batches() -> Any:
            yield torch.randn(1, 4)
            reached.set()
            go.wait(30)
            yield torch.randn(1, 4)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def run() -> None:
                    with scope:
                        await predict(probe_learner(model), batches())
                    assert scope.cancelled_caught

                nursery.start_soon(run)
                await trio.to_thread.run_sync(reached.wait, 30)
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()  # predict has seen the cancellation: it waits, shielded
                go.set()

        trio.run(main)
        assert len(model.calls) == 1 and model.training is True

    def test_refused_while_fit_runs_and_inline_inside_it(self) -> None:
        """predict refuses while a fit of the learner runs elsewhere, and runs inline from inside it."""
        started, release = threading.Event(), threading.Event()
        learner = test_learner(Hold(started, release), n_batches=1)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fit, learner, 1)
                await trio.to_thread.run_sync(started.wait, 30)
                try:
                    with pytest.raises(
                        RuntimeError,
                        match=exact(
                            "predict: fit() is running for this learner; await it first, or predict from inside it "
                            "(a handler or a custom phase)"
                        ),
                    ):
                        await predict(learner, [torch.ones(2)])
                finally:
                    release.set()

        trio.run(main)
        got: list[Any] = []

        class Predicting(AbstractTrainingPhase):
            async def epoch(self, learner: Learner, data: Any) -> None:
                got.append(await predict(learner, data))

        trio.run(epoch, learner, Predicting(), [torch.ones(2)])
        assert torch.equal(got[0], learner.model(torch.ones(2)).detach())

    def test_model_not_callable(self) -> None:
        """A learner whose model is not callable is a clear error."""
        learner = probe_learner(Probe())
        learner.model = "model.pt"
        with pytest.raises(
            TypeError, match=exact("predict: learner.model must be callable (a torch.nn.Module), got str")
        ):
            trio.run(predict, learner, [torch.ones(2)])

    @pytest.mark.parametrize("data", [None, 3, "xs"])
    def test_data_not_iterable(self, data: Any) -> None:
        """Data that is not an iterable of batches is a clear error."""
        with pytest.raises(
            TypeError,
            match=exact(
                f"predict: data must be an iterable of batches (a DataLoader, a list of batches), got "
                f"{type(data).__name__}"
            ),
        ):
            trio.run(predict, probe_learner(Probe()), data)


def test_docs_page_runs_and_prints_what_it_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/evaluation.md runs as shown and prints what its comments say."""
    page = ROOT / "docs" / "evaluation.md"
    run_and_check("\n".join(python_blocks(page)), str(page), tmp_path, monkeypatch)
