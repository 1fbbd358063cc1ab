"""cbctl.metrics: the circuits in a service's own Prometheus registry, and call durations."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cbctl import CircuitBreaker, CircuitBreakerError, CircuitBreakerRegistry, FakeClock
from cbctl.health import health_app
from cbctl.metrics import CircuitCollector
from cbctl.stores import MemoryStore
from cbctl.stores.redis import RedisStore
from tests.servers import RedisServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def service_registry(clock: FakeClock) -> CircuitBreakerRegistry:
    return CircuitBreakerRegistry(
        default_config={"failure_threshold": 2, "timeout": 30.0}, clock=clock
    )


def collected(source: Any) -> CollectorRegistry:
    prometheus = CollectorRegistry()
    prometheus.register(CircuitCollector(source))
    return prometheus


def slow(clock: FakeClock, seconds: float, error: Exception | None = None) -> Any:
    def call() -> str:
        clock.advance(seconds)
        if error is not None:
            raise error
        return "done"

    return call


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)


# -- in the service's own registry ----------------------------------------------------------------


def test_the_collector_serves_the_circuits_from_the_services_own_registry() -> None:
    registry = service_registry(FakeClock())
    registry.get("qdrant").call(lambda: None)
    trip(registry.get("redis"))
    samples = scrape(collected(registry))
    assert value(samples, "cbctl_circuit_state", circuit="redis", state="open") == 1
    assert value(samples, "cbctl_circuit_state", circuit="qdrant", state="closed") == 1
    assert value(samples, "cbctl_circuit_calls_total", circuit="qdrant", outcome="success") == 1
    assert value(samples, "cbctl_circuit_calls_total", circuit="redis", outcome="failure") == 2
    assert value(samples, "cbctl_circuit_consecutive_failures", circuit="redis") == 2
    assert value(samples, "cbctl_circuit_store_degraded", circuit="redis") == 0


def test_transitions_made_before_the_collector_existed_are_counted() -> None:
    registry = service_registry(FakeClock())
    breaker = registry.get("postgresql")
    trip(breaker)
    breaker.reset()
    prometheus = collected(registry)  # the service registers its collector late
    assert value(scrape(prometheus), "cbctl_circuit_transitions_total", circuit="postgresql") == 2
    trip(breaker)
    assert value(scrape(prometheus), "cbctl_circuit_transitions_total", circuit="postgresql") == 3


def test_registering_the_collector_reads_no_circuit() -> None:
    class Counting(CircuitBreakerRegistry):
        reads = 0

        def get_all_stats(self) -> dict[str, dict[str, Any]]:
            Counting.reads += 1
            return super().get_all_stats()

    registry = Counting()
    registry.get("qdrant")
    prometheus = CollectorRegistry(auto_describe=True)
    prometheus.register(CircuitCollector(registry))
    assert Counting.reads == 0
    scrape(prometheus)
    assert Counting.reads == 1


def test_a_second_collector_of_the_same_names_is_refused_by_prometheus() -> None:
    registry = service_registry(FakeClock())
    prometheus = collected(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        prometheus.register(CircuitCollector(registry))


def test_under_a_store_the_collector_shows_the_shared_state_without_process_figures() -> None:
    store = MemoryStore(FakeClock())
    writer = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, store=store)
    trip(writer.get("postgresql"))
    samples = scrape(collected(store))
    assert value(samples, "cbctl_circuit_state", circuit="postgresql", state="open") == 1
    assert value(samples, "cbctl_circuit_transitions_total", circuit="postgresql") == 1
    names = {name for name, _ in samples}
    assert not names & {"cbctl_circuit_calls_total", "cbctl_circuit_store_degraded"}
    assert not any(name.startswith("cbctl_circuit_call_duration") for name in names)


# -- call durations -------------------------------------------------------------------------------


def test_call_durations_fill_the_histogram_by_circuit_and_outcome() -> None:
    clock = FakeClock()
    registry = service_registry(clock)
    prometheus = collected(registry)
    qdrant = registry.get("qdrant", exclude=(KeyError,))  # made after the collector: timed too
    qdrant.call(slow(clock, 0.03))
    qdrant.call(slow(clock, 0.2))
    with pytest.raises(OSError, match="refused"):
        qdrant.call(slow(clock, 1.5, OSError("refused")))
    with pytest.raises(KeyError):
        qdrant.call(slow(clock, 0.004, KeyError("no such point")))
    samples = scrape(prometheus)
    name = "cbctl_circuit_call_duration_seconds"

    def bucket(outcome: str, le: str) -> float | None:
        return value(samples, f"{name}_bucket", circuit="qdrant", outcome=outcome, le=le)

    assert (bucket("success", "0.025"), bucket("success", "0.05")) == (0, 1)
    assert (bucket("success", "0.25"), bucket("success", "+Inf")) == (2, 2)
    assert value(samples, f"{name}_sum", circuit="qdrant", outcome="success") == pytest.approx(0.23)
    assert (bucket("failure", "1.0"), bucket("failure", "2.5")) == (0, 1)
    assert bucket("neutral", "0.005") == 1
    assert value(samples, f"{name}_count", circuit="qdrant", outcome="neutral") == 1


def test_every_way_in_is_timed_and_rejections_are_not() -> None:
    clock = FakeClock()
    registry = service_registry(clock)
    durations: list[tuple[str, float, str]] = []
    registry.add_call_observer(lambda *timed: durations.append(timed))
    breaker = registry.get("redis")
    breaker.call(slow(clock, 0.1))
    breaker(slow(clock, 0.2))()
    with breaker:
        clock.advance(0.3)

    async def asynchronous() -> None:
        async def call() -> None:
            clock.advance(0.4)

        await breaker.call_async(call)
        async with breaker:
            clock.advance(0.5)

    asyncio.run(asynchronous())
    assert [(c, round(s, 3), o) for c, s, o in durations] == [
        ("redis", 0.1, "success"),
        ("redis", 0.2, "success"),
        ("redis", 0.3, "success"),
        ("redis", 0.4, "success"),
        ("redis", 0.5, "success"),
    ]
    durations.clear()
    trip(breaker)
    durations.clear()
    with pytest.raises(CircuitBreakerError):
        breaker.call(slow(clock, 1.0))
    assert durations == []


def test_a_cancelled_call_is_not_timed() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("llamacpp", clock=clock)
    durations: list[tuple[str, float, str]] = []
    breaker.add_call_observer(lambda *timed: durations.append(timed))

    async def hangs() -> None:
        await asyncio.sleep(3600)

    async def go() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(breaker.call_async(hangs), 0)

    asyncio.run(go())
    assert durations == []


class CountingClock(FakeClock):
    """A fake clock that counts how often the breaker reads its monotonic time."""

    reads = 0

    def monotonic(self) -> float:
        self.reads += 1
        return super().monotonic()


def test_a_breaker_without_observers_never_reads_the_clock_on_a_steady_success() -> None:
    clock = CountingClock()
    breaker = CircuitBreaker("qdrant", clock=clock)
    clock.reads = 0
    breaker.call(lambda: None)
    breaker(lambda: None)()
    with breaker:
        pass
    assert clock.reads == 0
    observer = breaker.add_call_observer
    observer(lambda *timed: None)
    breaker.call(lambda: None)
    assert clock.reads == 2  # the one measurement: before and after the call


def test_removing_the_last_observer_restores_the_untimed_path() -> None:
    clock = CountingClock()
    registry = CircuitBreakerRegistry(clock=clock)
    breaker = registry.get("redis")

    def observer(*timed: object) -> None:
        pass

    registry.add_call_observer(observer)
    registry.remove_call_observer(observer)
    clock.reads = 0
    breaker.call(lambda: None)
    assert clock.reads == 0


def test_an_observer_that_raises_is_logged_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker = CircuitBreaker("postgresql", clock=FakeClock())

    def broken(*timed: object) -> None:
        raise RuntimeError("observer bug")

    breaker.add_call_observer(broken)
    with caplog.at_level(logging.ERROR, logger="cbctl.breaker"):
        assert breaker.call(lambda: 42) == 42
    assert "call observer" in caplog.text
    assert breaker.stats["successes"] == 1


def test_an_async_observer_is_refused_at_registration() -> None:
    async def observer(*timed: object) -> None:
        pass

    registry = CircuitBreakerRegistry()
    with pytest.raises(TypeError, match="plain \\(sync\\) callable"):
        registry.add_call_observer(observer)
    with pytest.raises(TypeError, match="plain \\(sync\\) callable"):
        CircuitBreaker("qdrant").add_call_observer(observer)
    registry.get("qdrant").call(lambda: None)  # nothing was half-registered


def test_the_health_apps_metrics_time_calls_from_its_first_scrape() -> None:
    clock = FakeClock()
    registry = service_registry(clock)
    app = health_app(registry)
    breaker = registry.get("qdrant")
    breaker.call(slow(clock, 0.1))  # before the first scrape: not timed

    def families() -> dict[str, Any]:
        text = app.respond("GET", "/metrics", {}, b"").body.decode()
        return {family.name: family for family in text_string_to_metric_families(text)}

    assert not families()["cbctl_circuit_call_duration_seconds"].samples
    breaker.call(slow(clock, 0.1))
    counts = [
        sample.value
        for sample in families()["cbctl_circuit_call_duration_seconds"].samples
        if sample.name.endswith("_count")
    ]
    assert counts == [1]


# -- degraded and policy figures ------------------------------------------------------------------


def test_the_degraded_gauge_follows_a_breaker_that_lost_its_store(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(redis_server.url, retry_interval=0)  # no fail-fast window after it
    registry = CircuitBreakerRegistry(store=store)
    breaker = registry.get("qdrant", view_max_age=0)
    prometheus = collected(registry)
    breaker.call(lambda: None)
    assert value(scrape(prometheus), "cbctl_circuit_store_degraded", circuit="qdrant") == 0
    redis_server.stop()
    breaker.call(lambda: None)
    assert value(scrape(prometheus), "cbctl_circuit_store_degraded", circuit="qdrant") == 1
    redis_server.start()
    breaker.call(lambda: None)
    assert value(scrape(prometheus), "cbctl_circuit_store_degraded", circuit="qdrant") == 0


class PolicyRegistry(CircuitBreakerRegistry):
    """Breakers whose stats carry the policy keys a breaker with those policies on reports."""

    def __init__(self, extra: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.extra = extra

    def get_all_stats(self) -> dict[str, dict[str, Any]]:
        stats = super().get_all_stats()
        return {name: {**entry, **self.extra.get(name, {})} for name, entry in stats.items()}


def test_policy_figures_are_gauges_where_their_policy_is_on() -> None:
    registry = PolicyRegistry(
        {
            "qdrant": {"failure_rate": 0.25, "slow_call_rate": 0.5, "open_duration": 60.0},
            "redis": {"failure_rate": None, "slow_call_rate": None},  # below minimum_calls
        }
    )
    for name in ("qdrant", "redis", "postgresql"):
        registry.get(name)
    samples = scrape(collected(registry))
    assert value(samples, "cbctl_circuit_failure_rate", circuit="qdrant") == 0.25
    assert value(samples, "cbctl_circuit_slow_call_rate", circuit="qdrant") == 0.5
    assert value(samples, "cbctl_circuit_open_duration_seconds", circuit="qdrant") == 60.0
    policy = (
        "cbctl_circuit_failure_rate",
        "cbctl_circuit_slow_call_rate",
        "cbctl_circuit_open_duration_seconds",
    )
    shown = {dict(labels)["circuit"] for name, labels in samples if name in policy}
    assert shown == {"qdrant"}


def test_without_policy_keys_no_policy_figure_is_shown() -> None:
    registry = service_registry(FakeClock())
    registry.get("qdrant").call(lambda: None)
    text = generate_latest(collected(registry)).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in ("failure_rate", "slow_call_rate", "open_duration_seconds"):
        assert families[f"cbctl_circuit_{name}"].samples == []


def test_importing_cbctl_loads_no_prometheus_client() -> None:
    code = "import sys, cbctl, cbctl.registry\nprint('prometheus_client' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"


def test_without_call_timing_the_breakers_stay_on_their_untimed_path() -> None:
    clock = CountingClock()
    registry = CircuitBreakerRegistry(clock=clock)
    app = health_app(registry, time_calls=False)
    prometheus = collected_untimed(registry)
    breaker = registry.get("qdrant")
    app.respond("GET", "/metrics", {}, b"")
    clock.reads = 0
    breaker.call(lambda: None)
    assert clock.reads == 0
    names = {name for name, _ in scrape(prometheus)}
    assert not any(name.startswith("cbctl_circuit_call_duration") for name in names)
    assert (
        value(scrape(prometheus), "cbctl_circuit_calls_total", circuit="qdrant", outcome="success")
        == 1
    )


def collected_untimed(registry: CircuitBreakerRegistry) -> CollectorRegistry:
    prometheus = CollectorRegistry()
    prometheus.register(CircuitCollector(registry, time_calls=False))
    return prometheus
