"""Tests for asyncloop.stopping: the EarlyStopping.jl criteria, with the reference's exact definitions (A.5)."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncloop import CancelFittingException
from asyncloop.stopping import (
    GL,
    PQ,
    UP,
    Disjunction,
    EarlyStopped,
    InvalidValue,
    Never,
    NumberLimit,
    NumberSinceBest,
    Patience,
    StoppingCriterion,
    Threshold,
    TimeLimit,
    Warmup,
)
from matchers import exact


def run(criterion: StoppingCriterion, values: list[float], training: list[float] | None = None) -> list[bool]:
    """Feed validation ``values`` (each preceded by the training value of the same index, if given); return done."""
    state: Any = None
    out = []
    for i, v in enumerate(values):
        if training is not None:
            state = criterion.update_training(training[i], state)
        state = criterion.update(v, state)
        out.append(criterion.done(state))
    return out


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


class TestNever:
    def test_never_stops(self) -> None:
        """Never() is never done, whatever it is fed."""
        assert run(Never(), [1.0, math.nan, math.inf]) == [False, False, False]

    def test_message(self) -> None:
        """The default message names the criterion, as EarlyStopping.jl's."""
        assert Never().message(None) == "Stop triggered by Never() stopping criterion."


class TestInvalidValue:
    def test_latches_on_nan_and_inf(self) -> None:
        """Once NaN, Inf or -Inf was seen the state stays true."""
        assert run(InvalidValue(), [1.0, -math.inf, 2.0]) == [False, True, True]
        assert run(InvalidValue(), [math.nan]) == [True]

    def test_training_values_count(self) -> None:
        """A non-finite training value also stops."""
        c = InvalidValue()
        assert c.done(c.update_training(math.inf, None))

    def test_message(self) -> None:
        """The message is EarlyStopping.jl's."""
        assert InvalidValue().message(True) == "Stopping early as `NaN`, `Inf` or `-Inf` encountered."


class TestTimeLimit:
    def test_number_means_hours(self) -> None:
        """A number is hours, rounded to milliseconds."""
        assert TimeLimit(0.5).t == datetime.timedelta(minutes=30)
        assert TimeLimit().t == datetime.timedelta(minutes=30)
        assert TimeLimit(datetime.timedelta(seconds=2)).t == datetime.timedelta(seconds=2)

    def test_not_positive(self) -> None:
        """The limit must be positive."""
        with pytest.raises(ValueError, match=exact("TimeLimit: t must be positive, got 0")):
            TimeLimit(0)
        with pytest.raises(
            TypeError, match=exact("TimeLimit: t must be a number of hours or a datetime.timedelta, got '1h'")
        ):
            TimeLimit("1h")

    def test_elapsed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Done once strictly more than t elapsed since the first (training or validation) update."""
        now = [1000.0]
        monkeypatch.setattr("asyncloop.stopping.time.time", lambda: now[0])
        c = TimeLimit(datetime.timedelta(seconds=10))
        state = c.update_training(1.0, None)
        assert state == 1000.0
        now[0] = 1010.0
        state = c.update(1.0, state)
        assert state == 1000.0 and not c.done(state)
        now[0] = 1010.001
        assert c.done(state)

    def test_repr(self) -> None:
        """The repr reads as the call that builds it."""
        assert repr(TimeLimit(0.5)) == "TimeLimit(0.5)"


class TestNumberLimit:
    def test_counts_validation_updates_only(self) -> None:
        """Training updates are ignored; done at the n-th validation update."""
        c = NumberLimit(2)
        assert run(c, [5.0, 4.0, 3.0], training=[1.0, 1.0, 1.0]) == [False, True, True]
        assert c.update_training(1.0, None) is None

    def test_bad_n(self) -> None:
        """n must be a positive int."""
        with pytest.raises(ValueError, match=exact("NumberLimit: n must be an int > 0, got 0")):
            NumberLimit(0)


class TestNumberSinceBest:
    def test_counts_updates_since_the_best(self) -> None:
        """The count grows when the value does not improve strictly, and resets on a new best."""
        assert run(NumberSinceBest(2), [3.0, 2.0, 2.0, 2.5, 1.0, 1.0, 1.0]) == [
            False,
            False,
            False,
            True,
            False,
            False,
            True,
        ]

    def test_state(self) -> None:
        """State is (best, number_since_best)."""
        c = NumberSinceBest(3)
        s = c.update(3.0, None)
        assert s == (3.0, 0)
        assert c.update(4.0, s) == (3.0, 1)
        assert c.update(1.0, (3.0, 1)) == (1.0, 0)

    @given(st.lists(finite, min_size=1, max_size=30), st.integers(1, 5))
    def test_matches_a_reference(self, values: list[float], n: int) -> None:
        """Done exactly when the last n values brought no new minimum (count == n, as EarlyStopping.jl)."""
        expected = []
        best, count = math.inf, -1
        for v in values:
            best, count = (v, 0) if v < best else (best, count + 1)
            expected.append(count == n)
        assert run(NumberSinceBest(n), values) == expected

    def test_default(self) -> None:
        """The default n is 6."""
        assert NumberSinceBest() == NumberSinceBest(6)


class TestThreshold:
    def test_below_value(self) -> None:
        """Done when the last value is strictly below the threshold."""
        assert run(Threshold(1.0), [2.0, 1.0, 0.5, 2.0]) == [False, False, True, False]

    def test_ignores_training(self) -> None:
        """Training values do not change the state."""
        assert Threshold().update_training(-5.0, None) is None


class TestGL:
    def test_generalization_loss(self) -> None:
        """GL = 100 * (loss / |min_loss| - 1) > alpha."""
        c = GL(2.0)
        s = c.update(1.0, None)
        s = c.update(1.01, s)
        assert s == (1.01, 1.0) and not c.done(s)  # GL = 1.0
        s = c.update(1.03, s)
        assert c.done(s)

    def test_bad_alpha(self) -> None:
        """alpha must be positive."""
        with pytest.raises(ValueError, match=exact("GL: alpha must be a number > 0, got -1")):
            GL(-1)


class TestPQ:
    def test_progress_quotient(self) -> None:
        """Stops when GL / P > alpha, with P over the last k training values (most recent first)."""
        c = PQ(alpha=0.1, k=2)
        s = c.update_training(1.0, None)
        assert s == {"training_losses": [1.0], "waiting": True, "loss": None, "min_loss": None}
        s = c.update(1.0, s)
        assert not c.done(s)  # only one training value so far
        s = c.update_training(0.9, s)
        assert not c.done(s)  # waiting for an out-of-sample value
        s = c.update(1.1, s)
        assert s["training_losses"] == [0.9, 1.0]
        progress = 1000 * ((0.95) / 0.9 - 1)
        gl = 100 * (1.1 / 1.0 - 1)
        assert gl / progress > 0.1
        assert c.done(s)

    def test_keeps_k_training_values(self) -> None:
        """Only the k most recent training values are kept."""
        c = PQ(k=3)
        s = None
        for v in [5.0, 4.0, 3.0, 2.0]:
            s = c.update_training(v, s)
        assert s["training_losses"] == [2.0, 3.0, 4.0]

    def test_no_progress_stops(self) -> None:
        """P <= tol stops: training has stalled."""
        c = PQ(k=2)
        s = c.update_training(1.0, None)
        s = c.update_training(1.0, s)
        s = c.update(2.0, s)
        assert c.done(s)

    def test_bad_arguments(self) -> None:
        """alpha > 0, k an int >= 2 or inf, tol > 0."""
        with pytest.raises(ValueError, match=exact("PQ: k must be an int >= 2 or math.inf, got 1")):
            PQ(k=1)
        with pytest.raises(ValueError, match=exact("PQ: tol must be a number > 0, got 0")):
            PQ(tol=0)
        assert PQ(k=math.inf).k == math.inf


class TestPatience:
    def test_consecutive_increases(self) -> None:
        """n consecutive strict increases stop; an equal or lower value resets the count."""
        assert run(Patience(2), [1.0, 2.0, 2.0, 3.0, 4.0]) == [False, False, False, False, True]

    def test_plateau_never_stops(self) -> None:
        """A plateau is not an increase, which is why EarlyStopping(n) uses NumberSinceBest instead."""
        assert not any(run(Patience(2), [1.0] * 10))
        assert any(run(NumberSinceBest(2), [1.0] * 10))

    def test_alias(self) -> None:
        """UP is Prechelt's name for Patience."""
        assert UP is Patience


class TestWarmup:
    def test_skips_the_first_n_updates(self) -> None:
        """The inner criterion starts afresh at update n + 1; training updates count too."""
        c = Warmup(NumberSinceBest(1), n=2)
        s = c.update(1.0, None)
        assert s == (1, (1.0, 0))
        s = c.update_training(9.0, s)
        assert s == (2, (1.0, 0)) and not c.done(s)
        s = c.update(5.0, s)
        assert s == (3, (5.0, 0))  # fresh: 1.0 from the warm-up is forgotten
        s = c.update(6.0, s)
        assert c.done(s)
        assert c.message(s) == "Stop triggered by NumberSinceBest(1) stopping criterion."

    def test_bad_arguments(self) -> None:
        """n must be positive; the criterion must be a criterion."""
        with pytest.raises(ValueError, match=exact("Warmup: n must be an int > 0, got 0")):
            Warmup(InvalidValue(), 0)
        with pytest.raises(TypeError, match=exact("Warmup wraps a stopping criterion, got 3")):
            Warmup(3)  # type: ignore[arg-type]


class TestDisjunction:
    def test_any_done(self) -> None:
        """Done when either side is done; the message joins the done ones."""
        c = NumberLimit(3) | Threshold(0.5)
        assert isinstance(c, Disjunction)
        assert run(c, [1.0, 0.4]) == [False, True]
        s = c.update(0.1, c.update(0.2, c.update(0.3, None)))
        assert c.message(s) == (
            "Stop triggered by NumberLimit(3) stopping criterion. Stop triggered by Threshold(0.5) stopping criterion."
        )

    def test_plus_and_constructor(self) -> None:
        """a + b and Disjunction(a, b, c) build the same nested pairs."""
        a, b, c = NumberLimit(3), Threshold(), InvalidValue()
        assert a + b + c == Disjunction(a, b, c) == a | b | c
        assert repr(Disjunction(a, b, c)) == "Disjunction(NumberLimit(3), Threshold(0.0), InvalidValue())"

    def test_degenerate(self) -> None:
        """Disjunction() is Never(), Disjunction(c) is c, and Never() disappears from a disjunction."""
        assert Disjunction() == Never()
        assert Disjunction(Patience(2)) == Patience(2)
        assert Never() | Patience(2) == Patience(2)
        assert Patience(2) + Never() == Patience(2)

    def test_deduplicates(self) -> None:
        """A criterion already contained is not added again."""
        c = NumberLimit(3) | Threshold()
        assert (c | NumberLimit(3)) is c
        assert (NumberLimit(3) | c) is c

    def test_training_values_reach_both(self) -> None:
        """update_training feeds both sides."""
        c = InvalidValue() | PQ()
        s = c.update_training(math.nan, None)
        assert s["a"] is True and s["b"]["training_losses"][0] != s["b"]["training_losses"][0]
        assert c.done(s)

    def test_not_a_criterion(self) -> None:
        """Only criteria combine."""
        with pytest.raises(TypeError, match=exact("Disjunction combines stopping criteria such as Patience(3), got 3")):
            Disjunction(Patience(), 3)  # type: ignore[arg-type]


class TestStates:
    def test_states_are_plain_data(self) -> None:
        """Every state is made of numbers, bools, tuples, lists and dicts (checkpointable without pickle)."""

        def plain(x: Any) -> bool:
            if isinstance(x, (bool, int, float, type(None))):
                return True
            if isinstance(x, (tuple, list)):
                return all(plain(v) for v in x)
            if isinstance(x, dict):
                return all(isinstance(k, str) and plain(v) for k, v in x.items())
            return False

        c = Warmup(NumberSinceBest(2) | GL() | PQ() | Patience() | TimeLimit(1) | NumberLimit() | Threshold(), n=1)
        s = None
        for v in [3.0, 2.0, 2.5]:
            s = c.update_training(v + 1, s)
            s = c.update(v, s)
            assert plain(s)

    def test_early_stopped_is_a_cancel_fitting_exception(self) -> None:
        """EarlyStopped carries the criterion, monitor, value and epoch."""
        exc = EarlyStopped("msg", Patience(1), "Loss", 2.0, 3)
        assert isinstance(exc, CancelFittingException)
        assert (str(exc), exc.criterion, exc.monitor, exc.value, exc.epoch) == ("msg", Patience(1), "Loss", 2.0, 3)
