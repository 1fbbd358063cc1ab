"""The local state file: circuits in one SQLite database (stdlib `sqlite3`, WAL) on this machine.

Short-lived `cbctl` processes, long-lived services and `cbctl watch` open the same file and see
the same circuits. Each operation applies the pure functions of `cbctl.state` to one row:

- optimistically, without any lock: read the row and apply the function; when nothing changes
  (admitting a call to a CLOSED or OPEN circuit, a steady success) that read is the answer, so the
  hot path is one cheap SELECT and never writes;
- otherwise under `BEGIN IMMEDIATE` (the database's single write lock): read again, apply the
  function again, write the row if it changed, commit.

WAL keeps readers and the writer out of each other's way and makes a commit atomic, so a writer
killed at any instant leaves the file valid. A file that cannot be written (read-only directory,
file or mount, a full disk) is opened read-only, or not at all: reads keep working where they
can, writes raise StoreUnavailableError saying why (breakers then degrade to in-process state),
and the store tries to open the file for writing again every `retry_interval` seconds.

`synchronous=NORMAL` makes a commit durable against a process crash, not against a power cut:
what the file holds is a cache of what the breakers learnt, and a lost last transition after a
power cut is harmless. Times are the injected clock's wall(): Unix seconds, the same for every
process on the machine.

Thread-safety: one connection per store, used under a lock (the lock is held for one short
statement or transaction, never while a protected call runs). A store must not be used across
`fork()`; open one per process.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Self

from cbctl import state as machine
from cbctl.clock import SYSTEM_CLOCK, Clock
from cbctl.errors import StateError, StoreUnavailableError
from cbctl.journal import JOURNAL_LIMIT, TransitionEvent, error_of, process_source, wall_time
from cbctl.state import (
    BreakerConfig,
    CircuitState,
    Outage,
    Permit,
    Snapshot,
    StoredCircuit,
    Update,
)
from cbctl.stores._records import decoded, load_all_checked

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SqliteStore"]

APPLICATION_ID: Final = 1667392372
"""`PRAGMA application_id` of a cbctl state file (0x63626374, "cbct"), also read from the raw
header. _SCHEMA spells both numbers out: PRAGMA takes no parameters, and no SQL is built from
strings here."""

SCHEMA_VERSION: Final = 5
"""`PRAGMA user_version` this code reads and writes; a larger one is a newer cbctl's file.
Older versions are migrated in place when the file is opened for writing: 1 (one shared trial
count and deadline instead of a lease per trial) to 2, 2 (holds without expiry, reason or
owner) to 3, 3 (no open-duration backoff) to 4, and 4 (no rate policies) to 5."""

_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_HEADER_USER_VERSION: Final = slice(60, 64)
_HEADER_APPLICATION_ID: Final = slice(68, 72)

_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE circuits (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        failure_count INTEGER NOT NULL,
        success_count INTEGER NOT NULL,
        generation INTEGER NOT NULL,
        leases TEXT NOT NULL,
        trials_admitted INTEGER NOT NULL,
        opened_at REAL,
        changed_at REAL,
        forced INTEGER NOT NULL,
        last_failure_at REAL,
        last_error TEXT,
        hold_until REAL,
        hold_reason TEXT,
        hold_owner TEXT,
        failure_threshold INTEGER NOT NULL,
        timeout REAL NOT NULL,
        success_threshold INTEGER NOT NULL,
        half_open_max_calls INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        backoff REAL,
        open_duration REAL,
        backoff_factor REAL NOT NULL DEFAULT 1.0,
        max_timeout REAL,
        jitter REAL NOT NULL DEFAULT 0.0,
        window_count INTEGER NOT NULL DEFAULT 0,
        failure_marks TEXT NOT NULL DEFAULT '',
        slow_marks TEXT NOT NULL DEFAULT '',
        failure_rate_threshold REAL,
        window_calls INTEGER,
        minimum_calls INTEGER,
        slow_call_duration REAL,
        slow_call_rate_threshold REAL,
        window_buckets TEXT NOT NULL DEFAULT '',
        window_seconds REAL
    ) WITHOUT ROWID""",
    "INSERT INTO meta (key, value) VALUES ('application', 'cbctl'), ('schema_version', '5')",
    "PRAGMA application_id = 1667392372",
    "PRAGMA user_version = 5",
)

_MIGRATE_FROM_1: Final = (
    "ALTER TABLE circuits ADD COLUMN leases TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE circuits ADD COLUMN trials_admitted INTEGER NOT NULL DEFAULT 0",
)
_MIGRATED_FROM_1: Final = (
    "ALTER TABLE circuits DROP COLUMN trials",
    "ALTER TABLE circuits DROP COLUMN trial_deadline",
    "UPDATE meta SET value = '2' WHERE key = 'schema_version'",
    "PRAGMA user_version = 2",
)
_MIGRATE_FROM_2: Final = (
    "ALTER TABLE circuits ADD COLUMN hold_until REAL",
    "ALTER TABLE circuits ADD COLUMN hold_reason TEXT",
    "ALTER TABLE circuits ADD COLUMN hold_owner TEXT",
    "UPDATE meta SET value = '3' WHERE key = 'schema_version'",
    "PRAGMA user_version = 3",
)
_MIGRATE_FROM_3: Final = (
    "ALTER TABLE circuits ADD COLUMN backoff REAL",
    "ALTER TABLE circuits ADD COLUMN open_duration REAL",
    "ALTER TABLE circuits ADD COLUMN backoff_factor REAL NOT NULL DEFAULT 1.0",
    "ALTER TABLE circuits ADD COLUMN max_timeout REAL",
    "ALTER TABLE circuits ADD COLUMN jitter REAL NOT NULL DEFAULT 0.0",
    "UPDATE meta SET value = '4' WHERE key = 'schema_version'",
    "PRAGMA user_version = 4",
)
_MIGRATE_FROM_4: Final = (
    "ALTER TABLE circuits ADD COLUMN window_count INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE circuits ADD COLUMN failure_marks TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE circuits ADD COLUMN slow_marks TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE circuits ADD COLUMN failure_rate_threshold REAL",
    "ALTER TABLE circuits ADD COLUMN window_calls INTEGER",
    "ALTER TABLE circuits ADD COLUMN minimum_calls INTEGER",
    "ALTER TABLE circuits ADD COLUMN slow_call_duration REAL",
    "ALTER TABLE circuits ADD COLUMN slow_call_rate_threshold REAL",
    "ALTER TABLE circuits ADD COLUMN window_buckets TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE circuits ADD COLUMN window_seconds REAL",
    "UPDATE meta SET value = '5' WHERE key = 'schema_version'",
    "PRAGMA user_version = 5",
)
_V1_TRIALS: Final = "SELECT name, trials, trial_deadline FROM circuits WHERE trials > 0"
_SET_LEASES: Final = "UPDATE circuits SET leases = ?, trials_admitted = ? WHERE name = ?"

_IDENTIFY: Final = """SELECT
    (SELECT application_id FROM pragma_application_id()),
    (SELECT user_version FROM pragma_user_version()),
    (SELECT count(*) FROM sqlite_master)"""
"""One statement, so one consistent read even while another process initialises the file."""
_SELECT_REVISION: Final = "SELECT revision FROM circuits WHERE name = ?"
_SELECT_ONE: Final = """SELECT state, failure_count, success_count, generation, leases,
    trials_admitted, opened_at, changed_at, forced, last_failure_at, last_error,
    failure_threshold, timeout, success_threshold, half_open_max_calls, revision,
    hold_until, hold_reason, hold_owner, backoff, open_duration, backoff_factor, max_timeout,
    jitter, window_count, failure_marks, slow_marks, failure_rate_threshold, window_calls,
    minimum_calls, slow_call_duration, slow_call_rate_threshold, window_buckets, window_seconds
    FROM circuits WHERE name = ?"""
_SELECT_ALL: Final = """SELECT name, state, failure_count, success_count, generation, leases,
    trials_admitted, opened_at, changed_at, forced, last_failure_at, last_error,
    failure_threshold, timeout, success_threshold, half_open_max_calls, NULL,
    hold_until, hold_reason, hold_owner, backoff, open_duration, backoff_factor, max_timeout,
    jitter, window_count, failure_marks, slow_marks, failure_rate_threshold, window_calls,
    minimum_calls, slow_call_duration, slow_call_rate_threshold, window_buckets, window_seconds
    FROM circuits ORDER BY name"""
_UPSERT: Final = """INSERT OR REPLACE INTO circuits (name, state, failure_count, success_count,
    generation, leases, trials_admitted, opened_at, changed_at, forced, last_failure_at,
    last_error, failure_threshold, timeout, success_threshold, half_open_max_calls,
    hold_until, hold_reason, hold_owner, backoff, open_duration, backoff_factor, max_timeout,
    jitter, window_count, failure_marks, slow_marks, failure_rate_threshold, window_calls,
    minimum_calls, slow_call_duration, slow_call_rate_threshold, window_buckets, window_seconds,
    revision)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
            ?, ?, ?, ?, ?, ?, ?)"""

_DELETE: Final = "DELETE FROM circuits WHERE name = ?"
_JOURNAL_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY,
        circuit TEXT NOT NULL,
        at REAL NOT NULL,
        previous TEXT NOT NULL,
        state TEXT NOT NULL,
        failures INTEGER NOT NULL,
        error TEXT,
        source TEXT NOT NULL
    )""",
)
"""The transition journal: a table of its own, so the circuits schema and its version stay as
they are; made in any state file that lacks it (a file of an older cbctl included).

A transition appends one row to the table's last page and nothing else (no AUTOINCREMENT, no
index: each would be one more page written per commit). The bound is kept by a trim every
`_TRIM_EVERY` rows, so the table holds at most JOURNAL_LIMIT + _TRIM_EVERY rows per circuit,
and reads return only the last JOURNAL_LIMIT of each. Ids only grow: a trim never removes the
newest row."""
_TRIM_EVERY: Final = 256
_HAS_JOURNAL: Final = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'"
_INSERT_EVENT: Final = """INSERT INTO events (circuit, at, previous, state, failures, error,
    source) VALUES (?, ?, ?, ?, ?, ?, ?)"""
_TRIM_EVENTS: Final = """DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id,
    row_number() OVER (PARTITION BY circuit ORDER BY id DESC) AS newer FROM events)
    WHERE newer > ?)"""
_SELECT_EVENTS: Final = """SELECT id, circuit, at, previous, state, failures, error, source
    FROM (SELECT *, row_number() OVER (PARTITION BY circuit ORDER BY id DESC) AS newer
          FROM events WHERE ?1 IS NULL OR circuit = ?1)
    WHERE newer <= ?3 AND id > ?2 ORDER BY id"""

_STATES: Final = {state.value: state for state in CircuitState}
_HARD_ERRORS: Final = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})
"""SQLite errors on opening that mean the file is not usable at all (not a passing fault)."""

Change = Callable[[Snapshot, BreakerConfig, float], tuple[Snapshot, Permit | None]]


def _decode(row: Sequence[Any]) -> tuple[Snapshot, BreakerConfig]:
    snapshot = Snapshot(
        state=_STATES[row[0]],
        failure_count=row[1],
        success_count=row[2],
        generation=row[3],
        leases=machine.decode_leases(row[4]),
        trials_admitted=row[5],
        opened_at=row[6],
        changed_at=row[7],
        forced=bool(row[8]),
        last_failure_at=row[9],
        last_error=row[10],
        hold_until=row[16],
        hold_reason=row[17],
        hold_owner=row[18],
        backoff=row[19],
        open_duration=row[20],
        window_count=row[24],
        failure_bits=machine.decode_marks(row[25]),
        slow_bits=machine.decode_marks(row[26]),
        window_buckets=machine.decode_buckets(row[32]),
    )
    config = BreakerConfig(
        failure_threshold=row[11],
        timeout=row[12],
        success_threshold=row[13],
        half_open_max_calls=row[14],
        backoff_factor=row[21],
        max_timeout=row[22],
        jitter=row[23],
        failure_rate_threshold=row[27],
        window_calls=row[28],
        minimum_calls=row[29],
        slow_call_duration=row[30],
        slow_call_rate_threshold=row[31],
        window_seconds=row[33],
    )
    return snapshot, config


def _encode(name: str, snapshot: Snapshot, config: BreakerConfig) -> tuple[object, ...]:
    return (
        name,
        snapshot.state.value,
        snapshot.failure_count,
        snapshot.success_count,
        snapshot.generation,
        machine.encode_leases(snapshot.leases),
        snapshot.trials_admitted,
        snapshot.opened_at,
        snapshot.changed_at,
        int(snapshot.forced),
        snapshot.last_failure_at,
        snapshot.last_error,
        config.failure_threshold,
        config.timeout,
        config.success_threshold,
        config.half_open_max_calls,
        snapshot.hold_until,
        snapshot.hold_reason,
        snapshot.hold_owner,
        snapshot.backoff,
        snapshot.open_duration,
        config.backoff_factor,
        config.max_timeout,
        config.jitter,
        snapshot.window_count,
        machine.encode_marks(snapshot.failure_bits),
        machine.encode_marks(snapshot.slow_bits),
        config.failure_rate_threshold,
        config.window_calls,
        config.minimum_calls,
        config.slow_call_duration,
        config.slow_call_rate_threshold,
        machine.encode_buckets(snapshot.window_buckets),
        config.window_seconds,
    )


class SqliteStore:
    """Circuits in the local state file; every operation atomic across the machine's processes.

    `busy_timeout` is how long a write waits for another process's write lock before the store
    counts as unavailable (the breaker then degrades to in-process state); it is bounded like a
    Redis round trip, so a held lock never stalls a recorded failure for long. After a write
    failed (lock, full disk, read-only file), writes fail fast for `retry_interval` seconds (on
    the clock's monotonic time); reads go on, since WAL readers never wait for the writer.

    A file that cannot be opened for writing is opened read-only where possible, and the store
    tries to open it for writing again every `retry_interval` seconds; `problem` says why it is
    not writable (None when it is).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        busy_timeout: float = 1.0,
        retry_interval: float = 1.0,
    ) -> None:
        self._path = Path(path).expanduser().absolute()
        self._clock = clock or SYSTEM_CLOCK
        self._busy_timeout = busy_timeout
        self._retry_interval = retry_interval
        self._failed_until = 0.0
        self._failure = ""
        self._lock = threading.Lock()
        self._decoded: dict[str, tuple[int, Snapshot, BreakerConfig]] = {}
        self._connection: sqlite3.Connection | None = None
        self._problem: str | None = None
        self._reopen_at = 0.0
        self._open()

    def __repr__(self) -> str:
        return f"<SqliteStore {str(self._path)!r}>"

    @property
    def path(self) -> Path:
        return self._path

    @property
    def url(self) -> str:
        return str(self._path)

    @property
    def problem(self) -> str | None:
        """Why the file is not open for writing (read-only, full disk, ...); None when it is."""
        return self._problem

    def clock_now(self) -> float:
        return self._clock.wall()

    # -- opening ------------------------------------------------------------------------------

    def _open(self) -> None:
        """Open the file for writing; failing that (a passing fault), read-only; failing that,
        not at all. Refusals (a symlink, a foreign or newer file) raise StateError."""
        self._decoded.clear()
        problem = _prepare_file(self._path)
        if problem is None:
            try:
                self._connection = self._connect("rw", writable=True)
                self._problem = None
                return
            except _Unwritable as error:
                problem = str(error)
        self._problem = problem
        self._reopen_at = self._clock.monotonic() + self._retry_interval
        if not self._path.is_file() or self._path.stat().st_size == 0:
            return
        unreadable = problem
        # A WAL file needs its -shm index; where that cannot be created (a read-only mount, a
        # full disk) only an immutable read works. The store reopens it at every retry.
        for mode in ("ro", "ro&immutable=1"):
            try:
                self._connection = self._connect(mode, writable=False)
                return
            except _Unwritable as error:
                unreadable = str(error)
        if unreadable != problem:
            self._problem = f"{problem}; {unreadable}"

    def _connect(self, mode: str, *, writable: bool) -> sqlite3.Connection:
        """Open the file (never creating it: `_prepare_file` did, with mode 0600) and check it."""
        uri = f"{self._path.as_uri()}?mode={mode}"
        try:
            connection = sqlite3.connect(
                uri,
                uri=True,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=32,
            )
        except sqlite3.Error as error:
            raise _opening_error(self._path, error, writable=writable) from error
        try:
            if writable:
                self._initialise(connection)
                _ensure_journal(connection)
                connection.execute("PRAGMA journal_mode = WAL").fetchone()
                connection.execute("PRAGMA synchronous = NORMAL")
            elif self._schema_version(connection) != SCHEMA_VERSION:
                raise _Unwritable(
                    f"the state file {self._path} needs an upgrade of its schema, "
                    "which cannot be written now"
                )
        except sqlite3.Error as error:
            connection.close()
            raise _opening_error(self._path, error, writable=writable) from error
        except BaseException:
            connection.close()
            raise
        return connection

    def _initialise(self, connection: sqlite3.Connection) -> None:
        """Create the schema in a new (empty) file, migrate an older one, or check that the file
        is a cbctl state file. Each happens in one transaction: a crash leaves the file as it
        was, never half made."""
        if self._schema_version(connection) == SCHEMA_VERSION:
            return
        with _immediate(connection):
            version = self._schema_version(connection)
            if version is None:
                for statement in _SCHEMA:
                    connection.execute(statement)
            else:
                if version == 1:
                    _migrate_from_1(connection)
                if version in (1, 2):
                    for statement in _MIGRATE_FROM_2:
                        connection.execute(statement)
                if version in (1, 2, 3):
                    for statement in _MIGRATE_FROM_3:
                        connection.execute(statement)
                for statement in _MIGRATE_FROM_4:
                    connection.execute(statement)

    def _schema_version(self, connection: sqlite3.Connection) -> int | None:
        """The file's schema version, None for an empty database; StateError for a foreign one."""
        application_id, version, tables = connection.execute(_IDENTIFY).fetchone()
        if application_id == 0 and version == 0 and tables == 0:
            return None
        if application_id != APPLICATION_ID:
            raise _foreign(self._path, "an SQLite database of another application")
        if version > SCHEMA_VERSION:
            raise StateError(
                f"the state file {self._path} was written by a newer cbctl (state schema "
                f"{version}; this cbctl reads {SCHEMA_VERSION}); left untouched"
            )
        marker = connection.execute("SELECT value FROM meta WHERE key = 'application'").fetchone()
        if version not in (1, 2, 3, 4, SCHEMA_VERSION) or marker is None or marker[0] != "cbctl":
            raise _foreign(self._path, "a damaged or unknown version of the state schema")
        return int(version)

    def _usable(self, *, write: bool) -> sqlite3.Connection:
        """The connection for one operation; reopens a file that was not writable when its retry
        time has come, and raises StoreUnavailableError when the operation cannot be done."""
        if self._problem is not None and self._clock.monotonic() >= self._reopen_at:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            self._open()
        connection = self._connection
        if connection is None or (write and self._problem is not None):
            raise StoreUnavailableError(
                f"{self._problem}; writes are kept in-process, retrying every "
                f"{self._retry_interval:g}s"
            )
        if write and self._failed_until:
            self._fail_fast()
        return connection

    # -- operations -----------------------------------------------------------------------------

    def _read(
        self, connection: sqlite3.Connection, name: str
    ) -> tuple[int | None, Snapshot | None, BreakerConfig | None]:
        """The revision of `name`'s row and its decoded form, None when there is no row.

        The row is read and decoded in full only when its revision differs from the one last
        seen; on the hot path this is one SELECT of one integer.
        """
        seen = self._decoded.get(name)
        if seen is not None:
            found = connection.execute(_SELECT_REVISION, (name,)).fetchone()
            if found is not None and found[0] == seen[0]:
                return seen
        row = connection.execute(_SELECT_ONE, (name,)).fetchone()
        if row is None:
            self._decoded.pop(name, None)
            return None, None, None
        snapshot, config = decoded(f"state file {self._path}", name, lambda: _decode(row))
        seen = (row[15], snapshot, config)
        self._decoded[name] = seen
        return seen

    def _apply(
        self, name: str, config: BreakerConfig | None, change: Change, *, optimistic: bool
    ) -> Update:
        """One atomic operation; `optimistic` tries a lock-free read first (for ops that often do
        not change anything)."""
        with self._lock:
            try:
                if optimistic:
                    connection = self._usable(write=False)
                    now = self._clock.wall()
                    _, before, known = self._read(connection, name)
                    if before is not None:
                        after, permit = change(before, config or known or BreakerConfig(), now)
                        if after is before or after == before:
                            return Update(before, before, now, permit)
                return self._write(self._usable(write=True), name, config, change)
            except sqlite3.Error as error:
                raise self._unavailable(error) from error

    def _write(
        self,
        connection: sqlite3.Connection,
        name: str,
        config: BreakerConfig | None,
        change: Change,
    ) -> Update:
        try:
            with _immediate(connection):
                now = self._clock.wall()
                revision, before, known = self._read(connection, name)
                if before is None:
                    before = Snapshot(changed_at=now)
                settings = config or known or BreakerConfig()
                after, permit = change(before, settings, now)
                written = None
                if revision is None or after != before:
                    written = secrets.randbits(62) if revision is None else revision + 1
                    connection.execute(_UPSERT, (*_encode(name, after, settings), written))
                if after.state is not before.state:
                    _journal(connection, name, before, after, now)
        except BaseException:
            self._decoded.pop(name, None)
            raise
        if written is not None:
            self._decoded[name] = (written, after, settings)
        return Update(before, after, now, permit)

    def _fail_fast(self) -> None:
        """Raise while the last write failure is recent; afterwards let the next write retry."""
        if self._clock.monotonic() < self._failed_until:
            raise StoreUnavailableError(
                f"state file {self._path}: {self._failure} (retrying within "
                f"{self._retry_interval:g}s)"
            )
        self._failed_until = 0.0

    def _unavailable(self, error: sqlite3.Error) -> StoreUnavailableError:
        self._failure = str(error)
        self._failed_until = self._clock.monotonic() + self._retry_interval
        return StoreUnavailableError(f"state file {self._path}: {error}")

    def load(self, name: str) -> StoredCircuit | None:
        with self._lock:
            try:
                _, snapshot, config = self._read(self._usable(write=False), name)
            except sqlite3.Error as error:
                raise StoreUnavailableError(f"state file {self._path}: {error}") from error
        if snapshot is None or config is None:
            return None
        return StoredCircuit(name, snapshot, config, self._clock.wall())

    def load_all(self) -> list[StoredCircuit]:
        with self._lock:
            try:
                rows = self._usable(write=False).execute(_SELECT_ALL).fetchall()
            except sqlite3.Error as error:
                raise StoreUnavailableError(f"state file {self._path}: {error}") from error
        decoders = [(row[0], functools.partial(_decode, row[1:])) for row in rows]
        return load_all_checked(f"state file {self._path}", decoders, self._clock.wall())

    def events(self, name: str | None = None, since: int | None = None) -> list[TransitionEvent]:
        """The journal of one circuit (or all) after cursor `since`, oldest first."""
        with self._lock:
            try:
                connection = self._usable(write=False)
                if not connection.execute(_HAS_JOURNAL).fetchone()[0]:
                    return []  # a read-only file of a cbctl from before the journal
                rows = connection.execute(
                    _SELECT_EVENTS, (name, -1 if since is None else since, JOURNAL_LIMIT)
                ).fetchall()
            except sqlite3.Error as error:
                raise StoreUnavailableError(f"state file {self._path}: {error}") from error
        return [
            TransitionEvent(
                id=row[0],
                circuit=row[1],
                at=wall_time(row[2]),
                previous=_STATES[row[3]],
                state=_STATES[row[4]],
                failures=row[5],
                error=row[6],
                source=row[7],
            )
            for row in rows
            if row[3] in _STATES and row[4] in _STATES
        ]

    def admit(self, name: str, config: BreakerConfig) -> Update:
        return self._apply(name, config, machine.admit, optimistic=True)

    def record_success(
        self, name: str, config: BreakerConfig, permit: Permit | None, slow: bool = False
    ) -> Update:
        def succeed(s: Snapshot, c: BreakerConfig, now: float) -> tuple[Snapshot, Permit | None]:
            return machine.record_success(s, c, permit, now, slow=slow), permit

        return self._apply(name, config, succeed, optimistic=True)

    def record_failure(
        self,
        name: str,
        config: BreakerConfig,
        permit: Permit | None,
        error: str,
        op: str | None = None,
        delay: float | None = None,
        draw: float = 0.0,
        slow: bool = False,
    ) -> Update:
        """`op` is not kept: a write here commits or raises, it is never applied unseen."""

        def fail(s: Snapshot, c: BreakerConfig, now: float) -> tuple[Snapshot, Permit | None]:
            failed = machine.record_failure(
                s, c, permit, now, now, error, delay=delay, draw=draw, slow=slow
            )
            return failed, permit

        return self._apply(name, config, fail, optimistic=False)

    def release(self, name: str, config: BreakerConfig, permit: Permit | None) -> Update:
        def give_back(s: Snapshot, c: BreakerConfig, now: float) -> tuple[Snapshot, Permit | None]:
            return machine.release(s, permit, now), permit

        return self._apply(name, config, give_back, optimistic=True)

    def reconcile(self, name: str, config: BreakerConfig, outage: Outage) -> Update:
        def write_back(s: Snapshot, c: BreakerConfig, now: float) -> tuple[Snapshot, Permit | None]:
            return machine.reconcile(s, c, outage, now), None

        return self._apply(name, config, write_back, optimistic=True)

    def reset(self, name: str, config: BreakerConfig | None = None) -> Update:
        def to_closed(s: Snapshot, c: BreakerConfig, now: float) -> tuple[Snapshot, Permit | None]:
            return machine.reset(s, now), None

        return self._apply(name, config, to_closed, optimistic=False)

    def force(
        self,
        name: str,
        config: BreakerConfig,
        state: CircuitState,
        *,
        for_: float | None = None,
        reason: str | None = None,
        owner: str | None = None,
    ) -> Update:
        def hold(s: Snapshot, c: BreakerConfig, now: float) -> tuple[Snapshot, Permit | None]:
            until = None if for_ is None else now + for_
            return machine.force(s, state, now, until=until, reason=reason, owner=owner), None

        return self._apply(name, config, hold, optimistic=False)

    def forget(self, name: str) -> bool:
        """Delete the circuit's row (`cbctl forget`); True if there was one."""
        with self._lock:
            try:
                deleted = self._usable(write=True).execute(_DELETE, (name,)).rowcount
            except sqlite3.Error as error:
                raise self._unavailable(error) from error
            finally:
                self._decoded.pop(name, None)
        return deleted > 0

    def close(self) -> None:
        """Close the connection (the last one out checkpoints the WAL into the file)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            self._problem = self._problem or f"the state file {self._path} is closed"
            self._reopen_at = float("inf")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Unwritable(Exception):
    """The file cannot be opened the way asked, for a reason that may pass (internal)."""


def _opening_error(path: Path, error: sqlite3.Error, *, writable: bool) -> Exception:
    """A refusal (StateError) for a file that is not a usable database, else `_Unwritable`."""
    if getattr(error, "sqlite_errorname", "") in _HARD_ERRORS:
        return StateError(f"cannot use the state file {path}: {error}")
    reason = str(error)
    if reason == "unable to open database file":
        reason = "read-only or full file system?"
    how = "for writing" if writable else "read-only"
    return _Unwritable(f"the state file {path} cannot be opened {how} ({reason})")


def _migrate_from_1(connection: sqlite3.Connection) -> None:
    """Schema 1 -> 2, inside the caller's transaction: the shared trial count and deadline of
    each half-open circuit become that many leases with that deadline."""
    trials = connection.execute(_V1_TRIALS).fetchall()
    for statement in _MIGRATE_FROM_1:
        connection.execute(statement)
    for name, count, deadline in trials:
        leases = tuple((lease, deadline) for lease in range(1, count + 1)) if deadline else ()
        connection.execute(_SET_LEASES, (machine.encode_leases(leases), count, name))
    for statement in _MIGRATED_FROM_1:
        connection.execute(statement)


@contextlib.contextmanager
def _immediate(connection: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (`BEGIN IMMEDIATE` takes the file's write lock at once), committed
    when the block ends, rolled back on any exception, which is then raised as it was."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise


def _ensure_journal(connection: sqlite3.Connection) -> None:
    """Create the journal table where it is missing (checked first: no write lock when present)."""
    if connection.execute(_HAS_JOURNAL).fetchone()[0]:
        return
    with _immediate(connection):
        for statement in _JOURNAL_SCHEMA:
            connection.execute(statement)


def _journal(
    connection: sqlite3.Connection, name: str, before: Snapshot, after: Snapshot, now: float
) -> None:
    """One journal row for a transition, inside the caller's transaction; now and then a trim."""
    inserted = connection.execute(
        _INSERT_EVENT,
        (
            name,
            now,
            before.state.value,
            after.state.value,
            after.failure_count,
            error_of(after, before, now),
            process_source(),
        ),
    ).lastrowid
    if inserted is not None and inserted % _TRIM_EVERY == 0:
        connection.execute(_TRIM_EVENTS, (JOURNAL_LIMIT,))


def _foreign(path: Path, what: str) -> StateError:
    return StateError(f"{path} is not a cbctl state file ({what}); left untouched")


def _prepare_file(path: Path) -> str | None:
    """Make sure `path` is a regular file we may use: created 0600 if missing, never a symlink,
    and, if it has content, an SQLite file carrying cbctl's application id (checked in the raw
    header before SQLite touches it, so a foreign file is never modified).

    Refusals raise StateError; a fault that may pass (a directory or file that cannot be
    written now) is returned as the reason the file cannot be opened for writing.
    """
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError as error:
        raise StateError(
            f"cannot use the state file {path}: {directory} is not a directory"
        ) from error
    except OSError as error:
        return f"cannot create the directory {directory} for the state file: {error.strerror}"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise StateError(f"cannot use the state file {path}: {error.strerror}") from error
    if info is not None and stat.S_ISLNK(info.st_mode):
        raise StateError(f"refusing the state file {path}: it is a symbolic link")
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise StateError(f"cannot use the state file {path}: it is not a regular file")
    problem = None
    if not os.access(directory, os.W_OK | os.X_OK):
        problem = f"the state file {path} is read-only: the directory {directory} is not writable"
    elif info is not None and not os.access(path, os.W_OK):
        problem = f"the state file {path} is read-only"
    if info is None:
        if problem is not None:
            return f"cannot create the state file {path}: the directory {directory} is not writable"
        return _create_private(path)
    try:
        with open(path, "rb") as existing:
            header = existing.read(100)
    except OSError as error:
        raise StateError(f"cannot read the state file {path}: {error.strerror}") from error
    if not header:
        return problem
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise _foreign(path, "not an SQLite database")
    application_id = int.from_bytes(header[_HEADER_APPLICATION_ID], "big")
    version = int.from_bytes(header[_HEADER_USER_VERSION], "big")
    if application_id not in (0, APPLICATION_ID) or (application_id == 0 and version != 0):
        raise _foreign(path, "an SQLite database of another application")
    return problem


def _create_private(path: Path) -> str | None:
    """Create an empty file readable by its owner only; refuse to follow a symlink planted there.
    A file system that refuses the file (full, read-only) is returned as the reason."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError as error:
        if os.path.islink(path):
            raise StateError(f"refusing the state file {path}: it is a symbolic link") from error
        return None
    except OSError as error:
        return f"cannot create the state file {path}: {error.strerror}"
    os.close(descriptor)
    return None
