"""Tests for asyncloop._training: fit, epoch, step, run_epoch, run_step, FitResult and the loop's control flow."""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any

import pytest
import torch
import trio
import trio.testing

from asyncloop import (
    AbstractTrainingPhase,
    AbstractValidationPhase,
    BackwardBegin,
    Callback,
    CancelEpochException,
    CancelFittingException,
    CancelStepException,
    CustomCallback,
    EpochBegin,
    EpochEnd,
    Event,
    FitBegin,
    FitEnd,
    FitResult,
    Learner,
    LossBegin,
    Phase,
    PropDict,
    ProtectedError,
    Read,
    Recorder,
    StepBegin,
    StepEnd,
    TrainingPhase,
    ValidationPhase,
    Write,
    epoch,
    fit,
    on,
    run_epoch,
    run_step,
    step,
    test_learner,
)
from loops import Boom, history, raiser
from matchers import exact

T, V, F = "TrainingPhase", "ValidationPhase", "FitPhase"
TRAIN_STEP = [("StepBegin", T), ("LossBegin", T), ("BackwardBegin", T), ("BackwardEnd", T), ("StepEnd", T)]
VALID_STEP = [("StepBegin", V), ("LossBegin", V), ("StepEnd", V)]


class CustomPhase(AbstractTrainingPhase):
    """FluxTraining's ``TestPhase``: a custom training phase with its own step."""

    __test__ = False

    async def step(self, learner: Learner, batch: Any) -> PropDict:
        async def step_fn(handle: Any, state: PropDict) -> None:
            state.preds = learner.model(state.xs)
            state.loss = (state.preds - state.ys).abs().sum()

        xs, ys = batch
        return await run_step(step_fn, learner, self, {"xs": xs, "ys": ys})


# ----------------------------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------------------------


class TestFit:
    def test_event_order(self, event_log: Any) -> None:
        """fit fires FitBegin, a training epoch, a validation epoch (per epoch), then FitEnd, in FitPhase."""
        trio.run(fit, test_learner(event_log, n_batches=2), 1)
        assert event_log.events == [
            ("FitBegin", F),
            ("EpochBegin", T), *TRAIN_STEP, *TRAIN_STEP, ("EpochEnd", T),
            ("EpochBegin", V), *VALID_STEP, *VALID_STEP, ("EpochEnd", V),
            ("FitEnd", F),
        ]

    def test_step_state_at_each_event(self, event_log: Any) -> None:
        """learner.step holds xs, ys at StepBegin, then preds, loss and grads as they become available."""
        trio.run(fit, test_learner(event_log, n_batches=1), 1)
        keys = [k for _, k in event_log.step_keys[2:7]] + [k for _, k in event_log.step_keys[9:12]]
        xy = {"xs", "ys"}
        assert keys == [
            xy, xy | {"preds"}, xy | {"preds", "loss"}, xy | {"preds", "loss", "grads"},
            xy | {"preds", "loss", "grads"},
            xy, xy | {"preds"}, xy | {"preds", "loss"},
        ]

    @pytest.mark.parametrize("phase_type", [TrainingPhase, ValidationPhase])
    @pytest.mark.parametrize("kind", ["sync", "async"])
    def test_a_model_replaced_at_step_begin_runs_that_step(self, kind: str, phase_type: type[Phase]) -> None:
        """A StepBegin handler that assigns learner.model (sync or async) has the new model run the same step,
        in training and in validation."""
        from asyncloop.testing import ScalarModel

        seen: list[torch.Tensor] = []

        class Swap(Callback):
            state_access = {"model": Write(), "step": Read()}

            def swap(self, learner: Any) -> None:
                model = ScalarModel()
                with torch.no_grad():
                    model.c.fill_(10.0)
                learner.model = model

            if kind == "sync":

                @on(StepBegin)
                def begin(self, event: Event, phase: Phase, learner: Any) -> None:
                    self.swap(learner)

            else:

                @on(StepBegin)
                async def begin(self, event: Event, phase: Phase, learner: Any) -> None:
                    self.swap(learner)

            @on(LossBegin)
            def preds(self, event: Event, phase: Phase, learner: Any) -> None:
                seen.append(learner.step.preds.detach() / learner.step.xs)

        learner = test_learner(Swap(), n_batches=1)
        learner.optimizer = lambda params: torch.optim.SGD(params, lr=0.0)
        trio.run(epoch, learner, phase_type(), learner.data.training)
        assert torch.allclose(seen[0], torch.full_like(seen[0], 10.0))

    def test_loss_is_detached_after_backward(self) -> None:
        """From BackwardEnd on, step.loss is a plain tensor: float(learner.step.loss) works without a warning."""
        seen: list[tuple[bool, float]] = []

        class Show(Callback):
            state_access = {"step": {"loss": Read()}}

            @on(StepEnd, AbstractTrainingPhase)
            def show(self, event: Event, phase: Phase, learner: Any) -> None:
                seen.append((learner.step.loss.requires_grad, float(learner.step.loss)))

        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            trio.run(fit, test_learner(Show(), n_batches=2), 1)
        assert [grad for grad, _ in seen] == [False, False]

    def test_result(self) -> None:
        """fit returns a FitResult with the epochs run, stopped=False, no reason and per-callback statistics."""
        result = trio.run(fit, test_learner(Recorder(), n_batches=2), 3)
        assert isinstance(result, FitResult)
        assert (result.epochs, result.stopped, result.reason) == (3, False, None)
        assert result.elapsed > 0
        assert [s.name for s in result.statistics] == ["Recorder"]

    def test_zero_epochs(self, event_log: Any) -> None:
        """fit(learner, 0) only fires FitBegin and FitEnd."""
        result = trio.run(fit, test_learner(event_log, n_batches=2), 0)
        assert event_log.events == [("FitBegin", F), ("FitEnd", F)]
        assert result.epochs == 0

    def test_data_argument_overrides_learner_data(self) -> None:
        """fit(learner, n, data) runs over the given data instead of learner.data."""
        learner = test_learner(Recorder(), n_batches=4)
        trio.run(fit, learner, 1, (learner.data.training[:1], learner.data.validation[:2]))
        assert history(learner) == (1, 1, 1)
        assert history(learner, ValidationPhase()) == (1, 2, 2)

    def test_validation_is_skipped_without_validation_data(self, event_log: Any) -> None:
        """Without validation data, fit runs only training epochs."""
        learner = test_learner(event_log, n_batches=1)
        learner.data = {"training": learner.data.training}
        trio.run(fit, learner, 2)
        assert all(phase != V for _, phase in event_log.events)
        assert event_log.events.count(("EpochEnd", T)) == 2

    def test_convergence(self) -> None:
        """Seed #16: test_learner(coeff=3) trained for 5 epochs ends with c within 0.1 of 3."""
        learner = test_learner(coeff=3.0)
        trio.run(fit, learner, 5)
        assert abs(learner.model.c.item() - 3.0) < 0.1

    def test_validation_does_not_change_weights(self) -> None:
        """A validation epoch runs the model in eval mode under no_grad and leaves the weights as they were."""
        seen = []

        class Mode(Callback):
            state_access = {"model": Read(), "step": Read()}

            @on(LossBegin)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                seen.append((type(phase).__name__, learner.model.training, learner.step.preds.requires_grad))

        learner = test_learner(Mode(), n_batches=1)
        before = learner.model.c.detach().clone()
        trio.run(epoch, learner, ValidationPhase())
        assert torch.equal(learner.model.c.detach(), before)
        trio.run(epoch, learner, TrainingPhase())
        assert not torch.equal(learner.model.c.detach(), before)
        assert seen == [(V, False, False), (T, True, True)]

    def test_step_begin_handler_may_replace_inputs(self) -> None:
        """A StepBegin handler with Write() on step.xs/ys changes what the model and the loss see (as ToDevice)."""

        class Double(Callback):
            state_access = {"step": {"xs": Write(), "ys": Write()}}

            @on(StepBegin)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                learner.step.xs = learner.step.xs * 2
                learner.step.ys = learner.step.ys * 0

        learner = test_learner(Double(), n_batches=1)
        xs, ys = learner.data.training[0]
        state = trio.run(step, learner, ValidationPhase(), (xs, ys))
        assert torch.equal(state.xs, xs * 2)
        assert torch.equal(state.preds, (xs * 2) * learner.model.c.detach())
        assert state.loss.item() == pytest.approx(state.preds.abs().mean().item())

    def test_step_is_read_only_without_write(self) -> None:
        """A handler that only reads the step cannot assign to it."""

        class Sneaky(Callback):
            state_access = {"step": Read()}

            @on(StepBegin)
            def h(self, event: Event, phase: Phase, learner: Any) -> None:
                learner.step.xs = None

        learner = test_learner(Sneaky(), n_batches=1)
        with pytest.raises(ProtectedError, match=r"^Write access to PropDict\.xs disallowed\.\n"):
            trio.run(step, learner, TrainingPhase(), learner.data.training[0])

    def test_sync_entry_point(self) -> None:
        """trio.run(fit, learner, n) works from synchronous code."""
        learner = test_learner(Recorder(), n_batches=2)
        trio.run(fit, learner, 2)
        assert history(learner) == (2, 4, 2)

    async def test_async_entry_point(self) -> None:
        """await fit(learner, n) works inside a running trio program."""
        learner = test_learner(Recorder(), n_batches=2)
        result = await fit(learner, 2)
        assert result.epochs == 2
        assert history(learner) == (2, 4, 2)

    def test_not_under_trio(self) -> None:
        """Awaiting fit outside trio (here under asyncio) raises RuntimeError showing the two ways to call it."""
        with pytest.raises(
            RuntimeError,
            match=exact(
                "asyncloop's loop functions are trio async functions: call them as "
                "trio.run(asyncloop.fit, learner, 3) or 'await asyncloop.fit(learner, 3)' inside trio"
            ),
        ):
            asyncio.run(fit(test_learner(n_batches=1), 1))  # type: ignore[arg-type]

    def test_learner_is_reusable(self) -> None:
        """A learner can be fitted again; histories keep counting."""
        learner = test_learner(Recorder(), n_batches=2)
        trio.run(fit, learner, 1)
        trio.run(fit, learner, 1)
        assert history(learner) == (2, 4, 2)

    def test_torch_thread_count_is_the_callers(self) -> None:
        """The loop (and so every handler) runs with the caller's torch thread count."""
        previous = torch.get_num_threads()
        wanted = 1 if previous != 1 else 2
        seen: list[int] = []
        learner = test_learner(CustomCallback(lambda _: seen.append(torch.get_num_threads()), StepBegin), n_batches=1)
        torch.set_num_threads(wanted)
        try:
            trio.run(fit, learner, 1)
        finally:
            torch.set_num_threads(previous)
        assert seen == [wanted, wanted]

    def test_handlers_run_on_one_worker_thread(self) -> None:
        """Handlers run on the loop's worker thread, not the caller's, and all on the same thread."""
        threads: set[int] = set()
        learner = test_learner(CustomCallback(lambda _: threads.add(threading.get_ident()), Event), n_batches=1)
        trio.run(fit, learner, 1)
        assert len(threads) == 1
        assert threading.get_ident() not in threads


class TestFitBadInput:
    @pytest.mark.parametrize("n", [-1, 1.5, True, "3"])
    def test_bad_epoch_count(self, n: Any) -> None:
        """n_epochs must be a non-negative int."""
        with pytest.raises(ValueError, match=exact(f"n_epochs must be an int >= 0, got {n!r}")):
            trio.run(fit, test_learner(n_batches=1), n)

    def test_no_training_data(self) -> None:
        """fit without training data says where to pass it."""
        learner = test_learner()
        learner.data = ()
        with pytest.raises(
            ValueError,
            match=exact("learner has no training data: pass data=(train_batches, valid_batches) to Learner or to fit"),
        ):
            trio.run(fit, learner, 1)

    @pytest.mark.parametrize(
        ("batch", "desc"),
        [(torch.ones(8), "a tensor of shape (8,)"), ((torch.ones(8),) * 3, "tuple of length 3"), (5, "int")],
    )
    def test_batch_not_a_pair(self, batch: Any, desc: str) -> None:
        """A batch that is not an (xs, ys) pair is rejected, saying what it was and what to do."""
        learner = test_learner()
        learner.data = ([batch], [])
        with pytest.raises(
            TypeError,
            match=exact(
                f"each batch must be an (xs, ys) pair, got {desc}; make the data yield (inputs, targets) tuples, "
                "or give your Phase its own step()"
            ),
        ):
            trio.run(fit, learner, 1)

    def test_loss_not_scalar(self) -> None:
        """A loss_fn returning a non-scalar tensor is rejected with how to reduce it."""
        learner = test_learner(n_batches=1)
        learner.loss_fn = lambda preds, ys: (preds - ys).abs()
        with pytest.raises(
            TypeError,
            match=exact(
                "loss_fn must return a scalar tensor, got a tensor of shape (8,); "
                "reduce it, e.g. with .mean() or reduction='mean'"
            ),
        ):
            trio.run(fit, learner, 1)

    def test_loss_not_a_tensor(self) -> None:
        """A loss_fn returning a Python number is rejected."""
        learner = test_learner(n_batches=1)
        learner.loss_fn = lambda preds, ys: 1.0
        with pytest.raises(
            TypeError,
            match=exact(
                "loss_fn must return a scalar tensor, got float; compute the loss with torch operations on "
                "(preds, targets) so it can be backpropagated"
            ),
        ):
            trio.run(fit, learner, 1)

    def test_non_scalar_validation_loss(self) -> None:
        """The scalar-loss check also applies to validation steps."""
        learner = test_learner(n_batches=1)
        learner.loss_fn = lambda preds, ys: (preds - ys).abs()
        with pytest.raises(TypeError, match=r"^loss_fn must return a scalar tensor, got a tensor of shape \(8,\)"):
            trio.run(epoch, learner, ValidationPhase())


# ----------------------------------------------------------------------------------------------------------------
# Control flow
# ----------------------------------------------------------------------------------------------------------------


class TestCancelStep:
    def test_skips_rest_of_step_and_step_end(self, event_log: Any) -> None:
        """CancelStepException at BackwardBegin skips backward, the update and StepEnd; the epoch goes on."""
        cancel = CustomCallback(raiser(CancelStepException("skip")), BackwardBegin, TrainingPhase)
        learner = test_learner(Recorder(), cancel, event_log, n_batches=2)
        before = learner.model.c.detach().clone()
        trio.run(epoch, learner, TrainingPhase())
        assert ("BackwardBegin", T) in event_log.events
        assert ("StepEnd", T) not in event_log.events
        assert ("BackwardEnd", T) not in event_log.events
        assert event_log.events.count(("StepBegin", T)) == 2
        assert event_log.events[-1] == ("EpochEnd", T)
        assert history(learner) == (1, 0, 0)
        assert torch.equal(learner.model.c.detach(), before)

    def test_in_step_end_skips_remaining_step_end_handlers(self) -> None:
        """CancelStepException in a StepEnd handler skips the StepEnd handlers that would run after it."""
        cancel = CustomCallback(raiser(CancelStepException("skip")), StepEnd)
        learner = test_learner(Recorder(), cancel, n_batches=3)
        trio.run(epoch, learner, TrainingPhase())
        assert history(learner) == (1, 0, 0)

    def test_in_validation(self, event_log: Any) -> None:
        """CancelStepException at a validation LossBegin skips that step's StepEnd."""
        cancel = CustomCallback(raiser(CancelStepException("skip"), times=1), LossBegin, ValidationPhase)
        learner = test_learner(Recorder(), cancel, event_log, n_batches=2)
        trio.run(epoch, learner, ValidationPhase())
        assert event_log.events.count(("StepEnd", V)) == 1
        assert history(learner, ValidationPhase()) == (1, 1, 1)

    def test_step_returns_partial_state(self) -> None:
        """step() of a cancelled step returns the state filled so far."""
        cancel = CustomCallback(raiser(CancelStepException("skip")), LossBegin)
        learner = test_learner(cancel, n_batches=1)
        state = trio.run(step, learner, TrainingPhase(), learner.data.training[0])
        assert set(state) == {"xs", "ys", "preds"}

    def test_in_epoch_begin_propagates(self) -> None:
        """CancelStepException outside a step (in EpochBegin) is not caught, as in FluxTraining."""
        cancel = CustomCallback(raiser(CancelStepException("skip")), EpochBegin)
        with pytest.raises(CancelStepException, match=exact("skip")):
            trio.run(fit, test_learner(cancel, n_batches=1), 1)


class TestCancelEpoch:
    def test_mid_epoch_still_fires_epoch_end(self, event_log: Any) -> None:
        """CancelEpochException at the second StepBegin skips the rest of the epoch; EpochEnd still fires."""
        cancel = CustomCallback(raiser(CancelEpochException("stop"), after=1, times=1), StepBegin, TrainingPhase)
        learner = test_learner(Recorder(), cancel, event_log, n_batches=4)
        trio.run(fit, learner, 1)
        training = [e for e in event_log.events if e[1] == T]
        assert training == [("EpochBegin", T), *TRAIN_STEP, ("StepBegin", T), ("EpochEnd", T)]
        assert history(learner) == (1, 1, 1)
        assert history(learner, ValidationPhase()) == (1, 4, 4)

    def test_in_epoch_begin_still_fires_epoch_end(self, event_log: Any) -> None:
        """CancelEpochException from an EpochBegin handler skips the steps and still fires EpochEnd once."""
        cancel = CustomCallback(raiser(CancelEpochException("stop")), EpochBegin, TrainingPhase)
        learner = test_learner(Recorder(), cancel, event_log, n_batches=2)
        trio.run(epoch, learner, TrainingPhase())
        assert event_log.events == [("EpochBegin", T), ("EpochEnd", T)]
        assert history(learner) == (1, 0, 0)

    def test_in_epoch_end_fires_epoch_end_again(self, event_log: Any) -> None:
        """CancelEpochException from an EpochEnd handler dispatches EpochEnd once more and is swallowed."""
        cancel = CustomCallback(raiser(CancelEpochException("stop"), times=1), EpochEnd)
        learner = test_learner(Recorder(), cancel, event_log, n_batches=1)
        trio.run(epoch, learner, TrainingPhase())
        assert event_log.events.count(("EpochEnd", T)) == 2
        assert history(learner) == (1, 1, 1)

    def test_raised_again_in_epoch_end_propagates(self) -> None:
        """If the second EpochEnd raises CancelEpochException again, it propagates."""
        cancel = CustomCallback(raiser(CancelEpochException("again")), EpochEnd)
        with pytest.raises(CancelEpochException, match=exact("again")):
            trio.run(epoch, test_learner(cancel, n_batches=1), TrainingPhase())


class TestCancelFitting:
    @pytest.mark.parametrize(("event", "expected"), [(EpochEnd, 1), (EpochBegin, 1)])
    def test_result_epochs_agree_with_the_recorder(self, event: type, expected: int) -> None:
        """A stop from the training EpochEnd counts that epoch as completed (as Recorder does); a stop at the next
        EpochBegin does not count the epoch it prevented."""
        calls = {"n": 0}

        def stop(learner: Any) -> None:
            calls["n"] += 1
            if (event is EpochEnd and calls["n"] == 1) or (event is EpochBegin and calls["n"] == 2):
                raise CancelFittingException("enough")

        reads_history = {"cbstate": {"history": Read()}}  # so it runs after Recorder, as EarlyStopping does
        learner = test_learner(Recorder(), CustomCallback(stop, event, TrainingPhase, access=reads_history), n_batches=2)
        result = trio.run(fit, learner, 3)
        assert result.stopped
        assert result.epochs == expected == learner.cbstate.history[TrainingPhase()].epochs

    def test_stops_fit_cleanly(self, event_log: Any) -> None:
        """CancelFittingException stops the fit: FitEnd still fires and the result says stopped, with the reason."""
        exc = CancelFittingException("enough")
        cancel = CustomCallback(raiser(exc, after=3), StepEnd, TrainingPhase)
        learner = test_learner(Recorder(), cancel, event_log, n_batches=2)
        result = trio.run(fit, learner, 5)
        assert result.stopped is True
        assert result.reason is exc
        assert result.epochs == 1
        assert event_log.events[-2:] == [("StepEnd", T), ("FitEnd", F)]
        assert ("EpochEnd", T) not in event_log.events[-3:]
        assert history(learner) == (1, 3, 1)

    def test_in_fit_begin(self, event_log: Any) -> None:
        """CancelFittingException in FitBegin skips every epoch and still fires FitEnd."""
        cancel = CustomCallback(raiser(CancelFittingException("no")), FitBegin)
        result = trio.run(fit, test_learner(cancel, event_log, n_batches=1), 3)
        assert event_log.events == [("FitBegin", F), ("FitEnd", F)]
        assert (result.epochs, result.stopped) == (0, True)

    def test_in_fit_end(self) -> None:
        """CancelFittingException in FitEnd is reported as a stop, not raised."""
        exc = CancelFittingException("late")
        result = trio.run(fit, test_learner(CustomCallback(raiser(exc), FitEnd), n_batches=1), 1)
        assert (result.epochs, result.stopped, result.reason) == (1, True, exc)

    def test_epoch_propagates(self) -> None:
        """Seed #9 shape: epoch() lets CancelFittingException propagate."""
        cancel = CustomCallback(raiser(CancelFittingException("test")), StepEnd, TrainingPhase)
        learner = test_learner(Recorder(), cancel, n_batches=2)
        with pytest.raises(CancelFittingException, match=exact("test")):
            trio.run(epoch, learner, TrainingPhase())
        assert history(learner) == (0, 0, 0)

    def test_step_propagates(self) -> None:
        """step() lets CancelFittingException propagate."""
        cancel = CustomCallback(raiser(CancelFittingException("test")), StepBegin)
        learner = test_learner(cancel, n_batches=1)
        with pytest.raises(CancelFittingException, match=exact("test")):
            trio.run(step, learner, TrainingPhase(), learner.data.training[0])


class AsyncBoom(Callback):
    """Raises KeyError('async boom') from an async handler at the first validation StepBegin."""

    @on(StepBegin, ValidationPhase)
    async def h(self, event: Event, phase: Phase, learner: Any) -> None:
        await trio.sleep(0)
        raise KeyError("async boom")


class TestErrors:
    def test_error_propagates_as_itself_with_a_note(self) -> None:
        """An error in a handler propagates as itself (no ExceptionGroup), noted with the callback and event."""
        with pytest.raises(ValueError) as info:
            trio.run(fit, test_learner(Boom(), n_batches=1), 1)
        assert type(info.value) is ValueError
        assert info.value.args == ("boom",)
        assert info.value.__notes__ == [
            "asyncloop: raised by callback Boom while handling StepEnd() in TrainingPhase()"
        ]

    async def test_async_handler_error_propagates_with_a_note(self) -> None:
        """An error in an async handler propagates as itself from await fit(...), noted once."""
        with pytest.raises(KeyError) as info:
            await fit(test_learner(AsyncBoom(), n_batches=1), 1)
        assert type(info.value) is KeyError
        assert info.value.__notes__ == [
            "asyncloop: raised by callback AsyncBoom while handling StepBegin() in ValidationPhase()"
        ]

    def test_error_from_epoch_and_step(self) -> None:
        """epoch() and step() propagate handler errors as themselves too."""
        learner = test_learner(Boom(), n_batches=1)
        with pytest.raises(ValueError, match=r"^boom\n"):
            trio.run(epoch, learner, TrainingPhase())
        with pytest.raises(ValueError, match=r"^boom\n"):
            trio.run(step, learner, TrainingPhase(), learner.data.training[0])

    def test_error_in_loop_code_has_no_note(self) -> None:
        """An error raised by the model or loss (not a callback) propagates without an asyncloop note."""

        def bad_loss(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
            raise ArithmeticError("bad loss")

        learner = test_learner(n_batches=1)
        learner.loss_fn = bad_loss
        with pytest.raises(ArithmeticError, match=exact("bad loss")) as info:
            trio.run(fit, learner, 1)
        assert not getattr(info.value, "__notes__", [])

    def test_fit_end_does_not_fire_after_an_error(self, event_log: Any) -> None:
        """After an error (not a CancelFittingException), FitEnd is not dispatched."""
        with pytest.raises(ValueError):
            trio.run(fit, test_learner(event_log, Boom(), n_batches=1), 1)
        assert ("FitEnd", F) not in event_log.events

    def test_learner_is_usable_after_an_error(self) -> None:
        """After a failed fit the learner can be fitted again."""
        learner = test_learner(Recorder(), Boom(), n_batches=1)
        with pytest.raises(ValueError):
            trio.run(fit, learner, 1)
        learner.remove_callback(Boom)
        assert trio.run(fit, learner, 1).epochs == 1


# ----------------------------------------------------------------------------------------------------------------
# epoch / step / run_epoch / run_step (seed cases #12-#15)
# ----------------------------------------------------------------------------------------------------------------


class TestEpochAndStep:
    def test_epoch_uses_learner_data(self, event_log: Any) -> None:
        """epoch(learner, phase) runs over learner.data[phase.data_key]."""
        learner = test_learner(event_log, n_batches=3)
        trio.run(epoch, learner, ValidationPhase())
        assert event_log.events == [("EpochBegin", V), *VALID_STEP * 3, ("EpochEnd", V)]

    def test_epoch_with_data(self, event_log: Any) -> None:
        """epoch(learner, phase, data) runs over the given batches."""
        learner = test_learner(event_log, n_batches=3)
        trio.run(epoch, learner, TrainingPhase(), learner.data.training[:1])
        assert event_log.events == [("EpochBegin", T), *TRAIN_STEP, ("EpochEnd", T)]

    def test_epoch_without_data(self) -> None:
        """epoch() for a phase without data says how to provide it."""
        learner = test_learner()
        learner.data = {"training": learner.data.training}
        with pytest.raises(
            ValueError,
            match=exact("no data for ValidationPhase(): pass data to epoch(), or set learner.data['validation']"),
        ):
            trio.run(epoch, learner, ValidationPhase())

    def test_epoch_for_phase_without_data_key(self) -> None:
        """epoch() for a phase with no data_key needs explicit data."""

        class Plain(Phase):
            pass

        with pytest.raises(ValueError, match=exact("Plain() has no data_key; pass data to epoch()")):
            trio.run(epoch, test_learner(), Plain())

    @pytest.mark.parametrize("fn", [epoch, step])
    def test_phase_class_instead_of_instance(self, fn: Any) -> None:
        """Passing a phase class instead of an instance says to instantiate it."""
        learner = test_learner(n_batches=1)
        args = (learner.data.training[0],) if fn is step else ()
        with pytest.raises(TypeError, match=exact("pass a phase instance: TrainingPhase(), not TrainingPhase")):
            trio.run(fn, learner, TrainingPhase, *args)

    def test_not_a_phase(self) -> None:
        """Passing something that is not a Phase is rejected."""
        with pytest.raises(
            TypeError, match=exact("phase must be an asyncloop Phase such as TrainingPhase(), got 'training'")
        ):
            trio.run(epoch, test_learner(), "training")

    def test_training_step_state(self) -> None:
        """Seed #14: a training step inside run_epoch returns state with xs, ys, preds, grads and a scalar loss."""
        learner = test_learner(n_batches=1)
        states = []

        async def epoch_fn(handle: Any) -> None:
            states.append(await step(learner, TrainingPhase(), learner.data.training[0]))

        trio.run(run_epoch, epoch_fn, learner, TrainingPhase())
        (state,) = states
        assert set(state) == {"xs", "ys", "preds", "loss", "grads"}
        assert state.preds.shape == state.xs.shape == (8,)
        assert state.loss.ndim == 0
        assert set(state.grads) == {"c"}
        assert state.grads["c"].shape == ()

    def test_validation_step_state(self) -> None:
        """Seed #15: a validation step returns state with xs, ys, preds and loss, and no grads."""
        learner = test_learner(n_batches=1)
        states = []

        async def epoch_fn(handle: Any) -> None:
            states.append(await step(learner, ValidationPhase(), learner.data.validation[0]))

        trio.run(run_epoch, epoch_fn, learner, ValidationPhase())
        assert set(states[0]) == {"xs", "ys", "preds", "loss"}

    def test_step_outside_an_epoch(self, event_log: Any) -> None:
        """step() can be called on its own; it fires only the step's events."""
        learner = test_learner(event_log, n_batches=1)
        trio.run(step, learner, TrainingPhase(), learner.data.training[0])
        assert event_log.events == TRAIN_STEP

    def test_each_step_gets_a_new_state(self) -> None:
        """learner.step is a fresh PropDict per step, so an old reference stays as it was."""
        learner = test_learner(n_batches=2)
        first = trio.run(step, learner, TrainingPhase(), learner.data.training[0])
        second = trio.run(step, learner, TrainingPhase(), learner.data.training[1])
        assert first is not second
        assert learner.step is second
        assert first.xs is learner.data.training[0][0]


class TestRunStepRunEpoch:
    def test_run_step_returns_state(self, event_log: Any) -> None:
        """Seed #12: run_step with a custom phase returns the state its step_fn filled, between StepBegin/StepEnd."""
        learner = test_learner(event_log, n_batches=1)

        async def step_fn(handle: Any, state: PropDict) -> None:
            state.xs, state.ys = learner.data.training[0]
            state.loss = (state.xs - state.ys).abs().sum()

        state = trio.run(run_step, step_fn, learner, CustomPhase())
        assert isinstance(state.xs, torch.Tensor)
        assert state.loss.ndim == 0
        assert event_log.events == [("StepBegin", "CustomPhase"), ("StepEnd", "CustomPhase")]

    def test_run_step_initial_state_is_visible_at_step_begin(self, event_log: Any) -> None:
        """The initial state is installed as learner.step before StepBegin."""
        learner = test_learner(event_log, n_batches=1)

        async def step_fn(handle: Any, state: PropDict) -> None:
            await handle(LossBegin())

        state = trio.run(run_step, step_fn, learner, CustomPhase(), {"xs": 1, "ys": 2})
        assert state == PropDict(xs=1, ys=2)
        assert event_log.step_keys[0] == ("StepBegin", frozenset({"xs", "ys"}))
        assert event_log.events == [("StepBegin", "CustomPhase"), ("LossBegin", "CustomPhase"),
                                    ("StepEnd", "CustomPhase")]

    def test_run_epoch_swallows_cancel_epoch(self, event_log: Any) -> None:
        """Seed #13: run_epoch with an epoch_fn raising CancelEpochException lets nothing escape; EpochEnd fires."""
        learner = test_learner(event_log, n_batches=1)

        async def epoch_fn(handle: Any) -> None:
            raise CancelEpochException("test")

        trio.run(run_epoch, epoch_fn, learner, CustomPhase())
        assert event_log.events == [("EpochBegin", "CustomPhase"), ("EpochEnd", "CustomPhase")]

    def test_handle_dispatches_custom_events(self) -> None:
        """handle(event) inside run_epoch dispatches any event, including custom ones, with the epoch's phase."""

        class Midway(Event):
            pass

        seen = []
        learner = test_learner(CustomCallback(lambda _: seen.append("midway"), Midway, AbstractTrainingPhase))

        async def epoch_fn(handle: Any) -> None:
            await handle(Midway())

        trio.run(run_epoch, epoch_fn, learner, CustomPhase())
        assert seen == ["midway"]

    def test_custom_phase_trains(self) -> None:
        """A custom training phase runs through epoch(), reaches AbstractTrainingPhase handlers and is recorded."""
        learner = test_learner(Recorder(), n_batches=3)
        trio.run(epoch, learner, CustomPhase())
        assert history(learner, CustomPhase()) == (1, 3, 3)
        assert history(learner, TrainingPhase()) == (0, 0, 0)

    def test_run_step_propagates_other_errors(self) -> None:
        """Errors from step_fn other than CancelStepException propagate from run_step."""

        async def step_fn(handle: Any, state: PropDict) -> None:
            raise LookupError("inside")

        with pytest.raises(LookupError, match=exact("inside")):
            trio.run(run_step, step_fn, test_learner(), CustomPhase())

    def test_run_step_swallows_cancel_step(self, event_log: Any) -> None:
        """CancelStepException in step_fn skips StepEnd and returns the partial state."""
        learner = test_learner(event_log)

        async def step_fn(handle: Any, state: PropDict) -> None:
            state.a = 1
            raise CancelStepException("skip")

        state = trio.run(run_step, step_fn, learner, CustomPhase())
        assert state == PropDict(a=1)
        assert event_log.events == [("StepBegin", "CustomPhase")]


# ----------------------------------------------------------------------------------------------------------------
# fit(phases=...), limits and cadence
# ----------------------------------------------------------------------------------------------------------------


class DictTraining(AbstractTrainingPhase):
    """A custom training phase fed dict batches ``{"x": ..., "y": ...}``, with its own backward and update."""

    __test__ = False

    async def step(self, learner: Learner, batch: Any) -> PropDict:
        async def step_fn(handle: Any, state: PropDict) -> None:
            state.preds = learner.model(state.xs)
            await handle(LossBegin())
            state.loss = (state.preds - state.ys).abs().mean()
            await handle(BackwardBegin())
            learner.optimizer.zero_grad()
            state.loss.backward()
            state.loss = state.loss.detach()
            learner.optimizer.step()

        return await run_step(step_fn, learner, self, {"xs": batch["x"], "ys": batch["y"]})


class DictValidation(AbstractValidationPhase):
    """A custom validation phase fed dict batches."""

    __test__ = False

    async def step(self, learner: Learner, batch: Any) -> PropDict:
        async def step_fn(handle: Any, state: PropDict) -> None:
            with torch.no_grad():
                state.preds = learner.model(state.xs)
                state.loss = (state.preds - state.ys).abs().mean()

        return await run_step(step_fn, learner, self, {"xs": batch["x"], "ys": batch["y"]})


def dict_learner(*callbacks: Callback, n_batches: int = 4, **kw: Any) -> Learner:
    """test_learner with its batches as dicts ``{"x": xs, "y": ys}``."""
    learner = test_learner(*callbacks, n_batches=n_batches, **kw)
    batches = [{"x": xs, "y": ys} for xs, ys in learner.data["training"]]
    learner.data = PropDict(training=batches, validation=batches)
    return learner


class CountSteps(Callback):
    """Counts steps and epochs per phase class name, and FitEnd."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}
        self.epochs: dict[str, int] = {}
        self.fit_end = 0

    @on(StepEnd)
    def step_end(self, event: Any, phase: Phase, learner: Any) -> None:
        self.steps[type(phase).__name__] = self.steps.get(type(phase).__name__, 0) + 1

    @on(EpochEnd)
    def epoch_end(self, event: Any, phase: Phase, learner: Any) -> None:
        self.epochs[type(phase).__name__] = self.epochs.get(type(phase).__name__, 0) + 1

    @on(FitEnd)
    def end(self, event: Any, phase: Phase, learner: Any) -> None:
        self.fit_end += 1


class TestFitPhases:
    def test_custom_phases_run_with_callbacks(self) -> None:
        """fit(phases=...) runs a custom training and validation phase on dict batches, with every callback."""
        torch.manual_seed(0)
        count = CountSteps()
        learner = dict_learner(count, Recorder())
        before = learner.model.c.item()
        result = trio.run(lambda: fit(learner, 2, phases=(DictTraining(), DictValidation())))
        assert (result.epochs, result.steps, result.stopped) == (2, 8, False)
        assert count.steps == {"DictTraining": 8, "DictValidation": 8}
        assert count.epochs == {"DictTraining": 2, "DictValidation": 2} and count.fit_end == 1
        assert learner.cbstate.history[DictTraining()].epochs == 2
        assert TrainingPhase() not in learner.cbstate.history
        assert learner.model.c.item() != before

    def test_no_validation_phase(self) -> None:
        """phases=(training, None) runs no validation epochs."""
        count = CountSteps()
        trio.run(lambda: fit(dict_learner(count), 2, phases=(DictTraining(), None)))
        assert count.epochs == {"DictTraining": 2}

    def test_default_phases_are_the_built_in_ones(self) -> None:
        """Without phases=, fit runs TrainingPhase and ValidationPhase."""
        count = CountSteps()
        trio.run(fit, test_learner(count, n_batches=2), 1)
        assert count.epochs == {"TrainingPhase": 1, "ValidationPhase": 1}

    @pytest.mark.parametrize(
        ("phases", "message"),
        [
            (
                DictTraining(),
                "phases must be a pair (training_phase, validation_phase), e.g. (MyTraining(), ValidationPhase()) "
                "or (MyTraining(), None), got DictTraining()",
            ),
            (
                (DictTraining, None),
                "phases[0]: pass a phase instance: DictTraining(), not DictTraining",
            ),
            (
                (DictTraining(), ValidationPhase),
                "phases[1]: pass a phase instance: ValidationPhase(), not ValidationPhase",
            ),
            (
                (ValidationPhase(), TrainingPhase()),
                "phases[0] must be the training phase, an instance of a AbstractTrainingPhase subclass, got "
                "ValidationPhase()",
            ),
            (
                (TrainingPhase(), TrainingPhase()),
                "phases[1] must be the validation phase, an instance of a AbstractValidationPhase subclass or None, "
                "got TrainingPhase()",
            ),
            (
                (None, ValidationPhase()),
                "phases[0] must be the training phase, an instance of a AbstractTrainingPhase subclass, got None",
            ),
        ],
    )
    def test_bad_phases(self, phases: Any, message: str) -> None:
        """A phases= that is not a (training instance, validation instance or None) pair is a clear TypeError."""
        with pytest.raises(TypeError, match=exact(message)):
            trio.run(lambda: fit(test_learner(), 1, phases=phases))

    def test_custom_phase_resume_matches_a_straight_fit(self, tmp_path: Any) -> None:
        """2 epochs of a custom phase, then a resume for 2, end exactly where 4 epochs straight would."""
        from asyncloop import Checkpointer, Metrics

        phases = (DictTraining(), DictValidation())
        torch.manual_seed(1)
        straight = dict_learner(Recorder(), Metrics())
        trio.run(lambda: fit(straight, 4, phases=phases))
        torch.manual_seed(1)
        first = dict_learner(Recorder(), Metrics(), Checkpointer(tmp_path))
        trio.run(lambda: fit(first, 2, phases=phases))
        torch.manual_seed(1)
        second = dict_learner(Recorder(), Metrics(), Checkpointer(tmp_path))
        result = trio.run(lambda: fit(second, 2, phases=phases, resume=tmp_path))
        assert result.epochs == 2 and second.cbstate.history[DictTraining()].epochs == 4
        assert second.model.c.item() == straight.model.c.item()


class TestLimitsAndCadence:
    def test_max_steps_ends_the_epoch_cleanly(self) -> None:
        """max_steps stops mid-epoch: that epoch ends and validates, FitEnd fires, the result says max_steps."""
        count = CountSteps()
        result = trio.run(lambda: fit(test_learner(count, Recorder(), n_batches=4), 5, max_steps=6))
        assert (result.epochs, result.steps, result.stopped, result.limit) == (2, 6, False, "max_steps")
        assert count.steps["TrainingPhase"] == 6 and count.fit_end == 1
        assert count.epochs == {"TrainingPhase": 2, "ValidationPhase": 2}

    def test_max_steps_not_reached(self) -> None:
        """A max_steps the fit does not reach changes nothing: limit stays None."""
        result = trio.run(lambda: fit(test_learner(n_batches=2), 2, max_steps=100))
        assert (result.epochs, result.steps, result.limit) == (2, 4, None)

    def test_batch_limits(self) -> None:
        """limit_train_batches and limit_val_batches cut every epoch; progress bars see the cut length."""
        count = CountSteps()
        lengths: list[int] = []
        seen = CustomCallback(lambda learner: lengths.append(len(learner.epoch_data)), EpochBegin,
                              access={"epoch_data": Read()})
        trio.run(lambda: fit(test_learner(count, seen, n_batches=5), 2, limit_train_batches=2, limit_val_batches=3))
        assert count.steps == {"TrainingPhase": 4, "ValidationPhase": 6}
        assert lengths == [2, 3, 2, 3]

    def test_batch_limit_over_an_iterator(self) -> None:
        """A limit over data without a len still cuts the epoch (a generator-like iterable)."""

        class Stream:
            def __init__(self, batches: list[Any]) -> None:
                self.batches = batches

            def __iter__(self) -> Any:
                return iter(self.batches)

        learner = test_learner(n_batches=5)
        batches = learner.data["training"]
        result = trio.run(lambda: fit(learner, 1, (Stream(batches), None), limit_train_batches=3))
        assert result.steps == 3

    def test_val_every_n_epochs(self) -> None:
        """val_every_n_epochs=2 validates after training epochs 2 and 4 (counted across fits)."""
        count = CountSteps()
        learner = test_learner(count, Recorder(), n_batches=1)
        trio.run(lambda: fit(learner, 3, val_every_n_epochs=2))
        assert count.epochs == {"TrainingPhase": 3, "ValidationPhase": 1}
        trio.run(lambda: fit(learner, 1, val_every_n_epochs=2))  # total epoch 4
        assert count.epochs == {"TrainingPhase": 4, "ValidationPhase": 2}

    def test_val_every_n_steps(self, event_log: Any) -> None:
        """val_every_n_steps=3 runs a validation epoch inside the training epoch after steps 3 and 6, and none at
        the epochs' ends; the training epoch's data is back for its callbacks afterwards."""
        lengths: list[int] = []
        seen = CustomCallback(lambda learner: lengths.append(len(learner.epoch_data)), EpochEnd, TrainingPhase,
                              access={"epoch_data": Read()})
        learner = test_learner(event_log, seen, Recorder(), n_batches=4)
        learner.data = PropDict(training=learner.data.training, validation=learner.data.validation[:1])
        trio.run(lambda: fit(learner, 2, val_every_n_steps=3))
        epochs = [e for e in event_log.events if e[0] in ("EpochBegin", "EpochEnd")]
        assert epochs == [("EpochBegin", T), ("EpochBegin", V), ("EpochEnd", V), ("EpochEnd", T),
                          ("EpochBegin", T), ("EpochBegin", V), ("EpochEnd", V), ("EpochEnd", T)]
        steps = [e[1] for e in event_log.events if e[0] == "StepEnd"]
        assert steps == [T, T, T, V, T, T, T, V, T, T]
        assert learner.cbstate.history[ValidationPhase()].epochs == 2
        assert lengths == [4, 4]

    def test_val_every_n_steps_needs_the_default_epoch(self) -> None:
        """val_every_n_steps with a training phase that overrides epoch() is a clear error."""

        class OwnEpoch(DictTraining):
            async def epoch(self, learner: Learner, data: Any) -> None:
                pass

        with pytest.raises(ValueError, match=exact(
            "val_every_n_steps validates between the steps of Phase.epoch, and OwnEpoch overrides epoch(); keep the "
            "default epoch() (customise step() only) or use val_every_n_epochs"
        )):
            trio.run(lambda: fit(test_learner(), 1, phases=(OwnEpoch(), None), val_every_n_steps=2))

    def test_until_epoch(self) -> None:
        """until_epoch=n trains until n training epochs in total; nothing runs when already there."""
        learner = test_learner(Recorder(), n_batches=1)
        trio.run(fit, learner, 2)
        assert trio.run(lambda: fit(learner, until_epoch=5)).epochs == 3
        assert trio.run(lambda: fit(learner, until_epoch=4)).epochs == 0
        assert learner.cbstate.history[TrainingPhase()].epochs == 5

    def test_until_epoch_needs_a_recorder(self) -> None:
        """until_epoch without a Recorder is a clear error."""
        with pytest.raises(ValueError, match=exact(
            "fit(until_epoch=) counts the epochs the Recorder records, and there is no Recorder; add Recorder() "
            "(a default callback) or pass n_epochs"
        )):
            trio.run(lambda: fit(test_learner(), until_epoch=2))

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({}, TypeError, "fit needs exactly one of n_epochs (how many more epochs) and until_epoch (train until "
             "that many epochs in total), got n_epochs=None, until_epoch=None"),
            ({"n_epochs": 2, "until_epoch": 3}, TypeError, "fit needs exactly one of n_epochs (how many more "
             "epochs) and until_epoch (train until that many epochs in total), got n_epochs=2, until_epoch=3"),
            ({"n_epochs": 1, "max_steps": -1}, ValueError, "max_steps must be None or an int >= 0, got -1"),
            ({"n_epochs": 1, "limit_train_batches": 0.5}, ValueError, "limit_train_batches must be None or an int "
             ">= 0, got 0.5 (a float fraction is not supported: pass a number of batches)"),
            ({"n_epochs": 1, "limit_val_batches": "2"}, ValueError, "limit_val_batches must be None or an int >= 0, "
             "got '2'"),
            ({"n_epochs": 1, "val_every_n_epochs": 0}, ValueError, "val_every_n_epochs must be None or an int >= 1, "
             "got 0"),
        ],
    )
    def test_bad_limits(self, kwargs: dict[str, Any], error: type, message: str) -> None:
        """Bad epoch counts and limits are clear errors before anything runs."""
        with pytest.raises(error, match=exact(message)):
            trio.run(lambda: fit(test_learner(), **kwargs))


class TestOneShotTrainingData:
    @staticmethod
    def _batches(learner: Any) -> list[Any]:
        return list(learner.data.training)

    def test_a_used_up_generator_warns_once(self) -> None:
        """A generator as training data warns at the first epoch it leaves empty, naming the fix."""
        learner = test_learner(n_batches=4)
        batches = self._batches(learner)
        message = (
            "training epoch 2 of this fit got no batches: the training data is a one-shot iterator (generator), used "
            "up by an earlier epoch or fit, so every later epoch is empty; pass a list, a DataLoader or another "
            "re-iterable (a class whose __iter__ starts over), or make a fresh generator for each fit"
        )
        with pytest.warns(UserWarning, match=exact(message)) as caught:
            result = trio.run(lambda: fit(learner, 3, data=((b for b in batches), None)))
        assert len([w for w in caught if "one-shot" in str(w.message)]) == 1
        assert (result.epochs, result.steps) == (3, 4)

    def test_reiterable_or_endless_data_does_not_warn(self) -> None:
        """A list, or an endless generator cut by limit_train_batches, fills every epoch and warns nothing."""
        learner = test_learner(n_batches=4)
        batches = self._batches(learner)

        def endless() -> Any:
            while True:
                yield from batches

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            trio.run(lambda: fit(learner, 2, data=(batches, None)))
            result = trio.run(lambda: fit(learner, 3, data=(endless(), None), limit_train_batches=2))
        assert result.steps == 6
