"""`cbctl force-open` / `cbctl force-closed`: operator holds in the shared state that expire."""

from __future__ import annotations

from typing import Annotated

import typer

from cbctl.cli.app import app, globals_of
from cbctl.cli.common import complete_circuits, open_state, parse_duration
from cbctl.state import CircuitState

_For = Annotated[
    str,
    typer.Option(
        "--for",
        metavar="DURATION",
        help="How long the hold lasts (90s, 15m, 2h, 7d; at most 30d); `cbctl reset` ends it.",
        show_default=False,
    ),
]
_Reason = Annotated[
    str,
    typer.Option(
        metavar="TEXT",
        help="Why, shown with the hold in status, watch and /health (at most 200 characters).",
        show_default=False,
    ),
]
_Name = Annotated[
    str,
    typer.Argument(
        metavar="NAME",
        help="The circuit to hold (recorded in the state, or a configured dependency).",
        show_default=False,
        autocompletion=complete_circuits,
    ),
]


@app.command("force-open")
def force_open(ctx: typer.Context, name: _Name, for_: _For, reason: _Reason) -> None:
    """Hold a circuit OPEN in the shared state: every process rejects its calls until the hold
    expires or `cbctl reset NAME`. The reason, owner (user@host) and expiry show in status.

    Exit 2 for an unknown circuit, a bad DURATION or reason, or a state that cannot be written.

    \b
    Example:
      cbctl force-open postgresql --for 30m --reason "failover drill"
    """
    _hold(ctx, name, CircuitState.OPEN, for_, reason)


@app.command("force-closed")
def force_closed(ctx: typer.Context, name: _Name, for_: _For, reason: _Reason) -> None:
    """Hold a circuit CLOSED in the shared state: calls go through and failures never trip it
    until the hold expires or `cbctl reset NAME` (e.g. during a known-noisy migration).

    Exit 2 for an unknown circuit, a bad DURATION or reason, or a state that cannot be written.

    \b
    Example:
      cbctl force-closed qdrant --for 2h --reason "reindexing, expect timeouts"
    """
    _hold(ctx, name, CircuitState.CLOSED, for_, reason)


def _hold(ctx: typer.Context, name: str, state: CircuitState, text: str, why: str) -> None:
    from cbctl.breaker import hold_owner
    from cbctl.errors import UsageError
    from cbctl.state import MAX_HOLD_SECONDS, MAX_REASON

    span = parse_duration(text, "--for", most_days=int(MAX_HOLD_SECONDS // 86400))
    reason = why.strip()
    if not reason:
        raise UsageError("--reason must say why the circuit is held, got an empty text")
    if len(reason) > MAX_REASON:
        raise UsageError(f"--reason must be at most {MAX_REASON} characters, got {len(reason)}")
    from cbctl.config import load_config
    from cbctl.fleet import hold_in_store

    config = load_config(globals_of(ctx).config)
    known = {dep: config.dependency(dep).breaker for dep in config.dependencies}
    store = open_state(ctx)
    try:
        held = hold_in_store(
            store, name, state, for_=span, reason=reason, owner=hold_owner(), known=known
        )
        source = store.url
    finally:
        store.close()
    from cbctl.render import hold_line, is_plain, make_console

    console = make_console()
    import time

    console.print(hold_line(held, source, time.time(), plain=is_plain(console)))
