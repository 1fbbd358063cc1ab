"""Rate policies over a time window: the semantics as tables, fake clock.

A time window (`window_seconds` T) counts the CLOSED calls of the last T seconds in ten buckets of
T / 10; here T = 10 s, so a bucket is one second ([k, k + 1)) and the call made at t leaves the
window when the bucket floor(t) + 10 begins. The trip rules are the count window's: once the
window holds `minimum_calls`, a failure opens on either rate, a slow success on the slow-call rate,
a success in time never; the rate equal to its threshold opens. Outcomes in the tables: S
success, F failure, s slow success, f slow failure, each at a time.
"""

from __future__ import annotations

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
from cbctl.state import BreakerConfig, CircuitState, Snapshot
from cbctl.stores.sqlite import SCHEMA_VERSION, SqliteStore
from tests.test_windows import SCHEMA_4, V4_ROW, CountingStore

OPEN = CircuitState.OPEN
CLOSED = CircuitState.CLOSED


class Boom(Exception):
    pass


def _boom() -> None:
    raise Boom("down")


def timed(**settings: Any) -> BreakerConfig:
    base: dict[str, Any] = {
        "failure_threshold": 100,
        "failure_rate_threshold": 0.5,
        "window_seconds": 10.0,
        "minimum_calls": 2,
    }
    return BreakerConfig(**{**base, **settings})


def play(config: BreakerConfig, outcomes: list[tuple[float, str]]) -> str:
    """The state after each (time, outcome), applied with the pure functions."""
    snapshot = Snapshot()
    states = []
    for at, outcome in outcomes:
        slow = outcome.islower()
        if outcome in "Ss":
            snapshot = machine.record_success(snapshot, config, None, at, slow=slow)
        else:
            snapshot = machine.record_failure(snapshot, config, None, at, at, "x", slow=slow)
        states.append("O" if snapshot.state is OPEN else ".")
    return "".join(states)


SLOW = {"slow_call_duration": 1.0, "slow_call_rate_threshold": 0.5}


@pytest.mark.parametrize(
    ("settings", "outcomes", "expected"),
    [
        # 1 of 2 failed within the window: the threshold itself opens
        ({}, [(0.0, "S"), (9.99, "F")], ".O"),
        # bucket edges: the call at 0.0 leaves when bucket 10 begins, at 10.0 exactly
        ({}, [(0.0, "S"), (10.0, "F")], ".."),
        # ...and so does one made at 0.99: it leaves after 9.01 s (between 0.9 T and T)
        ({}, [(0.99, "S"), (10.0, "F")], ".."),
        ({}, [(1.0, "S"), (10.99, "F")], ".O"),
        # expiry of old buckets: three successes at 0-2 s fall out; two failures later open
        ({"minimum_calls": 3}, [(0, "S"), (1, "S"), (2, "S"), (12.5, "F"), (12.6, "F")], "....."),
        (
            {"minimum_calls": 2},
            [(0, "S"), (1, "S"), (2, "S"), (12.5, "F"), (12.6, "F")],
            "....O",  # only the two failures are left: 2 of 2
        ),
        # without expiry the same failures are 2 of 5: below the rate
        ({"minimum_calls": 2}, [(0, "S"), (1, "S"), (2, "S"), (5, "F"), (6, "F")], "....."),
        # minimum calls across bucket expiry: 3 failures at 0 s, but at 10 s only one is held
        ({"minimum_calls": 4}, [(0, "F"), (0, "F"), (0, "F"), (10, "F")], "...."),
        ({"minimum_calls": 4}, [(0, "F"), (0, "F"), (0, "F"), (9.5, "F")], "...O"),
        # a long idle gap empties the window: after it, the failures are 2 of 2...
        (
            {"failure_rate_threshold": 0.9},
            [(0, "S"), (0, "S"), (0, "S"), (500, "F"), (500.5, "F")],
            "....O",
        ),
        # ...where without the gap they are 2 of 5
        (
            {"failure_rate_threshold": 0.9},
            [(0, "S"), (0, "S"), (0, "S"), (5, "F"), (5, "F")],
            ".....",
        ),
        # ...and below minimum_calls, however many of them failed
        ({"minimum_calls": 3}, [(0, "S"), (0, "S"), (500, "F"), (500, "F")], "...."),
        # a success never opens, even with the rate above the threshold; the next failure does
        ({"minimum_calls": 3}, [(0, "F"), (1, "F"), (2, "S"), (3, "F")], "...O"),
        # slow successes open on the slow-call rate; a success in time never opens
        (SLOW, [(0, "S"), (1, "s")], ".O"),
        (SLOW, [(0, "s"), (1, "S"), (2, "S")], "..."),
        ({**SLOW, "failure_rate_threshold": None}, [(0, "S"), (1, "s")], ".O"),
        # a slow success opens on the slow-call rate only: 2 of 3 failed, but it is no failure
        (
            {**SLOW, "minimum_calls": 3, "slow_call_rate_threshold": 1.0},
            [(0, "F"), (0, "F"), (1, "s")],
            "...",
        ),
        # slow calls leave the window with their bucket
        (
            {**SLOW, "failure_rate_threshold": None, "minimum_calls": 3},
            [(0, "s"), (0, "s"), (10, "S"), (10, "S"), (10, "s")],
            ".....",
        ),
        # the consecutive threshold keeps working alongside
        ({"failure_threshold": 2, "minimum_calls": 50}, [(0, "F"), (1, "F")], ".O"),
    ],
)
def test_the_time_window_opens_at_its_rate_over_the_last_t_seconds(
    settings: dict[str, Any], outcomes: list[tuple[float, str]], expected: str
) -> None:
    assert play(timed(**settings), outcomes) == expected


def test_the_buckets_are_kept_newest_first_and_dropped_when_old() -> None:
    config = timed(minimum_calls=100)
    snapshot = Snapshot()
    for at, failed in ((0.2, False), (0.7, True), (3.5, False), (11.0, True)):
        if failed:
            snapshot = machine.record_failure(snapshot, config, None, at, at, "x")
        else:
            snapshot = machine.record_success(snapshot, config, None, at)
    assert machine.held_buckets(snapshot) == ((11, 1, 1, 0), (3, 1, 0, 0))
    assert snapshot.window_buckets == (11, 0, 1, 1, 0, 8, 1, 0, 0)  # packed: ages, small ints
    text = machine.encode_buckets(snapshot.window_buckets)
    assert text == "11:1:1:0 3:1:0:0"
    assert machine.decode_buckets(text) == snapshot.window_buckets


@pytest.mark.parametrize("text", ["1:1:2:0", "1:0:0:0", "x", "1:1:0"])
def test_a_damaged_window_is_refused_when_read(text: str) -> None:
    with pytest.raises(ValueError, match="window bucket"):
        machine.decode_buckets(text)
    with pytest.raises(ValueError, match="newest first"):
        machine.decode_buckets("1:1:0:0 2:1:0:0")


def test_the_rates_count_only_the_buckets_still_in_the_window_at_now() -> None:
    config = timed(minimum_calls=2, failure_rate_threshold=0.9)
    snapshot = Snapshot()
    snapshot = machine.record_success(snapshot, config, None, 0.0)
    snapshot = machine.record_failure(snapshot, config, None, 5.0, 5.0, "x")
    snapshot = machine.record_success(snapshot, config, None, 5.5)
    assert machine.window_rates(snapshot, config, 9.9) == (pytest.approx(1 / 3), None)
    assert machine.window_rates(snapshot, config, 10.0) == (0.5, None)
    assert machine.window_rates(snapshot, config, 15.0) == (None, None)  # empty: below minimum


@pytest.mark.parametrize("calls", [1, 3, 40])
def test_counting_fast_successes_at_once_is_the_same_as_one_by_one(calls: int) -> None:
    config = timed(**SLOW)
    start = machine.record_success(Snapshot(), config, None, 2.0, slow=True)
    one_by_one = start
    for _ in range(calls):
        one_by_one = machine.record_success(one_by_one, config, None, 7.5)
    assert machine.count_calls(start, config, calls, 7.5) == one_by_one
    with pytest.raises(ValueError, match="pass now"):
        machine.count_calls(start, config, calls)


def test_a_late_count_goes_to_its_own_older_bucket_or_nowhere() -> None:
    config = timed()
    snapshot = machine.record_failure(Snapshot(), config, None, 12.0, 12.0, "x")
    assert machine.held_buckets(machine.count_calls(snapshot, config, 3, 4.0)) == (
        (12, 1, 1, 0),
        (4, 3, 0, 0),
    )
    assert machine.count_calls(snapshot, config, 3, 2.0) == snapshot  # already out of the window


def test_a_transition_empties_the_time_window() -> None:
    config = timed()
    opened = machine.record_failure(
        machine.record_success(Snapshot(), config, None, 0.0), config, None, 1.0, 1.0, "x"
    )
    assert opened.state is OPEN
    assert opened.window_buckets == ()
    assert (
        machine.reset(machine.record_success(Snapshot(), config, None, 0.0), 1.0).window_buckets
        == ()
    )


# -- the breaker: successes stamped with their time ---------------------------------------------


class CountingClock(FakeClock):
    """A fake clock that counts its monotonic reads."""

    __slots__ = ("reads",)

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def monotonic(self) -> float:
        self.reads += 1
        return super().monotonic()


def test_an_in_process_breaker_puts_fast_successes_in_the_bucket_of_their_time() -> None:
    clock = FakeClock(monotonic=0.0)
    breaker = CircuitBreaker(
        "api", clock=clock, failure_threshold=100, failure_rate_threshold=0.5,
        window_seconds=10, minimum_calls=2,
    )  # fmt: skip
    for _ in range(4):
        breaker.call(lambda: None)  # bucket 0
    clock.advance(5.0)
    for _ in range(2):
        breaker.call(lambda: None)  # bucket 5
    clock.advance(5.0)  # t = 10: bucket 0 has left
    assert breaker.stats["failure_rate"] == 0.0
    with pytest.raises(Boom):
        breaker.call(_boom)
    assert breaker.stats["failure_rate"] == pytest.approx(1 / 3)  # 1 of the 3 still held
    with pytest.raises(Boom):
        breaker.call(_boom)
    assert breaker.state is OPEN  # 2 of 4: the 4 successes of bucket 0 no longer count


def test_stats_show_a_window_that_emptied_while_the_breaker_was_idle() -> None:
    clock = FakeClock(monotonic=0.0)
    breaker = CircuitBreaker(
        "api", clock=clock, failure_threshold=100, failure_rate_threshold=0.9,
        window_seconds=10, minimum_calls=2,
    )  # fmt: skip
    breaker.call(lambda: None)
    with pytest.raises(Boom):
        breaker.call(_boom)
    assert breaker.stats["failure_rate"] == 0.5
    clock.advance(3600)
    assert breaker.stats["failure_rate"] is None


@pytest.mark.parametrize(
    ("settings", "reads"),
    [
        ({}, 0),
        ({"failure_rate_threshold": 0.5, "window_calls": 100}, 0),
        ({"failure_rate_threshold": 0.5, "window_seconds": 10}, 1),
    ],
)
def test_a_success_reads_the_clock_only_with_a_time_window_on(
    settings: dict[str, Any], reads: int
) -> None:
    clock = CountingClock()
    breaker = CircuitBreaker("api", clock=clock, **settings)
    protected = breaker(lambda: None)
    breaker.call(lambda: None)
    before = clock.reads
    for _ in range(10):
        breaker.call(lambda: None)
        protected()
    assert (clock.reads - before) / 20 == reads


@pytest.mark.parametrize(
    ("settings", "writes"),
    [({}, 0), ({"failure_rate_threshold": 0.5, "window_seconds": 10.0}, 50)],
)
def test_in_a_shared_store_each_success_is_one_write_only_with_a_time_window_on(
    settings: dict[str, Any], writes: int
) -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    breaker = CircuitBreaker("db", clock=clock, store=store, **settings)
    for _ in range(50):
        breaker.call(lambda: None)
    assert store.successes == writes
    if writes:
        stored = store.load("db")
        assert stored is not None
        assert sum(bucket[1] for bucket in machine.held_buckets(stored.snapshot)) == 50


def test_breakers_of_one_store_share_one_exact_time_window(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = {"failure_threshold": 100, "failure_rate_threshold": 0.5, "window_seconds": 10.0,
                "minimum_calls": 2}  # fmt: skip
    with SqliteStore(tmp_path / "circuits.db", clock=clock) as store:
        first = CircuitBreaker("db", clock=clock, store=store, **settings)
        second = CircuitBreaker("db", clock=clock, store=store, **settings)
        for i in range(6):
            (first if i % 2 else second).call(lambda: None)
        clock.advance(10.0)  # the six successes leave the window
        with pytest.raises(Boom):
            first.call(lambda: _boom())
        second.call(lambda: None)
        assert first.stats["failure_rate"] == second.stats["failure_rate"] == 0.5
        with pytest.raises(Boom):
            second.call(_boom)
        assert first.state is second.state is OPEN  # 2 of 3, counted by both breakers


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"window_calls": 10, "window_seconds": 10.0, "failure_rate_threshold": 0.5},
            "window_calls and window_seconds are two kinds of window; set one of them",
        ),
        ({"window_seconds": 10.0}, "window_seconds needs failure_rate_threshold"),
        (
            {"window_seconds": 0.05, "failure_rate_threshold": 0.5},
            "window_seconds must be at least 0.1",
        ),
        (
            {"window_seconds": 86401, "failure_rate_threshold": 0.5},
            "window_seconds must be",
        ),
        ({"window_seconds": "x", "failure_rate_threshold": 0.5}, "window_seconds must be"),
        ({"window_seconds": -1, "failure_rate_threshold": 0.5}, "window_seconds must be"),
        ({"failure_rate_threshold": 0.5}, "needs window_calls or window_seconds"),
    ],
)
def test_bad_time_window_settings_are_refused_by_name(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        BreakerConfig(**settings)
    with pytest.raises(ConfigError, match=message):
        CircuitBreakerRegistry(default_config=settings)
    with pytest.raises(ConfigError, match=message):
        CircuitBreakerRegistry().get("x", **settings)


def test_a_time_window_needs_100_calls_unless_minimum_calls_says_otherwise() -> None:
    assert timed(minimum_calls=None).least_calls == 100
    assert timed(minimum_calls=7).least_calls == 7
    assert (
        CircuitBreakerRegistry()
        .get("x", failure_rate_threshold=0.5, window_seconds=30)
        .config.window_seconds
        == 30.0
    )


FILE = Path("/etc/cbctl/cbctl.toml")
TOML = """
[defaults]
failure_rate_threshold = 0.5
window_seconds = 60
minimum_calls = 20
[dependencies.llm]
kind = "llamacpp"
url = "http://127.0.0.1:9/"
window_seconds = 10.5
"""


def test_time_window_settings_come_from_defaults_and_each_dependency(tmp_path: Path) -> None:
    config = parse_config(TOML + '[dependencies.db]\nkind = "tcp"\nurl = "tcp://h:1"\n',
                          path=FILE, environ={})  # fmt: skip
    llm, db = config.dependencies["llm"].breaker, config.dependencies["db"].breaker
    assert (llm.window_seconds, db.window_seconds, db.minimum_calls) == (10.5, 60.0, 20)
    path = tmp_path / "cbctl.toml"
    path.write_text(TOML)
    result = CliRunner().invoke(app, ["--config", str(path), "config", "--json"])
    assert result.exit_code == 0, result.output
    shown = next(d for d in json.loads(result.stdout)["dependencies"] if d["name"] == "llm")
    assert shown["window_seconds"] == 10.5
    assert shown["from"]["window_seconds"] == "dependencies.llm.window_seconds"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[defaults]\nfailure_rate_threshold = 0.5\nwindow_seconds = 10\nwindow_calls = 10",
            r"^/etc/cbctl/cbctl.toml: .*window_calls and window_seconds are two kinds of window",
        ),
        (
            "[defaults]\nfailure_rate_threshold = 0.5\nwindow_seconds = 'long'",
            r"^/etc/cbctl/cbctl.toml: defaults.window_seconds must be",
        ),
    ],
)
def test_bad_time_window_settings_in_the_file_name_the_file_and_key(
    text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, path=FILE, environ={})


def test_cbctl_refuses_both_windows_in_one_line_with_its_config_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "cbctl.toml"
    path.write_text("[defaults]\nfailure_rate_threshold = 0.5\nwindow_seconds = 10\n"
                    "window_calls = 10\n")  # fmt: skip
    result = CliRunner().invoke(app, ["--config", str(path), "config"])
    assert result.exit_code == 2, result.output
    assert "two kinds of window" in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


# -- the state file: the 4 -> 5 migration adds the time window's columns -------------------------


def test_a_schema_4_state_file_is_migrated_with_an_empty_time_window(tmp_path: Path) -> None:
    path = tmp_path / "circuits.db"
    old = sqlite3.connect(path, isolation_level=None)
    for statement in SCHEMA_4:
        old.execute(statement)
    old.execute(V4_ROW, ("qdrant", "closed", None))
    old.close()
    clock = FakeClock(wall=10_000.0)
    config = timed(failure_threshold=5)
    with SqliteStore(path, clock=clock) as store:
        (circuit,) = store.load_all()
        assert circuit.snapshot.window_buckets == ()
        store.record_success("qdrant", config, None)
        clock.advance(1.0)
        after = store.record_failure("qdrant", config, None, "down").after
        assert after.state is OPEN  # 1 of 2 in the new window
        store.record_success("llm", config, None)
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    rows = check.execute("SELECT name, window_seconds, window_buckets FROM circuits ORDER BY name")
    assert rows.fetchall() == [("llm", 10.0, "10001:1:0:0"), ("qdrant", 10.0, "")]
    check.close()
