"""`cbctl events`: the journal of the state file or of a service, printed and followed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cbctl import CircuitBreakerRegistry
from cbctl.cli import app
from cbctl.health import health_app
from cbctl.serving import running
from cbctl.stores import open_store

runner = CliRunner()


def _refused() -> None:
    raise ConnectionError("connection refused")


def trip(registry: CircuitBreakerRegistry, name: str) -> None:
    breaker = registry.get(name)
    for _ in range(breaker.failure_threshold):
        with pytest.raises(ConnectionError):
            breaker.call(_refused)


@pytest.fixture
def state(tmp_path: Path) -> str:
    """A state file where redis opened and was reset, and postgresql opened."""
    path = str(tmp_path / "circuits.db")
    store = open_store(path)
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 2}, store=store)
    registry.get("qdrant").call(lambda: None)
    trip(registry, "redis")
    registry.reset("redis")
    trip(registry, "postgresql")
    store.close()
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_events_lists_the_state_files_transitions_oldest_first(state: str) -> None:
    code, out, _ = run("--state", state, "events")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    assert (
        "redis  closed -> open  failures=2  error=ConnectionError: connection refused" in lines[0]
    )
    assert "redis  open -> closed" in lines[1]
    assert "postgresql  closed -> open" in lines[2]
    assert f"source={os.getpid()}@" in lines[0]


def test_events_json_is_one_object_per_line_and_a_name_keeps_one_circuit(state: str) -> None:
    code, out, _ = run("--state", state, "events", "redis", "--json")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["circuit"], r["previous"], r["state"]) for r in records] == [
        ("redis", "closed", "open"),
        ("redis", "open", "closed"),
    ]
    assert set(records[0]) == {
        "id",
        "circuit",
        "at",
        "previous",
        "state",
        "failures",
        "error",
        "source",
    }


def test_events_of_a_circuit_the_state_does_not_have_is_exit_2_listing_the_known(
    state: str,
) -> None:
    code, out, err = run("--state", state, "events", "no-such-circuit")
    assert code == 2
    assert out == ""
    assert (
        err.strip() == "cbctl: unknown circuit 'no-such-circuit' (known: postgresql, qdrant, redis)"
    )
    code, _, _ = run("--state", state, "events", "qdrant")
    assert code == 0, "a known circuit with no transitions yet is not an error"


@pytest.mark.parametrize("interval", ["nan", "inf", "1e308", "0", "-1", "soon"])
def test_events_follow_with_an_interval_out_of_range_is_one_line_exit_2(
    state: str, interval: str
) -> None:
    code, out, err = run("--state", state, "events", "--follow", "--interval", interval)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("cbctl: --interval must be")


def test_events_from_a_services_health_endpoint() -> None:
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 1})
    trip(registry, "qdrant")
    with running(health_app(registry)) as server:
        code, out, _ = run("events", "--url", server.url, "--json")
        assert code == 0
        assert [json.loads(line)["state"] for line in out.splitlines()] == ["open"]
        code, _, err = run("events", "redis", "--url", server.url)
        assert code == 2
        assert "known: qdrant" in err


@pytest.mark.slow
def test_events_follow_prints_a_new_transition_as_it_happens_and_ctrl_c_ends_it(
    state: str,
) -> None:
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cbctl",
            "--state",
            state,
            "events",
            "--follow",
            "--json",
            "--interval",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        seen = [json.loads(follower.stdout.readline()) for _ in range(3)]
        assert [r["circuit"] for r in seen] == ["redis", "redis", "postgresql"]
        store = open_store(state)
        store.reset("postgresql")
        store.close()
        fresh = json.loads(follower.stdout.readline())
        assert (fresh["circuit"], fresh["previous"], fresh["state"]) == (
            "postgresql",
            "open",
            "closed",
        )
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


@pytest.mark.parametrize("command", ["events", "proxy", "fault"])
def test_the_journal_and_proxy_commands_have_help_with_an_example(command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0
    assert f"cbctl {command} " in out.split("Example", 1)[1]
