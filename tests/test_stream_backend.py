"""Tests for asyncloop.logging._stream_backend: fits publishing their records to a stream server (loopback only)."""

from __future__ import annotations

import pytest
import trio

import asyncloop
from asyncloop import (
    ActorRunner,
    LogMetrics,
    LogVisualization,
    Metrics,
    Recorder,
    StreamBackend,
    StreamServer,
    TrainingPhase,
    fit,
    test_learner,
)
from asyncloop.loggables import Text, Value
from streams import HOST, collect, hello


class TestStreamBackend:
    async def test_fit_streams_its_metrics(self) -> None:
        """A fit with LogMetrics(StreamBackend(server)) streams the learner's metrics, in seq order."""
        got: list[dict] = []
        learner = test_learner(Recorder(), Metrics(), n_batches=3, runner=ActorRunner())
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                async with StreamServer() as server:
                    nursery.start_soon(collect, server.port, got)
                    await server.wait_for_subscribers(1)
                    backend = StreamBackend(server, run="fit-1")
                    learner.add_callback(LogMetrics(backend))
                    await fit(learner, 2)
        assert [r["seq"] for r in got] == list(range(len(got)))
        assert {r["run"] for r in got} == {"fit-1"}
        train = [r for r in got if r["group"] == ["Step", "TrainingPhase", "Metrics"]]
        assert [r["value"] for r in train] == learner.cbstate.metrics_step[TrainingPhase()].values("Loss")
        assert len(got) == 2 * (6 + 2)

    async def test_stalled_subscriber_does_not_slow_training(self) -> None:
        """A subscriber that never reads loses records; the fit finishes and a reading subscriber loses none."""
        fast: list[dict] = []
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                async with StreamServer(buffer_bytes=4 * 2**20, close_timeout=0.5) as server:
                    stalled = await trio.open_tcp_stream(HOST, server.port)
                    await stalled.send_all(hello())
                    nursery.start_soon(collect, server.port, fast)
                    await server.wait_for_subscribers(2)
                    images = LogVisualization(lambda step: step.xs.new_ones(512, 512, 3), StreamBackend(server), freq=1)
                    learner = test_learner(Recorder(), images, n_batches=8, runner=ActorRunner())
                    await fit(learner, 3)
                    stats = server.statistics()
                await stalled.aclose()
        assert [r["index"] for r in fast] == list(range(1, 25))
        assert stats.dropped > 0

    def test_needs_a_server(self) -> None:
        """StreamBackend takes a StreamServer."""
        with pytest.raises(TypeError, match=r"^StreamBackend takes a StreamServer, got 'localhost'$"):
            StreamBackend("localhost")  # type: ignore[arg-type]

    async def test_log_to_publishes_records(self) -> None:
        """log_to publishes the same record the event log would write."""
        got: list[dict] = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                async with StreamServer() as server:
                    nursery.start_soon(collect, server.port, got)
                    await server.wait_for_subscribers(1)
                    backend = StreamBackend(server, run="r")
                    asyncloop.log_to(backend, Value(2.5), "Loss", 7, ("Epoch", "ValidationPhase", "Metrics"))
                    asyncloop.log_to(backend, Text("hi"), "Note", 8)
                    backend.flush()
                    backend.close()
        assert [(r["kind"], r["name"], r["index"], r["group"], r["value"], r["seq"]) for r in got] == [
            ("value", "Loss", 7, ["Epoch", "ValidationPhase", "Metrics"], 2.5, 0), ("text", "Note", 8, [], "hi", 1)]
