"""`cbctl watch`: a live table of circuits from the state and/or services' health endpoints."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Annotated

import typer

from cbctl.cli.app import app, globals_of
from cbctl.cli.common import open_state

if TYPE_CHECKING:
    from cbctl.render import CircuitTable


@app.command()
def watch(
    ctx: typer.Context,
    interval: Annotated[
        float,
        typer.Option(min=0.1, metavar="SECONDS", help="Seconds between refreshes (at least 0.1)."),
    ] = 1.0,
    urls: Annotated[
        list[str] | None,
        typer.Option(
            "--url", metavar="URL", help="A service's health endpoint; repeat for a fleet view."
        ),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
) -> None:
    """Live table of circuits, redrawn in place; Ctrl-C stops it (exit 0).

    Shows the state; with --url, those services' health endpoints (and the state too if --state
    is given). An endpoint that stops answering shows as unreachable. Without a terminal, each
    refresh is printed after the last.

    \b
    Example:
      cbctl watch --interval 0.5 --url http://127.0.0.1:8092 --url http://10.0.0.7:8092
    """
    from cbctl.fleet import FleetReader, health_url

    endpoints = [health_url(url) for url in urls or []]
    store = open_state(ctx) if not endpoints or globals_of(ctx).state else None
    from cbctl.render import circuit_table, is_plain, make_console, run_live

    console = make_console()
    with FleetReader(store, endpoints, timeout=min(2.0, max(0.5, interval))) as fleet:

        def draw() -> CircuitTable:
            now = time.time()
            live = console.is_terminal and not once
            fits = console.height - 6 if live else None  # header, caption, margin
            return circuit_table(fleet.read(now), now, plain=is_plain(console), max_rows=fits)

        if once:
            console.print(draw())
            return
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends: exit 0
            run_live(console, draw, interval)
