"""`cbctl.serving`: the health app over real HTTP on a free loopback port."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator

import httpx
import pytest

from cbctl import CircuitBreakerRegistry
from cbctl.errors import UsageError
from cbctl.health import health_app
from cbctl.serving import HealthServer, running

pytestmark = pytest.mark.slow

TOKEN = "tok-7f3a9c"


@pytest.fixture
def registry() -> CircuitBreakerRegistry:
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 1})
    with pytest.raises(ZeroDivisionError):
        registry.get("redis").call(lambda: 1 / 0)
    registry.get("qdrant")
    return registry


@pytest.fixture
def server(registry: CircuitBreakerRegistry) -> Iterator[HealthServer]:
    with running(health_app(registry, TOKEN, max_age=0)) as server:
        yield server


def raw(server: HealthServer, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client library tidying them) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_the_server_binds_loopback_and_answers_health_over_http(server: HealthServer) -> None:
    assert server.server_address[0] == "127.0.0.1"
    response = httpx.get(f"{server.url}/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["circuits"]["redis"]["state"] == "open"


def test_a_reset_over_http_closes_the_circuit(
    server: HealthServer, registry: CircuitBreakerRegistry
) -> None:
    response = httpx.post(
        f"{server.url}/circuits/redis/reset", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 200
    assert registry.get("redis").state == "closed"


def test_keep_alive_serves_many_requests_on_one_connection(server: HealthServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        statuses = {client.get("/health").status_code for _ in range(20)}
        statuses.add(client.get("/metrics").status_code)
    assert statuses == {200}


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"GET /health HTTP/9.9\r\n\r\n", 505),
        (b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"POST /circuits/redis/reset HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST /circuits/redis/reset HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", 413),
        (
            b"POST /circuits/redis/reset HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            411,
        ),
        (b"GET /nowhere HTTP/1.1\r\nConnection: close\r\n\r\n", 404),
    ],
)
def test_malformed_http_gets_a_json_error_not_a_traceback(
    server: HealthServer, request_bytes: bytes, status: int
) -> None:
    code, body = raw(server, request_bytes)
    assert code == status
    assert b"Traceback" not in body
    assert "error" in json.loads(body)


def test_the_token_never_reaches_the_log(
    server: HealthServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cbctl")
    for token in (TOKEN, "wrong-guess-123"):
        httpx.post(
            f"{server.url}/circuits/redis/reset?token={token}",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert "/circuits/redis/reset" in caplog.text
    assert TOKEN not in caplog.text
    assert "wrong-guess-123" not in caplog.text


def test_a_port_in_use_is_a_clear_usage_error(server: HealthServer) -> None:
    with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        HealthServer(health_app(CircuitBreakerRegistry()), "127.0.0.1", server.port)


def test_head_on_health_answers_headers_only(server: HealthServer) -> None:
    response = httpx.head(f"{server.url}/health")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) > 0
    assert response.content == b""
