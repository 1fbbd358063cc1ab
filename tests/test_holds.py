"""Operator holds that expire: the pure core, the breaker, the state file, the CLI, the display.

Every hold is driven by a fake clock (or a store whose clock is set past the expiry), so no test
waits for a hold to end.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from cbctl import CircuitBreaker, CircuitBreakerError, FakeClock
from cbctl import state as machine
from cbctl.cli import app
from cbctl.errors import ConfigError, StateError
from cbctl.fleet import SourceReport, stored_stats
from cbctl.render import circuit_table, hold_note, make_console
from cbctl.state import BreakerConfig, CircuitState, CircuitStore, Snapshot, StoredCircuit
from cbctl.stores import MemoryStore
from cbctl.stores.sqlite import SCHEMA_VERSION, SqliteStore

CLOSED, OPEN = CircuitState.CLOSED, CircuitState.OPEN
CONFIG = BreakerConfig(failure_threshold=2, timeout=5.0)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
runner = CliRunner()


def held(state: CircuitState, now: float = 100.0, until: float | None = 110.0) -> Snapshot:
    return machine.force(machine.INITIAL, state, now, until=until, reason="drill", owner="o@h")


# -- the pure core -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "now", "admitted", "after_state", "still_held"),
    [
        (OPEN, 109.9, False, OPEN, True),
        (OPEN, 110.0, True, CLOSED, False),
        (OPEN, 500.0, True, CLOSED, False),
        (CLOSED, 109.9, True, CLOSED, True),
        (CLOSED, 110.0, True, CLOSED, False),
    ],
)
def test_a_hold_lasts_until_its_expiry_and_the_first_operation_then_ends_it(
    state: CircuitState, now: float, admitted: bool, after_state: CircuitState, still_held: bool
) -> None:
    after, permit = machine.admit(held(state), CONFIG, now)
    assert (permit is not None, after.state, after.forced) == (admitted, after_state, still_held)
    assert (after.hold_reason is not None) == still_held


def test_an_expired_hold_ends_exactly_like_a_reset() -> None:
    snapshot = machine.record_failure(held(CLOSED), CONFIG, None, 101.0, 1.0, "down")
    assert snapshot.failure_count == 1
    expired = machine.expire(snapshot, 110.0)
    assert expired == machine.reset(replace(snapshot, hold_until=None), 110.0)
    assert (expired.state, expired.failure_count, expired.hold_until) == (CLOSED, 0, None)
    assert expired.generation == snapshot.generation + 1
    assert expired.last_error == "down", "the last failure stays as history"


def test_a_circuit_held_closed_never_trips_until_its_hold_expires() -> None:
    snapshot = held(CLOSED)
    for moment in (101.0, 102.0, 103.0):
        snapshot = machine.record_failure(snapshot, CONFIG, None, moment, moment, "down")
    assert (snapshot.state, snapshot.failure_count) == (CLOSED, 3)
    for moment in (111.0, 112.0):
        snapshot = machine.record_failure(snapshot, CONFIG, None, moment, moment, "down")
    assert (snapshot.state, snapshot.failure_count, snapshot.forced) == (OPEN, 2, False)


def test_a_reset_ends_a_hold_before_its_expiry() -> None:
    after = machine.reset(held(OPEN), 105.0)
    assert (after.state, after.forced, after.hold_until, after.hold_owner) == (
        CLOSED,
        False,
        None,
        None,
    )


def test_a_hold_without_expiry_lasts_until_reset() -> None:
    snapshot = held(OPEN, until=None)
    assert machine.admit(snapshot, CONFIG, 1e9)[1] is None
    assert machine.retry_after(snapshot, CONFIG, 1e9) is None


def test_retry_after_of_a_timed_open_hold_is_the_time_to_its_expiry() -> None:
    assert machine.retry_after(held(OPEN), CONFIG, 104.0) == pytest.approx(6.0)
    assert machine.retry_after(held(OPEN), CONFIG, 111.0) is None


def test_rebase_shifts_the_hold_expiry_with_the_other_times() -> None:
    moved = machine.rebase(held(OPEN), -50.0)
    assert (moved.hold_until, moved.opened_at) == (60.0, 50.0)


def test_a_write_back_after_an_outage_ends_an_expired_hold_and_does_not_count_over_it() -> None:
    snapshot = held(OPEN)
    outage = machine.Outage(snapshot.generation, failures=3)
    assert machine.reconcile(snapshot, CONFIG, outage, 105.0) == snapshot
    after = machine.reconcile(snapshot, CONFIG, outage, 111.0)
    assert (after.state, after.failure_count, after.forced) == (CLOSED, 0, False)


@given(
    st.sampled_from([OPEN, CLOSED]),
    st.floats(0.01, 1000.0),
    st.floats(0.0, 2000.0),
    st.sampled_from(["admit", "success", "failure", "release"]),
)
def test_no_operation_at_or_after_the_expiry_leaves_the_hold_in_place(
    state: CircuitState, span: float, late: float, op: str
) -> None:
    snapshot = held(state, 100.0, 100.0 + span)
    now = 100.0 + span + late
    permit = machine.Permit(snapshot.generation)
    after = {
        "admit": lambda: machine.admit(snapshot, CONFIG, now)[0],
        "success": lambda: machine.record_success(snapshot, CONFIG, permit, now),
        "failure": lambda: machine.record_failure(snapshot, CONFIG, permit, now, now, "x"),
        "release": lambda: machine.release(snapshot, permit, now),
    }[op]()
    assert not after.forced
    assert after.generation > snapshot.generation


# -- the breaker -------------------------------------------------------------------------------


def test_a_breaker_held_open_for_a_while_rejects_then_admits_after_the_expiry() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("api", clock=clock)
    breaker.force_open(for_=60, reason="failover drill")
    with pytest.raises(CircuitBreakerError) as rejected:
        breaker.call(lambda: None)
    assert rejected.value.retry_after == pytest.approx(60.0)
    stats = breaker.stats
    assert (stats["hold_reason"], stats["forced"]) == ("failover drill", True)
    assert re.fullmatch(r"\S+@\S+", stats["hold_owner"])
    assert stats["hold_until"] == "2026-01-01T00:01:00Z"
    clock.advance(60)
    assert breaker.stats["state"] == "closed", "a hold never shows past its expiry"
    assert breaker.call(lambda: "ok") == "ok"
    assert (breaker.stats["forced"], breaker.stats["hold_reason"]) == (False, None)


def test_a_breaker_held_closed_for_a_while_trips_again_after_the_expiry() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("api", clock=clock, failure_threshold=1)
    breaker.force_closed(for_=30, reason="noisy migration")

    def down() -> None:
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            breaker.call(down)
    assert breaker.state == "closed"
    clock.advance(30)
    with pytest.raises(ConnectionError):
        breaker.call(down)
    assert breaker.state == "open"


def test_a_breaker_without_for_keeps_todays_hold_until_reset() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("api", clock=clock)
    breaker.force_open()
    clock.advance(10 * 86400)
    assert breaker.stats["hold_until"] is None
    with pytest.raises(CircuitBreakerError):
        breaker.call(lambda: None)
    breaker.reset()
    assert breaker.call(lambda: 1) == 1


@pytest.mark.parametrize(
    ("for_", "reason", "message"),
    [
        (0, None, "for_ must be a positive"),
        (-5, None, "for_ must be a positive"),
        (float("nan"), None, "for_ must be"),
        (31 * 86400, None, "for_ must be at most"),
        ("10", None, "for_ must be a number"),
        (10, "x" * 201, "reason must be at most 200"),
        (10, 42, "reason must be text"),
    ],
)
def test_a_bad_hold_is_refused_and_changes_nothing(
    for_: object, reason: object, message: str
) -> None:
    breaker = CircuitBreaker("api", clock=FakeClock())
    with pytest.raises(ConfigError, match=message):
        breaker.force_open(for_=for_, reason=reason)  # type: ignore[arg-type]
    assert breaker.stats["forced"] is False


def test_a_hold_in_a_shared_store_ends_for_every_breaker_at_its_expiry() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    first = CircuitBreaker("api", store=store, clock=clock)
    second = CircuitBreaker("api", store=store, clock=clock)
    first.force_open(for_=5, reason="drill")
    with pytest.raises(CircuitBreakerError):
        second.call(lambda: None)
    assert second.stats["hold_reason"] == "drill"
    clock.advance(5)
    assert second.call(lambda: "ok") == "ok"
    assert first.stats["forced"] is False


# -- the state file ------------------------------------------------------------------------------

SCHEMA_2 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE circuits (
        name TEXT PRIMARY KEY, state TEXT NOT NULL, failure_count INTEGER NOT NULL,
        success_count INTEGER NOT NULL, generation INTEGER NOT NULL, leases TEXT NOT NULL,
        trials_admitted INTEGER NOT NULL, opened_at REAL, changed_at REAL,
        forced INTEGER NOT NULL, last_failure_at REAL, last_error TEXT,
        failure_threshold INTEGER NOT NULL, timeout REAL NOT NULL,
        success_threshold INTEGER NOT NULL, half_open_max_calls INTEGER NOT NULL,
        revision INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "INSERT INTO meta (key, value) VALUES ('application', 'cbctl'), ('schema_version', '2')",
    "PRAGMA application_id = 1667392372",
    "PRAGMA user_version = 2",
)
V2_ROW = (
    "INSERT INTO circuits VALUES (?, ?, 0, 0, 3, '', 0, ?, 900.0, ?, NULL, NULL, 1, 30.0, 2, 1, 7)"
)


def test_a_schema_2_state_file_is_migrated_and_its_holds_last_until_reset(tmp_path: Path) -> None:
    path = tmp_path / "circuits.db"
    old = sqlite3.connect(path, isolation_level=None)
    for statement in SCHEMA_2:
        old.execute(statement)
    old.execute(V2_ROW, ("qdrant", "open", 900.0, 1))
    old.execute(V2_ROW, ("redis", "closed", None, 0))
    old.close()
    with SqliteStore(path, clock=FakeClock(wall=10_000.0)) as store:
        circuits = {c.name: c.snapshot for c in store.load_all()}
        assert (circuits["qdrant"].forced, circuits["qdrant"].hold_until) == (True, None)
        assert store.admit("qdrant", BreakerConfig()).permit is None, "still held"
        update = store.force("redis", BreakerConfig(), OPEN, for_=60, reason="r", owner="o@h")
        assert update.after.hold_until == 10_060.0
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("5",)
    row = check.execute(
        "SELECT hold_until, hold_reason, hold_owner FROM circuits WHERE name = 'redis'"
    ).fetchone()
    assert row == (10_060.0, "r", "o@h")


def test_a_hold_record_that_is_not_a_hold_is_an_unreadable_circuit(tmp_path: Path) -> None:
    path = tmp_path / "circuits.db"
    with SqliteStore(path, clock=FakeClock()) as store:
        store.force("qdrant", BreakerConfig(), OPEN, for_=60, reason="r", owner="o@h")
    hand = sqlite3.connect(path, isolation_level=None)
    hand.execute("UPDATE circuits SET hold_reason = x'00ff', revision = revision + 1")
    hand.close()
    with SqliteStore(path, clock=FakeClock()) as store, pytest.raises(StateError) as error:
        store.load("qdrant")
    assert "hold_reason is b'\\x00\\xff', not text" in str(error.value)


# -- the CLI -------------------------------------------------------------------------------------


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_force_open_holds_a_configured_dependency_and_status_shows_why_and_who(
    tmp_path: Path,
) -> None:
    state = str(tmp_path / "circuits.db")
    code, out, _ = run(
        "--state", state, "force-open", "qdrant", "--for", "15m", "--reason", "drill"
    )
    assert code == 0
    assert "qdrant held open until " in out
    assert "drill" in out
    code, out, _ = run("--state", state, "status", "--json")
    (stats,) = json.loads(out)
    assert (stats["state"], stats["forced"], stats["hold_reason"]) == ("open", True, "drill")
    assert "@" in stats["hold_owner"]
    until = time.mktime(time.strptime(stats["hold_until"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert until == pytest.approx(time.time() + 900, abs=5)
    assert 890 < stats["retry_after"] <= 900


def test_a_hold_made_by_the_cli_ends_at_its_expiry_for_every_process(tmp_path: Path) -> None:
    state = str(tmp_path / "circuits.db")
    assert run("--state", state, "force-closed", "qdrant", "--for", "2h", "--reason", "x")[0] == 0
    with SqliteStore(state, clock=FakeClock(wall=time.time() + 7201)) as later:
        assert later.admit("qdrant", BreakerConfig()).after.forced is False
    _code, out, _ = run("--state", state, "status", "--json")
    assert (json.loads(out)[0]["forced"], json.loads(out)[0]["hold_owner"]) == (False, None)


def test_reset_ends_a_hold_made_by_the_cli(tmp_path: Path) -> None:
    state = str(tmp_path / "circuits.db")
    run("--state", state, "force-open", "qdrant", "--for", "1h", "--reason", "x")
    assert run("--state", state, "reset", "qdrant")[0] == 0
    _code, out, _ = run("--state", state, "status", "--json")
    assert (json.loads(out)[0]["state"], json.loads(out)[0]["hold_reason"]) == ("closed", None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["qdrant", "--for", "soon", "--reason", "x"], "--for must be a duration"),
        (["qdrant", "--for", "0s", "--reason", "x"], "--for must be a duration"),
        (["qdrant", "--for", "31d", "--reason", "x"], "--for must be at most 30d"),
        (["qdrant", "--for", "1h", "--reason", " "], "--reason must say why"),
        (["qdrant", "--for", "1h", "--reason", "y" * 201], "--reason must be at most 200"),
        (["no-such-circuit", "--for", "1h", "--reason", "x"], "unknown circuit 'no-such-circuit'"),
    ],
)
def test_a_bad_hold_on_the_command_line_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    state = tmp_path / "circuits.db"
    code, _, err = run("--state", str(state), "force-open", *args)
    assert code == 2
    assert err.count("\n") == 1, err
    assert message in err
    if state.exists():
        with SqliteStore(state) as store:
            assert all(not c.snapshot.forced for c in store.load_all())


def test_force_open_and_force_closed_have_help_with_an_example() -> None:
    for command in ("force-open", "force-closed"):
        code, out, _ = run(command, "--help")
        assert code == 0
        assert "Example:" in out
        assert "--for" in out
        assert "--reason" in out


# -- the display ---------------------------------------------------------------------------------


def _held_stats(reason: str) -> dict[str, object]:
    snapshot = machine.force(
        machine.INITIAL, OPEN, 1000.0, until=1000.0 + 1800, reason=reason, owner="ops@db-1"
    )
    return stored_stats(StoredCircuit("postgresql", snapshot, CONFIG, 1000.0), "circuits.db")


def test_a_hold_reason_is_sanitised_wherever_it_is_shown() -> None:
    note = hold_note(_held_stats("drill\x1b[2J\nrm -rf"), 1000.0)
    assert note is not None
    assert "\x1b" not in note
    assert "\n" not in note
    assert "by ops@db-1" in note
    assert "(30m00s left)" in note


@pytest.mark.parametrize("width", [80, 120])
def test_a_held_circuit_in_the_table_fits_the_terminal_and_names_reason_and_owner(
    width: int,
) -> None:
    report = SourceReport("circuits.db", (_held_stats("failover drill " * 3),), 1000.0)
    console = make_console()
    console.width = width
    lines = [line.plain for line in circuit_table([report], 1000.0, plain=True).lines(width)]
    assert max(len(line) for line in lines) <= width
    (row,) = [line for line in lines if line.startswith("postgresql  ")]
    assert "open (held)" in row
    assert "30m00s" in row
    (note,) = [line for line in lines if line.startswith("postgresql held open")]
    assert "by ops@db-1" in note
    assert ("failover drill failover drill" in note) == (width == 120)


# -- /health and endpoints read by watch --------------------------------------------------------


def test_health_shows_a_hold_of_a_registry_and_of_a_store_and_ends_it_at_expiry() -> None:
    from cbctl import CircuitBreakerRegistry
    from cbctl.health import health_app

    clock = FakeClock()
    store = MemoryStore(clock)
    registry = CircuitBreakerRegistry(store=store, clock=clock)
    registry.get("qdrant").force_open(for_=120, reason="drill")
    for source in (registry, store):
        body = json.loads(health_app(source, max_age=0).respond("GET", "/health", {}, b"").body)
        entry = body["circuits"]["qdrant"]
        assert (body["status"], entry["hold_reason"], entry["hold_until"]) == (
            "degraded",
            "drill",
            "2026-01-01T00:02:00Z",
        )
    clock.advance(120)
    for source in (registry, store):
        body = json.loads(health_app(source, max_age=0).respond("GET", "/health", {}, b"").body)
        assert (body["status"], body["circuits"]["qdrant"]["hold_reason"]) == ("ok", None)


def test_an_endpoint_hold_that_is_not_text_makes_its_circuit_unreadable() -> None:
    from cbctl.fleet import _checked

    good = _checked("q", {"state": "open", "forced": True, "hold_reason": "drill"})
    assert good["hold_reason"] == "drill"
    bad = _checked("q", {"state": "open", "forced": True, "hold_owner": ["x"]})
    assert bad["state"] == "unreadable"
    assert "hold_owner" in bad["error"]


# -- the journal -------------------------------------------------------------------------------


def _journal_of_a_hold(store: CircuitStore, clock: FakeClock) -> list[tuple[str, str, str | None]]:
    store.force("api", CONFIG, OPEN, for_=5, reason="drill", owner="ops@db-1")
    clock.advance(5)
    store.admit("api", CONFIG)
    store.force("api", CONFIG, OPEN, for_=5, reason="again", owner="ops@db-1")
    store.reset("api", CONFIG)
    events = store.events("api")  # type: ignore[attr-defined]
    return [(e.previous.value, e.state.value, e.error) for e in events]


EXPECTED_JOURNAL = [
    ("closed", "open", "held: drill (by ops@db-1)"),
    ("open", "closed", "hold expired"),
    ("closed", "open", "held: again (by ops@db-1)"),
    ("open", "closed", "hold lifted"),
]


def test_the_journal_of_the_memory_store_and_state_file_shows_a_hold_and_its_expiry(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    assert _journal_of_a_hold(MemoryStore(clock), clock) == EXPECTED_JOURNAL
    clock = FakeClock()
    with SqliteStore(tmp_path / "circuits.db", clock=clock) as store:
        assert _journal_of_a_hold(store, clock) == EXPECTED_JOURNAL


@pytest.mark.slow
def test_the_redis_journal_shows_a_hold_and_its_expiry() -> None:
    from cbctl.stores.redis import RedisStore
    from tests.servers import RedisServer

    clock = FakeClock()
    with RedisServer() as server:
        start = RedisStore(server.url).clock_now()
        store = RedisStore(server.url, time_offset=lambda: clock.wall() - start)
        try:
            assert _journal_of_a_hold(store, clock) == EXPECTED_JOURNAL
        finally:
            store.close()


def test_an_in_process_breaker_journals_a_hold_and_its_expiry() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("api", clock=clock)
    breaker.force_open(for_=5, reason="drill")
    clock.advance(5)
    breaker.call(lambda: None)
    events = [(e.previous.value, e.state.value, e.error) for e in breaker.events()]
    assert events[0][:2] == ("closed", "open")
    assert events[0][2] is not None
    assert events[0][2].startswith("held: drill (by ")
    assert events[1] == ("open", "closed", "hold expired")
