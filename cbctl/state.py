"""The circuit-breaker state machine as pure functions over immutable snapshots.

Nothing here does I/O or reads a clock: every function takes `now` (seconds, in the time base of
whoever keeps the state: a process's monotonic clock in memory, wall-clock UTC in a shared store)
and returns a new `Snapshot`. The in-process breaker, the memory store and the SQLite store all
apply these same functions; the Redis store mirrors them in Lua and is held to them by the store
contract tests.

Permits tie an outcome to the generation it was admitted in. Every transition bumps the
generation, so the result of a call admitted before a reset, a re-open or a close is recorded as
history (last failure) but never moves the new state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any, Final, Protocol

from cbctl.errors import ConfigError

__all__ = [
    "BreakerConfig",
    "CircuitState",
    "CircuitStore",
    "Permit",
    "Snapshot",
    "StoredCircuit",
    "Update",
    "admit",
    "force",
    "rebase",
    "record_failure",
    "record_success",
    "release",
    "reset",
    "retry_after",
]


class CircuitState(StrEnum):
    """The three states of a circuit; the values are what JSON and the state file carry."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


CLOSED: Final = CircuitState.CLOSED
OPEN: Final = CircuitState.OPEN
HALF_OPEN: Final = CircuitState.HALF_OPEN


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Breaker settings; the defaults are the original specification's 5 / 30 s / 2."""

    failure_threshold: int = 5
    timeout: float = 30.0
    success_threshold: int = 2
    half_open_max_calls: int = 1

    def __post_init__(self) -> None:
        _positive_int("failure_threshold", self.failure_threshold)
        _positive_int("success_threshold", self.success_threshold)
        _positive_int("half_open_max_calls", self.half_open_max_calls)
        timeout = self.timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ConfigError(f"timeout must be a number of seconds, got {timeout!r}")
        if not math.isfinite(timeout) or timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout}")
        object.__setattr__(self, "timeout", float(timeout))

    @classmethod
    def from_mapping(
        cls, settings: Mapping[str, Any], base: BreakerConfig | None = None
    ) -> BreakerConfig:
        """Settings from a dict (e.g. `default_config=`), unknown keys refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(
                f"unknown breaker setting {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        return replace(base or cls(), **settings)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a circuit remembers, at one instant.

    Times `opened_at`, `changed_at` and `trial_deadline` are in the keeper's time base;
    `last_failure_at` is always wall-clock UTC seconds, because it is shown to people.
    """

    state: CircuitState = CLOSED
    failure_count: int = 0
    success_count: int = 0
    generation: int = 0
    trials: int = 0
    trial_deadline: float | None = None
    opened_at: float | None = None
    changed_at: float | None = None
    forced: bool = False
    last_failure_at: float | None = None
    last_error: str | None = None


INITIAL: Final = Snapshot()


@dataclass(frozen=True, slots=True)
class Permit:
    """Admission to one call: the generation it belongs to, and whether it is a half-open trial."""

    generation: int
    trial: bool


@dataclass(frozen=True, slots=True)
class Update:
    """The outcome of one atomic operation on a circuit: the state before and after, at `now`."""

    before: Snapshot
    after: Snapshot
    now: float
    permit: Permit | None = None


@dataclass(frozen=True, slots=True)
class StoredCircuit:
    """A circuit as a store keeps it: the snapshot, the settings last used with it, and `now`."""

    name: str
    snapshot: Snapshot
    config: BreakerConfig
    now: float


def _enter(snapshot: Snapshot, state: CircuitState, now: float, **changes: Any) -> Snapshot:
    """A transition: new state, new generation, no trials in flight."""
    return replace(
        snapshot,
        state=state,
        generation=snapshot.generation + 1,
        changed_at=now,
        trials=0,
        trial_deadline=None,
        **changes,
    )


def rebase(snapshot: Snapshot, delta: float) -> Snapshot:
    """The same snapshot in another time base (a store's wall clock -> a monotonic clock)."""

    def shift(moment: float | None) -> float | None:
        return None if moment is None else moment + delta

    return replace(
        snapshot,
        opened_at=shift(snapshot.opened_at),
        changed_at=shift(snapshot.changed_at),
        trial_deadline=shift(snapshot.trial_deadline),
    )


def retry_after(snapshot: Snapshot, config: BreakerConfig, now: float) -> float | None:
    """Seconds until an open circuit admits a trial; None when not open or held open by force."""
    if snapshot.state is not OPEN or snapshot.forced or snapshot.opened_at is None:
        return None
    return max(0.0, snapshot.opened_at + config.timeout - now)


def admit(snapshot: Snapshot, config: BreakerConfig, now: float) -> tuple[Snapshot, Permit | None]:
    """Decide whether a call may run now; None means rejected (the function must not be called).

    OPEN past its timeout becomes HALF_OPEN and the caller gets the first trial. In HALF_OPEN at
    most `half_open_max_calls` trials are in flight; a trial lease lasts `timeout` seconds, after
    which a trial that never reported back (its process died) no longer holds its place.
    """
    state = snapshot.state
    if state is CLOSED:
        return snapshot, Permit(snapshot.generation, trial=False)
    if state is OPEN:
        if snapshot.forced or retry_after(snapshot, config, now):
            return snapshot, None
        half_open = _enter(snapshot, HALF_OPEN, now, success_count=0)
        half_open = replace(half_open, trials=1, trial_deadline=now + config.timeout)
        return half_open, Permit(half_open.generation, trial=True)
    trials = snapshot.trials
    if snapshot.trial_deadline is not None and now >= snapshot.trial_deadline:
        trials = 0
    if trials >= config.half_open_max_calls:
        return snapshot, None
    admitted = replace(snapshot, trials=trials + 1, trial_deadline=now + config.timeout)
    return admitted, Permit(snapshot.generation, trial=True)


def _current(snapshot: Snapshot, permit: Permit | None) -> bool:
    """Whether an outcome still belongs to the circuit's present generation.

    A permit of None stands for a call admitted by the lock-free CLOSED fast path: it counts
    while the circuit is still CLOSED.
    """
    if permit is None:
        return snapshot.state is CLOSED
    return permit.generation == snapshot.generation


def record_success(
    snapshot: Snapshot, config: BreakerConfig, permit: Permit | None, now: float
) -> Snapshot:
    """A protected call succeeded."""
    if not _current(snapshot, permit):
        return snapshot
    if snapshot.state is CLOSED:
        return replace(snapshot, failure_count=0) if snapshot.failure_count else snapshot
    if snapshot.state is HALF_OPEN:
        successes = snapshot.success_count + 1
        if successes >= config.success_threshold:
            return _enter(snapshot, CLOSED, now, failure_count=0, success_count=0, opened_at=None)
        return replace(snapshot, success_count=successes, trials=max(0, snapshot.trials - 1))
    return snapshot


def record_failure(
    snapshot: Snapshot,
    config: BreakerConfig,
    permit: Permit | None,
    now: float,
    wall: float,
    error: str,
) -> Snapshot:
    """A protected call failed: count it, and open the circuit when the threshold is reached.

    The failure is remembered as the last failure even when it is stale (its generation has
    passed): it is still a fact about the dependency.
    """
    noted = replace(snapshot, last_failure_at=wall, last_error=error)
    if not _current(snapshot, permit):
        return noted
    if snapshot.state is CLOSED:
        failures = snapshot.failure_count + 1
        if failures >= config.failure_threshold and not snapshot.forced:
            return _enter(noted, OPEN, now, failure_count=failures, success_count=0, opened_at=now)
        return replace(noted, failure_count=failures)
    if snapshot.state is HALF_OPEN:
        return _enter(
            noted, OPEN, now, failure_count=snapshot.failure_count, success_count=0, opened_at=now
        )
    return noted


def release(snapshot: Snapshot, permit: Permit | None) -> Snapshot:
    """A call ended neutrally (excluded error, cancellation): give back its trial place."""
    if permit is None or not permit.trial or not _current(snapshot, permit):
        return snapshot
    if snapshot.state is not HALF_OPEN or snapshot.trials == 0:
        return snapshot
    return replace(snapshot, trials=snapshot.trials - 1)


def reset(snapshot: Snapshot, now: float) -> Snapshot:
    """Manual reset: CLOSED, counters cleared, force lifted; the last failure stays as history."""
    return _enter(
        snapshot, CLOSED, now, failure_count=0, success_count=0, opened_at=None, forced=False
    )


def force(snapshot: Snapshot, state: CircuitState, now: float) -> Snapshot:
    """Hold the circuit OPEN (rejecting everything) or CLOSED (never tripping) until reset."""
    if state is HALF_OPEN:
        raise ValueError("a circuit can be forced open or closed, not half-open")
    opened_at = now if state is OPEN else None
    return _enter(
        snapshot, state, now, failure_count=0, success_count=0, opened_at=opened_at, forced=True
    )


class CircuitStore(Protocol):
    """Shared state for circuits: each method is one atomic operation across every process.

    A store applies the functions of this module (or their exact mirror) in its own time base,
    returned as `now` by `clock_now()`. Methods raise `StoreUnavailableError` when the store
    cannot be reached; the breaker then keeps protecting calls with its in-process state.
    """

    @property
    def url(self) -> str:
        """Where the state lives, passwords redacted (shown in stats and errors)."""
        ...

    def clock_now(self) -> float:
        """The store's present time, in the base its snapshots use."""
        ...

    def load(self, name: str) -> StoredCircuit | None: ...

    def load_all(self) -> list[StoredCircuit]: ...

    def admit(self, name: str, config: BreakerConfig) -> Update: ...

    def record_success(self, name: str, config: BreakerConfig, permit: Permit | None) -> Update: ...

    def record_failure(
        self, name: str, config: BreakerConfig, permit: Permit | None, error: str
    ) -> Update: ...

    def release(self, name: str, config: BreakerConfig, permit: Permit | None) -> Update: ...

    def reset(self, name: str, config: BreakerConfig | None = None) -> Update: ...

    def force(self, name: str, config: BreakerConfig, state: CircuitState) -> Update: ...

    def forget(self, name: str) -> bool:
        """Delete the circuit's state (True if there was any); the next call starts afresh."""
        ...

    def close(self) -> None: ...
