"""Breakers inside a real asyncio service: shared state must never stall the event loop.

The service answers requests by querying a real PostgreSQL (psycopg's async connection) through
a breaker whose state lives in a real Redis, or in the state file. While the store is stopped
(SIGSTOP), black-holed (fault proxy) or restarted, 200 concurrent requests keep being served:
each costs at most the store timeout, and a sleeper task measures the loop's lag. The bound on
the lag is generous (the machine is shared); a store call on the loop would cost a full store
timeout (1 s), far above it. The tight figure is in benchmarks/bench_async.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cbctl import CircuitBreakerRegistry
from cbctl.faults import AsyncFaultProxy
from cbctl.state import CircuitStore
from cbctl.stores.redis import RedisStore
from cbctl.stores.sqlite import SqliteStore
from tests.servers import PostgresServer, RedisServer, free_port

pytestmark = pytest.mark.slow

CONCURRENT = 200
STORE_TIMEOUT = 1.0
LAG_BOUND = 0.5  # generous: a blocking store call would cost STORE_TIMEOUT on its own
CALL_BOUND = STORE_TIMEOUT + 1.5  # the store timeout, plus a loaded machine's scheduling


class Service:
    """A small asyncio service: GET /rows answers from PostgreSQL, protected by breakers in a
    shared store. `view_max_age=0` makes every call ask the store, so the store's outage is on
    every request's path (the steady path would not touch it at all)."""

    def __init__(self, store: CircuitStore, connection: psycopg.AsyncConnection[Any]) -> None:
        self.registry = CircuitBreakerRegistry(
            default_config={"failure_threshold": 1000, "timeout": 30.0}, store=store
        )
        self.database = self.registry.get("postgresql", kind="postgresql", view_max_age=0.0)
        self.connection = connection
        self.replica_breaker = self.registry.get(
            "replica", kind="postgresql", view_max_age=0.0, failure_threshold=10_000
        )

    async def rows(self) -> int:
        async def query() -> int:
            cursor = await self.connection.execute("select 1")
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0])

        return await self.database.call_async(query)

    async def replica(self, url: str) -> None:
        """A read from a replica that is down: a refused connection, a failure of its kind."""

        async def query() -> None:
            connection = await psycopg.AsyncConnection.connect(url, connect_timeout=2)
            await connection.close()

        await self.replica_breaker.call_async(query)


class LagMeter:
    """Sleeps 10 ms in a loop and records how late each wake-up was."""

    def __init__(self) -> None:
        self.overshoots: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            self.overshoots.append(time.perf_counter() - start - 0.01)

    def __enter__(self) -> LagMeter:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def worst(self) -> float:
        return max(self.overshoots, default=0.0)


async def burst(service: Service) -> list[float]:
    """CONCURRENT requests at once; the duration of each (all must be answered)."""

    async def one() -> float:
        start = time.perf_counter()
        assert await service.rows() == 1
        return time.perf_counter() - start

    return list(await asyncio.gather(*(one() for _ in range(CONCURRENT))))


async def degraded(service: Service) -> str | None:
    """stats reads the store (blocking); off the loop, as a service's /health would."""
    stats = await asyncio.to_thread(lambda: service.database.stats)
    value: str | None = stats["degraded"]
    return value


async def served_through(
    service: Service, outage: Callable[[], Awaitable[None]], recover: Callable[[], Awaitable[None]]
) -> tuple[list[float], float]:
    """Requests before, during and after an outage of the store; durations during it, and the
    worst loop lag over the whole run."""
    with LagMeter() as lag:
        await burst(service)
        await outage()
        during = await burst(service)
        during += await burst(service)
        await recover()
        await asyncio.sleep(1.1)  # the store's retry interval: it is asked again after this
        await burst(service)
        await asyncio.sleep(0.05)
    return during, lag.worst


@asynccontextmanager
async def connected(postgres: PostgresServer) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    connection = await psycopg.AsyncConnection.connect(postgres.url, autocommit=True)
    try:
        yield connection
    finally:
        await connection.close()


def test_a_stopped_redis_store_neither_stalls_the_loop_nor_any_request_beyond_its_timeout(
    postgres: PostgresServer, redis_server: RedisServer
) -> None:
    process = redis_server._process
    assert process is not None

    async def scenario() -> tuple[list[float], float, str | None, str | None]:
        store = RedisStore(redis_server.url, socket_timeout=STORE_TIMEOUT)
        async with connected(postgres) as connection:
            service = Service(store, connection)
            seen: list[str | None] = []

            async def stop() -> None:
                os.kill(process.pid, signal.SIGSTOP)

            async def resume() -> None:
                seen.append(service.database._degraded)
                os.kill(process.pid, signal.SIGCONT)

            try:
                during, worst = await served_through(service, stop, resume)
            finally:
                os.kill(process.pid, signal.SIGCONT)
            after = await degraded(service)
            await store.aclose()
        store.close()
        return during, worst, seen[0], after

    during, worst, while_stopped, after = asyncio.run(scenario())
    assert while_stopped is not None
    assert "unavailable" in while_stopped
    assert after is None, "the store is used again once it answers"
    assert max(during) <= CALL_BOUND, f"a request took {max(during):.2f} s"
    assert worst <= LAG_BOUND, f"the event loop stalled {worst * 1000:.0f} ms"


def test_a_black_holed_redis_store_costs_each_request_at_most_the_store_timeout(
    postgres: PostgresServer, redis_server: RedisServer
) -> None:
    async def scenario() -> tuple[list[float], float, str | None, str | None]:
        async with AsyncFaultProxy(redis_server.host, redis_server.port) as proxy:
            store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=STORE_TIMEOUT)
            async with connected(postgres) as connection:
                service = Service(store, connection)
                seen: list[str | None] = []

                async def black_hole() -> None:
                    await proxy.set_mode("blackhole")

                async def restore() -> None:
                    seen.append(service.database._degraded)
                    await proxy.set_mode("up")

                during, worst = await served_through(service, black_hole, restore)
                after = await degraded(service)
                await store.aclose()
            store.close()
        return during, worst, seen[0], after

    during, worst, while_black_holed, after = asyncio.run(scenario())
    assert while_black_holed is not None
    assert after is None
    assert max(during) <= CALL_BOUND, f"a request took {max(during):.2f} s"
    assert worst <= LAG_BOUND, f"the event loop stalled {worst * 1000:.0f} ms"


def test_failures_during_a_redis_restart_reach_the_store_once_it_is_back(
    redis_server: RedisServer,
) -> None:
    """A dependency failing while Redis is down (refused connections): the breaker counts the
    failures in-process, and writes them back when Redis is started again. The restarted Redis
    lost the failure recorded before it stopped (it keeps no dump): 200 written back + 1."""

    async def scenario() -> tuple[float, int, str | None]:
        store = RedisStore(redis_server.url, socket_timeout=STORE_TIMEOUT)
        registry = CircuitBreakerRegistry(store=store)
        breaker = registry.get("qdrant", failure_threshold=10_000, view_max_age=0.0)

        async def refused() -> None:
            raise ConnectionRefusedError("qdrant down")

        async def one() -> None:
            with pytest.raises(ConnectionRefusedError):
                await breaker.call_async(refused)

        with LagMeter() as lag:
            await one()
            await asyncio.to_thread(redis_server.stop)
            await asyncio.gather(*(one() for _ in range(CONCURRENT)))
            await asyncio.to_thread(redis_server.start)
            await asyncio.sleep(1.1)
            await one()
        stored = await asyncio.to_thread(store.load, "qdrant")
        assert stored is not None
        await store.aclose()
        store.close()
        return lag.worst, stored.snapshot.failure_count, breaker._degraded

    worst, kept, degraded_after = asyncio.run(scenario())
    assert degraded_after is None
    assert kept == CONCURRENT + 1, "no failure lost or counted twice across the restart"
    assert worst <= LAG_BOUND + 0.5, f"the event loop stalled {worst * 1000:.0f} ms"


def test_a_state_file_locked_by_another_writer_does_not_stall_the_loop(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Another process holds the state file's write lock while a replica is down: recording its
    failures waits for the lock (up to the busy timeout) in a worker thread, while the loop goes
    on serving; the failures are written back once the lock is free."""
    path = tmp_path / "circuits.db"
    down = f"postgresql://127.0.0.1:{free_port()}/postgres"

    async def scenario() -> tuple[list[float], float, int]:
        store = SqliteStore(path, busy_timeout=STORE_TIMEOUT)
        async with connected(postgres) as connection:
            service = Service(store, connection)

            async def failing() -> float:
                start = time.perf_counter()
                with pytest.raises(psycopg.OperationalError):
                    await service.replica(down)
                return time.perf_counter() - start

            await burst(service)
            other = sqlite3.connect(path, isolation_level=None)
            with LagMeter() as lag:
                other.execute("BEGIN IMMEDIATE")
                during = list(await asyncio.gather(*(failing() for _ in range(CONCURRENT))))
                during += await burst(service)
                other.execute("ROLLBACK")
                await asyncio.sleep(1.1)
                await failing()
            other.close()
        stored = await asyncio.to_thread(store.load, "replica")
        store.close()
        assert stored is not None
        return during, lag.worst, stored.snapshot.failure_count

    during, worst, kept = asyncio.run(scenario())
    assert kept == CONCURRENT + 1, "every failure reached the state file once it was free"
    assert max(during) <= CALL_BOUND * 2, f"a request took {max(during):.2f} s"
    assert worst <= LAG_BOUND, f"the event loop stalled {worst * 1000:.0f} ms"
