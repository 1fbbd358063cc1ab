"""Open-duration backoff and requested delays (Retry-After): the semantics as tables, fake clock.

Backoff (`backoff_factor`, `max_timeout`, `jitter`) is off by default; with it on, a trip from
CLOSED opens for `timeout`, each failed half-open trial multiplies the nominal open duration up
to the cap, jitter shortens each open by `jitter x draw`, and a close, reset or hold forgets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from cbctl import CircuitBreaker, CircuitBreakerError, CircuitBreakerRegistry, FakeClock
from cbctl import state as machine
from cbctl.breaker import requested_delay
from cbctl.config import parse_config
from cbctl.errors import ConfigError
from cbctl.httpx import BreakerTransport
from cbctl.state import BreakerConfig, CircuitState, Outage, Snapshot
from cbctl.stores import MemoryStore
from cbctl.stores.sqlite import SqliteStore

OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
CLOSED = CircuitState.CLOSED


class Boom(Exception):
    pass


class Throttled(Exception):
    """A failure that says how long the dependency wants to be left alone."""

    def __init__(self, retry_after: object) -> None:
        super().__init__("throttled")
        self.retry_after = retry_after


def trip_closed(snapshot: Snapshot, config: BreakerConfig, now: float, **kw: Any) -> Snapshot:
    for _ in range(config.failure_threshold):
        snapshot = machine.record_failure(snapshot, config, None, now, now, "boom", **kw)
    return snapshot


def fail_trial(snapshot: Snapshot, config: BreakerConfig, now: float, **kw: Any) -> Snapshot:
    """Wait out the open duration in force, admit a trial and fail it; the snapshot after."""
    assert snapshot.opened_at is not None
    now = max(now, snapshot.opened_at + machine.open_span(snapshot, config))
    half_open, permit = machine.admit(snapshot, config, now)
    assert half_open.state is HALF_OPEN
    assert permit is not None
    return machine.record_failure(half_open, config, permit, now, now, "boom", **kw)


def open_durations(config: BreakerConfig, trials: int, **kw: Any) -> list[float]:
    snapshot = trip_closed(Snapshot(), config, 0.0)
    spans = [machine.open_span(snapshot, config)]
    for _ in range(trials):
        snapshot = fail_trial(snapshot, config, 0.0, **kw)
        spans.append(machine.open_span(snapshot, config))
    return spans


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, [30.0, 30.0, 30.0, 30.0, 30.0]),  # off: the specification's fixed timeout
        ({"backoff_factor": 2.0}, [30.0, 60.0, 120.0, 240.0, 300.0]),  # cap 10 x timeout
        ({"backoff_factor": 2.0, "max_timeout": 100.0}, [30.0, 60.0, 100.0, 100.0, 100.0]),
        ({"backoff_factor": 1.5, "max_timeout": 3600.0}, [30.0, 45.0, 67.5, 101.25, 151.875]),
        ({"max_timeout": 120.0}, [30.0, 30.0, 30.0, 30.0, 30.0]),  # on, but no growth
    ],
)
def test_each_failed_trial_multiplies_the_open_duration_up_to_the_cap(
    settings: dict[str, Any], expected: list[float]
) -> None:
    assert open_durations(BreakerConfig(**settings), 4) == expected


def test_retry_after_counts_down_the_backed_off_duration() -> None:
    config = BreakerConfig(backoff_factor=2.0)
    snapshot = fail_trial(trip_closed(Snapshot(), config, 0.0), config, 0.0)
    opened = snapshot.opened_at
    assert opened == 30.0
    assert machine.retry_after(snapshot, config, opened + 59.0) == pytest.approx(1.0)
    assert machine.admit(snapshot, config, opened + 59.9)[1] is None
    assert machine.admit(snapshot, config, opened + 60.0)[1] is not None  # the edge admits


def test_a_close_forgets_the_backoff() -> None:
    config = BreakerConfig(backoff_factor=2.0, success_threshold=1)
    snapshot = fail_trial(fail_trial(trip_closed(Snapshot(), config, 0.0), config, 0.0), config, 0)
    assert machine.open_span(snapshot, config) == 120.0
    now = snapshot.opened_at + 120.0
    half_open, permit = machine.admit(snapshot, config, now)
    closed = machine.record_success(half_open, config, permit, now)
    assert (closed.state, closed.backoff, closed.open_duration) == (CLOSED, None, None)
    assert machine.open_span(trip_closed(closed, config, now), config) == 30.0


@pytest.mark.parametrize(
    "undo",
    [
        lambda s: machine.reset(s, 1000.0),
        lambda s: machine.force(s, OPEN, 1000.0),
        lambda s: machine.force(s, CLOSED, 1000.0),
    ],
    ids=["reset", "force_open", "force_closed"],
)
def test_a_reset_or_a_hold_forgets_the_backoff(undo: Any) -> None:
    config = BreakerConfig(backoff_factor=3.0)
    snapshot = fail_trial(trip_closed(Snapshot(), config, 0.0), config, 0.0)
    assert snapshot.backoff == 90.0
    after = undo(snapshot)
    assert (after.backoff, after.open_duration) == (None, None)


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(0.0, 60.0), (0.5, 54.0), (0.999, 48.012)],
)
def test_jitter_shortens_an_open_by_at_most_its_fraction(draw: float, expected: float) -> None:
    config = BreakerConfig(backoff_factor=2.0, jitter=0.2)
    snapshot = trip_closed(Snapshot(), config, 0.0)
    snapshot = fail_trial(snapshot, config, 0.0, draw=draw)
    assert snapshot.open_duration == pytest.approx(expected)
    assert snapshot.backoff == 60.0  # the nominal duration grows without the jitter
    assert 60.0 * (1 - 0.2) < snapshot.open_duration <= 60.0


def test_jitter_does_not_compound_and_never_passes_the_cap() -> None:
    config = BreakerConfig(backoff_factor=2.0, max_timeout=200.0, jitter=0.5)
    spans = open_durations(config, 6, draw=0.9)
    nominal = [30.0, 60.0, 120.0, 200.0, 200.0, 200.0, 200.0]
    assert spans[0] == 30.0  # the trip itself took no draw here
    for span, bound in zip(spans[1:], nominal[1:], strict=True):
        assert span == pytest.approx(bound * 0.55)


def test_the_breaker_jitters_with_random_draws_inside_the_bounds() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("j", failure_threshold=1, timeout=10.0, jitter=0.3, clock=clock)
    seen = set()
    for _ in range(40):
        with contextlib.suppress(Boom):
            breaker.call(_raise, Boom())
        span = breaker.stats["open_duration"]
        assert 7.0 < span <= 10.0
        seen.add(span)
        breaker.reset()
    assert len(seen) > 30  # each open draws its own


@pytest.mark.parametrize(
    ("settings", "delay", "expected"),
    [
        ({}, 120.0, 30.0),  # backoff off: a requested delay is ignored
        ({"max_timeout": 300.0}, 120.0, 120.0),
        ({"max_timeout": 300.0}, 10.0, 30.0),  # never shorter than the duration in force
        ({"max_timeout": 300.0}, 9000.0, 300.0),  # bounded by max_timeout
        ({"backoff_factor": 2.0}, 9000.0, 300.0),  # ... or 10 x timeout without one
        ({"max_timeout": 300.0, "jitter": 0.5}, 20.0, 20.0),  # it outlasts a jittered 15 s
    ],
)
def test_a_requested_delay_sets_the_open_duration_within_the_cap(
    settings: dict[str, Any], delay: float, expected: float
) -> None:
    config = BreakerConfig(**settings)
    snapshot = trip_closed(Snapshot(), config, 0.0, delay=delay, draw=0.999999)
    if config.jitter and delay < 30.0:
        assert machine.open_span(snapshot, config) == expected
    else:
        assert machine.open_span(snapshot, config) == pytest.approx(expected)


def test_a_requested_delay_of_a_failure_that_does_not_open_changes_nothing() -> None:
    config = BreakerConfig(max_timeout=300.0)
    snapshot = machine.record_failure(Snapshot(), config, None, 0.0, 0.0, "x", delay=200.0)
    assert (snapshot.state, snapshot.open_duration) == (CLOSED, None)
    tripped = trip_closed(snapshot, config, 0.0)
    assert machine.open_span(tripped, config) == 30.0


def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (120, 120.0),
        (45.5, 45.5),
        (1e9, 300.0),
        (0, 30.0),
        (-5, 30.0),
        (float("nan"), 30.0),
        ("120", 30.0),
        (True, 30.0),
        (None, 30.0),
    ],
)
def test_a_failures_retry_after_attribute_is_the_requested_delay(
    retry_after: object, expected: float
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("api", failure_threshold=1, max_timeout=300.0, clock=clock)
    with pytest.raises(Throttled):
        breaker.call(_raise, Throttled(retry_after))
    with pytest.raises(CircuitBreakerError) as rejected:
        breaker.call(lambda: None)
    assert rejected.value.retry_after == pytest.approx(expected)
    assert breaker.stats["open_duration"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(2, 2.0), (0.5, 0.5), (0, None), (-0.5, None), (math.inf, None), (True, None), ("2", None)],
)
def test_requested_delay_is_a_positive_finite_number_of_seconds_or_none(
    retry_after: object, expected: float | None
) -> None:
    """Exactly what a failure asks for; the state machine then lengthens an open, never shortens
    it, so a zero or negative delay must not pass for a request."""
    delay = requested_delay(Throttled(retry_after))
    assert delay == expected
    assert delay is None or type(delay) is float
    assert requested_delay(Boom("no attribute")) is None


def test_the_async_path_honours_a_requested_delay_too() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("api", failure_threshold=1, max_timeout=300.0, clock=clock)

    async def throttled() -> None:
        raise Throttled(90)

    async def run() -> None:
        with pytest.raises(Throttled):
            await breaker.call_async(throttled)

    asyncio.run(run())
    assert breaker.stats["open_duration"] == 90.0
    clock.advance(89.0)
    assert breaker.state is OPEN
    clock.advance(1.0)
    assert breaker.allows_call()


def test_open_duration_is_in_stats_only_with_backoff_on() -> None:
    clock = FakeClock()
    plain = CircuitBreaker("plain", clock=clock)
    assert "open_duration" not in plain.stats
    backed = CircuitBreaker("backed", failure_threshold=1, backoff_factor=2.0, clock=clock)
    assert backed.stats["open_duration"] == 30.0  # what the next open lasts
    with contextlib.suppress(Boom):
        backed.call(_raise, Boom())
    clock.advance(30.0)
    with contextlib.suppress(Boom):
        backed.call(_raise, Boom())
    assert (backed.state, backed.stats["open_duration"]) == (OPEN, 60.0)
    assert backed.stats["retry_after"] == 60.0
    clock.advance(59.0)
    with pytest.raises(CircuitBreakerError):
        backed.call(lambda: None)
    clock.advance(1.0)
    backed.call(lambda: None)
    backed.call(lambda: None)
    assert (backed.state, backed.stats["open_duration"]) == (CLOSED, 30.0)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_store_backed_breaker_backs_off_like_an_in_process_one(kind: str, tmp_path: Path) -> None:
    clock = FakeClock()
    store = MemoryStore(clock) if kind == "memory" else SqliteStore(tmp_path / "c.db", clock=clock)
    registry = CircuitBreakerRegistry(
        default_config={"failure_threshold": 1, "backoff_factor": 2.0, "max_timeout": 100.0},
        store=store,
        clock=clock,
    )
    breaker = registry.get("api")
    spans = []
    for _ in range(4):
        with contextlib.suppress(Boom):
            breaker.call(_raise, Boom())
        spans.append(breaker.stats["open_duration"])
        clock.advance(spans[-1] - 0.5)
        assert not breaker.allows_call()
        clock.advance(0.5)
    assert spans == [30.0, 60.0, 100.0, 100.0]
    (stored,) = store.load_all()
    assert stored.config.backoff_factor == 2.0
    assert stored.snapshot.backoff == 100.0


def test_a_write_back_after_an_outage_keeps_a_backed_off_deadline() -> None:
    config = BreakerConfig(backoff_factor=2.0, max_timeout=100.0)
    opened = trip_closed(Snapshot(), config, 0.0)
    # a breaker that lost its store held an OPEN with 80 s left: the later deadline wins
    written = machine.reconcile(opened, config, Outage(opened.generation, 0, 80.0), 10.0)
    assert machine.retry_after(written, config, 10.0) == pytest.approx(80.0)
    # a CLOSED circuit takes it with the time left, bounded by max_timeout
    closed = machine.reconcile(Snapshot(), config, Outage(0, 0, 500.0), 10.0)
    assert (closed.state, machine.retry_after(closed, config, 10.0)) == (OPEN, 100.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"backoff_factor": 0.5}, "backoff_factor must be at least 1"),
        ({"backoff_factor": float("inf")}, "backoff_factor must be a finite number"),
        ({"backoff_factor": "2"}, "backoff_factor must be a finite number"),
        ({"jitter": 1.0}, "jitter must be at least 0 and below 1"),
        ({"jitter": -0.1}, "jitter must be at least 0 and below 1"),
        ({"jitter": True}, "jitter must be a finite number"),
        ({"max_timeout": 10.0}, r"max_timeout must be at least timeout \(30\)"),
        ({"max_timeout": 1e12}, "max_timeout must be at least timeout"),
    ],
)
def test_bad_backoff_settings_are_refused_by_name(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BreakerConfig(**settings)
    with pytest.raises(ConfigError, match=message):
        CircuitBreakerRegistry(default_config=settings)
    with pytest.raises(ConfigError, match=message):
        CircuitBreakerRegistry().get("x", **settings)


FILE = Path("/etc/cbctl/cbctl.toml")


def test_backoff_settings_come_from_defaults_and_each_dependency() -> None:
    config = parse_config(
        """
        [defaults]
        backoff_factor = 2
        max_timeout = 600
        [dependencies.api]
        kind = "http"
        url = "http://127.0.0.1:9/"
        jitter = 0.25
        [dependencies.db]
        kind = "postgresql"
        url = "postgresql://127.0.0.1/x"
        backoff_factor = 1.5
        """,
        path=FILE,
        environ={},
    )
    api, db = config.dependencies["api"], config.dependencies["db"]
    assert (api.breaker.backoff_factor, api.breaker.max_timeout, api.breaker.jitter) == (
        2.0,
        600.0,
        0.25,
    )
    assert (db.breaker.backoff_factor, db.breaker.jitter) == (1.5, 0.0)
    assert api.origins["jitter"] == "dependencies.api.jitter"
    assert api.origins["max_timeout"] == "defaults.max_timeout"
    assert db.origins["jitter"] == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[defaults]\njitter = 1.5", r"^/etc/cbctl/cbctl.toml: defaults.jitter must be at least"),
        ("[defaults]\njitter = 'x'", r"^/etc/cbctl/cbctl.toml: defaults.jitter must be a number"),
        (
            "[defaults]\nbackoff_factor = 0.9",
            r"^/etc/cbctl/cbctl.toml: defaults.backoff_factor must be at least 1",
        ),
        (
            "[defaults]\nmax_timeout = 5",
            r"^/etc/cbctl/cbctl.toml: defaults.max_timeout must be at least timeout",
        ),
        (
            "[dependencies.a]\nkind = 'tcp'\nurl = 'tcp://h:1'\nmax_timeout = -1",
            r"^/etc/cbctl/cbctl.toml: dependencies.a.max_timeout must be a positive number",
        ),
    ],
)
def test_bad_backoff_settings_in_the_file_name_the_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, path=FILE, environ={})


# -- Retry-After through the httpx transport ----------------------------------------------------


def _answers(status: int, headers: dict[str, str]) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, headers=headers))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("Wed, 21 Oct 2099 07:28:00 GMT", 3600.0),  # a date far ahead: the cap
        ("soon", 30.0),
        ("-3", 30.0),
    ],
)
def test_a_failed_answers_retry_after_holds_the_circuit_open_that_long(
    header: str, expected: float
) -> None:
    clock = FakeClock()
    registry = CircuitBreakerRegistry(
        default_config={"failure_threshold": 1, "max_timeout": 3600.0}, clock=clock
    )
    transport = BreakerTransport(registry, _answers(503, {"Retry-After": header}), circuit="api")
    with httpx.Client(transport=transport) as client:
        assert client.get("http://api.test/").status_code == 503
    assert registry.get("api").stats["open_duration"] == pytest.approx(expected)


def test_retry_after_of_an_http_date_counts_from_now() -> None:
    from email.utils import formatdate

    from cbctl.httpx import retry_after_seconds

    assert retry_after_seconds(formatdate(1_000_090.0, usegmt=True), 1_000_000.0) == 90.0
    assert retry_after_seconds(formatdate(999_000.0, usegmt=True), 1_000_000.0) is None
    assert retry_after_seconds("7", 0.0) == 7.0
    assert retry_after_seconds("", 0.0) is None
    assert retry_after_seconds(None, 0.0) is None


# -- the state file: schema 3 -> 4 ----------------------------------------------------------------

SCHEMA_3 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE circuits (
        name TEXT PRIMARY KEY, state TEXT NOT NULL, failure_count INTEGER NOT NULL,
        success_count INTEGER NOT NULL, generation INTEGER NOT NULL, leases TEXT NOT NULL,
        trials_admitted INTEGER NOT NULL, opened_at REAL, changed_at REAL,
        forced INTEGER NOT NULL, last_failure_at REAL, last_error TEXT,
        hold_until REAL, hold_reason TEXT, hold_owner TEXT,
        failure_threshold INTEGER NOT NULL, timeout REAL NOT NULL,
        success_threshold INTEGER NOT NULL, half_open_max_calls INTEGER NOT NULL,
        revision INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "INSERT INTO meta (key, value) VALUES ('application', 'cbctl'), ('schema_version', '3')",
    "PRAGMA application_id = 1667392372",
    "PRAGMA user_version = 3",
)
V3_ROW = """INSERT INTO circuits VALUES
    (?, ?, 1, 0, 3, '', 0, ?, 900.0, 0, 950.0, 'down', NULL, NULL, NULL, 1, 30.0, 2, 1, 7)"""


def test_a_schema_3_state_file_is_migrated_in_place_without_backoff(tmp_path: Path) -> None:
    import sqlite3

    from cbctl.stores.sqlite import SCHEMA_VERSION

    path = tmp_path / "circuits.db"
    old = sqlite3.connect(path, isolation_level=None)
    for statement in SCHEMA_3:
        old.execute(statement)
    old.execute(V3_ROW, ("qdrant", "open", 9_990.0))
    old.close()
    clock = FakeClock(wall=10_000.0)
    with SqliteStore(path, clock=clock) as store:
        (circuit,) = store.load_all()
        assert (circuit.snapshot.state, circuit.snapshot.open_duration) == (OPEN, None)
        assert circuit.config == BreakerConfig(failure_threshold=1)
        config = BreakerConfig(failure_threshold=1, backoff_factor=2.0)
        assert store.admit("qdrant", config).permit is None  # 20 s of its 30 s left
        clock.advance(20.0)
        trial = store.admit("qdrant", config).permit
        after = store.record_failure("qdrant", config, trial, "still down").after
        assert (after.backoff, after.open_duration) == (60.0, 60.0)
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    row = check.execute("SELECT backoff_factor, max_timeout, jitter, backoff FROM circuits")
    assert row.fetchone() == (2.0, None, 0.0, 60.0)
    check.close()


def test_backoff_settings_are_overrides_like_any_other() -> None:
    registry = CircuitBreakerRegistry(
        default_config={"backoff_factor": 2.0}, overrides={"llm": {"max_timeout": 90.0}}
    )
    assert registry.get("db").config.open_cap == 300.0
    assert registry.get("llm").config.open_cap == 90.0
    api = registry.get("api", jitter=0.5)
    assert (api.config.backoff_factor, api.config.jitter) == (2.0, 0.5)
    with pytest.raises(ConfigError, match="already exists"):
        registry.get("api", jitter=0.1)
