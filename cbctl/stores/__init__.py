"""Shared circuit state: where breakers keep what they know so other processes see it.

`open_store` picks the store from a location: `memory://`, `redis://…` / `rediss://…`, or a path
(the local state file). The SQLite and Redis modules are imported only when asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

from cbctl.clock import Clock
from cbctl.errors import MissingStateError, StateError
from cbctl.state import CircuitStore
from cbctl.stores.memory import MemoryStore

__all__ = [
    "STATE_ENV_VAR",
    "CircuitStore",
    "MemoryStore",
    "default_state_path",
    "open_store",
    "resolve_state_location",
]

STATE_ENV_VAR = "CBCTL_STATE"


def default_state_path() -> Path:
    """The CLI's state file when neither --state nor $CBCTL_STATE is given."""
    from platformdirs import user_state_dir

    return Path(user_state_dir("cbctl")) / "circuits.db"


def resolve_state_location(given: str | None = None) -> str:
    """`--state` if given, else `$CBCTL_STATE`, else the user state directory's `circuits.db`."""
    return given or os.environ.get(STATE_ENV_VAR) or str(default_state_path())


def open_store(location: str, *, clock: Clock | None = None, create: bool = True) -> CircuitStore:
    """A store for `memory://`, a `redis://` / `rediss://` URL, or a state-file path.

    `clock` is the time base of the memory store and the state file; Redis uses its own clock.
    A location that cannot be used raises StateError naming it (passwords redacted).
    With `create=False` a state file that does not exist is a StateError instead of a new
    empty one: reading commands must not turn a mistyped path into "0 circuits".
    """
    if location == "memory://":
        return MemoryStore(clock)
    scheme = location.partition("://")[0].lower() if "://" in location else ""
    if scheme in {"redis", "rediss"}:
        from cbctl.stores.redis import RedisStore

        return RedisStore(location)
    if scheme:
        from cbctl.redaction import redact_url

        raise StateError(
            f"unsupported state location {redact_url(location)}: "
            "use a file path, memory://, redis:// or rediss://"
        )
    if not location.strip():
        raise StateError("the state location is empty: give a file path or a redis:// URL")
    if not location.isprintable():
        raise StateError(f"the state location {location!r} contains control characters")
    try:
        path = Path(location).expanduser()
    except RuntimeError as error:  # `~nosuchuser/...`
        user = location[1:].split("/", 1)[0]
        raise StateError(f"state location {location!r}: no such user {user!r} for '~'") from error
    if not create:
        _must_exist(path)
    from cbctl.stores.sqlite import SqliteStore

    return SqliteStore(path, clock=clock)


def _must_exist(path: Path) -> None:
    if not os.path.lexists(path):
        raise MissingStateError(
            f"no state file at {path.absolute()}: nothing has been recorded there "
            "(check --state / $CBCTL_STATE; `cbctl probe` creates it)"
        )
