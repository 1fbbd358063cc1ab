"""`cbctl simulate outage|flapping`: verify breakers against a dependency taken down for real."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer

from cbctl.cli.app import app
from cbctl.cli.common import load_dependency

simulate_app = typer.Typer(
    help="Take a dependency down through a fault proxy and verify its circuit breaker.",
    no_args_is_help=True,
)
app.add_typer(simulate_app, name="simulate")


class OutageMode(StrEnum):
    DOWN = "down"
    BLACKHOLE = "blackhole"


@simulate_app.command()
def outage(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Dependency from cbctl.toml or built in.")] = "qdrant",
    url: Annotated[str | None, typer.Option("--url", help="Address to use instead.")] = None,
    mode: Annotated[
        OutageMode, typer.Option("--mode", help="down: refused; blackhole: never answers.")
    ] = OutageMode.DOWN,
    failure_threshold: Annotated[
        int | None, typer.Option("--failure-threshold", help="[default: configured, 5]")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Recovery timeout, s [default: configured, 30]"),
    ] = None,
    success_threshold: Annotated[
        int | None, typer.Option("--success-threshold", help="[default: configured, 2]")
    ] = None,
    call_timeout: Annotated[
        float | None, typer.Option("--call-timeout", help="Seconds one probe may take.")
    ] = None,
    stop_cmd: Annotated[
        str | None, typer.Option("--stop-cmd", help="Command that really stops it.")
    ] = None,
    start_cmd: Annotated[
        str | None, typer.Option("--start-cmd", help="Command that starts it again.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the journal as JSON.")] = False,
) -> None:
    """Outage -> fail fast -> recovery, with a verdict: exit 0 only if every check passes.

    \b
    Examples:
      cbctl simulate outage --timeout 2
      cbctl simulate outage redis --url redis://127.0.0.1:6380/0 --json
      cbctl simulate outage qdrant --stop-cmd 'podman stop local-ai-qdrant' \\
          --start-cmd 'podman start local-ai-qdrant'
    """
    from cbctl.faults import Mode
    from cbctl.render import is_plain, journal_table, make_console, timeline_line
    from cbctl.state import BreakerConfig
    from cbctl.targets import simulate_outage

    dep = load_dependency(ctx, name, url)
    if call_timeout is not None:
        dep = dep.with_call_timeout(call_timeout)
    given = {
        "failure_threshold": failure_threshold,
        "timeout": timeout,
        "success_threshold": success_threshold,
    }
    settings = BreakerConfig.from_mapping(
        {key: value for key, value in given.items() if value is not None}, dep.breaker
    )
    console = make_console(stderr=as_json)
    plain = is_plain(console)
    journal = simulate_outage(
        dep,
        settings,
        mode=Mode(mode.value),
        stop_cmd=stop_cmd,
        start_cmd=start_cmd,
        on_notice=lambda text: console.print(text, markup=False),
        on_event=lambda event: console.print(timeline_line(event, plain=plain)),
    )
    if as_json:
        typer.echo(json.dumps(journal.to_json(), indent=2))
    else:
        console.print(journal_table(journal, plain=plain))
    raise typer.Exit(0 if journal.passed else 1)
