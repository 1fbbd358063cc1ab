"""A service for `uvicorn --workers 2`: one breaker, cbctl's health app at /ops, and a
CircuitCollector in the service's own Prometheus registry at /metrics.

    WORKER_STATE=/path/circuits.db CBCTL_TOKEN=t uvicorn tests.worker_service:app --workers 2

`POST /call` makes one failing call to the dependency through the breaker `dependency`
(threshold 3): 502 when it failed, 503 when the circuit rejected it. Every answer carries the
answering worker's pid in `x-worker-pid`, so a test can tell the workers apart. Without
`WORKER_STATE` the breaker is in-process: each worker has its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from cbctl import CircuitBreakerError, CircuitBreakerRegistry
from cbctl.health import health_app
from cbctl.metrics import CircuitCollector
from cbctl.stores import open_store

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

THRESHOLD = 3
_state = os.environ.get("WORKER_STATE")
registry = CircuitBreakerRegistry(
    default_config={"failure_threshold": THRESHOLD, "timeout": 300},
    store=open_store(_state) if _state else None,
)
breaker = registry.get("dependency")
prometheus = CollectorRegistry()
prometheus.register(CircuitCollector(registry))
health = health_app(registry, token=os.environ.get("CBCTL_TOKEN") or None, max_age=0)


def _refused() -> None:
    raise ConnectionRefusedError("[Errno 111] Connection refused")


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        await health(scope, receive, send)  # lifespan
        return
    pid = str(os.getpid()).encode()

    async def tagged(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-worker-pid", pid)]
        await send(message)

    path = str(scope.get("path", "/"))
    if path.startswith("/ops/"):
        await health({**scope, "root_path": "/ops"}, receive, tagged)
        return
    if path == "/metrics":
        await _answer(tagged, 200, generate_latest(prometheus), b"text/plain; version=0.0.4")
        return
    if path == "/call":
        try:
            breaker.call(_refused)
        except CircuitBreakerError:
            status = 503
        except ConnectionRefusedError:
            status = 502
        await _answer(tagged, status, json.dumps({"status": status}).encode(), b"application/json")
        return
    await _answer(tagged, 404, b"{}", b"application/json")


async def _answer(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
