"""Worker functions run in separate OS processes (multiprocessing, spawn) by test_store_processes.

Each worker opens its own store on the shared location, as an independent cbctl process would.
Kept in a module of their own so that spawned children import only this (and cbctl).
"""

from __future__ import annotations

import time
from typing import Any

from cbctl import CircuitBreaker, CircuitBreakerError
from cbctl.state import BreakerConfig, CircuitStore
from cbctl.stores import open_store
from cbctl.stores.redis import RedisStore
from cbctl.stores.sqlite import SqliteStore


class Down(Exception):
    pass


def fail() -> None:
    raise Down("dependency down")


def open_location(location: str, prefix: str) -> CircuitStore:
    """The store at `location`; Redis under a per-test key prefix."""
    if location.startswith("redis://"):
        return RedisStore(location, prefix=prefix)
    return open_store(location)


def record_failures(
    location: str, prefix: str, threshold: int, count: int, barrier: Any, results: Any
) -> None:
    """Fail `count` calls through one breaker; report (raised, rejected, opens seen, degraded)."""
    store = open_location(location, prefix)
    breaker = CircuitBreaker("shared", failure_threshold=threshold, timeout=600.0, store=store)
    opens: list[object] = []
    breaker.add_listener(lambda event: opens.append(event) if event.state == "open" else None)
    barrier.wait(30)
    raised = rejected = 0
    for _ in range(count):
        try:
            breaker.call(fail)
        except Down:
            raised += 1
        except CircuitBreakerError:
            rejected += 1
    results.put((raised, rejected, len(opens), breaker.stats["degraded"]))
    store.close()


def try_one_trial(
    location: str, prefix: str, config: dict[str, Any], hold: float, barrier: Any, results: Any
) -> None:
    """Attempt one call that holds its trial for `hold` seconds and then fails; report admitted."""
    store = open_location(location, prefix)
    breaker = CircuitBreaker("shared", store=store, **config)
    barrier.wait(30)

    def trial() -> None:
        time.sleep(hold)
        raise Down("still down")

    try:
        breaker.call(trial)
    except Down:
        results.put("admitted")
    except CircuitBreakerError:
        results.put("rejected")
    store.close()


def take_trial_and_hang(location: str, prefix: str, config: dict[str, Any], results: Any) -> None:
    """Take a half-open trial, say so, then hang until killed (the lease must outlive us)."""
    store = open_location(location, prefix)
    breaker = CircuitBreaker("shared", store=store, **config)
    breaker.__enter__()
    results.put("holding")
    time.sleep(600)


def hammer_writes(location: str, progress: Any, stop: Any, results: Any) -> None:
    """Write as fast as possible (failures and resets) until `stop` is set, counting in
    `progress`; report how many writes ran and the first error, if any."""
    # This test is about files surviving killed writers, not about lock waits: three processes
    # writing non-stop on a loaded machine can starve one past the default 1 s bound.
    store = SqliteStore(location, busy_timeout=5.0)
    config = BreakerConfig(failure_threshold=3)
    error = None
    try:
        while not stop.is_set():
            if progress.value % 5 == 4:
                store.reset("shared", config)
            else:
                store.record_failure("shared", config, None, f"failure {progress.value}")
            progress.value += 1
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    results.put((progress.value, error))
    store.close()


def hold_trial(
    location: str, prefix: str, config: dict[str, Any], started: Any, finish: Any, results: Any
) -> None:
    """Run one call that holds its trial until `finish` is set, then succeeds; report whether
    it was admitted."""
    store = open_location(location, prefix)
    breaker = CircuitBreaker("shared", store=store, **config)

    def trial() -> str:
        started.set()
        finish.wait(30)
        return "done"

    try:
        breaker.call(trial)
    except CircuitBreakerError:
        results.put("rejected")
    else:
        results.put("admitted")
    store.close()


def trial_traffic(
    location: str, prefix: str, config: dict[str, Any], hold: float, stop: Any, results: Any
) -> None:
    """Take trials that hold for `hold` seconds and succeed, back to back, until `stop` is set;
    report (admitted, rejected)."""
    store = open_location(location, prefix)
    breaker = CircuitBreaker("shared", store=store, **config)
    admitted = rejected = 0
    while not stop.is_set():
        try:
            breaker.call(time.sleep, hold)
        except CircuitBreakerError:
            rejected += 1
            time.sleep(0.005)
        else:
            admitted += 1
    results.put((admitted, rejected))
    store.close()


def fail_through_an_outage(
    location: str,
    prefix: str,
    pace: float,
    duration: float,
    retry_interval: float,
    barrier: Any,
    results: Any,
) -> None:
    """Fail calls that take `pace` seconds each, for `duration` seconds, while the test stops and
    resumes Redis, then keep failing until the store answers again (so what was counted
    in-process is written back); report (failures raised, whether the breaker was ever degraded).

    A call that fails slowly is admitted before Redis stops and records its failure while Redis
    is stopped: that write times out here but reaches the server, which applies it on SIGCONT.
    """
    store = RedisStore(location, prefix=prefix, socket_timeout=0.25, retry_interval=retry_interval)
    breaker = CircuitBreaker("shared", failure_threshold=10**9, timeout=600.0, store=store)
    barrier.wait(30)
    raised, degraded = 0, False
    until = time.monotonic() + duration

    def slow_failure() -> None:
        time.sleep(pace)
        raise Down("dependency down")

    while True:
        try:
            breaker.call(slow_failure)
        except Down:
            raised += 1
        degraded = degraded or breaker.stats["degraded"] is not None
        if time.monotonic() >= until and breaker.stats["degraded"] is None:
            break
    results.put((raised, degraded))
    store.close()


def watch_for_changes(
    location: str, prefix: str, view_max_age: float, ready: Any, results: Any
) -> None:
    """Succeed in a loop on a CLOSED circuit; report when it is first rejected (an open made
    elsewhere) and when it is next admitted (a reset made elsewhere), as wall-clock times."""
    store = open_location(location, prefix)
    breaker = CircuitBreaker(
        "shared", failure_threshold=1, timeout=600.0, store=store, view_max_age=view_max_age
    )
    breaker.call(time.time)
    ready.set()
    rejected = False
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        try:
            breaker.call(time.time)
        except CircuitBreakerError:
            if not rejected:
                results.put(("rejected", time.time()))
                rejected = True
        else:
            if rejected:
                results.put(("admitted", time.time()))
                break
        time.sleep(0.002)
    store.close()


def hold_open(location: str, prefix: str, seconds: float, reason: str, results: Any) -> None:
    """Hold circuit "held" open for `seconds` through a breaker of this process."""
    store = open_location(location, prefix)
    CircuitBreaker("held", store=store).force_open(for_=seconds, reason=reason)
    results.put("held")
    store.close()


def report_hold(location: str, prefix: str, results: Any) -> None:
    """Try one call on circuit "held"; report (outcome, state, hold reason, hold owner)."""
    store = open_location(location, prefix)
    breaker = CircuitBreaker("held", store=store)
    try:
        breaker.call(lambda: None)
        outcome = "admitted"
    except CircuitBreakerError:
        outcome = "rejected"
    stats = breaker.stats
    results.put((outcome, stats["state"], stats["hold_reason"], stats["hold_owner"]))
    store.close()


def record_window(
    location: str,
    prefix: str,
    settings: dict[str, Any],
    calls: int,
    every: int,
    barrier: Any,
    results: Any,
) -> None:
    """`calls` calls through one windowed breaker, every `every`-th of them failing; report
    (failures raised, degraded)."""
    store = open_location(location, prefix)
    breaker = CircuitBreaker("shared", store=store, **settings)
    barrier.wait(30)
    raised = 0
    for i in range(calls):
        try:
            breaker.call(fail if i % every == 0 else lambda: None)
        except Down:
            raised += 1
    results.put((raised, breaker.stats["degraded"]))
    store.close()
