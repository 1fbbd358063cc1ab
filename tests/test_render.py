"""Circuit tables as people see them, on a fixed-width console at a fixed time."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console

from cbctl.fleet import CircuitReset, SourceReport
from cbctl.render import circuit_table, format_age, is_plain, make_console, reset_table

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
ISO_NOW = "2026-01-01T00:00:00Z"


def stats(name: str, state: str = "closed", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "state": state,
        "failure_count": 0,
        "success_count": 0,
        "last_failure": None,
        "last_error": None,
        "state_since": "2025-12-31T23:55:55Z",  # 4m05s before NOW
        "retry_after": None,
        "forced": False,
        "failure_threshold": 5,
        "success_threshold": 2,
        "calls": 10,
        "rejections": 0,
    }
    return {**base, **changes}


def render(table: Any, *, color: bool = False) -> str:
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=180,
        force_terminal=color,
        color_system="standard" if color else None,
        legacy_windows=False,
    )
    console.print(table)
    return buffer.getvalue()


def line_of(output: str, name: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith(name)]
    return line


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (-3, "0s"), (7.9, "7s"), (245, "4m05s"), (7380, "2h03m"), (273600, "3d04h")],
)
def test_durations_are_short_and_readable(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


def test_a_closed_circuit_shows_time_in_state_failures_and_calls() -> None:
    report = SourceReport("/var/lib/cbctl/circuits.db", (stats("qdrant", failure_count=2),), NOW)
    line = line_of(render(circuit_table([report], NOW, plain=True)), "qdrant")
    assert line.split() == [
        "qdrant", "closed", "4m05s", "2/5", "-", "-", "-", "10", "0",
        "/var/lib/cbctl/circuits.db",
    ]  # fmt: skip


def test_an_open_circuit_counts_down_to_its_retry_and_shows_the_last_failure() -> None:
    open_stats = stats(
        "redis",
        "open",
        failure_count=5,
        retry_after=15.0,
        last_failure="2025-12-31T23:58:00Z",
        last_error="ConnectionRefusedError: [Errno 111] Connection refused",
        rejections=4,
    )
    report = SourceReport("http://127.0.0.1:8092/health", (open_stats,), NOW - 3)
    line = line_of(render(circuit_table([report], NOW, plain=True)), "redis")
    assert "5/5" in line
    assert "12.0s" in line  # 15 s when read, 3 s ago
    assert "2m00s ago: ConnectionRefusedError: [Errno 111] Connection refused" in line
    assert line.split()[-2:] == ["4", "http://127.0.0.1:8092/health"]


def test_a_half_open_circuit_shows_its_progress_towards_closing() -> None:
    report = SourceReport("state", (stats("postgresql", "half_open", success_count=1),), NOW)
    line = line_of(render(circuit_table([report], NOW, plain=True)), "postgresql")
    assert line.split()[:5] == ["postgresql", "half_open", "4m05s", "0/5", "1/2"]


def test_a_forced_open_circuit_says_forced_and_held() -> None:
    report = SourceReport("state", (stats("llamacpp", "open", forced=True),), NOW)
    line = line_of(render(circuit_table([report], NOW, plain=True)), "llamacpp")
    assert "open (forced)" in line
    assert "held" in line


def test_an_unreachable_source_is_one_row_and_counted_in_the_summary() -> None:
    reports = [
        SourceReport("state", (stats("a"), stats("b", "open", retry_after=1.0)), NOW),
        SourceReport("http://10.0.0.7:8092/health", (), NOW, "http://10.0.0.7:8092 unreachable"),
    ]
    output = render(circuit_table(reports, NOW, plain=True))
    assert "unreachable" in line_of(output, "-")
    assert "http://10.0.0.7:8092 unreachable" in output
    assert "2 circuits, 1 closed, 1 open, 1 source unreachable" in output


def test_store_circuits_without_call_counters_show_dashes() -> None:
    report = SourceReport("state", (stats("qdrant", calls=None, rejections=None),), NOW)
    assert line_of(render(circuit_table([report], NOW, plain=True)), "qdrant").split()[7:9] == [
        "-",
        "-",
    ]


def test_states_are_coloured_on_a_terminal_and_plain_otherwise() -> None:
    report = SourceReport("s", (stats("redis", "open"), stats("qdrant")), NOW)
    coloured = render(circuit_table([report], NOW), color=True)
    assert "\x1b[1;31mopen" in coloured
    assert "\x1b[32mclosed" in coloured
    plain = render(circuit_table([report], NOW, plain=True))
    assert "\x1b[" not in plain
    assert "─" not in plain  # no box drawing in plain text


def test_a_reset_shows_each_circuit_before_and_after() -> None:
    done = CircuitReset(
        "redis", stats("redis", "open", failure_count=5), stats("redis", failure_count=0)
    )
    output = render(reset_table([done], "/tmp/circuits.db", plain=True))
    assert line_of(output, "redis").split() == [
        "redis", "open", "failures", "5/5", "closed", "failures", "0/5",
    ]  # fmt: skip
    assert "reset through /tmp/circuits.db" in output


def test_make_console_is_plain_and_wide_when_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console(io.StringIO())
    assert is_plain(console)
    assert console.width == 1000


def test_make_console_honours_no_color_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    console = make_console(io.StringIO())
    assert console.is_terminal
    assert is_plain(console)


def test_a_long_source_keeps_its_end_on_a_terminal_and_stays_whole_in_plain_text() -> None:
    path = "/var/lib/a-very-long-directory-name/for-a-service/state/circuits.db"
    report = SourceReport(path, (stats("qdrant"),), NOW)
    (line,) = [
        line for line in render(circuit_table([report], NOW)).splitlines() if "qdrant" in line
    ]
    assert line.rstrip().endswith(" …" + path[-39:])
    assert path in render(circuit_table([report], NOW, plain=True))


def test_when_rows_do_not_fit_the_open_and_unreachable_ones_stay_in_order() -> None:
    circuits = tuple(stats(f"c{i:02d}", "open" if i in (3, 17) else "closed") for i in range(20))
    reports = [
        SourceReport("state", circuits, NOW),
        SourceReport("http://gone:8092/health", (), NOW, "unreachable: refused"),
    ]
    output = render(circuit_table(reports, NOW, plain=True, max_rows=5))
    shown = [line.split()[0] for line in output.splitlines()[1:] if line[:1] in ("c", "-")]
    assert shown == ["c00", "c01", "c03", "c17", "-"]
    assert "16 not shown (terminal too small; see cbctl status)" in output


def test_an_error_message_is_shown_literally_not_as_markup() -> None:
    failing = stats("x", last_failure=ISO_NOW, last_error="ValueError: [bold]oops[/bold] [Errno 5]")
    output = render(circuit_table([SourceReport("s", (failing,), NOW)], NOW, plain=True))
    assert "ValueError: [bold]oops[/bold] [Errno 5]" in output


def test_on_a_narrow_terminal_the_last_failure_gives_way_and_counts_stay_whole() -> None:
    failing = stats(
        "postgresql",
        "open",
        failure_count=5,
        retry_after=9.0,
        last_failure=ISO_NOW,
        last_error="OperationalError: connection to server at 127.0.0.1 port 5432 failed",
    )
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=True, color_system=None)
    console.print(circuit_table([SourceReport("/var/lib/cbctl/circuits.db", (failing,), NOW)], NOW))
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 100
    (row,) = [line for line in lines if line.startswith("postgresql")]
    assert row.split()[:6] == ["postgresql", "open", "4m05s", "5/5", "-", "9.0s"]
    assert re.search(r" 0s ago: \w+… ", row)
