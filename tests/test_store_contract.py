"""One contract for every store: memory, the local state file (SQLite) and Redis (a real server).

Every test drives store-backed CircuitBreakers through the transitions README promises, with a
FakeClock. The memory store and the state file take that clock as their time base; Redis keeps
the server's clock, and the test moves it with the store's `time_offset` (the fake clock's
advance), so no test sleeps. `reopen()` gives a second store object on the same location: another
process's view of the same circuits, or the same process after a restart.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from cbctl import CircuitBreaker, CircuitBreakerError, CircuitState, FakeClock
from cbctl.state import BreakerConfig, CircuitStore
from cbctl.stores import MemoryStore
from cbctl.stores.redis import RedisStore
from cbctl.stores.sqlite import SqliteStore
from tests.servers import RedisServer

_prefixes = itertools.count()


class Backend:
    """One store kind at one location, with a fake clock that moves its time base."""

    def __init__(self, kind: str, opener: Callable[[FakeClock], CircuitStore]) -> None:
        self.kind = kind
        self.clock = FakeClock()
        self._opener = opener
        self._opened: list[CircuitStore] = []
        self.store = self.reopen()

    def reopen(self) -> CircuitStore:
        """Another store object on the same location (same object for memory://)."""
        if self.kind == "memory" and self._opened:
            return self._opened[0]
        store = self._opener(self.clock)
        self._opened.append(store)
        return store

    def breaker(
        self, name: str = "dep", store: CircuitStore | None = None, **settings: Any
    ) -> CircuitBreaker:
        return CircuitBreaker(name, clock=self.clock, store=store or self.store, **settings)

    def close(self) -> None:
        for store in self._opened:
            store.close()


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One Redis for this module; each test gets its own key prefix."""
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    if kind == "memory":
        made = Backend(kind, MemoryStore)
    elif kind == "sqlite":
        path = tmp_path / "circuits.db"
        made = Backend(kind, lambda clock: SqliteStore(path, clock=clock))
    else:
        server: RedisServer = request.getfixturevalue("shared_redis")
        prefix = f"test{next(_prefixes)}:"
        server_start = RedisStore(server.url).clock_now()

        def open_redis(clock: FakeClock) -> CircuitStore:
            return RedisStore(
                server.url, prefix=prefix, time_offset=lambda: clock.wall() - server_start
            )

        made = Backend(kind, open_redis)
    try:
        yield made
    finally:
        made.close()


class Boom(Exception):
    pass


def fail() -> None:
    raise Boom("dependency down")


def ok() -> str:
    return "ok"


def trip(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            breaker.call(fail)


def test_consecutive_failures_open_at_threshold_and_the_tripping_error_reaches_the_caller(
    backend: Backend,
) -> None:
    breaker = backend.breaker(failure_threshold=3)
    trip(breaker, 2)
    assert breaker.stats["failure_count"] == 2
    assert breaker.call(ok) == "ok"
    assert breaker.stats["failure_count"] == 0
    trip(breaker, 2)
    assert breaker.state is CircuitState.CLOSED
    with pytest.raises(Boom):
        breaker.call(fail)
    assert breaker.state is CircuitState.OPEN
    assert breaker.stats["failure_count"] == 3
    assert breaker.stats["last_error"] == "Boom: dependency down"


def test_open_circuit_rejects_without_calling_and_says_when_to_retry(backend: Backend) -> None:
    breaker = backend.breaker(failure_threshold=1, timeout=30.0)
    trip(breaker, 1)
    backend.clock.advance(10)
    called = []
    with pytest.raises(CircuitBreakerError) as rejected:
        breaker.call(lambda: called.append(1))
    assert called == []
    assert rejected.value.name == "dep"
    assert rejected.value.retry_after == pytest.approx(20.0, abs=0.5)


def test_after_the_timeout_one_trial_runs_and_other_callers_are_rejected(backend: Backend) -> None:
    breaker = backend.breaker(failure_threshold=1, timeout=30.0)
    trip(breaker, 1)
    backend.clock.advance(30.5)
    with breaker:
        assert breaker.state is CircuitState.HALF_OPEN
        with pytest.raises(CircuitBreakerError):
            breaker.call(ok)
    assert breaker.stats["success_count"] == 1


def test_half_open_closes_after_success_threshold_successes(backend: Backend) -> None:
    breaker = backend.breaker(failure_threshold=1, timeout=5.0, success_threshold=2)
    trip(breaker, 1)
    backend.clock.advance(5.5)
    breaker.call(ok)
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.call(ok)
    stats = breaker.stats
    assert (stats["state"], stats["failure_count"], stats["success_count"]) == ("closed", 0, 0)


def test_half_open_failure_reopens_and_restarts_the_timer(backend: Backend) -> None:
    breaker = backend.breaker(failure_threshold=1, timeout=5.0)
    trip(breaker, 1)
    backend.clock.advance(5.5)
    trip(breaker, 1)
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitBreakerError) as rejected:
        breaker.call(ok)
    # A timer that was not restarted would have ~0 s left (5.5 s passed since the first open);
    # the slack is for Redis, whose clock is the real server clock moving under a loaded CI.
    retry_after = rejected.value.retry_after
    assert retry_after is not None
    assert 3.0 <= retry_after <= 5.0


def test_excluded_errors_and_interrupts_are_neutral_and_free_the_trial(backend: Backend) -> None:
    breaker = backend.breaker(failure_threshold=2, timeout=5.0, exclude=[KeyError])
    for _ in range(3):
        with pytest.raises(KeyError):
            breaker.call(lambda: {}["missing"])
    assert breaker.stats["failure_count"] == 0
    trip(breaker, 2)
    backend.clock.advance(5.5)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    assert breaker.call(ok) == "ok"
    assert breaker.state is CircuitState.HALF_OPEN


def test_reset_is_seen_by_another_instance_on_its_next_call(backend: Backend) -> None:
    service = backend.breaker(failure_threshold=1)
    operator = backend.breaker(store=backend.reopen(), failure_threshold=1)
    trip(service, 1)
    assert operator.state is CircuitState.OPEN
    operator.reset()
    assert service.call(ok) == "ok"
    assert service.stats["state"] == "closed"


def test_an_open_circuit_survives_a_restart_with_its_remaining_time(backend: Backend) -> None:
    trip(backend.breaker(failure_threshold=1, timeout=60.0), 1)
    backend.clock.advance(15)
    restarted = backend.breaker(store=backend.reopen(), failure_threshold=1, timeout=60.0)
    assert restarted.state is CircuitState.OPEN
    assert restarted.stats["retry_after"] == pytest.approx(45.0, abs=0.5)
    with pytest.raises(CircuitBreakerError) as rejected:
        restarted.call(ok)
    assert rejected.value.retry_after == pytest.approx(45.0, abs=0.5)


def test_half_open_permits_are_shared_across_instances(backend: Backend) -> None:
    settings = {"failure_threshold": 1, "timeout": 5.0, "half_open_max_calls": 2}
    first = backend.breaker(**settings)
    second = backend.breaker(store=backend.reopen(), **settings)
    third = backend.breaker(store=backend.reopen(), **settings)
    trip(first, 1)
    backend.clock.advance(5.5)
    with first, second, pytest.raises(CircuitBreakerError):
        third.call(ok)
    assert third.call(ok) == "ok"


def test_a_trial_lease_expires_when_its_holder_never_reports(backend: Backend) -> None:
    holder = backend.breaker(failure_threshold=1, timeout=5.0)
    other = backend.breaker(store=backend.reopen(), failure_threshold=1, timeout=5.0)
    trip(holder, 1)
    backend.clock.advance(5.5)
    holder.__enter__()
    with pytest.raises(CircuitBreakerError):
        other.call(ok)
    backend.clock.advance(5.5)
    assert other.call(ok) == "ok"


def test_an_outcome_admitted_before_a_reset_does_not_move_the_new_state(backend: Backend) -> None:
    breaker = backend.breaker(failure_threshold=1, timeout=5.0)
    trip(breaker, 1)
    backend.clock.advance(5.5)
    breaker.__enter__()
    backend.breaker(store=backend.reopen()).reset()
    breaker.__exit__(Boom, Boom("late"), None)
    stats = breaker.stats
    assert (stats["state"], stats["failure_count"]) == ("closed", 0)
    assert stats["last_error"] == "Boom: late"


def test_forced_open_rejects_everything_until_reset(backend: Backend) -> None:
    breaker = backend.breaker(timeout=1.0)
    breaker.force_open()
    backend.clock.advance(100)
    with pytest.raises(CircuitBreakerError) as rejected:
        breaker.call(ok)
    assert rejected.value.retry_after is None
    breaker.reset()
    assert breaker.call(ok) == "ok"


def test_threads_recording_failures_lose_no_update_and_open_once(backend: Backend) -> None:
    threads, each = 4, 25
    opened = []
    breakers = [
        backend.breaker(store=backend.reopen(), failure_threshold=threads * each)
        for _ in range(threads)
    ]
    for breaker in breakers:
        breaker.add_listener(lambda event: opened.append(event) if event.state == "open" else None)

    def hammer(breaker: CircuitBreaker) -> None:
        for _ in range(each):
            with pytest.raises(Boom):
                breaker.call(fail)

    workers = [threading.Thread(target=hammer, args=(b,)) for b in breakers]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    stored = backend.store.load("dep")
    assert stored is not None
    assert (stored.snapshot.state, stored.snapshot.failure_count) == ("open", threads * each)
    assert len(opened) == 1


def test_threads_sharing_one_store_object_lose_no_update(backend: Backend) -> None:
    threads, each = 4, 25
    breaker = backend.breaker(failure_threshold=10**6)

    def hammer() -> None:
        for _ in range(each):
            with pytest.raises(Boom):
                breaker.call(fail)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    stored = backend.store.load("dep")
    assert stored is not None
    assert stored.snapshot.failure_count == threads * each
    assert breaker.stats["degraded"] is None


def test_circuits_do_not_share_state_and_load_all_lists_them_with_settings(
    backend: Backend,
) -> None:
    trip(backend.breaker("qdrant", failure_threshold=1, timeout=7.0), 1)
    backend.breaker("redis", failure_threshold=4).call(ok)
    circuits = {c.name: c for c in backend.reopen().load_all()}
    assert sorted(circuits) == ["qdrant", "redis"]
    assert circuits["qdrant"].snapshot.state is CircuitState.OPEN
    assert circuits["qdrant"].config == BreakerConfig(failure_threshold=1, timeout=7.0)
    assert circuits["redis"].snapshot.state is CircuitState.CLOSED
    assert circuits["redis"].config.failure_threshold == 4
    assert backend.store.load("unknown") is None


def test_last_failure_is_wall_clock_utc(backend: Backend) -> None:
    breaker = backend.breaker()
    trip(breaker, 1)
    assert breaker.stats["last_failure"] == "2026-01-01T00:00:00Z"


def test_a_forgotten_circuit_is_gone_for_every_instance_and_starts_afresh(
    backend: Backend,
) -> None:
    service = backend.breaker(failure_threshold=1)
    trip(service, 1)
    operator = backend.reopen()
    assert operator.forget("dep") is True
    assert operator.forget("dep") is False
    assert [stored.name for stored in backend.store.load_all()] == []
    assert service.call(ok) == "ok"
    assert service.stats["state"] == "closed"


def test_async_callers_follow_the_same_contract(backend: Backend) -> None:
    """call_async and `async with` take the store's async path (redis.asyncio, or a worker
    thread); the transitions, the shared trial and the reset are the same as for sync callers."""
    settings = {"failure_threshold": 2, "timeout": 5.0, "success_threshold": 1}
    service = backend.breaker(**settings)
    other = backend.breaker(store=backend.reopen(), **settings)

    async def afail() -> None:
        raise Boom("dependency down")

    async def aok() -> str:
        return "ok"

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(Boom):
                await service.call_async(afail)
        with pytest.raises(CircuitBreakerError):
            await other.call_async(aok)
        backend.clock.advance(5.5)
        async with service:
            with pytest.raises(CircuitBreakerError):
                await other.call_async(aok)
        assert await other.call_async(aok) == "ok"
        for _ in range(2):
            with pytest.raises(Boom):
                await other.call_async(afail)
        other.reset()
        assert await service.call_async(aok) == "ok"
        for store in backend._opened:
            close = getattr(store, "aclose", None)
            if close is not None:
                await close()

    asyncio.run(scenario())
    assert service.stats["state"] == "closed"


# -- the transition journal ------------------------------------------------------------------


def moves(events: list[Any]) -> list[tuple[str, str]]:
    return [(event.previous.value, event.state.value) for event in events]


def test_the_journal_records_each_transition_in_order_with_its_failures_and_error(
    backend: Backend,
) -> None:
    breaker = backend.breaker(failure_threshold=2, timeout=10.0, success_threshold=1)
    trip(breaker, 2)
    backend.clock.advance(10.5)
    assert breaker.call(ok) == "ok"
    events = breaker.events()
    assert moves(events) == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    opened = events[0]
    assert (opened.circuit, opened.failures, opened.error) == ("dep", 2, "Boom: dependency down")
    assert events[1].error is None
    assert [event.id for event in events] == sorted({event.id for event in events})
    assert events[0].at <= events[1].at <= events[2].at
    assert events[0].at.tzinfo is UTC
    # wall-clock UTC (Redis: its own clock, moved with the fake one; not a monotonic reading)
    assert events[1].at.timestamp() == pytest.approx(backend.clock.wall(), abs=5.0)
    assert "@" in opened.source


def test_the_journal_is_bounded_to_the_last_transitions_of_each_circuit(backend: Backend) -> None:
    from cbctl.journal import JOURNAL_LIMIT

    breaker = backend.breaker(failure_threshold=1)
    other = backend.breaker("other", failure_threshold=1)
    trip(other, 1)
    for _ in range(JOURNAL_LIMIT // 2 + 5):  # two transitions per round
        trip(breaker, 1)
        breaker.reset()
    events = breaker.events()
    assert len(events) == JOURNAL_LIMIT
    assert moves(events)[-2:] == [("closed", "open"), ("open", "closed")]
    assert [event.id for event in events] == sorted(event.id for event in events)
    assert moves(other.events()) == [("closed", "open")], "one circuit's churn keeps the other's"


def test_a_steady_success_writes_no_journal_record(backend: Backend) -> None:
    breaker = backend.breaker(failure_threshold=2)
    trip(breaker, 1)
    assert breaker.call(ok) == "ok"
    before = backend.store.events()  # type: ignore[attr-defined]
    for _ in range(50):
        breaker.call(ok)
    assert backend.store.events() == before == []  # type: ignore[attr-defined]


def test_another_instance_reads_the_same_journal_and_a_cursor_skips_what_was_seen(
    backend: Backend,
) -> None:
    first = backend.breaker(failure_threshold=1)
    second = backend.breaker(store=backend.reopen(), failure_threshold=1)
    trip(first, 1)
    seen = second.events()
    assert moves(seen) == [("closed", "open")]
    second.reset()
    later = backend.reopen().events(None, seen[-1].id)  # type: ignore[attr-defined]
    assert moves(later) == [("open", "closed")]
    assert moves(first.events()) == [("closed", "open"), ("open", "closed")]


def test_every_store_is_a_context_manager_that_closes_it_on_exit(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = backend.reopen()
    real_close = store.close
    closed: list[str] = []

    def spying_close() -> None:
        closed.append("closed")
        real_close()

    monkeypatch.setattr(store, "close", spying_close)
    entered: list[CircuitStore] = []

    def use_and_fail() -> None:
        with store as using:
            entered.append(using)
            backend.breaker(store=using).call(ok)
            raise Boom("the block failed")

    with pytest.raises(Boom):
        use_and_fail()
    assert entered == [store]
    assert closed == ["closed"], "closed once, also when the block raises"


# -- open-duration backoff ----------------------------------------------------------------------


class Overloaded(Exception):
    retry_after = 45.0


def test_a_failed_trial_backs_off_for_every_process_and_a_close_resets_it(
    backend: Backend,
) -> None:
    backoff = {
        "failure_threshold": 1,
        "success_threshold": 1,
        "timeout": 10.0,
        "backoff_factor": 3.0,
        "max_timeout": 50.0,
    }
    one = backend.breaker(**backoff)
    other = backend.breaker(store=backend.reopen(), **backoff)
    with pytest.raises(Boom):
        one.call(fail)
    spans = [other.stats["open_duration"]]
    for _ in range(3):
        backend.clock.advance(spans[-1] - 1.0)
        with pytest.raises(CircuitBreakerError) as rejected:
            other.call(ok)
        assert rejected.value.retry_after == pytest.approx(1.0, abs=0.05)
        backend.clock.advance(1.0)
        with pytest.raises(Boom):
            one.call(fail)  # the trial fails: the other process sees the longer open
        spans.append(other.stats["open_duration"])
    assert spans == pytest.approx([10.0, 30.0, 50.0, 50.0])
    backend.clock.advance(50.0)
    assert other.call(ok) == "ok"  # the trial succeeds: closed, the backoff forgotten
    with pytest.raises(Boom):
        one.call(fail)
    assert one.stats["open_duration"] == pytest.approx(10.0)
    (stored,) = [c for c in backend.store.load_all() if c.name == "dep"]
    assert (stored.config.backoff_factor, stored.config.max_timeout) == (3.0, 50.0)


def test_a_requested_delay_holds_the_circuit_open_in_every_store(backend: Backend) -> None:
    breaker = backend.breaker(failure_threshold=1, timeout=10.0, max_timeout=60.0)

    def overloaded() -> str:
        raise Overloaded

    with pytest.raises(Overloaded):
        breaker.call(overloaded)
    other = backend.breaker(store=backend.reopen(), failure_threshold=1, max_timeout=60.0)
    assert other.stats["open_duration"] == pytest.approx(45.0)
    backend.clock.advance(44.0)
    assert not other.allows_call()
    backend.clock.advance(1.0)
    assert other.allows_call()


def test_an_async_failed_trial_backs_off_like_a_sync_one(backend: Backend) -> None:
    breaker = backend.breaker(failure_threshold=1, timeout=10.0, backoff_factor=2.0)

    async def aboom() -> None:
        raise Boom

    async def run() -> None:
        with pytest.raises(Boom):
            await breaker.call_async(aboom)
        backend.clock.advance(10.0)
        with pytest.raises(Boom):
            await breaker.call_async(aboom)

    asyncio.run(run())
    assert breaker.stats["open_duration"] == pytest.approx(20.0)


# -- rate policies over a count window ------------------------------------------------------------

WINDOW = {
    "failure_threshold": 100,
    "failure_rate_threshold": 0.5,
    "window_calls": 6,
    "minimum_calls": 4,
    "slow_call_duration": 1.0,
    "slow_call_rate_threshold": 0.75,
}


def test_processes_share_one_window_and_see_its_rates(backend: Backend) -> None:
    one = backend.breaker(**WINDOW)
    other = backend.breaker(store=backend.reopen(), **WINDOW)
    for breaker in (one, other, one):
        assert breaker.call(ok) == "ok"
    assert other.stats["failure_rate"] is None  # 3 calls, minimum 4
    with pytest.raises(Boom):
        other.call(fail)
    assert one.stats["failure_rate"] == 0.25
    assert one.stats["slow_call_rate"] == 0.0
    with pytest.raises(Boom):
        one.call(fail)
    assert other.state is CircuitState.CLOSED  # 2 of 5
    with pytest.raises(Boom):
        other.call(fail)  # 3 of 6, counted by two processes
    assert one.state is CircuitState.OPEN
    assert one.stats["failure_rate"] is None, "an open circuit's window is empty"
    (stored,) = [c for c in backend.store.load_all() if c.name == "dep"]
    assert stored.config == BreakerConfig(**WINDOW)


def test_slow_calls_that_succeed_open_the_circuit_in_every_store(backend: Backend) -> None:
    one = backend.breaker(**WINDOW)
    other = backend.breaker(store=backend.reopen(), **WINDOW)

    def slow() -> str:
        backend.clock.advance(1.5)
        return "ok"

    assert one.call(ok) == "ok"
    for breaker in (one, other):
        assert breaker.call(slow) == "ok"
    assert other.stats["slow_call_rate"] is None
    assert other.call(slow) == "ok"  # 3 of 4 slow
    assert one.state is CircuitState.OPEN
    assert one.stats["failure_count"] == 0


def test_an_async_slow_call_counts_like_a_sync_one(backend: Backend) -> None:
    settings = {**WINDOW, "minimum_calls": 1, "slow_call_rate_threshold": 1.0}
    breaker = backend.breaker(**settings)

    async def slow() -> str:
        backend.clock.advance(2.0)
        return "ok"

    assert asyncio.run(breaker.call_async(slow)) == "ok"
    assert breaker.state is CircuitState.OPEN
