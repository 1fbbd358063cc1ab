"""`cbctl simulate outage|flapping`: verify breakers against a dependency taken down for real."""

from __future__ import annotations

import json
from dataclasses import replace
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from cbctl.cli.app import app
from cbctl.cli.common import complete_dependencies, load_dependency
from cbctl.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from cbctl.config import Dependency
    from cbctl.state import BreakerConfig

simulate_app = typer.Typer(
    help="Take a dependency down through a fault proxy and verify its circuit breaker.",
    no_args_is_help=True,
)
app.add_typer(simulate_app, name="simulate")


class OutageMode(StrEnum):
    DOWN = "down"
    BLACKHOLE = "blackhole"


# Options both scenarios take; the breaker settings default to the dependency's configured ones.
Name = Annotated[
    str,
    typer.Argument(
        metavar="NAME",
        help="Dependency from cbctl.toml or built in.",
        autocompletion=complete_dependencies,
    ),
]
Url = Annotated[str | None, typer.Option("--url", metavar="URL", help="Use this address instead.")]
FailureThreshold = Annotated[
    int | None,
    typer.Option(
        "--failure-threshold",
        metavar="N",
        help="Failures that open it, 1-1000000 [default: configured, 5].",
    ),
]
RecoveryTimeout = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Recovery timeout before a trial, 0 < SECONDS <= 86400 [default: configured, 30].",
    ),
]
SuccessThreshold = Annotated[
    int | None,
    typer.Option(
        "--success-threshold",
        metavar="N",
        help="Trial successes that close it, 1-1000000 [default: configured, 2].",
    ),
]
CallTimeout = Annotated[
    float | None,
    typer.Option(
        "--call-timeout",
        metavar="SECONDS",
        help="Longest one probe may take, 0 < SECONDS <= 86400 [default: configured, 2].",
    ),
]


@simulate_app.command()
def outage(
    ctx: typer.Context,
    name: Name = "qdrant",
    url: Url = None,
    mode: Annotated[
        OutageMode,
        typer.Option("--mode", help="down: connections refused; blackhole: never answered."),
    ] = OutageMode.DOWN,
    failure_threshold: FailureThreshold = None,
    timeout: RecoveryTimeout = None,
    success_threshold: SuccessThreshold = None,
    call_timeout: CallTimeout = None,
    stop_cmd: Annotated[
        str | None,
        typer.Option("--stop-cmd", metavar="CMD", help="Command that really stops it."),
    ] = None,
    start_cmd: Annotated[
        str | None,
        typer.Option("--start-cmd", metavar="CMD", help="Command that starts it again."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the journal as JSON.")] = False,
    service: Annotated[
        str | None,
        typer.Option(
            "--service",
            metavar="HEALTH_URL",
            help="Verify a running service's own breaker NAME (its mounted cbctl health URL).",
        ),
    ] = None,
    drive: Annotated[
        str | None,
        typer.Option(
            "--drive", metavar="'METHOD URL [BODY]'", help="--service: the request to send it."
        ),
    ] = None,
    drive_cmd: Annotated[
        str | None,
        typer.Option(
            "--drive-cmd", metavar="CMD", help="--service: a command instead (exit 0 ok)."
        ),
    ] = None,
    headers: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", metavar="'NAME: VALUE'", help="--service: request header."),
    ] = None,
    bystander: Annotated[
        str | None,
        typer.Option(
            "--bystander",
            metavar="'METHOD URL'",
            help="--service: a request that does not use NAME; it must keep succeeding.",
        ),
    ] = None,
) -> None:
    """Outage -> fail fast -> recovery, with a verdict: exit 0 only if every check passes.

    With --service, the breaker verified is the running service's own: NAME is taken down
    through its running `cbctl proxy NAME` (or --stop-cmd/--start-cmd) while --drive requests
    are sent to the service, and its /health and /events say what its breaker did.

    \b
    Examples:
      cbctl simulate outage --timeout 2
      cbctl simulate outage redis --url redis://127.0.0.1:6380/0 --json
      cbctl simulate outage qdrant --stop-cmd 'podman stop local-ai-qdrant' \\
          --start-cmd 'podman start local-ai-qdrant'
      cbctl simulate outage postgresql --service http://127.0.0.1:8000/cbctl \\
          --drive 'POST http://127.0.0.1:8000/learning/process {"text": "hi"}'
    """
    if service is not None or drive is not None or drive_cmd is not None:
        _outage_of_service(
            name,
            service,
            drive,
            drive_cmd,
            tuple(headers or ()),
            bystander,
            mode=mode.value,
            url=url,
            call_timeout=call_timeout,
            given={
                "failure_threshold": failure_threshold,
                "timeout": timeout,
                "success_threshold": success_threshold,
            },
            stop_cmd=stop_cmd,
            start_cmd=start_cmd,
            as_json=as_json,
        )
    from cbctl.faults import Mode
    from cbctl.printable import visible
    from cbctl.render import is_plain, journal_table, make_console, timeline_line
    from cbctl.targets import simulate_outage

    dep = _dependency(ctx, name, url, call_timeout)
    settings = _settings(dep, failure_threshold, timeout, success_threshold)
    console = make_console(stderr=as_json)
    plain = is_plain(console)
    try:
        journal = simulate_outage(
            dep,
            settings,
            mode=Mode(mode.value),
            stop_cmd=stop_cmd,
            start_cmd=start_cmd,
            on_notice=lambda text: console.print(visible(text), markup=False),
            on_event=lambda event: console.print(timeline_line(event, plain=plain)),
        )
    except KeyboardInterrupt:
        _interrupted(dep.name)
    if as_json:
        typer.echo(json.dumps(journal.to_json(), indent=2))
    else:
        console.print(journal_table(journal, plain=plain))
    raise typer.Exit(0 if journal.passed else 1)


@simulate_app.command()
def flapping(
    ctx: typer.Context,
    name: Name = "qdrant",
    url: Url = None,
    period: Annotated[
        float,
        typer.Option(
            "--period",
            metavar="SECONDS",
            help="Seconds the proxy stays down, then up, in turn (0 < SECONDS <= 86400).",
        ),
    ] = 0.5,
    calls: Annotated[
        int,
        typer.Option("--calls", metavar="N", help="Calls per pass, with then without (1-100000)."),
    ] = 40,
    interval: Annotated[
        float,
        typer.Option(
            "--interval", metavar="SECONDS", help="Seconds between calls (0 <= SECONDS <= 86400)."
        ),
    ] = 0.05,
    failure_threshold: FailureThreshold = None,
    timeout: RecoveryTimeout = None,
    success_threshold: SuccessThreshold = None,
    backoff_factor: Annotated[
        float | None,
        typer.Option(
            "--backoff-factor",
            metavar="F",
            help="Multiply the open duration by F after each failed trial (F >= 1) "
            "[default: configured, 1: no backoff].",
        ),
    ] = None,
    max_timeout: Annotated[
        float | None,
        typer.Option(
            "--max-timeout",
            metavar="SECONDS",
            help="Longest backed-off open duration [default: configured, 10 x timeout].",
        ),
    ] = None,
    call_timeout: CallTimeout = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """A dependency that goes down and up in turn: does its breaker dampen the calls reaching it?

    The same calls run with a breaker, then without, through a proxy that flaps; exit 0 only if
    fewer of them reached the dependency with the breaker. With backoff on (configured, or
    --backoff-factor / --max-timeout), a third pass runs them through the breaker without it.

    \b
    Examples:
      cbctl simulate flapping --timeout 1
      cbctl simulate flapping --timeout 0.2 --backoff-factor 2 --max-timeout 2
      cbctl simulate flapping redis --url redis://127.0.0.1:6380/0 --period 0.25 --json
    """
    from cbctl.limits import count, seconds
    from cbctl.printable import visible
    from cbctl.render import flapping_table, is_plain, make_console

    period = seconds(period, "--period", error=UsageError)
    calls = count(calls, "--calls", error=UsageError, maximum=100_000)
    interval = seconds(interval, "--interval", zero_ok=True, error=UsageError)
    from cbctl.targets import simulate_flapping

    dep = _dependency(ctx, name, url, call_timeout)
    settings = _settings(dep, failure_threshold, timeout, success_threshold)
    backoff: dict[str, Any] = {}
    if backoff_factor is not None:
        backoff["backoff_factor"] = backoff_factor
    if max_timeout is not None:
        backoff["max_timeout"] = seconds(max_timeout, "--max-timeout", error=UsageError)
    if backoff:
        try:
            settings = replace(settings, **backoff)
        except ConfigError as error:
            raise UsageError(f"--backoff-factor/--max-timeout: {error}") from error
    console = make_console(stderr=as_json)
    try:
        report = simulate_flapping(
            dep,
            settings,
            period=period,
            calls=calls,
            interval=interval,
            on_notice=lambda text: console.print(visible(text), markup=False),
        )
    except KeyboardInterrupt:
        _interrupted(dep.name)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        console.print(flapping_table(report, plain=is_plain(console)))
    raise typer.Exit(0 if report.passed else 1)


def _dependency(
    ctx: typer.Context, name: str, url: str | None, call_timeout: float | None
) -> Dependency:
    from cbctl.limits import seconds

    dep = load_dependency(ctx, name, url)
    if call_timeout is None:
        return dep
    return dep.with_call_timeout(seconds(call_timeout, "--call-timeout", error=UsageError))


def _settings(
    dep: Dependency,
    failure_threshold: int | None,
    timeout: float | None,
    success_threshold: int | None,
) -> BreakerConfig:
    """The dependency's configured breaker settings, with the flags given on top (each in the
    range cbctl.limits gives it, before it reaches the breaker)."""
    from cbctl.limits import count, seconds
    from cbctl.state import BreakerConfig

    given = {
        "failure_threshold": None
        if failure_threshold is None
        else count(failure_threshold, "--failure-threshold", error=UsageError),
        "timeout": None if timeout is None else seconds(timeout, "--timeout", error=UsageError),
        "success_threshold": None
        if success_threshold is None
        else count(success_threshold, "--success-threshold", error=UsageError),
    }
    return BreakerConfig.from_mapping(
        {key: value for key, value in given.items() if value is not None}, dep.breaker
    )


def _outage_of_service(
    name: str,
    service: str | None,
    drive: str | None,
    drive_cmd: str | None,
    headers: tuple[str, ...],
    bystander: str | None,
    *,
    mode: str,
    url: str | None,
    call_timeout: float | None,
    given: dict[str, float | int | None],
    stop_cmd: str | None,
    start_cmd: str | None,
    as_json: bool,
) -> NoReturn:
    """`simulate outage NAME --service URL --drive REQUEST`: the service's own breaker."""
    from cbctl.errors import UsageError
    from cbctl.proxyctl import control
    from cbctl.render import is_plain, journal_table, make_console, timeline_line
    from cbctl.service import (
        CommandDriver,
        CommandOutage,
        HttpDriver,
        Outage,
        ProxyOutage,
        Service,
        prepare,
        run_service_outage,
    )
    from cbctl.state import BreakerConfig

    if service is None:
        raise UsageError("--drive and --drive-cmd go with --service HEALTH_URL")
    if (drive is None) == (drive_cmd is None):
        raise UsageError("--service needs one of --drive 'METHOD URL' or --drive-cmd CMD")
    if url is not None or call_timeout is not None:
        raise UsageError("--url and --call-timeout do not apply with --service")
    if (stop_cmd is None) != (start_cmd is None):
        raise UsageError("--stop-cmd and --start-cmd go together: give both or neither")
    driver = HttpDriver(drive, headers) if drive is not None else CommandDriver(drive_cmd or "")
    bystanding = HttpDriver(bystander) if bystander is not None else None
    endpoint = Service(service)
    prepared = prepare(endpoint, name)
    expect = BreakerConfig.from_mapping(
        {key: value for key, value in given.items() if value is not None}, prepared.settings
    )
    outage: Outage
    if stop_cmd is not None and start_cmd is not None:
        outage = CommandOutage(stop_cmd, start_cmd)
    else:
        outage = ProxyOutage(control(name), mode)
    console = make_console(stderr=as_json)
    plain = is_plain(console)
    try:
        journal = run_service_outage(
            endpoint,
            name,
            driver,
            outage,
            bystander=bystanding,
            expect=expect,
            prepared=prepared,
            on_event=lambda event: console.print(timeline_line(event, plain=plain)),
        )
    except KeyboardInterrupt as interrupt:
        typer.echo(f"cbctl: interrupted; {name} brought back ({outage.label} undone)", err=True)
        raise typer.Exit(130) from interrupt
    finally:
        endpoint.close()
        driver.close()
        if bystanding is not None:
            bystanding.close()
    if as_json:
        typer.echo(json.dumps(journal.to_json(), indent=2))
    else:
        console.print(journal_table(journal, plain=plain))
    raise typer.Exit(0 if journal.passed else 1)


def _interrupted(name: str) -> NoReturn:
    """Ctrl-C: the library has already closed the proxy and brought the dependency back."""
    typer.echo(f"cbctl: interrupted; {name} brought back, fault proxy closed", err=True)
    raise typer.Exit(130)
