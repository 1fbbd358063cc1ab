"""Helpers every command shares: opening the state the global options point at."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cbctl.cli.app import globals_of
from cbctl.errors import UsageError
from cbctl.state import CircuitStore

if TYPE_CHECKING:
    from cbctl.config import Dependency

__all__ = [
    "complete_circuits",
    "complete_dependencies",
    "load_dependency",
    "open_state",
    "state_location",
]


def state_location(ctx: typer.Context) -> str:
    """`--state` / `$CBCTL_STATE`, else the user state directory's file."""
    from cbctl.stores import resolve_state_location

    return resolve_state_location(globals_of(ctx).state)


def open_state(ctx: typer.Context, *, create: bool = True) -> CircuitStore:
    """The store this invocation works on; errors are StateError with a clear message.

    Commands that only read or change recorded circuits pass `create=False`: a state file
    that does not exist is then an error (exit 2), not a new empty state.
    """
    from cbctl.stores import open_store

    return open_store(state_location(ctx), create=create)


def load_dependency(ctx: typer.Context, name: str, url: str | None = None) -> Dependency:
    """The named dependency from cbctl.toml / built-ins / env, with `--url` applied if given."""
    from cbctl.config import load_config

    dependency = load_config(globals_of(ctx).config).dependency(name)
    return dependency.with_url(url, "flag") if url else dependency


def _root_params(ctx: typer.Context) -> dict[str, object]:
    """The global options as parsed so far (during completion the root callback has not run)."""
    return dict(ctx.find_root().params)


def complete_dependencies(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of dependency names from the configuration `--config` points at."""
    from cbctl.config import load_config

    try:
        config = _root_params(ctx).get("config")
        names = load_config(config if isinstance(config, str | Path) else None).names
    except Exception:  # completion must never print a traceback into the shell
        return []
    return [name for name in names if name.startswith(incomplete)]


def complete_circuits(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of circuit names: those in the state, then the configured ones."""
    from cbctl.stores import open_store, resolve_state_location

    found: list[str] = []
    # No state yet, or an unreadable one: offer the configured names only.
    with contextlib.suppress(Exception):
        given = _root_params(ctx).get("state")
        location = resolve_state_location(given if isinstance(given, str) else None)
        store = open_store(location, create=False)
        try:
            found = sorted(stored.name for stored in store.load_all())
        finally:
            store.close()
    found += [name for name in complete_dependencies(ctx, "") if name not in found]
    return [name for name in found if name.startswith(incomplete)]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str, *, most_days: int) -> float:
    """`90`, `90s`, `15m`, `2h`, `7d` -> seconds, at most `most_days` days; a UsageError naming
    the option otherwise (the one reading of DURATION for `forget --stale` and holds' `--for`)."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None or float(found[1]) <= 0:
        raise UsageError(f"{option} must be a duration such as 90s, 15m, 2h or 7d, got {text!r}")
    span = float(found[1]) * _UNIT[found[2]]
    if span > most_days * 86400:
        raise UsageError(f"{option} must be at most {most_days}d, got {text!r}")
    return span
