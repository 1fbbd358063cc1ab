"""Remote health endpoints that lie: a body dripped slowly, a huge body, a gzip bomb.

Every remote read (`watch --url`, `reset --url`, `fetch_health`) has a total deadline and a cap
on the decoded size; none may hold `watch` or grow the process by the body's size.
"""

from __future__ import annotations

import gzip
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from typer.testing import CliRunner

from cbctl.cli import app
from cbctl.errors import DependencyError
from cbctl.fleet import MAX_RESPONSE_BYTES, fetch_health, report_from_url

runner = CliRunner()
pytestmark = pytest.mark.slow

Behaviour = Callable[[socket.socket], None]


@pytest.fixture
def endpoint() -> Iterator[Callable[[Behaviour], str]]:
    """A raw loopback server; each test says how it answers (after reading the request)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    behaviour: list[Behaviour] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return

            def handle(conn: socket.socket = conn) -> None:
                with conn:
                    try:
                        conn.recv(65536)
                        behaviour[-1](conn)
                    except OSError:
                        pass

            threading.Thread(target=handle, daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def url_for(answer: Behaviour) -> str:
        behaviour.append(answer)
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    try:
        yield url_for
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _head(length: int, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
        f"{extra}\r\n"
    ).encode()


def test_a_body_dripped_slowly_ends_at_the_deadline(endpoint: Callable[[Behaviour], str]) -> None:
    body = b'{"status": "ok", "circuits": {}}'

    def drip(conn: socket.socket) -> None:
        conn.sendall(_head(len(body)))
        for byte in body:
            conn.sendall(bytes([byte]))
            time.sleep(0.2)  # the server is slow on purpose; cbctl must not wait for it

    url = endpoint(drip)
    started = time.monotonic()
    report = report_from_url(url, time.time(), timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert report.error is not None
    assert "no full answer within 0.5s" in report.error


def test_watch_once_is_not_held_by_a_dripping_endpoint(
    endpoint: Callable[[Behaviour], str],
) -> None:
    def drip(conn: socket.socket) -> None:
        conn.sendall(_head(30))
        for _ in range(30):
            conn.sendall(b" ")
            time.sleep(1)

    url = endpoint(drip)
    started = time.monotonic()
    result = runner.invoke(app, ["watch", "--once", "--interval", "0.5", "--url", url])
    assert time.monotonic() - started < 3
    assert result.exit_code == 1  # no source could be read
    assert "unreachable" in result.stdout


def test_a_body_larger_than_the_cap_is_refused_without_reading_it_all(
    endpoint: Callable[[Behaviour], str],
) -> None:
    size = 100 * 1024 * 1024

    def huge(conn: socket.socket) -> None:
        conn.sendall(_head(size))
        chunk = b" " * 65536
        for _ in range(size // len(chunk)):
            conn.sendall(chunk)

    url = endpoint(huge)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DependencyError, match=f"more than {MAX_RESPONSE_BYTES} bytes"):
        fetch_health(url, timeout=5)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 20 * 1024


def test_a_gzip_bomb_stops_at_the_cap(endpoint: Callable[[Behaviour], str]) -> None:
    bomb = gzip.compress(b" " * (200 * 1024 * 1024), compresslevel=9)

    def gzipped(conn: socket.socket) -> None:
        conn.sendall(_head(len(bomb), "Content-Encoding: gzip\r\n") + bomb)

    url = endpoint(gzipped)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DependencyError, match=f"more than {MAX_RESPONSE_BYTES} bytes"):
        fetch_health(url, timeout=5)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 20 * 1024


def test_deeply_nested_json_from_an_endpoint_is_a_clear_error(
    endpoint: Callable[[Behaviour], str],
) -> None:
    body = b"[" * 100_000 + b"]" * 100_000

    def nested(conn: socket.socket) -> None:
        conn.sendall(_head(len(body)) + body)

    url = endpoint(nested)
    result = runner.invoke(app, ["reset", "--all", "--url", url, "--token", "t0ken-x"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "nested too deeply" in result.stderr


def test_a_foreign_circuit_from_an_endpoint_shows_as_unreadable(
    endpoint: Callable[[Behaviour], str],
) -> None:
    body = b'{"circuits": {"a": 1, "b": {"state": "bogus"}, "c": {"state": "open"}}}'

    def answer(conn: socket.socket) -> None:
        conn.sendall(_head(len(body)) + body)

    circuits = {each["name"]: each for each in fetch_health(endpoint(answer))}
    assert circuits["a"]["state"] == "unreadable"
    assert circuits["b"]["state"] == "unreadable"
    assert "'bogus' is not a circuit state" in circuits["b"]["error"]
    assert circuits["c"]["state"] == "open"


def test_policy_figures_from_an_endpoint_are_kept_when_they_make_sense(
    endpoint: Callable[[Behaviour], str],
) -> None:
    body = (
        b'{"circuits": {'
        b'"fine": {"state": "open", "failure_rate": 0.5, "slow_call_rate": null,'
        b' "open_duration": 60},'
        b'"rate": {"state": "closed", "failure_rate": 7},'
        b'"slow": {"state": "closed", "slow_call_rate": "high"},'
        b'"dur": {"state": "open", "open_duration": -1},'
        b'"huge": {"state": "open", "open_duration": 1e999}}}'
    )

    def answer(conn: socket.socket) -> None:
        conn.sendall(_head(len(body)) + body)

    circuits = {each["name"]: each for each in fetch_health(endpoint(answer))}
    fine = circuits["fine"]
    assert (fine["state"], fine["failure_rate"], fine["open_duration"]) == ("open", 0.5, 60)
    assert fine["slow_call_rate"] is None
    assert "failure_rate is 7, not a rate from 0 to 1" in circuits["rate"]["error"]
    assert "slow_call_rate is 'high', not a rate" in circuits["slow"]["error"]
    assert "open_duration is -1, not a number of seconds" in circuits["dur"]["error"]
    assert circuits["huge"]["state"] == "unreadable"
