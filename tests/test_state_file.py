"""The local state file refuses what it must not touch, stays private and quiet, and degrades
like Redis when the file system fails it.

Each refusal is a StateError that names the file, and the file is byte-for-byte as it was. A file
that cannot be written (a read-only bind mount, a full tmpfs: real mounts, skipped with the
reason where the machine refuses them) is still read, and writers degrade to in-process state.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cbctl import (
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
    FakeClock,
    StateError,
    StoreUnavailableError,
)
from cbctl.cli import app
from cbctl.health import health_app
from cbctl.state import BreakerConfig
from cbctl.stores import open_store, resolve_state_location
from cbctl.stores.sqlite import SCHEMA_VERSION, SqliteStore

runner = CliRunner()


def fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def refused(path: Path) -> str:
    with pytest.raises(StateError) as error:
        SqliteStore(path)
    message = str(error.value)
    assert str(path) in message
    return message


def test_garbage_bytes_are_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "circuits.db"
    path.write_bytes(b"this is my shopping list, not a database\n" * 10)
    before = fingerprint(path)
    assert "not a cbctl state file" in refused(path)
    assert fingerprint(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuits.db"]


def test_another_applications_sqlite_database_is_refused_and_left_untouched(
    tmp_path: Path,
) -> None:
    path = tmp_path / "circuits.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        other.execute("INSERT INTO invoices (total) VALUES (12.5)")
    before = fingerprint(path)
    assert "another application" in refused(path)
    assert fingerprint(path) == before


def test_a_state_file_from_a_newer_cbctl_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "circuits.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as newer:
        newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    newer.close()
    before = fingerprint(path)
    assert "newer cbctl" in refused(path)
    assert fingerprint(path) == before


def test_a_symlink_at_the_state_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    SqliteStore(target).close()
    before = fingerprint(target)
    link = tmp_path / "circuits.db"
    link.symlink_to(target)
    assert "symbolic link" in refused(link)
    assert fingerprint(target) == before


def test_a_dangling_symlink_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    link = tmp_path / "circuits.db"
    link.symlink_to(tmp_path / "planted.db")
    assert "symbolic link" in refused(link)
    assert not (tmp_path / "planted.db").exists()


def test_a_path_under_a_regular_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    assert "not a directory" in refused(blocker / "circuits.db")


@pytest.fixture
def read_only_dir() -> Iterator[Path]:
    """A directory others may enter but not write (root-owned, 0755, outside pytest's 0700 tree)."""
    directory = Path(tempfile.mkdtemp(prefix="cbctl-ro-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def unwritable_directory_outcome(path: Path) -> str:
    """Open a state file in a directory that cannot be written, and record a failure through it:
    what the store and the breaker say (as a line of text)."""
    try:
        store = SqliteStore(path)
    except StateError as error:
        return f"refused: {error}"
    breaker = CircuitBreaker("dep", store=store, failure_threshold=1)
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    try:
        store.load_all()
    except StoreUnavailableError as error:
        unreadable = str(error)
    else:
        unreadable = "readable"
    return f"{breaker.stats['state']} | {breaker.stats['degraded']} | {unreadable}"


def test_a_directory_that_cannot_be_written_degrades_instead_of_refusing(
    read_only_dir: Path,
) -> None:
    """Checked as an unprivileged user: root writes anywhere, so a root test would prove nothing.

    No file can be created: the store opens without one, every operation is unavailable with
    the reason, and a breaker keeps protecting calls in-process.
    """
    path = read_only_dir / "circuits.db"
    if os.geteuid() != 0:
        read_only_dir.chmod(0o555)
        message = unwritable_directory_outcome(path)
    else:
        reader, writer = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the forked child
            os.close(reader)
            try:
                os.setgid(65534)
                os.setuid(65534)
                outcome = unwritable_directory_outcome(path).encode()
            except BaseException as error:
                outcome = repr(error).encode()
            os.write(writer, outcome)
            os._exit(0)
        os.close(writer)
        with os.fdopen(reader, "rb") as pipe:
            message = pipe.read().decode()
        os.waitpid(child, 0)
    state, degraded, unreadable = message.split(" | ")
    assert state == "open", message
    assert "not writable" in degraded, message
    assert str(path) in degraded, message
    assert "not writable" in unreadable, message
    assert not path.exists()


def test_the_state_file_and_its_wal_are_private_to_the_owner(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "circuits.db"
    store = SqliteStore(path)
    CircuitBreaker("dep", store=store, failure_threshold=1).reset()
    try:
        for created in (path, path.with_name("circuits.db-wal"), path.with_name("circuits.db-shm")):
            assert stat.S_IMODE(created.stat().st_mode) == 0o600, created
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        store.close()


def test_an_empty_file_becomes_a_state_file(tmp_path: Path) -> None:
    path = tmp_path / "circuits.db"
    path.touch()
    with SqliteStore(path) as store:
        store.reset("dep")
        assert store.load("dep") is not None


def test_a_steady_closed_success_does_not_write(tmp_path: Path) -> None:
    path = tmp_path / "circuits.db"
    store = SqliteStore(path, clock=FakeClock())
    breaker = CircuitBreaker("dep", store=store)
    breaker.call(lambda: None)
    watcher = sqlite3.connect(path)

    def version() -> int:
        return int(watcher.execute("PRAGMA data_version").fetchone()[0])

    try:
        before = version()
        for _ in range(100):
            breaker.call(lambda: None)
        assert version() == before
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
        assert version() != before
    finally:
        watcher.close()
        store.close()


def test_another_process_reset_replaces_what_this_store_had_cached(tmp_path: Path) -> None:
    path = tmp_path / "circuits.db"
    clock = FakeClock()
    mine, theirs = SqliteStore(path, clock=clock), SqliteStore(path, clock=clock)
    config = BreakerConfig(failure_threshold=1)
    mine.record_failure("dep", config, None, "down")
    assert mine.admit("dep", config).permit is None
    theirs.reset("dep")
    assert mine.admit("dep", config).permit is not None
    mine.close()
    theirs.close()


def test_open_store_picks_the_store_from_the_location(tmp_path: Path) -> None:
    assert type(open_store("memory://")).__name__ == "MemoryStore"
    file_store = open_store(str(tmp_path / "c.db"))
    assert isinstance(file_store, SqliteStore)
    file_store.close()
    redis_store = open_store("redis://:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in redis_store.url
    redis_store.close()


def test_open_store_refuses_unknown_schemes_without_showing_passwords() -> None:
    with pytest.raises(StateError) as error:
        open_store("postgresql://admin:hunter2@db/state")
    assert "hunter2" not in str(error.value)
    assert "unsupported state location" in str(error.value)


def test_state_location_is_flag_then_environment_then_user_state_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CBCTL_STATE", "/from/env.db")
    assert resolve_state_location("/from/flag.db") == "/from/flag.db"
    assert resolve_state_location(None) == "/from/env.db"
    monkeypatch.delenv("CBCTL_STATE")
    assert resolve_state_location(None).endswith(os.path.join("cbctl", "circuits.db"))


def test_a_state_file_locked_too_long_degrades_the_breaker_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "circuits.db"
    clock = FakeClock()
    store = SqliteStore(path, clock=clock, busy_timeout=0.05, retry_interval=5.0)
    breaker = CircuitBreaker("dep", store=store, clock=clock, failure_threshold=2)
    breaker.call(lambda: None)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        for _ in range(2):
            with pytest.raises(ZeroDivisionError):
                breaker.call(lambda: 1 / 0)
        degraded = breaker.stats["degraded"]
        assert degraded is not None
        assert str(path) in degraded
        assert "locked" in degraded
        assert breaker.stats["state"] == "open", "protected in-process while degraded"
        with pytest.raises(CircuitBreakerError):
            breaker.call(lambda: "not called")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    clock.advance(5.0)
    breaker.reset()
    assert breaker.stats["degraded"] is None
    assert breaker.call(lambda: "shared again") == "shared again"
    stored = store.load("dep")
    assert stored is not None
    assert stored.snapshot.state == "closed"
    store.close()


# -- schema 1 -> 2 --------------------------------------------------------------------------------

SCHEMA_1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE circuits (
        name TEXT PRIMARY KEY, state TEXT NOT NULL, failure_count INTEGER NOT NULL,
        success_count INTEGER NOT NULL, generation INTEGER NOT NULL, trials INTEGER NOT NULL,
        trial_deadline REAL, opened_at REAL, changed_at REAL, forced INTEGER NOT NULL,
        last_failure_at REAL, last_error TEXT, failure_threshold INTEGER NOT NULL,
        timeout REAL NOT NULL, success_threshold INTEGER NOT NULL,
        half_open_max_calls INTEGER NOT NULL, revision INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "INSERT INTO meta (key, value) VALUES ('application', 'cbctl'), ('schema_version', '1')",
    "PRAGMA application_id = 1667392372",
    "PRAGMA user_version = 1",
)
V1_ROW = "INSERT INTO circuits VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, 0, ?, ?, 1, 30.0, 2, 2, 7)"


def test_a_schema_1_state_file_is_migrated_in_place_with_its_trials_as_leases(
    tmp_path: Path,
) -> None:
    path = tmp_path / "circuits.db"
    old = sqlite3.connect(path, isolation_level=None)
    for statement in SCHEMA_1:
        old.execute(statement)
    old.execute("CREATE TABLE IF NOT EXISTS other_table (x)")
    old.execute(V1_ROW, ("qdrant", "half_open", 1, 3, 2, 1000.0, 960.0, 970.0, 950.0, "down"))
    old.execute(V1_ROW, ("redis", "closed", 0, 0, 0, None, None, 900.0, None, None))
    old.close()
    with SqliteStore(path, clock=FakeClock(wall=975.0)) as store:
        circuits = {c.name: c.snapshot for c in store.load_all()}
        assert circuits["qdrant"].leases == ((1, 1000.0), (2, 1000.0))
        assert circuits["qdrant"].trials_admitted == 2
        assert (circuits["qdrant"].state, circuits["qdrant"].last_error) == ("half_open", "down")
        assert circuits["redis"].leases == ()
        config = BreakerConfig(failure_threshold=1, half_open_max_calls=2)
        assert store.admit("qdrant", config).permit is None, "both migrated trials still hold"
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    columns = {row[1] for row in check.execute("PRAGMA table_info(circuits)")}
    assert "trials" not in columns
    assert "leases" in columns
    assert check.execute("SELECT count(*) FROM other_table").fetchone() == (0,)
    check.close()


# -- faults of the file system: read-only, full, locked -------------------------------------------


def mount(*args: str) -> None:
    """Run mount(8); skip the test, saying why, where the machine refuses mounts."""
    if os.geteuid() != 0:
        pytest.skip("mounting file systems needs root")
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"this machine refuses mounts: mount {' '.join(args)}: {done.stderr.strip()}")


def unmount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a writable directory, the same directory bind-mounted read-only)."""
    source, view = tmp_path / "source", tmp_path / "view"
    source.mkdir()
    view.mkdir()
    mount("--bind", str(source), str(view))
    try:
        mount("-o", "remount,ro,bind", str(view))
        yield source, view
    finally:
        unmount(view)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KB tmpfs, to be filled up by the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(disk))
    try:
        yield disk
    finally:
        unmount(disk)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    return filler


def seed(path: Path, clock: FakeClock) -> None:
    """A state file with `redis` open and `qdrant` closed, closed cleanly (no -wal, no -shm)."""
    with SqliteStore(path, clock=clock) as store:
        store.record_failure("redis", BreakerConfig(failure_threshold=1), None, "refused")
        store.reset("qdrant", BreakerConfig())


def test_a_state_file_on_a_read_only_mount_is_read_and_writers_degrade_until_it_is_writable(
    read_only_view: tuple[Path, Path],
) -> None:
    source, view = read_only_view
    clock = FakeClock()
    seed(source / "circuits.db", clock)
    store = open_store(str(view / "circuits.db"), clock=clock)
    assert isinstance(store, SqliteStore)
    assert store.problem is not None
    assert "read-only" in store.problem
    assert [c.name for c in store.load_all()] == ["qdrant", "redis"]

    breaker = CircuitBreaker("qdrant", store=store, clock=clock, failure_threshold=1)
    assert breaker.state is CircuitState.CLOSED
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    degraded = breaker.stats["degraded"]
    assert degraded is not None
    assert "read-only" in degraded
    assert breaker.state is CircuitState.OPEN, "protected in-process"

    mount("-o", "remount,rw,bind", str(view))
    clock.advance(1.0)  # the store's retry interval
    with pytest.raises(CircuitBreakerError):
        breaker.call(lambda: "not called")
    assert breaker.stats["degraded"] is None
    assert store.problem is None
    with SqliteStore(source / "circuits.db", clock=clock) as writer:
        written = writer.load("qdrant")
    assert written is not None
    assert written.snapshot.state is CircuitState.OPEN, "the open circuit was written back"
    store.close()


def test_status_watch_and_serve_work_on_a_read_only_state_file(
    read_only_view: tuple[Path, Path],
) -> None:
    source, view = read_only_view
    seed(source / "circuits.db", FakeClock())
    location = str(view / "circuits.db")
    status = runner.invoke(app, ["--state", location, "status", "--json"])
    assert status.exit_code == 0, status.stderr
    assert [c["name"] for c in json.loads(status.stdout)] == ["qdrant", "redis"]
    watch = runner.invoke(app, ["--state", location, "watch", "--once"])
    assert watch.exit_code == 0, watch.stderr
    assert "redis" in watch.stdout
    with open_store(location) as store:
        answer = health_app(store).respond("GET", "/health", {}, b"")
    assert answer.status == 200
    assert sorted(json.loads(answer.body)["circuits"]) == ["qdrant", "redis"]
    assert sorted(p.name for p in source.iterdir()) == ["circuits.db"], "nothing was written"


def test_a_full_disk_degrades_writers_keeps_the_file_readable_and_recovers(
    small_disk: Path,
) -> None:
    path = small_disk / "circuits.db"
    clock = FakeClock()
    seed(path, clock)
    store = SqliteStore(path, clock=clock)
    breaker = CircuitBreaker("qdrant", store=store, clock=clock, failure_threshold=2)
    breaker.call(lambda: None)
    filler = fill(small_disk)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    degraded = breaker.stats["degraded"]
    assert degraded is not None
    assert "full" in degraded
    assert breaker.state is CircuitState.OPEN, "protected in-process"
    with SqliteStore(path, clock=clock) as reader:
        assert [c.name for c in reader.load_all()] == ["qdrant", "redis"]
    filler.unlink()
    clock.advance(1.0)
    with pytest.raises(CircuitBreakerError):
        breaker.call(lambda: "not called")
    assert breaker.stats["degraded"] is None
    written = store.load("qdrant")
    assert written is not None
    assert (written.snapshot.state, written.snapshot.failure_count) == ("open", 2)
    store.close()


def test_a_state_file_opened_on_a_full_disk_is_readable_and_says_why_it_cannot_be_written(
    small_disk: Path,
) -> None:
    path = small_disk / "circuits.db"
    seed(path, FakeClock())
    fill(small_disk)
    with open_store(str(path)) as store:
        assert isinstance(store, SqliteStore)
        assert [c.name for c in store.load_all()] == ["qdrant", "redis"]
        assert store.problem is not None
        with pytest.raises(StoreUnavailableError) as refused_write:
            store.reset("qdrant")
        assert str(path) in str(refused_write.value)


def test_the_state_file_waits_at_most_one_second_for_another_writers_lock(tmp_path: Path) -> None:
    path = tmp_path / "circuits.db"
    with SqliteStore(path) as store:
        connection = store._connection
        assert connection is not None
        assert connection.execute("PRAGMA busy_timeout").fetchone()[0] <= 1000


def test_a_state_file_from_before_the_journal_gains_it_without_a_schema_version_change(
    tmp_path: Path,
) -> None:
    path = tmp_path / "circuits.db"
    SqliteStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute("DROP TABLE events")
        raw.commit()
    store = SqliteStore(path)
    breaker = CircuitBreaker("dep", failure_threshold=1, store=store)
    with contextlib.suppress(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    assert [e.state.value for e in store.events("dep")] == ["open"]
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_the_state_files_journal_stays_bounded_on_disk_however_many_transitions(
    tmp_path: Path,
) -> None:
    from cbctl.journal import JOURNAL_LIMIT
    from cbctl.stores.sqlite import _TRIM_EVERY

    path = tmp_path / "circuits.db"
    store = SqliteStore(path)
    breakers = [CircuitBreaker(name, failure_threshold=1, store=store) for name in ("a", "b")]
    for _ in range(300):
        for breaker in breakers:
            with contextlib.suppress(ZeroDivisionError):
                breaker.call(lambda: 1 / 0)
            breaker.reset()
    with contextlib.closing(sqlite3.connect(path)) as raw:
        counts = dict(raw.execute("SELECT circuit, count(*) FROM events GROUP BY circuit"))
    assert all(JOURNAL_LIMIT <= count <= JOURNAL_LIMIT + _TRIM_EVERY for count in counts.values())
    assert [len(store.events(name)) for name in ("a", "b")] == [JOURNAL_LIMIT] * 2
    assert store.events("a")[-1].state.value == "closed"
    store.close()
