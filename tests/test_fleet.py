"""Reading circuits from the shared state and from services' health endpoints."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cbctl import CircuitBreakerRegistry, FakeClock
from cbctl.errors import DependencyError, UnknownCircuitError, UsageError
from cbctl.fleet import (
    SourceReport,
    distinct_circuits,
    fetch_health,
    health_url,
    read_store,
    report_from_url,
    reset_in_store,
    reset_remote,
)
from cbctl.health import health_app
from cbctl.serving import HealthServer, running
from cbctl.stores import MemoryStore

TOKEN = "fleet-token"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8092", "http://127.0.0.1:8092/health"),
        ("http://127.0.0.1:8092/", "http://127.0.0.1:8092/health"),
        ("https://svc.example/ops/health", "https://svc.example/ops/health"),
        ("http://svc:81/ops?x=1", "http://svc:81/ops/health"),
    ],
)
def test_health_url_accepts_a_base_or_a_health_url(given: str, expected: str) -> None:
    assert health_url(given) == expected


@pytest.mark.parametrize(
    "bad", ["ftp://host/health", "127.0.0.1:8092", "redis://localhost:6379", "http://", ""]
)
def test_a_url_that_is_not_http_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match=r"http:// or https://|no host"):
        health_url(bad)


def test_a_password_in_a_bad_url_is_not_repeated() -> None:
    with pytest.raises(UsageError) as caught:
        health_url("ftp://admin:hunter2@host/")
    assert "hunter2" not in str(caught.value)


def test_read_store_gives_stats_for_every_circuit_in_name_order() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    registry = CircuitBreakerRegistry(
        default_config={"failure_threshold": 1}, store=store, clock=clock
    )
    with pytest.raises(ZeroDivisionError):
        registry.get("redis").call(lambda: 1 / 0)
    registry.get("postgresql").call(lambda: None)
    clock.advance(10)
    (redis,) = (stats for stats in read_store(store) if stats["name"] == "redis")
    assert [stats["name"] for stats in read_store(store)] == ["postgresql", "redis"]
    assert redis["state"] == "open"
    assert redis["retry_after"] == pytest.approx(20.0)
    assert redis["last_error"] == "ZeroDivisionError: division by zero"
    assert redis["calls"] is None  # the store does not know other processes' call counts


def test_reset_in_store_returns_before_and_after_and_refuses_unknown_names() -> None:
    store = MemoryStore()
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, store=store)
    with pytest.raises(ZeroDivisionError):
        registry.get("redis").call(lambda: 1 / 0)
    (done,) = reset_in_store(store, "redis")
    assert (done.before["state"], done.after["state"]) == ("open", "closed")
    with pytest.raises(UnknownCircuitError, match=r"known: redis"):
        reset_in_store(store, "qdrant")


class _Canned(BaseHTTPRequestHandler):
    body = b""
    content_type = "text/html"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[ThreadingHTTPServer]:
    """A web server that is not a cbctl health endpoint; set `.RequestHandlerClass.body`."""
    handler = type("Handler", (_Canned,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _answer(server: ThreadingHTTPServer, body: bytes, content_type: str) -> str:
    server.RequestHandlerClass.body = body  # type: ignore[attr-defined]
    server.RequestHandlerClass.content_type = content_type  # type: ignore[attr-defined]
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"<html><body>It works!</body></html>", "text/html", "text/html, not cbctl health JSON"),
        (b'{"status": "ok", "circ', "application/json", "not cbctl health JSON"),
        (b'{"status": "ok"}', "application/json", "without a 'circuits' object"),
    ],
)
def test_an_endpoint_that_is_not_cbctl_health_is_a_dependency_error(
    canned: ThreadingHTTPServer, body: bytes, content_type: str, message: str
) -> None:
    url = _answer(canned, body, content_type)
    with pytest.raises(DependencyError, match=message):
        fetch_health(url)
    report = report_from_url(url, now=0.0)
    assert report.circuits == ()
    assert report.error is not None
    assert message in report.error


@pytest.fixture
def closed_port() -> int:
    """A loopback port that was free a moment ago and has nothing listening now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_an_unreachable_endpoint_is_a_dependency_error_and_an_unreachable_report(
    closed_port: int,
) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    with pytest.raises(DependencyError, match="unreachable"):
        fetch_health(url, timeout=1.0)
    assert "unreachable" in (report_from_url(url, now=0.0).error or "")


@pytest.fixture
def service() -> Iterator[tuple[CircuitBreakerRegistry, HealthServer]]:
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 1})
    with pytest.raises(ZeroDivisionError):
        registry.get("redis").call(lambda: 1 / 0)
    registry.get("qdrant")
    with running(health_app(registry, TOKEN, max_age=0)) as server:
        yield registry, server


@pytest.mark.slow
def test_reset_remote_closes_one_or_all_circuits(
    service: tuple[CircuitBreakerRegistry, HealthServer],
) -> None:
    registry, server = service
    (done,) = reset_remote(server.url, "redis", TOKEN)
    assert (done.before["state"], done.after["state"]) == ("open", "closed")
    assert [each.name for each in reset_remote(server.url, None, TOKEN)] == ["qdrant", "redis"]
    assert registry.get("redis").state == "closed"


@pytest.mark.slow
def test_reset_remote_of_an_unknown_circuit_lists_the_services_circuits(
    service: tuple[CircuitBreakerRegistry, HealthServer],
) -> None:
    with pytest.raises(UnknownCircuitError, match=r"known: qdrant, redis"):
        reset_remote(service[1].url, "postgres", TOKEN)


@pytest.mark.slow
def test_reset_remote_with_a_wrong_token_is_a_usage_error_without_the_token(
    service: tuple[CircuitBreakerRegistry, HealthServer],
) -> None:
    with pytest.raises(UsageError, match="HTTP 401") as caught:
        reset_remote(service[1].url, "redis", "not-the-token")
    assert "not-the-token" not in str(caught.value)
    assert service[0].get("redis").state == "open"


# -- one circuit shown by several sources --------------------------------------------------------


def _report(source: str, *circuits: tuple[str, str, str]) -> SourceReport:
    """A source's report of circuits given as (name, state, store)."""
    stats = tuple({"name": name, "state": state, "store": store} for name, state, store in circuits)
    return SourceReport(source, stats, 0.0)


def test_services_on_one_shared_redis_report_its_circuits_once() -> None:
    shared = "redis://10.0.0.9:6379/0"
    found = distinct_circuits(
        [
            _report(
                "http://10.0.0.1:8092/health",
                ("pg", "open", shared),
                ("own", "closed", "memory://"),
            ),
            _report(
                "http://10.0.0.2:8092/health",
                ("pg", "open", shared),
                ("own", "closed", "memory://"),
            ),
        ]
    )
    assert [(each.stats["name"], len(each.sources)) for each in found] == [
        ("pg", 2),
        ("own", 1),
        ("own", 1),
    ], "an in-process circuit is each service's own"


def test_a_state_file_or_loopback_redis_is_the_same_only_on_the_same_machine() -> None:
    for store in ("/var/lib/app/circuits.db", "redis://127.0.0.1:6379/0"):
        same_host = distinct_circuits(
            [
                _report(store if "://" not in store else "local", ("pg", "open", store)),
                _report("http://127.0.0.1:8092/health", ("pg", "open", store)),
                _report("http://localhost:8093/health", ("pg", "open", store)),
            ]
        )
        assert [len(each.sources) for each in same_host] == [3], store
        other_hosts = distinct_circuits(
            [
                _report("http://10.0.0.1:8092/health", ("pg", "open", store)),
                _report("http://10.0.0.2:8092/health", ("pg", "open", store)),
            ]
        )
        assert [len(each.sources) for each in other_hosts] == [1, 1], store


def test_other_names_or_other_stores_are_other_circuits() -> None:
    found = distinct_circuits(
        [
            _report("http://127.0.0.1:1/health", ("pg", "open", "redis://a:6379/0")),
            _report("http://127.0.0.1:2/health", ("pg", "open", "redis://a:6379/1")),
            _report("http://127.0.0.1:3/health", ("redis", "open", "redis://a:6379/0")),
        ]
    )
    assert len(found) == 3


@pytest.mark.slow
def test_watch_counts_a_circuit_two_services_share_once(tmp_path: Path) -> None:
    """Two services on one state file, watched together and with the file itself."""
    from typer.testing import CliRunner

    from cbctl.cli import app
    from cbctl.stores import open_store

    state = str(tmp_path / "circuits.db")
    with open_store(state) as first_store, open_store(state) as second_store:
        first = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, store=first_store)
        second = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, store=second_store)
        with pytest.raises(ZeroDivisionError):
            first.get("postgresql").call(lambda: 1 / 0)
        second.get("postgresql")
        own = CircuitBreakerRegistry()
        own.get("postgresql")
        with (
            running(health_app(first, max_age=0)) as a,
            running(health_app(second, max_age=0)) as b,
            running(health_app(own, max_age=0)) as c,
        ):
            runner = CliRunner()
            shared = runner.invoke(app, ["watch", "--once", "--url", a.url, "--url", b.url])
            assert shared.exit_code == 0, shared.output
            assert "1 circuit (1 shown by several sources, counted once), 1 open" in shared.stdout
            everything = runner.invoke(
                app,
                [
                    "--state",
                    state,
                    "watch",
                    "--once",
                    "--url",
                    a.url,
                    "--url",
                    b.url,
                    "--url",
                    c.url,
                ],
            )
            assert everything.exit_code == 0, everything.output
            assert (
                "2 circuits (1 shown by several sources, counted once), 1 closed, 1 open"
                in everything.stdout
            )
