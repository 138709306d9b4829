"""Helpers for the checkpoint tests: a trained learner, and checks on plain data and nested tensor trees."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import trio

from asyncloop import LearningRate, Metrics, Recorder, Scheduler, fit, test_learner
from asyncloop.hyperparameters import constant


def trained(seed: int = 0, **kw: Any) -> Any:
    """A test learner (Recorder, Metrics, a Scheduler, Adam) seeded with ``seed`` and fitted for 2 epochs."""
    torch.manual_seed(seed)
    learner = test_learner(
        Recorder(),
        Metrics(),
        Scheduler({LearningRate: constant(1e-3)}),
        n_batches=4,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        **kw,
    )
    trio.run(fit, learner, 2)
    return learner


def plain(x: Any) -> bool:
    """Whether ``x`` is plain data (what torch.load(weights_only=True) loads), at any depth."""
    if isinstance(x, (type(None), bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(x, (list, tuple)):
        return all(plain(v) for v in x)
    if isinstance(x, dict):
        return all(isinstance(k, (str, int)) and plain(v) for k, v in x.items())
    return False


def same_tree(a: Any, b: Any) -> bool:
    """Whether two nested trees of containers and tensors are equal (NaN equals NaN)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    return a == b or (a != a and b != b)


def bounded(fn: Callable[[], Any], *, release: Path, timeout: float = 10.0) -> BaseException | None:
    """Run ``fn()`` on a thread and return what it raised (None if nothing); fail if it blocks past ``timeout``.

    If it blocks (a regression that opens the FIFO ``release`` for reading), the FIFO is opened for writing so
    that the blocked open returns and the thread ends: a hang never outlives the test.
    """
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for _ in range(50):
            try:
                fd = os.open(release, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                thread.join(0.1)
                continue
            os.close(fd)
            break
        thread.join(timeout)
        raise AssertionError(f"blocked for more than {timeout}s on {release}")
    return outcome[0]
