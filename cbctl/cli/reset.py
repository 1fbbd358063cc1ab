"""`cbctl reset`: force circuits CLOSED in the shared state or through a service's endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from cbctl.cli.app import app, globals_of
from cbctl.cli.common import complete_circuits, open_state
from cbctl.errors import UsageError

if TYPE_CHECKING:
    from cbctl.fleet import CircuitReset


@app.command()
def reset(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME",
            help="The circuit to close.",
            show_default=False,
            autocompletion=complete_circuits,
        ),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Close every circuit.")] = False,
    url: Annotated[
        str | None,
        typer.Option(metavar="URL", help="Reset through this service's health endpoint instead."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CBCTL_TOKEN",
            metavar="TOKEN",
            show_default=False,
            help="Bearer token of the endpoint (with --url).",
        ),
    ] = None,
) -> None:
    """Force a circuit (or --all) back to CLOSED and show its state before and after.

    Through the state by default; with --url through a service's health endpoint. Exit 2 for
    an unknown circuit (listing the known ones), a state file that does not exist, or a refused
    token; exit 1 when the endpoint is unreachable or does not answer like a cbctl health
    endpoint. A configured dependency with no recorded state is already closed: a no-op, exit 0.

    \b
    Example:
      cbctl reset qdrant
      CBCTL_TOKEN=... cbctl reset --all --url http://127.0.0.1:8092
    """
    from cbctl.fleet import reset_in_store, reset_remote

    if (name is None) == (not every):
        raise UsageError("give a circuit NAME or --all (not both)")
    from cbctl.redaction import remember

    remember(token)
    resets: list[CircuitReset]
    if url is not None:
        if not token:
            raise UsageError("--url needs --token (or $CBCTL_TOKEN) for the endpoint's resets")
        resets, source = reset_remote(url, name, token), url
    else:
        store = open_state(ctx, create=False)
        try:
            if name is not None and store.load(name) is None and _configured(ctx, name):
                typer.echo(
                    f"cbctl: {name} has no recorded state in {store.url}: "
                    "it is closed already; nothing to reset",
                    err=True,
                )
                return
            resets, source = reset_in_store(store, name), store.url
        finally:
            store.close()
    from cbctl.render import is_plain, make_console, reset_table

    console = make_console()
    if not resets:
        from cbctl.printable import visible

        typer.echo(f"no circuits to reset in {visible(source)}", err=True)
        return
    console.print(reset_table(resets, source, plain=is_plain(console)))


def _configured(ctx: typer.Context, name: str) -> bool:
    from cbctl.config import load_config

    return name in load_config(globals_of(ctx).config).dependencies
