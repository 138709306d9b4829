"""One run of the training loop on its own worker thread (private).

``fit`` (and ``epoch``/``step``/``run_*`` when called from outside a fit) open a :class:`Session`:

* the loop runs on a dedicated worker thread that runs its own trio event loop, so model compute never blocks
  the caller's event loop and async handlers can still ``await``; torch's thread count is copied into it;
* detached actors (see :mod:`asyncloop.runners._actor`) run as tasks of a nursery in the caller's event loop;
* an external cancellation (cancel scope, Ctrl-C) sets a flag the loop checks at every event, so the worker
  unwinds within about one step; ``fit`` never returns or raises before the worker has finished.

Errors are never wrapped in exception groups: the first error of the session is re-raised as itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import outcome
import torch
import trio

if TYPE_CHECKING:
    from ._learner import Learner

T = TypeVar("T")


async def run_in_thread(fn: Callable[..., T], *args: Any, name: str = "asyncloop-io") -> T:
    """Run ``fn(*args)`` in a new dedicated thread and wait for it without blocking the event loop.

    Unlike ``trio.to_thread.run_sync`` no pooled thread survives the call. The wait is shielded: a running
    function is never abandoned (cancellation takes effect once it returns).
    """
    done = trio.Event()
    box: list[outcome.Outcome] = []
    token = trio.lowlevel.current_trio_token()

    def main() -> None:
        box.append(outcome.capture(fn, *args))
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:  # pragma: no cover - the caller's loop is gone
            pass

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    with trio.CancelScope(shield=True):
        await done.wait()
    thread.join()
    return box[0].unwrap()


class ActorThread:
    """A detached actor's own thread for its blocking handlers: one per actor, gone when the session ends."""

    def __init__(self, name: str) -> None:
        self._token = trio.lowlevel.current_trio_token()
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
            fn, args, deliver = job
            result = outcome.capture(fn, *args)
            try:
                self._token.run_sync_soon(deliver, result)
            except trio.RunFinishedError:  # pragma: no cover - the caller's loop is gone
                return

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on this thread; the wait is shielded (a running handler is never abandoned).

        Must not be called after :meth:`stop` (the job would never run): check ``stopped`` first. Both run in
        the caller's trio thread, so the check cannot race with ``stop``.
        """
        if self.stopped:
            raise RuntimeError("this actor thread was stopped; no more jobs")
        done = trio.Event()
        box: list[outcome.Outcome] = []

        def deliver(result: outcome.Outcome) -> None:
            box.append(result)
            done.set()

        self._jobs.put((fn, args, deliver))
        with trio.CancelScope(shield=True):
            await done.wait()
        return box[0].unwrap()

    def stop(self) -> None:
        """Ask the thread to exit after its current job (non-blocking, idempotent)."""
        if not self.stopped:
            self.stopped = True
            self._jobs.put(None)

    def join(self) -> None:
        self._thread.join()


class _Aborted(BaseException):
    """Raised inside the worker to unwind it when the session is cancelled or an actor failed."""


class Session:
    """State shared by the host (caller's trio loop) and the worker thread for one run."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.host_token = trio.lowlevel.current_trio_token()
        self.worker_token: trio.lowlevel.TrioToken | None = None
        self.worker_scope: trio.CancelScope | None = None
        self.thread_id: int | None = None
        # torch state that is per OS thread: carried over from the caller to the worker
        self.num_threads = torch.get_num_threads()
        self.default_device = torch.get_default_device() if hasattr(torch, "get_default_device") else None
        self.cuda_device = (
            torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        )
        self.abort_requested = False
        self.error: BaseException | None = None
        self.control: BaseException | None = None
        self.in_epoch = 0
        self.in_step = 0
        self.nursery: trio.Nursery | None = None

    # -- worker side -------------------------------------------------------------------------------------------
    def in_worker(self) -> bool:
        return threading.get_ident() == self.thread_id

    def check(self) -> None:
        """Called by the loop at every event: unwind if aborted, deliver a pending control request."""
        if self.abort_requested:
            raise _Aborted()
        if self.control is not None:
            self._deliver_control()

    def _deliver_control(self) -> None:
        from ._exceptions import CancelEpochException, CancelStepException

        exc = self.control
        if isinstance(exc, CancelStepException) and not self.in_step:
            return
        if isinstance(exc, CancelEpochException) and not self.in_epoch:
            return
        self.control = None
        raise exc  # type: ignore[misc]

    async def call_host(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """From the worker: run ``await fn()`` in the host loop and wait for it (a barrier, ~100-150 us)."""
        done = trio.Event()
        box: list[outcome.Outcome] = []
        worker_token = self.worker_token
        assert worker_token is not None

        async def run() -> None:
            box.append(await outcome.acapture(fn))
            try:
                worker_token.run_sync_soon(done.set)
            except trio.RunFinishedError:  # pragma: no cover - worker already gone
                pass

        def spawn() -> None:
            try:
                assert self.nursery is not None
                self.nursery.start_soon(run)
            except BaseException as exc:  # never raise from run_sync_soon
                box.append(outcome.Error(exc))
                worker_token.run_sync_soon(done.set)

        self.host_token.run_sync_soon(spawn)
        await done.wait()
        return box[0].unwrap()

    # -- host side ---------------------------------------------------------------------------------------------
    def fail(self, exc: BaseException) -> None:
        """Record the session's first error and stop the worker."""
        if self.error is None:
            self.error = exc
        self.abort()

    def abort(self) -> None:
        """Ask the worker to unwind at its next event (thread-safe, idempotent)."""
        self.abort_requested = True
        token = self.worker_token
        if token is not None:
            try:
                token.run_sync_soon(self._cancel_worker_scope)
            except trio.RunFinishedError:
                pass

    def _cancel_worker_scope(self) -> None:
        if self.worker_scope is not None:
            self.worker_scope.cancel()

    async def run_worker(self, fn: Callable[..., Awaitable[T]], *args: Any) -> outcome.Outcome:
        """Run ``await fn(*args)`` on a fresh worker thread with its own trio loop; return its outcome.

        If the caller is cancelled meanwhile, the worker is told to unwind and is waited for (shielded) before
        the cancellation propagates: the thread is never abandoned.
        """
        done = trio.Event()
        box: list[outcome.Outcome] = []

        def deliver(result: outcome.Outcome) -> None:
            box.append(result)
            try:
                self.host_token.run_sync_soon(done.set)
            except trio.RunFinishedError:  # pragma: no cover - host loop gone
                pass

        def main() -> None:
            deliver(outcome.capture(trio.run, self._worker_main, fn, args))

        # A dedicated thread (not trio's thread cache): when the session ends, the thread is gone.
        thread = threading.Thread(target=main, name="asyncloop-worker", daemon=True)
        thread.start()
        try:
            await done.wait()
        except BaseException:
            self.abort()
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        finally:
            thread.join()  # returns at once: the thread's last act was to deliver its outcome
        return box[0]

    async def _worker_main(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
        torch.set_num_threads(self.num_threads)
        if self.default_device is not None and self.default_device != torch.device("cpu"):
            torch.set_default_device(self.default_device)
        if self.cuda_device is not None:
            torch.cuda.set_device(self.cuda_device)
        self.thread_id = threading.get_ident()
        with trio.CancelScope() as scope:
            self.worker_scope = scope
            self.worker_token = trio.lowlevel.current_trio_token()
            if self.abort_requested:
                scope.cancel()
            return await fn(*args)
        raise _Aborted()
