"""Shared circuit state: where breakers keep what they know so other processes see it."""

from __future__ import annotations

from cbctl.clock import Clock
from cbctl.errors import StateError
from cbctl.state import CircuitStore
from cbctl.stores.memory import MemoryStore

__all__ = ["CircuitStore", "MemoryStore", "open_store"]


def open_store(location: str, *, clock: Clock | None = None) -> CircuitStore:
    """A store for `memory://`, a state-file path, or a `redis://` URL."""
    if location == "memory://":
        return MemoryStore(clock)
    raise StateError(f"unsupported state location {location!r}")
