"""Circuit tables as people see them, on a fixed-width console at a fixed time."""

from __future__ import annotations

import io
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
    assert line.split() == ["qdrant", "closed", "4m05s", "2/5", "-", "-", "10", "0", "-"]


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
    assert line.endswith("2m00s ago: ConnectionRefusedError: [Errno 111] Connection refused")
    assert line.split()[6:8] == ["10", "4"]


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


def test_store_circuits_without_call_counters_leave_those_columns_out() -> None:
    report = SourceReport("state", (stats("qdrant", calls=None, rejections=None),), NOW)
    output = render(circuit_table([report], NOW, plain=True))
    assert "calls" not in output
    assert "rejected" not in output
    assert line_of(output, "qdrant").split() == ["qdrant", "closed", "4m05s", "0/5", "-", "-", "-"]


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


def test_one_source_is_named_once_in_the_caption_not_on_every_row() -> None:
    path = "/var/lib/a-very-long-directory-name/for-a-service/state/circuits.db"
    report = SourceReport(path, (stats("qdrant"), stats("redis")), NOW)
    output = render(circuit_table([report], NOW, plain=True))
    assert output.count(path) == 1
    assert output.splitlines()[-1] == f"2 circuits, 2 closed in {path}"


def test_several_sources_each_head_their_group_of_rows() -> None:
    reports = [
        SourceReport("/tmp/circuits.db", (stats("qdrant"), stats("redis")), NOW),
        SourceReport("http://10.0.0.7:8092/health", (stats("qdrant"),), NOW),
    ]
    lines = render(circuit_table(reports, NOW, plain=True)).splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == [
        "/tmp/circuits.db:", "qdrant", "redis", "http://10.0.0.7:8092/health:", "qdrant",
    ]  # fmt: skip


def test_an_open_circuit_past_its_timeout_says_trial_due() -> None:
    report = SourceReport("s", (stats("redis", "open", retry_after=2.0),), NOW - 5)
    line = line_of(render(circuit_table([report], NOW, plain=True)), "redis")
    assert "trial due" in line
    assert "0.0s" not in line


def _terminal(table: Any, width: int) -> list[str]:
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=True, color_system=None).print(table)
    return buffer.getvalue().splitlines()


LONG_ERROR = "OperationalError: connection to server at 127.0.0.1 port 5432 failed"


@pytest.mark.parametrize("width", [80, 120])
def test_at_80_and_120_columns_state_failures_retry_and_the_error_stay_readable(
    width: int,
) -> None:
    failing = stats(
        "postgresql", "open", failure_count=5, retry_after=9.0,
        last_failure=ISO_NOW, last_error=LONG_ERROR,
    )  # fmt: skip
    path = "/home/operator/.local/state/cbctl/circuits.db"
    lines = _terminal(circuit_table([SourceReport(path, (failing,), NOW)], NOW), width)
    assert max(len(line) for line in lines) <= width
    (row,) = [line for line in lines if line.startswith("postgresql")]
    cells = row.split()
    assert cells[1:2] == ["open"]
    assert "5/5" in cells
    assert "9.0s" in cells
    error_width = len(row) - row.index("0s ago:")
    assert error_width >= (40 if width == 80 else 70)
    assert (LONG_ERROR in row) == (width == 120)
    assert sum(path in line for line in lines) == 1  # in the caption, not on the row


def test_when_rows_do_not_fit_the_open_and_unreachable_ones_stay_in_order() -> None:
    circuits = tuple(stats(f"c{i:02d}", "open" if i in (3, 17) else "closed") for i in range(20))
    reports = [
        SourceReport("state", circuits, NOW),
        SourceReport("http://gone:8092/health", (), NOW, "unreachable: refused"),
    ]
    output = render(circuit_table(reports, NOW, plain=True, max_rows=7))  # 2 source headings
    shown = [line.split()[0] for line in output.splitlines()[1:] if line[:1] in ("c", "-")]
    assert shown == ["c00", "c01", "c03", "c17", "-"]
    assert "16 not shown (terminal too small; see cbctl status)" in output


def test_an_error_message_is_shown_literally_not_as_markup() -> None:
    failing = stats("x", last_failure=ISO_NOW, last_error="ValueError: [bold]oops[/bold] [Errno 5]")
    output = render(circuit_table([SourceReport("s", (failing,), NOW)], NOW, plain=True))
    assert "ValueError: [bold]oops[/bold] [Errno 5]" in output


def test_on_a_narrow_terminal_optional_columns_give_way_before_the_error_is_cut() -> None:
    failing = stats(
        "postgresql", "open", failure_count=5, retry_after=9.0,
        last_failure=ISO_NOW, last_error=LONG_ERROR,
    )  # fmt: skip
    lines = _terminal(circuit_table([SourceReport("/s.db", (failing,), NOW)], NOW), 80)
    header = lines[0].split()
    assert "rejected" not in header
    assert "calls" not in header
    assert header[:2] == ["circuit", "state"]
    assert {"failures", "retry", "last"} <= set(header)


# -- policies (failure rate, slow-call rate, open duration) ------------------------------------

POLICY_KEYS = {"failure_rate": 0.62, "slow_call_rate": 0.05, "open_duration": 120.0}
POLICY_HEADERS = ("fail%", "slow%", "open dur")


def policy_cells(line: str) -> list[str]:
    """fail%, slow% and open dur of a row with every column (one word per cell)."""
    cells = line.split()
    return [cells[4], cells[5], cells[8]]


def test_policy_figures_show_where_a_circuit_reports_them() -> None:
    circuits = (
        stats("qdrant", "open", retry_after=9.0, **POLICY_KEYS),
        stats("redis", failure_rate=None, slow_call_rate=None),  # fewer than minimum_calls
        stats("tcp"),  # its policies are off
    )
    output = render(circuit_table([SourceReport("s", circuits, NOW)], NOW, plain=True))
    header = output.splitlines()[0]
    assert all(name in header for name in POLICY_HEADERS)
    assert policy_cells(line_of(output, "qdrant")) == ["62%", "5.0%", "2m00s"]
    assert policy_cells(line_of(output, "redis")) == ["-", "-", "-"]
    assert policy_cells(line_of(output, "tcp")) == ["-", "-", "-"]


def test_without_policy_keys_the_table_has_no_policy_column() -> None:
    output = render(circuit_table([SourceReport("s", (stats("qdrant"),), NOW)], NOW, plain=True))
    assert output.splitlines()[0].split() == [
        "circuit", "state", "for", "failures", "half-open", "retry", "in", "calls", "rejected",
        "last", "failure",
    ]  # fmt: skip


def test_only_the_policies_in_force_get_a_column() -> None:
    report = SourceReport("s", (stats("qdrant", "open", open_duration=4.5, retry_after=1.0),), NOW)
    output = render(circuit_table([report], NOW, plain=True))
    assert "open dur" in output.splitlines()[0]
    assert "fail%" not in output
    assert "slow%" not in output
    assert "4.5s" in line_of(output, "qdrant").split()


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -0.5, 1.5, True, "0.5", [0.5], {"rate": 1}]
)
def test_a_policy_figure_that_is_not_a_rate_or_duration_shows_as_unknown(bad: object) -> None:
    duration = -1.5 if bad == 1.5 else bad  # 1.5 s is a fine duration, not a fine rate
    report = SourceReport(
        "s", (stats("x", failure_rate=bad, slow_call_rate=bad, open_duration=duration),), NOW
    )
    line = line_of(render(circuit_table([report], NOW, plain=True)), "x")
    assert policy_cells(line) == ["-", "-", "-"]


@pytest.mark.parametrize("width", [80, 120])
def test_with_policies_at_80_and_120_columns_the_essentials_stay_readable(width: int) -> None:
    failing = stats(
        "postgresql", "open", failure_count=5, retry_after=9.0,
        last_failure=ISO_NOW, last_error=LONG_ERROR, **POLICY_KEYS,
    )  # fmt: skip
    path = "/home/operator/.local/state/cbctl/circuits.db"
    lines = _terminal(circuit_table([SourceReport(path, (failing,), NOW)], NOW), width)
    assert max(len(line) for line in lines) <= width
    (row,) = [line for line in lines if line.startswith("postgresql")]
    cells = row.split()
    assert cells[1:2] == ["open"]
    assert {"5/5", "9.0s"} <= set(cells)
    error_width = len(row) - row.index("0s ago:")
    assert error_width >= (40 if width == 80 else 70)


def test_at_120_columns_the_rates_stay_beside_a_usual_error() -> None:
    refused = "ConnectionRefusedError: [Errno 111] Connection refused"
    failing = stats(
        "postgresql", "open", failure_count=5, retry_after=9.0,
        last_failure=ISO_NOW, last_error=refused, **POLICY_KEYS,
    )  # fmt: skip
    lines = _terminal(circuit_table([SourceReport("/s.db", (failing,), NOW)], NOW), 120)
    header = lines[0]
    (row,) = [line for line in lines if line.startswith("postgresql")]
    assert {"fail%", "slow%"} <= set(header.split())
    assert {"62%", "5.0%"} <= set(row.split())
    assert refused in row
