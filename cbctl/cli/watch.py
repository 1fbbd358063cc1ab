"""`cbctl watch`: a live table of circuits from the state and/or services' health endpoints."""

from __future__ import annotations

import contextlib
import time
from typing import Annotated

import typer

from cbctl.cli.app import app, globals_of
from cbctl.cli.common import open_state


@app.command()
def watch(
    ctx: typer.Context,
    interval: Annotated[
        str,
        typer.Option(
            metavar="SECONDS", help="Seconds between refreshes (0.1 <= SECONDS <= 86400)."
        ),
    ] = "1.0",
    urls: Annotated[
        list[str] | None,
        typer.Option(
            "--url", metavar="URL", help="A service's health endpoint; repeat for a fleet view."
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once", help="Print one snapshot and exit (1 when no source could be read)."
        ),
    ] = False,
) -> None:
    """Live table of circuits, redrawn in place; Ctrl-C stops it (exit 0).

    Shows the state; with --url, those services' health endpoints (and the state too if --state
    is given). An endpoint that stops answering shows as unreachable. Without a terminal, each
    refresh is printed after the last. A state file that does not exist is an error (exit 2).

    \b
    Example:
      cbctl watch --interval 0.5 --url http://127.0.0.1:8092 --url http://10.0.0.7:8092
    """
    from cbctl.errors import UsageError
    from cbctl.fleet import FleetReader, health_url
    from cbctl.limits import seconds

    pause = seconds(interval, "--interval", minimum=0.1, error=UsageError, text=True)
    endpoints = [health_url(url) for url in urls or []]
    watch_state = not endpoints or globals_of(ctx).state
    store = open_state(ctx, create=False) if watch_state else None
    from rich.console import Group

    from cbctl.render import circuit_table, is_plain, make_console, run_live, watch_header

    console = make_console()
    plain = is_plain(console)
    sources = ([store.url] if store is not None else []) + [_shown(url) for url in endpoints]
    unreachable = False
    with FleetReader(store, endpoints, timeout=min(2.0, max(0.5, pause))) as fleet:

        def draw() -> Group:
            nonlocal unreachable
            now = time.time()
            live = console.is_terminal and not once
            fits = console.height - 7 if live else None  # header lines, caption, margin
            reports = fleet.read(now)
            unreachable = all(report.error is not None for report in reports)
            header = watch_header(sources, None if once else pause, now, plain=plain)
            return Group(header, circuit_table(reports, now, plain=plain, max_rows=fits))

        if once:
            console.print(draw())
            if unreachable:
                raise typer.Exit(1)
            return
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends: exit 0
            run_live(console, draw, pause)


def _shown(url: str) -> str:
    from cbctl.redaction import redact_url

    return redact_url(url)
