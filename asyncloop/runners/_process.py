"""Process actors: a detached callback that runs in its own spawned worker process (private).

``detached = "process"`` under the :class:`asyncloop.ActorRunner` puts a copy of the callback in a worker process,
so pure-Python handler work (formatting, protobufs, plotting) runs on another interpreter's GIL instead of
competing with the training thread. Everything else is what a thread actor does: the training thread snapshots
and appends to the outbox, the caller's loop hands batches to the actor, and the actor's thread (here: the
*courier*) carries each batch to the worker and brings back the handlers' times and errors. So inbox bound,
order, back-pressure, errors and cancellation follow the thread actors' rules.

Wire protocol over one ``multiprocessing`` pipe (bytes pickled by :func:`dumps`, read with ``pickle.loads``):

====================================  =================================================================
parent -> worker                      worker -> parent
====================================  =================================================================
(the worker starts)                   ``("ready", its clock)``
``("begin", callback bytes, wrap)``   ``("ok",)`` or ``("error", error)``
``("batch", [(event, phase, view)])`` ``("done", seconds, errors)``: per handled item, like a thread run
``("end",)``                          ``("state", state, error)``: after ``teardown(None)``
``("exit",)``                         (the worker returns)
====================================  =================================================================

A second, one-way pipe carries stop requests: the worker checks it between two items of a batch (a cancelled or
failing fit) and empties it at its next ``begin``.

Tensors: CPU tensors of at most 64 values travel as lists, up to 256 KiB as raw bytes (cheaper than a
shared-memory segment for a loss scalar), larger ones are copied once into shared memory and accelerator tensors
go through ``torch.multiprocessing``'s CUDA IPC reductions. Tensors that require grad are sent detached. The
worker ignores SIGINT (Ctrl-C reaches the whole process group): the parent decides when it ends.
"""

from __future__ import annotations

import importlib
import io
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch
import torch.multiprocessing as tmp
from torch.multiprocessing.reductions import reduce_tensor

from .._exceptions import ProcessActorError

#: CPU tensors at least this large (bytes) go through shared memory; smaller ones are copied in the message.
SHARED_MEMORY_MIN_BYTES = 256 * 1024
#: While the worker starts (spawn + imports: seconds), the actor's inbox holds this many times its bound, so that
#: the loop does not wait for the start-up.
STARTUP_INBOX_FACTOR = 64

_SPAWN = tmp.get_context("spawn")


# -- pickling ------------------------------------------------------------------------------------------------
def _same(value: Any) -> Any:
    return value


def _rebuild_list(values: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def _rebuild_small(buffer: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not buffer:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(buffer), dtype=dtype).reshape(shape)


class _Pickler(ForkingPickler):
    """``ForkingPickler`` (torch registers its shared-memory reductions there) that copies small CPU tensors."""

    def reducer_override(self, obj: Any) -> Any:
        if obj.__class__ is type:
            return _class_reference(obj)
        if obj.__class__ is torch.Tensor and obj.requires_grad:
            return _same, (obj.detach(),)  # handlers get values, never autograd graphs
        if obj.__class__ is torch.Tensor and obj.device.type == "cpu":
            numel = obj.nelement()
            if 0 < numel <= 64 and obj.layout is torch.strided and not obj.is_quantized:
                return _rebuild_list, (obj.tolist(), obj.dtype)  # a loss, a few metrics: the cheapest way
            nbytes = numel * obj.element_size()
            if obj.is_sparse or obj.is_quantized or obj.layout is not torch.strided:
                return NotImplemented  # pragma: no cover - torch's own reductions
            if nbytes < SHARED_MEMORY_MIN_BYTES:
                flat = obj.detach().contiguous().reshape(-1)
                raw = flat.view(torch.uint8).numpy().tobytes() if nbytes else b""
                return _rebuild_small, (raw, obj.dtype, tuple(obj.shape))
            if not obj.is_shared():
                # One copy into a fresh shared-memory block by copy_, a torch op that releases the GIL, so the
                # training thread keeps running meanwhile.
                storage = torch.UntypedStorage._new_shared(nbytes)
                shared = torch.empty((0,), dtype=obj.dtype).set_(storage, 0, tuple(obj.shape))
                shared.copy_(obj)
                return reduce_tensor(shared)
        return NotImplemented


def _import_attribute(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def _class_reference(cls: type) -> Any:
    """A class pickles by its module and qualified name; one renamed after its definition (a private subclass
    that shows its public parent's name) by the module attribute that holds it."""
    module = sys.modules.get(cls.__module__)
    if module is None or "." in cls.__qualname__ or getattr(module, cls.__qualname__, None) is cls:
        return NotImplemented
    for candidate in _defining_modules(cls):
        for name, value in vars(candidate).items():
            if value is cls:
                return _import_attribute, (candidate.__name__, name)
    return NotImplemented


def _defining_modules(cls: type) -> list[Any]:
    """Modules that may hold ``cls``: those of the functions defined in its body (their globals)."""
    found = []
    for value in vars(cls).values():
        code_globals = getattr(getattr(value, "__func__", value), "__globals__", None)
        if code_globals is not None and code_globals.get("__name__") in sys.modules:
            found.append(sys.modules[code_globals["__name__"]])
            break
    return found


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` for the pipe (tensors as described in the module docstring)."""
    buffer = io.BytesIO()
    _Pickler(buffer, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def check_picklable(callback: Any) -> bytes:
    """Pickle ``callback`` for its worker, or raise a ``TypeError`` that says what to do."""
    try:
        return dumps(callback)
    except Exception as exc:
        raise TypeError(unpicklable_message(callback, exc)) from exc


def unpicklable_message(callback: Any, exc: BaseException) -> str:
    return (
        f"{callback.name} sets detached = \"process\" but cannot be pickled to be sent to its worker process "
        f"({type(exc).__name__}: {exc}). Keep only picklable attributes (open files, locks, sockets, lambdas and "
        f"classes defined inside functions are not): open resources lazily in a handler, drop them in "
        f"__getstate__, define the class at module level; or set detached = True to run it on a thread"
    )


def error_payload(exc: BaseException) -> Any:
    """An error as it crosses the pipe: itself when it pickles, else ``(type name, message)``; plus the traceback."""
    text = "".join(traceback.format_exception(exc))
    try:
        data = dumps(exc)
        pickle.loads(data)
        return ("exc", data, text)
    except Exception:
        return ("text", f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), text)


def load_error(payload: Any) -> BaseException:
    """The parent's copy of an error from :func:`error_payload`, with the worker's traceback as a note."""
    if payload[0] == "exc":
        exc = pickle.loads(payload[1])
    else:
        exc = ProcessActorError(f"{payload[1]}: {payload[2]}")
    exc.add_note(f"asyncloop: traceback in the worker process:\n{payload[-1]}")
    return exc


# -- parent side -----------------------------------------------------------------------------------------------
class ProcessWorker:
    """The parent's handle on one spawned worker process. Every blocking method runs on the actor's thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conn, child = _SPAWN.Pipe()
        abort_reader, self.abort = _SPAWN.Pipe(duplex=False)  # a pipe, not an Event: no named semaphore to outlive
        self.spawned = time.perf_counter()
        self.process = _SPAWN.Process(
            target=worker_main, args=(child, abort_reader), name=f"asyncloop-process-{name}", daemon=True
        )
        self.process.start()
        child.close()
        abort_reader.close()
        self.ready = False
        self.startup_seconds: float | None = None
        self.dead = False

    def alive(self) -> bool:
        return not self.dead and self.process.is_alive()

    def _recv(self) -> Any:
        try:
            return pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            self.dead = True
            self.process.join(1.0)
            code = self.process.exitcode
            raise ProcessActorError(
                f"the worker process of {self.name} ended unexpectedly (exit code {code})"
            ) from exc

    def _send(self, data: bytes) -> None:
        try:
            self.conn.send_bytes(data)
        except (BrokenPipeError, OSError) as exc:
            self.dead = True
            raise ProcessActorError(f"the worker process of {self.name} is gone") from exc

    def wait_ready(self) -> None:
        if not self.ready:
            message = self._recv()
            assert message[0] == "ready", message
            self.ready = True
            self.startup_seconds = time.perf_counter() - self.spawned

    def begin(self, callback_bytes: bytes, wrap: bool) -> None:
        """Wait for the worker to be ready, then hand it a fresh copy of the callback for this fit."""
        self.wait_ready()
        self._send(dumps(("begin", callback_bytes, wrap)))
        reply = self._recv()
        if reply[0] == "error":
            error = load_error(reply[1])
            error.add_note(
                f"asyncloop: the worker process could not unpickle {self.name}: its class must be importable by "
                f"name there (defined in a module, not in a notebook cell or an unguarded script's __main__)"
            )
            raise error

    def handle(self, items: Sequence[tuple[Any, Any, Any]]) -> tuple[list[float], list[tuple[int, BaseException]] | None]:
        """Send one batch and wait for its outcome: per handled item its seconds, and the errors by index."""
        self._send(dumps(("batch", items)))
        reply = self._recv()
        errors = [(i, load_error(p)) for i, p in reply[2]] if reply[2] else None
        return reply[1], errors

    def end(self) -> tuple[Any, BaseException | None]:
        """Run the worker copy's teardown and fetch its final state (``Callback.process_state()``)."""
        self._send(dumps(("end",)))
        reply = self._recv()
        return reply[1], (load_error(reply[2]) if reply[2] is not None else None)

    def request_abort(self) -> None:
        """Ask the worker to stop after the handler it is in (thread-safe; the worker clears it at its next fit)."""
        try:
            self.abort.send_bytes(b"!")
        except (OSError, ValueError):  # the worker is gone
            pass

    def kill(self) -> None:
        """End the worker now (SIGTERM, then SIGKILL after 1 s); its pipe then reports EOF to any reader."""
        self.dead = True
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(1.0)
            if self.process.is_alive():  # pragma: no cover - a worker that ignores SIGTERM
                self.process.kill()
                self.process.join(1.0)

    def stop(self) -> None:
        """Ask an idle worker to exit (non-blocking) and release the parent's end of the pipe."""
        if not self.dead:
            self.dead = True
            try:
                self.conn.send_bytes(dumps(("exit",)))
            except (OSError, ValueError):
                pass
        for conn in (self.conn, self.abort):
            try:
                conn.close()
            except OSError:  # pragma: no cover
                pass


# -- worker side -----------------------------------------------------------------------------------------------
def worker_main(conn: Any, abort: Any) -> None:
    """The worker process: handle the callback's batches until told to exit or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the group; the parent decides
    torch.set_num_threads(1)
    import asyncloop  # noqa: F401 - the callback's classes and the views' compilation

    from .._views import _view

    started = time.perf_counter()
    try:
        conn.send_bytes(dumps(("ready", started)))
    except OSError:  # the parent stopped this worker while it started
        return
    callback: Any = None
    wrap = False
    handlers: dict[tuple[type, type], Any] = {}
    perf = time.perf_counter
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the parent is gone
        kind = message[0]
        if kind == "batch":
            seconds: list[float] = []
            errors: list[tuple[int, Any]] = []
            t0 = perf()
            for event, phase, view in message[1]:
                if abort.poll():
                    break
                key = (event.__class__, phase.__class__)
                fn = handlers.get(key)
                if fn is None:
                    found = callback.handler(*key)
                    fn = handlers[key] = found.fn if not found.is_async else _sync(found.fn)
                try:
                    fn(event, phase, _view(view, callback.state_access, "Learner") if wrap else view)
                except Exception as exc:
                    errors.append((len(seconds), error_payload(exc)))
                    if not _is_control(exc):
                        seconds.append(perf() - t0)
                        break
                t1 = perf()
                seconds.append(t1 - t0)
                t0 = t1
            conn.send_bytes(dumps(("done", seconds, errors)))
        elif kind == "begin":
            while abort.poll():  # a request left from an earlier fit
                abort.recv_bytes()
            try:
                callback, wrap, handlers = pickle.loads(message[1]), message[2], {}
                conn.send_bytes(dumps(("ok",)))
            except Exception as exc:
                conn.send_bytes(dumps(("error", error_payload(exc))))
        elif kind == "end":
            state, error = None, None
            try:
                if callback is not None:
                    callback.teardown(None)
                    state = callback.inner.process_state()  # a wrapper's (throttle's) state stays in the parent
                    dumps(state)
            except Exception as exc:
                state, error = None, error_payload(exc)
            conn.send_bytes(dumps(("state", state, error)))
            callback = None
        elif kind == "exit":
            return


def _is_control(exc: BaseException) -> bool:
    from .._exceptions import FitException

    return isinstance(exc, FitException)


def _sync(fn: Any) -> Any:
    """An async handler, run to completion on a trio loop of its own (a worker has no other loop)."""
    import trio

    def run(event: Any, phase: Any, view: Any) -> None:
        async def main() -> None:
            await fn(event, phase, view)

        trio.run(main)

    return run

