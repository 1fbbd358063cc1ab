"""A service under `uvicorn --workers 2`: what in-process breakers mean, and the fix.

Each worker is its own process with its own breakers: a dependency must fail THRESHOLD times in
*each* worker before every request fails fast, /metrics shows the scraped worker's counts only,
and a reset over HTTP closes the circuit of the one worker that answered. With the breakers'
state in a shared store (here the state file), the workers count failures together, show the
same circuit, and one reset closes it for all. Requests go over fresh connections, which the
kernel hands to either worker; each answer names its worker (`x-worker-pid`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import LOOPBACK, free_port
from tests.worker_service import THRESHOLD

pytestmark = pytest.mark.slow
TOKEN = "workers-token"
ROOT = Path(__file__).resolve().parent.parent
ATTEMPTS = 400


Service = Callable[[dict[str, str]], str]


@pytest.fixture
def service() -> Iterator[Service]:
    """Start tests.worker_service under uvicorn with 2 workers; yields its base URL."""
    started: list[subprocess.Popen[bytes]] = []

    def start(environ: dict[str, str]) -> str:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.worker_service:app", "--workers", "2",
             "--host", LOOPBACK, "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env={**os.environ, "CBCTL_TOKEN": TOKEN, **environ},
            start_new_session=True,  # the workers are in its process group, stopped with it
        )  # fmt: skip
        started.append(process)
        url = f"http://{LOOPBACK}:{port}"
        deadline = time.monotonic() + 60
        while len({pid_of(get(url, "/ops/health")) for _ in range(20)} - {""}) < 2:
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("uvicorn did not start two answering workers within 60 s")
            time.sleep(0.2)
        return url

    try:
        yield start
    finally:
        for process in started:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def get(url: str, path: str) -> httpx.Response:
    try:
        return httpx.get(url + path, timeout=5)
    except httpx.TransportError:
        return httpx.Response(599)


def pid_of(response: httpx.Response) -> str:
    return response.headers.get("x-worker-pid", "")


def until_each_worker(url: str, method: str, path: str, done: Callable[[str, httpx.Response], bool]
                      ) -> dict[str, httpx.Response]:  # fmt: skip
    """Send fresh requests until `done(pid, answer)` held for two workers; their last answers."""
    finished: dict[str, httpx.Response] = {}
    for _ in range(ATTEMPTS):
        answer = httpx.request(method, url + path, timeout=5)
        pid = pid_of(answer)
        if done(pid, answer):
            finished[pid] = answer
        if len(finished) == 2:
            return finished
    pytest.skip("the kernel kept handing connections to one worker")


def circuit(answer: httpx.Response) -> dict[str, object]:
    stats: dict[str, object] = answer.json()["circuits"]["dependency"]
    return stats


def failures_counted(answer: httpx.Response) -> float:
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == "cbctl_circuit_calls_total" and sample.labels["outcome"] == "failure":
                return sample.value
    return 0.0


def reset(url: str) -> str:
    answer = httpx.post(
        f"{url}/ops/circuits/dependency/reset", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status_code == 200
    return pid_of(answer)


def test_in_process_breakers_are_per_worker_metrics_and_resets(service: Service) -> None:
    url = service({})
    failed: dict[str, int] = {}

    def opened(pid: str, answer: httpx.Response) -> bool:
        failed[pid] = failed.get(pid, 0) + (answer.status_code == 502)
        return answer.status_code == 503  # this worker's own circuit rejects now

    until_each_worker(url, "POST", "/call", opened)
    assert sorted(failed.values()) == [THRESHOLD, THRESHOLD]  # each worker counted its own
    scraped = until_each_worker(url, "GET", "/metrics", lambda pid, answer: True)
    assert sorted(failures_counted(answer) for answer in scraped.values()) == [THRESHOLD] * 2
    closed_by = reset(url)
    views = until_each_worker(url, "GET", "/ops/health", lambda pid, answer: True)
    assert circuit(views[closed_by])["state"] == "closed"
    (other,) = set(views) - {closed_by}
    assert circuit(views[other])["state"] == "open"  # the reset reached one worker only


def test_shared_state_makes_the_workers_one_circuit(service: Service, tmp_path: Path) -> None:
    url = service({"WORKER_STATE": str(tmp_path / "circuits.db")})
    answers = [httpx.post(f"{url}/call", timeout=5) for _ in range(THRESHOLD + 1)]
    assert [answer.status_code for answer in answers] == [502] * THRESHOLD + [503]
    views = until_each_worker(url, "GET", "/ops/health", lambda pid, answer: True)
    assert {circuit(answer)["state"] for answer in views.values()} == {"open"}
    reset(url)
    views = until_each_worker(url, "GET", "/ops/health", lambda pid, answer: True)
    assert {circuit(answer)["state"] for answer in views.values()} == {"closed"}
