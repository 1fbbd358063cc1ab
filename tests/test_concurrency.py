"""Many threads and many asyncio tasks on one breaker: exact trial counts, no queueing, no lost
counts, and trial places given back when a trial is interrupted or cancelled.

The HALF_OPEN races prove "rejected at once, never queued" by construction: every trial blocks
until all the other callers have already returned with a rejection, so a breaker that queued
callers (or admitted one trial too many) would leave the trials waiting and fail the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from cbctl import CircuitBreaker, CircuitBreakerError, CircuitState, FakeClock, StateChange
from cbctl.state import CircuitStore
from cbctl.stores import MemoryStore

CALLERS = 16
WAIT = 10.0  # seconds a blocked trial waits for the others before the test calls it a failure


class Boom(Exception):
    """The dependency failed."""


def fail() -> None:
    raise Boom("down")


@pytest.fixture(autouse=True)
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads every microsecond so that races have every chance to show."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


StoreFactory = Callable[[FakeClock], CircuitStore | None]
STORES: list[StoreFactory] = [lambda clock: None, MemoryStore]
STORE_IDS = ["in-process", "memory-store"]


def half_open_breaker(
    clock: FakeClock, make_store: StoreFactory, trials: int, **settings: int
) -> CircuitBreaker:
    """A breaker whose next call starts HALF_OPEN (tripped, timeout passed)."""
    breaker = CircuitBreaker(
        "dep",
        failure_threshold=1,
        timeout=10.0,
        success_threshold=settings.get("success_threshold", trials),
        half_open_max_calls=trials,
        clock=clock,
        store=make_store(clock),
    )
    with pytest.raises(Boom):
        breaker.call(fail)
    clock.advance(10.0)
    return breaker


def run_threads(count: int, target: Callable[[], None]) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * WAIT)
    assert not any(thread.is_alive() for thread in threads)


# -- threads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make_store", STORES, ids=STORE_IDS)
@pytest.mark.parametrize("max_trials", [1, 3])
def test_threads_arriving_half_open_run_exactly_the_allowed_trials(
    max_trials: int, make_store: StoreFactory
) -> None:
    clock = FakeClock()
    breaker = half_open_breaker(clock, make_store, max_trials)
    barrier = threading.Barrier(CALLERS)
    counts_lock = threading.Lock()
    trials: list[str] = []
    rejections: list[float | None] = []
    all_others_returned = threading.Event()
    trial_saw_the_others_return: list[bool] = []

    def trial() -> str:
        with counts_lock:
            trials.append(threading.current_thread().name)
        trial_saw_the_others_return.append(all_others_returned.wait(WAIT))
        return "ok"

    def caller() -> None:
        barrier.wait()
        try:
            breaker.call(trial)
        except CircuitBreakerError as rejection:
            with counts_lock:
                rejections.append(rejection.retry_after)
                if len(rejections) == CALLERS - max_trials:
                    all_others_returned.set()

    run_threads(CALLERS, caller)
    assert len(trials) == max_trials
    assert len(rejections) == CALLERS - max_trials
    assert trial_saw_the_others_return == [True] * max_trials
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats["rejections"] == CALLERS - max_trials


def test_a_half_open_trial_interrupted_in_a_thread_gives_its_place_to_the_next_caller() -> None:
    clock = FakeClock()
    breaker = half_open_breaker(clock, lambda clock: None, 1, success_threshold=1)
    trial_running = threading.Event()
    let_trial_end = threading.Event()

    def interrupted_trial() -> None:
        trial_running.set()
        let_trial_end.wait(WAIT)
        raise KeyboardInterrupt

    def run_trial() -> None:
        with contextlib.suppress(KeyboardInterrupt):
            breaker.call(interrupted_trial)

    thread = threading.Thread(target=run_trial)
    thread.start()
    assert trial_running.wait(WAIT)
    with pytest.raises(CircuitBreakerError):
        breaker.call(lambda: None)
    let_trial_end.set()
    thread.join(WAIT)
    assert breaker.call(lambda: "next") == "next"
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats["failures"] == 1


@pytest.mark.parametrize("make_store", STORES, ids=STORE_IDS)
def test_concurrent_failures_lose_no_counts(make_store: StoreFactory) -> None:
    clock = FakeClock()
    per_thread = 300
    breaker = CircuitBreaker("dep", failure_threshold=10**9, clock=clock, store=make_store(clock))
    barrier = threading.Barrier(8)

    def caller() -> None:
        barrier.wait()
        for _ in range(per_thread):
            with contextlib.suppress(Boom):
                breaker.call(fail)

    run_threads(8, caller)
    stats = breaker.stats
    assert stats["failure_count"] == 8 * per_thread
    assert (stats["failures"], stats["calls"]) == (8 * per_thread, 8 * per_thread)


@pytest.mark.parametrize("make_store", STORES, ids=STORE_IDS)
def test_concurrent_mixed_outcomes_add_up_exactly(make_store: StoreFactory) -> None:
    clock = FakeClock()
    per_thread = 400
    breaker = CircuitBreaker("dep", failure_threshold=10**9, clock=clock, store=make_store(clock))
    barrier = threading.Barrier(8)

    def caller(index: int) -> None:
        barrier.wait()
        for step in range(per_thread):
            with contextlib.suppress(Boom):
                breaker.call(fail if (index + step) % 3 == 0 else (lambda: None))

    threads = [threading.Thread(target=caller, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * WAIT)
    expected_failures = sum(
        1 for index in range(8) for step in range(per_thread) if (index + step) % 3 == 0
    )
    stats = breaker.stats
    assert stats["failures"] == expected_failures
    assert stats["successes"] == 8 * per_thread - expected_failures
    assert stats["calls"] == 8 * per_thread
    assert stats["rejections"] == 0
    assert stats["state"] == "closed"


@pytest.mark.parametrize("make_store", STORES, ids=STORE_IDS)
def test_concurrent_failures_open_the_circuit_exactly_once(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("dep", failure_threshold=5, clock=clock, store=make_store(clock))
    events: list[StateChange] = []
    breaker.add_listener(events.append)
    barrier = threading.Barrier(CALLERS)
    ran: list[bool] = []

    def caller() -> None:
        barrier.wait()
        for _ in range(20):
            with contextlib.suppress(Boom, CircuitBreakerError):
                breaker.call(lambda: ran.append(True) or fail())

    with caplog.at_level(logging.INFO, logger="cbctl"):
        run_threads(CALLERS, caller)
    assert [(e.previous, e.state) for e in events] == [(CircuitState.CLOSED, CircuitState.OPEN)]
    transitions = [r.getMessage() for r in caplog.records if hasattr(r, "circuit_state")]
    assert transitions == ["circuit=dep circuit_state=open previous=closed failures=5"]
    stats = breaker.stats
    assert stats["state"] == "open"
    assert stats["failures"] == len(ran)
    assert stats["failures"] + stats["rejections"] == CALLERS * 20
    assert stats["rejections"] >= CALLERS * 20 - 5 - CALLERS  # only in-flight calls slipped in


# -- asyncio ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make_store", STORES, ids=STORE_IDS)
@pytest.mark.parametrize("max_trials", [1, 3])
def test_tasks_arriving_half_open_run_exactly_the_allowed_trials(
    max_trials: int, make_store: StoreFactory
) -> None:
    clock = FakeClock()
    breaker = half_open_breaker(clock, make_store, max_trials)

    async def scenario() -> tuple[int, int, list[bool]]:
        all_others_returned = asyncio.Event()
        trials: list[bool] = []
        rejections = 0

        async def trial() -> str:
            try:
                await asyncio.wait_for(all_others_returned.wait(), WAIT)
            except TimeoutError:
                trials.append(False)
            else:
                trials.append(True)
            return "ok"

        async def caller() -> None:
            nonlocal rejections
            await asyncio.sleep(0)
            try:
                await breaker.call_async(trial)
            except CircuitBreakerError:
                rejections += 1
                if rejections == CALLERS - max_trials:
                    all_others_returned.set()

        await asyncio.gather(*(caller() for _ in range(CALLERS)))
        return len(trials), rejections, trials

    trial_count, rejections, saw_others = asyncio.run(scenario())
    assert (trial_count, rejections) == (max_trials, CALLERS - max_trials)
    assert saw_others == [True] * max_trials
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("make_store", STORES, ids=STORE_IDS)
def test_many_tasks_lose_no_counts(make_store: StoreFactory) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("dep", failure_threshold=10**9, clock=clock, store=make_store(clock))

    async def outcome(fails: bool) -> None:
        await asyncio.sleep(0)
        if fails:
            raise Boom("down")

    async def caller(index: int) -> None:
        for step in range(50):
            with contextlib.suppress(Boom):
                await breaker.call_async(outcome, (index + step) % 4 == 0)

    async def scenario() -> None:
        await asyncio.gather(*(caller(index) for index in range(40)))

    asyncio.run(scenario())
    expected_failures = sum(1 for i in range(40) for s in range(50) if (i + s) % 4 == 0)
    stats = breaker.stats
    assert stats["failures"] == expected_failures
    assert stats["successes"] == 40 * 50 - expected_failures
    assert stats["calls"] == 40 * 50


@pytest.mark.parametrize("make_store", STORES, ids=STORE_IDS)
def test_a_cancelled_trial_task_gives_its_place_to_the_next_caller(
    make_store: StoreFactory,
) -> None:
    clock = FakeClock()
    breaker = half_open_breaker(clock, make_store, 1, success_threshold=1)

    async def scenario() -> None:
        started = asyncio.Event()

        async def slow_trial() -> None:
            started.set()
            await asyncio.sleep(3600)

        task = asyncio.create_task(breaker.call_async(slow_trial))
        await started.wait()
        results = await asyncio.gather(
            *(breaker.call_async(asyncio.sleep, 0) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(result, CircuitBreakerError) for result in results)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await breaker.call_async(asyncio.sleep, 0, "next") == "next"

    asyncio.run(scenario())
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats["rejections"] == 5
