"""In-process store: the shared-state contract without sharing beyond this process.

Useful to let several registries of one process share circuits, and as the reference the
other stores are held to by the contract tests. Times are wall-clock seconds, like every store.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Self

from cbctl import state as machine
from cbctl.clock import SYSTEM_CLOCK, Clock
from cbctl.journal import (
    JOURNAL_LIMIT,
    TransitionEvent,
    error_of,
    next_event_id,
    process_source,
    select,
    wall_time,
)
from cbctl.state import (
    BreakerConfig,
    CircuitState,
    Outage,
    Permit,
    Snapshot,
    StoredCircuit,
    Update,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """Circuits in a dict, each operation atomic under one lock."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SYSTEM_CLOCK
        self._lock = threading.Lock()
        self._circuits: dict[str, tuple[Snapshot, BreakerConfig]] = {}
        self._journals: dict[str, deque[TransitionEvent]] = {}

    @property
    def url(self) -> str:
        return "memory://"

    def clock_now(self) -> float:
        return self._clock.wall()

    def _apply(
        self,
        name: str,
        config: BreakerConfig | None,
        change: Callable[[Snapshot, BreakerConfig, float], tuple[Snapshot, Permit | None]],
    ) -> Update:
        with self._lock:
            now = self._clock.wall()
            entry = self._circuits.get(name)
            before, known = entry if entry is not None else (Snapshot(changed_at=now), None)
            settings = config or known or BreakerConfig()
            after, permit = change(before, settings, now)
            self._circuits[name] = (after, settings)
            if after.state is not before.state:
                journal = self._journals.get(name)
                if journal is None:
                    journal = self._journals[name] = deque(maxlen=JOURNAL_LIMIT)
                journal.append(
                    TransitionEvent(
                        next_event_id(),
                        name,
                        wall_time(now),
                        before.state,
                        after.state,
                        after.failure_count,
                        error_of(after, before, now),
                        process_source(),
                    )
                )
        return Update(before, after, now, permit)

    def events(self, name: str | None = None, since: int | None = None) -> list[TransitionEvent]:
        """The journal of one circuit (or all), after cursor `since`, oldest first."""
        with self._lock:
            if name is not None:
                chosen = list(self._journals.get(name, ()))
            else:
                chosen = [event for journal in self._journals.values() for event in journal]
        return select(chosen, since)

    def load(self, name: str) -> StoredCircuit | None:
        with self._lock:
            entry = self._circuits.get(name)
        if entry is None:
            return None
        return StoredCircuit(name, entry[0], entry[1], self._clock.wall())

    def load_all(self) -> list[StoredCircuit]:
        with self._lock:
            entries = sorted(self._circuits.items())
        now = self._clock.wall()
        return [StoredCircuit(name, snap, config, now) for name, (snap, config) in entries]

    def admit(self, name: str, config: BreakerConfig) -> Update:
        return self._apply(name, config, machine.admit)

    def record_success(
        self, name: str, config: BreakerConfig, permit: Permit | None, slow: bool = False
    ) -> Update:
        return self._apply(
            name,
            config,
            lambda s, c, now: (machine.record_success(s, c, permit, now, slow=slow), permit),
        )

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
        """`op` is not kept: a write here either happens or raises, never half-way."""
        wall = self._clock.wall()

        def fail(s: Snapshot, c: BreakerConfig, now: float) -> tuple[Snapshot, Permit | None]:
            failed = machine.record_failure(
                s, c, permit, now, wall, error, delay=delay, draw=draw, slow=slow
            )
            return failed, permit

        return self._apply(name, config, fail)

    def release(self, name: str, config: BreakerConfig, permit: Permit | None) -> Update:
        return self._apply(
            name, config, lambda s, c, now: (machine.release(s, permit, now), permit)
        )

    def reconcile(self, name: str, config: BreakerConfig, outage: Outage) -> Update:
        return self._apply(
            name, config, lambda s, c, now: (machine.reconcile(s, c, outage, now), None)
        )

    def reset(self, name: str, config: BreakerConfig | None = None) -> Update:
        return self._apply(name, config, lambda s, c, now: (machine.reset(s, now), None))

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

        return self._apply(name, config, hold)

    # Async callers: a dict under a short lock does no I/O, so these run on the loop directly.

    async def aadmit(self, name: str, config: BreakerConfig) -> Update:
        return self.admit(name, config)

    async def arecord_success(
        self, name: str, config: BreakerConfig, permit: Permit | None, slow: bool = False
    ) -> Update:
        return self.record_success(name, config, permit, slow)

    async def arecord_failure(
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
        return self.record_failure(name, config, permit, error, op, delay, draw, slow)

    async def arelease(self, name: str, config: BreakerConfig, permit: Permit | None) -> Update:
        return self.release(name, config, permit)

    async def areconcile(self, name: str, config: BreakerConfig, outage: Outage) -> Update:
        return self.reconcile(name, config, outage)

    def forget(self, name: str) -> bool:
        """Remove the circuit's state; True if there was any."""
        with self._lock:
            return self._circuits.pop(name, None) is not None

    def close(self) -> None:
        """Nothing to release; present so every store can be closed the same way."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
