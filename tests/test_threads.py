"""Tests for asyncloop._threads: the one thread hand-off (Reply), run_in_thread and ActorThread."""

from __future__ import annotations

import sys
import threading
import time

import outcome
import pytest
import trio
import trio.testing

from asyncloop._threads import ActorThread, Reply, SwitchInterval, run_in_thread
from matchers import exact


class TestReply:
    async def test_value_sent_from_another_thread(self) -> None:
        """A value sent from another OS thread wakes the receiving task and is returned."""
        reply: Reply[int] = Reply()
        threading.Thread(target=lambda: reply.send(outcome.Value(42))).start()
        assert await reply.receive() == 42

    async def test_error_is_raised_by_receive(self) -> None:
        """An error sent is raised by receive() as itself; outcome() returns it unraised."""
        reply: Reply[int] = Reply()
        reply.send(outcome.Error(KeyError("k")))
        assert isinstance((await reply.outcome()).error, KeyError)
        with pytest.raises(KeyError):
            await reply.receive()

    async def test_shielded_wait_outlives_a_cancel(self) -> None:
        """receive() waits for the result even when the caller is cancelled meanwhile (the default)."""
        reply: Reply[str] = Reply()

        def late() -> None:
            time.sleep(0.1)  # well past the deadline below
            reply.send(outcome.Value("done"))

        threading.Thread(target=late).start()
        got: list[str] = []
        with trio.move_on_after(0.01):
            got.append(await reply.receive())
        assert got == ["done"]

    async def test_unshielded_wait_is_cancellable(self) -> None:
        """receive(grace=0) gives way to a cancellation at once."""
        reply: Reply[str] = Reply()
        with trio.move_on_after(0.01) as scope:
            await reply.receive(grace=0)
        assert scope.cancelled_caught


class TestRunInThread:
    async def test_runs_on_a_dedicated_thread_that_is_gone_after(self) -> None:
        """The function runs on a new named thread, which has exited when the call returns."""
        names: list[str] = []
        result = await run_in_thread(lambda: names.append(threading.current_thread().name) or 7, name="t-x")
        assert result == 7 and names == ["t-x"]
        assert not [t for t in threading.enumerate() if t.name == "t-x"]

    async def test_error_propagates(self) -> None:
        """An error of the function is raised by the caller."""

        def fail() -> None:
            raise OSError("disk")

        with pytest.raises(OSError, match=exact("disk")):
            await run_in_thread(fail)


class TestActorThread:
    async def test_jobs_run_in_order_on_one_thread(self) -> None:
        """Jobs run one after another on the actor's own thread and return their results."""
        thread = ActorThread("asyncloop-actor-test")
        idents = [await thread.run(threading.get_ident) for _ in range(3)]
        thread.stop()
        thread.join()
        assert len(set(idents)) == 1 and idents[0] != threading.get_ident()

    async def test_run_after_stop_is_refused(self) -> None:
        """A stopped actor thread refuses new jobs with a clear error (the job would never run)."""
        thread = ActorThread("asyncloop-actor-test")
        thread.stop()
        thread.stop()  # idempotent
        thread.join()
        with pytest.raises(RuntimeError, match=exact("this actor thread was stopped; no more jobs")):
            await thread.run(print)


class TestSwitchInterval:
    def test_overlapping_users_restore_once_the_last_leaves(self) -> None:
        """Two overlapping users: lowered by the first, restored only when the second releases it."""
        before = sys.getswitchinterval()
        SwitchInterval.acquire(0.0005)
        SwitchInterval.acquire(0.0002)  # the second user shares the first one's setting
        assert abs(sys.getswitchinterval() - 0.0005) < 1e-9
        SwitchInterval.release()
        assert abs(sys.getswitchinterval() - 0.0005) < 1e-9
        SwitchInterval.release()
        assert sys.getswitchinterval() == before

    def test_a_change_made_meanwhile_is_not_undone(self) -> None:
        """If someone else sets the interval while it is lowered, release leaves their value."""
        before = sys.getswitchinterval()
        try:
            SwitchInterval.acquire(0.0005)
            sys.setswitchinterval(0.002)
            SwitchInterval.release()
            assert abs(sys.getswitchinterval() - 0.002) < 1e-9
        finally:
            sys.setswitchinterval(before)
