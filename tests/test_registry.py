"""The registry: named breakers, one default configuration, per-name overrides, resets."""

from __future__ import annotations

import threading

import pytest

from cbctl import (
    BreakerConfig,
    CircuitBreakerError,
    CircuitBreakerRegistry,
    CircuitState,
    ConfigError,
    FakeClock,
    UnknownCircuitError,
)
from cbctl.stores import MemoryStore


class Boom(Exception):
    """The dependency failed."""


def fail() -> None:
    raise Boom("down")


def trip(registry: CircuitBreakerRegistry, name: str) -> None:
    breaker = registry.get(name)
    for _ in range(breaker.failure_threshold):
        with pytest.raises(Boom):
            breaker.call(fail)
    assert breaker.state is CircuitState.OPEN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_get_creates_once_and_returns_the_same_object(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(clock=clock)
    first = registry.get("postgresql")
    assert registry.get("postgresql") is first
    assert registry.get("redis") is not first
    assert first.name == "postgresql"
    assert "postgresql" in registry
    assert len(registry) == 2
    assert registry.names() == ["postgresql", "redis"]


def test_get_from_many_threads_creates_one_breaker(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(clock=clock)
    barrier = threading.Barrier(8)
    found = []

    def get() -> None:
        barrier.wait()
        found.append(registry.get("qdrant"))

    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(breaker) for breaker in found}) == 1


def test_without_default_config_breakers_get_the_specifications_defaults() -> None:
    registry = CircuitBreakerRegistry()
    assert registry.get("qdrant").config == BreakerConfig(5, 30.0, 2, 1)


def test_default_config_applies_to_every_breaker(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(
        default_config={"failure_threshold": 2, "timeout": 5.0, "success_threshold": 1},
        clock=clock,
    )
    for name in ("qdrant", "redis"):
        config = registry.get(name).config
        assert (config.failure_threshold, config.timeout, config.success_threshold) == (2, 5.0, 1)
    trip(registry, "qdrant")
    clock.advance(5.0)
    registry.get("qdrant").call(lambda: None)
    assert registry.get("qdrant").state is CircuitState.CLOSED


def test_per_name_overrides_change_only_their_settings(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(
        default_config={"failure_threshold": 4, "timeout": 20.0},
        overrides={"llamacpp": {"timeout": 120.0}},
        clock=clock,
    )
    assert registry.get("llamacpp").config == BreakerConfig(4, 120.0, 2, 1)
    assert registry.get("redis", failure_threshold=1).config == BreakerConfig(1, 20.0, 2, 1)
    assert registry.get("qdrant").config == BreakerConfig(4, 20.0, 2, 1)
    assert registry.config_for("llamacpp").timeout == 120.0


def test_asking_for_other_settings_on_an_existing_breaker_is_refused(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(clock=clock)
    breaker = registry.get("redis", failure_threshold=3)
    assert registry.get("redis", failure_threshold=3) is breaker
    with pytest.raises(ConfigError, match="redis"):
        registry.get("redis", failure_threshold=4)


@pytest.mark.parametrize(
    "default_config",
    [{"failure_treshold": 3}, {"timeout": 0}, {"success_threshold": -1}, {"timeout": "soon"}],
    ids=repr,
)
def test_invalid_default_config_is_refused(default_config: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        CircuitBreakerRegistry(default_config=default_config)
    assert next(iter(default_config)) in str(caught.value)


def test_unknown_setting_names_the_known_ones() -> None:
    known = "known: backoff_factor, call_timeout, failure_rate_threshold, failure_threshold"
    with pytest.raises(ConfigError, match=known):
        CircuitBreakerRegistry(default_config={"threshold": 3})
    with pytest.raises(ConfigError, match="'retries'"):
        CircuitBreakerRegistry(overrides={"redis": {"retries": 3}})


def test_get_all_stats_maps_every_name_to_its_stats(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, clock=clock)
    registry.get("redis")
    trip(registry, "qdrant")
    all_stats = registry.get_all_stats()
    assert list(all_stats) == ["qdrant", "redis"]
    assert all_stats["qdrant"]["state"] == "open"
    assert all_stats["qdrant"]["name"] == "qdrant"
    assert all_stats["qdrant"]["last_failure"] == "2026-01-01T00:00:00Z"
    assert all_stats["redis"]["state"] == "closed"
    assert CircuitBreakerRegistry().get_all_stats() == {}


def test_reset_closes_one_circuit_and_reset_all_closes_every_one(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, clock=clock)
    for name in ("qdrant", "redis", "postgresql"):
        trip(registry, name)
    registry.reset("redis")
    assert registry.get("redis").state is CircuitState.CLOSED
    assert registry.get("qdrant").state is CircuitState.OPEN
    with pytest.raises(CircuitBreakerError):
        registry.get("qdrant").call(lambda: None)
    registry.reset_all()
    assert {stats["state"] for stats in registry.get_all_stats().values()} == {"closed"}


def test_resetting_an_unknown_circuit_lists_the_known_ones(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(clock=clock)
    registry.get("redis")
    registry.get("qdrant")
    with pytest.raises(UnknownCircuitError) as caught:
        registry.reset("postgres")
    assert caught.value.name == "postgres"
    assert caught.value.known == ["qdrant", "redis"]
    assert str(caught.value) == "unknown circuit 'postgres' (known: qdrant, redis)"
    assert caught.value.exit_code == 2
    assert "postgres" not in registry
    with pytest.raises(UnknownCircuitError, match="known: none"):
        CircuitBreakerRegistry().reset("redis")


def test_registries_sharing_a_store_share_circuits(clock: FakeClock) -> None:
    store = MemoryStore(clock)
    service = CircuitBreakerRegistry(
        default_config={"failure_threshold": 1}, store=store, clock=clock
    )
    operator = CircuitBreakerRegistry(
        default_config={"failure_threshold": 1}, store=store, clock=clock
    )
    trip(service, "redis")
    assert operator.get("redis").state is CircuitState.OPEN
    operator.reset("redis")
    assert service.get("redis").state is CircuitState.CLOSED
    assert service.store is store


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "store-backed"])
def test_exclude_and_fallback_go_through_get_like_through_the_constructor(
    clock: FakeClock, shared: bool
) -> None:
    registry = CircuitBreakerRegistry(
        default_config={"failure_threshold": 1},
        store=MemoryStore(clock) if shared else None,
        clock=clock,
    )
    cache = registry.get("cache", exclude=(KeyError,), fallback=lambda error: "stale")

    def missing() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        cache.call(missing)
    assert cache.state is CircuitState.CLOSED  # excluded: neutral
    with pytest.raises(ConnectionError):
        cache.call(_refuse)
    assert cache.call(_refuse) == "stale"  # open: the fallback answers
    assert registry.get("cache") is cache


def _refuse() -> None:
    raise ConnectionError("refused")


def test_per_name_overrides_may_carry_exclude(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(
        default_config={"failure_threshold": 1},
        overrides={"cache": {"exclude": [KeyError], "timeout": 5.0}},
        clock=clock,
    )
    cache = registry.get("cache")
    with pytest.raises(KeyError):
        cache.call(lambda: {}["k"])
    assert cache.state is CircuitState.CLOSED
    assert cache.config.timeout == 5.0


def test_other_arguments_for_an_existing_breaker_are_refused(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(clock=clock)
    registry.get("cache", exclude=(KeyError,))
    assert registry.get("cache", exclude=(KeyError,)) is registry.get("cache")
    with pytest.raises(ConfigError, match="already exists with other exclude"):
        registry.get("cache", exclude=(ValueError,))


@pytest.mark.parametrize("argument", ["store", "clock"])
def test_the_registry_wide_clock_and_store_are_refused_per_breaker(argument: str) -> None:
    with pytest.raises(ConfigError, match=rf"give it to CircuitBreakerRegistry\({argument}="):
        CircuitBreakerRegistry().get("x", **{argument: None})


def test_an_unknown_argument_lists_settings_and_per_breaker_arguments() -> None:
    with pytest.raises(ConfigError, match=r"unknown breaker setting 'treshold' \(known: .*exclude"):
        CircuitBreakerRegistry().get("x", treshold=3)


def test_registry_events_merge_every_circuit_oldest_first_after_a_cursor(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, clock=clock)
    for name in ("qdrant", "postgresql"):
        with pytest.raises(Boom):
            registry.get(name).call(fail)
    registry.reset("qdrant")
    events = registry.events()
    assert [(e.circuit, e.state.value) for e in events] == [
        ("qdrant", "open"),
        ("postgresql", "open"),
        ("qdrant", "closed"),
    ]
    assert [(e.circuit, e.state.value) for e in registry.events(since=events[0].id)] == [
        ("postgresql", "open"),
        ("qdrant", "closed"),
    ]
    assert registry.events(since=events[-1].id) == []


def test_registry_events_with_a_store_are_the_stores_journal_of_its_circuits(
    clock: FakeClock,
) -> None:
    store = MemoryStore(clock)
    mine = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, store=store, clock=clock)
    theirs = CircuitBreakerRegistry(
        default_config={"failure_threshold": 1}, store=store, clock=clock
    )
    mine.get("qdrant")
    with pytest.raises(Boom):
        theirs.get("qdrant").call(fail)
    with pytest.raises(Boom):
        theirs.get("redis").call(fail)
    assert [(e.circuit, e.state.value) for e in mine.events()] == [("qdrant", "open")]
