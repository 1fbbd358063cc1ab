"""End to end: a service process with breakers and the mounted health app; cbctl against it.

Also `cbctl serve` as a real process over a real state file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cbctl import CircuitBreakerRegistry
from cbctl.stores import open_store

pytestmark = pytest.mark.slow

TOKEN = "e2e-token-93b1"
ROOT = Path(__file__).resolve().parent.parent
CBCTL = [sys.executable, "-c", "from cbctl.cli import main; main()"]


def _started(process: subprocess.Popen[str], marker: str) -> str:
    """The first line the process prints that starts with `marker` (bounded by the test timeout)."""
    stream = process.stdout if marker == "listening" else process.stderr
    assert stream is not None
    line = stream.readline()
    if not line.startswith(marker):
        process.kill()
        raise AssertionError(f"process did not start: {line!r}")
    return line


def _stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@pytest.fixture
def service() -> Iterator[str]:
    """The service's base URL where the health app is mounted."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "service_process.py"), TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        port = int(_started(process, "listening").split()[1])
        yield f"http://127.0.0.1:{port}/ops"
    finally:
        _stop(process)
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()
        process.stderr.close()


def cbctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CBCTL, *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )


def rows(output: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in output.splitlines() if line.strip()}


def test_watch_once_shows_the_services_circuits(service: str) -> None:
    result = cbctl("watch", "--once", "--url", service)
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table["redis"][1] == "open"
    assert table["redis"][3] == "2/2"
    assert "ago: ConnectionRefusedError: [Errno 111] Connection refused" in " ".join(table["redis"])
    assert table["postgresql"][1] == "closed"
    assert table["postgresql"][3] == "1/2"
    assert table["qdrant"][1] == "closed"
    assert result.stdout.splitlines()[-1].endswith(f" in {service}/health")  # named once


def test_reset_with_the_token_closes_the_services_circuit(service: str) -> None:
    result = cbctl("reset", "redis", "--url", service, env={"CBCTL_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert rows(result.stdout)["redis"][1:5] == ["open", "failures", "2/2", "closed"]
    health = httpx.get(f"{service}/health").json()
    assert health["circuits"]["redis"]["state"] == "closed"
    assert health["status"] == "ok"


def test_reset_of_an_unknown_circuit_of_the_service_is_exit_2(service: str) -> None:
    result = cbctl("reset", "llamacpp", "--url", service, "--token", TOKEN)
    assert result.returncode == 2
    assert result.stderr == "cbctl: unknown circuit 'llamacpp' (known: postgresql, qdrant, redis)\n"


def test_the_services_metrics_parse_with_prometheus_clients_parser(service: str) -> None:
    text = httpx.get(f"{service}/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    state = {
        (s.labels["circuit"], s.labels["state"]): s.value
        for s in families["cbctl_circuit_state"].samples
    }
    assert state[("redis", "open")] == 1
    assert state[("redis", "closed")] == 0
    calls = {
        (s.labels["circuit"], s.labels["outcome"]): s.value
        for s in families["cbctl_circuit_calls"].samples
        if s.name == "cbctl_circuit_calls_total"
    }
    assert calls[("redis", "failure")] == 2
    assert calls[("qdrant", "success")] == 1
    assert "cbctl_circuit_transitions" in families
    failures = {
        s.labels["circuit"]: s.value for s in families["cbctl_circuit_consecutive_failures"].samples
    }
    assert failures["postgresql"] == 1


@pytest.fixture
def state_file(tmp_path: Path) -> str:
    path = str(tmp_path / "circuits.db")
    store = open_store(path)
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, store=store)
    with pytest.raises(ConnectionError):
        registry.get("redis").call(_refused)
    registry.get("qdrant").call(lambda: None)
    store.close()
    return path


def _refused() -> None:
    raise ConnectionError("refused")


def test_cbctl_serve_serves_the_state_and_resets_it_then_stops_on_ctrl_c(state_file: str) -> None:
    process = subprocess.Popen(
        [*CBCTL, "--state", state_file, "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CBCTL_TOKEN": TOKEN},
    )
    try:
        banner = _started(process, "cbctl: serving")
        found = re.search(r" on (http://127\.0\.0\.1:\d+)", banner)
        assert found, banner
        base = found.group(1)
        assert TOKEN not in banner
        health = httpx.get(f"{base}/health").json()
        assert health["status"] == "degraded"
        assert health["circuits"]["redis"]["state"] == "open"
        response = httpx.post(
            f"{base}/circuits/redis/reset", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 200
        status = cbctl("--state", state_file, "status", "--json")
        assert {c["name"]: c["state"] for c in json.loads(status.stdout)} == {
            "qdrant": "closed",
            "redis": "closed",
        }
    finally:
        code = _stop(process)
        assert process.stdout is not None
        assert process.stderr is not None
        rest = process.stderr.read()
        process.stdout.close()
        process.stderr.close()
    assert code == 0
    assert "Traceback" not in rest
    assert TOKEN not in rest
    access = [line.split()[1:] for line in rest.splitlines() if " GET /health " in line]
    assert access == [["127.0.0.1", "GET", "/health", "200"]]
    assert re.search(r" 127\.0\.0\.1 POST /circuits/redis/reset 200$", rest, re.MULTILINE)
    assert rest.rstrip().endswith(f"cbctl: stopped serving on {base}")
