"""The training service's web page in a real browser: the system's Chromium, driven by Playwright's Python API.

The service runs in a background thread (its own trio loop, hypercorn on a free loopback port) while the test
drives the page with Playwright's sync API. Skipped, saying why, where Chromium or Playwright is missing;
`.ci/run` installs Debian's chromium.
"""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from asyncloop.service import TrainingService, serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and Path("/usr/bin/chromium").exists():
    CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium installed (apt-get install chromium; .ci/run installs it)"
)


@pytest.fixture
def service_url(tmp_path: Path) -> Iterator[str]:
    """A training service on a free loopback port, in a thread with its own trio loop; stopped afterwards."""
    urls: queue.Queue[Any] = queue.Queue()
    stop: list[Any] = []

    async def main() -> None:
        async with TrainingService(tmp_path / "jobs", max_running=2) as service:
            async with trio.open_nursery() as nursery:
                stop.append((trio.lowlevel.current_trio_token(), nursery.cancel_scope.cancel))
                urls.put(await nursery.start(serve, service, "127.0.0.1", 0))

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # report a failed start instead of hanging the test
            urls.put(exc)

    thread = threading.Thread(target=run, name="service", daemon=True)
    thread.start()
    url = urls.get(timeout=60)
    if isinstance(url, BaseException):
        raise url
    try:
        yield url
    finally:
        token, cancel = stop[0]
        token.run_sync_soon(cancel)
        thread.join(timeout=60)
        assert not thread.is_alive()


@pytest.fixture
def page(service_url: str, tmp_path: Path) -> Iterator[Any]:
    """A fresh Chromium profile with one page; every request it makes is recorded in ``page.requested``."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS,
        )
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.requested = []
            page.on("request", lambda request: page.requested.append(request.url))
            yield page
        finally:
            context.close()


def points(page: Any, job_id: str) -> int:
    return int(page.get_attribute(f'article[data-job-id="{job_id}"] canvas.curve', "data-points"))


def test_page_lists_jobs_draws_curves_submits_and_cancels(page: Any, service_url: str, tmp_path: Path) -> None:
    """The page lists a job submitted over the API with its whole loss curve; a job submitted from the page's
    form gets its live curve drawn (points appear and grow) and the page's Cancel button cancels it; a bad value
    in the form shows the service's error; the page fetches nothing from any other host."""
    with httpx.Client(base_url=service_url) as client:
        first = client.post("/api/jobs", json={"samples": 128, "epochs": 3, "name": "from the API"}).json()["job"]
    page.goto(service_url)
    card = f'article[data-job-id="{first["id"]}"]'
    page.wait_for_selector(f'{card}[data-state="completed"]')
    assert page.text_content(f"{card} .job-name") == "from the API"
    # 12 training steps and 3 validation epochs, all drawn
    page.wait_for_function(f"document.querySelector('{card} canvas').dataset.points === '15'")
    assert page.get_attribute(f"{card} canvas", "data-train-points") == "12"
    assert page.is_disabled(f"{card} button.cancel")

    # a bad value: the service's 422 message is shown, no job is made
    page.fill('input[name="lr"]', "0")
    page.click("#submit")
    page.wait_for_function("document.querySelector('#form-error').textContent !== ''")
    assert page.text_content("#form-error") == "lr must be a number in (0, 10], got 0"

    # a long job from the form: its curve is drawn live, and Cancel stops it
    page.fill('input[name="lr"]', "0.01")
    page.fill('input[name="epochs"]', "1000")
    page.fill('input[name="name"]', "from the page")
    page.click("#submit")
    second = "job-2"
    card2 = f'article[data-job-id="{second}"]'
    page.wait_for_selector(f'{card2}[data-state="running"]')
    page.wait_for_function(f"Number(document.querySelector('{card2} canvas').dataset.points) > 0")
    seen = points(page, second)
    page.wait_for_function(f"Number(document.querySelector('{card2} canvas').dataset.points) > {seen}")
    page.screenshot(path=str(tmp_path / "page.png"))
    page.click(f"{card2} button.cancel")
    page.wait_for_selector(f'{card2}[data-state="cancelled"]')
    assert page.is_disabled(f"{card2} button.cancel")
    with httpx.Client(base_url=service_url) as client:
        jobs = client.get("/api/jobs").json()["jobs"]
    assert [(j["id"], j["state"], j["spec"]["name"]) for j in jobs] == [
        (first["id"], "completed", "from the API"), (second, "cancelled", "from the page")]
    assert jobs[1]["spec"]["epochs"] == 1000 and jobs[1]["progress"]["epochs"] < 1000
    assert page.requested and all(url.startswith(service_url) for url in page.requested), page.requested
