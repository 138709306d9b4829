"""The training service (asyncloop.service, `asyncloop serve`): its API end to end over real HTTP.

Every test runs the service in its own trio loop: hypercorn on a free loopback port, an httpx client in the same
loop. Jobs are tiny MLPs (a few dozen steps); a job meant to be cancelled asks for far more epochs than a test
waits for.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from asyncloop._checkpoint_files import read_checkpoint
from asyncloop.logging import read_events
from asyncloop.service import JobSpec, TrainingService, parse_spec, serve

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"samples": 128, "batch_size": 32, "epochs": 3}  # 4 training steps per epoch
ENDLESS = {"samples": 256, "batch_size": 32, "epochs": 1000}  # 8000 steps: runs until cancelled


@contextlib.asynccontextmanager
async def running_service(folder: Path, **options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, TrainingService]]:
    """A service on a free loopback port and a client for it; leaving cancels whatever still runs."""
    async with TrainingService(folder, **options) as service:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve, service, "127.0.0.1", 0)
            async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
                yield client, service
            nursery.cancel_scope.cancel()


async def submit(client: httpx.AsyncClient, **spec: Any) -> dict[str, Any]:
    response = await client.post("/api/jobs", json=spec)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/api/jobs/{response.json()['job']['id']}"
    return response.json()["job"]


async def get_job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()["job"]


async def wait_for(client: httpx.AsyncClient, job_id: str, predicate: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Poll the job until ``predicate(job)``; fail after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate(job := await get_job(client, job_id)):
            await trio.sleep(0.02)
    return job


def training(job: dict[str, Any]) -> bool:
    return job["state"] == "running" and job["progress"]["steps"] > 0


def final(job: dict[str, Any]) -> bool:
    return job["state"] in ("completed", "stopped", "cancelled", "failed")


async def sse(client: httpx.AsyncClient, path: str, **headers: str) -> AsyncIterator[tuple[str, str | None, Any]]:
    """``(event, id, data)`` for each server-sent event of ``GET path``."""
    async with client.stream("GET", path, headers=headers, timeout=httpx.Timeout(30.0, read=60.0)) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        event, event_id, data = "message", None, []
        async for line in response.aiter_lines():
            if not line:
                if data:
                    yield event, event_id, json.loads("\n".join(data))
                event, event_id, data = "message", None, []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())


def step_losses(records: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(r["index"], r["value"]) for r in records
            if r["kind"] == "value" and r["group"] == ["Step", "TrainingPhase", "Metrics"] and r["name"] == "Loss"]


def assert_checkpoints_whole(folder: Path) -> None:
    """Every file the Checkpointer left loads (complete), none is a temporary, and ``latest`` names one of them."""
    if not folder.exists():
        return
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names
    for name in names:
        if name.endswith(".pt"):
            assert "model" in read_checkpoint(folder / name)
    if "latest" in names:
        assert (folder / (folder / "latest").read_text().strip()).is_file()


class TestEndToEnd:
    async def test_two_jobs_stream_one_cancel_one_the_other_finishes(self, tmp_path: Path) -> None:
        """Two jobs train at once; one's live events stream as SSE, it is cancelled within a step (event log
        closed, checkpoints whole), and the other completes all its epochs with its events and checkpoint."""
        async with running_service(tmp_path) as (client, service):
            doomed = await submit(client, **ENDLESS, runner="actor", name="doomed")
            other = await submit(client, **SMALL, runner="linear", seed=1)
            assert doomed["state"] == "queued" and doomed["spec"]["name"] == "doomed"

            records: list[dict[str, Any]] = []
            ids: list[int] = []
            ended: dict[str, Any] | None = None
            async for event, event_id, data in sse(client, f"/api/jobs/{doomed['id']}/events"):
                if event == "record":
                    records.append(data)
                    ids.append(int(event_id))
                    if len(step_losses(records)) == 5:  # it is training: cancel it
                        response = await client.post(f"/api/jobs/{doomed['id']}/cancel")
                        assert response.status_code == 202, response.text
                else:
                    assert event == "end"
                    ended = data
            assert ended is not None and ended["state"] == "cancelled"
            assert ids == list(range(1, len(records) + 1))  # the id counts the records seen
            assert [r["seq"] for r in records] == list(range(len(records)))
            assert records[0]["kind"] == "hparams" and records[0]["value"]["hparams"]["epochs"] == 1000
            assert {r["run"] for r in records} == {doomed["id"]}
            losses = step_losses(records)
            assert [i for i, _ in losses] == list(range(1, len(losses) + 1))
            assert all(math.isfinite(v) for _, v in losses)
            cancel = ended["cancel"]
            assert 0 <= cancel["stopped_at_step"] - cancel["requested_at_step"] <= 1, cancel
            assert ended["progress"]["epochs"] < 1000 and ended["error"] is None
            assert ended["result"]["stopped"] and ended["result"]["reason"] == "cancelled by request"
            assert records[-1]["kind"] == "event" and records[-1]["name"] == "FitEnd"  # it ended cleanly

            with read_events(ended["event_log"]) as log:  # readable, and closed properly
                logged = list(log)
            assert logged[-1]["kind"] == "close" and not log.trailing
            assert step_losses(logged)[: len(losses)] == losses  # the SSE stream and the event log agree
            assert_checkpoints_whole(tmp_path / doomed["id"] / "checkpoints")

            other = await wait_for(client, other["id"], final)
            assert other["state"] == "completed", other
            assert other["result"]["epochs"] == 3 and other["result"]["steps"] == 12
            assert other["progress"] == {"epochs": 3, "epochs_total": 3, "steps": 12, "steps_total": 12}
            assert other["checkpoint"] is not None and other["checkpoint"].endswith(".pt")
            assert_checkpoints_whole(tmp_path / other["id"] / "checkpoints")
            assert other["latest"]["Epoch/ValidationPhase/Metrics/Accuracy"] is not None

            # a finished job's stream replays everything it logged, then ends
            replay = [(e, d) for e, _, d in [x async for x in sse(client, f"/api/jobs/{other['id']}/events")]]
            assert replay[-1][0] == "end" and replay[-1][1]["state"] == "completed"
            names = [d["name"] for e, d in replay if e == "record" and d["kind"] == "event"]
            assert names[0] == "FitBegin" and names[-1] == "FitEnd" and names.count("EpochEnd") == 6
            assert len(step_losses([d for e, d in replay if e == "record"])) == 12

            listed = (await client.get("/api/jobs")).json()["jobs"]
            assert [(j["id"], j["state"]) for j in listed] == [(doomed["id"], "cancelled"), (other["id"], "completed")]

    async def test_stream_resumes_after_the_last_event_id(self, tmp_path: Path) -> None:
        """A reconnecting EventSource sends Last-Event-ID (records seen); ``?since=`` does the same: the stream goes
        on from there, with nothing repeated or skipped."""
        async with running_service(tmp_path) as (client, _):
            job = await submit(client, **SMALL)
            await wait_for(client, job["id"], final)
            path = f"/api/jobs/{job['id']}/events"
            whole = [(i, d) async for e, i, d in sse(client, path) if e == "record"]
            tail = [(i, d) async for e, i, d in sse(client, path, **{"Last-Event-ID": "7"}) if e == "record"]
            assert tail == whole[7:]
            since = [(i, d) async for e, i, d in sse(client, path + "?since=7") if e == "record"]
            assert since == whole[7:]
            response = await client.get(path + "?since=-1")
            assert response.status_code == 400
            assert response.json()["error"] == "since must be a record count (a whole number >= 0), got '-1'"

    async def test_concurrent_jobs_train_as_each_alone(self, tmp_path: Path) -> None:
        """Each job's learner owns its random state: two identical jobs trained at once log exactly the losses of the
        same job trained alone."""
        async with running_service(tmp_path) as (client, service):
            spec = dict(SMALL, hidden=16, seed=7)
            a, b = await submit(client, **spec), await submit(client, **spec)
            await wait_for(client, a["id"], final)
            await wait_for(client, b["id"], final)
            alone = await submit(client, **spec)
            await wait_for(client, alone["id"], final)
            losses = [step_losses(service.get(j["id"]).feed.records) for j in (a, b, alone)]
            assert len(losses[0]) == 12 and losses[0] == losses[1] == losses[2]


class TestResponsiveness:
    async def test_health_answers_fast_while_two_jobs_train(self, tmp_path: Path) -> None:
        """While two jobs train (both advancing), GET /api/health keeps answering: every request within 0.5 s (a
        functional bound on a loaded 2-core machine, not a benchmark; the numbers are printed)."""
        async with running_service(tmp_path) as (client, _):
            jobs = [await submit(client, **ENDLESS, runner=r, hidden=64) for r in ("actor", "linear")]
            before = [await wait_for(client, j["id"], training) for j in jobs]
            latencies = []
            for _ in range(60):
                start = time.perf_counter()
                response = await client.get("/api/health")
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 200 and response.json()["jobs"]["running"] == 2
                await trio.sleep(0.02)
            after = [await get_job(client, j["id"]) for j in jobs]
            assert all(a["progress"]["steps"] > b["progress"]["steps"] for a, b in zip(after, before))
            latencies.sort()
            print(f"\nhealth latency over {len(latencies)} requests while 2 jobs train: median "
                  f"{statistics.median(latencies) * 1e3:.1f} ms, p95 {latencies[56] * 1e3:.1f} ms, "
                  f"max {latencies[-1] * 1e3:.1f} ms; steps trained meanwhile "
                  f"{[a['progress']['steps'] - b['progress']['steps'] for a, b in zip(after, before)]}")
            assert max(latencies) < 0.5
            for job in jobs:
                assert (await client.post(f"/api/jobs/{job['id']}/cancel")).status_code == 202


class TestBadRequests:
    BAD = [
        # (method, path, body bytes or JSON, content type, status, error message)
        ("POST", "/api/jobs", b'{"epochs": 3,', "application/json", 400,
         'the request body is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 14 '
         '(char 13)); send a job spec such as {"epochs": 3, "lr": 0.01}'),
        ("POST", "/api/jobs", b'{"lr": NaN}', "application/json", 400,
         'the request body is not valid JSON (NaN is not a JSON number); send a job spec such as '
         '{"epochs": 3, "lr": 0.01}'),
        ("POST", "/api/jobs", b"\xff\xfe", "application/json", 400,
         "the request body is not UTF-8 text; send the job spec as JSON"),
        ("POST", "/api/jobs", b"epochs=3", "application/x-www-form-urlencoded", 415,
         "send the job spec as JSON with the header Content-Type: application/json "
         "(got 'application/x-www-form-urlencoded')"),
        ("POST", "/api/jobs", [1, 2], None, 422, "the job spec must be a JSON object such as {\"epochs\": 3}, "
                                                  "got an array"),
        ("POST", "/api/jobs", {"hidden": 10**9}, None, 422, "hidden must be an integer in 1..1024, got 1000000000"),
        ("POST", "/api/jobs", {"epochs": 10**6}, None, 422, "epochs must be an integer in 1..1000, got 1000000"),
        ("POST", "/api/jobs", {"epochs": "3"}, None, 422, "epochs must be an integer in 1..1000, got a string"),
        ("POST", "/api/jobs", {"epochs": True}, None, 422, "epochs must be an integer in 1..1000, got a boolean"),
        ("POST", "/api/jobs", {"epochs": 2.5}, None, 422, "epochs must be an integer in 1..1000, got a number"),
        ("POST", "/api/jobs", {"lr": 0}, None, 422, "lr must be a number in (0, 10], got 0"),
        ("POST", "/api/jobs", {"lr": "fast"}, None, 422, "lr must be a number in (0, 10], got a string"),
        ("POST", "/api/jobs", {"runner": "gpu"}, None, 422, "runner must be 'actor' or 'linear', got 'gpu'"),
        ("POST", "/api/jobs", {"model": "resnet"}, None, 422,
         "unknown field 'model'; a job spec has the fields dataset, hidden, layers, epochs, lr, batch_size, runner, "
         "samples, seed, name"),
        ("POST", "/api/jobs", b"{" + b'"a":' * 0 + b'"name": "' + b"x" * 70_000 + b'"}', "application/json", 413,
         "the request body is larger than 65536 bytes; a job spec is a small JSON object"),
        ("GET", "/api/jobs/job-999", None, None, 404, "no job 'job-999'; GET /api/jobs lists the jobs"),
        ("POST", "/api/jobs/job-999/cancel", None, None, 404, "no job 'job-999'; GET /api/jobs lists the jobs"),
        ("GET", "/api/jobs/job-999/events", None, None, 404, "no job 'job-999'; GET /api/jobs lists the jobs"),
        ("GET", "/api/nothing", None, None, 404,
         "no route GET /api/nothing; the API is under /api (see docs/services.md)"),
        ("DELETE", "/api/jobs", None, None, 405, "DELETE is not allowed on /api/jobs"),
    ]

    async def test_bad_requests_get_a_clear_4xx_and_never_disturb_a_running_job(self, tmp_path: Path) -> None:
        """Malformed JSON, wrong types, absurd sizes, unknown jobs and routes each get their 4xx JSON error, word for
        word, while a job trains on undisturbed; a second cancel of a cancelled job is a 409."""
        async with running_service(tmp_path) as (client, service):
            job = await submit(client, **ENDLESS)
            before = await wait_for(client, job["id"], training)
            for method, path, body, content_type, status, message in self.BAD:
                kwargs: dict[str, Any] = {}
                if isinstance(body, bytes):
                    kwargs = {"content": body, "headers": {"Content-Type": content_type}}
                elif body is not None:
                    kwargs = {"json": body}
                response = await client.request(method, path, **kwargs)
                assert (response.status_code, response.json()["error"]) == (status, message), (method, path, body)
                assert response.headers["content-type"] == "application/json"
                assert response.json()["status"] == status
            response = await client.post("/api/jobs", json={"epochs": "3"})
            assert response.json()["field"] == "epochs"
            after = await get_job(client, job["id"])
            assert after["state"] == "running" and after["error"] is None
            # it trains on (the requests take ~80 ms, which an epoch's end with validation can outlast: poll)
            later = await wait_for(client, job["id"], lambda j: j["progress"]["steps"] > before["progress"]["steps"])
            assert later["state"] == "running" and later["error"] is None
            assert [j.id for j in service.jobs()] == [job["id"]]  # no job was made by a bad request

            assert (await client.post(f"/api/jobs/{job['id']}/cancel")).status_code == 202
            await wait_for(client, job["id"], final)
            response = await client.post(f"/api/jobs/{job['id']}/cancel")
            assert response.status_code == 409
            assert response.json() == {"error": f"job {job['id']} already cancelled; there is nothing to cancel",
                                       "status": 409, "state": "cancelled"}


class TestSpec:
    def test_defaults(self) -> None:
        """An empty object is the default spec; a whole float is an int; int lr becomes a float."""
        assert parse_spec({}) == JobSpec()
        spec = parse_spec({"epochs": 3.0, "lr": 1, "dataset": "digits", "name": "run 1"})
        assert (spec.epochs, spec.lr, spec.dataset, spec.name) == (3, 1.0, "digits", "run 1")
        assert type(spec.epochs) is int and type(spec.lr) is float

    @pytest.mark.parametrize(
        ("body", "message", "field"),
        [
            ("x", 'the job spec must be a JSON object such as {"epochs": 3}, got a string', None),
            ({"layers": 9}, "layers must be an integer in 1..8, got 9", "layers"),
            ({"batch_size": 0}, "batch_size must be an integer in 1..4096, got 0", "batch_size"),
            ({"seed": -1}, "seed must be an integer in 0..4294967295, got -1", "seed"),
            ({"lr": 11}, "lr must be a number in (0, 10], got 11", "lr"),
            ({"lr": float("inf")}, "lr must be a number in (0, 10], got inf", "lr"),
            ({"dataset": None}, "dataset must be 'synthetic' or 'digits', got null", "dataset"),
            ({"name": "x" * 65}, "name must be at most 64 printable characters, got 65 characters", "name"),
            ({"name": "a\nb"}, "name must be at most 64 printable characters, got 3 characters", "name"),
            ({"name": 3}, "name must be a string of at most 64 characters, got a number", "name"),
            ({"dataset": "digits", "batch_size": 1, "epochs": 100},
             "this job would train 143700 steps, more than the 100000 a job may; ask for fewer epochs or samples, "
             "or a larger batch_size", "epochs"),
            ({"samples": 100_000, "epochs": 33},
             "this job would train 103125 steps, more than the 100000 a job may; ask for fewer epochs or samples, "
             "or a larger batch_size", "epochs"),
            ({"dataset": "digits", "samples": 100},
             "samples applies to the synthetic dataset only (digits has its 1797 images)", "samples"),
        ],
    )
    def test_rejects(self, body: Any, message: str, field: str | None) -> None:
        """A spec that cannot run is a ValueError naming the field and what to send instead."""
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$") as info:
            parse_spec(body)
        assert info.value.field == field


class TestQueue:
    async def test_jobs_wait_for_a_slot_and_a_queued_job_cancels_at_once(self, tmp_path: Path) -> None:
        """With max_running=1 a second job is queued while the first trains; cancelling a queued job ends it without
        it ever starting; a full queue answers 429; an ended job can be deleted (its files stay), a running one not."""
        async with running_service(tmp_path, max_running=1, max_queued=1) as (client, _):
            first = await submit(client, **ENDLESS)
            await wait_for(client, first["id"], training)
            second = await submit(client, **SMALL)
            assert (await get_job(client, second["id"]))["state"] == "queued"
            response = await client.post("/api/jobs", json=SMALL)
            assert response.status_code == 429
            assert response.json()["error"] == ("1 jobs are already waiting (at most 1); try again when one has "
                                                 "started, or cancel one")
            assert (await client.post(f"/api/jobs/{second['id']}/cancel")).status_code == 202
            second = await wait_for(client, second["id"], final)
            assert second["state"] == "cancelled" and second["started"] is None and second["event_log"] is None
            response = await client.delete(f"/api/jobs/{first['id']}")
            assert (response.status_code, response.json()["error"]) == (
                409, f"job {first['id']} is running; cancel it first, then delete it once it has ended")
            assert (await client.post(f"/api/jobs/{first['id']}/cancel")).status_code == 202
            assert (await wait_for(client, first["id"], final))["state"] == "cancelled"
            response = await client.delete(f"/api/jobs/{first['id']}")
            assert response.status_code == 200
            assert response.json() == {"deleted": first["id"], "folder": str(tmp_path / first["id"])}
            assert (await client.get(f"/api/jobs/{first['id']}")).status_code == 404
            assert (tmp_path / first["id"] / "events.alog").is_file()  # its files stay

    async def test_a_fit_that_misses_the_request_is_cancelled_after_the_grace(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the fit does not stop at its next step (here: the stop request is lost), the job's trio scope is
        cancelled ``cancel_grace`` seconds after the request; the job ends cancelled, its event log closed."""
        import asyncloop.service._jobs as jobs

        monkeypatch.setattr(jobs._CancelOnRequest, "request", lambda self: None)
        async with running_service(tmp_path, cancel_grace=0.3) as (client, _):
            job = await submit(client, **ENDLESS)
            await wait_for(client, job["id"], training)
            start = time.perf_counter()
            assert (await client.post(f"/api/jobs/{job['id']}/cancel")).status_code == 202
            job = await wait_for(client, job["id"], final)
            assert time.perf_counter() - start >= 0.3
            assert job["state"] == "cancelled" and job["result"] is None  # fit did not return: it was cancelled
        with read_events(job["event_log"]) as log:
            assert list(log)[-1]["kind"] == "close"

    async def test_leaving_the_service_cancels_its_jobs(self, tmp_path: Path) -> None:
        """Leaving ``async with TrainingService`` cancels a running job; its event log is closed and readable."""
        async with TrainingService(tmp_path) as service:
            job = service.submit(JobSpec(**ENDLESS))
            with trio.fail_after(60):
                while job.progress()[1] < 3:
                    await trio.sleep(0.01)
        assert job.state == "cancelled" and job.done.is_set() and job.feed.finished
        with read_events(job.event_log) as log:
            assert list(log)[-1]["kind"] == "close"
        assert_checkpoints_whole(job.checkpoints)

    async def test_a_failing_job_fails_alone(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An error in a job (here: building its data) marks that job failed with the error; the service and the
        next job go on."""
        import asyncloop.service._jobs as jobs

        real = jobs.make_data
        monkeypatch.setattr(jobs, "make_data", lambda spec: (_ for _ in ()).throw(OSError("disk on fire")))
        async with running_service(tmp_path) as (client, _):
            job = await submit(client, **SMALL)
            job = await wait_for(client, job["id"], final)
            assert (job["state"], job["error"]) == ("failed", "OSError: disk on fire")
            monkeypatch.setattr(jobs, "make_data", real)
            job = await submit(client, **SMALL)
            assert (await wait_for(client, job["id"], final))["state"] == "completed"
            assert (await client.get("/api/health")).json()["jobs"]["failed"] == 1

    async def test_jobs_are_also_published_on_a_stream_server(self, tmp_path: Path) -> None:
        """Given a StreamServer, every job's records also go to asyncloop's live stream, run name = job id."""
        from asyncloop import StreamServer, subscribe

        async with StreamServer() as server, TrainingService(tmp_path, stream=server) as service:
            async with subscribe("127.0.0.1", server.port) as records:
                await server.wait_for_subscribers(1)
                job = service.submit(JobSpec(**SMALL))
                with trio.fail_after(60):
                    async for record in records:
                        if record["kind"] == "event" and record["name"] == "FitEnd":
                            break
                assert record["run"] == job.id
            await job.done.wait()
            assert job.state == "completed"

    def test_bad_options(self, tmp_path: Path) -> None:
        """Limits must be positive ints."""
        with pytest.raises(ValueError, match=r"^max_running must be a positive int, got 0$"):
            TrainingService(tmp_path, max_running=0)

    async def test_submit_outside_the_block(self, tmp_path: Path) -> None:
        """A service that is not running refuses jobs, saying how to run it."""
        with pytest.raises(RuntimeError, match=r"^the service is not running; submit inside 'async with "
                                               r"TrainingService\(...\)'$"):
            TrainingService(tmp_path).submit(JobSpec())


class TestPage:
    async def test_page_and_its_assets_are_served_and_fetch_nothing_from_the_network(self, tmp_path: Path) -> None:
        """GET / is the page; its script and style come from /static; no file names another host."""
        async with running_service(tmp_path) as (client, _):
            page = await client.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert '<script src="/static/app.js">' in page.text
            for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
                response = await client.get(f"/static/{asset}")
                assert response.status_code == 200 and kind in response.headers["content-type"]
        static = ROOT / "asyncloop" / "service" / "static"
        for path in static.iterdir():
            assert "://" not in path.read_text(), path


def _python(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's asyncloop
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **kwargs)


class TestCommandLine:
    @pytest.mark.parametrize(
        ("command", "banner"),
        [
            (["-m", "asyncloop", "serve"], r"asyncloop service on (http://127\.0\.0\.1:\d+) \(jobs under (.*)\)"),
            (["examples/service/serve.py"], r"asyncloop service on (http://127\.0\.0\.1:\d+) \(jobs under (.*)\); "
                                            r"Ctrl-C to stop"),
        ],
        ids=["asyncloop serve", "examples/service/serve.py"],
    )
    def test_serve_runs_until_sigint(self, command: list[str], banner: str, tmp_path: Path) -> None:
        """`asyncloop serve --port 0` and the embedding example print their URL, answer, and exit 0 on SIGINT; the
        CLI cancels its running job first (its event log closed)."""
        proc = _python([*command, "--port", "0", "--dir", str(tmp_path)])
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.fullmatch(banner, line.strip())
            assert match, line
            assert os.path.abspath(match.group(2)) == str(tmp_path)
            if command[0] == "-m":
                assert proc.stdout.readline() == "Ctrl-C to stop\n"
            with httpx.Client(base_url=match.group(1)) as client:
                assert client.get("/api/health").json()["status"] == "ok"
                if command[0] != "-m":  # the example embeds the same service: its jobs are tested through the CLI
                    proc.send_signal(signal.SIGINT)
                    out, _ = proc.communicate(timeout=60)
                    assert (proc.returncode, out) == (0, "")
                    return
                job = client.post("/api/jobs", json=ENDLESS).json()["job"]
                deadline = time.monotonic() + 60
                while client.get(f"/api/jobs/{job['id']}").json()["job"]["progress"]["steps"] < 2:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 0, out
        assert out == "stopping: cancelling the running jobs\n"
        with read_events(tmp_path / job["id"] / "events.alog") as log:
            assert list(log)[-1]["kind"] == "close"

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--port", "http"], "argument --port: expected a port number in 1..65535, got 'http'"),
            (["--max-running", "0"], "argument --max-running: expected a whole number >= 1, got '0'"),
            (["--stream-port", "70000"], "argument --stream-port: expected a port number in 1..65535, got '70000'"),
        ],
    )
    def test_serve_rejects_bad_arguments(self, args: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
        """A bad option of `asyncloop serve` is a usage error (status 2) naming the option and what it takes."""
        from asyncloop._cli import main

        with pytest.raises(SystemExit) as info:
            main(["serve", *args])
        assert info.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"asyncloop serve: error: {message}"

    @pytest.mark.parametrize("option", ["--port", "--stream-port"])
    def test_serve_says_when_its_port_is_taken(self, option: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
        """A port already in use is exit status 1 and one line naming the address, not a traceback."""
        import socket

        from asyncloop._cli import main

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            args = ["--port", str(port)] if option == "--port" else ["--port", "0", "--stream-port", str(port)]
            assert main(["serve", *args, "--dir", str(tmp_path)]) == 1
        what = "listen on" if option == "--port" else "open the live stream on"
        assert capsys.readouterr().err == (f"asyncloop: error: [Errno {errno.EADDRINUSE}] cannot {what} "
                                           f"127.0.0.1:{port}: {os.strerror(errno.EADDRINUSE)}\n")

    async def test_client_example(self, tmp_path: Path) -> None:
        """examples/service/client.py --quick, run against a service: one job completes, the other is cancelled."""
        async with running_service(tmp_path) as (client, _):
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = await trio.run_process(
                [sys.executable, "examples/service/client.py", "--quick", "--url", str(client.base_url)],
                cwd=ROOT, env=env, capture_stdout=True, capture_stderr=True, check=False)
            out = proc.stdout.decode()
            assert proc.returncode == 0, out + proc.stderr.decode()
        assert re.search(r"^job-1: epoch   2 ValidationPhase Accuracy 0\.\d+$", out, re.MULTILINE), out
        assert re.search(r"^job-1 completed: 2 epochs in [\d.]+s, validation accuracy 0\.\d+; checkpoint .+\.pt$",
                         out, re.MULTILINE), out
        assert re.search(r"^job-2 cancelled at step \d+ \(asked at step \d+\); its event log: .+events\.alog$",
                         out, re.MULTILINE), out
        assert out.rstrip().endswith("jobs: job-1 completed, job-2 cancelled")


class TestDocs:
    PAGE = ROOT / "docs" / "services.md"

    def test_page_runs_and_prints_what_it_shows(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """docs/services.md's python block (a program embedding the service and using its API) runs as shown."""
        from docs_snippets import python_blocks, run_and_check

        blocks = python_blocks(self.PAGE)
        assert len(blocks) == 1
        run_and_check(blocks[0], str(self.PAGE), tmp_path, monkeypatch)

    def test_client_excerpt_is_the_example(self) -> None:
        """The client code the page shows is, verbatim, the code of examples/service/client.py (which runs above)."""
        excerpts = re.findall(r"^```py\n(.*?)^```", self.PAGE.read_text(), flags=re.DOTALL | re.MULTILINE)
        client = (ROOT / "examples" / "service" / "client.py").read_text()
        assert excerpts
        for excerpt in excerpts:
            for definition in excerpt.split("\n\n\n"):  # the page leaves out what lies between
                assert definition.strip() in client, definition
