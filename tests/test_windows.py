"""Rate policies over a count window: the semantics as tables, fake clock.

A window (`window_calls` N) counts the last N CLOSED calls; once it holds `minimum_calls`, a
failure (or a slow call) opens the circuit when the failure rate (or the slow-call rate) has
reached its threshold. A fast success never opens; the consecutive threshold works alongside;
every transition, a reset and a hold empty the window. Outcomes in the tables: S success,
F failure, s slow success, f slow failure.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cbctl import CircuitBreaker, CircuitBreakerRegistry, FakeClock
from cbctl import state as machine
from cbctl.cli import app
from cbctl.config import parse_config
from cbctl.errors import ConfigError
from cbctl.state import BreakerConfig, CircuitState, Permit, Snapshot, Update
from cbctl.stores import MemoryStore
from cbctl.stores.sqlite import SCHEMA_VERSION, SqliteStore

OPEN = CircuitState.OPEN
CLOSED = CircuitState.CLOSED


class Boom(Exception):
    pass


def window(**settings: Any) -> BreakerConfig:
    base: dict[str, Any] = {"failure_threshold": 100, "failure_rate_threshold": 0.5}
    return BreakerConfig(**{**base, **settings})


def play(config: BreakerConfig, outcomes: str, snapshot: Snapshot | None = None) -> list[str]:
    """The state after each outcome, applied with the pure functions."""
    snapshot = snapshot or Snapshot()
    states = []
    for outcome in outcomes:
        slow = outcome.islower()
        if outcome in "Ss":
            snapshot = machine.record_success(snapshot, config, None, 0.0, slow=slow)
        else:
            snapshot = machine.record_failure(snapshot, config, None, 0.0, 0.0, "x", slow=slow)
        states.append("O" if snapshot.state is OPEN else ".")
    return states


@pytest.mark.parametrize(
    ("settings", "outcomes", "expected"),
    [
        # 2 of the last 4 failed: the threshold itself opens, on the failure that reaches it
        ({"window_calls": 4}, "SFSF", "...O"),
        # fewer calls than minimum_calls: no rate yet, however many failed
        ({"window_calls": 4}, "FFF", "..."),
        ({"window_calls": 4, "minimum_calls": 2}, "FF", ".O"),
        # a success never opens, even with the rate above the threshold; the next failure does
        ({"window_calls": 4}, "FFFSF", "....O"),
        # the window slides: the first failure falls out of the last 4
        ({"window_calls": 4}, "FSSSSF", "......"),
        ({"window_calls": 4, "failure_rate_threshold": 0.75}, "FSSFFF", ".....O"),
        # the consecutive threshold keeps working alongside
        ({"window_calls": 10, "failure_threshold": 2}, "FF", ".O"),
        ({"window_calls": 10, "failure_threshold": 3}, "FFSFF", "....."),
        # slow calls: successes that are slow open on the slow-call rate
        (
            {"window_calls": 4, "slow_call_duration": 1.0, "slow_call_rate_threshold": 0.5},
            "SsSs",
            "...O",
        ),
        (
            {
                "window_calls": 4,
                "failure_rate_threshold": None,
                "slow_call_duration": 1.0,
                "slow_call_rate_threshold": 0.75,
            },
            "sSsf",  # a slow failure counts as slow too
            "...O",
        ),
        (
            {
                "window_calls": 4,
                "failure_rate_threshold": None,
                "slow_call_duration": 1.0,
                "slow_call_rate_threshold": 0.75,
            },
            "sFsF",  # a failure in time is not slow
            "....",
        ),
        # a slow success opens on the slow-call rate only: 2 of 4 failed, but it is no failure
        (
            {"window_calls": 4, "slow_call_duration": 1.0, "slow_call_rate_threshold": 1.0},
            "FSFs",
            "....",
        ),
        # a slow failure counts as a failure as well: 2 of 4 failed
        (
            {"window_calls": 4, "slow_call_duration": 1.0, "slow_call_rate_threshold": 1.0},
            "SSfF",
            "...O",
        ),
    ],
)
def test_the_window_opens_at_its_rate_once_it_holds_minimum_calls(
    settings: dict[str, Any], outcomes: str, expected: str
) -> None:
    assert "".join(play(window(**settings), outcomes)) == expected


def test_the_rates_are_none_below_minimum_calls_and_exact_above() -> None:
    config = window(
        window_calls=5, minimum_calls=3, slow_call_duration=1.0, slow_call_rate_threshold=1.0
    )
    snapshot = Snapshot()
    seen = []
    for outcome in "FsSSSS":
        if outcome == "F":
            snapshot = machine.record_failure(snapshot, config, None, 0.0, 0.0, "x")
        else:
            snapshot = machine.record_success(snapshot, config, None, 0.0, slow=outcome == "s")
        seen.append(machine.window_rates(snapshot, config))
    assert seen == [
        (None, None),
        (None, None),
        (1 / 3, 1 / 3),
        (0.25, 0.25),
        (0.2, 0.2),
        (0.0, 0.2),  # the failure fell out of the last 5
    ]


@pytest.mark.parametrize("calls", [0, 1, 3, 7, 8, 9, 50])
def test_counting_fast_successes_at_once_is_the_same_as_one_by_one(calls: int) -> None:
    config = window(window_calls=8, slow_call_duration=1.0, slow_call_rate_threshold=1.0)
    start = Snapshot()
    for outcome in "FsFSs":
        slow = outcome == "s"
        if outcome == "F":
            start = machine.record_failure(start, config, None, 0.0, 0.0, "x")
        else:
            start = machine.record_success(start, config, None, 0.0, slow=slow)
    one_by_one = start
    for _ in range(calls):
        one_by_one = machine.record_success(one_by_one, config, None, 0.0)
    at_once = machine.count_calls(start, config, calls)
    assert at_once.window_count == one_by_one.window_count
    assert (at_once.failure_bits, at_once.slow_bits) == (
        one_by_one.failure_bits,
        one_by_one.slow_bits,
    )


def _filled(config: BreakerConfig) -> Snapshot:
    snapshot = Snapshot()
    for outcome in "FSF":
        if outcome == "F":
            snapshot = machine.record_failure(snapshot, config, None, 0.0, 0.0, "x")
        else:
            snapshot = machine.record_success(snapshot, config, None, 0.0)
    assert snapshot.window_count == 3
    return snapshot


@pytest.mark.parametrize(
    "undo",
    [
        lambda s: machine.reset(s, 1.0),
        lambda s: machine.force(s, CLOSED, 1.0),
        lambda s: machine.force(s, OPEN, 1.0),
        lambda s: machine.force(s, CLOSED, 1.0, until=2.0),
    ],
)
def test_a_reset_or_a_hold_empties_the_window(undo: Any) -> None:
    config = window(window_calls=10)
    after = undo(_filled(config))
    assert (after.window_count, after.failure_bits, after.slow_bits) == (0, 0, 0)
    assert machine.window_rates(after, config) == (None, None)


def test_a_close_after_half_open_starts_an_empty_window() -> None:
    config = window(window_calls=4, minimum_calls=2, success_threshold=1, timeout=1.0)
    opened = machine.record_failure(_filled(window(window_calls=4)), config, None, 0, 0, "x")
    assert opened.state is OPEN
    assert opened.window_count == 0
    half_open, permit = machine.admit(opened, config, 5.0)
    closed = machine.record_success(half_open, config, permit, 5.0)
    assert (closed.state, closed.window_count) == (CLOSED, 0)
    # one failure in a fresh window of minimum 2 does not open; the old failures are gone
    assert machine.record_failure(closed, config, None, 5.0, 5.0, "x").state is CLOSED


def test_a_circuit_held_closed_counts_its_window_but_never_trips() -> None:
    config = window(window_calls=4, minimum_calls=1)
    held = machine.force(Snapshot(), CLOSED, 0.0)
    assert play(config, "FFFF", held) == list("....")


# -- the breaker: in-process fast successes, slow calls timed by the call measurement ------------


def test_an_in_process_breaker_counts_fast_successes_into_the_window() -> None:
    breaker = CircuitBreaker("api", failure_threshold=100, failure_rate_threshold=0.5,
                             window_calls=10)  # fmt: skip
    for _ in range(6):
        breaker.call(lambda: None)
    for _ in range(4):
        with pytest.raises(Boom):
            breaker.call(_boom)
    assert breaker.stats["failure_rate"] == 0.4
    assert breaker.state is CLOSED
    with pytest.raises(Boom):
        breaker.call(_boom)  # 5 of the last 10
    assert breaker.state is OPEN


def test_fast_successes_before_a_reset_stay_out_of_the_new_window() -> None:
    breaker = CircuitBreaker(
        "api", failure_threshold=100, failure_rate_threshold=0.75, window_calls=4, minimum_calls=2
    )
    with pytest.raises(Boom):
        breaker.call(_boom)
    for _ in range(3):
        breaker.call(lambda: None)
    breaker.reset()
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(_boom)
    assert breaker.state is OPEN  # 2 of 2 in the new window, not 2 of 4


def test_failure_rate_is_none_until_minimum_calls_and_absent_when_off() -> None:
    breaker = CircuitBreaker("api", failure_rate_threshold=0.5, window_calls=10, minimum_calls=3)
    assert breaker.stats["failure_rate"] is None
    assert "slow_call_rate" not in breaker.stats
    breaker.call(lambda: None)
    breaker.call(lambda: None)
    assert breaker.stats["failure_rate"] is None
    breaker.call(lambda: None)
    assert breaker.stats["failure_rate"] == 0.0
    plain = CircuitBreaker("plain").stats
    assert "failure_rate" not in plain
    assert "slow_call_rate" not in plain


def _boom() -> None:
    raise Boom("down")


def _slow_breaker(clock: FakeClock, **settings: Any) -> CircuitBreaker:
    return CircuitBreaker(
        "llm",
        clock=clock,
        window_calls=4,
        minimum_calls=2,
        slow_call_duration=1.0,
        slow_call_rate_threshold=0.5,
        **settings,
    )


def test_slow_calls_that_succeed_open_the_circuit() -> None:
    clock = FakeClock()
    breaker = _slow_breaker(clock)
    assert breaker.call(lambda: clock.advance(0.5)) is None
    assert breaker.call(lambda: clock.advance(1.0)) is None  # exactly the duration: not slow
    assert breaker.stats["slow_call_rate"] == 0.0
    breaker.call(lambda: clock.advance(1.5))
    assert breaker.stats["slow_call_rate"] == pytest.approx(1 / 3)
    assert breaker.state is CLOSED
    breaker.call(lambda: clock.advance(2.0))  # 2 of 4 slow, all of them succeeded
    assert breaker.state is OPEN
    assert breaker.stats["failure_count"] == 0


def test_slow_calls_through_with_blocks_and_async_calls_count_too() -> None:
    clock = FakeClock()
    breaker = _slow_breaker(clock)
    with breaker:
        clock.advance(3.0)

    async def slow() -> None:
        clock.advance(3.0)

    asyncio.run(breaker.call_async(slow))
    assert breaker.state is OPEN


def test_a_slow_call_observed_by_metrics_is_timed_once() -> None:
    clock = FakeClock()
    breaker = _slow_breaker(clock)
    seen: list[tuple[str, float, str]] = []
    breaker.add_call_observer(lambda name, took, outcome: seen.append((name, took, outcome)))
    breaker.call(lambda: clock.advance(2.0))
    assert seen == [("llm", 2.0, "success")]
    assert breaker.stats["slow_call_rate"] is None  # one call, minimum 2


class CountingStore(MemoryStore):
    """The memory store, counting the successes written to it."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.successes = 0

    def record_success(
        self, name: str, config: BreakerConfig, permit: Permit | None, slow: bool = False
    ) -> Update:
        self.successes += 1
        return super().record_success(name, config, permit, slow)


@pytest.mark.parametrize(
    ("settings", "writes"),
    [({}, 0), ({"failure_rate_threshold": 0.5, "window_calls": 100}, 50)],
)
def test_in_a_shared_store_each_success_is_one_write_only_with_a_window_on(
    settings: dict[str, Any], writes: int
) -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    breaker = CircuitBreaker("db", clock=clock, store=store, **settings)
    for _ in range(50):
        breaker.call(lambda: None)
    assert store.successes == writes
    if writes:
        assert store.load("db").snapshot.window_count == 50  # type: ignore[union-attr]


def test_breakers_of_one_store_share_one_exact_window(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = {"failure_threshold": 100, "failure_rate_threshold": 0.5, "window_calls": 10}
    with SqliteStore(tmp_path / "circuits.db", clock=clock) as store:
        first = CircuitBreaker("db", clock=clock, store=store, **settings)
        second = CircuitBreaker("db", clock=clock, store=store, **settings)
        for i in range(6):
            (first if i % 2 else second).call(lambda: None)
        for breaker in (first, second, first, second):
            with pytest.raises(Boom):
                breaker.call(_boom)
        assert first.stats["failure_rate"] == second.stats["failure_rate"] == 0.4
        with pytest.raises(Boom):
            second.call(_boom)
        assert first.state is second.state is OPEN


# -- settings: validated by name, from code, registries and cbctl.toml --------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"failure_rate_threshold": 0.5}, "failure_rate_threshold needs window_calls"),
        ({"window_calls": 10}, "window_calls needs failure_rate_threshold"),
        ({"window_calls": 10, "failure_rate_threshold": 0.0}, "failure_rate_threshold must be"),
        ({"window_calls": 10, "failure_rate_threshold": 1.5}, "failure_rate_threshold must be"),
        ({"window_calls": 10, "failure_rate_threshold": "x"}, "failure_rate_threshold must be"),
        ({"window_calls": 0, "failure_rate_threshold": 0.5}, "window_calls must be at least 1"),
        ({"window_calls": 10**6, "failure_rate_threshold": 0.5}, "window_calls must be at most"),
        ({"window_calls": 2.5, "failure_rate_threshold": 0.5}, "window_calls must be a whole"),
        (
            {"window_calls": 10, "failure_rate_threshold": 0.5, "minimum_calls": 11},
            r"minimum_calls must be at most window_calls \(10\)",
        ),
        ({"minimum_calls": 3}, "minimum_calls needs window_calls"),
        (
            {"window_calls": 10, "failure_rate_threshold": 0.5, "slow_call_duration": 1.0},
            "slow_call_duration needs slow_call_rate_threshold",
        ),
        (
            {"window_calls": 10, "slow_call_rate_threshold": 0.5},
            "slow_call_rate_threshold needs slow_call_duration",
        ),
        (
            {"window_calls": 10, "slow_call_rate_threshold": 0.5, "slow_call_duration": -1},
            "slow_call_duration must be a positive number",
        ),
    ],
)
def test_bad_window_settings_are_refused_by_name(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BreakerConfig(**settings)
    with pytest.raises(ConfigError, match=message):
        CircuitBreakerRegistry(default_config=settings)
    with pytest.raises(ConfigError, match=message):
        CircuitBreakerRegistry().get("x", **settings)


def test_window_settings_are_overrides_like_any_other() -> None:
    registry = CircuitBreakerRegistry(
        default_config={"failure_rate_threshold": 0.5, "window_calls": 100},
        overrides={"llm": {"slow_call_duration": 2.0, "slow_call_rate_threshold": 0.8}},
    )
    assert registry.get("db").config.window_calls == 100
    llm = registry.get("llm").config
    assert (llm.slow_call_duration, llm.slow_call_rate_threshold) == (2.0, 0.8)
    assert registry.get("api", minimum_calls=20).config.least_calls == 20


FILE = Path("/etc/cbctl/cbctl.toml")
TOML = """
[defaults]
failure_rate_threshold = 0.5
window_calls = 100
minimum_calls = 20
[dependencies.llm]
kind = "llamacpp"
url = "http://127.0.0.1:9/"
slow_call_duration = 2.5
slow_call_rate_threshold = 0.8
[dependencies.db]
kind = "postgresql"
url = "postgresql://127.0.0.1/x"
window_calls = 50
"""


def test_window_settings_come_from_defaults_and_each_dependency() -> None:
    config = parse_config(TOML, path=FILE, environ={})
    llm, db = config.dependencies["llm"].breaker, config.dependencies["db"].breaker
    assert (llm.window_calls, llm.minimum_calls, llm.slow_call_duration) == (100, 20, 2.5)
    assert (db.window_calls, db.failure_rate_threshold, db.slow_call_duration) == (50, 0.5, None)
    origins = config.dependencies["db"].origins
    assert origins["window_calls"] == "dependencies.db.window_calls"
    assert origins["minimum_calls"] == "defaults.minimum_calls"
    assert origins["slow_call_duration"] == "default"


def test_cbctl_config_shows_the_window_settings_and_their_sources(tmp_path: Path) -> None:
    path = tmp_path / "cbctl.toml"
    path.write_text(TOML)
    result = CliRunner().invoke(app, ["--config", str(path), "config", "--json"])
    assert result.exit_code == 0, result.output
    llm = next(d for d in json.loads(result.stdout)["dependencies"] if d["name"] == "llm")
    assert (llm["window_calls"], llm["slow_call_rate_threshold"]) == (100, 0.8)
    assert llm["from"]["slow_call_duration"] == "dependencies.llm.slow_call_duration"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[defaults]\nfailure_rate_threshold = 2\nwindow_calls = 10",
            r"^/etc/cbctl/cbctl.toml: defaults.failure_rate_threshold must be above 0",
        ),
        (
            "[defaults]\nwindow_calls = 'many'",
            r"^/etc/cbctl/cbctl.toml: defaults.window_calls must be a whole number",
        ),
        (
            "[defaults]\nfailure_rate_threshold = 0.5",
            r"^/etc/cbctl/cbctl.toml: defaults.failure_rate_threshold needs window_calls",
        ),
        (
            "[dependencies.a]\nkind = 'tcp'\nurl = 'tcp://h:1'\nslow_call_duration = 0",
            r"^/etc/cbctl/cbctl.toml: dependencies.a.slow_call_duration must be a positive",
        ),
    ],
)
def test_bad_window_settings_in_the_file_name_the_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, path=FILE, environ={})


# -- the state file: schema 4 -> 5 ----------------------------------------------------------------


def test_a_schema_4_state_file_is_migrated_in_place_with_an_empty_window(tmp_path: Path) -> None:
    from cbctl.stores import sqlite as sqlite_store

    path = tmp_path / "circuits.db"
    old = sqlite3.connect(path, isolation_level=None)
    for statement in SCHEMA_4:
        old.execute(statement)
    old.execute(V4_ROW, ("qdrant", "closed", None))
    old.close()
    clock = FakeClock(wall=10_000.0)
    config = window(window_calls=4, minimum_calls=2, failure_threshold=5)
    with SqliteStore(path, clock=clock) as store:
        (circuit,) = store.load_all()
        assert (circuit.snapshot.failure_count, circuit.snapshot.window_count) == (1, 0)
        assert circuit.config == BreakerConfig()
        store.record_success("qdrant", config, None)
        after = store.record_failure("qdrant", config, None, "down").after
        assert after.state is OPEN  # 1 of 2 in the new window
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    row = check.execute("SELECT window_calls, failure_rate_threshold, minimum_calls FROM circuits")
    assert row.fetchone() == (4, 0.5, 2)
    check.close()
    assert sqlite_store.SCHEMA_VERSION == 5


SCHEMA_4 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE circuits (
        name TEXT PRIMARY KEY, state TEXT NOT NULL, failure_count INTEGER NOT NULL,
        success_count INTEGER NOT NULL, generation INTEGER NOT NULL, leases TEXT NOT NULL,
        trials_admitted INTEGER NOT NULL, opened_at REAL, changed_at REAL,
        forced INTEGER NOT NULL, last_failure_at REAL, last_error TEXT,
        hold_until REAL, hold_reason TEXT, hold_owner TEXT,
        failure_threshold INTEGER NOT NULL, timeout REAL NOT NULL,
        success_threshold INTEGER NOT NULL, half_open_max_calls INTEGER NOT NULL,
        revision INTEGER NOT NULL, backoff REAL, open_duration REAL,
        backoff_factor REAL NOT NULL DEFAULT 1.0, max_timeout REAL,
        jitter REAL NOT NULL DEFAULT 0.0
    ) WITHOUT ROWID""",
    "INSERT INTO meta (key, value) VALUES ('application', 'cbctl'), ('schema_version', '4')",
    "PRAGMA application_id = 1667392372",
    "PRAGMA user_version = 4",
)
V4_ROW = """INSERT INTO circuits VALUES (?, ?, 1, 0, 3, '', 0, ?, 900.0, 0, 950.0, 'down',
    NULL, NULL, NULL, 5, 30.0, 2, 1, 7, NULL, NULL, 1.0, NULL, 0.0)"""


def test_a_sync_call_past_its_call_timeout_is_a_slow_failure() -> None:
    from cbctl import CallTimeoutError

    clock = FakeClock()
    breaker = _slow_breaker(clock, call_timeout=1.5, failure_rate_threshold=None)
    breaker.call(lambda: None)
    with pytest.raises(CallTimeoutError):
        breaker.call(lambda: clock.advance(2.0))
    assert breaker.state is OPEN  # 1 of 2 slow: the slow-call rate, not the failure count
