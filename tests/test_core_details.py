"""Details of the core that a mutation run (tests/tools/mutate.py) showed no other test held:
records are frozen, settings keep their types, a fresh circuit starts empty, time bases shift the
right way, and a steady CLOSED circuit with a store does not write."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from cbctl import CircuitBreaker, FakeClock
from cbctl import state as machine
from cbctl.breaker import CallCounters, StateChange
from cbctl.errors import ConfigError
from cbctl.failures import as_rules
from cbctl.state import (
    BreakerConfig,
    CircuitState,
    Outage,
    Snapshot,
    StoredCircuit,
    Update,
)
from cbctl.stores import MemoryStore


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (BreakerConfig(), "timeout"),
        (Snapshot(), "failure_count"),
        (machine.admit(Snapshot(), BreakerConfig(), 0.0)[1], "generation"),
        (Update(Snapshot(), Snapshot(), 0.0), "now"),
        (StoredCircuit("dep", Snapshot(), BreakerConfig(), 0.0), "name"),
        (Outage(known_generation=0), "failures"),
        (CallCounters(0, 0, 0, 0), "successes"),
    ],
)
def test_the_cores_records_are_frozen(record: Any, field: str) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(record, field, 1)


def test_a_whole_number_timeout_becomes_float_seconds_in_json() -> None:
    config = BreakerConfig(timeout=3)
    assert type(config.timeout) is float
    assert json.dumps(config.as_dict()) == json.dumps(
        {
            "failure_threshold": 5,
            "timeout": 3.0,
            "success_threshold": 2,
            "half_open_max_calls": 1,
            "backoff_factor": 1.0,
            "max_timeout": None,
            "jitter": 0.0,
            "call_timeout": None,
            "failure_rate_threshold": None,
            "window_calls": None,
            "minimum_calls": None,
            "slow_call_duration": None,
            "slow_call_rate_threshold": None,
            "window_seconds": None,
        }
    )


def test_a_new_circuit_is_closed_with_nothing_counted_and_no_times() -> None:
    fresh = Snapshot()
    assert fresh == machine.INITIAL
    assert (fresh.state, fresh.failure_count, fresh.success_count, fresh.forced) == (
        CircuitState.CLOSED,
        0,
        0,
        False,
    )
    assert (fresh.opened_at, fresh.changed_at, fresh.last_failure_at, fresh.last_error) == (
        None,
        None,
        None,
        None,
    )


def test_a_new_breakers_stats_show_no_failure_no_opening_and_no_error() -> None:
    stats = CircuitBreaker("dep", clock=FakeClock()).stats
    assert {k: stats[k] for k in ("failure_count", "success_count", "opened_at")} == {
        "failure_count": 0,
        "success_count": 0,
        "opened_at": None,
    }
    assert (stats["last_failure"], stats["last_error"], stats["forced"]) == (None, None, False)


def test_rebase_moves_the_keepers_times_by_delta_and_keeps_wall_times_and_gaps() -> None:
    snapshot = Snapshot(
        state=CircuitState.OPEN,
        opened_at=100.0,
        changed_at=100.0,
        last_failure_at=5000.0,
        leases=((1, 130.0), (2, 135.0)),
    )
    moved = machine.rebase(snapshot, -40.0)
    assert (moved.opened_at, moved.changed_at) == (60.0, 60.0)
    assert moved.leases == ((1, 90.0), (2, 95.0))
    assert moved.last_failure_at == 5000.0
    assert machine.rebase(Snapshot(), 7.0).opened_at is None
    config = BreakerConfig(timeout=30.0)
    assert machine.retry_after(moved, config, 70.0) == machine.retry_after(snapshot, config, 110.0)


def test_an_outage_in_which_nothing_happened_writes_nothing_back() -> None:
    closed = Snapshot(generation=3, failure_count=1, changed_at=10.0)
    quiet = Outage(known_generation=3)
    assert (quiet.failures, quiet.open_for, quiet.ops) == (0, None, ())
    assert machine.reconcile(closed, BreakerConfig(), quiet, 50.0) == closed
    failed = machine.reconcile(closed, BreakerConfig(), Outage(3, failures=2), 50.0)
    assert (failed.failure_count, failed.last_error) == (3, None)


HALF_OPEN_ONE_PLACE = BreakerConfig(timeout=10.0, success_threshold=1, half_open_max_calls=1)


def half_open_trial(at: float) -> tuple[Snapshot, machine.Permit]:
    opened = Snapshot(state=CircuitState.OPEN, generation=1, opened_at=at - 10.0)
    snapshot, permit = machine.admit(opened, HALF_OPEN_ONE_PLACE, at)
    assert permit is not None
    assert snapshot.state is CircuitState.HALF_OPEN
    return snapshot, permit


def test_a_trial_reporting_at_the_very_end_of_its_lease_no_longer_counts() -> None:
    snapshot, permit = half_open_trial(at=100.0)
    assert machine.live_leases(snapshot, 110.0) == (), "the place is free at the lease's end"
    late = machine.record_success(snapshot, HALF_OPEN_ONE_PLACE, permit, 110.0)
    assert late.state is CircuitState.HALF_OPEN
    in_time = machine.record_success(snapshot, HALF_OPEN_ONE_PLACE, permit, 109.9)
    assert in_time.state is CircuitState.CLOSED


def test_a_full_half_open_circuit_says_when_its_earliest_lease_ends() -> None:
    snapshot, _ = half_open_trial(at=100.0)
    assert machine.retry_after(snapshot, HALF_OPEN_ONE_PLACE, 109.5) == pytest.approx(0.5)
    assert machine.retry_after(snapshot, HALF_OPEN_ONE_PLACE, 110.0) is None


def test_a_half_open_record_without_a_trial_count_still_admits_real_trials() -> None:
    decoded = Snapshot(state=CircuitState.HALF_OPEN, generation=2)  # as an old record reads
    _, permit = machine.admit(decoded, HALF_OPEN_ONE_PLACE, 0.0)
    assert permit is not None
    assert permit.trial


RECONCILE = BreakerConfig(failure_threshold=5, timeout=10.0)


@pytest.mark.parametrize(
    ("outage", "applied", "expected"),
    [
        (Outage(3, failures=3), 1, ("closed", 2, None)),
        (Outage(3, failures=1), 0, ("closed", 1, None)),
        (Outage(3, failures=2), 2, ("closed", 0, None)),
        (Outage(3, failures=1), 3, ("closed", 0, None)),
        (Outage(3, open_for=0.5), 0, ("open", 0, 90.5)),
        (Outage(3, open_for=10.0), 0, ("open", 0, 100.0)),
        (Outage(3, open_for=50.0), 0, ("open", 0, 100.0)),
        (Outage(3, open_for=0.0), 0, ("closed", 0, None)),
        (Outage(3, open_for=-0.5), 0, ("closed", 0, None)),
    ],
    ids=[
        "applied-failures-count-once",
        "one-failure",
        "all-applied",
        "more-applied-than-known",
        "open-keeps-its-remaining-time",
        "open-for-a-full-timeout",
        "open-for-longer-than-a-timeout-is-one-timeout",
        "open-with-no-time-left",
        "open-for-negative-time",
    ],
)
def test_write_back_after_an_outage(
    outage: Outage, applied: int, expected: tuple[str, int, float | None]
) -> None:
    closed = Snapshot(generation=3, changed_at=50.0)
    after = machine.reconcile(closed, RECONCILE, outage, 100.0, applied)
    assert (after.state.value, after.failure_count, after.opened_at) == expected


def test_failures_written_back_at_the_threshold_open_the_circuit_with_their_error() -> None:
    closed = Snapshot(generation=3, failure_count=1, changed_at=50.0)
    outage = Outage(3, failures=4, error="Boom: down")
    after = machine.reconcile(closed, RECONCILE, outage, 100.0)
    assert (after.state, after.failure_count, after.success_count) == (CircuitState.OPEN, 5, 0)
    assert (after.opened_at, after.last_failure_at, after.last_error) == (
        100.0,
        100.0,
        "Boom: down",
    )


@pytest.mark.parametrize(
    ("held_from", "outage", "expected"),
    [
        (95.0, Outage(3, open_for=8.0), 98.0),
        (99.0, Outage(3, open_for=5.0), 99.0),
        (95.0, Outage(3, failures=2), 95.0),
    ],
    ids=["the-later-deadline-wins", "the-stores-later-deadline-stays", "failures-only"],
)
def test_an_open_circuit_keeps_the_later_of_two_deadlines_after_an_outage(
    held_from: float, outage: Outage, expected: float
) -> None:
    opened = Snapshot(state=CircuitState.OPEN, generation=3, opened_at=held_from)
    after = machine.reconcile(opened, RECONCILE, outage, 100.0)
    assert (after.state, after.opened_at, after.failure_count) == (CircuitState.OPEN, expected, 0)


def test_a_half_open_circuit_takes_nothing_from_an_outage() -> None:
    trying = Snapshot(state=CircuitState.HALF_OPEN, generation=3, leases=((1, 105.0),))
    for outage in (Outage(3, failures=9), Outage(3, open_for=5.0)):
        assert machine.reconcile(trying, RECONCILE, outage, 100.0) == trying


def test_a_circuit_cannot_be_forced_half_open() -> None:
    with pytest.raises(ValueError, match="not half-open"):
        machine.force(Snapshot(), CircuitState.HALF_OPEN, 0.0)


class CountingStore(MemoryStore):
    """A memory store that counts the writes it is asked for."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.writes: list[str] = []

    def record_success(self, *args: Any) -> Update:
        self.writes.append("success")
        return super().record_success(*args)

    def record_failure(self, *args: Any) -> Update:
        self.writes.append("failure")
        return super().record_failure(*args)


def test_steady_closed_successes_through_a_store_write_nothing() -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    breaker = CircuitBreaker("dep", clock=clock, store=store, failure_threshold=3)
    for _ in range(5):
        assert breaker.call(lambda: "ok") == "ok"
    assert store.writes == []
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    breaker.call(lambda: "ok")
    breaker.call(lambda: "ok")
    assert store.writes == ["failure", "success"], "only the success that clears a failure writes"


@pytest.mark.parametrize("view_max_age", [1.0, 0.0], ids=["view", "no-view"])
@pytest.mark.parametrize("form", ["sync", "async"])
def test_closed_successes_with_no_failure_to_clear_write_nothing(
    view_max_age: float, form: str
) -> None:
    """Without a view each call carries the store's CLOSED permit: its success still writes
    nothing unless there is a failure to clear."""
    clock = FakeClock()
    store = CountingStore(clock)
    breaker = CircuitBreaker(
        "dep", clock=clock, store=store, failure_threshold=3, view_max_age=view_max_age
    )

    async def ok() -> str:
        return "ok"

    def succeed() -> None:
        if form == "sync":
            breaker.call(lambda: "ok")
        else:
            asyncio.run(breaker.call_async(ok))

    for _ in range(3):
        succeed()
    assert store.writes == []
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    succeed()
    succeed()
    assert store.writes == ["failure", "success"]


def test_a_success_admitted_by_the_view_clears_a_failure_recorded_meanwhile() -> None:
    """A call the view admitted (no permit) that ends well after another call failed clears
    that failure in the store, as any CLOSED success does."""
    clock = FakeClock()
    store = CountingStore(clock)
    breaker = CircuitBreaker("dep", clock=clock, store=store, failure_threshold=3)
    breaker.call(lambda: "ok")
    with breaker, pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    found = store.load("dep")
    assert found is not None
    assert found.snapshot.failure_count == 0
    assert store.writes == ["failure", "success"]


class Boom(Exception):
    pass


def fail() -> None:
    raise Boom("down")


def test_a_breaker_shows_its_name_state_and_settings() -> None:
    breaker = CircuitBreaker(
        "dep", clock=FakeClock(), failure_threshold=4, timeout=7, success_threshold=3
    )
    assert repr(breaker) == "<CircuitBreaker 'dep' closed>"
    assert (breaker.failure_threshold, breaker.timeout, breaker.success_threshold) == (4, 7.0, 3)
    assert breaker.failure_rules is None
    assert CircuitBreaker("pg", kind="postgresql").failure_rules == as_rules("postgresql")


def test_a_transition_event_is_frozen() -> None:
    events: list[StateChange] = []
    breaker = CircuitBreaker("dep", clock=FakeClock(), failure_threshold=1)
    breaker.add_listener(events.append)
    with pytest.raises(Boom):
        breaker.call(fail)
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].state = CircuitState.CLOSED  # type: ignore[misc]


def test_with_gives_the_breaker_and_a_stray_exit_is_refused() -> None:
    breaker = CircuitBreaker("dep", clock=FakeClock())
    with breaker as entered:
        assert entered is breaker
    with pytest.raises(RuntimeError, match="exited without being entered"):
        breaker.__exit__(None, None, None)


def test_nested_with_blocks_each_settle_their_own_permit() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("dep", clock=clock, store=MemoryStore(clock), failure_threshold=5)
    with breaker:
        breaker.reset()  # the outer block's permit is now of an earlier generation
        with pytest.raises(Boom), breaker:
            fail()
        assert breaker.stats["failure_count"] == 1, "the inner block's own, current permit"


def test_breakers_with_equal_settings_share_one_config_and_bad_settings_are_still_refused() -> None:
    first = CircuitBreaker("a", failure_threshold=3)
    assert CircuitBreaker("b", failure_threshold=3).config is first.config
    assert CircuitBreaker("c", failure_threshold=4).config.failure_threshold == 4
    with pytest.raises(ConfigError, match="whole number"):
        CircuitBreaker("d", failure_threshold=True)  # equal to 1 as a key; refused all the same
    with pytest.raises(ConfigError, match="whole number"):
        CircuitBreaker("e", failure_threshold=3.0)  # type: ignore[arg-type]
