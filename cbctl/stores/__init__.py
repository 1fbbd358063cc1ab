"""Shared circuit state: where breakers keep what they know so other processes see it."""

from __future__ import annotations

from pathlib import Path

from cbctl.clock import Clock
from cbctl.errors import StateError
from cbctl.state import CircuitStore
from cbctl.stores.memory import MemoryStore

__all__ = ["CircuitStore", "MemoryStore", "default_state_path", "open_store"]


def default_state_path() -> Path:
    """The CLI's state file when neither --state nor $CBCTL_STATE is given."""
    from platformdirs import user_state_dir

    return Path(user_state_dir("cbctl")) / "circuits.db"


def open_store(location: str, *, clock: Clock | None = None) -> CircuitStore:
    """A store for `memory://`, a state-file path, or a `redis://` URL."""
    if location == "memory://":
        return MemoryStore(clock)
    raise StateError(f"unsupported state location {location!r}")
