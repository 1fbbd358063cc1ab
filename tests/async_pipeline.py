"""An async service as a user writes one: the learning pipeline with awaited clients, under uvicorn.

Served by the end-to-end tests as a separate process:
    PIPELINE_PG_DSN=... PIPELINE_QDRANT_URL=... PIPELINE_REDIS_URL=... \\
        python -m uvicorn tests.async_pipeline:app --port PORT
`POST /learning/process` inserts a row into PostgreSQL (psycopg's async connection; table
`pipeline_events (id serial PRIMARY KEY, text text)`, made by the tests) and upserts
a point into Qdrant (httpx.AsyncClient), each through its breaker; the breakers' state is in
Redis. `PIPELINE_FORM=call` makes the Qdrant step use the wrong form on purpose,
`registry.get("qdrant").call(_upsert)` with `_upsert` async; the default is the right one,
`await registry.get("qdrant").call_async(_upsert)`. `PIPELINE_CALL_TIMEOUT` is the qdrant
breaker's call_timeout. cbctl's health app answers under /cbctl.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import psycopg

from cbctl import CircuitBreakerError, CircuitBreakerRegistry
from cbctl.health import health_app
from cbctl.stores.redis import RedisStore

Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class Pipeline:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.dsn = environ["PIPELINE_PG_DSN"]
        self.qdrant_url = environ["PIPELINE_QDRANT_URL"]
        self.form = environ.get("PIPELINE_FORM", "call_async")
        self.registry = CircuitBreakerRegistry(
            default_config={"failure_threshold": 3, "timeout": 300.0},
            store=RedisStore(environ["PIPELINE_REDIS_URL"]),
        )
        self.postgresql = self.registry.get("postgresql", kind="postgresql")
        self.qdrant = self.registry.get(
            "qdrant", call_timeout=float(environ.get("PIPELINE_CALL_TIMEOUT", "0.5"))
        )
        self.health = health_app(self.registry, max_age=0)
        self.http = httpx.AsyncClient(timeout=30.0, trust_env=False)

    async def _insert(self, text: str) -> int:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as db:
            cursor = await db.execute(
                "INSERT INTO pipeline_events (text) VALUES (%s) RETURNING id", (text,)
            )
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def _upsert(self, point_id: int, text: str) -> None:
        answer = await self.http.put(
            f"{self.qdrant_url}/collections/learning/points",
            json={"points": [{"id": point_id, "vector": [0.0, 1.0], "payload": {"text": text}}]},
        )
        answer.raise_for_status()

    async def process(self, text: str) -> tuple[int, dict[str, Any]]:
        circuit = "postgresql"
        try:
            point_id = await self.postgresql.call_async(self._insert, text)
            circuit = "qdrant"
            if self.form == "call":
                self.qdrant.call(self._upsert, point_id, text)  # type: ignore[arg-type]
            else:
                await self.qdrant.call_async(self._upsert, point_id, text)
        except CircuitBreakerError as rejected:
            return 503, {"error": str(rejected), "circuit": circuit, "rejected": True}
        except Exception as error:  # what the service's error handler would answer
            return 503, {"error": f"{type(error).__name__}: {error}", "circuit": circuit}
        return 200, {"id": point_id}

    async def __call__(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.health(scope, receive, send)
            return
        path = str(scope.get("path", "/"))
        if path.startswith("/cbctl/"):
            await self.health({**scope, "root_path": "/cbctl"}, receive, send)
            return
        while (await receive()).get("more_body"):
            pass
        status, answer = 404, {"error": "no such endpoint"}
        if path == "/learning/process" and scope.get("method") == "POST":
            status, answer = await self.process("hello")
        body = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


app = Pipeline(os.environ)
