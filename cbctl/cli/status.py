"""`cbctl status`: one table (or JSON list) of every circuit in the shared state."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from cbctl.cli.app import app
from cbctl.cli.common import open_state


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of stats objects on stdout.")
    ] = False,
) -> None:
    """Show every circuit in the state: state, failures, retry time, last failure.

    \b
    Example:
      cbctl --state ./circuits.db status --json
    """
    from cbctl.fleet import SourceReport, read_store

    store = open_state(ctx)
    try:
        circuits = read_store(store)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(circuits, indent=2))
        return
    from cbctl.render import circuit_table, is_plain, make_console

    console = make_console()
    now = time.time()
    report = SourceReport(store.url, tuple(circuits), now)
    console.print(circuit_table([report], now, plain=is_plain(console)))
