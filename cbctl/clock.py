"""Time as a dependency: monotonic seconds for durations, wall-clock UTC for what is shared.

The breaker never calls `time` directly, so tests drive it with `FakeClock` and never sleep.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock", "iso_utc"]


class Clock(Protocol):
    """Where a breaker gets its time from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch (UTC); used for persisted and displayed times."""
        ...


class SystemClock:
    """The real clocks of this process."""

    __slots__ = ()

    # The C functions themselves, not Python methods calling them: a breaker reads the clock on
    # every rejection, and a Python frame would double the cost of that read.
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A clock that moves only when told to: `advance(seconds)`.

    Both readings move together, so code that mixes durations and timestamps stays consistent.
    """

    __slots__ = ("_monotonic", "_wall")

    def __init__(self, wall: float = 1_767_225_600.0, monotonic: float = 1_000.0) -> None:
        self._wall = wall
        self._monotonic = monotonic

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        self._monotonic += seconds
        self._wall += seconds


def iso_utc(epoch_seconds: float | None) -> str | None:
    """`2026-01-09T19:30:00Z` for an epoch time, None for None."""
    if epoch_seconds is None:
        return None
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
