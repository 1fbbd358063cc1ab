"""The async idiom end to end: a test-owned ASGI service under uvicorn, real PostgreSQL, breakers
in a real Redis, Qdrant as the loopback stand-in behind a fault proxy (issue 16).

`await registry.get("qdrant").call_async(_upsert)` records every outcome, and a hanging Qdrant
opens the circuit through call_timeout; the wrong form `registry.get("qdrant").call(_upsert)`
answers a TypeError at once and records nothing (it used to answer 200, with no upsert made and
a success recorded).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from cbctl.faults import FaultProxy
from cbctl.standins import QdrantStandin, StandinMode
from cbctl.stores.redis import RedisStore
from tests.servers import (
    LOOPBACK,
    PostgresServer,
    RedisServer,
    free_port,
    stop_process,
    wait_until_answering,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 50
CALL_TIMEOUT = 3.0  # generous: 50 clients at once on a shared machine must fit in it


@pytest.fixture
def qdrant() -> Iterator[tuple[QdrantStandin, FaultProxy]]:
    with QdrantStandin() as standin, FaultProxy(LOOPBACK, standin.port) as proxy:
        yield standin, proxy


Start = Callable[..., str]


@pytest.fixture
def start_pipeline(
    postgres: PostgresServer,
    redis_server: RedisServer,
    qdrant: tuple[QdrantStandin, FaultProxy],
) -> Iterator[Start]:
    started: list[subprocess.Popen[str]] = []
    with psycopg.connect(postgres.url, autocommit=True) as db:
        db.execute("CREATE TABLE IF NOT EXISTS pipeline_events (id serial PRIMARY KEY, text text)")

    def start(**settings: str) -> str:
        port = free_port()
        env = {
            **os.environ,
            "PIPELINE_PG_DSN": postgres.url,
            "PIPELINE_QDRANT_URL": f"http://{LOOPBACK}:{qdrant[1].port}",
            "PIPELINE_REDIS_URL": redis_server.url,
            "PIPELINE_CALL_TIMEOUT": str(CALL_TIMEOUT),
            "PYTHONPATH": str(ROOT),
            "PYTHONWARNINGS": "error::RuntimeWarning",
            **settings,
        }
        command = [sys.executable, "-m", "uvicorn", "tests.async_pipeline:app"]
        process = subprocess.Popen(
            [*command, "--host", LOOPBACK, "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        base = f"http://{LOOPBACK}:{port}"
        wait_until_answering(process, f"{base}/cbctl/health", "the pipeline")
        return base

    yield start
    for process in started:
        stop_process(process)


def process_many(base: str, count: int) -> list[tuple[int, dict[str, Any]]]:
    """`count` requests at once, as `count` clients."""

    async def run() -> list[tuple[int, dict[str, Any]]]:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one() -> tuple[int, dict[str, Any]]:
                answer = await client.post(f"{base}/learning/process")
                return answer.status_code, answer.json()

            return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(run())


def circuit(base: str, name: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{base}/cbctl/health").json()["circuits"][name]
    return stats


def rows(postgres: PostgresServer) -> int:
    with psycopg.connect(postgres.url, autocommit=True) as db:
        counted = db.execute("SELECT count(*) FROM pipeline_events").fetchone()
        assert counted is not None
        return int(counted[0])


def test_call_async_records_every_outcome_and_call_timeout_opens_on_a_hanging_qdrant(
    start_pipeline: Start,
    postgres: PostgresServer,
    redis_server: RedisServer,
    qdrant: tuple[QdrantStandin, FaultProxy],
) -> None:
    standin, proxy = qdrant
    base = start_pipeline()
    before = rows(postgres)
    answers = process_many(base, CLIENTS)
    assert [status for status, _ in answers] == [200] * CLIENTS, answers
    assert rows(postgres) == before + CLIENTS
    assert standin.requests_served == CLIENTS, "every upsert reached Qdrant"
    stats = circuit(base, "qdrant")
    assert (stats["state"], stats["successes"], stats["failures"]) == ("closed", CLIENTS, 0)

    proxy.set_mode("blackhole")  # Qdrant hangs: only call_timeout can tell
    started = time.monotonic()
    hung = process_many(base, 3)
    assert time.monotonic() - started < CALL_TIMEOUT * 3 + 5
    assert {answer["error"].split(":")[0] for _, answer in hung} == {"CallTimeoutError"}
    rejected = process_many(base, 5)
    assert all(answer.get("rejected") for _, answer in rejected), rejected
    stats = circuit(base, "qdrant")
    assert (stats["state"], stats["failures"]) == ("open", 3)
    with RedisStore(redis_server.url) as store:
        stored = store.load("qdrant")
    assert stored is not None
    assert stored.snapshot.state.value == "open", "the shared state says so too"
    assert circuit(base, "postgresql")["state"] == "closed"


def test_the_wrong_form_call_of_an_async_upsert_answers_type_error_and_records_nothing(
    start_pipeline: Start,
    postgres: PostgresServer,
    qdrant: tuple[QdrantStandin, FaultProxy],
) -> None:
    standin, _ = qdrant
    base = start_pipeline(PIPELINE_FORM="call")
    answers = process_many(base, 10)
    assert [status for status, _ in answers] == [503] * 10  # on main: 200, and no upsert made
    error = answers[0][1]["error"]
    assert error.startswith("TypeError: circuit 'qdrant': call() cannot await")
    assert "call_async" in error
    assert standin.requests_served == 0, "the coroutine was closed, never run"
    stats = circuit(base, "qdrant")
    assert (stats["state"], stats["successes"], stats["failures"]) == ("closed", 0, 0)
    standin.set_mode(StandinMode.DOWN)
    process_many(base, 5)
    assert circuit(base, "qdrant")["state"] == "closed", "a wrong form never opens a circuit"
