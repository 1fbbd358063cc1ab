"""`cbctl status`, `watch`, `reset`: through Typer's runner, on a real state file."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cbctl import CircuitBreakerRegistry
from cbctl.cli import app
from cbctl.health import health_app
from cbctl.serving import HealthServer, running
from cbctl.stores import open_store
from tests.servers import RedisServer

runner = CliRunner()
TOKEN = "cli-token"


@pytest.fixture
def state(tmp_path: Path) -> str:
    """A state file with qdrant closed, redis open and postgresql one failure short of open."""
    path = str(tmp_path / "circuits.db")
    store = open_store(path)
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 2}, store=store)
    registry.get("qdrant").call(lambda: None)
    for name, failures in (("redis", 2), ("postgresql", 1)):
        for _ in range(failures):
            with pytest.raises(ConnectionError):
                registry.get(name).call(_refused)
    store.close()
    return path


def _refused() -> None:
    raise ConnectionError("connection refused")


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("command", ["status", "watch", "reset", "serve"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0
    example = out.split("Example:", 1)[1].split("\n\n")[0]
    assert f"cbctl {command}" in example or f" {command} --" in example


def test_status_shows_every_circuit_of_the_state(state: str) -> None:
    code, out, _ = run("--state", state, "status")
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["redis"][1:4:2] == ["open", "2/2"]
    assert lines["postgresql"][1:4:2] == ["closed", "1/2"]
    assert re.fullmatch(r"\d+s", lines["redis"][2])  # time in state, seconds ago
    assert lines["qdrant"][1] == "closed"
    assert "3 circuits, 2 closed, 1 open" in out
    assert "\x1b[" not in out


def test_status_json_is_a_list_of_stats_with_retry_after(state: str) -> None:
    code, out, err = run("--state", state, "status", "--json")
    assert code == 0
    assert err == ""
    circuits = json.loads(out)
    assert [each["name"] for each in circuits] == ["postgresql", "qdrant", "redis"]
    redis = circuits[2]
    assert redis["state"] == "open"
    assert 0 < redis["retry_after"] <= 30
    assert redis["last_error"] == "ConnectionError: connection refused"
    assert {"failure_count", "success_count", "last_failure"} <= set(redis)


def test_status_of_an_unreadable_state_is_one_line_and_exit_2(tmp_path: Path) -> None:
    garbage = tmp_path / "circuits.db"
    garbage.write_bytes(b"this is not a database" * 100)
    code, out, err = run("--state", str(garbage), "status")
    assert code == 2
    assert out == ""
    assert err.startswith("cbctl: ")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_reset_closes_a_circuit_and_prints_before_and_after(state: str) -> None:
    code, out, _ = run("--state", state, "reset", "redis")
    assert code == 0
    assert line_of(out, "redis") == [
        "redis",
        "open",
        "failures",
        "2/2",
        "closed",
        "failures",
        "0/2",
    ]
    _, after, _ = run("--state", state, "status", "--json")
    assert {each["name"]: each["state"] for each in json.loads(after)}["redis"] == "closed"


def line_of(output: str, name: str) -> list[str]:
    (line,) = [line.split() for line in output.splitlines() if line.startswith(name)]
    return line


def test_reset_all_closes_every_circuit(state: str) -> None:
    code, out, _ = run("--state", state, "reset", "--all")
    assert code == 0
    assert [line_of(out, name)[-3] for name in ("postgresql", "qdrant", "redis")] == ["closed"] * 3
    _, after, _ = run("--state", state, "status", "--json")
    assert {each["failure_count"] for each in json.loads(after)} == {0}


def test_reset_of_an_unknown_circuit_is_exit_2_listing_the_known_ones(state: str) -> None:
    code, out, err = run("--state", state, "reset", "nosuch")
    assert code == 2
    assert out == ""
    assert err == "cbctl: unknown circuit 'nosuch' (known: postgresql, qdrant, redis)\n"


def test_reset_of_a_configured_circuit_with_no_recorded_state_is_a_no_op_that_says_so(
    state: str,
) -> None:
    code, out, err = run("--state", state, "reset", "llamacpp")
    assert code == 0
    assert out == ""
    assert err.startswith("cbctl: llamacpp has no recorded state in ")
    assert "nothing to reset" in err
    _, after, _ = run("--state", state, "status", "--json")
    assert "llamacpp" not in [each["name"] for each in json.loads(after)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give a circuit NAME or --all"),
        (("redis", "--all"), "give a circuit NAME or --all"),
        (("redis", "--url", "http://127.0.0.1:1"), "--url needs --token"),
        (("redis", "--url", "file:///etc/passwd", "--token", "t"), "http:// or https://"),
    ],
)
def test_reset_usage_errors_are_exit_2(
    state: str, args: tuple[str, ...], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CBCTL_TOKEN", raising=False)
    code, _, err = run("--state", state, "reset", *args)
    assert code == 2
    assert message in err


def test_watch_once_prints_one_snapshot_of_the_state(state: str) -> None:
    code, out, _ = run("--state", state, "watch", "--once")
    assert code == 0
    assert line_of(out, "redis")[1] == "open"
    assert out.count("3 circuits") == 1


@pytest.mark.parametrize(
    ("interval", "message"),
    [("abc", "abc"), ("-1", "0.1"), ("0", "0.1"), ("nan", "0.1"), ("1e308", "86400")],
)
def test_watch_refuses_a_bad_interval_with_exit_2_on_one_line(
    state: str, interval: str, message: str
) -> None:
    code, _, err = run("--state", state, "watch", "--interval", interval, "--once")
    assert code == 2
    assert err.startswith("cbctl: --interval must be ")
    assert err.count("\n") == 1
    assert "--interval" in err
    assert message in err


def test_watch_refuses_a_url_that_is_not_http(state: str) -> None:
    code, _, err = run("watch", "--once", "--url", "tcp://127.0.0.1:6379")
    assert code == 2
    assert err == (
        "cbctl: --url: a health endpoint needs a http:// or https:// URL, "
        "got 'tcp://127.0.0.1:6379'\n"
    )


@pytest.fixture
def service() -> Iterator[tuple[CircuitBreakerRegistry, HealthServer]]:
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 1})
    with pytest.raises(ConnectionError):
        registry.get("llamacpp").call(_refused)
    registry.get("qdrant").call(lambda: None)
    with running(health_app(registry, TOKEN, max_age=0)) as server:
        yield registry, server


@pytest.mark.slow
def test_watch_once_shows_the_state_and_endpoints_with_a_dead_one_as_unreachable(
    state: str, service: tuple[CircuitBreakerRegistry, HealthServer]
) -> None:
    server = service[1]
    with running(health_app(CircuitBreakerRegistry())) as gone:
        dead = gone.url
    code, out, _ = run("--state", state, "watch", "--once", "--url", server.url, "--url", dead)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"cbctl watch once: {state}, {server.url}/health, {dead}/health")
    assert re.search(r"\(refreshed \d\d:\d\d:\d\d\)$", lines[0])
    groups = [line for line in lines if line.endswith("/health:") or line.endswith(".db:")]
    assert groups == [f"{state}:", f"{server.url}/health:", f"{dead}/health:"]
    assert line_of(out, "llamacpp")[1] == "open"
    row = {line.split()[0]: number for number, line in enumerate(lines) if line.strip()}
    assert row["redis"] < lines.index(groups[1]) < row["llamacpp"] < lines.index(groups[2])
    assert "unreachable" in line_of(out, "-")
    assert "5 circuits, 3 closed, 2 open, 1 source unreachable" in out


@pytest.mark.slow
def test_reset_through_an_endpoint_with_the_token_from_the_environment(
    service: tuple[CircuitBreakerRegistry, HealthServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, server = service
    monkeypatch.setenv("CBCTL_TOKEN", TOKEN)
    code, out, _ = run("reset", "llamacpp", "--url", server.url)
    assert code == 0
    assert line_of(out, "llamacpp")[1:5] == ["open", "failures", "1/1", "closed"]
    assert registry.get("llamacpp").state == "closed"


@pytest.mark.slow
def test_reset_through_an_endpoint_of_an_unknown_circuit_lists_the_known_ones(
    service: tuple[CircuitBreakerRegistry, HealthServer],
) -> None:
    code, _, err = run("reset", "redis", "--url", service[1].url, "--token", TOKEN)
    assert code == 2
    assert err == "cbctl: unknown circuit 'redis' (known: llamacpp, qdrant)\n"


@pytest.mark.slow
def test_reset_through_an_endpoint_with_a_wrong_token_is_exit_2(
    service: tuple[CircuitBreakerRegistry, HealthServer],
) -> None:
    code, _, err = run("reset", "llamacpp", "--url", service[1].url, "--token", "nope")
    assert code == 2
    assert "HTTP 401" in err
    assert "nope" not in err


@pytest.mark.slow
def test_status_and_reset_work_on_a_redis_state(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url)
    try:
        registry = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, store=store)
        with pytest.raises(ConnectionError):
            registry.get("qdrant").call(_refused)
    finally:
        store.close()
    code, out, _ = run("--state", redis_server.url, "status", "--json")
    assert code == 0
    assert [(c["name"], c["state"]) for c in json.loads(out)] == [("qdrant", "open")]
    code, out, _ = run("--state", redis_server.url, "reset", "qdrant")
    assert code == 0
    assert line_of(out, "qdrant")[1:5] == ["open", "failures", "1/1", "closed"]


@pytest.fixture
def html_site() -> Iterator[str]:
    """A web server that answers every request with an HTML page (not a health endpoint)."""

    class Page(BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.slow
def test_reset_through_an_html_site_is_exit_1_saying_what_came_back(html_site: str) -> None:
    code, _, err = run("reset", "redis", "--url", html_site, "--token", TOKEN)
    assert code == 1
    assert err == (f"cbctl: {html_site} answered HTTP 200 with text/html, not cbctl health JSON\n")


@pytest.mark.slow
def test_watch_once_shows_an_html_site_as_an_unreachable_row(html_site: str) -> None:
    code, out, _ = run("watch", "--once", "--url", html_site)
    assert code == 1  # every source unreachable
    assert "unreachable" in line_of(out, "-")
    assert "text/html, not cbctl health JSON" in out


def test_status_json_carries_the_open_duration_of_a_circuit_that_backs_off(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "circuits.db")
    with open_store(path) as store:
        registry = CircuitBreakerRegistry(
            default_config={"failure_threshold": 1, "backoff_factor": 2.0}, store=store
        )
        with pytest.raises(ConnectionError):
            registry.get("llm").call(_refused)
        registry.get("plain", backoff_factor=1.0).call(lambda: None)
    code, out, _ = run("--state", path, "status", "--json")
    assert code == 0
    shown = {entry["name"]: entry for entry in json.loads(out)}
    assert shown["llm"]["open_duration"] == 30.0
    assert "open_duration" not in shown["plain"]


@pytest.mark.slow
def test_watch_and_health_show_the_policy_figures_a_service_reports() -> None:
    from tests.test_metrics import PolicyRegistry

    registry = PolicyRegistry({"qdrant": {"failure_rate": 0.62, "open_duration": 90.0}})
    registry.get("qdrant")
    registry.get("redis")
    with running(health_app(registry, max_age=0)) as server:
        code, out, _ = run("watch", "--once", "--url", server.url)
        health = httpx.get(f"{server.url}/health").json()
        metrics = httpx.get(f"{server.url}/metrics").text
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("circuit"))
    assert "fail%" in header
    assert "open dur" in header
    assert "slow%" not in header
    assert {"62%", "1m30s"} <= set(line_of(out, "qdrant"))
    assert health["circuits"]["qdrant"]["failure_rate"] == 0.62
    assert "failure_rate" not in health["circuits"]["redis"]
    assert 'cbctl_circuit_failure_rate{circuit="qdrant"} 0.62' in metrics
    assert 'cbctl_circuit_open_duration_seconds{circuit="qdrant"} 90.0' in metrics
    assert 'cbctl_circuit_failure_rate{circuit="redis"}' not in metrics


@pytest.mark.slow
def test_watch_health_and_metrics_show_the_window_rates_real_breakers_count() -> None:
    registry = CircuitBreakerRegistry(
        default_config={
            "failure_threshold": 100,
            "failure_rate_threshold": 0.5,
            "window_calls": 8,
            "minimum_calls": 4,
            "slow_call_duration": 60.0,
            "slow_call_rate_threshold": 0.9,
        }
    )
    qdrant = registry.get("qdrant")
    for index in range(8):
        if index % 4 == 0:
            with pytest.raises(ConnectionError):
                qdrant.call(_refused)
        else:
            qdrant.call(lambda: None)
    registry.get("redis").call(lambda: None)  # 1 call, minimum 4: no rate yet
    registry.get("plain", failure_rate_threshold=None, window_calls=None, minimum_calls=None,
                 slow_call_duration=None, slow_call_rate_threshold=None)  # fmt: skip
    with running(health_app(registry, max_age=0)) as server:
        code, out, _ = run("watch", "--once", "--url", server.url)
        health = httpx.get(f"{server.url}/health").json()
        metrics = httpx.get(f"{server.url}/metrics").text
    assert code == 0
    assert {"25%", "0%"} <= set(line_of(out, "qdrant"))
    shown = health["circuits"]
    assert (shown["qdrant"]["failure_rate"], shown["qdrant"]["slow_call_rate"]) == (0.25, 0.0)
    assert shown["redis"]["failure_rate"] is None
    assert "failure_rate" not in shown["plain"]
    assert 'cbctl_circuit_failure_rate{circuit="qdrant"} 0.25' in metrics
    assert 'cbctl_circuit_slow_call_rate{circuit="qdrant"} 0.0' in metrics
    assert 'cbctl_circuit_failure_rate{circuit="redis"}' not in metrics
