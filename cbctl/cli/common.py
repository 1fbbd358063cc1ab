"""Helpers every command shares: opening the state the global options point at."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from cbctl.cli.app import globals_of
from cbctl.state import CircuitStore

if TYPE_CHECKING:
    from cbctl.config import Dependency

__all__ = ["load_dependency", "open_state", "state_location"]


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
