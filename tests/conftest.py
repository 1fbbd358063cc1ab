"""Shared fixtures: real PostgreSQL and Redis servers, and a socket that never answers.

PostgreSQL: one cluster per test session (initdb is the slow part). The `postgres` fixture
hands out that cluster running; a test may stop it (outage/recovery tests) and the fixture
starts it again afterwards, on the same port, so the next test finds it healthy.
Redis starts in milliseconds, so every test that asks gets its own server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import PostgresServer, RedisServer, SilentServer, silent_server


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresServer]:
    """The session's PostgreSQL cluster, started once and deleted at the end."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres(postgres_cluster: PostgresServer) -> Iterator[PostgresServer]:
    """The session's PostgreSQL, running at the start of the test and again after it."""
    postgres_cluster.start()
    yield postgres_cluster
    postgres_cluster.start()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh Redis (no password) for this test only."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    """A loopback port that accepts connections and never answers."""
    with silent_server() as server:
        yield server
