"""Threads and the one way results cross between a thread and a trio loop (private).

:class:`Reply` is the hand-off: a trio task makes one, gives :meth:`Reply.send` to whoever computes the result
(another OS thread, or a task in another trio loop), and awaits :meth:`Reply.receive`. ``send`` may run on any
thread; it wakes the receiver's loop with ``run_sync_soon``. Everything else here is built on it:

* :func:`run_in_thread`: a blocking call on a fresh dedicated thread (teardown, checkpoint loading);
* :class:`ActorThread`: a detached actor's own thread for its blocking handlers.

No pooled thread is used: when a run ends, its threads are gone.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import outcome
import torch
import trio

T = TypeVar("T")


class Reply(Generic[T]):
    """A one-shot result for the trio task that created it, sent from any thread.

    The receiver's wait is shielded by default: a computation in flight is never abandoned, cancellation takes
    effect once the result is in.
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

    async def outcome(self, *, shield: bool = True) -> outcome.Outcome:
        """Wait for the result and return it as an ``Outcome`` (no unwrapping)."""
        if shield:
            with trio.CancelScope(shield=True):
                await self._done.wait()
        else:
            await self._done.wait()
        assert self._result is not None
        return self._result

    async def receive(self, *, shield: bool = True) -> T:
        """Wait for the result: return its value or raise its error."""
        return (await self.outcome(shield=shield)).unwrap()


async def run_in_thread(fn: Callable[..., T], *args: Any, name: str = "asyncloop-io") -> T:
    """Run ``fn(*args)`` in a new dedicated thread and wait for it without blocking the event loop.

    Unlike ``trio.to_thread.run_sync`` no pooled thread survives the call. The wait is shielded: a running
    function is never abandoned (cancellation takes effect once it returns).
    """
    reply: Reply[T] = Reply()
    thread = threading.Thread(target=lambda: reply.send(outcome.capture(fn, *args)), name=name, daemon=True)
    thread.start()
    try:
        return await reply.receive()
    finally:
        thread.join()


class ActorThread:
    """A detached actor's own thread for its blocking handlers: one per actor, gone when the session ends."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.stopped = False
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

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on this thread; the wait is shielded (a running handler is never abandoned).

        Must not be called after :meth:`stop` (the job would never run): check ``stopped`` first. Both run in
        the caller's trio thread, so the check cannot race with ``stop``.
        """
        if self.stopped:
            raise RuntimeError("this actor thread was stopped; no more jobs")
        reply: Reply[T] = Reply()
        self._jobs.put((fn, args, reply))
        return await reply.receive()

    def stop(self) -> None:
        """Ask the thread to exit after its current job (non-blocking, idempotent)."""
        if not self.stopped:
            self.stopped = True
            self._jobs.put(None)

    def join(self) -> None:
        self._thread.join()
