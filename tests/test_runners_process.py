"""Process actors (``detached = "process"``): order, final state, errors, cancellation, back-pressure, pickling.

Spawning a worker costs seconds, so most tests share one learner whose runner keeps one worker process across
fits (the callback's attributes choose what its handler does; it is pickled afresh at every fit). The test that
kills its worker runs last.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
import warnings

import pytest
import torch
import trio

import asyncloop as al
from asyncloop import ProcessActorError
from asyncloop.phases import FitPhase
from asyncloop.runners._process import SHARED_MEMORY_MIN_BYTES, dumps, error_payload, load_error

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class Probe(al.Callback):
    """Records every event it handles and the process it ran in; ``mode`` makes it raise or sleep."""

    state_access = {"step": {"loss": al.Read()}, "cbstate": {"history": al.Read()}}
    run_after = (al.Recorder,)
    detached = "process"

    def __init__(self) -> None:
        self.mode = "record"
        self.sleep = 0.0
        self.seen: list[tuple[str, str, int, float | None]] = []
        self.pids: set[int] = set()
        self.loaded = 0

    @al.on(al.Event)
    def record(self, event, phase, learner) -> None:
        steps = learner.cbstate.history[phase].steps if not isinstance(phase, FitPhase) else -1
        loss = float(learner.step.loss) if isinstance(event, al.StepEnd) else None
        self.seen.append((type(event).__name__, type(phase).__name__, steps, loss))
        self.pids.add(os.getpid())
        if self.mode == "raise" and isinstance(event, al.StepEnd) and learner.cbstate.history[phase].steps_epoch == 3:
            raise KeyError("boom at step 3")
        if self.mode == "sleep":
            time.sleep(self.sleep)

    def process_state(self) -> dict:
        return {"seen": self.seen, "pids": self.pids}

    def load_process_state(self, state: dict) -> None:
        self.seen, self.pids = state["seen"], state["pids"]
        self.loaded += 1


def make_learner(probe: al.Callback, runner: al.runners.Runner) -> al.Learner:
    torch.manual_seed(0)
    return al.test_learner(probe, al.Recorder(), runner=runner, n_batches=12)


@pytest.fixture(scope="module")
def shared():
    """One learner with a Probe under an ActorRunner(inbox_size=4, cancel_grace=1.0), its worker kept for the module."""
    probe = Probe()
    runner = al.ActorRunner(inbox_size=4, cancel_grace=1.0)
    learner = make_learner(probe, runner)
    yield learner, probe, runner
    runner.shutdown()


def reset(probe: Probe, mode: str = "record", sleep: float = 0.0) -> None:
    probe.mode, probe.sleep, probe.seen, probe.pids = mode, sleep, [], set()


def worker_of(runner: al.ActorRunner):
    (_, worker), = runner._delivery.workers.values()
    return worker


async def test_events_arrive_in_order_in_another_process_and_the_state_comes_back(shared) -> None:
    """The worker copy handles every event in the LinearRunner's order, in another process; its final state
    (through the overridden process_state/load_process_state hooks) is on the parent's instance after the fit.
    Its courier takes the events straight from the training thread (direct delivery)."""
    learner, probe, runner = shared
    reset(probe)
    loaded = probe.loaded
    result = await al.fit(learner, 2)
    assert not result.stopped
    assert [a.direct for a in runner._delivery.actors.values()] == [True]
    inline = Probe()
    await al.fit(make_learner(inline, al.LinearRunner()), 2)
    assert probe.seen == inline.seen and len(probe.seen) > 50
    assert probe.pids and os.getpid() not in probe.pids
    assert inline.pids == {os.getpid()}
    assert probe.loaded == loaded + 1
    stats = next(s for s in result.statistics if s.name == "Probe")
    assert stats.detached and stats.events == len(probe.seen)


async def test_the_worker_is_reused_and_ignores_ctrl_c(shared) -> None:
    """A second fit reuses the worker process; SIGINT (Ctrl-C reaches the whole process group) does not end it."""
    learner, probe, runner = shared
    reset(probe)
    await al.fit(learner, 1)
    pid = worker_of(runner).process.pid
    os.kill(pid, signal.SIGINT)
    await trio.sleep(0.2)
    assert worker_of(runner).process.is_alive()
    reset(probe)
    await al.fit(learner, 1)
    assert probe.pids == {pid}


async def test_an_error_in_the_worker_ends_the_fit_with_that_error(shared) -> None:
    """A handler's error comes out of fit as itself (type and message), noted with the callback, the event and
    the worker's traceback; the next fit works."""
    learner, probe, _ = shared
    reset(probe, "raise")
    with pytest.raises(KeyError) as info:
        await al.fit(learner, 2)
    assert str(info.value) == "'boom at step 3'"
    notes = "\n".join(info.value.__notes__)
    assert "asyncloop: raised by detached callback Probe while handling StepEnd() in TrainingPhase()" in notes
    assert "traceback in the worker process" in notes and 'raise KeyError("boom at step 3")' in notes
    assert [s[:2] for s in probe.seen if s[0] == "StepEnd"] == [("StepEnd", "TrainingPhase")] * 3  # state came back
    reset(probe)
    assert not (await al.fit(learner, 1)).stopped
    assert len(probe.seen) > 10


async def test_a_full_inbox_makes_the_loop_wait(shared) -> None:
    """Back-pressure: with inbox_size=4 and a slow handler, the loop waits for the worker; nothing is dropped."""
    learner, probe, _ = shared
    reset(probe, "sleep", 0.01)
    result = await al.fit(learner, 1)
    stats = next(s for s in result.statistics if s.name == "Probe")
    assert stats.loop_wait_time > 0.05
    assert stats.peak_inbox <= 4
    assert stats.events == len(probe.seen) == 2 + (2 + 12 * 5) + (2 + 12 * 3)  # fit, training, validation events


async def test_an_unpicklable_callback_fails_before_training_starts(shared) -> None:
    """A callback that stops pickling after the learner was built fails the fit before the first event, with a
    message that says what to do."""
    learner, probe, _ = shared
    reset(probe)
    probe.lock = threading.Lock()
    try:
        with pytest.raises(TypeError, match=r"^Probe sets detached = \"process\" but cannot be pickled") as info:
            await al.fit(learner, 1)
    finally:
        del probe.lock
    assert str(info.value) == (
        'Probe sets detached = "process" but cannot be pickled to be sent to its worker process (TypeError: '
        "cannot pickle '_thread.lock' object). Keep only picklable attributes (open files, locks, sockets, lambdas "
        "and classes defined inside functions are not): open resources lazily in a handler, drop them in "
        "__getstate__, define the class at module level; or set detached = True to run it on a thread"
    )
    assert probe.seen == []


async def test_cancellation_stops_the_worker_after_its_handler(shared) -> None:
    """Cancelling a fit asks the worker to stop after the handler it is in: the fit ends within the grace, and
    the worker is not killed but serves the next fit."""
    learner, probe, runner = shared
    reset(probe)
    await al.fit(learner, 1)  # the worker is up
    worker = worker_of(runner)
    reset(probe, "sleep", 0.2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        with trio.move_on_after(1.0):
            await al.fit(learner, 5)
        late = time.perf_counter() - t0 - 1.0
    assert late < runner.cancel_grace
    assert not any("terminated" in str(w.message) for w in caught)
    assert worker_of(runner) is worker and worker.alive()
    assert probe.loaded and 0 < len(probe.seen) < 20  # the state of the cancelled fit came back too
    reset(probe)
    await al.fit(learner, 1)
    assert probe.pids == {worker.process.pid}


async def test_a_handler_that_blocks_past_the_grace_gets_its_worker_killed(shared) -> None:
    """A worker stuck in a handler is terminated cancel_grace (1 s) after the cancellation, with a warning; the
    next fit starts a fresh worker."""
    learner, probe, runner = shared
    reset(probe)
    await al.fit(learner, 1)  # the worker is up
    old = worker_of(runner)
    reset(probe, "sleep", 60.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        with trio.move_on_after(1.0):
            await al.fit(learner, 1)
        late = time.perf_counter() - t0 - 1.0
    assert late < 10  # the grace (1 s) and the kill, not the handler's 60 s
    assert not old.process.is_alive()
    assert any("its worker process was terminated" in str(w.message) for w in caught)
    stats = next(s for s in runner.statistics() if s.name == "Probe")
    assert stats.abandoned
    reset(probe)
    await al.fit(learner, 1)
    assert worker_of(runner) is not old and len(probe.seen) > 10


async def test_a_worker_that_dies_ends_the_fit(shared) -> None:
    """A worker killed from outside (out of memory, kill -9) ends the fit with a ProcessActorError naming it."""
    learner, probe, runner = shared
    reset(probe)
    await al.fit(learner, 1)  # the worker is up
    reset(probe, "sleep", 0.05)
    pid = worker_of(runner).process.pid

    async def kill_soon() -> None:
        await trio.sleep(0.5)
        os.kill(pid, signal.SIGKILL)

    caught: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_soon)
        try:
            await al.fit(learner, 5)
        except ProcessActorError as exc:
            caught.append(exc)
    assert [str(e) for e in caught] == ["the worker process of Probe ended unexpectedly (exit code -9)"]


async def test_cancelling_while_the_worker_starts_ends_it_at_once() -> None:
    """A fit cancelled before its worker is ready does not wait for the start-up (nor the grace): the worker is
    ended, without a warning, and the fit ends promptly."""
    runner = al.ActorRunner(cancel_grace=30.0)
    learner = make_learner(Probe(), runner)
    worker = worker_of(runner)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        with trio.move_on_after(0.2):
            await al.fit(learner, 100)
        elapsed = time.perf_counter() - t0
    assert not worker.ready and not worker.process.is_alive()
    assert elapsed < 20 and not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    runner.shutdown()


async def test_a_throttled_process_callback_gets_its_protected_snapshot() -> None:
    """throttle() around a process-detached callback with the default snapshot: the worker gets only the events
    the throttle lets through, each as a protected view (sent as a tree, wrapped in the worker)."""
    probe = Probe()
    runner = al.ActorRunner()
    learner = make_learner(al.throttle(probe, al.StepEnd, freq=4), runner)
    try:
        await al.fit(learner, 1)
    finally:
        runner.shutdown()
    steps = [(s[1], s[2]) for s in probe.seen if s[0] == "StepEnd"]
    assert steps == [("TrainingPhase", 1), ("TrainingPhase", 5), ("TrainingPhase", 9), ("ValidationPhase", 1),
                     ("ValidationPhase", 5), ("ValidationPhase", 9)]
    assert probe.pids and os.getpid() not in probe.pids


def test_under_the_linear_runner_it_runs_inline() -> None:
    """Under the LinearRunner a process-detached callback runs inline, in this process, and spawns nothing."""
    probe = Probe()
    learner = make_learner(probe, al.LinearRunner())
    trio.run(al.fit, learner, 1)
    assert probe.pids == {os.getpid()} and len(probe.seen) > 10


def test_an_unpicklable_callback_fails_when_the_learner_is_built() -> None:
    """A process-detached callback that does not pickle fails at Learner(...), with a message saying what to do."""

    class Local(Probe):
        pass

    with pytest.raises(TypeError, match=r"^Local sets detached = \"process\" but cannot be pickled to be sent to "
                                        r"its worker process \(AttributeError: Can't pickle local object"):
        make_learner(Local(), al.ActorRunner())


def test_detached_must_be_true_false_or_process() -> None:
    """Any other detached value is rejected when the learner is built."""

    class Odd(al.Callback):
        detached = "thread"

        @al.on(al.StepEnd)
        def step_end(self, event, phase, learner) -> None:
            pass

    with pytest.raises(ValueError, match=r'^Odd.detached must be False, True or "process", got \'thread\'$'):
        al.test_learner(Odd(), runner=al.ActorRunner())


class TestWire:
    def test_small_tensors_are_copied_and_large_ones_shared(self) -> None:
        """A tensor smaller than the shared-memory threshold travels by value; a larger one through shared memory;
        both arrive equal."""
        small = torch.arange(10, dtype=torch.float32)
        large = torch.ones(SHARED_MEMORY_MIN_BYTES // 4 + 1)
        data = dumps((small, large, torch.tensor(2.5), torch.zeros(0, 3)))
        assert len(data) < SHARED_MEMORY_MIN_BYTES // 2  # the large one is not in the message
        a, b, c, d = pickle.loads(data)
        assert torch.equal(a, small) and torch.equal(b, large) and c.item() == 2.5 and d.shape == (0, 3)

    def test_an_error_crosses_as_itself_or_as_text(self) -> None:
        """A picklable error comes back as its own type with the worker's traceback noted; an unpicklable one as a
        ProcessActorError naming its type and message."""
        try:
            raise ValueError("bad value")
        except ValueError as exc:
            back = load_error(error_payload(exc))
        assert type(back) is ValueError and str(back) == "bad value"
        assert "raise ValueError(\"bad value\")" in back.__notes__[0]

        class Odd(Exception):
            pass

        back = load_error(error_payload(Odd("odd")))
        assert type(back) is ProcessActorError
        assert str(back) == f"{__name__}.TestWire.test_an_error_crosses_as_itself_or_as_text.<locals>.Odd: odd"
