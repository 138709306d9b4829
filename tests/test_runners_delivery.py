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


async def slow_actor_lags() -> list[int]:
    """Fit 600 steps of ~1 ms (an inline callback sleeps 1 ms) with a detached actor whose handler sleeps 0.5 ms,
    under a 0.2 s flush interval; return how many steps behind the loop the actor was at each of its events,
    sorted."""
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
        run_after = (Pace,)

        @al.on(al.StepEnd, al.AbstractTrainingPhase)
        def step_end(self, event, phase, learner) -> None:
            lags.append(len(done))
            time.sleep(0.0005)

    await al.fit(al.test_learner(Pace(), Slow(), n_batches=600, runner=al.ActorRunner(flush_interval=0.2)), 1)
    assert len(lags) == 600
    return sorted(seen - i for i, seen in enumerate(lags, 1))


class TestEarlyHandOver:
    async def test_through_the_callers_loop_an_idle_actor_is_handed_its_events_early(self, monkeypatch) -> None:
        """With direct delivery off (every actor's events go through the outbox and the caller's loop), a slow
        actor that caught up (idle) still gets its events once EARLY_WORK (10 ms) of them are queued (by its
        average handler time): it lags ~15 steps (median, measured), not the ~200 of a 0.2 s flush interval."""
        from asyncloop.runners import _delivery

        monkeypatch.setattr(_delivery, "DIRECT", False)
        behind = await slow_actor_lags()
        assert behind[len(behind) // 2] <= 40, behind[len(behind) // 2]


class Observer(al.Callback):
    """A detached observer with sync handlers: records the steps it saw and the threads it ran on."""

    detached = True
    state_access = {"step": {"loss": al.Read()}, "cbstate": {"history": al.Read()}}
    run_after = (al.Recorder,)

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds, self.steps, self.threads = seconds, [], set()

    @al.on(al.StepEnd, al.AbstractTrainingPhase)
    def step_end(self, event, phase, learner) -> None:
        import threading
        import time

        self.threads.add(threading.get_ident())
        self.steps.append(learner.cbstate.history[phase].steps)
        if self.seconds:
            time.sleep(self.seconds)


class TestDirectDelivery:
    def test_which_actors_take_their_events_straight_from_the_training_thread(self, tmp_path) -> None:
        """Direct delivery is for thread actors whose registered handlers are all sync (as their ``handler``
        lookup returns them: a throttled callback and a step Checkpointer qualify), and for process actors
        (tests/test_runners_process.py), with no run_after path to or from another detached actor; async
        handlers, ``blocking = False`` and a detached-to-detached order keep the caller's loop in between."""

        class AsyncObserver(al.Callback):
            detached = True

            @al.on(al.StepEnd)
            async def step_end(self, event, phase, learner) -> None:
                await trio.lowlevel.checkpoint()

        class OnTheLoop(Observer):
            blocking = False

        class After(Observer):
            run_after = (Observer,)

        def eligible(*callbacks: al.Callback) -> dict[str, bool]:
            runner = al.ActorRunner()
            al.test_learner(al.Recorder(), *callbacks, runner=runner)
            return {a.callback.name: a.can_direct for a in runner._delivery.actors.values()}

        assert eligible(Observer()) == {"Observer": True}
        assert eligible(AsyncObserver(), OnTheLoop()) == {"AsyncObserver": False, "OnTheLoop": False}
        assert eligible(Observer(), After()) == {"Observer": False, "After": False}
        assert eligible(al.throttle(Observer(), al.StepEnd, freq=2)) == {"ConditionalCallback(Observer)": True}
        saver = al.Checkpointer(tmp_path, every_n_steps=5)
        assert eligible(al.Metrics(), saver) == {"Checkpointer": True}

    async def test_a_direct_actor_sees_every_event_in_order_on_its_own_thread(self) -> None:
        """Every event reaches a direct actor, in order, on one thread that is not the training thread's."""
        import threading

        obs = Observer()
        runner = al.ActorRunner()
        lrn = al.test_learner(al.Recorder(), obs, n_batches=40, runner=runner)
        result = await al.fit(lrn, 3)
        assert [a.direct for a in runner._delivery.actors.values()] == [True]
        assert obs.steps == list(range(1, 121))
        assert len(obs.threads) == 1 and threading.get_ident() not in obs.threads
        stats = next(s for s in result.statistics if s.name == "Observer")
        assert stats.events == 120 and stats.detached

    async def test_an_idle_slow_actor_is_woken_after_about_one_ms_of_work(self) -> None:
        """An idle direct actor is woken as soon as DIRECT_WORK (1 ms) of its events are queued (by its average
        handler time), and at its first event (no handler time yet), whatever the flush interval: with 1 ms steps
        and 0.5 ms handlers it trails the loop by 0-1 steps (median; at most ~6, measured), where the caller's-loop
        path lags ~15 (at most ~135) and a 0.2 s interval ~200."""
        behind = await slow_actor_lags()
        assert behind[len(behind) // 2] <= 6, behind[len(behind) // 2]
        assert behind[-1] <= 60, behind[-1]

    async def test_a_full_direct_inbox_makes_the_loop_wait_and_nothing_is_lost(self) -> None:
        """A direct actor slower than the loop fills its inbox (4 events): the loop waits for room, the inbox
        never holds more than its bound, and every event is handled in order."""
        obs = Observer(seconds=0.002)
        obs.inbox_size = 4
        lrn = al.test_learner(al.Recorder(), obs, n_batches=60, runner=al.ActorRunner())
        result = await al.fit(lrn, 1)
        assert obs.steps == list(range(1, 61))
        stats = next(s for s in result.statistics if s.name == "Observer")
        assert stats.peak_inbox == 4
        assert stats.loop_wait_time > 0.05  # 60 x 2 ms of handlers, most of it waited for

    async def test_an_error_in_a_direct_actor_ends_the_fit_with_a_note(self) -> None:
        """A direct actor's error ends the fit with that error, unwrapped, naming the callback and the event."""

        class Boom(Observer):
            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def step_end(self, event, phase, learner) -> None:
                if learner.cbstate.history[phase].steps == 5:
                    raise KeyError("boom")

        with pytest.raises(KeyError, match="boom") as info:
            await al.fit(al.test_learner(al.Recorder(), Boom(), n_batches=100, runner=al.ActorRunner()), 50)
        assert info.value.__notes__ == [
            "asyncloop: raised by detached callback Boom while handling StepEnd() in TrainingPhase()"
        ]

    async def test_an_async_handler_a_custom_lookup_returns_is_awaited_in_order(self) -> None:
        """A callback whose registered handlers are sync is delivered directly; if its own ``handler`` lookup
        returns a coroutine function for an event it did not register, that handler is awaited in the caller's
        loop, in order with the others."""
        from asyncloop._callback import Handler

        seen: list[str] = []

        class Custom(al.Callback):
            detached = True

            @al.on(al.StepEnd, al.AbstractTrainingPhase)
            def step_end(self, event, phase, learner) -> None:
                seen.append("step")

            def handler(self, event, phase):
                if issubclass(event, al.EpochEnd) and issubclass(phase, al.AbstractTrainingPhase):
                    return Handler(self.epoch_end, True)
                return super().handler(event, phase)

            async def epoch_end(self, event, phase, learner) -> None:
                await trio.sleep(0.001)
                seen.append("epoch")

        runner = al.ActorRunner()
        await al.fit(al.test_learner(Custom(), n_batches=3, runner=runner), 2)
        assert [a.direct for a in runner._delivery.actors.values()] == [True]
        assert seen == ["step"] * 3 + ["epoch"] + ["step"] * 3 + ["epoch"]


class Sharing(al.Callback):
    """A detached callback that writes ``(name, event, phase, step)`` to the shared lists it holds (its
    ``_shared()``, as a logger's backends), sleeping a seeded random few milliseconds in some of its handlers."""

    detached = True
    state_access = {"cbstate": {"history": al.Read()}}
    run_after = (al.Recorder,)

    def __init__(self, name: str, *outs: list, seed: int = 0) -> None:
        import random

        self.name, self.outs, self.rng = name, outs, random.Random(seed)

    def _shared(self) -> tuple:
        return self.outs

    def _write(self, event, phase, learner) -> None:
        import time

        if self.rng.random() < 0.2:
            time.sleep(self.rng.random() * 0.003)
        for out in self.outs:
            out.append((self.name, type(event).__name__, type(phase).__name__, learner.cbstate.history[phase].steps))

    @al.on(al.StepEnd)
    def step_end(self, event, phase, learner) -> None:
        self._write(event, phase, learner)

    @al.on(al.EpochEnd)
    def epoch_end(self, event, phase, learner) -> None:
        self._write(event, phase, learner)


class AfterP(Sharing):
    pass


class First(Sharing):
    pass


AfterP.run_after = (al.Recorder, First)


class TestSharedResources:
    def test_actors_sharing_a_resource_are_peers_and_not_direct(self) -> None:
        """Detached callbacks that share a resource by identity (a logger's backend), also transitively, are each
        other's peers and take their events through the caller's loop; the others stay direct."""
        r1, r2, r3 = [], [], []
        runner = al.ActorRunner()
        al.test_learner(al.Recorder(), Sharing("a", r1), Sharing("b", r1, r2), Sharing("c", r2), Sharing("d", r3),
                        runner=runner)
        actors = {a.callback.name: a for a in runner._delivery.actors.values()}
        assert {n: sorted(p.callback.name for p in a.peers) for n, a in actors.items()} == {
            "a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"], "d": []}
        assert {n: a.can_direct for n, a in actors.items()} == {"a": False, "b": False, "c": False, "d": True}

    @pytest.mark.parametrize("seed", range(3))
    async def test_peers_and_predecessors_handle_events_in_the_loops_order(self, seed: int) -> None:
        """Three actors in one group, one of them also ordered after another by run_after (the crossing that a
        batch-wide wait for the predecessor would deadlock), with random slow handlers: the shared list reads
        exactly as under the LinearRunner, and the fit ends."""
        seen = {}
        for runner in (al.LinearRunner, al.ActorRunner):
            r1, r2 = [], []
            lrn = al.test_learner(al.Recorder(), AfterP("A", r2, seed=seed), First("P", r1, seed=seed + 10),
                                  Sharing("B", r1, r2, seed=seed + 20), n_batches=16, runner=runner())
            with trio.fail_after(20):  # a deadlock fails the test instead of hanging it
                await al.fit(lrn, 3)
            seen[runner.__name__] = (r1, r2)
        assert len(seen["LinearRunner"][0]) == 2 * 3 * (16 + 1) * 2
        assert seen["ActorRunner"] == seen["LinearRunner"]


class TestActorsThatStartLate:
    @pytest.mark.parametrize("direct", [True, False], ids=["direct", "through-the-loop"])
    async def test_a_session_closed_before_its_actors_first_ran_ends_cleanly(self, monkeypatch, direct) -> None:
        """When the worker finishes before the actors' tasks first run (a validate() with nothing to do can:
        trio may resume the session's task before the tasks it just started), those tasks find the session
        closed and end without error. Made deterministic here by a worker that returns without yielding."""
        import outcome

        from asyncloop import _session
        from asyncloop.runners import _delivery

        monkeypatch.setattr(_delivery, "DIRECT", direct)

        async def instant(self, fn, args):
            return outcome.Value("done")

        lrn = al.test_learner(al.Recorder(), Observer(), n_batches=4, runner=al.ActorRunner())
        monkeypatch.setattr(_session.Session, "_run_worker", instant)
        assert await al.validate(lrn) == "done"
