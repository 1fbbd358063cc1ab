"""`cbctl status`: one table (or JSON list) of the circuits in the shared state."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from cbctl.cli.app import app, globals_of
from cbctl.cli.common import complete_circuits, open_state
from cbctl.errors import UnknownCircuitError


@app.command()
def status(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[NAME]...",
            help="Only these circuits [default: every one].",
            show_default=False,
            autocompletion=complete_circuits,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of stats objects on stdout.")
    ] = False,
    exit_code: Annotated[
        bool,
        typer.Option(
            "--exit-code", help="Exit 1 when any circuit shown is not closed (for cron and CI)."
        ),
    ] = False,
) -> None:
    """Show the circuits of the state: state, failures, retry time, last failure.

    A state file that does not exist is an error (exit 2): only commands that record outcomes
    (probe, serve) create it. A NAME the state does not know is exit 2, unless it is a
    configured dependency that has simply not been recorded yet (said on stderr).

    \b
    Example:
      cbctl --state ./circuits.db status --json
      cbctl status qdrant redis --exit-code || notify-send 'a circuit is open'
    """
    from cbctl.fleet import SourceReport, read_store

    store = open_state(ctx, create=False)
    try:
        circuits = read_store(store)
    finally:
        store.close()
    if names:
        circuits = _only(ctx, circuits, names)
    if as_json:
        typer.echo(json.dumps(circuits, indent=2))
    else:
        from cbctl.render import circuit_table, is_plain, make_console

        console = make_console()
        now = time.time()
        report = SourceReport(store.url, tuple(circuits), now)
        console.print(circuit_table([report], now, plain=is_plain(console)))
    if exit_code and any(each["state"] != "closed" for each in circuits):
        raise typer.Exit(1)


def _only(ctx: typer.Context, circuits: list[dict[str, Any]], names: list[str]) -> list[Any]:
    """The circuits called `names`; a configured name with no state is noted, others are errors."""
    recorded = {each["name"]: each for each in circuits}
    missing = [name for name in dict.fromkeys(names) if name not in recorded]
    if missing:
        from cbctl.config import load_config

        configured = set(load_config(globals_of(ctx).config).names)
        for name in missing:
            if name not in configured:
                raise UnknownCircuitError(name, {*recorded, *configured})
            typer.echo(f"cbctl: {name}: no recorded state yet (never probed or called)", err=True)
    return [recorded[name] for name in dict.fromkeys(names) if name in recorded]
