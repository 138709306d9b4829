"""Shared fixtures: a seeded torch RNG for every test and a callback that logs every event it sees."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import asyncloop
from asyncloop import Callback, Event, Phase, on


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Seed torch's global RNG so that every learner a test builds is the same on every run."""
    torch.manual_seed(0)


class EventLog(Callback):
    """Record ``(event name, phase name)`` for every event, and which ``learner.step`` keys were set.

    Unconstrained callbacks run in reverse registration order: register it last to see every event before a
    callback that may cancel it.
    """

    state_access = {"step": asyncloop.Read()}

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.step_keys: list[tuple[str, frozenset[str]]] = []

    @on(Event, Phase)
    def log(self, event: Event, phase: Phase, learner: Any) -> None:
        self.events.append((type(event).__name__, type(phase).__name__))
        self.step_keys.append((type(event).__name__, frozenset(learner.step.keys())))


@pytest.fixture
def event_log() -> EventLog:
    """A fresh :class:`EventLog` callback."""
    return EventLog()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run the tests marked slow (the soaks)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long soak tests, skipped unless --run-slow is given")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="a slow soak: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
