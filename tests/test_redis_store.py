"""Redis as the shared state: namespaced keys, measured round trips, faults and degradation.

A real redis-server on a free loopback port; round trips are counted by the server itself
(MONITOR, script internals excluded), writes by `rdb_changes_since_last_save`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from cbctl import CircuitBreaker, CircuitBreakerError, StoreUnavailableError
from cbctl.state import BreakerConfig
from cbctl.stores.redis import RedisStore, redact_url
from tests.redis_counting import count_round_trips
from tests.servers import RedisServer, SilentServer, free_port

pytestmark = pytest.mark.slow

PASSWORD = "s3cret-pa55"


def info(server: RedisServer, field: str) -> int:
    """One field of the server's INFO, read on a connection of its own."""
    client = redis.Redis(host=server.host, port=server.port, password=server.password)
    try:
        return int(client.info("all")[field])
    finally:
        client.close()


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisStore]:
    opened = RedisStore(redis_server.url)
    yield opened
    opened.close()


def commands_during(server: RedisServer, action: Callable[[], object]) -> int:
    return count_round_trips(server.host, server.port, action)


def test_each_circuit_is_one_namespaced_hash(redis_server: RedisServer) -> None:
    first = RedisStore(redis_server.url, prefix="fleet-a:")
    second = RedisStore(redis_server.url, prefix="fleet-b:")
    first.record_failure("qdrant", BreakerConfig(failure_threshold=1), None, "down")
    assert redis_server.command("TYPE", "fleet-a:circuit:qdrant") == "+hash"
    assert second.load("qdrant") is None
    assert [c.name for c in first.load_all()] == ["qdrant"]
    first.close()
    second.close()


def test_steady_closed_admit_is_one_round_trip_and_writes_nothing(
    redis_server: RedisServer, store: RedisStore
) -> None:
    breaker = CircuitBreaker("dep", store=store)
    breaker.call(lambda: None)
    writes = info(redis_server, "rdb_changes_since_last_save")
    assert commands_during(redis_server, lambda: breaker.call(lambda: None)) == 1
    for _ in range(20):
        breaker.call(lambda: None)
    assert info(redis_server, "rdb_changes_since_last_save") == writes


def test_a_recorded_failure_is_one_round_trip_after_the_admit(
    redis_server: RedisServer, store: RedisStore
) -> None:
    breaker = CircuitBreaker("dep", store=store, failure_threshold=100)
    breaker.call(lambda: None)

    def failing_call() -> None:
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)

    assert commands_during(redis_server, failing_call) == 2
    assert (
        commands_during(
            redis_server, lambda: store.record_failure("dep", breaker.config, None, "x")
        )
        == 1
    )


def test_unreachable_redis_is_unavailable_and_the_password_is_redacted() -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    store = RedisStore(url)
    with pytest.raises(StoreUnavailableError) as error:
        store.admit("dep", BreakerConfig())
    assert PASSWORD not in str(error.value)
    assert "redis://:***@127.0.0.1" in str(error.value)


def test_wrong_password_is_unavailable_and_never_shown() -> None:
    with RedisServer(password=PASSWORD) as server:
        wrong = "not-the-" + PASSWORD
        store = RedisStore(server.url_with_password(wrong))
        with pytest.raises(StoreUnavailableError) as error:
            store.load_all()
        assert wrong not in str(error.value)
        assert PASSWORD not in str(error.value)
        assert "unavailable" in str(error.value)
        store.close()
        right = RedisStore(server.url)
        assert right.load_all() == []
        right.close()


def test_a_silent_redis_cannot_hang_a_call(silent: SilentServer) -> None:
    store = RedisStore(silent.url("redis"), socket_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        store.admit("dep", BreakerConfig())
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        store.admit("dep", BreakerConfig())
    assert time.monotonic() - started < 0.05, "fails fast within retry_interval"


def test_redis_down_mid_run_degrades_to_in_process_protection_and_recovers(
    redis_server: RedisServer,
) -> None:
    """The circuit opened in-process while Redis was down is written back when it returns
    (here to an empty Redis: a restart without persistence), with the time it has left."""
    store = RedisStore(redis_server.url, retry_interval=0.05)
    breaker = CircuitBreaker("dep", store=store, failure_threshold=2, timeout=60.0)
    assert breaker.call(lambda: "up") == "up"
    assert breaker.stats["degraded"] is None
    redis_server.stop()
    assert breaker.call(lambda: "still protected") == "still protected"
    degraded = breaker.stats["degraded"]
    assert degraded is not None
    assert "unavailable" in degraded
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    with pytest.raises(CircuitBreakerError):
        breaker.call(lambda: "not called")
    redis_server.start()
    time.sleep(0.06)
    with pytest.raises(CircuitBreakerError) as rejected:
        breaker.call(lambda: "not called either")
    assert breaker.stats["degraded"] is None
    assert rejected.value.retry_after == pytest.approx(60.0, abs=5.0)
    other = RedisStore(redis_server.url)
    stored = other.load("dep")
    assert stored is not None
    assert (stored.snapshot.state, stored.snapshot.failure_count) == ("open", 2)
    other.reset("dep")
    assert breaker.call(lambda: "shared again") == "shared again"
    other.close()
    store.close()


def test_redact_url_hides_userinfo_and_query_passwords() -> None:
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("rediss://:pw@h/0?password=pw2&db=1") == "rediss://:***@h/0?password=***&db=1"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
