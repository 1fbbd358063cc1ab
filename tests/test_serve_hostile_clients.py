"""`cbctl serve` (a real process) against slow and lying clients.

A request whose body never comes, headers dripped a byte at a time, a flood of idle
connections, duplicate Authorization and conflicting Content-Length headers, and a bind to
something other than loopback.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CBCTL = [sys.executable, "-c", "from cbctl.cli import main; main()"]
TOKEN = "hostile-token-5e1d"
DEADLINE = 1.0


def _serve(
    state: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int, str]:
    process = subprocess.Popen(
        [*CBCTL, "--state", str(state), "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert process.stderr is not None
    first = process.stderr.readline()
    match = re.search(r":(\d+): /health", first)
    if match is None:
        process.kill()
        raise AssertionError(f"serve did not start: {first!r}")
    return process, int(match.group(1)), first


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    assert process.stderr is not None
    rest = process.stderr.read()
    process.stderr.close()
    return rest


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    """The port of a `cbctl serve` with a 1 s request deadline and room for 4 connections."""
    process, port, _ = _serve(
        tmp_path / "circuits.db",
        "--request-deadline",
        str(DEADLINE),
        "--max-connections",
        "4",
        "--token",
        TOKEN,
    )
    try:
        yield port
    finally:
        _stop(process)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _exchange(port: int, request: bytes) -> bytes:
    with _connect(port) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" in b"".join(chunks):
                break
        return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _health_ok(port: int) -> bool:
    answer = _exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return _status(answer) == 200


def test_a_body_shorter_than_its_content_length_is_cut_off_at_the_deadline(server: int) -> None:
    with _connect(server) as conn:
        conn.sendall(b"POST /circuits/x/reset HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}")
        started = time.monotonic()
        answer = conn.recv(65536)
        waited = time.monotonic() - started
    assert _status(answer) == 408
    assert waited < DEADLINE + 2


def test_headers_dripped_a_byte_at_a_time_are_cut_off_at_the_deadline(server: int) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    started = time.monotonic()
    with _connect(server) as conn:
        try:
            for byte in request:
                conn.sendall(bytes([byte]))
                time.sleep(0.05)  # the client is slow on purpose; the server must not wait
                if time.monotonic() - started > DEADLINE + 3:
                    break
            closed = conn.recv(1) == b""
        except (BrokenPipeError, ConnectionResetError):
            closed = True
    assert closed
    assert time.monotonic() - started < DEADLINE + 3


def test_connections_beyond_the_bound_get_503_and_the_server_stays_up(server: int) -> None:
    idle = [_connect(server) for _ in range(4)]
    try:
        time.sleep(0.2)  # let the server accept all four
        answer = _exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(answer) == 503
    finally:
        for conn in idle:
            conn.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if _health_ok(server):
                return
        except (OSError, IndexError):
            pass
        time.sleep(0.05)
    raise AssertionError("the server did not serve again after the idle connections left")


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (
            f"Authorization: Bearer {TOKEN}\r\nAuthorization: Bearer other\r\n",
            b"more than one Authorization header",
        ),
        ("Content-Length: 2\r\nContent-Length: 20\r\n", b"conflicting Content-Length"),
        ("Content-Length: +2\r\n", b"not a whole number"),
    ],
)
def test_ambiguous_headers_are_400(server: int, headers: str, message: bytes) -> None:
    request = f"POST /circuits/x/reset HTTP/1.1\r\nHost: x\r\n{headers}\r\n{{}}".encode()
    answer = _exchange(server, request)
    assert _status(answer) == 400
    assert message in answer


@pytest.mark.parametrize("host", ["", "0.0.0.0"])
def test_binding_beyond_loopback_warns_that_resets_need_the_token(
    tmp_path: Path, host: str
) -> None:
    process, _, _ = _serve(tmp_path / "circuits.db", "--host", host, "--token", TOKEN)
    try:
        assert process.stderr is not None
        warning = process.stderr.readline()
    finally:
        _stop(process)
    assert warning.startswith("cbctl: warning: listening on every interface")
    assert "resets need the token" in warning


def test_loopback_binds_do_not_warn(tmp_path: Path) -> None:
    process, _, _ = _serve(tmp_path / "circuits.db", "--host", "127.0.0.1")
    rest = _stop(process)
    assert "warning" not in rest
