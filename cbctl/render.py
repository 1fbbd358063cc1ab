"""Everything cbctl shows to people, built with rich from plain data (never from live objects).

Each function takes data (stats dicts, `cbctl.fleet` dataclasses) and an injected `now` (wall
seconds), and returns a rich renderable, so tests render on a fixed-width Console at a fixed
time. Sections: consoles, durations, circuit tables, resets. Add new sections (probe results,
simulation journals) below the existing ones.

Every text that came from outside (names, errors, sources, remote answers) goes through
`visible()` and into rich as `Text`, never as markup: `[/bold]x` is shown as it is, and an ESC
or newline as `\x1b` / `\n`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from rich import box
from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from cbctl.printable import visible

if TYPE_CHECKING:  # data types only: importing the scenarios would slow every command
    from cbctl.fleet import CircuitReset, SourceReport
    from cbctl.journal import TransitionEvent
    from cbctl.scenarios import Event, FlappingReport, Journal

__all__ = [
    "circuit_table",
    "config_table",
    "event_line",
    "fault_line",
    "flapping_table",
    "format_age",
    "format_latency",
    "journal_table",
    "make_console",
    "probe_line",
    "probe_table",
    "reset_table",
    "round_heading",
    "run_live",
    "state_text",
    "timeline_line",
    "watch_header",
]

# -- consoles ----------------------------------------------------------------------------------

PLAIN_WIDTH = 1000
"""Tables are not squeezed into 80 columns when the output is a file or a pipe."""


def make_console(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    """A console that is plain (no colour, no box drawing) when not a TTY or NO_COLOR is set."""
    console = Console(file=file, stderr=stderr, highlight=False, emoji=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PLAIN_WIDTH
    return console


def _text(value: object, style: str = "") -> Text:
    """Untrusted data as a rich Text: control characters visible, never read as markup."""
    return Text(visible(value), style=style)


def is_plain(console: Console) -> bool:
    """Whether output should be plain text: not a terminal, or colour switched off."""
    return not console.is_terminal or console.no_color


# -- durations and times -----------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    """A short duration for a narrow column: 7s, 4m05s, 2h03m, 3d04h."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _epoch(iso: object) -> float | None:
    """Epoch seconds of an ISO-8601 UTC time from stats (`2026-01-09T19:30:00Z`), else None."""
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# -- circuit tables ----------------------------------------------------------------------------

STATE_STYLES: Mapping[str, str] = {
    "closed": "green",
    "open": "bold red",
    "half_open": "yellow",
    "unreachable": "bold magenta",
}


def _state_label(stats: Mapping[str, Any]) -> str:
    """The state; a hold says so ("held" when it expires, "forced" when only a reset ends it)."""
    state = visible(stats.get("state", "?"))
    if not stats.get("forced"):
        return state
    return f"{state} (held)" if stats.get("hold_until") else f"{state} (forced)"


def state_text(stats: Mapping[str, Any]) -> Text:
    """The state, coloured; a forced state says so."""
    state = visible(stats.get("state", "?"))
    return Text(_state_label(stats), style=STATE_STYLES.get(state, ""))


def hold_note(stats: Mapping[str, Any], now: float) -> str | None:
    """One line on a circuit's hold: state, until when, owner and reason (all sanitised);
    None when it is not held, or held with nothing more to say (a hold from before schema 3)."""
    if not stats.get("forced") or not any(
        stats.get(key) for key in ("hold_until", "hold_reason", "hold_owner")
    ):
        return None
    until = _epoch(stats.get("hold_until"))
    when = "until reset"
    if until is not None:
        when = f"until {visible(stats.get('hold_until'))} ({format_age(until - now)} left)"
    parts = [f"{visible(stats.get('name', '?'))} held {visible(stats.get('state', '?'))} {when}"]
    if stats.get("hold_owner"):
        parts.append(f"by {visible(stats['hold_owner'])}")
    note = " ".join(parts)
    return f"{note}: {visible(stats['hold_reason'])}" if stats.get("hold_reason") else note


def _ratio(count: object, limit: object) -> str:
    if not isinstance(count, int) or not isinstance(limit, int):
        return "-"
    return f"{count}/{limit}"


def _half_open(stats: Mapping[str, Any]) -> str:
    if stats.get("state") != "half_open":
        return "-"
    return _ratio(stats.get("success_count"), stats.get("success_threshold"))


def _retry(stats: Mapping[str, Any], elapsed: float) -> str:
    """Seconds until an open circuit admits a trial, counted down since the data was read;
    `trial due` once that time has come (the next call is let through). A hold shows the
    time until it expires, or `held` when only a reset ends it."""
    if stats.get("state") != "open":
        return "-"
    retry = stats.get("retry_after")
    if stats.get("forced"):
        return format_age(retry - elapsed) if isinstance(retry, int | float) else "held"
    if not isinstance(retry, int | float):
        return "-"
    left = retry - elapsed
    return f"{left:.1f}s" if left >= 0.05 else TRIAL_DUE


TRIAL_DUE = "trial due"


def _last_failure(stats: Mapping[str, Any], now: float) -> str:
    if stats.get("state") == "unreadable":
        return visible(stats.get("error") or "record unreadable")
    at = _epoch(stats.get("last_failure"))
    if at is None:
        return "-"
    error = stats.get("last_error")
    ago = f"{format_age(now - at)} ago"
    return f"{ago}: {visible(error)}" if error else ago


def _count(value: object) -> str:
    return str(value) if isinstance(value, int) else "-"


def _rate(value: object) -> str:
    """A rate from stats (0..1) as a percentage; "-" while unknown or not a rate."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        return "-"
    return f"{value:.0%}" if value in (0, 1) or value >= 0.1 else f"{value:.1%}"


def _open_time(value: object) -> str:
    """The open duration in force: tenths of a second below a minute, else like format_age."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        return "-"
    return f"{value:.1f}s" if value < 60 else format_age(value)


def _summary(reports: Sequence[SourceReport]) -> str:
    """`3 circuits, 2 closed, 1 open`: a circuit that several sources show (services sharing
    one store, `cbctl.fleet.distinct_circuits`) counts once, and the caption says so."""
    from cbctl.fleet import distinct_circuits

    circuits = distinct_circuits(reports)
    states = Counter(str(each.stats.get("state")) for each in circuits)
    unreachable = sum(1 for report in reports if report.error is not None)
    total = len(circuits)
    shared = sum(1 for each in circuits if len(each.sources) > 1)
    counted = f" ({shared} shown by several sources, counted once)" if shared else ""
    parts = [f"{total} circuit{'s' if total != 1 else ''}{counted}"]
    parts += [
        f"{states[state]} {state}"
        for state in ("closed", "half_open", "open", "unreadable")
        if states[state]
    ]
    if unreachable:
        parts.append(f"{unreachable} source{'s' if unreachable != 1 else ''} unreachable")
    return ", ".join(parts)


SEVERITY: Mapping[str, int] = {"unreachable": 0, "open": 1, "half_open": 2}
"""Which rows stay when not every circuit fits: unreachable sources, open, half-open, closed."""

COLUMNS: tuple[tuple[str, str], ...] = (
    ("circuit", "left"),
    ("state", "left"),
    ("for", "right"),
    ("failures", "right"),
    ("fail%", "right"),
    ("slow%", "right"),
    ("half-open", "right"),
    ("retry in", "right"),
    ("open dur", "right"),
    ("calls", "right"),
    ("rejected", "right"),
    ("last failure", "left"),
)
_STATE, _FOR, _FAIL_RATE, _SLOW_RATE, _HALF_OPEN = 1, 2, 4, 5, 6
_OPEN_TIME, _CALLS, _REJECTED, _LAST_FAILURE = 8, 9, 10, 11
_GIVE_WAY = (_REJECTED, _CALLS, _HALF_OPEN, _FOR, _OPEN_TIME, _SLOW_RATE, _FAIL_RATE)
"""Columns dropped, in this order, when a terminal is too narrow for the error to be read;
circuit, state, failures, retry and the error always stay (the policy figures go last)."""
_UNKNOWN_COUNTERS = (_CALLS, _REJECTED)
"""Columns left out when no row knows them (a store keeps state, not per-process counters)."""
POLICY_COLUMNS: Mapping[int, str] = {
    _FAIL_RATE: "failure_rate",
    _SLOW_RATE: "slow_call_rate",
    _OPEN_TIME: "open_duration",
}
"""Columns of the policies (issue 11), by the stats key that shows one is on: a column is there
only when a row has its key (a rate is "-" while fewer than minimum_calls were seen)."""
_GAP = "  "

Row = tuple[str, list[str], str]
"""(state, cells, source) of one line of the circuit table."""


def _hold_notes(reports: Sequence[SourceReport], now: float) -> list[str]:
    notes = []
    for report in reports:
        for stats in report.circuits:
            note = hold_note(stats, now)
            if note is not None:
                notes.append(note)
    return notes


def _circuit_rows(reports: Sequence[SourceReport], now: float) -> list[Row]:
    """One row per circuit (a failed source: one row), as plain strings (never markup)."""
    rows: list[Row] = []
    for report in reports:
        source = visible(report.source)
        if report.error is not None:
            cells = ["-", "unreachable", *["-"] * (len(COLUMNS) - 3), visible(report.error)]
            rows.append(("unreachable", cells, source))
            continue
        elapsed = now - report.fetched_at
        for stats in report.circuits:
            since = _epoch(stats.get("state_since"))
            state = visible(stats.get("state", "?"))
            cells = [
                visible(stats.get("name", "?")),
                _state_label(stats),
                format_age(None if since is None else now - since),
                _ratio(stats.get("failure_count"), stats.get("failure_threshold")),
                _rate(stats.get("failure_rate")),
                _rate(stats.get("slow_call_rate")),
                _half_open(stats),
                _retry(stats, elapsed),
                _open_time(stats.get("open_duration")),
                _count(stats.get("calls")),
                _count(stats.get("rejections")),
                _last_failure(stats, now),
            ]
            rows.append((state, cells, source))
    return rows


class CircuitTable:
    """The circuit table as lines of text, laid out for the width it is rendered at.

    Not a rich Table: measuring and padding every cell of every row through rich is most of a
    live redraw's cost, and here one Text per line is enough. The source is shown once — in the
    caption for one source, as a heading over each group for several — and "last failure", the
    last column, gets the rest of the line. Where the error does not fit, the columns of
    _GIVE_WAY are dropped before it is cut; output to a file or pipe is never cut.
    """

    def __init__(
        self,
        rows: list[Row],
        caption: str,
        plain: bool,
        source: str | None = None,
        holds: Sequence[str] = (),
        policies: frozenset[int] = frozenset(),
    ) -> None:
        self.rows = rows
        self.holds = holds
        self.policies = policies
        self.caption = caption
        self.plain = plain
        self.source = source
        self.grouped = len({source for _, _, source in rows}) > 1

    def _columns(self, available: int | None) -> tuple[list[int], list[int]]:
        """The indexes of the columns shown and their widths."""
        natural = [cell_len(header) for header, _ in COLUMNS]
        for _, cells, _ in self.rows:
            for index, cell in enumerate(cells):
                natural[index] = max(natural[index], cell_len(cell))
        shown = [
            index
            for index in range(len(COLUMNS))
            if (index in POLICY_COLUMNS and index in self.policies)
            or (index not in POLICY_COLUMNS and index not in _UNKNOWN_COUNTERS)
            or (
                index in _UNKNOWN_COUNTERS and any(cells[index] != "-" for _, cells, _ in self.rows)
            )
        ]
        if available is None:
            return shown, [natural[index] for index in shown]

        def fixed() -> int:
            return sum(natural[i] + len(_GAP) for i in shown if i != _LAST_FAILURE)

        for index in _GIVE_WAY:
            if available - fixed() >= natural[_LAST_FAILURE]:
                break
            if index in shown:
                shown.remove(index)
        widths = [natural[index] for index in shown]
        widths[-1] = max(cell_len(COLUMNS[_LAST_FAILURE][0]), available - fixed())
        return shown, widths

    def _line(
        self, cells: Sequence[str], shown: Sequence[int], widths: Sequence[int], state: str | None
    ) -> Text:
        line = Text(no_wrap=True, overflow="ellipsis")
        for position, (index, width) in enumerate(zip(shown, widths, strict=True)):
            cell = cells[index]
            if cell_len(cell) > width:
                cell = set_cell_size(cell, max(0, width - 1)) + "…"
            justify = COLUMNS[index][1]
            padded = cell.rjust(width) if justify == "right" else cell.ljust(width)
            if position == len(shown) - 1:
                padded = padded.rstrip()
            style = STATE_STYLES.get(state or "", "") if index == _STATE and not self.plain else ""
            line.append(padded, style)
            if position < len(shown) - 1:
                line.append(_GAP)
        return line

    def lines(self, width: int | None) -> list[Text]:
        shown, widths = self._columns(width)
        header = self._line([name for name, _ in COLUMNS], shown, widths, None)
        if not self.plain:
            header.stylize("bold")
        result = [header]
        if not self.plain:
            rule = sum(widths) + len(_GAP) * (len(widths) - 1)
            result.append(Text("─" * (rule if width is None else min(rule, width)), "dim"))
        group = None
        for state, cells, source in self.rows:
            if self.grouped and source != group:
                group = source
                heading = Text(f"{source}:", "" if self.plain else "bold cyan")
                heading.truncate(width or len(source) + 1, overflow="ellipsis")
                result.append(heading)
            result.append(self._line(cells, shown, widths, state))
        for note in self.holds:
            line = Text(note, "" if self.plain else "yellow")
            if width is not None:
                line.truncate(width, overflow="ellipsis")
            result.append(line)
        result.append(self._caption(width))
        return result

    def _caption(self, width: int | None) -> Text:
        """The summary, then the one source; a long source keeps its informative end."""
        if self.source is None:
            return Text(self.caption, no_wrap=True, overflow="ellipsis")
        source, room = self.source, None if width is None else width - len(self.caption) - 4
        if room is not None and cell_len(source) > room:
            source = "…" + source[-max(1, room - 1) :]
        return Text(f"{self.caption} in {source}", no_wrap=True, overflow="ellipsis")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # Fitted to a terminal even without colour (NO_COLOR); a file or pipe gets it whole.
        yield from self.lines(options.max_width if console.is_terminal else None)


def circuit_table(
    reports: Sequence[SourceReport],
    now: float,
    *,
    plain: bool = False,
    max_rows: int | None = None,
) -> CircuitTable:
    """One table of every circuit of every source (a fleet view); a failed source is one row.

    With `max_rows` (a terminal's height), the rows that matter most are kept, in their order:
    unreachable sources, open, half-open, then as many closed circuits as fit; the caption says
    how many were left out. With one source, the caption names it.
    """
    rows = _circuit_rows(reports, now)
    holds = _hold_notes(reports, now)
    caption = _summary(reports)
    if max_rows is not None and len(reports) > 1:
        max_rows -= len(reports)  # the group headings
    if max_rows is not None:
        max_rows -= len(holds)
    if max_rows is not None and len(rows) > max(1, max_rows):
        ranked = sorted(range(len(rows)), key=lambda i: (SEVERITY.get(rows[i][0], 3), i))
        kept = sorted(ranked[: max(1, max_rows)])
        caption += f"; {len(rows) - len(kept)} not shown (terminal too small; see cbctl status)"
        rows = [rows[i] for i in kept]
    policies = frozenset(
        index
        for index, key in POLICY_COLUMNS.items()
        if any(key in stats for report in reports for stats in report.circuits)
    )
    source = visible(reports[0].source) if len(reports) == 1 else None
    return CircuitTable(rows, caption, plain, source, holds, policies)


def watch_header(
    sources: Sequence[str], interval: float | None, refreshed: float, *, plain: bool = False
) -> Text:
    """watch(1)-style first line: what is watched, how often, and when it was last read."""
    every = f"every {interval:g}s" if interval is not None else "once"
    at = time.strftime("%H:%M:%S", time.localtime(refreshed))
    header = Text(f"cbctl watch {every}: {visible(', '.join(sources))}  (refreshed {at})")
    header.no_wrap, header.overflow = True, "ellipsis"
    if not plain:
        header.stylize("bold")
    return header


# -- resets ------------------------------------------------------------------------------------


def _state_line(stats: Mapping[str, Any]) -> Text:
    text = state_text(stats)
    failures = _ratio(stats.get("failure_count"), stats.get("failure_threshold"))
    text.append(f"  failures {failures}", style="")
    return text


def hold_line(held: CircuitReset, source: str, now: float, *, plain: bool = False) -> Text:
    """What `cbctl force-open/closed` did: the hold, and the state it replaced."""
    note = hold_note(held.after, now) or visible(held.name)
    line = Text(note, "" if plain else "yellow")
    line.append(f" (was {_state_label(held.before)}; in {visible(source)})", style="")
    return line


def reset_table(resets: Iterable[CircuitReset], source: str, *, plain: bool = False) -> Table:
    """Each reset circuit's state before and after."""
    table = Table(
        box=None if plain else box.SIMPLE_HEAD,
        header_style="" if plain else "bold",
        caption=_text(f"reset through {visible(source)}"),
        caption_justify="left",
        pad_edge=False,
    )
    table.add_column("circuit", no_wrap=True)
    table.add_column("before", no_wrap=True)
    table.add_column("after", no_wrap=True)
    for done in resets:
        table.add_row(_text(done.name), _state_line(done.before), _state_line(done.after))
    return table


# -- live views --------------------------------------------------------------------------------


def run_live(
    console: Console,
    draw: Callable[[], RenderableType],
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Redraw `draw()` every `interval` seconds until interrupted (KeyboardInterrupt propagates).

    On a terminal the view is redrawn in place, only when asked (no background refresh thread);
    elsewhere each view is printed after the previous one.
    """
    if not console.is_terminal:
        while True:
            console.print(draw())
            console.print()
            sleep(interval)
    from rich.live import Live

    with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
        while True:
            live.update(draw(), refresh=True)
            sleep(interval)


# -- simulation journals -----------------------------------------------------------------------

_PHASE_STYLES = {"transition": "bold", "outage": "red", "recovery": "green", "waiting": "dim"}
_VERDICT_STYLES = {True: "green", False: "bold red"}


def timeline_line(event: Event, *, plain: bool = False) -> Text:
    """One line of the live timeline: seconds since start, phase, what happened, circuit state."""
    line = Text(f"{event.at:7.2f}s  ")
    line.append(f"{event.phase:<12}", style="" if plain else _PHASE_STYLES.get(event.phase, ""))
    line.append(f" {visible(event.message)}")
    if event.state is not None and event.phase != "transition":
        line.append("  [")
        line.append(event.state.value, style="" if plain else STATE_STYLES[event.state.value])
        line.append("]")
    return line


def journal_table(journal: Journal, *, plain: bool = False) -> Table:
    """The verdict: one row per check, passed or failed, with the figure it measured."""
    verdict = "PASSED" if journal.passed else "FAILED"
    title = f"simulate {journal.scenario}: {journal.dependency} at {journal.target} - {verdict}"
    table = Table(
        title=_text(title),
        box=None if plain else box.SIMPLE_HEAVY,
        title_justify="left",
    )
    table.add_column("check")
    table.add_column("result")
    table.add_column("measured")
    for check in journal.checks:
        mark = "passed" if check.passed else "FAILED"
        table.add_row(
            _text(check.name),
            Text(mark, style="" if plain else _VERDICT_STYLES[check.passed]),
            _text(check.detail),
        )
    return table


# -- probe results -----------------------------------------------------------------------------

_OUTCOME_STYLES = {"success": "green", "failure": "bold red", "rejected": "yellow"}


def format_latency(milliseconds: object) -> str:
    """`0.42 ms`, `12.3 ms`, `2.00 s`: precise for fast answers, short for slow ones."""
    if not isinstance(milliseconds, int | float):
        return "-"
    if milliseconds < 10:
        return f"{milliseconds:.2f} ms"
    if milliseconds < 1000:
        return f"{milliseconds:.1f} ms"
    return f"{milliseconds / 1000:.2f} s"


def _outcome_text(result: Mapping[str, Any], plain: bool) -> Text:
    outcome = str(result.get("outcome", "?"))
    return Text(outcome, style="" if plain else _OUTCOME_STYLES.get(outcome, ""))


def _retry_in(result: Mapping[str, Any]) -> str:
    retry = result.get("retry_after")
    if not isinstance(retry, int | float):
        return "-"
    return f"{retry:.1f}s" if retry >= 0.05 else TRIAL_DUE


def _probe_detail(result: Mapping[str, Any]) -> str:
    """The error of a failed or rejected attempt, else the healthy answer (`PONG`)."""
    return visible(result.get("error") or result.get("detail") or "")


def probe_line(result: Mapping[str, Any], plain: bool = False) -> Text:
    """One attempt as a line: `redis redis://localhost:6379/0  failure  2.00 s  open  …`.

    The (redacted) url says which address was probed: a built-in default is easily not the
    address of the service whose circuit has the same name."""
    line = Text(visible(result.get("dependency", "?")))
    if result.get("url"):
        line.append(f" {visible(result['url'])}")
    line.append("  ")
    line.append_text(_outcome_text(result, plain))
    line.append(f"  {format_latency(result.get('latency_ms'))}  ")
    line.append_text(state_text(result))
    line.append(
        f"  failures {_ratio(result.get('failure_count'), result.get('failure_threshold'))}"
    )
    if result.get("state") == "half_open":
        line.append(f"  successes {_half_open(result)}")
    retry = _retry_in(result)
    if retry == TRIAL_DUE:
        line.append(f"  {TRIAL_DUE}")
    elif retry != "-":
        line.append(f"  retry in {retry}")
    if _probe_detail(result):
        line.append(f"  {_probe_detail(result)}")
    return line


def round_heading(number: int, attempts: int, at: float) -> Text:
    """`round 2/5 at 12:03:04`: the line between tables of `probe --all --count N`."""
    return Text(f"round {number}/{attempts} at {time.strftime('%H:%M:%S', time.localtime(at))}")


def probe_table(results: Iterable[Mapping[str, Any]], *, plain: bool = False) -> Table:
    """One round of `cbctl probe --all`: a row per dependency."""
    table = Table(
        box=None if plain else box.SIMPLE_HEAD,
        header_style="" if plain else "bold",
        pad_edge=False,
    )
    table.add_column("dependency", no_wrap=True)
    table.add_column("url", overflow="fold")
    table.add_column("outcome", no_wrap=True)
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("failures", justify="right", no_wrap=True)
    table.add_column("half-open", justify="right", no_wrap=True)
    table.add_column("retry in", justify="right", no_wrap=True)
    table.add_column("detail")
    for result in results:
        table.add_row(
            _text(result.get("dependency", "?")),
            _text(result.get("url", "")),
            _outcome_text(result, plain),
            format_latency(result.get("latency_ms")),
            state_text(result),
            _ratio(result.get("failure_count"), result.get("failure_threshold")),
            _half_open(result),
            _retry_in(result),
            Text(_probe_detail(result)),
        )
    return table


# -- flapping reports --------------------------------------------------------------------------


def flapping_table(report: FlappingReport, *, plain: bool = False) -> RenderableType:
    """With a breaker vs without: how many of the same calls reached a flapping dependency.

    Counts are connections the proxy let through to the dependency (a probe may open more than
    one), so the two rows compare like with like.
    """
    if report.passed:
        verdict = Text("dampened")
    elif report.successes_with_breaker == 0:
        verdict = Text("FAILED: no call got through with the breaker")
    else:
        verdict = Text("NOT dampened")
    verdict.stylize("" if plain else _VERDICT_STYLES[report.passed])
    title = _text(f"simulate flapping: {report.dependency} at {report.target} - ").append(verdict)
    period = report.conditions.get("period_s")
    flaps = f", the dependency flapping every {period:g}s" if period is not None else ""
    table = Table(box=None if plain else box.SIMPLE_HEAVY)
    table.add_column("pass")
    table.add_column("connections reaching it", justify="right")
    table.add_column("rejected fast", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("succeeded", justify="right")
    table.add_row(
        "with breaker",
        str(report.attempts_with_breaker),
        str(report.rejected),
        str(report.failures_with_breaker),
        str(report.successes_with_breaker),
    )
    table.add_row(
        "without breaker",
        str(report.attempts_without_breaker),
        "0",
        str(report.failures_without_breaker),
        str(report.successes_without_breaker),
    )
    plain_pass = report.without_backoff
    if plain_pass is not None:
        table.add_row(
            "breaker, no backoff",
            str(plain_pass.reached_dependency),
            str(plain_pass.rejected),
            str(plain_pass.failures),
            str(plain_pass.successes),
        )
    caption = Text(f"{report.calls} calls per pass, one every {report.interval:g}s{flaps}")
    return Group(title, table, caption)


# -- configuration -----------------------------------------------------------------------------


def _origin(origin: str) -> str:
    """`dependencies.redis.timeout` -> `file`, `defaults.timeout` -> `file [defaults]`: the
    caption names the file, and the short form leaves the width to the values."""
    if origin.startswith("dependencies."):
        return "file"
    if origin.startswith("defaults."):
        return "file [defaults]"
    return origin


def config_table(resolved: Mapping[str, Any], *, plain: bool = False) -> RenderableType:
    """`cbctl config`: one group of rows per dependency, each value with where it came from."""
    table = Table(
        box=None if plain else box.SIMPLE_HEAD,
        header_style="" if plain else "bold",
        pad_edge=False,
    )
    for column in ("dependency", "setting", "value", "from"):
        table.add_column(column, no_wrap=column != "from", overflow="fold")
    for entry in resolved["dependencies"]:
        origins = entry.get("from", {})
        first = True
        for key, value in entry.items():
            if key in ("name", "from"):
                continue
            shown = "-" if value is None else f"{value:g}" if isinstance(value, float) else value
            if isinstance(value, list):
                shown = ", ".join(map(str, value)) or "-"
            origin = _origin(str(origins.get(key, "default")))
            name = entry["name"] if first else ""
            table.add_row(_text(name), Text(key), _text(shown), _text(origin))
            first = False
        table.add_section()
    where = resolved.get("file") or "built-in defaults (no cbctl.toml found)"
    count = len(resolved["dependencies"])
    caption = Text(f"{count} dependenc{'y' if count == 1 else 'ies'} from {visible(where)}")
    return Group(table, caption)


# -- the transition journal ----------------------------------------------------------------------


def _printable(text: str) -> str:
    """Text from another process or host, on one line with no control characters."""
    return "".join(char if char.isprintable() else " " for char in text)


def event_line(event: TransitionEvent, *, plain: bool = False) -> Text:
    """One journal record: when (UTC), circuit, previous -> new state, failures, error, source."""
    at = event.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    line = Text(f"{at}  {_printable(event.circuit)}  ")
    line.append(event.previous.value, style="" if plain else STATE_STYLES[event.previous.value])
    line.append(" -> ")
    line.append(event.state.value, style="" if plain else STATE_STYLES[event.state.value])
    line.append(f"  failures={event.failures}")
    if event.error:
        line.append(f"  error={_printable(event.error)[:200]}")
    if event.source:
        line.append(f"  source={_printable(event.source)[:100]}", style="" if plain else "dim")
    return line


def fault_line(status: Mapping[str, Any], *, plain: bool = False) -> Text:
    """A running proxy: where it listens, what it does now, and how often it was contacted."""
    mode = str(status.get("mode", "?"))
    detail = mode
    if mode == "latency":
        detail += f" {status.get('latency_ms', 0):g} ms"
        if status.get("jitter_ms"):
            detail += f" +/- {status.get('jitter_ms', 0):g} ms"
    elif mode == "flapping":
        detail += f" every {status.get('flap_period_s', 0):g}s (now {status.get('phase', '?')})"
    line = Text(f"proxy {_printable(str(status.get('name', '?')))} ")
    line.append(f"{status.get('listen', '?')} -> {_printable(str(status.get('upstream', '?')))}: ")
    line.append(detail, style="" if plain or mode == "up" else "bold red")
    line.append(
        f"; accepted {status.get('accepted', 0)}, reached upstream "
        f"{status.get('upstream_connections', 0)}, open {status.get('active', 0)}, "
        f"cut {status.get('cut', 0)} (pid {status.get('pid', '?')})"
    )
    return line
