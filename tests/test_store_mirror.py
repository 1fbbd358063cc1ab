"""The state file and the Redis Lua script agree with the pure functions, operation by operation.

Hypothesis draws sequences of operations (admit, outcomes with any permit seen so far, release,
reset, force, holds that expire, time passing); each is applied to the memory store (the pure
functions of cbctl.state under a lock: the reference) and to the store under test, and every
answer must be the same: the permit, and the snapshot after (times compared where the time bases
agree). Time moves in steps of 0.5 s against a timeout of 2.25 s (and a write-back leaves 0.75 s
or 1.25 s open), so no decision sits on a boundary that the few real milliseconds of a Redis
round trip could tip. With open-duration backoff on (BACKOFF: factor 1.5, cap 6.9 s, jitter
0.3), failures carry jitter draws and requested delays chosen so that no open duration ends on
the grid either (3.375, 5.0625, 6.9 s, shortened by 0, 15 or 27 %; delays 3.1 s or the cap).
With the rate policies on (WINDOW: the last 4 calls, 3 at least, half of them failed or three
quarters slow; TIME_WINDOW: the same over the last 5 s, in 0.5 s buckets, whose edges are the
grid's: a Redis call a few real milliseconds late still falls in the bucket the reference
chose), outcomes are marked slow by their (otherwise unused) outage's failure count.
Outcomes report with any permit seen so far, so stale permits (an earlier
generation, an expired or already ended lease) are drawn as often as current ones. A timed hold
lasts 1.75 s, off the 0.5 s grid, so its expiry is never a boundary either.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbctl import CircuitState, FakeClock
from cbctl.state import (
    BreakerConfig,
    CircuitStore,
    Outage,
    Permit,
    Snapshot,
    Update,
    held_buckets,
)
from cbctl.stores import MemoryStore
from cbctl.stores.redis import RedisStore
from cbctl.stores.sqlite import SqliteStore
from tests.servers import RedisServer

CONFIG = BreakerConfig(
    failure_threshold=2, timeout=2.25, success_threshold=2, half_open_max_calls=2
)
BACKOFF = BreakerConfig(
    failure_threshold=2,
    timeout=2.25,
    success_threshold=2,
    half_open_max_calls=2,
    backoff_factor=1.5,
    max_timeout=6.9,
    jitter=0.3,
)
WINDOW = BreakerConfig(
    failure_threshold=3,
    timeout=2.25,
    success_threshold=2,
    half_open_max_calls=2,
    failure_rate_threshold=0.5,
    window_calls=4,
    minimum_calls=3,
    slow_call_duration=1.0,
    slow_call_rate_threshold=0.75,
)
TIME_WINDOW = BreakerConfig(
    failure_threshold=3,
    timeout=2.25,
    success_threshold=2,
    half_open_max_calls=2,
    failure_rate_threshold=0.5,
    window_seconds=5.0,
    minimum_calls=3,
    slow_call_duration=1.0,
    slow_call_rate_threshold=0.75,
)
CONFIGS = (CONFIG, BACKOFF, WINDOW, TIME_WINDOW)
DRAWS = {0.5: 0.0, 1.0: 0.5, 2.5: 0.9}
"""A failure's jitter draw, by the (otherwise unused) step length it was drawn with."""
DELAYS = (None, None, 3.1, 20.0)
"""A failure's requested delay, by its (otherwise unused) outage's failure count."""
_circuits = itertools.count()
Step = tuple[str, int, float, tuple[str, int, float | None]]

# Kinds repeated to weight them: failures and admits are common, so circuits open, go half-open
# and close often; resets and forcing are rare, so they do not wash every sequence out.
KINDS = (
    ["admit"] * 12 + ["failure"] * 10 + ["success"] * 8 + ["advance"] * 8
    + ["release"] * 3 + ["reset"] * 2 + ["force_open", "force_closed"] + ["reconcile"] * 3
    + ["hold_open"] * 2 + ["hold_closed"] * 2
)  # fmt: skip
HOLD_FOR = 1.75
# A write-back after an outage: (generation the breaker saw, failures, seconds left open).
outage = st.tuples(
    st.sampled_from(["current", "stale", "unknown"]),
    st.integers(0, 3),
    st.sampled_from([None, None, 0.75, 1.25, 5.2, -1.0]),
)
# An outcome reports with the latest permit (-1) most of the time, or with any older one.
operation = st.tuples(
    st.sampled_from(KINDS),
    st.one_of(st.just(-1), st.just(-1), st.integers(0, 20)),
    st.sampled_from([0.5, 1.0, 2.5]),
    outage,
)
# Half the sequences start by opening the circuit and letting its timeout pass.
NO_OUTAGE = ("unknown", 0, None)
TO_HALF_OPEN: list[Step] = [
    ("failure", -1, 0.5, NO_OUTAGE),
    ("failure", -1, 0.5, NO_OUTAGE),
    ("advance", -1, 2.5, NO_OUTAGE),
]
operations = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from([[], TO_HALF_OPEN]),
    st.lists(operation, min_size=10, max_size=60),
)


def discrete(snapshot: Snapshot) -> tuple[object, ...]:
    return (
        snapshot.state,
        snapshot.failure_count,
        snapshot.success_count,
        snapshot.generation,
        tuple(lease for lease, _ in snapshot.leases),
        snapshot.trials_admitted,
        snapshot.forced,
        snapshot.last_error,
        snapshot.opened_at is None,
        snapshot.hold_until is None,
        snapshot.hold_reason,
        snapshot.hold_owner,
        snapshot.backoff,
        snapshot.open_duration is None,
        snapshot.window_count,
        snapshot.failure_bits,
        snapshot.slow_bits,
        relative_buckets(snapshot),
    )


def relative_buckets(snapshot: Snapshot) -> tuple[tuple[int, int, int, int], ...]:
    """A time window's buckets numbered from its newest (the stores' time bases differ)."""
    buckets = held_buckets(snapshot)
    return tuple((buckets[0][0] - number, *counts) for number, *counts in buckets)


def relative_times(update: Update) -> list[float]:
    """The opening time and lease deadlines as seconds from the operation's `now`."""
    after = update.after
    moments = [deadline for _, deadline in after.leases]
    if after.opened_at is not None:
        moments.append(after.opened_at)
    if after.hold_until is not None:
        moments.append(after.hold_until)
    return [moment - update.now for moment in moments]


def apply(
    store: CircuitStore,
    name: str,
    step: Step,
    permits: list[Permit | None],
    generation: int,
    config: BreakerConfig = CONFIG,
) -> Update:
    kind, index, length, (seen, failures, open_for) = step
    permit = permits[index % len(permits)]
    if kind == "reconcile":
        known = {"current": generation, "stale": generation - 1, "unknown": None}[seen]
        return store.reconcile(name, config, Outage(known, failures, open_for, "lost", ("x1",)))
    if kind == "admit":
        return store.admit(name, config)
    slow = failures % 2 == 1
    if kind == "success":
        return store.record_success(name, config, permit, slow)
    if kind == "failure":
        delay = DELAYS[failures]
        return store.record_failure(
            name, config, permit, f"error {index}", None, delay, DRAWS[length], slow
        )
    if kind == "release":
        return store.release(name, config, permit)
    if kind == "reset":
        return store.reset(name, config)
    target = CircuitState.OPEN if kind in ("force_open", "hold_open") else CircuitState.CLOSED
    if kind.startswith("hold"):
        return store.force(
            name, config, target, for_=HOLD_FOR, reason=f"drill {index}", owner="ops@host"
        )
    return store.force(name, config, target)


def check_mirror(
    store: CircuitStore,
    reference: MemoryStore,
    clock: FakeClock,
    steps: list[Step],
    config: BreakerConfig = CONFIG,
) -> set[CircuitState]:
    """Apply `steps` to both stores, compare every answer; return the states visited."""
    name = f"mirror-{next(_circuits)}"
    permits: list[Permit | None] = [None]
    visited = set()
    generation = 0
    for step in steps:
        if step[0] == "advance":
            clock.advance(step[2])
            continue
        expected: Update = apply(reference, name, step, permits, generation, config)
        actual: Update = apply(store, name, step, permits, generation, config)
        assert actual.permit == expected.permit, step
        assert discrete(actual.after) == discrete(expected.after), step
        assert relative_times(actual) == pytest.approx(relative_times(expected), abs=0.2), step
        # exact but for a written-back deadline, a difference of times (real ms apart in Redis)
        assert actual.after.open_duration == pytest.approx(
            expected.after.open_duration, abs=0.02
        ), step
        if step[0] == "admit" and expected.permit is not None:
            permits.append(expected.permit)
        visited.add(expected.after.state)
        generation = expected.after.generation
    return visited


@pytest.fixture(scope="module")
def mirror_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=operations, config=st.sampled_from(CONFIGS))
def test_the_state_file_mirrors_the_pure_functions(
    tmp_path: Path, steps: list[Step], config: BreakerConfig
) -> None:
    clock = FakeClock()
    with SqliteStore(tmp_path / f"mirror-{next(_circuits)}.db", clock=clock) as store:
        check_mirror(store, MemoryStore(clock), clock, steps, config)
        circuits = store.load_all()
    assert all(c.config == config for c in circuits)


@pytest.mark.slow
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=operations, config=st.sampled_from(CONFIGS))
def test_the_redis_script_mirrors_the_pure_functions(
    mirror_redis: RedisServer, steps: list[Step], config: BreakerConfig
) -> None:
    clock = FakeClock()
    start = RedisStore(mirror_redis.url).clock_now()
    store = RedisStore(
        mirror_redis.url,
        prefix=f"run{next(_circuits)}:",
        time_offset=lambda: clock.wall() - start,
    )
    try:
        check_mirror(store, MemoryStore(clock), clock, steps, config)
        circuits = store.load_all()
    finally:
        store.close()
    assert all(c.config == config for c in circuits)


EXPIRING_HOLD: list[Step] = [
    ("hold_open", 3, 0.5, NO_OUTAGE),
    ("admit", -1, 0.5, NO_OUTAGE),
    ("advance", -1, 1.0, NO_OUTAGE),
    ("admit", -1, 0.5, NO_OUTAGE),
    ("advance", -1, 1.0, NO_OUTAGE),
    ("admit", -1, 0.5, NO_OUTAGE),
    ("hold_closed", 4, 0.5, NO_OUTAGE),
    ("failure", 0, 0.5, NO_OUTAGE),
    ("failure", 0, 0.5, NO_OUTAGE),
    ("advance", -1, 2.5, NO_OUTAGE),
    ("failure", 0, 0.5, NO_OUTAGE),
]


def test_the_state_file_ends_an_expired_hold_like_the_pure_functions(tmp_path: Path) -> None:
    clock = FakeClock()
    with SqliteStore(tmp_path / "mirror.db", clock=clock) as store:
        check_mirror(store, MemoryStore(clock), clock, EXPIRING_HOLD)
        after = store.load_all()[0].snapshot
    assert (after.state, after.forced, after.failure_count) == (CircuitState.CLOSED, False, 1)


@pytest.mark.slow
def test_the_redis_script_ends_an_expired_hold_like_the_pure_functions(
    mirror_redis: RedisServer,
) -> None:
    clock = FakeClock()
    start = RedisStore(mirror_redis.url).clock_now()
    store = RedisStore(mirror_redis.url, time_offset=lambda: clock.wall() - start)
    try:
        check_mirror(store, MemoryStore(clock), clock, EXPIRING_HOLD)
        after = store.load_all()[-1].snapshot
    finally:
        store.close()
    assert (after.state, after.forced, after.failure_count) == (CircuitState.CLOSED, False, 1)


SLOW = ("unknown", 1, None)
WINDOW_EDGES: list[Step] = [
    ("success", 0, 0.5, NO_OUTAGE),
    ("failure", 0, 0.5, NO_OUTAGE),
    ("success", 0, 0.5, NO_OUTAGE),
    ("failure", 0, 0.5, NO_OUTAGE),  # 2 of the last 4 failed: exactly the threshold, opens
    ("advance", -1, 2.5, NO_OUTAGE),
    ("admit", -1, 0.5, NO_OUTAGE),
    ("success", -1, 0.5, NO_OUTAGE),
    ("admit", -1, 0.5, NO_OUTAGE),
    ("success", -1, 0.5, NO_OUTAGE),  # closed again, the window empty
    ("success", 0, 0.5, SLOW),
    ("failure", 0, 0.5, NO_OUTAGE),
    ("success", 0, 0.5, SLOW),
    ("success", 0, 0.5, NO_OUTAGE),
    ("success", 0, 0.5, NO_OUTAGE),  # the first slow call and the failure fall out
    ("success", 0, 0.5, SLOW),
    ("success", 0, 0.5, SLOW),
    ("success", 0, 0.5, SLOW),  # 3 of the last 4 slow, though all succeeded: opens
]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=pytest.mark.slow)])
def test_stores_count_the_window_at_its_edges_like_the_pure_functions(
    tmp_path: Path, mirror_redis: RedisServer, kind: str
) -> None:
    clock = FakeClock()
    if kind == "sqlite":
        store: CircuitStore = SqliteStore(tmp_path / "window.db", clock=clock)
    else:
        start = RedisStore(mirror_redis.url).clock_now()
        store = RedisStore(
            mirror_redis.url, prefix="edges:", time_offset=lambda: clock.wall() - start
        )
    try:
        visited = check_mirror(store, MemoryStore(clock), clock, WINDOW_EDGES, WINDOW)
        after = store.load_all()[-1]
    finally:
        store.close()
    assert CircuitState.HALF_OPEN in visited
    assert after.snapshot.state is CircuitState.OPEN
    assert after.config == WINDOW


TIME_EDGES: list[Step] = [
    ("success", 0, 0.5, NO_OUTAGE),
    ("success", 0, 0.5, NO_OUTAGE),
    ("failure", 0, 0.5, NO_OUTAGE),
    ("advance", -1, 2.5, NO_OUTAGE),
    ("advance", -1, 2.5, NO_OUTAGE),  # 5 s on: the bucket of those three has left the window
    ("success", 0, 0.5, NO_OUTAGE),
    ("failure", 0, 0.5, NO_OUTAGE),  # 2 held, below minimum_calls
    ("success", 0, 0.5, SLOW),
    ("failure", 0, 0.5, NO_OUTAGE),  # 2 of the 4 held failed: the threshold, opens (3 of 7 kept)
    ("advance", -1, 2.5, NO_OUTAGE),
    ("admit", -1, 0.5, NO_OUTAGE),
    ("success", -1, 0.5, NO_OUTAGE),
    ("admit", -1, 0.5, NO_OUTAGE),
    ("success", -1, 0.5, NO_OUTAGE),  # closed again, the window empty
    ("failure", 0, 0.5, NO_OUTAGE),
    ("success", 0, 0.5, NO_OUTAGE),
    *[("advance", -1, 2.5, NO_OUTAGE)] * 4,  # a 10 s idle gap empties the window
    ("failure", 0, 0.5, NO_OUTAGE),
    ("success", 0, 0.5, SLOW),
    ("success", 0, 0.5, SLOW),
    ("success", 0, 0.5, SLOW),  # 3 of the 4 held slow, though all succeeded: opens
]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=pytest.mark.slow)])
def test_stores_count_the_time_window_at_its_edges_like_the_pure_functions(
    tmp_path: Path, mirror_redis: RedisServer, kind: str
) -> None:
    clock = FakeClock()
    if kind == "sqlite":
        store: CircuitStore = SqliteStore(tmp_path / "window.db", clock=clock)
    else:
        start = RedisStore(mirror_redis.url).clock_now()
        store = RedisStore(
            mirror_redis.url, prefix="time-edges:", time_offset=lambda: clock.wall() - start
        )
    try:
        visited = check_mirror(store, MemoryStore(clock), clock, TIME_EDGES, TIME_WINDOW)
        after = store.load_all()[-1]
    finally:
        store.close()
    assert CircuitState.HALF_OPEN in visited
    assert after.snapshot.state is CircuitState.OPEN
    assert after.config == TIME_WINDOW
