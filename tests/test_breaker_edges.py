"""Edges of the in-process breaker that a mutation run (tests/tools/mutate.py) found no other
test held: the time window's lock-free counter turns its buckets at their edges, every path of
call(), the sync decorator and call_async returns, counts and refuses alike, and a store's
window marks only what its policies ask for. (The outage and fork edges are in test_breaker.py,
beside its unpluggable and op-recording stores.)"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import pytest

from cbctl import CircuitBreaker, CircuitBreakerError, CircuitState, FakeClock
from cbctl.stores import MemoryStore


class Down(Exception):
    pass


def _fail() -> None:
    raise Down("down")


# -- the time window's lock-free success counter -------------------------------------------------


@pytest.mark.parametrize("via", ["call", "decorator", "with"])
def test_a_success_at_the_exact_start_of_a_bucket_is_counted_in_that_bucket(via: str) -> None:
    """Buckets of a 20 s window are [2k, 2k + 2): a success at t = 2.0 belongs to bucket 1, which
    is still in the window at t = 20.0 when bucket 0 has left it; the failure then makes the
    rate 1 of 2."""
    clock = FakeClock(monotonic=0.0)
    breaker = CircuitBreaker(
        "api",
        clock=clock,
        window_seconds=20.0,
        failure_rate_threshold=0.5,
        minimum_calls=2,
        failure_threshold=100,
    )

    @breaker
    def decorated() -> str:
        return "ok"

    def succeed() -> None:
        if via == "call":
            breaker.call(lambda: "ok")
        elif via == "decorator":
            decorated()
        else:
            with breaker:
                pass

    clock.advance(1.0)
    succeed()
    clock.advance(1.0)
    succeed()
    clock.advance(18.0)
    assert breaker.stats["failure_rate"] is None, "bucket 0 left the window: one call in it"
    with pytest.raises(Down):
        breaker.call(_fail)
    assert breaker.state is CircuitState.OPEN, "1 failure of 2 calls: the rate reached 0.5"


# -- every way call() and the sync decorator decide, with the same outcomes ---------------------

PATHS: dict[str, dict[str, Any]] = {
    "steady": {},
    "time-window": {"window_seconds": 60.0, "failure_rate_threshold": 0.9},
    "timed": {"slow_call_duration": 5.0, "slow_call_rate_threshold": 0.9, "window_calls": 50},
    "call-timeout": {"call_timeout": 5.0},
    "store": {"store": "memory"},
}
"""Breakers whose successes take each of call()'s paths: the lock-free CLOSED one, the time
window's (one clock read), the timed general one, and the store's."""


class Payload:
    """A result of a class the breaker has not seen (not in its known-plain set)."""


def _breaker(path: str, clock: FakeClock) -> CircuitBreaker:
    settings: dict[str, object] = dict(PATHS[path])
    if settings.pop("store", None):
        settings["store"] = MemoryStore(clock)
    return CircuitBreaker("dep", clock=clock, failure_threshold=3, **settings)  # type: ignore[arg-type]


def _through(breaker: CircuitBreaker, form: str, func: Callable[[], object]) -> object:
    if form == "call":
        return breaker.call(func)
    return breaker(func)()


def _counts(breaker: CircuitBreaker) -> tuple[int, int, int]:
    stats = breaker.stats
    return stats["successes"], stats["failures"], stats["failure_count"]


@pytest.mark.parametrize("form", ["call", "decorator"])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_each_call_path_returns_results_counts_failures_and_clears_them_alike(
    path: str, form: str
) -> None:
    clock = FakeClock()
    breaker = _breaker(path, clock)
    payload = Payload()
    assert _through(breaker, form, lambda: payload) is payload
    assert _through(breaker, form, lambda: None) is None
    assert _counts(breaker) == (2, 0, 0)
    with pytest.raises(Down):
        _through(breaker, form, _fail)
    assert _counts(breaker) == (2, 1, 1)
    assert _through(breaker, form, lambda: "ok") == "ok"
    assert _counts(breaker) == (3, 1, 0), "a success clears the failure before it"
    for _ in range(3):
        with pytest.raises(Down):
            _through(breaker, form, _fail)
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitBreakerError):
        _through(breaker, form, lambda: "ok")
    assert breaker.stats["rejections"] == 1


@pytest.mark.parametrize("form", ["call", "decorator"])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_each_call_path_refuses_an_awaitable_result_and_records_nothing(
    path: str, form: str
) -> None:
    clock = FakeClock()
    breaker = _breaker(path, clock)
    assert _through(breaker, form, Payload) is not None  # the class is now known not awaitable
    made: list[Coroutine[Any, Any, None]] = []

    async def upsert() -> None:
        raise Down("never runs")

    def returns_a_coroutine() -> object:
        made.append(upsert())
        return made[-1]

    for _ in range(2):
        with pytest.raises(TypeError, match="returned coroutine"):
            _through(breaker, form, returns_a_coroutine)
    assert [inspect.getcoroutinestate(c) for c in made] == [inspect.CORO_CLOSED] * 2
    assert _counts(breaker) == (1, 0, 0)
    assert breaker.state is CircuitState.CLOSED


# -- call_async and async with ----------------------------------------------------------------


class Ready:
    """An awaitable that is not a coroutine (as a client library's future may be)."""

    def __await__(self) -> Generator[Any, None, str]:
        return "ready"
        yield


@pytest.mark.parametrize("path", sorted(PATHS))
def test_call_async_awaits_any_awaitable_and_counts_each_path_alike(path: str) -> None:
    clock = FakeClock()
    breaker = _breaker(path, clock)

    async def scenario() -> None:
        assert await breaker.call_async(Ready) == "ready"
        loop = asyncio.get_running_loop()

        def future() -> asyncio.Future[str]:
            done: asyncio.Future[str] = loop.create_future()
            done.set_result("done")
            return done

        assert await breaker.call_async(future) == "done"

        async def failing() -> None:
            raise Down("down")

        with pytest.raises(Down):
            await breaker.call_async(failing)
        assert _counts(breaker) == (2, 1, 1)

    asyncio.run(scenario())


def test_async_half_open_trials_that_succeed_close_the_circuit() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("dep", clock=clock, failure_threshold=1, timeout=10.0)

    async def ok() -> str:
        return "ok"

    async def scenario() -> None:
        with pytest.raises(Down):
            breaker.call(_fail)
        clock.advance(10.0)
        for _ in range(2):
            assert await breaker.call_async(ok) == "ok"
        assert breaker.state is CircuitState.CLOSED

    asyncio.run(scenario())


def test_async_successes_through_a_store_with_a_window_are_each_counted_in_it() -> None:
    """A shared window stays exact across processes only if every success reaches it."""
    clock = FakeClock()
    store = MemoryStore(clock)
    breaker = CircuitBreaker(
        "dep", clock=clock, store=store, window_calls=10, failure_rate_threshold=0.5
    )

    async def ok() -> str:
        return "ok"

    async def failing() -> None:
        raise Down("down")

    async def scenario() -> None:
        for _ in range(3):
            await breaker.call_async(ok)
        with pytest.raises(Down):
            await breaker.call_async(failing)

    asyncio.run(scenario())
    found = store.load("dep")
    assert found is not None
    snapshot = found.snapshot
    assert (snapshot.window_count, snapshot.failure_bits, snapshot.slow_bits) == (4, 1, 0), (
        "no call is slow without a slow-call policy"
    )


def test_sync_calls_through_a_store_with_a_window_mark_no_call_slow_without_the_policy() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    breaker = CircuitBreaker(
        "dep", clock=clock, store=store, window_calls=10, failure_rate_threshold=0.9
    )
    breaker.call(lambda: "ok")
    with pytest.raises(Down):
        breaker.call(_fail)
    with pytest.raises(Down), breaker:
        _fail()
    found = store.load("dep")
    assert found is not None
    snapshot = found.snapshot
    assert (snapshot.window_count, snapshot.failure_bits, snapshot.slow_bits) == (3, 0b11, 0)


def test_async_with_gives_the_breaker_itself() -> None:
    breaker = CircuitBreaker("dep", clock=FakeClock())

    async def scenario() -> None:
        async with breaker as entered:
            assert entered is breaker

    asyncio.run(scenario())


def test_a_sync_fallback_answer_of_any_class_is_returned_as_it_is() -> None:
    class Cached:
        """A class no call has returned yet (the breaker remembers classes it has seen)."""

    payload = Cached()
    breaker = CircuitBreaker(
        "dep", clock=FakeClock(), failure_threshold=1, fallback=lambda rejection: payload
    )
    with pytest.raises(Down):
        breaker.call(_fail)
    assert breaker.call(lambda: "live") is payload
    assert breaker(lambda: "live")() is payload


def test_successes_counted_before_a_bucket_turns_all_reach_the_window() -> None:
    """Three successes in bucket 0, one in bucket 1, then a failure: 1 failure in 5 calls (0.2,
    under the 0.25 threshold); a success lost at the turn would make it 1 in 4 and trip."""
    clock = FakeClock(monotonic=0.0)
    breaker = CircuitBreaker(
        "api",
        clock=clock,
        window_seconds=10.0,
        failure_rate_threshold=0.25,
        minimum_calls=4,
        failure_threshold=100,
    )
    for at in (0.5, 0.6, 0.7, 2.5):
        clock.advance(at - clock.monotonic())
        breaker.call(lambda: "ok")
    with pytest.raises(Down):
        breaker.call(_fail)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats["failure_rate"] == pytest.approx(0.2)


def test_removing_the_last_observer_keeps_timing_calls_for_the_slow_call_policy() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "llm",
        clock=clock,
        window_calls=2,
        slow_call_rate_threshold=0.5,
        slow_call_duration=1.0,
        minimum_calls=2,
    )

    def observer(name: str, took: float, outcome: str) -> None:
        pass

    breaker.add_call_observer(observer)
    breaker.remove_call_observer(observer)

    def slow() -> str:
        clock.advance(2.0)
        return "late"

    breaker.call(slow)
    breaker.call(slow)
    assert breaker.state is CircuitState.OPEN, "two slow calls of two: the slow-call rate is 1"


def test_a_sync_listener_that_returns_a_plain_value_is_simply_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[CircuitState] = []

    def listener(change: Any) -> int:
        seen.append(change.state)
        return 42

    breaker = CircuitBreaker("dep", clock=FakeClock(), failure_threshold=1)
    breaker.add_listener(listener)
    with pytest.raises(Down):
        breaker.call(_fail)
    assert seen == [CircuitState.OPEN]
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
