"""The test servers themselves: they answer when handed out, stop for real, come back."""

from __future__ import annotations

import socket

import pytest

from tests.servers import (
    PostgresServer,
    RedisServer,
    ServerStartError,
    SilentServer,
    redis_reply_to_ping,
)

pytestmark = pytest.mark.slow


def _connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_redis_answers_pong_then_refuses_when_stopped_then_returns_on_same_port(
    redis_server: RedisServer,
) -> None:
    port = redis_server.port
    assert redis_server.ping() == "+PONG"
    redis_server.stop()
    assert _connect_refused(port)
    redis_server.start()
    assert redis_server.port == port
    assert redis_server.ping() == "+PONG"


def test_redis_with_password_rejects_ping_without_auth() -> None:
    with RedisServer(password="s3cret") as server:
        assert server.ping() == "+PONG"
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        assert redis_reply_to_ping(server.port).startswith("-NOAUTH")


def test_redis_start_failure_is_a_clear_bounded_error() -> None:
    server = RedisServer(extra_args=["--no-such-directive", "1"], start_timeout=5)
    try:
        with pytest.raises(ServerStartError, match="exited with code"):
            server.start()
    finally:
        server.close()


def test_postgres_accepts_password_and_restarts_on_same_port(postgres: PostgresServer) -> None:
    import psycopg

    with psycopg.connect(postgres.dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    port = postgres.port
    postgres.stop()
    assert _connect_refused(port)
    postgres.start()
    with psycopg.connect(postgres.dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_postgres_rejects_wrong_password(postgres: PostgresServer) -> None:
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.url_with_password("wrong"), connect_timeout=5)


def test_silent_server_accepts_and_never_answers(silent: SilentServer) -> None:
    with socket.create_connection((silent.host, silent.port), timeout=1) as conn:
        conn.settimeout(0.2)
        with pytest.raises(TimeoutError):
            conn.recv(1)


def test_a_port_taken_before_the_first_start_is_replaced_but_an_explicit_one_is_not() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        server = RedisServer()
        server.port = taken  # as if another process grabbed the port free_port() reported
        with server:
            assert server.port != taken
            assert server.ping() == "+PONG"
        explicit = RedisServer(port=taken, start_timeout=5)
        try:
            with pytest.raises(ServerStartError, match=f"port {taken} exited"):
                explicit.start()
        finally:
            explicit.close()
