"""Tests for asyncloop.logging._backend: the LoggerBackend interface and log_to's fan-out."""

from __future__ import annotations

import re
from typing import Any

import pytest

from asyncloop import LoggerBackend, log_to
from asyncloop.loggables import Loggable, Text, Value
from asyncloop import TrainingPhase
from asyncloop.logging import default_run_name
from asyncloop.logging._backend import is_training_step


class Recording(LoggerBackend):
    """Remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Loggable, str, int, tuple[str, ...]]] = []
        self.flushed = self.closed = 0

    def log_to(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...] = ()) -> None:
        self.calls.append((loggable, name, index, group))

    def flush(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        self.closed += 1


class Failing(LoggerBackend):
    def log_to(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...] = ()) -> None:
        raise OSError("disk full")


class TestLoggerBackend:
    def test_is_abstract(self) -> None:
        """A backend must implement log_to."""
        with pytest.raises(TypeError, match=r"abstract"):
            LoggerBackend()  # type: ignore[abstract]

    def test_default_flush_and_close(self) -> None:
        """flush and close do nothing by default, and close may be called twice."""

        class Minimal(LoggerBackend):
            def log_to(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...] = ()) -> None:
                pass

        backend = Minimal()
        backend.flush()
        backend.close()
        backend.close()
        assert repr(backend) == "Minimal()"


class TestLogTo:
    def test_fans_out_to_every_backend(self) -> None:
        """log_to sends the same loggable to every backend, in order."""
        a, b = Recording(), Recording()
        value = Value(0.5)
        log_to((a, b), value, "Loss", 3, ("Step", "TrainingPhase", "Metrics"))
        assert a.calls == b.calls == [(value, "Loss", 3, ("Step", "TrainingPhase", "Metrics"))]

    def test_single_backend_and_string_group(self) -> None:
        """One backend may be passed alone, and a str group is a one-element group."""
        backend = Recording()
        log_to(backend, Text("hi"), "Note", 1, "Step")
        log_to([backend], Text("hi"), "Note", 2)
        log_to(backend, Text("hi"), "Note", 3, ["Step", "X"])
        assert [c[3] for c in backend.calls] == [("Step",), (), ("Step", "X")]

    def test_every_backend_runs_before_the_error(self) -> None:
        """A failing backend does not stop the others; its error is raised with a note naming it."""
        after = Recording()
        with pytest.raises(
            OSError,
            match=r"^disk full\nasyncloop: raised by Failing\(\)\.log_to\(Value\(1\), 'Loss', 1\)$",
        ):
            log_to((Failing(), after), Value(1), "Loss", 1)
        assert len(after.calls) == 1

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("not a backend", Value(1), "a", 1),
             r"^log_to takes a LoggerBackend or a tuple of them, got 'not a backend'$"),
            ((None, 1.0, "a", 1), r"^log_to takes a loggable such as loggables.Value\(0.5\), got 1.0$"),
            ((None, Value(1), 3, 1), r"^name must be a str, got 3$"),
            ((None, Value(1), "a", 1.0), r"^index must be an int, got 1.0$"),
            ((None, Value(1), "a", True), r"^index must be an int, got True$"),
            ((None, Value(1), "a", 1, ("Step", 2)), r"^group must be a str or a tuple of str, got \('Step', 2\)$"),
        ],
    )
    def test_bad_arguments(self, args: tuple[Any, ...], message: str) -> None:
        """Bad arguments are refused with a clear message before any backend is called."""
        backend = Recording()
        args = (backend if args[0] is None else args[0], *args[1:])
        with pytest.raises(TypeError, match=message):
            log_to(*args)
        assert backend.calls == []


class TestIsTrainingStep:
    def test_only_training_phases_steps(self) -> None:
        """Step points of training phases (built-in or a loaded subclass) are training steps; those of validation,
        of validate()'s EvaluationPhase and epoch points are not."""

        class MyTrainingPhase(TrainingPhase):
            pass

        assert is_training_step(("Step", "TrainingPhase", "Metrics", "Loss"))
        assert is_training_step(("Step", "MyTrainingPhase", "Metrics", "Loss"))
        assert is_training_step(("Step",))
        assert not is_training_step(("Step", "ValidationPhase", "Metrics", "Loss"))
        assert not is_training_step(("Step", "EvaluationPhase", "Metrics", "Loss"))
        assert not is_training_step(("Epoch", "TrainingPhase", "Metrics", "Loss"))
        assert not is_training_step(())


class TestDefaultRunName:
    def test_format_and_uniqueness(self) -> None:
        """Run names are local time plus a random suffix, and differ between calls."""
        names = {default_run_name() for _ in range(20)}
        assert len(names) == 20
        assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", n) for n in names)


class TestLazyResource:
    def test_opens_on_first_use_and_closes_idempotently(self) -> None:
        """use() opens once and reuses; flush acts only while open; close is idempotent and the next use reopens."""
        from asyncloop.logging._backend import LazyResource

        calls: list[str] = []
        counter = iter(range(10))
        res = LazyResource(
            lambda: calls.append("open") or next(counter),
            flush=lambda v: calls.append(f"flush {v}"),
            close=lambda v: calls.append(f"close {v}"),
        )
        res.flush()
        res.close()
        assert calls == [] and res.value is None
        with res.lock:
            assert res.use() == 0 and res.use() == 0
        res.flush()
        res.close()
        res.close()
        with res.lock:
            assert res.use() == 1
        assert calls == ["open", "flush 0", "close 0", "open"]


class TestPickling:
    def test_a_pickled_lazy_resource_starts_closed_with_its_own_lock(self) -> None:
        """A LazyResource pickles (for a process actor's copy): the copy is closed, has a lock of its own and opens
        with the same opener."""
        import pickle

        from asyncloop.logging._backend import LazyResource

        res = LazyResource(list, flush=len, close=len)
        res.use().append(1)
        copy = pickle.loads(pickle.dumps(res))
        assert copy.value is None and copy.lock is not res.lock
        with copy.lock:
            assert copy.use() == []
