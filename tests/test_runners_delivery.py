"""asyncloop.runners._delivery: detached actors' async handlers, errors and accounting."""

from __future__ import annotations

import pytest
import trio

import asyncloop as al

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def learner(*callbacks: al.Callback, **kw) -> al.Learner:
    return al.test_learner(*callbacks, runner=al.ActorRunner(), **kw)


class TestAsyncDetachedHandlers:
    async def test_error_ends_the_fit_with_a_note_naming_the_callback(self) -> None:
        """An error raised by an async handler of a detached callback ends the fit with that error, unwrapped,
        with a note naming the detached callback and the event."""

        class AsyncBoom(al.Callback):
            detached = True

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            async def boom(self, event, phase, learner) -> None:
                await trio.lowlevel.checkpoint()
                raise ValueError("async boom")

        with pytest.raises(ValueError, match="^async boom") as info:
            await al.fit(learner(AsyncBoom(), n_batches=200), 5)
        assert info.value.__notes__ == [
            "asyncloop: raised by detached callback AsyncBoom while handling StepEnd() in TrainingPhase()"
        ]

    async def test_cancel_fitting_stops_the_fit_cleanly(self) -> None:
        """Control flow from an async detached handler is a request, not an error: the fit stops cleanly."""

        class AsyncStopper(al.Callback):
            detached = True

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            async def stop(self, event, phase, learner) -> None:
                raise al.CancelFittingException("enough")

        lrn = learner(al.Recorder(), AsyncStopper(), n_batches=50)
        result = await al.fit(lrn, 20)
        assert result.stopped and str(result.reason) == "enough"
        assert lrn.cbstate.history[al.TrainingPhase()].epochs < 20

    async def test_every_event_is_handled_and_accounted(self) -> None:
        """Async and sync handlers of one detached callback see every event in order; each one is counted."""
        seen: list[str] = []

        class Mixed(al.Callback):
            detached = True

            @al.on(al.StepBegin)
            async def begin(self, event, phase, learner) -> None:
                await trio.lowlevel.checkpoint()
                seen.append("begin")

            @al.on(al.StepEnd)
            def end(self, event, phase, learner) -> None:
                seen.append("end")

        result = await al.fit(learner(Mixed(), n_batches=3), 2)
        assert seen == ["begin", "end"] * (2 * (3 + 3))
        stats = {s.name: s for s in result.statistics}["Mixed"]
        assert stats.detached and stats.events == len(seen) and stats.handler_time > 0


class Hung(al.Callback):
    """A detached callback whose handler blocks (a hung upload) until ``release`` is set."""

    detached = True

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.entered = threading.Event()

    @al.on(al.StepEnd, al.AbstractTrainingPhase)
    def upload(self, event, phase, learner) -> None:
        self.entered.set()
        self.release.wait(30)  # bounded, so that a regression cannot hang the suite forever


class TestBoundedEnd:
    @pytest.mark.parametrize("how", ["cancelled", "failed"])
    async def test_a_blocked_handler_is_abandoned_after_the_grace(self, how: str) -> None:
        """A cancelled or failing fit ends within the grace even if a detached handler blocks: the actor's thread
        is abandoned, counted in the statistics and reported in a warning."""
        import time

        hung = Hung()
        runner = al.ActorRunner(cancel_grace=0.3)

        class Boom(al.Callback):
            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def boom(self, event, phase, learner) -> None:
                if hung.entered.is_set():
                    raise OSError("boom")

        callbacks = [hung, Boom()] if how == "failed" else [hung]
        lrn = al.test_learner(*callbacks, runner=runner, n_batches=10_000)
        try:
            t0 = time.perf_counter()
            with pytest.warns(RuntimeWarning, match=r"^asyncloop: detached callback Hung did not finish its handler"):
                if how == "cancelled":
                    with trio.move_on_after(0.2):
                        await al.fit(lrn, 1)
                else:
                    with pytest.raises(OSError, match="^boom"):
                        await al.fit(lrn, 1)
            elapsed = time.perf_counter() - t0
        finally:
            hung.release.set()
        assert elapsed < 5
        stats = {s.name: s for s in runner.statistics()}
        assert stats["Hung"].abandoned is True

    async def test_a_fit_that_returns_never_abandons(self) -> None:
        """A fit that ends normally waits for every detached handler, however slow (no grace applies)."""
        import threading

        done = []

        class Slow(al.Callback):
            detached = True

            @al.on(al.FitEnd)
            def end(self, event, phase, learner) -> None:
                threading.Event().wait(0.5)
                done.append(True)

        runner = al.ActorRunner(cancel_grace=0.05)
        await al.fit(al.test_learner(Slow(), runner=runner, n_batches=1), 1)
        assert done == [True]
        assert not any(s.abandoned for s in runner.statistics())

    def test_bad_grace_is_refused(self) -> None:
        """cancel_grace must be a number of seconds >= 0."""
        from matchers import exact

        with pytest.raises(ValueError, match=exact("cancel_grace must be a number of seconds >= 0, got -1")):
            al.ActorRunner(cancel_grace=-1)


_HUNG_SIGINT_SCRIPT = """
import sys, threading, trio, asyncloop as al

class Hung(al.Callback):
    detached = True
    @al.on(al.StepEnd)
    def upload(self, event, phase, learner):
        print("blocked", flush=True)
        threading.Event().wait()   # a hung network write: never returns

learner = al.test_learner(Hung(), n_batches=100000, runner=al.ActorRunner(cancel_grace=0.5))
try:
    trio.run(al.fit, learner, 1000)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
"""


def test_ctrl_c_ends_a_fit_whose_detached_handler_hangs(tmp_path) -> None:
    """One SIGINT ends a fit whose detached handler blocks forever, within the grace: KeyboardInterrupt comes out."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "hung.py"
    script.write_text(_HUNG_SIGINT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "blocked"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 3 and "interrupted" in out


class TestLateStop:
    @pytest.mark.parametrize("event", [al.EpochEnd, al.FitEnd])
    @pytest.mark.parametrize("runner", [al.LinearRunner, al.ActorRunner])
    async def test_a_stop_from_the_last_event_is_reported(self, runner, event) -> None:
        """A CancelFittingException from a detached handler of the last validation EpochEnd (or FitEnd) makes
        fit return stopped=True with it as the reason, as under the LinearRunner."""
        reason = al.CancelFittingException("late")

        class LateStop(al.Callback):
            detached = True
            state_access = {"cbstate": {"history": al.Read()}}
            run_after = (al.Recorder,)

            @al.on(event, al.Phase)
            def stop(self, ev, phase, learner) -> None:
                if isinstance(ev, al.FitEnd) or (
                    isinstance(phase, al.ValidationPhase) and learner.cbstate.history[phase].epochs == 2
                ):
                    raise reason

        result = await al.fit(al.test_learner(al.Recorder(), LateStop(), runner=runner(), n_batches=2), 2)
        assert result.stopped is True
        assert result.reason is reason
        assert result.epochs == 2


class TestEarlyHandOver:
    async def test_an_idle_slow_actor_gets_its_events_before_the_interval(self) -> None:
        """A detached actor that caught up (idle) with EARLY_WORK (10 ms) of work queued (by its average handler
        time) is handed its events at once, not at the next flush interval: with a 0.2 s interval, 1 ms steps and
        0.5 ms handlers it lags ~10 steps behind the loop (median, measured), not a whole interval's worth (~200
        steps, as with no early hand-over)."""
        import time

        done: list[int] = []
        lags: list[int] = []

        class Pace(al.Callback):
            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def step_end(self, event, phase, learner) -> None:
                time.sleep(0.001)
                done.append(1)

        class Slow(al.Callback):
            detached = True
            state_access = {"step": {"loss": al.Read()}}
            run_after = (Pace,)

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def step_end(self, event, phase, learner) -> None:
                lags.append(len(done))
                time.sleep(0.0005)

        lrn = al.test_learner(Pace(), Slow(), n_batches=600, runner=al.ActorRunner(flush_interval=0.2))
        await al.fit(lrn, 1)
        assert len(lags) == 600
        behind = sorted(seen - i for i, seen in enumerate(lags, 1))
        assert behind[len(behind) // 2] <= 40, behind[len(behind) // 2]  # ~10 measured; ~200 without it
