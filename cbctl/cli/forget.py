"""`cbctl forget`: remove circuits from the shared state (renamed or retired dependencies)."""

from __future__ import annotations

from typing import Annotated

import typer

from cbctl.cli.app import app
from cbctl.cli.common import complete_circuits, open_state, parse_duration
from cbctl.errors import UsageError


@app.command()
def forget(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[NAME]...",
            help="Circuits to remove.",
            show_default=False,
            autocompletion=complete_circuits,
        ),
    ] = None,
    stale: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="Instead of names: every circuit unchanged and without failures for this long "
            "(90s, 15m, 2h, 7d; at most 3650d); circuits held by force-open/closed are kept.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Remove circuits from the state; a process still using one starts it afresh (closed).

    Exit 2 for a name the state does not know (nothing is removed then) or a state file that
    does not exist.

    \b
    Example:
      cbctl forget old-search
      cbctl forget --stale 7d
    """
    from cbctl.fleet import forget_in_store

    if bool(names) == (stale is not None):
        raise UsageError("give circuit NAMEs or --stale DURATION (not both)")
    age = None if stale is None else parse_duration(stale, "--stale", most_days=3650)
    store = open_state(ctx, create=False)
    try:
        gone, source = forget_in_store(store, names or [], stale=age), store.url
    finally:
        store.close()
    from cbctl.printable import visible

    if not gone:
        typer.echo(
            f"cbctl: no circuit in {visible(source)} unchanged for {stale}; nothing forgotten",
            err=True,
        )
        return
    for name, state in gone:
        typer.echo(visible(f"forgot {name} ({state}) in {source}"))
