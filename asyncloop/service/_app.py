"""The HTTP side of the training service: a quart-trio app over a :class:`TrainingService`, served by hypercorn.

Routes (every answer but the page and the event stream is JSON; every error is ``{"error": message, "status":
code}``, plus ``"field"`` for a spec field):

=======  ============================  ========================================================================
GET      /api/health                   ``{"status": "ok", "uptime", "jobs": {state: count}, "max_running"}``
GET      /api/jobs                     ``{"jobs": [job, ...]}``, oldest first
POST     /api/jobs                     submit a job spec (JSON); 201 with the job and a ``Location`` header
GET      /api/jobs/<id>                the job
DELETE   /api/jobs/<id>                forget an ended job and its records (its folder stays)
POST     /api/jobs/<id>/cancel         cancel it; 202 with the job (``state`` turns ``cancelled`` within a step)
GET      /api/jobs/<id>/events         server-sent events: every record of the job, then an ``end`` event
GET      /                             the web page (``/static/...``: its script and style)
=======  ============================  ========================================================================
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from quart import Response, request, send_from_directory
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ._jobs import Job, TrainingService, _JobStateError, _ServiceFull
from ._spec import _SpecError, parse_spec

STATIC = Path(__file__).with_name("static")
#: The largest request body the service reads (a job spec is a few hundred bytes).
MAX_BODY = 64 * 1024
#: An event stream with nothing to send sends an SSE comment this often (keeps proxies from closing it).
KEEPALIVE_SECONDS = 15.0


class _ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _error(status: int, message: str, **extra: Any) -> Response:
    return Response(json.dumps({"error": message, "status": status, **extra}), status=status,
                    mimetype="application/json")


def _json(body: Any, status: int = 200, **headers: str) -> Response:
    return Response(json.dumps(_plain(body), allow_nan=False), status=status, mimetype="application/json",
                    headers=headers)


def _plain(value: Any) -> Any:
    """``value`` with what JSON cannot carry replaced: NaN and infinities by ``null``, bytes by their length."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return value


def _strict_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_strict_constant)
    except UnicodeDecodeError:
        raise _ApiError(400, "the request body is not UTF-8 text; send the job spec as JSON") from None
    except RecursionError:
        raise _ApiError(400, "the request body is nested too deeply; a job spec is one flat JSON object") from None
    except ValueError as exc:
        raise _ApiError(400, f"the request body is not valid JSON ({exc}); send a job spec such as "
                            f'{{"epochs": 3, "lr": 0.01}}') from None


def _sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(_plain(data), allow_nan=False)}\n\n".encode()


def _start_position(job: Job) -> int:
    """Where an event stream starts: the ``Last-Event-ID`` header (a reconnecting ``EventSource``), or ``?since=``."""
    raw = request.headers.get("Last-Event-ID") or request.args.get("since") or "0"
    if not raw.isdigit() or len(raw) > 12:
        raise _ApiError(400, f"since must be a record count (a whole number >= 0), got {raw!r}")
    return min(int(raw), len(job.feed.records))


async def _events(job: Job, position: int) -> AsyncIterator[bytes]:
    """The job's records from ``position`` on as SSE ``record`` events (``id`` = records seen), then ``end``."""
    feed = job.feed
    while True:
        records = feed.records[position:]
        if records:
            chunk = []
            for record in records:
                position += 1
                chunk.append(_sse("record", record, position))
            yield b"".join(chunk)
        elif feed.finished:
            await job.done.wait()
            yield _sse("end", job.to_json())
            return
        else:
            with trio.move_on_after(KEEPALIVE_SECONDS) as timeout:
                await feed.wait(position)
            if timeout.cancelled_caught:
                yield b": keepalive\n\n"


def create_app(service: TrainingService) -> QuartTrio:
    """The ASGI app (quart-trio) answering the routes above for ``service``."""
    app = QuartTrio(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    def job_of(job_id: str) -> Job:
        try:
            return service.get(job_id)
        except KeyError:
            raise _ApiError(404, f"no job {job_id!r}; GET /api/jobs lists the jobs") from None

    def route(rule: str, **options: Any) -> Callable[[Callable[..., Awaitable[Response]]], Any]:
        def decorate(handler: Callable[..., Awaitable[Response]]) -> Any:
            @functools.wraps(handler)
            async def wrapper(*args: Any, **kwargs: Any) -> Response:
                try:
                    return await handler(*args, **kwargs)
                except _ApiError as exc:
                    return _error(exc.status, exc.message, **exc.extra)

            return app.route(rule, **options)(wrapper)

        return decorate

    @route("/api/health")
    async def health() -> Response:
        return _json(service.health())

    @route("/api/jobs", methods=["GET"])
    async def list_jobs() -> Response:
        return _json({"jobs": [job.to_json() for job in service.jobs()]})

    @route("/api/jobs", methods=["POST"])
    async def submit() -> Response:
        if request.mimetype != "application/json":
            raise _ApiError(415, f"send the job spec as JSON with the header Content-Type: application/json "
                                f"(got {request.mimetype or 'none'!r})")
        body = await request.get_data(cache=False)
        try:
            spec = parse_spec(_decode(body))
        except _SpecError as exc:
            extra = {"field": exc.field} if exc.field is not None else {}
            raise _ApiError(422, exc.message, **extra) from None
        try:
            job = service.submit(spec)
        except _ServiceFull as exc:
            raise _ApiError(429, str(exc)) from None
        return _json({"job": job.to_json()}, 201, Location=f"/api/jobs/{job.id}")

    @route("/api/jobs/<job_id>", methods=["GET"])
    async def get_job(job_id: str) -> Response:
        return _json({"job": job_of(job_id).to_json()})

    @route("/api/jobs/<job_id>/cancel", methods=["POST"])
    async def cancel(job_id: str) -> Response:
        job = job_of(job_id)
        try:
            service.cancel(job_id)
        except _JobStateError as exc:
            raise _ApiError(409, str(exc), state=job.state) from None
        return _json({"job": job.to_json()}, 202)

    @route("/api/jobs/<job_id>", methods=["DELETE"])
    async def delete(job_id: str) -> Response:
        job = job_of(job_id)
        try:
            service.forget(job_id)
        except _JobStateError as exc:
            raise _ApiError(409, str(exc), state=job.state) from None
        return _json({"deleted": job.id, "folder": str(job.folder)})

    @route("/api/jobs/<job_id>/events", methods=["GET"])
    async def events(job_id: str) -> Response:
        job = job_of(job_id)
        response = Response(_events(job, _start_position(job)), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        response.timeout = None  # an event stream lasts as long as its job
        return response

    @app.route("/")
    async def page() -> Response:
        return await send_from_directory(STATIC, "index.html")

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 404:
            message = f"no route {request.method} {request.path}; the API is under /api (see docs/services.md)"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif status == 413:
            message = f"the request body is larger than {MAX_BODY} bytes; a job spec is a small JSON object"
        else:
            message = exc.description or exc.name
        return _error(status, message)

    return app


async def serve(service: TrainingService, host: str = "127.0.0.1", port: int = 8000, *,
                shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``service``'s API and page with hypercorn on ``host:port`` (``port=0``: a free one), in this trio loop.

    Use it with ``nursery.start``: it reports the URL it listens on (``"http://127.0.0.1:38211"``) once it does.
    Runs until cancelled or until ``shutdown_trigger`` returns (then open event streams get a second to end).
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.loglevel = "WARNING"  # no "Running on ..." banner: serve()'s caller reports the URL
    config.graceful_timeout = 1.0
    app = create_app(service)
    started = False
    try:
        async with trio.open_nursery() as nursery:
            serving = functools.partial(hypercorn_serve, app, config, shutdown_trigger=shutdown_trigger)
            binds = await nursery.start(serving)
            started = True
            task_status.started(binds[0])
    except BaseExceptionGroup as group:
        error = only_error(group)
        if started or not isinstance(error, OSError):
            raise
        raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def only_error(group: BaseExceptionGroup) -> BaseException | None:
    """The one exception inside ``group`` (however deeply nested), or ``None`` if it holds several."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup) -> None:
        for exc in g.exceptions:
            walk(exc) if isinstance(exc, BaseExceptionGroup) else leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None
