"""Several real OS processes on one circuit, through the state file and through Redis.

Processes are started with multiprocessing's spawn (fresh interpreters, nothing inherited but the
arguments), released together by a barrier, and report through a queue. Circuits that must
already be past their recovery timeout are opened by the test with a store whose clock is
100 s in the past (state file: an injected clock; Redis: a negative time offset), so no test
waits for a timeout it does not measure.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cbctl import CircuitBreaker, CircuitBreakerError, FakeClock
from cbctl.state import BreakerConfig, CircuitStore, held_buckets
from cbctl.stores.redis import RedisStore
from cbctl.stores.sqlite import SqliteStore
from tests import store_workers
from tests.servers import RedisServer

pytestmark = pytest.mark.slow

SPAWN = multiprocessing.get_context("spawn")
PROCESSES = 4
_prefixes = itertools.count()


class Shared:
    """A location several processes open: a state file or a Redis URL (+ key prefix)."""

    def __init__(self, location: str, prefix: str) -> None:
        self.location = location
        self.prefix = prefix

    def store(self, seconds_ago: float = 0.0) -> CircuitStore:
        """A store in this process; its clock `seconds_ago` in the past."""
        if self.location.startswith("redis://"):
            return RedisStore(self.location, prefix=self.prefix, time_offset=lambda: -seconds_ago)
        clock = FakeClock(wall=time.time() - seconds_ago) if seconds_ago else None
        return SqliteStore(self.location, clock=clock)


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Shared:
    if request.param == "sqlite":
        return Shared(str(tmp_path / "circuits.db"), "")
    server: RedisServer = request.getfixturevalue("module_redis")
    return Shared(server.url, f"proc{next(_prefixes)}:")


def run_all(target: Any, argument_sets: list[tuple[Any, ...]], timeout: float = 30.0) -> None:
    processes = [SPAWN.Process(target=target, args=args) for args in argument_sets]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout)
            assert process.exitcode == 0, f"worker exited with {process.exitcode}"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5)


def drain(results: Any, count: int) -> list[Any]:
    return [results.get(timeout=30) for _ in range(count)]


def test_failures_from_many_processes_are_all_counted_and_open_the_circuit_once(
    shared: Shared,
) -> None:
    each = 40
    total = PROCESSES * each
    barrier, results = SPAWN.Barrier(PROCESSES), SPAWN.Queue()
    run_all(
        store_workers.record_failures,
        [(shared.location, shared.prefix, total, each, barrier, results)] * PROCESSES,
    )
    reports = drain(results, PROCESSES)
    assert sum(report[0] for report in reports) == total
    assert sum(report[2] for report in reports) == 1, "exactly one process saw the opening"
    assert all(report[3] is None for report in reports), "no process degraded"
    stored = shared.store().load("shared")
    assert stored is not None
    assert (stored.snapshot.state, stored.snapshot.failure_count) == ("open", total)


def test_a_circuit_tripped_by_racing_processes_opens_once_at_its_threshold(
    shared: Shared,
) -> None:
    threshold = 30
    barrier, results = SPAWN.Barrier(PROCESSES), SPAWN.Queue()
    run_all(
        store_workers.record_failures,
        [(shared.location, shared.prefix, threshold, 25, barrier, results)] * PROCESSES,
    )
    reports = drain(results, PROCESSES)
    assert sum(report[2] for report in reports) == 1
    assert sum(report[1] for report in reports) > 0, "later calls were rejected"
    stored = shared.store().load("shared")
    assert stored is not None
    assert (stored.snapshot.state, stored.snapshot.failure_count) == ("open", threshold)


def test_half_open_admits_at_most_half_open_max_calls_across_processes(shared: Shared) -> None:
    config = {"failure_threshold": 1, "timeout": 30.0, "half_open_max_calls": 2}
    opener = shared.store(seconds_ago=100)
    opener.record_failure("shared", BreakerConfig(**config), None, "down")
    barrier, results = SPAWN.Barrier(PROCESSES), SPAWN.Queue()
    run_all(
        store_workers.try_one_trial,
        [(shared.location, shared.prefix, config, 0.5, barrier, results)] * PROCESSES,
    )
    outcomes = sorted(drain(results, PROCESSES))
    assert outcomes == ["admitted"] * 2 + ["rejected"] * (PROCESSES - 2)


def test_a_trial_lease_expires_when_the_process_holding_it_is_killed(shared: Shared) -> None:
    lease = 1.0
    config = {"failure_threshold": 1, "timeout": lease}
    shared.store(seconds_ago=100).record_failure("shared", BreakerConfig(**config), None, "down")
    results = SPAWN.Queue()
    holder = SPAWN.Process(
        target=store_workers.take_trial_and_hang,
        args=(shared.location, shared.prefix, config, results),
    )
    holder.start()
    try:
        assert results.get(timeout=30) == "holding"
        taken = time.monotonic()
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        breaker = CircuitBreaker("shared", store=shared.store(), **config)
        with pytest.raises(CircuitBreakerError):
            breaker.call(lambda: None)
        time.sleep(max(0.0, taken + lease + 0.1 - time.monotonic()))
        assert breaker.call(lambda: "trial") == "trial"
    finally:
        if holder.is_alive():
            holder.kill()
            holder.join(5)


def wait_for_progress(progress: Any, beyond: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while progress.value <= beyond:
        assert time.monotonic() < deadline, f"a writer made no progress beyond {progress.value}"
        time.sleep(0.01)


def test_a_writer_killed_mid_write_leaves_the_state_file_valid_for_the_others(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "circuits.db")
    SqliteStore(path).close()
    stop, results = SPAWN.Event(), SPAWN.Queue()
    counters = [SPAWN.Value("q", 0, lock=False) for _ in range(2)]
    survivors = [
        SPAWN.Process(target=store_workers.hammer_writes, args=(path, counter, stop, results))
        for counter in counters
    ]
    for survivor in survivors:
        survivor.start()
    try:
        for round_number in range(3):
            written, never = SPAWN.Value("q", 0, lock=False), SPAWN.Event()
            victim = SPAWN.Process(
                target=store_workers.hammer_writes, args=(path, written, never, results)
            )
            victim.start()
            wait_for_progress(written, 0)
            time.sleep(0.05 * round_number)
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(10)
            assert victim.exitcode == -signal.SIGKILL
            assert written.value > 0, "the victim was killed while it was writing"
        after_kills = [counter.value for counter in counters]
        for counter, seen in zip(counters, after_kills, strict=True):
            wait_for_progress(counter, seen + 50)
        stop.set()
        for survivor in survivors:
            survivor.join(30)
            assert survivor.exitcode == 0
    finally:
        stop.set()
        for process in survivors:
            if process.is_alive():
                process.kill()
                process.join(5)
    reports = drain(results, len(survivors))
    assert all(error is None for _, error in reports), reports
    with sqlite3.connect(path) as checker:
        assert checker.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    checker.close()
    with SqliteStore(path) as store:
        assert store.reset("shared").after.state == "closed"


def test_a_trial_slower_than_its_lease_does_not_free_the_place_of_the_next_one(
    shared: Shared,
) -> None:
    """Limit 1: the slow trial loses its lease, a second trial takes the place, and the slow
    one's late success frees nothing and counts nothing: a third caller is still rejected."""
    lease = 2.5  # room for the steps between the second admission and the check, under load
    config = {"failure_threshold": 1, "timeout": lease, "success_threshold": 2}
    shared.store(seconds_ago=100).record_failure("shared", BreakerConfig(**config), None, "down")
    results = SPAWN.Queue()
    started = [SPAWN.Event(), SPAWN.Event()]
    finish = [SPAWN.Event(), SPAWN.Event()]

    def holder(index: int) -> Any:
        process = SPAWN.Process(
            target=store_workers.hold_trial,
            args=(shared.location, shared.prefix, config, started[index], finish[index], results),
        )
        process.start()
        return process

    processes = [holder(0)]
    try:
        assert started[0].wait(30)
        breaker = CircuitBreaker("shared", store=shared.store(), **config)
        with pytest.raises(CircuitBreakerError):
            breaker.call(lambda: "third")
        deadline = time.monotonic() + 30
        while not breaker.allows_call():  # the slow trial's lease ends
            assert time.monotonic() < deadline
            time.sleep(0.02)
        processes.append(holder(1))
        assert started[1].wait(30)
        finish[0].set()
        assert results.get(timeout=30) == "admitted", "the slow trial ran to its end"
        with pytest.raises(CircuitBreakerError) as rejected:
            breaker.call(lambda: "third")
        assert rejected.value.retry_after is not None
        assert 0 < rejected.value.retry_after <= lease
        stored = shared.store().load("shared")
        assert stored is not None
        assert (stored.snapshot.state, stored.snapshot.success_count) == ("half_open", 0)
        finish[1].set()
        assert results.get(timeout=30) == "admitted"
        stored = shared.store().load("shared")
        assert stored is not None
        assert stored.snapshot.success_count == 1, "the second trial's success counts"
    finally:
        for event in finish:
            event.set()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()


def test_the_place_of_a_killed_trial_holder_is_freed_under_traffic(shared: Shared) -> None:
    """Limit 2: one holder is SIGKILLed while another process keeps taking the other place; the
    dead holder's lease still ends on time (admissions do not extend it)."""
    lease = 1.0
    config = {
        "failure_threshold": 1, "timeout": lease, "half_open_max_calls": 2,
        "success_threshold": 10**6,
    }  # fmt: skip
    shared.store(seconds_ago=100).record_failure("shared", BreakerConfig(**config), None, "down")
    results, stop = SPAWN.Queue(), SPAWN.Event()
    victim = SPAWN.Process(
        target=store_workers.take_trial_and_hang,
        args=(shared.location, shared.prefix, config, results),
    )
    victim.start()
    traffic = None
    try:
        assert results.get(timeout=30) == "holding"
        killed = time.monotonic()
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        counts = SPAWN.Queue()  # the victim may have died holding the first queue's lock
        traffic = SPAWN.Process(
            target=store_workers.trial_traffic,
            args=(shared.location, shared.prefix, config, 0.05, stop, counts),
        )
        traffic.start()
        time.sleep(max(0.0, killed + lease + 0.3 - time.monotonic()))
        breaker = CircuitBreaker("shared", store=shared.store(), **config)
        for _ in range(5):
            with breaker:
                pass  # the dead place is free: admitted beside the traffic, every time
        stop.set()
        admitted, _ = counts.get(timeout=30)
        assert admitted > 0, "the traffic kept the other place busy"
        stored = shared.store().load("shared")
        assert stored is not None
        assert stored.snapshot.state == "half_open"
    finally:
        stop.set()
        for process in (victim, traffic):
            if process is not None:
                process.join(10)
                if process.is_alive():
                    process.kill()


def test_failures_during_a_redis_stop_are_counted_once_when_it_resumes(
    module_redis: RedisServer,
) -> None:
    """Redis is SIGSTOPped for 2 s under four failing processes: writes time out (some reached
    the server and are applied on SIGCONT), others fail fast; once Redis answers, the count in
    Redis is exactly the number of failures the processes raised: none lost, none twice."""
    prefix = f"stop{next(_prefixes)}:"
    barrier, results = SPAWN.Barrier(PROCESSES + 1), SPAWN.Queue()
    workers = [
        SPAWN.Process(
            target=store_workers.fail_through_an_outage,
            args=(module_redis.url, prefix, 0.02, 3.5, 0.05, barrier, results),
        )
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    server = module_redis._process
    assert server is not None
    try:
        barrier.wait(30)
        time.sleep(0.7)
        os.kill(server.pid, signal.SIGSTOP)
        time.sleep(2.0)
        os.kill(server.pid, signal.SIGCONT)
        reports = drain(results, PROCESSES)
    finally:
        os.kill(server.pid, signal.SIGCONT)
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    assert all(degraded for _, degraded in reports), "every process saw the outage"
    raised = sum(count for count, _ in reports)
    stored = RedisStore(module_redis.url, prefix=prefix).load("shared")
    assert stored is not None
    lost, twice = (
        max(0, raised - stored.snapshot.failure_count),
        max(0, stored.snapshot.failure_count - raised),
    )
    assert (lost, twice) == (0, 0), (
        f"{raised} failures raised, {stored.snapshot.failure_count} kept"
    )


def test_racing_processes_journal_one_record_per_transition_made_by_one_of_them(
    shared: Shared,
) -> None:
    threshold = 20
    barrier, results = SPAWN.Barrier(PROCESSES), SPAWN.Queue()
    run_all(
        store_workers.record_failures,
        [(shared.location, shared.prefix, threshold, 15, barrier, results)] * PROCESSES,
    )
    drain(results, PROCESSES)
    store = shared.store()
    store.reset("shared", None)
    events = store.events("shared")  # type: ignore[attr-defined]
    assert [(e.previous.value, e.state.value) for e in events] == [
        ("closed", "open"),
        ("open", "closed"),
    ]
    opened = events[0]
    assert opened.failures == threshold
    pid = int(opened.source.split("@")[0])
    assert pid != os.getpid(), "the opening was made, and journaled, by a worker process"
    assert events[1].source.startswith(f"{os.getpid()}@")


@pytest.mark.parametrize("view_max_age", [0.3, 0.0])
def test_an_open_and_a_reset_made_elsewhere_are_seen_within_the_view_max_age(
    shared: Shared, view_max_age: float
) -> None:
    """A worker succeeds in a loop on its local view of CLOSED; the test opens the circuit,
    then resets it, from this process. The worker must see each within the view's bound (plus
    a generous allowance for a loaded machine, still well under what a missed change costs)."""
    ready, results = SPAWN.Event(), SPAWN.Queue()
    worker = SPAWN.Process(
        target=store_workers.watch_for_changes,
        args=(shared.location, shared.prefix, view_max_age, ready, results),
    )
    worker.start()
    store = shared.store()
    config = BreakerConfig(failure_threshold=1, timeout=600.0)
    allowance = 1.5
    try:
        assert ready.wait(30), "the worker did not start"
        time.sleep(0.2)
        opened_at = time.time()
        store.record_failure("shared", config, None, "down elsewhere")
        kind, seen_at = results.get(timeout=30)
        assert kind == "rejected"
        assert seen_at - opened_at <= view_max_age + allowance
        time.sleep(0.2)
        reset_at = time.time()
        store.reset("shared", config)
        kind, seen_at = results.get(timeout=30)
        assert kind == "admitted"
        assert seen_at - reset_at <= view_max_age + allowance
    finally:
        worker.join(30)
        if worker.is_alive():
            worker.kill()
        store.close()


def test_a_hold_made_by_one_process_is_seen_by_another_and_ends_for_all_at_its_expiry(
    shared: Shared,
) -> None:
    results = SPAWN.Queue()
    run_all(store_workers.hold_open, [(shared.location, shared.prefix, 60.0, "drill", results)])
    assert results.get(timeout=30) == "held"
    run_all(store_workers.report_hold, [(shared.location, shared.prefix, results)])
    outcome, state, reason, owner = results.get(timeout=30)
    assert (outcome, state, reason) == ("rejected", "open", "drill")
    assert "@" in owner
    # A store whose clock is past the expiry: its first operation ends the hold, for everyone.
    later = shared.store(seconds_ago=-61)
    try:
        assert later.admit("held", BreakerConfig()).after.forced is False
    finally:
        later.close()
    run_all(store_workers.report_hold, [(shared.location, shared.prefix, results)])
    assert results.get(timeout=30) == ("admitted", "closed", None, None)


def test_a_window_shared_by_racing_processes_counts_every_call_exactly_once(
    shared: Shared,
) -> None:
    calls, every = 100, 4  # each process: 25 failures, 75 successes
    settings = {
        "failure_threshold": 10_000,
        "failure_rate_threshold": 0.5,
        "window_calls": 1000,
        "minimum_calls": 1000,
    }
    barrier, results = SPAWN.Barrier(PROCESSES), SPAWN.Queue()
    run_all(
        store_workers.record_window,
        [(shared.location, shared.prefix, settings, calls, every, barrier, results)] * PROCESSES,
    )
    reports = drain(results, PROCESSES)
    assert all(degraded is None for _, degraded in reports), "no process degraded"
    stored = shared.store().load("shared")
    assert stored is not None
    window = stored.snapshot
    assert window.window_count == PROCESSES * calls, "every success and failure is in the window"
    assert window.failure_bits.bit_count() == sum(raised for raised, _ in reports) == 100
    assert stored.config == BreakerConfig(**settings)


def test_a_time_window_shared_by_racing_processes_counts_every_call_exactly_once(
    shared: Shared,
) -> None:
    calls, every = 100, 4  # each process: 25 failures, 75 successes
    settings = {
        "failure_threshold": 10_000,
        "failure_rate_threshold": 0.5,
        "window_seconds": 600.0,  # no call leaves the window while the test runs
        "minimum_calls": 1000,
    }
    barrier, results = SPAWN.Barrier(PROCESSES), SPAWN.Queue()
    run_all(
        store_workers.record_window,
        [(shared.location, shared.prefix, settings, calls, every, barrier, results)] * PROCESSES,
    )
    reports = drain(results, PROCESSES)
    assert all(degraded is None for _, degraded in reports), "no process degraded"
    stored = shared.store().load("shared")
    assert stored is not None
    buckets = held_buckets(stored.snapshot)
    assert sum(b[1] for b in buckets) == PROCESSES * calls, "every call is in the window"
    assert sum(b[2] for b in buckets) == sum(raised for raised, _ in reports) == 100
    assert stored.config == BreakerConfig(**settings)
