"""Threads and the one way results cross between a thread and a trio loop (private).

:class:`Reply` is the hand-off: a trio task makes one, gives :meth:`Reply.send` to whoever computes the result
(another OS thread, or a task in another trio loop), and awaits :meth:`Reply.receive`. ``send`` may run on any
thread; it wakes the receiver's loop with ``run_sync_soon``. Everything else here is built on it:

* :func:`run_in_thread`: a blocking call on a fresh dedicated thread (teardown, checkpoint loading);
* :class:`ActorThread`: a detached actor's own thread for its blocking handlers.

No pooled thread is used: when a run ends, its threads are gone.

:class:`SwitchInterval` lowers the interpreter's GIL switch interval while detached actors' threads run (and
puts it back after).
"""

from __future__ import annotations

import math
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import outcome
import torch
import trio

T = TypeVar("T")


class Reply(Generic[T]):
    """A one-shot result for the trio task that created it, sent from any thread.

    ``grace`` says how long the receiver keeps waiting once it is cancelled (or interrupted): by default forever
    (a computation in flight is never abandoned, the cancellation takes effect once the result is in), ``0`` not
    at all. When the grace runs out the cancellation propagates and the result, if it ever comes, is dropped.
    """

    __slots__ = ("_token", "_done", "_result")

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._done = trio.Event()
        self._result: outcome.Outcome | None = None

    def send(self, result: outcome.Outcome) -> None:
        """Deliver ``result`` (from any thread, or a ``run_sync_soon`` callback); never raises."""
        self._result = result
        try:
            self._token.run_sync_soon(self._done.set)
        except trio.RunFinishedError:  # pragma: no cover - the receiver's loop is gone
            pass

    @property
    def received(self) -> bool:
        """Whether the result was sent (a receiver that gave up after its grace finds it still missing)."""
        return self._result is not None

    async def outcome(self, *, grace: float = math.inf) -> outcome.Outcome:
        """Wait for the result and return it as an ``Outcome`` (no unwrapping); see the class for ``grace``."""
        try:
            await self._done.wait()
        except BaseException:  # a cancellation, or a KeyboardInterrupt delivered here
            if grace > 0:
                with trio.move_on_after(grace) as scope:
                    scope.shield = True
                    await self._done.wait()
            if self._result is None:
                raise
        assert self._result is not None
        return self._result

    async def receive(self, *, grace: float = math.inf) -> T:
        """Wait for the result: return its value or raise its error; see the class for ``grace``."""
        return (await self.outcome(grace=grace)).unwrap()


async def run_in_thread(
    fn: Callable[..., T], *args: Any, name: str = "asyncloop-io", on_cancel: Callable[[], None] | None = None
) -> T:
    """Run ``fn(*args)`` in a new dedicated thread and wait for it without blocking the event loop.

    Unlike ``trio.to_thread.run_sync`` no pooled thread survives the call. A running function is never
    abandoned: when the caller is cancelled (or interrupted), ``on_cancel()`` is called if given -- to ask ``fn``
    to stop early -- and the call still waits for ``fn`` to return before the cancellation propagates.
    """
    reply: Reply[T] = Reply()
    thread = threading.Thread(target=lambda: reply.send(outcome.capture(fn, *args)), name=name, daemon=True)
    thread.start()
    try:
        if on_cancel is None:
            return await reply.receive()
        try:
            return await reply.receive(grace=0)
        except BaseException:
            on_cancel()
            await reply.outcome()  # the function stops as soon as it sees the request
            raise
    finally:
        thread.join()  # returns at once: the thread's last act was to send its outcome


class ActorThread:
    """A detached actor's own thread for its blocking handlers: one per actor, gone when the session ends."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.stopped = False
        self.abandoned = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        torch.set_num_threads(1)  # handlers must not fight the training thread for BLAS threads
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, reply = job
            reply.send(outcome.capture(fn, *args))

    async def run(
        self, fn: Callable[..., T], *args: Any, grace: float = math.inf, on_cancel: Callable[[], None] | None = None
    ) -> T:
        """Run ``fn(*args)`` on this thread and wait for it.

        Once the caller is cancelled, ``on_cancel()`` is called if given (to ask the job to stop early: a process
        actor's worker stops after its current handler), and the job still gets ``grace`` seconds to finish; after
        that the thread is
        *abandoned* (``abandoned`` is set, :meth:`join` no longer waits for it: it runs on as a daemon thread and
        exits after its job) and the cancellation propagates. Must not be called after :meth:`stop` (the job
        would never run): check ``stopped`` first. Both run in the caller's trio thread, so the check cannot race
        with ``stop``.
        """
        if self.stopped:
            raise RuntimeError("this actor thread was stopped; no more jobs")
        reply: Reply[T] = Reply()
        self._jobs.put((fn, args, reply))
        try:
            if on_cancel is None:
                return await reply.receive(grace=grace)
            try:
                return await reply.receive(grace=0)
            except BaseException:
                if reply.received:
                    raise
                on_cancel()
                await reply.outcome(grace=grace)
                raise
        except BaseException:
            if not reply.received:
                self.abandoned = True
            raise

    def stop(self) -> None:
        """Ask the thread to exit after its current job (non-blocking, idempotent)."""
        if not self.stopped:
            self.stopped = True
            self._jobs.put(None)

    def join(self) -> None:
        """Wait for the thread to exit (after :meth:`stop`), unless it was abandoned."""
        if not self.abandoned:
            self._thread.join()


class SwitchInterval:
    """The interpreter's GIL switch interval (``sys.setswitchinterval``), lowered while at least one user holds it.

    A thread that wants the GIL waits up to the switch interval (5 ms by default) before the holder is asked to
    drop it; a detached actor's thread that wakes from a blocking call (a write, a sleep) every step waits that
    long, in the worst case, while the training thread holds the GIL, and falls behind. :meth:`acquire` lowers
    the interval to ``seconds`` if it is higher; when the last user calls :meth:`release` it goes back to what it
    was, unless someone else changed it meanwhile. Thread-safe; users may overlap (concurrent fits).
    """

    _lock = threading.Lock()
    _users = 0
    _saved: float | None = None
    _set: float | None = None

    @classmethod
    def acquire(cls, seconds: float) -> None:
        with cls._lock:
            if cls._users == 0:
                current = sys.getswitchinterval()
                if current > seconds:
                    sys.setswitchinterval(seconds)
                    cls._saved, cls._set = current, sys.getswitchinterval()
                else:
                    cls._saved = cls._set = None
            cls._users += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0 and cls._saved is not None:
                if sys.getswitchinterval() == cls._set:  # nobody changed it meanwhile
                    sys.setswitchinterval(cls._saved)
                cls._saved = cls._set = None
