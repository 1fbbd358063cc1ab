"""The transition journal: every state change of a circuit, kept as a bounded, ordered record.

A transition between two polls of `cbctl watch` is otherwise invisible; the journal keeps it.
In-process breakers keep the last `JOURNAL_LIMIT` transitions in a deque; the state file writes
one row in the same transaction as the transition, Redis one capped-stream entry in the same Lua
call. Each record carries an `id` that orders it among the records of the same source (a
registry, a state file, a Redis prefix) and serves as the `since` cursor of `/events` and
`cbctl events --follow`.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol, runtime_checkable

from cbctl.state import CircuitState, Snapshot

__all__ = [
    "JOURNAL_LIMIT",
    "Journaled",
    "TransitionEvent",
    "error_of",
    "next_event_id",
    "process_source",
    "select",
    "wall_time",
]

JOURNAL_LIMIT: Final = 200
"""Transitions kept per circuit: about a day of an hourly flapping dependency, a few KB."""

_STATES: Final = {state.value: state for state in CircuitState}

# Ids of in-process records start at the process's start time in microseconds, so a follower's
# cursor from before a service restart is older than every record of the restarted service.
_ids = itertools.count(time.time_ns() // 1000)


def next_event_id() -> int:
    """A new id for an in-process record (unique and increasing within this process)."""
    return next(_ids)


_source: tuple[int, str] | None = None


def process_source() -> str:
    """`pid@host` of this process: which process of a fleet made a transition."""
    global _source
    pid = os.getpid()
    if _source is None or _source[0] != pid:
        import socket  # on the first transition, not at `import cbctl` (~4 ms)

        _source = (pid, f"{pid}@{socket.gethostname()}")
    return _source[1]


@dataclass(frozen=True, slots=True)
class TransitionEvent:
    """One transition of one circuit: when (UTC), from which state to which, and who made it.

    `failures` is the consecutive-failure count after the transition (the threshold count for
    closed -> open), `error` the failure that caused an opening (None otherwise).
    """

    id: int
    circuit: str
    at: datetime
    previous: CircuitState
    state: CircuitState
    failures: int
    error: str | None
    source: str

    def to_json(self) -> dict[str, Any]:
        """The `/events` and `cbctl events --json` object."""
        return {
            "id": self.id,
            "circuit": self.circuit,
            "at": self.at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "previous": self.previous.value,
            "state": self.state.value,
            "failures": self.failures,
            "error": self.error,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Any) -> TransitionEvent:
        """A record from its JSON object; ValueError (with what is wrong) for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"an event must be a JSON object, got {type(data).__name__}")
        try:
            at = datetime.fromisoformat(str(data["at"]).replace("Z", "+00:00"))
            error = data.get("error")
            return cls(
                id=int(data["id"]),
                circuit=str(data["circuit"]),
                at=at if at.tzinfo else at.replace(tzinfo=UTC),
                previous=_STATES[str(data["previous"])],
                state=_STATES[str(data["state"])],
                failures=int(data["failures"]),
                error=None if error is None else str(error),
                source=str(data.get("source", "")),
            )
        except (KeyError, TypeError, ValueError) as problem:
            raise ValueError(f"not a transition event: {problem}") from problem


def error_of(
    after: Snapshot, before: Snapshot | None = None, now: float | None = None
) -> str | None:
    """What is worth recording with a transition: what made the circuit open, or the operator
    hold that moved it ("held: REASON (by OWNER)"), or how a hold ended ("hold expired" at or
    after its expiry, `now` in the snapshots' time base; else "hold lifted", by a reset)."""
    if after.forced:
        summary = "held" if after.hold_reason is None else f"held: {after.hold_reason}"
        return summary if after.hold_owner is None else f"{summary} (by {after.hold_owner})"
    if before is not None and before.forced:
        until = before.hold_until
        return (
            "hold expired"
            if until is not None and now is not None and now >= until
            else ("hold lifted")
        )
    return after.last_error if after.state is CircuitState.OPEN else None


def wall_time(seconds: float) -> datetime:
    """Unix seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def select(events: Iterable[TransitionEvent], since: int | None) -> list[TransitionEvent]:
    """The records after cursor `since` (all when None), oldest first."""
    chosen = events if since is None else (event for event in events if event.id > since)
    return sorted(chosen, key=lambda event: event.id)


@runtime_checkable
class Journaled(Protocol):
    """A store that keeps the journal of its circuits."""

    def events(
        self, name: str | None = None, since: int | None = None
    ) -> list[TransitionEvent]: ...
