"""The original specification's learning pipeline as a small ASGI service protected by cbctl.

    LEARNING_PG_DSN=postgresql://app@127.0.0.1:15432/app \\
    LEARNING_QDRANT_URL=http://127.0.0.1:6333 \\
        python examples/learning_service.py --port 8000

(or `uvicorn examples.learning_service:app --port 8000`). Endpoints:

- `POST /learning/process` with `{"text": "..."}` inserts a row into PostgreSQL (table
  `learning_events`) and upserts a point into Qdrant, each through its breaker of one registry
  (`postgresql`, `qdrant`): 200 `{"id": N}`; 503 `{"error", "circuit", "rejected"}` when a
  dependency failed or its circuit is open (then the dependency was not contacted).
- `GET /status`: 200, touches no dependency (a bystander request for `simulate --service`).
- `/cbctl/...`: cbctl's health app: `/cbctl/health`, `/cbctl/events`, `/cbctl/metrics`.

Settings (environment): `LEARNING_FAILURE_THRESHOLD` (5), `LEARNING_RECOVERY_TIMEOUT` (30 s),
`LEARNING_CALL_TIMEOUT` (2 s), `CBCTL_TOKEN` (enables resets over HTTP). `LEARNING_VARIANT`
makes it misbehave on purpose, to show that `cbctl simulate outage --service` can say no:
`bypass` calls PostgreSQL anyway when its circuit is open (a
"fallback" that defeats the breaker), `never-open` holds the circuit closed.
Needs uvicorn (`pip install uvicorn`), which cbctl itself does not depend on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import psycopg

from cbctl import CircuitBreakerError, CircuitBreakerRegistry
from cbctl.health import health_app

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]

MOUNT = "/cbctl"


class LearningService:
    """The pipeline: one registry, two breakers, one ASGI entry point."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.dsn = environ.get("LEARNING_PG_DSN", "postgresql://localhost:5432/postgres")
        self.qdrant_url = environ.get("LEARNING_QDRANT_URL", "http://localhost:6333").rstrip("/")
        self.call_timeout = float(environ.get("LEARNING_CALL_TIMEOUT", "2"))
        self.variant = environ.get("LEARNING_VARIANT", "")
        self.registry = CircuitBreakerRegistry(
            default_config={
                "failure_threshold": int(environ.get("LEARNING_FAILURE_THRESHOLD", "5")),
                "timeout": float(environ.get("LEARNING_RECOVERY_TIMEOUT", "30")),
                "success_threshold": 2,
            }
        )
        self.postgresql = self.registry.get("postgresql")
        self.qdrant = self.registry.get("qdrant")
        if self.variant == "never-open":
            self.postgresql.force_closed()
        self.health = health_app(self.registry, token=environ.get("CBCTL_TOKEN") or None)
        self.http = httpx.Client(timeout=self.call_timeout, trust_env=False)
        self._table_ready = False
        self._table_lock = threading.Lock()

    # -- the pipeline ------------------------------------------------------------------------

    def _insert(self, text: str) -> int:
        timeout = max(1, round(self.call_timeout))
        with psycopg.connect(self.dsn, connect_timeout=timeout, autocommit=True) as connection:
            if not self._table_ready:
                with self._table_lock:
                    connection.execute(
                        "CREATE TABLE IF NOT EXISTS learning_events (id serial PRIMARY KEY, "
                        "text text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
                    )
                    self._table_ready = True
            row = connection.execute(
                "INSERT INTO learning_events (text) VALUES (%s) RETURNING id", (text,)
            ).fetchone()
        assert row is not None
        return int(row[0])

    def _upsert(self, point_id: int, text: str) -> None:
        answer = self.http.put(
            f"{self.qdrant_url}/collections/learning/points",
            params={"wait": "true"},
            json={"points": [{"id": point_id, "vector": [0.0, 1.0], "payload": {"text": text}}]},
        )
        answer.raise_for_status()

    def process(self, text: str) -> tuple[int, dict[str, Any]]:
        """One unit of work: PostgreSQL, then Qdrant; (status, JSON body)."""
        circuit = "postgresql"
        try:
            try:
                point_id = self.postgresql.call(self._insert, text)
            except CircuitBreakerError:
                if self.variant != "bypass":
                    raise
                point_id = self._insert(text)  # the bug on purpose: a "fallback" that calls it
            circuit = "qdrant"
            self.qdrant.call(self._upsert, point_id, text)
        except CircuitBreakerError as rejected:
            return 503, {"error": str(rejected), "circuit": circuit, "rejected": True}
        except (psycopg.Error, httpx.HTTPError, OSError) as error:
            summary = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return 503, {"error": summary or type(error).__name__, "circuit": circuit}
        return 200, {"id": point_id}

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.health(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path = str(scope.get("path", "/"))
        if path == MOUNT or path.startswith(f"{MOUNT}/"):
            root = f"{scope.get('root_path', '')}{MOUNT}"
            await self.health({**scope, "root_path": root}, receive, send)
            return
        body = await _body(receive)
        method = scope.get("method", "GET")
        if path == "/learning/process" and method == "POST":
            try:
                payload = json.loads(body or b"{}")
                text = str(payload.get("text", "")) if isinstance(payload, dict) else ""
            except ValueError:
                await _answer(send, 400, {"error": "the body must be JSON"})
                return
            status, answer = await asyncio.to_thread(self.process, text or "hello")
            await _answer(send, status, answer)
        elif path == "/status" and method == "GET":
            await _answer(send, 200, {"status": "ok", "time": time.time()})
        else:
            await _answer(send, 404, {"error": f"no such endpoint {path[:100]!r}"})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Send, status: int, payload: Mapping[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = LearningService(os.environ)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="The learning pipeline behind cbctl breakers.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    options = parser.parse_args()
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
