"""`cbctl proxy` and `cbctl fault`: a long-running fault proxy in front of a service's dependency,
switched from another shell."""

from __future__ import annotations

import json
import signal
import threading
from enum import StrEnum
from typing import Annotated

import typer

from cbctl.cli.app import app
from cbctl.cli.common import load_dependency


@app.command()
def proxy(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Dependency (and proxy) name.")],
    listen: Annotated[
        str, typer.Option("--listen", metavar="HOST:PORT", help="Where the service connects.")
    ],
    upstream: Annotated[
        str | None,
        typer.Option(
            "--upstream", metavar="URL", help="The real dependency [default: its configured url]."
        ),
    ] = None,
) -> None:
    """Run a fault proxy in the foreground until Ctrl-C; point the service at it.

    Bytes pass to the upstream until `cbctl fault NAME down|blackhole|latency MS|flapping S`
    (from another shell) breaks the link; `cbctl fault NAME` shows its mode and contact counts.

    \b
    Example:
      cbctl proxy postgresql --listen 127.0.0.1:15432 --upstream postgresql://127.0.0.1:5432/app
      # then start the service with its database url at 127.0.0.1:15432
    """
    from cbctl.config import redact_url
    from cbctl.proxyctl import RunningProxy, parse_listen, upstream_address

    address = parse_listen(listen)
    url = upstream if upstream is not None else load_dependency(ctx, name).url
    target = upstream_address(url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with RunningProxy(name, address, target, redact_url(url)) as running:
        typer.echo(
            f"cbctl proxy {name}: {running.listen} -> {target[0]}:{target[1]} (mode up); "
            f"switch it with: cbctl fault {name} down|up|blackhole|latency MS|flapping SECONDS",
            err=True,
        )
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    typer.echo(f"cbctl proxy {name}: stopped", err=True)


class FaultMode(StrEnum):
    UP = "up"
    DOWN = "down"
    BLACKHOLE = "blackhole"
    LATENCY = "latency"
    FLAPPING = "flapping"


@app.command()
def fault(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The running proxy's name.")],
    mode: Annotated[
        FaultMode | None,
        typer.Argument(
            metavar="[MODE]",
            help="up, down, blackhole, latency or flapping; none: show the current one.",
        ),
    ] = None,
    value: Annotated[
        float | None,
        typer.Argument(metavar="[MS|PERIOD]", help="latency: milliseconds; flapping: seconds."),
    ] = None,
    jitter: Annotated[
        float | None,
        typer.Option("--jitter", metavar="MS", help="latency: give or take up to this many ms."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the proxy's status as JSON.")
    ] = False,
) -> None:
    """Switch a running `cbctl proxy`, or show its mode and contact counts.

    \b
    Examples:
      cbctl fault postgresql down
      cbctl fault postgresql latency 250 --jitter 50
      cbctl fault postgresql flapping 2
      cbctl fault postgresql up
      cbctl fault postgresql --json
    """
    from cbctl.errors import UsageError
    from cbctl.proxyctl import control

    if value is not None and mode not in (FaultMode.LATENCY, FaultMode.FLAPPING):
        raise UsageError(f"only latency and flapping take a value, not {mode or 'no mode'}")
    if jitter is not None and mode is not FaultMode.LATENCY:
        raise UsageError("--jitter goes with the latency mode")
    if mode is FaultMode.LATENCY and value is None:
        raise UsageError("latency needs the milliseconds to add, e.g. cbctl fault NAME latency 200")
    if mode is FaultMode.FLAPPING and value is None:
        raise UsageError("flapping needs the seconds per phase, e.g. cbctl fault NAME flapping 2")
    handle = control(name)
    if mode is None:
        status = handle.status()
    elif mode is FaultMode.LATENCY:
        status = handle.set_fault(mode.value, latency_ms=value, jitter_ms=jitter or 0.0)
    elif mode is FaultMode.FLAPPING:
        status = handle.set_fault(mode.value, period_s=value)
    else:
        status = handle.set_fault(mode.value)
    if as_json:
        typer.echo(json.dumps(status))
        return
    from cbctl.render import fault_line, is_plain, make_console

    console = make_console()
    console.print(fault_line(status, plain=is_plain(console)))
