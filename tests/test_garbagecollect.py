"""Tests for asyncloop.callbacks._garbagecollect: GarbageCollect runs the collector every n steps."""

from __future__ import annotations

import gc
import warnings

import pytest
import trio

from asyncloop import ActorRunner, GarbageCollect, LinearRunner, Metrics, Recorder, fit, test_learner
from matchers import exact

RUNNERS = [LinearRunner, ActorRunner]


class TestGarbageCollect:
    def test_seed_garbage_collect(self) -> None:
        """Seed #22: GarbageCollect() with Recorder and Metrics trains an epoch without a warning."""
        learner = test_learner(GarbageCollect(), Recorder(), Metrics())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            trio.run(fit, learner, 1)

    @pytest.mark.parametrize("runner", RUNNERS)
    def test_collects_every_n_steps(self, runner: type, monkeypatch: pytest.MonkeyPatch) -> None:
        """It collects at every n-th step, counting training and validation steps together."""
        calls = []
        monkeypatch.setattr(gc, "collect", lambda *a: calls.append(1) or 0)
        cb = GarbageCollect(3)
        trio.run(fit, test_learner(cb, Recorder(), n_batches=4, runner=runner()), 2)  # 16 steps
        assert len(calls) == cb.collections == 5

    def test_bad_n_steps(self) -> None:
        """n_steps must be a positive int."""
        with pytest.raises(ValueError, match=exact("GarbageCollect: n_steps must be an int >= 1, got 0")):
            GarbageCollect(0)

    def test_declarations(self) -> None:
        """It touches no learner state and runs inline."""
        cb = GarbageCollect()
        assert cb.state_access == {} and not cb.detached and repr(cb) == "GarbageCollect(100)"
