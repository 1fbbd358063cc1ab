"""`cbctl probe`: health-check dependencies through their breakers, recorded in the shared state.

Every attempt goes through the dependency's circuit breaker attached to the shared state, so
probes from separate processes (cron, systemd, CI, a shell) trip the circuit together and then
fail fast — without contacting the dependency and without importing its client library.

Exit codes: 0 healthy, 1 the probe failed, 2 usage/configuration/state error, 3 rejected by an
open circuit, 130 interrupted (Ctrl-C). With `--count N` the last attempt's code counts; with
`--all`, the worst code of the last round (3 if any circuit rejected, else 1 if any probe failed,
else 0).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from cbctl.cli.app import app, globals_of
from cbctl.cli.common import complete_dependencies, open_state
from cbctl.errors import UsageError
from cbctl.limits import COUNT_RANGE, SECONDS_RANGE

if TYPE_CHECKING:
    from rich.console import Console

    from cbctl.config import Dependency
    from cbctl.probing import ProbeAttempt
    from cbctl.state import CircuitStore

# --count, --interval and --call-timeout arrive as text and are checked by cbctl.limits (the
# same ranges as cbctl.toml), so that a bad value is told in the option's own terms rather than
# the parser's generic message; both end as one line with exit code 2.


def _count(text: str) -> int:
    """`--count`: a whole number of attempts."""
    from cbctl.limits import count

    return count(text, "--count", error=UsageError, text=True)


def _seconds(option: str, text: str, *, zero_ok: bool) -> float:
    """Finite seconds up to a day; positive, or also zero when `zero_ok`."""
    from cbctl.limits import seconds

    return seconds(text, option, zero_ok=zero_ok, error=UsageError, text=True)


def _targets(ctx: typer.Context, names: Sequence[str], every: bool) -> list[Dependency]:
    from cbctl.config import load_config

    if every and names:
        raise UsageError("give dependency NAMEs or --all, not both")
    config = load_config(globals_of(ctx).config)
    if every:
        if not config.names:
            raise UsageError(f"no dependencies configured in {config.origin}")
        return [config.dependencies[each] for each in config.names]
    if not names:
        raise UsageError(f"which dependency? give a NAME ({', '.join(config.names)}) or --all")
    return [config.dependency(name) for name in dict.fromkeys(names)]


def _settle_settings(
    targets: Sequence[Dependency], store: CircuitStore, *, use_stored: bool
) -> list[Dependency]:
    """Refuse to record into a circuit last used with other breaker settings (a service's
    circuit of the same name, perhaps for another address), unless `use_stored`: then probe
    with the circuit's own settings, leaving them as they were."""
    from dataclasses import replace

    from cbctl.printable import visible
    from cbctl.probing import settings_mismatch

    chosen, refused = [], []
    for dep in targets:
        mismatch = settings_mismatch(dep, store)
        if mismatch is None:
            chosen.append(dep)
        elif use_stored:
            chosen.append(replace(dep, breaker=mismatch.stored))
        else:
            there = " ".join(f"{key}={value!r}" for key, value, _ in mismatch.differences)
            here = " ".join(f"{key}={value!r}" for key, _, value in mismatch.differences)
            refused.append(f"{dep.name!r} (there {there}; here {here}; probing {dep.display_url})")
    if refused:
        circuits = visible(" and ".join(refused))
        raise UsageError(
            f"not recording into circuit {circuits}: {visible(store.url)} last used it with other "
            "breaker settings, perhaps a service's circuit for another address; check the "
            "address, or add --use-stored-settings to probe with the circuit's settings"
        )
    return chosen


def _show(console: Console | None, results: Sequence[ProbeAttempt], table: bool) -> None:
    """Print one round: JSON lines when `console` is None, else a line or a table."""
    rows = [result.as_json() for result in results]
    if console is None:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    from cbctl.render import is_plain, probe_line, probe_table

    plain = is_plain(console)
    console.print(probe_table(rows, plain=plain) if table else probe_line(rows[0], plain))


def _round_heading(console: Console, number: int, attempts: int) -> None:
    """Which round a table is, and when: rounds of several dependencies look alike."""
    from cbctl.render import round_heading

    if number > 1:
        console.print()
    console.print(round_heading(number, attempts, time.time()))


def _warn_if_not_shared(results: Sequence[ProbeAttempt], warned: set[str]) -> None:
    """The shared state did not answer: say so once per dependency, with the first cause (later
    attempts only say that the store is still failing fast)."""
    from cbctl.printable import visible

    for result in results:
        if result.degraded and result.dependency not in warned:
            warned.add(result.dependency)
            typer.echo(
                f"cbctl: warning: {visible(result.degraded)}; outcome kept in this process only",
                err=True,
            )


@app.command()
def probe(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[NAME]...",
            help="The dependencies to probe (from cbctl.toml or built in).",
            show_default=False,
            autocompletion=complete_dependencies,
        ),
    ] = None,
    every: Annotated[
        bool,
        typer.Option(
            "--all", help="Probe every configured dependency at once; exit with the worst code."
        ),
    ] = False,
    count: Annotated[
        str,
        typer.Option(
            "--count",
            metavar="N",
            help=f"Number of attempts ({COUNT_RANGE}); exit code is the last's.",
        ),
    ] = "1",
    interval: Annotated[
        str,
        typer.Option(
            "--interval",
            metavar="SECONDS",
            help="Pause between attempts, none after the last (0 <= SECONDS <= 86400).",
        ),
    ] = "1.0",
    call_timeout: Annotated[
        str | None,
        typer.Option(
            "--call-timeout",
            metavar="SECONDS",
            help=f"Longest one probe may take ({SECONDS_RANGE}) "
            "[default: call_timeout from cbctl.toml, else 2.0].",
            show_default=False,
        ),
    ] = None,
    use_stored: Annotated[
        bool,
        typer.Option(
            "--use-stored-settings",
            help="Probe with the breaker settings a circuit was last used with (e.g. by a "
            "service) where they differ from cbctl.toml's; without it, such a probe is refused.",
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object per attempt and dependency, one per line."),
    ] = False,
) -> None:
    """Health-check a dependency through its circuit breaker, recorded in the shared state.

    Exit 0 healthy, 1 the probe failed, 2 bad usage or configuration, 3 rejected because the
    circuit is open (the dependency was not contacted). With --count, the last attempt decides;
    with several NAMEs or --all, the worst of the last round (3 before 1 before 0).

    A circuit that the state last used with other breaker settings (a service's circuit of the
    same name, say) is not recorded into: exit 2, unless --use-stored-settings.

    \b
    Example:
      cbctl probe redis --count 5 --interval 2
      cbctl probe qdrant redis
      cbctl --state ./circuits.db probe --all --json
      CBCTL_STATE=/srv/app/circuits.db cbctl probe postgresql --use-stored-settings
    """
    attempts = _count(count)
    pause = _seconds("--interval", interval, zero_ok=True)
    limit = (
        None if call_timeout is None else _seconds("--call-timeout", call_timeout, zero_ok=False)
    )
    targets = _targets(ctx, names or [], every)
    table = len(targets) > 1
    if limit is not None:
        targets = [dep.with_call_timeout(limit) for dep in targets]
    console = None
    if not as_json:
        from cbctl.render import make_console

        console = make_console()
    from cbctl.probing import breakers_for, probe_round

    store = open_state(ctx)
    done = 0
    warned: set[str] = set()
    try:
        targets = _settle_settings(targets, store, use_stored=use_stored)
        breakers = breakers_for(targets, store)
        for number in range(1, attempts + 1):
            results = probe_round(targets, store, number, breakers=breakers)
            done = number
            if console is not None and table and attempts > 1:
                _round_heading(console, number, attempts)
            _show(console, results, table=table)
            _warn_if_not_shared(results, warned)
            if number < attempts:
                time.sleep(pause)
    except KeyboardInterrupt as interrupt:
        typer.echo(f"cbctl: probe interrupted after {done} of {attempts} attempts", err=True)
        raise typer.Exit(130) from interrupt
    finally:
        store.close()
    code = max(result.exit_code for result in results)
    if code:
        raise typer.Exit(code)
