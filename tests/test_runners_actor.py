"""ActorRunner: concurrency by graph layer, detached actors, backpressure, ordering, errors, equivalence."""

from __future__ import annotations

import io
import re
import sys
import threading
import time

import pytest
import torch
import trio

import asyncloop as al
from asyncloop.phases import FitPhase

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def learner(*callbacks: al.Callback, runner: al.ActorRunner | None = None, **kw) -> al.Learner:
    torch.manual_seed(0)
    return al.test_learner(*callbacks, runner=runner or al.ActorRunner(), **kw)


class Observer(al.Callback):
    """A detached reader that records (event, phase, steps) and optionally blocks."""

    state_access = {"cbstate": {"history": al.Read()}}
    run_after = (al.Recorder,)
    detached = True

    def __init__(self, sleep: float = 0.0) -> None:
        self.sleep = sleep
        self.seen: list[tuple[str, str, int]] = []
        self.intervals: list[tuple[float, float]] = []
        self.threads: set[int] = set()

    @al.on(al.Event)
    def record(self, event, phase, learner) -> None:
        t0 = time.perf_counter()
        self.threads.add(threading.get_ident())
        steps = learner.cbstate.history[phase].steps if not isinstance(phase, FitPhase) else -1
        self.seen.append((type(event).__name__, type(phase).__name__, steps))
        if self.sleep:
            time.sleep(self.sleep)
        self.intervals.append((t0, time.perf_counter()))


class StepClock(al.Callback):
    """An awaited callback that records when each training step ends (optionally slowing the step)."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.sleep = sleep
        self.ends: list[float] = []

    @al.on(al.StepEnd, al.AbstractTrainingPhase)
    def tick(self, event, phase, learner) -> None:
        if self.sleep:
            time.sleep(self.sleep)
        self.ends.append(time.perf_counter())


class TestConstruction:
    def test_inbox_size_must_be_positive(self) -> None:
        """A non-positive inbox size is rejected with a message naming the fix."""
        with pytest.raises(ValueError, match=r"^inbox_size must be an int >= 1, got 0$"):
            al.ActorRunner(inbox_size=0)

    def test_flush_interval_must_be_positive(self) -> None:
        """A non-positive flush interval is rejected."""
        with pytest.raises(ValueError, match=r"^flush_interval must be a number of seconds > 0, got 0$"):
            al.ActorRunner(flush_interval=0)

    @pytest.mark.parametrize("bad", [0, -1.0, True, "1ms"])
    def test_switch_interval_must_be_none_or_positive(self, bad) -> None:
        """A switch interval that is not None or a positive number is rejected, saying what is allowed."""
        with pytest.raises(ValueError, match=r"^switch_interval must be None \(leave the interpreter's alone\) or "
                                             rf"a number of seconds > 0, got {re.escape(repr(bad))}$"):
            al.ActorRunner(switch_interval=bad)

    def test_detached_writer_is_an_error_at_construction(self) -> None:
        """A detached callback that declares Write() access fails when the learner is built."""

        class Bad(al.Callback):
            state_access = {"cbstate": {"history": al.Write()}}
            detached = True

        with pytest.raises(al.DetachedWriterError, match=r"^Bad sets detached = True but declares Write\(\) access"):
            learner(Bad())

    def test_runner_belongs_to_one_learner(self) -> None:
        """A runner instance cannot be shared by two learners."""
        runner = al.ActorRunner()
        learner(runner=runner)
        with pytest.raises(ValueError, match=r"^this ActorRunner already belongs to another Learner"):
            learner(runner=runner)


class TestDetached:
    async def test_every_event_in_order_when_fit_returns(self) -> None:
        """When fit returns, a detached actor has handled every event, in order, off the event loop."""
        obs = Observer(sleep=0.001)
        lrn = learner(al.Recorder(), obs, n_batches=4)
        result = await al.fit(lrn, 2)
        names = [e for e, _, _ in obs.seen]
        assert names[0] == "FitBegin" and names[-1] == "FitEnd"
        assert names.count("StepEnd") == 16 and names.count("EpochEnd") == 4
        train_steps = [s for e, p, s in obs.seen if e == "StepEnd" and p == "TrainingPhase"]
        assert train_steps == list(range(1, 9))
        assert threading.get_ident() not in obs.threads
        stats = {s.name: s for s in result.statistics}["Observer"]
        assert stats.detached and stats.events == len(obs.seen)

    async def test_snapshot_holds_state_of_the_event(self) -> None:
        """A lagging actor sees the counters as they were when the event fired, not live ones."""
        obs = Observer(sleep=0.002)
        lrn = learner(al.Recorder(), obs, n_batches=8)
        await al.fit(lrn, 1)
        steps = [s for e, p, s in obs.seen if e == "StepEnd" and p == "TrainingPhase"]
        assert steps == list(range(1, 9))

    async def test_model_reader_gets_cloned_weights(self) -> None:
        """A detached reader of the model receives the weights as of the event (a clone, not the live module)."""

        class Weights(al.Callback):
            state_access = {"model": al.Read()}
            detached = True

            def __init__(self) -> None:
                self.values: list[float] = []

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def grab(self, event, phase, learner) -> None:
                time.sleep(0.002)
                self.values.append(float(learner.model.c.detach()))

        class Live(al.Callback):
            state_access = {"model": al.Read()}

            def __init__(self) -> None:
                self.values: list[float] = []

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def grab(self, event, phase, learner) -> None:
                self.values.append(float(learner.model.c.detach()))

        w, live = Weights(), Live()
        lrn = learner(w, live, n_batches=6)
        await al.fit(lrn, 1)
        assert w.values == live.values

    async def test_observer_overlaps_training(self) -> None:
        """A blocking detached observer runs while the loop keeps stepping (recorded intervals overlap)."""
        obs, clock = Observer(sleep=0.01), StepClock(sleep=0.003)
        lrn = learner(al.Recorder(), obs, clock, n_batches=30, runner=al.ActorRunner(flush_interval=0.001))
        await al.fit(lrn, 1)
        step_ends = clock.ends
        overlapping = sum(1 for t0, t1 in obs.intervals if any(t0 < t < t1 for t in step_ends))
        assert overlapping >= 3

    async def test_linear_runner_ignores_detached(self) -> None:
        """Under the LinearRunner a detached callback runs inline on the training thread."""
        obs, clock = Observer(sleep=0.002), StepClock()
        lrn = learner(al.Recorder(), obs, clock, runner=al.LinearRunner(), n_batches=5)
        await al.fit(lrn, 1)
        assert not any(any(t0 < t < t1 for t in clock.ends) for t0, t1 in obs.intervals)


class TestBackpressure:
    async def test_full_inbox_makes_the_loop_wait_and_drops_nothing(self) -> None:
        """With a tiny inbox a slow actor throttles the loop; every event is still handled."""

        class Slow(Observer):
            inbox_size = 2

        obs = Slow(sleep=0.003)
        lrn = learner(al.Recorder(), obs, n_batches=10)
        result = await al.fit(lrn, 1)
        stats = {s.name: s for s in result.statistics}["Slow"]
        assert [e for e, _, _ in obs.seen].count("StepEnd") == 20
        assert stats.loop_wait_time > 0
        assert stats.peak_inbox <= 3
        assert stats.events == len(obs.seen)

    async def test_run_after_holds_from_a_throttled_actor_to_a_blocking_one(self) -> None:
        """A detached actor that runs after a throttled one still starts each event only after the throttled actor
        handled it, or after that event was skipped for it (a skipped event is never published)."""
        log: list[tuple[str, int]] = []

        class Progress(al.Callback):
            state_access = {"cbstate": {"history": al.Read()}}
            run_after = (al.Recorder,)
            detached = True

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def tick(self, event, phase, learner) -> None:
                time.sleep(0.001)
                log.append(("throttled", learner.cbstate.history[phase].steps))

        class Writer(al.Callback):
            state_access = {"cbstate": {"history": al.Read()}}
            run_after = (Progress,)
            detached = True

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def write(self, event, phase, learner) -> None:
                log.append(("block", learner.cbstate.history[phase].steps))

        progress = al.throttle(Progress(), al.StepEnd, freq=7)
        lrn = learner(al.Recorder(), Writer(), progress, n_batches=60, runner=al.ActorRunner(flush_interval=0.001))
        await al.fit(lrn, 1)
        blocked = [n for who, n in log if who == "block"]
        assert blocked == list(range(1, 61))  # nothing dropped for the blocking actor
        assert [n for who, n in log if who == "throttled"] == list(range(1, 61, 7))  # skipped ones never came
        for k, (who, n) in enumerate(log):
            if who == "block":  # the throttled actor never handles step n (or an earlier one) after this
                assert all(m > n for w, m in log[k + 1 :] if w == "throttled")


class TestOrdering:
    async def test_run_after_between_detached_actors_holds_per_event(self) -> None:
        """If B runs after A, B starts each event only after A finished that event."""
        log: list[tuple[str, int, str]] = []

        class A(al.Callback):
            detached = True

            def __init__(self) -> None:
                self.n = 0

            @al.on(al.StepEnd)
            def handle(self, event, phase, learner) -> None:
                self.n += 1
                log.append(("A", self.n, "start"))
                time.sleep(0.002)
                log.append(("A", self.n, "end"))

        class B(al.Callback):
            detached = True
            run_after = (A,)

            def __init__(self) -> None:
                self.n = 0

            @al.on(al.StepEnd)
            def handle(self, event, phase, learner) -> None:
                self.n += 1
                log.append(("B", self.n, "start"))

        lrn = learner(B(), A(), n_batches=5)
        await al.fit(lrn, 1)
        for n in range(1, 11):
            assert log.index(("A", n, "end")) < log.index(("B", n, "start"))

    async def test_async_handlers_in_one_layer_run_concurrently(self) -> None:
        """Two awaited async handlers with no path between them overlap; the event waits for both."""
        spans: dict[str, tuple[float, float]] = {}

        def make(name: str) -> al.Callback:
            class Sleeper(al.Callback):
                @al.on(al.FitBegin)
                async def begin(self, event, phase, learner) -> None:
                    t0 = time.perf_counter()
                    await trio.sleep(0.05)
                    spans[name] = (t0, time.perf_counter())

            Sleeper.__name__ = name
            return Sleeper()

        class After(al.Callback):
            @al.on(al.FitBegin)
            def begin(self, event, phase, learner) -> None:
                spans["after"] = (time.perf_counter(), time.perf_counter())

        lrn = learner(make("x"), make("y"), n_batches=1)
        lrn.add_callback(After())
        await al.fit(lrn, 0)
        (x0, x1), (y0, y1) = spans["x"], spans["y"]
        assert x0 < y1 and y0 < x1

    async def test_layers_run_in_sequence(self) -> None:
        """An async handler that runs after another one starts only when the first is done."""
        order: list[str] = []

        class First(al.Callback):
            @al.on(al.FitBegin)
            async def begin(self, event, phase, learner) -> None:
                await trio.sleep(0.02)
                order.append("first")

        class Second(al.Callback):
            run_after = (First,)

            @al.on(al.FitBegin)
            async def begin(self, event, phase, learner) -> None:
                order.append("second")

        await al.fit(learner(Second(), First(), n_batches=1), 0)
        assert order == ["first", "second"]


class TestErrors:
    async def test_detached_error_ends_fit_unwrapped_with_note(self) -> None:
        """An error in a detached actor ends the fit with that error, not an ExceptionGroup."""

        class Boom(al.Callback):
            detached = True

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def boom(self, event, phase, learner) -> None:
                raise ValueError("boom")

        lrn = learner(Boom(), n_batches=200)
        with pytest.raises(ValueError, match="^boom") as info:
            await al.fit(lrn, 5)
        assert any("detached callback Boom" in note and "StepEnd()" in note for note in info.value.__notes__)

    async def test_concurrent_async_error_is_unwrapped(self) -> None:
        """An error from one of several concurrent async handlers propagates as itself."""

        class Fail(al.Callback):
            @al.on(al.FitBegin)
            async def begin(self, event, phase, learner) -> None:
                raise KeyError("bad")

        class Sleep(al.Callback):
            @al.on(al.FitBegin)
            async def begin(self, event, phase, learner) -> None:
                await trio.sleep(1)

        with pytest.raises(KeyError):
            await al.fit(learner(Fail(), Sleep(), n_batches=1), 1)

    async def test_cancel_fitting_from_detached_stops_at_next_boundary(self) -> None:
        """A CancelFittingException from a detached actor ends the fit cleanly with stopped=True."""

        class Stopper(al.Callback):
            detached = True

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def stop(self, event, phase, learner) -> None:
                raise al.CancelFittingException("enough")

        lrn = learner(al.Recorder(), Stopper(), n_batches=50)
        result = await al.fit(lrn, 20)
        assert result.stopped and str(result.reason) == "enough"
        assert lrn.cbstate.history[al.TrainingPhase()].epochs < 20

    def test_cancel_fitting_from_awaited_matches_linear(self) -> None:
        """An awaited CancelFittingException stops exactly where the LinearRunner stops."""

        def run(runner: al.runners.Runner) -> tuple[int, int]:
            stop = al.CustomCallback(
                lambda l: (_ for _ in ()).throw(al.CancelFittingException("x")), al.StepEnd, al.TrainingPhase
            )
            lrn = learner(al.Recorder(), stop, runner=runner, n_batches=4)
            trio.run(al.fit, lrn, 3)
            h = lrn.cbstate.history[al.TrainingPhase()]
            return h.epochs, h.steps

        assert run(al.ActorRunner()) == run(al.LinearRunner()) == (0, 0)

    async def test_external_cancel_is_prompt_and_leaves_nothing_behind(self) -> None:
        """A cancel scope ends a fit with a blocked detached actor promptly; no asyncloop thread survives."""
        obs = Observer(sleep=0.02)
        lrn = learner(al.Recorder(), obs, n_batches=1000)
        t0 = time.perf_counter()
        with trio.move_on_after(0.3):
            await al.fit(lrn, 100)
        assert time.perf_counter() - t0 < 5
        assert lrn._session is None
        await trio.sleep(0.05)
        assert not [t for t in threading.enumerate() if t.name.startswith("asyncloop")]
        for actor in lrn.runner._actors.values():
            assert actor.send.statistics().open_send_channels == 0


class TestStatisticsAndConcurrency:
    async def test_statistics_per_actor(self) -> None:
        """Statistics name every callback and report events, handler time, inbox use and lag."""
        obs = Observer(sleep=0.001)
        lrn = learner(al.Recorder(), obs, n_batches=20)
        result = await al.fit(lrn, 1)
        stats = {s.name: s for s in lrn.runner.statistics()}
        assert set(stats) == {"Recorder", "Observer"}
        assert stats["Recorder"].events == 2 * 20 + 4 and not stats["Recorder"].detached
        assert stats["Observer"].peak_inbox >= 1 and stats["Observer"].peak_lag >= 1
        assert stats["Observer"].handler_time > 0
        assert [(s.name, s.events) for s in result.statistics] == [(s.name, s.events) for s in lrn.runner.statistics()]
        await al.fit(lrn, 2)
        assert {s.name: s.events for s in result.statistics}["Recorder"] == 2 * 20 + 4  # a copy: unchanged

    async def test_two_fits_in_one_trio_loop(self) -> None:
        """Two learners fit concurrently in one trio program, each with its own actors."""
        a, b = Observer(), Observer()
        la, lb = learner(al.Recorder(), a, n_batches=5), learner(al.Recorder(), b, n_batches=5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(al.fit, la, 2)
            nursery.start_soon(al.fit, lb, 2)
        assert a.seen == b.seen and len(a.seen) == 2 + 2 * ((2 + 5 * 5) + (2 + 5 * 3))


def _representative(runner: al.runners.Runner) -> al.Learner:
    torch.manual_seed(1)
    return al.test_learner(
        al.Recorder(),
        al.Metrics(al.Metric(lambda p, y: (p - y).abs().max(), name="MaxErr")),
        al.StopOnNaNLoss(),
        al.ProgressPrinter(file=io.StringIO()),
        al.MetricsPrinter(file=io.StringIO()),
        Observer(),
        runner=runner,
        n_batches=6,
    )


def test_equivalent_to_linear_runner() -> None:
    """Same seeded run: identical weights, history and metrics under both runners."""
    results = []
    for runner in (al.LinearRunner(), al.ActorRunner()):
        lrn = _representative(runner)
        trio.run(al.fit, lrn, 3)
        cb = lrn.cbstate
        results.append(
            (
                lrn.model.c.detach().clone(),
                {p: (h.epochs, h.steps) for p, h in cb.history.items()},
                {p: {k: h.values(k) for k in h.keys()} for p, h in cb.metrics_step.items()},
                {p: {k: h.values(k) for k in h.keys()} for p, h in cb.metrics_epoch.items()},
                lrn.get_callback(Observer).seen,
            )
        )
    (w1, *rest1), (w2, *rest2) = results
    assert torch.equal(w1, w2)
    assert rest1 == rest2


_SIGINT_SCRIPT = """
import sys, time, trio, torch, asyncloop as al

class Slow(al.Callback):
    detached = True
    @al.on(al.StepEnd)
    def handle(self, event, phase, learner):
        time.sleep(0.001)

class Ready(al.Callback):
    @al.on(al.FitBegin)
    def begin(self, event, phase, learner):
        print("ready", flush=True)

runner = al.ActorRunner() if sys.argv[1] == "actor" else al.LinearRunner()
learner = al.test_learner(Slow(), Ready(), n_batches=100000, runner=runner)
try:
    trio.run(al.fit, learner, 1000)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
"""


@pytest.mark.parametrize("runner", ["linear", "actor"])
def test_ctrl_c_stops_a_fit_promptly(runner: str, tmp_path) -> None:
    """SIGINT (Ctrl-C) ends a long fit within about a step: fit raises KeyboardInterrupt, not a group."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "sigint.py"
    script.write_text(_SIGINT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), runner], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        elapsed = time.perf_counter() - t0
    finally:
        proc.kill()
    assert proc.returncode == 3 and "interrupted" in out
    assert elapsed < 10, elapsed


class TestReviewRegressions:
    def test_detached_parameter_reader_sees_values_of_the_event(self) -> None:
        """A detached reader of one parameter gets a clone: the same values as under the LinearRunner."""

        class C(al.Callback):
            state_access = {"model": {"c": al.Read()}}
            detached = True

            def __init__(self) -> None:
                self.values: list[float] = []

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def grab(self, event, phase, learner) -> None:
                time.sleep(0.001)
                self.values.append(learner.model.c.item())

        seen = []
        for runner in (al.LinearRunner(), al.ActorRunner()):
            cb = C()
            trio.run(al.fit, learner(cb, runner=runner, n_batches=5), 1)
            seen.append(cb.values)
        assert seen[0] == seen[1] and len(set(seen[0])) == 5

    def test_no_publication_after_an_earlier_handler_stops_the_fit(self) -> None:
        """A detached callback after a stopping handler (in the linear order) never sees that event."""

        def run(runner: al.runners.Runner) -> list[str]:
            obs = Observer()
            stop = al.CustomCallback(
                lambda l: (_ for _ in ()).throw(al.CancelFittingException("x")), al.StepEnd, al.TrainingPhase
            )
            lrn = learner(obs, stop, al.Recorder(), runner=runner, n_batches=3)
            trio.run(al.fit, lrn, 1)
            return [e for e, _, _ in obs.seen]

        assert run(al.ActorRunner()) == run(al.LinearRunner()) == ["FitBegin", "EpochBegin", "StepBegin",
                                                                    "LossBegin", "BackwardBegin", "BackwardEnd",
                                                                    "FitEnd"]

    def test_control_flow_lets_concurrent_siblings_finish(self) -> None:
        """When one concurrent async handler stops the fit, the others still finish their handler."""
        done: list[str] = []

        class Stop(al.Callback):
            @al.on(al.FitBegin)
            async def begin(self, event, phase, learner) -> None:
                raise al.CancelFittingException("stop")

        class Slow(al.Callback):
            @al.on(al.FitBegin)
            async def begin(self, event, phase, learner) -> None:
                await trio.sleep(0.02)
                done.append("slow")

        result = trio.run(al.fit, learner(Stop(), Slow(), n_batches=1), 2)
        assert result.stopped and done == ["slow"]

    def test_system_exit_in_a_detached_actor_is_not_a_group(self) -> None:
        """Even a BaseException such as SystemExit from an actor ends the fit as itself."""

        class Exit(al.Callback):
            detached = True

            @al.on(al.StepEnd)
            def bye(self, event, phase, learner) -> None:
                raise SystemExit(3)

        with pytest.raises(SystemExit):
            trio.run(al.fit, learner(Exit(), n_batches=50), 5)

    async def test_inbox_never_holds_more_than_its_size(self) -> None:
        """peak_inbox never exceeds inbox_size."""

        class Small(Observer):
            inbox_size = 4

        result = await al.fit(learner(al.Recorder(), Small(sleep=0.001), n_batches=30), 1)
        assert {s.name: s for s in result.statistics}["Small"].peak_inbox <= 4


class TestNoThreadLeftBehind:
    @pytest.mark.parametrize("outcome", ["returns", "raises", "cancelled"])
    def test_thread_count_is_back_to_baseline(self, outcome: str) -> None:
        """However fit ends, no thread it started is alive afterwards (not even an idle pooled one)."""

        class Blocky(Observer):
            def teardown(self, learner) -> None:
                time.sleep(0.001)

        class Boom(al.Callback):
            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def boom(self, event, phase, learner) -> None:
                if outcome == "raises":
                    raise ValueError("boom")

        async def main() -> None:
            lrn = learner(al.Recorder(), Blocky(sleep=0.002), Boom(), n_batches=400)
            if outcome == "cancelled":
                with trio.move_on_after(0.2):
                    await al.fit(lrn, 50)
            elif outcome == "raises":
                with pytest.raises(ValueError):
                    await al.fit(lrn, 1)
            else:
                await al.fit(learner(al.Recorder(), Blocky(), n_batches=3), 1)

        # Compare identities, not counts: a thread left by an earlier test may end meanwhile.
        before = set(threading.enumerate())
        trio.run(main)
        assert [t.name for t in threading.enumerate() if t not in before] == []


def test_failing_fit_with_a_busy_blocking_actor_does_not_hang() -> None:
    """A fit that fails while a blocking detached actor still has queued events ends (regression: no hang)."""

    class Boom(al.Callback):
        @al.on(al.StepEnd, al.AbstractTrainingPhase)
        def boom(self, event, phase, learner) -> None:
            if learner.cbstate.history[phase].steps >= 40:
                raise ValueError("boom")

        state_access = {"cbstate": {"history": al.Read()}}
        run_after = (al.Recorder,)

    class Mixed(al.Callback):
        """Async and blocking sync handlers interleaved in one batch: several thread jobs per batch."""

        detached = True

        @al.on(al.StepBegin)
        async def begin(self, event, phase, learner) -> None:
            pass

        @al.on(al.StepEnd)
        def end(self, event, phase, learner) -> None:
            time.sleep(0.002)

    errors: list[BaseException] = []

    def run() -> None:
        for _ in range(5):
            lrn = learner(al.Recorder(), Mixed(), Boom(), n_batches=100, runner=al.ActorRunner(flush_interval=0.05))
            try:
                trio.run(al.fit, lrn, 1)
            except ValueError as exc:
                errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "fit hung"
    assert len(errors) == 5


@pytest.mark.parametrize("runner", [al.LinearRunner, al.ActorRunner])
def test_progress_bar_throttles_ticks_by_time_and_ends_full(runner) -> None:
    """The progress bar (which replaced the 'latest' inbox policy with a time throttle) handles a step tick at most
    every mininterval seconds, skipped before any snapshot, and still ends every epoch at the full count."""
    out = io.StringIO()
    bar = al.ProgressPrinter(file=out, mininterval=60)
    lrn = learner(al.Recorder(), bar, runner=runner(), n_batches=7)
    result = trio.run(al.fit, lrn, 1)
    assert out.getvalue().count("7/7") >= 2  # training and validation bars
    stats = {s.name: s for s in result.statistics}["ProgressPrinter"]
    assert stats.events == 1 + 2 * 2 + 1  # one step tick in 60 s, EpochBegin/EpochEnd per phase, FitEnd


class TestSwitchInterval:
    class Probe(al.Callback):
        """A detached observer that records the interpreter's switch interval from its thread."""

        state_access = {"step": {"loss": al.Read()}}
        detached = True

        def __init__(self) -> None:
            self.seen: list[float] = []

        @al.on(al.StepEnd, al.AbstractTrainingPhase)
        def step_end(self, event, phase, learner) -> None:
            self.seen.append(sys.getswitchinterval())

    def fit(self, runner: al.ActorRunner, callback: al.Callback | None = None) -> None:
        callbacks = [callback] if callback is not None else []
        trio.run(al.fit, al.test_learner(*callbacks, n_batches=3, runner=runner), 1)

    def test_lowered_while_thread_actors_run_and_put_back(self) -> None:
        """With a detached thread actor the GIL switch interval is 0.5 ms during the fit and what it was after."""
        before = sys.getswitchinterval()
        probe = self.Probe()
        self.fit(al.ActorRunner(), probe)
        assert probe.seen and all(abs(v - 0.0005) < 1e-9 for v in probe.seen)
        assert sys.getswitchinterval() == before

    def test_none_leaves_it_alone(self) -> None:
        """switch_interval=None never touches the interpreter's setting."""
        before = sys.getswitchinterval()
        probe = self.Probe()
        self.fit(al.ActorRunner(switch_interval=None), probe)
        assert probe.seen and all(v == before for v in probe.seen)

    def test_a_lower_setting_is_kept(self) -> None:
        """An interval already below the runner's stays as the user set it, during and after the fit."""
        before = sys.getswitchinterval()
        sys.setswitchinterval(0.0001)
        try:
            low = sys.getswitchinterval()
            probe = self.Probe()
            self.fit(al.ActorRunner(), probe)
            assert all(v == low for v in probe.seen) and sys.getswitchinterval() == low
        finally:
            sys.setswitchinterval(before)

    def test_put_back_after_a_failing_fit(self) -> None:
        """A fit that fails still restores the interval."""
        before = sys.getswitchinterval()

        class Boom(self.Probe):
            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def step_end(self, event, phase, learner) -> None:
                raise ValueError("boom")

        with pytest.raises(ValueError, match="^boom"):
            self.fit(al.ActorRunner(), Boom())
        assert sys.getswitchinterval() == before
