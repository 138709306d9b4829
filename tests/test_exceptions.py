"""Tests for asyncloop._exceptions: the exception hierarchy and structured graph errors."""

from __future__ import annotations

import pytest

from asyncloop import Recorder
from asyncloop import _exceptions as exceptions
from asyncloop._exceptions import (
    CallbackCycleError,
    CallbackGraphError,
    CancelEpochException,
    CancelFittingException,
    CancelStepException,
    DetachedWriterError,
    FitException,
    ProtectedError,
    SanityCheckException,
    WriteConflictError,
)


class TestHierarchy:
    @pytest.mark.parametrize("cls", [CancelStepException, CancelEpochException, CancelFittingException])
    def test_control_flow_exceptions_are_fit_exceptions(self, cls: type[Exception]) -> None:
        """The three cancel exceptions share the FitException base."""
        assert issubclass(cls, FitException)
        assert issubclass(cls, Exception)

    def test_cancel_exceptions_are_distinct(self) -> None:
        """Catching one cancel exception never catches another."""
        assert not issubclass(CancelStepException, CancelEpochException)
        assert not issubclass(CancelEpochException, CancelFittingException)
        assert not issubclass(CancelFittingException, CancelStepException)

    def test_protected_error_is_attribute_error(self) -> None:
        """ProtectedError is an AttributeError, so hasattr() on a protected view returns False."""
        assert issubclass(ProtectedError, AttributeError)
        assert not issubclass(ProtectedError, FitException)

    def test_sanity_check_exception_is_not_control_flow(self) -> None:
        """SanityCheckException is a plain Exception, not a FitException."""
        assert issubclass(SanityCheckException, Exception)
        assert not issubclass(SanityCheckException, FitException)

    @pytest.mark.parametrize("cls", [WriteConflictError, CallbackCycleError, DetachedWriterError])
    def test_graph_errors_are_value_errors(self, cls: type[Exception]) -> None:
        """Every graph error is a CallbackGraphError, which is a ValueError."""
        assert issubclass(cls, CallbackGraphError)
        assert issubclass(cls, ValueError)


class TestMessages:
    def test_cancel_exception_keeps_its_message(self) -> None:
        """A cancel exception carries the message it was raised with."""
        assert str(CancelFittingException("Encountered NaN loss")) == "Encountered NaN loss"
        assert CancelStepException("x").args == ("x",)

    def test_graph_error_holds_message_and_callbacks(self) -> None:
        """CallbackGraphError keeps the message as str() and the callbacks involved as .callbacks."""
        a, b = Recorder(), Recorder()
        err = WriteConflictError("conflict", a, b)
        assert str(err) == "conflict"
        assert err.callbacks == (a, b)

    def test_graph_error_without_callbacks(self) -> None:
        """A CallbackGraphError may name no callbacks."""
        assert CallbackGraphError("msg").callbacks == ()


class TestModule:
    def test_every_exception_is_in_the_tree_and_at_the_top_level(self) -> None:
        """Every public exception class asyncloop defines lives in asyncloop._exceptions and is exported."""
        import importlib
        import pkgutil

        import asyncloop

        found = set()
        for info in pkgutil.walk_packages(asyncloop.__path__, "asyncloop."):
            if info.name == "asyncloop.__main__":
                continue
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ in (
                    info.name, "asyncloop"
                ) and not name.startswith("_"):
                    found.add(obj)
        defined = {
            obj
            for name, obj in vars(exceptions).items()
            if isinstance(obj, type) and issubclass(obj, BaseException) and not name.startswith("_")
        }
        assert {cls.__name__ for cls in found} <= {cls.__name__ for cls in defined}
        for cls in defined:
            assert getattr(asyncloop, cls.__name__) is cls
            assert cls.__module__ == "asyncloop"
