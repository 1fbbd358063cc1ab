"""Every documented limit of the core holds at its edge: the largest value it names is taken,
the next one is refused by name, and settings are kept in the one form every store shows.

A mutation run (tests/tools/mutate.py) found these edges held nowhere else: off-by-one limits
and skipped normalisations pass every test that stays well inside the range."""

from __future__ import annotations

from typing import Any

import pytest

from cbctl import CircuitBreaker, CircuitBreakerError, FakeClock
from cbctl import state as machine
from cbctl.breaker import VIEW_MAX_AGE
from cbctl.errors import ConfigError
from cbctl.state import (
    MAX_HOLD_SECONDS,
    MAX_REASON,
    MAX_WINDOW_CALLS,
    MIN_WINDOW_SECONDS,
    WINDOW_BUCKETS,
    BreakerConfig,
    Snapshot,
)
from cbctl.stores import MemoryStore

DAY = 86400.0


def test_the_documented_limits_are_a_month_200_characters_10000_calls_and_100_ms() -> None:
    assert (MAX_HOLD_SECONDS, MAX_REASON, MAX_WINDOW_CALLS) == (30 * DAY, 200, 10_000)
    assert (MIN_WINDOW_SECONDS, WINDOW_BUCKETS, VIEW_MAX_AGE) == (0.1, 10, 1.0)


def test_a_hold_may_last_exactly_a_month_with_a_reason_of_exactly_200_characters() -> None:
    assert machine.hold_terms(MAX_HOLD_SECONDS, "r" * MAX_REASON) == (
        MAX_HOLD_SECONDS,
        "r" * MAX_REASON,
    )
    with pytest.raises(ConfigError, match="for_ must be at most"):
        machine.hold_terms(MAX_HOLD_SECONDS + 1, None)
    with pytest.raises(ConfigError, match="reason must be at most 200 characters, got 201"):
        machine.hold_terms(None, "r" * (MAX_REASON + 1))


def test_a_hold_reason_is_measured_and_kept_without_surrounding_blanks() -> None:
    padded = "  " + "r" * MAX_REASON + "\n"
    assert machine.hold_terms(None, padded) == (None, "r" * MAX_REASON)
    assert machine.hold_terms(60, "   ") == (60.0, None)
    assert machine.hold_terms(None, None) == (None, None)


@pytest.mark.parametrize("reason", [42, b"bytes", ["why"]])
def test_a_hold_reason_that_is_not_text_is_refused_by_its_type(reason: object) -> None:
    with pytest.raises(ConfigError, match=f"reason must be text, got {type(reason).__name__}"):
        machine.hold_terms(None, reason)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"window_calls": MAX_WINDOW_CALLS + 1}, "window_calls must be at most 10000, got 10001"),
        ({"window_seconds": 0.099}, "window_seconds must be at least 0.1, got 0.099"),
        ({"window_calls": 10, "minimum_calls": 11}, r"at most window_calls \(10\), got 11"),
        ({"window_calls": 10, "minimum_calls": 0}, "minimum_calls must be at least 1"),
        ({"window_calls": 10, "failure_rate_threshold": 1.0001}, "above 0 and at most 1"),
    ],
)
def test_each_window_limit_refuses_the_first_value_past_it(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        BreakerConfig(**{"failure_rate_threshold": 0.5, **settings})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_timeout": MAX_HOLD_SECONDS + 1}, "max_timeout must be at least timeout"),
        ({"max_timeout": 29.999}, r"max_timeout must be at least timeout \(30\)"),
        ({"backoff_factor": 0.999}, "backoff_factor must be at least 1, got 0.999"),
    ],
)
def test_each_backoff_limit_refuses_the_first_value_past_it(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        BreakerConfig(**settings)


def test_each_window_and_backoff_limit_takes_its_own_edge() -> None:
    count = BreakerConfig(window_calls=MAX_WINDOW_CALLS, failure_rate_threshold=1.0)
    assert (count.window_calls, count.failure_rate_threshold, count.least_calls) == (
        MAX_WINDOW_CALLS,
        1.0,
        MAX_WINDOW_CALLS,
    )
    timed = BreakerConfig(
        window_seconds=MIN_WINDOW_SECONDS, slow_call_rate_threshold=1.0, slow_call_duration=0.5
    )
    assert (timed.window_seconds, timed.least_calls) == (MIN_WINDOW_SECONDS, 100)
    assert BreakerConfig(max_timeout=30.0).open_cap == 30.0
    assert BreakerConfig(max_timeout=MAX_HOLD_SECONDS).open_cap == MAX_HOLD_SECONDS
    both = BreakerConfig(window_calls=10, minimum_calls=10, failure_rate_threshold=0.5)
    assert both.least_calls == 10
    assert (
        BreakerConfig(window_calls=10, minimum_calls=1, failure_rate_threshold=0.5).least_calls == 1
    )
    plain = BreakerConfig(backoff_factor=1, jitter=0)
    assert (plain.backs_off, plain.open_cap) == (False, 30.0)
    assert BreakerConfig(jitter=0.9999999).jitter == 0.9999999


@pytest.mark.parametrize(
    ("settings", "backs_off", "open_cap"),
    [
        ({}, False, 30.0),
        ({"backoff_factor": 1.5}, True, 300.0),
        ({"jitter": 0.1}, True, 30.0),
        ({"max_timeout": 45}, True, 45.0),
        ({"backoff_factor": 2, "max_timeout": 90}, True, 90.0),
    ],
)
def test_backoff_is_on_with_any_of_its_settings_and_stops_at_its_cap(
    settings: dict[str, Any], backs_off: bool, open_cap: float
) -> None:
    config = BreakerConfig(**settings)
    assert (config.backs_off, config.open_cap) == (backs_off, open_cap)


@pytest.mark.parametrize(
    "settings",
    [
        {"timeout": 3, "call_timeout": 2, "backoff_factor": 2, "jitter": 0, "max_timeout": 60},
        {
            "window_calls": 10,
            "failure_rate_threshold": 1,
            "slow_call_rate_threshold": 1,
            "slow_call_duration": 4,
        },
        {"window_seconds": 60, "failure_rate_threshold": 1},
    ],
)
def test_whole_number_settings_in_seconds_or_rates_are_kept_as_floats(
    settings: dict[str, Any],
) -> None:
    """The state file, Redis and JSON show a setting as the float it is, whatever was passed."""
    config = BreakerConfig(**settings)
    for name, value in settings.items():
        kept = getattr(config, name)
        assert kept == value
        assert type(kept) is (int if name == "window_calls" else float), (
            f"{name} kept as {type(kept).__name__}"
        )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"failure_rate_threshold": 0.5}, "failure_rate_threshold needs window_calls"),
        ({"slow_call_rate_threshold": 0.5}, "slow_call_rate_threshold needs window_calls"),
        ({"minimum_calls": 5}, "minimum_calls needs window_calls or window_seconds"),
        ({"window_seconds": 10}, "window_seconds needs failure_rate_threshold"),
        ({"window_calls": 10, "window_seconds": 10.0}, "two kinds of window; set one of them"),
        (
            {"window_seconds": 10, "failure_rate_threshold": 0.5, "slow_call_duration": 1},
            "slow_call_duration needs slow_call_rate_threshold",
        ),
    ],
)
def test_a_policy_setting_without_what_it_needs_is_refused_naming_both(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        BreakerConfig(**settings)


def test_unknown_settings_from_a_mapping_are_refused_by_name_and_known_ones_keep_the_base() -> None:
    base = BreakerConfig(failure_threshold=9)
    assert BreakerConfig.from_mapping({"timeout": 5}, base) == BreakerConfig(
        failure_threshold=9, timeout=5.0
    )
    assert BreakerConfig.from_mapping({}) == BreakerConfig()
    with pytest.raises(ConfigError, match=r"unknown breaker setting 'retries' \(known: backoff"):
        BreakerConfig.from_mapping({"timeout": 5, "retries": 3, "zzz": 1})


# -- the text forms stores keep ------------------------------------------------------------------


def test_window_marks_reach_the_last_call_of_the_largest_window_and_no_further() -> None:
    last = 1 << (MAX_WINDOW_CALLS - 1)
    assert machine.decode_marks(machine.encode_marks(last | 5)) == last | 5
    assert machine.encode_marks(0b1011) == "0 1 3"
    assert machine.decode_marks("") == 0
    for outside in (str(MAX_WINDOW_CALLS), "-1"):
        with pytest.raises(ValueError, match="outside any window"):
            machine.decode_marks(outside)


def test_ten_buckets_are_a_time_window_and_eleven_are_not() -> None:
    ten = " ".join(f"{100 - i}:2:2:2" for i in range(WINDOW_BUCKETS))
    packed = machine.decode_buckets(ten)
    assert machine.encode_buckets(packed) == ten
    assert len(machine.held_buckets(Snapshot(window_buckets=packed))) == WINDOW_BUCKETS
    with pytest.raises(ValueError, match="at most ten"):
        machine.decode_buckets(ten + " 50:1:0:0")
    with pytest.raises(ValueError, match="more failed or slow calls than calls"):
        machine.decode_buckets("7:0:0:0")
    with pytest.raises(ValueError, match="more failed or slow calls"):
        machine.decode_buckets("7:1:0:2")
    with pytest.raises(ValueError, match="more failed or slow calls"):
        machine.decode_buckets("7:1:-1:0")
    assert machine.decode_buckets("") == ()


def test_leases_survive_their_text_form_exactly() -> None:
    leases = ((1, 30.125), (2, 1e-9), (13, 1767225600.123456))
    assert machine.decode_leases(machine.encode_leases(leases)) == leases
    assert machine.encode_leases(((3, 4.5),)) == "3:4.5"
    assert machine.decode_leases("") == ()


# -- the view of a store-backed breaker ------------------------------------------------------------


def test_a_store_backed_breaker_sees_another_process_open_the_circuit_within_one_second() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    ours = CircuitBreaker("db", clock=clock, store=store)
    theirs = CircuitBreaker("db", clock=clock, store=store, view_max_age=0.0)
    assert ours.call(lambda: "ok") == "ok"  # the view: CLOSED with no failures, trusted for 1 s
    theirs.force_open()
    clock.advance(VIEW_MAX_AGE - 0.01)
    assert ours.call(lambda: "ok") == "ok", "within its max age the view is trusted"
    assert ours.allows_call()
    clock.advance(0.01)
    assert not ours.allows_call()
    with pytest.raises(CircuitBreakerError):
        ours.call(lambda: "ok")


def test_a_circuit_not_held_shows_no_hold_reason_owner_or_expiry() -> None:
    held = machine.force(Snapshot(), machine.OPEN, 0.0, until=60.0, reason="r", owner="o")
    assert machine.hold_stats(held, "soon") == {
        "hold_reason": "r",
        "hold_owner": "o",
        "hold_until": "soon",
    }
    ended = machine.reset(held, 1.0)
    assert machine.hold_stats(ended, "soon") == {
        "hold_reason": None,
        "hold_owner": None,
        "hold_until": None,
    }
    breaker = CircuitBreaker("api", clock=FakeClock())
    breaker.force_open(for_=60, reason="maintenance")
    breaker.reset()
    stats = breaker.stats
    assert (stats["hold_reason"], stats["hold_owner"], stats["hold_until"]) == (None, None, None)


def test_a_time_window_text_with_a_negative_slow_count_or_a_repeated_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="more failed or slow calls"):
        machine.decode_buckets("7:1:0:-1")
    with pytest.raises(ValueError, match="newest first"):
        machine.decode_buckets("7:1:0:0 7:1:0:0")
    with pytest.raises(ValueError, match="newest first"):
        machine.decode_buckets("6:1:0:0 7:1:0:0")


def test_a_fresh_snapshot_holds_no_hold_and_no_backoff() -> None:
    fresh = Snapshot()
    assert (fresh.hold_until, fresh.hold_reason, fresh.hold_owner) == (None, None, None)
    assert (fresh.backoff, fresh.open_duration, fresh.trials_admitted) == (None, None, 0)


def test_counting_fast_successes_changes_only_a_closed_circuits_window() -> None:
    windowed = BreakerConfig(window_calls=10, failure_rate_threshold=0.5)
    opened = machine.force(Snapshot(), machine.OPEN, 0.0)
    assert machine.count_calls(opened, windowed, 5) is opened
    plain = BreakerConfig()
    closed = Snapshot()
    assert machine.count_calls(closed, plain, 5) is closed, "no window: nothing to count in"
    assert machine.count_calls(closed, windowed, 0) is closed
    counted = machine.count_calls(closed, windowed, 4)
    assert (counted.window_count, counted.failure_bits) == (4, 0)


def test_window_rates_are_none_without_a_window_and_each_rate_only_with_its_policy() -> None:
    assert machine.window_rates(Snapshot(), BreakerConfig()) == (None, None)
    slow_only = BreakerConfig(window_calls=4, slow_call_rate_threshold=0.5, slow_call_duration=1)
    held = Snapshot(window_count=4, failure_bits=0b0011, slow_bits=0b0001)
    assert machine.window_rates(held, slow_only) == (None, 0.25)
    failures_only = BreakerConfig(window_calls=4, failure_rate_threshold=0.5)
    assert machine.window_rates(held, failures_only) == (0.5, None)


def test_a_reader_whose_clock_lags_the_writers_drops_what_the_writer_dropped() -> None:
    """Buckets are counted back from the newest one the window holds, even when the reader's
    `now` falls in an older bucket (another process's clock is behind)."""
    config = BreakerConfig(window_seconds=10.0, failure_rate_threshold=0.5, minimum_calls=1)
    packed = machine.decode_buckets("100:1:1:1 90:3:0:0")
    snapshot = Snapshot(window_buckets=packed)
    assert machine.window_rates(snapshot, config, now=95.5) == (1.0, None)
    assert machine.window_rates(snapshot, config, now=100.5) == (1.0, None)
    assert machine.window_rates(snapshot, config) == (0.25, None), "no now: every bucket held"


def test_a_circuit_without_backoff_opens_and_reopens_with_no_backoff_fields() -> None:
    config = BreakerConfig(failure_threshold=1)
    opened = machine.record_failure(Snapshot(), config, None, 0.0, 0.0, "down")
    assert (opened.state, opened.backoff, opened.open_duration) == (machine.OPEN, None, None)
    trial, permit = machine.admit(opened, config, 30.0)
    again = machine.record_failure(trial, config, permit, 31.0, 31.0, "down")
    assert (again.state, again.backoff, again.open_duration) == (machine.OPEN, None, None)


def test_a_sub_second_open_asks_for_no_delay_unless_a_failure_carries_one() -> None:
    """With backoff on, a trip lasts `timeout` (0.5 s here) unless the failure asked for longer;
    a slow success that trips asks for nothing."""
    config = BreakerConfig(
        timeout=0.5,
        backoff_factor=2.0,
        failure_threshold=1,
        window_calls=2,
        minimum_calls=1,
        slow_call_rate_threshold=0.5,
        slow_call_duration=0.1,
    )
    failed = machine.record_failure(Snapshot(), config, None, 0.0, 0.0, "down")
    assert (failed.state, failed.open_duration) == (machine.OPEN, 0.5)
    slow = machine.record_success(Snapshot(), config, None, 0.0, slow=True)
    assert (slow.state, slow.open_duration) == (machine.OPEN, 0.5)
    asked = machine.record_failure(Snapshot(), config, None, 0.0, 0.0, "down", delay=2.0)
    assert asked.open_duration == 2.0


def test_a_hold_without_terms_lasts_until_reset_with_no_reason_or_owner() -> None:
    held = machine.force(Snapshot(), machine.OPEN, 0.0)
    assert (held.forced, held.hold_until, held.hold_reason, held.hold_owner) == (
        True,
        None,
        None,
        None,
    )
    assert machine.expire(held, 10 * MAX_HOLD_SECONDS) is held


def test_a_backed_off_open_circuit_keeps_the_later_of_its_deadline_and_a_written_back_one() -> None:
    config = BreakerConfig(failure_threshold=1, backoff_factor=2.0, max_timeout=300.0)
    opened = machine.record_failure(Snapshot(), config, None, 100.0, 100.0, "down")
    assert (opened.opened_at, opened.open_duration) == (100.0, 30.0)
    outage = machine.Outage(opened.generation, 0, 80.0)
    later = machine.reconcile(opened, config, outage, 110.0)
    assert (later.opened_at, later.open_duration) == (100.0, 90.0)
    assert machine.retry_after(later, config, 110.0) == 80.0
    sooner = machine.Outage(opened.generation, 0, 5.0)
    assert machine.reconcile(opened, config, sooner, 110.0) is opened
    plain = BreakerConfig(failure_threshold=1)
    tripped = machine.record_failure(Snapshot(), plain, None, 100.0, 100.0, "down")
    moved = machine.reconcile(tripped, plain, outage, 110.0)
    assert (moved.opened_at, moved.open_duration) == (110.0, None), "80 s left: capped at 30"
    left = machine.reconcile(tripped, plain, machine.Outage(tripped.generation, 0, 25.0), 110.0)
    assert left.opened_at == 105.0
