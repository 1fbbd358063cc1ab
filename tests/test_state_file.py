"""The local state file refuses what it must not touch, and stays private and quiet.

Each refusal is a StateError that names the file, and the file is byte-for-byte as it was.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cbctl import (
    CircuitBreaker,
    CircuitBreakerError,
    FakeClock,
    StateError,
    StoreUnavailableError,
)
from cbctl.state import BreakerConfig
from cbctl.stores import open_store, resolve_state_location
from cbctl.stores.sqlite import SCHEMA_VERSION, SqliteStore


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
