"""`cbctl serve`: the health endpoints of the shared state's circuits over HTTP."""

from __future__ import annotations

from typing import Annotated

import typer

from cbctl.cli.app import app
from cbctl.cli.common import open_state

# cbctl.serving's defaults, written out here: importing it (http.server, the health app) at
# start-up cost every cbctl command ~35 ms. tests/test_cli_startup.py keeps the two in step.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8092


def _loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option(
            metavar="HOST",
            help="Address to bind (loopback by default; anything else prints a warning, and '' "
            "binds every interface).",
        ),
    ] = DEFAULT_HOST,
    port: Annotated[
        int, typer.Option(min=0, max=65535, metavar="PORT", help="TCP port (0: any free one).")
    ] = (DEFAULT_PORT),
    request_deadline: Annotated[
        str,
        typer.Option(
            "--request-deadline",
            metavar="SECONDS",
            help="Seconds a client has to send a whole request once it has begun "
            "(0 < SECONDS <= 86400); slower clients are cut off.",
        ),
    ] = "10",
    max_connections: Annotated[
        str,
        typer.Option(
            "--max-connections",
            metavar="N",
            help="Connections served at once (1 <= N <= 10000); more get a 503 at once.",
        ),
    ] = "64",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CBCTL_TOKEN",
            metavar="TOKEN",
            help="Bearer token that POST /circuits/NAME/reset requires; without it resets are "
            "refused (403). Prefer $CBCTL_TOKEN: options are visible in `ps`.",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="No access log line per request on stderr.")
    ] = False,
) -> None:
    """Serve GET /health, GET /metrics and POST /circuits/NAME/reset for the state's circuits.

    Runs until Ctrl-C (exit 0). /health always answers 200, "degraded" when a circuit is not
    closed. Each request is logged on stderr (time, client, method, path, status; never a
    token) unless --quiet.

    \b
    Example:
      CBCTL_TOKEN=$(openssl rand -hex 16) cbctl --state ./circuits.db serve --port 8092
    """
    from cbctl.health import health_app
    from cbctl.printable import visible
    from cbctl.redaction import remember
    from cbctl.serving import HealthServer

    remember(token)
    from cbctl.errors import UsageError
    from cbctl.limits import count, seconds

    deadline = seconds(request_deadline, "--request-deadline", error=UsageError, text=True)
    connections = count(
        max_connections, "--max-connections", error=UsageError, text=True, maximum=10_000
    )
    store = open_state(ctx)
    server = HealthServer(
        health_app(store, token),
        host,
        port,
        max_connections=connections,
        request_deadline=deadline,
    )
    resets = "POST /circuits/NAME/reset" if token else "resets disabled (no token)"
    typer.echo(
        f"cbctl: serving {visible(store.url)} on {server.url}: /health, /metrics, {resets}",
        err=True,
    )
    if not _loopback(host):
        where = "every interface" if host in ("", "0.0.0.0", "::") else repr(host)  # noqa: S104
        typer.echo(
            f"cbctl: warning: listening on {where}, not only loopback: anyone who can reach it "
            "sees the circuits, and resets need the token"
            + ("" if token else " (none is set, so resets stay refused)"),
            err=True,
        )
    if not quiet:
        _log_requests()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo(f"cbctl: stopped serving on {server.url}", err=True)
    finally:
        server.server_close()
        store.close()


def _log_requests() -> None:
    """The access log: the server's request records (cbctl.health, DEBUG) on stderr."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    access = logging.getLogger("cbctl.health")
    access.addHandler(handler)
    access.setLevel(logging.DEBUG)
