"""Helpers every command shares: opening the state the global options point at."""

from __future__ import annotations

import typer

from cbctl.cli.app import globals_of
from cbctl.state import CircuitStore

__all__ = ["open_state", "state_location"]


def state_location(ctx: typer.Context) -> str:
    """`--state` / `$CBCTL_STATE` (Typer reads both), else the user state directory's file."""
    given = globals_of(ctx).state
    if given:
        return given
    from cbctl.stores import default_state_path

    return str(default_state_path())


def open_state(ctx: typer.Context) -> CircuitStore:
    """The store this invocation works on; errors are StateError with a clear message."""
    from cbctl.stores import open_store

    return open_store(state_location(ctx))
