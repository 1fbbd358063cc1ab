"""`cbctl events`: the transition journal of the state or of a service, optionally followed."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated

import typer

from cbctl.cli.app import app
from cbctl.cli.common import open_state

if TYPE_CHECKING:
    from cbctl.feed import Batch
    from cbctl.journal import TransitionEvent


@app.command()
def events(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(metavar="[NAME]", help="Only this circuit's transitions.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new transitions until Ctrl-C.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per transition, one per line.")
    ] = False,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", metavar="URL", help="A service's health endpoint instead of the state."
        ),
    ] = None,
    interval: Annotated[
        str,
        typer.Option(
            metavar="SECONDS",
            help="Seconds between polls with --follow (0.05 <= SECONDS <= 86400).",
        ),
    ] = "0.5",
) -> None:
    """Show recent circuit transitions, oldest first (the last 200 per circuit are kept).

    Reads the state (every process's transitions, with the process that made each), or a
    service's /events with --url. With --follow, new transitions are printed as they happen
    (like `kubectl get events -w`); Ctrl-C stops it (exit 0).

    \b
    Examples:
      cbctl events postgresql
      cbctl events --follow --url http://127.0.0.1:8000/cbctl --json
    """
    from cbctl.errors import DependencyError, StoreUnavailableError, UnknownCircuitError, UsageError
    from cbctl.feed import fetch_events, store_events
    from cbctl.fleet import fetch_health, read_store
    from cbctl.limits import seconds
    from cbctl.render import event_line, is_plain, make_console

    pause = seconds(interval, "--interval", minimum=0.05, error=UsageError, text=True)

    console = make_console()
    plain = is_plain(console)
    store = None if url else open_state(ctx)

    def read(since: int | None) -> Batch:
        if store is not None:
            return store_events(store, since)
        assert url is not None
        return fetch_events(url, since)

    def show(batch: list[TransitionEvent]) -> None:
        for event in batch:
            if name is not None and event.circuit != name:
                continue
            if as_json:
                typer.echo(json.dumps(event.to_json()))
            else:
                console.print(event_line(event, plain=plain))

    try:
        listed, cursor = read(None)
        if name is not None and all(event.circuit != name for event in listed):
            known = [c["name"] for c in (read_store(store) if store else fetch_health(url or ""))]
            if name not in known:
                raise UnknownCircuitError(name, known)
        show(listed)
        unreachable = False
        while follow:
            time.sleep(pause)
            try:
                batch, cursor = read(cursor)
            except (DependencyError, StoreUnavailableError) as error:
                if not unreachable:
                    typer.echo(f"cbctl events: {error} (still trying)", err=True)
                unreachable = True
                continue
            unreachable = False
            show(batch)
    except KeyboardInterrupt:
        pass
    finally:
        if store is not None:
            store.close()
