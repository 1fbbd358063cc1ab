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
from cbctl.redaction import redact_url
from cbctl.state import BreakerConfig, Outage, Permit
from cbctl.stores.redis import RedisStore
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


def test_steady_closed_successes_make_no_round_trip_within_the_local_view(
    redis_server: RedisServer, store: RedisStore
) -> None:
    breaker = CircuitBreaker("dep", store=store)
    breaker.call(lambda: None)
    writes = info(redis_server, "rdb_changes_since_last_save")

    def many() -> None:
        for _ in range(100):
            breaker.call(lambda: None)

    assert commands_during(redis_server, many) == 0
    assert info(redis_server, "rdb_changes_since_last_save") == writes


def test_without_a_local_view_each_steady_success_is_one_read_only_round_trip(
    redis_server: RedisServer, store: RedisStore
) -> None:
    breaker = CircuitBreaker("dep", store=store, view_max_age=0.0)
    breaker.call(lambda: None)
    writes = info(redis_server, "rdb_changes_since_last_save")
    assert commands_during(redis_server, lambda: breaker.call(lambda: None)) == 1
    for _ in range(20):
        breaker.call(lambda: None)
    assert info(redis_server, "rdb_changes_since_last_save") == writes


def test_a_recorded_failure_is_one_round_trip_and_ends_the_local_view(
    redis_server: RedisServer, store: RedisStore
) -> None:
    breaker = CircuitBreaker("dep", store=store, failure_threshold=100)
    breaker.call(lambda: None)

    def failing_call() -> None:
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)

    assert commands_during(redis_server, failing_call) == 1
    assert commands_during(redis_server, failing_call) == 2, "admit, then the failure"
    assert commands_during(redis_server, lambda: breaker.call(lambda: None)) == 2
    assert commands_during(redis_server, lambda: breaker.call(lambda: None)) == 0
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


def test_a_failure_write_that_reached_redis_is_not_counted_again_by_the_write_back(
    store: RedisStore,
) -> None:
    config = BreakerConfig(failure_threshold=100)
    store.record_failure("dep", config, None, "answered", op="op-1")
    store.record_failure("dep", config, None, "answer lost on the way back", op="op-2")
    outage = Outage(0, failures=3, error="down", ops=("op-2", "op-3", "op-4"))
    after = store.reconcile("dep", config, outage).after
    assert after.failure_count == 2 + 2, "op-2 reached Redis already; op-3 and op-4 did not"
    assert after.last_error == "down"


def test_the_write_back_remembers_only_the_last_64_failure_writes(store: RedisStore) -> None:
    config = BreakerConfig(failure_threshold=1000)
    for number in range(70):
        store.record_failure("dep", config, None, "down", op=f"op-{number}")
    outage = Outage(0, failures=2, ops=("op-0", "op-69"))
    assert store.reconcile("dep", config, outage).after.failure_count == 70 + 1


def test_a_circuit_written_before_per_trial_leases_keeps_its_trials(
    redis_server: RedisServer, store: RedisStore
) -> None:
    now = store.clock_now()
    redis_server.command(
        "HSET", store.key("dep"), "s", "half_open", "fc", "1", "sc", "0", "g", "3", "tr", "2",
        "td", repr(now + 30), "oa", repr(now - 40), "ca", repr(now - 5), "f", "0",
        "ft", "1", "to", "30", "st", "2", "hm", "2",
    )  # fmt: skip
    loaded = store.load("dep")
    assert loaded is not None
    assert [lease for lease, _ in loaded.snapshot.leases] == [1, 2]
    config = BreakerConfig(failure_threshold=1, half_open_max_calls=2)
    assert store.admit("dep", config).permit is None, "both old trials still hold their places"
    freed = store.release("dep", config, Permit(3, 1)).after
    assert [lease for lease, _ in freed.leases] == [2]
    assert redis_server.command("HEXISTS", store.key("dep"), "tr") == ":0"


def test_a_circuit_written_before_backoff_reads_as_backoff_off_and_backs_off_when_asked(
    redis_server: RedisServer, store: RedisStore
) -> None:
    now = store.clock_now()
    redis_server.command(
        "HSET", store.key("dep"), "s", "open", "fc", "1", "sc", "0", "g", "3", "ls", "",
        "ta", "0", "oa", repr(now - 40), "ca", repr(now - 40), "f", "0",
        "ft", "1", "to", "30", "st", "2", "hm", "1",
    )  # fmt: skip
    loaded = store.load("dep")
    assert loaded is not None
    assert loaded.config == BreakerConfig(failure_threshold=1)
    assert (loaded.snapshot.backoff, loaded.snapshot.open_duration) == (None, None)
    config = BreakerConfig(failure_threshold=1, backoff_factor=2.0)
    trial = store.admit("dep", config).permit  # 40 s past its 30 s: a trial
    assert trial is not None
    after = store.record_failure("dep", config, trial, "still down").after
    assert (after.backoff, after.open_duration) == (60.0, 60.0)
    assert store.load_all()[0].config == config
