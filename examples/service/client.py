"""Talk to the asyncloop training service over HTTP: submit two jobs, follow one live, cancel the other.

    asyncloop serve                                  # in one terminal (or: python examples/service/serve.py)
    python examples/service/client.py                # in another; --url if it listens elsewhere
    python examples/service/client.py --quick        # smaller jobs (what the tests run)

Uses httpx's plain (blocking) client; the event stream is server-sent events, parsed in a dozen lines below.
Exits with status 1 if a job does not end as expected.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` for each server-sent event of a streaming response (comments, ids and retries skipped)."""
    event, data = "message", []
    for line in response.iter_lines():
        if not line:  # a blank line ends an event
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def submit(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/jobs", json=spec)
    if response.status_code != 201:  # a 4xx says what is wrong with the spec
        sys.exit(f"the service refused {spec}: {response.status_code} {response.json()['error']}")
    return response.json()["job"]


def follow(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Print the job's epoch metrics as they arrive; return the job as it ended."""
    with client.stream("GET", f"/api/jobs/{job_id}/events", timeout=httpx.Timeout(10.0, read=None)) as response:
        response.raise_for_status()
        for event, data in sse_events(response):
            if event == "end":
                return data
            if data["kind"] == "value" and data["group"][0] == "Epoch":
                _, phase, _ = data["group"]
                print(f"{job_id}: epoch {data['index']:>3} {phase:<15} {data['name']:<8} {data['value']:.4f}")
    raise RuntimeError(f"the event stream of {job_id} ended without its 'end' event")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="small jobs, a few seconds (for CI)")
    args = parser.parse_args(argv)

    with httpx.Client(base_url=args.url, timeout=10.0) as client:
        print("health:", client.get("/api/health").json())
        # one job to watch to its end, one long job to cancel while both train
        watched = submit(client, {"dataset": "digits", "hidden": 32, "epochs": 2 if args.quick else 10,
                                  "lr": 0.01, "runner": "actor", "name": "digits"})
        doomed = submit(client, {"dataset": "synthetic", "hidden": 64, "layers": 2, "epochs": 1000,
                                 "lr": 0.001, "runner": "linear", "name": "to cancel"})
        print(f"submitted {watched['id']} and {doomed['id']}")

        finished = follow(client, watched["id"])
        accuracy = finished["latest"]["Epoch/ValidationPhase/Metrics/Accuracy"]
        print(f"{watched['id']} {finished['state']}: {finished['result']['epochs']} epochs in "
              f"{finished['result']['elapsed']:.1f}s, validation accuracy {accuracy:.3f}; "
              f"checkpoint {finished['checkpoint']}")

        client.post(f"/api/jobs/{doomed['id']}/cancel").raise_for_status()
        with client.stream("GET", f"/api/jobs/{doomed['id']}/events", timeout=httpx.Timeout(10.0, read=None)) as r:
            cancelled = next(data for event, data in sse_events(r) if event == "end")  # the stream ends with it
        print(f"{doomed['id']} {cancelled['state']} at step {cancelled['cancel']['stopped_at_step']} "
              f"(asked at step {cancelled['cancel']['requested_at_step']}); its event log: {cancelled['event_log']}")

        print("jobs:", ", ".join(f"{job['id']} {job['state']}" for job in client.get("/api/jobs").json()["jobs"]))
        ok = finished["state"] == "completed" and cancelled["state"] == "cancelled"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
