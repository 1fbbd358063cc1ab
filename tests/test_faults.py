"""The fault proxy against real upstreams: a loopback echo server, Redis and PostgreSQL.

Each test waits only as long as the fault it proves needs (a blackhole read timeout, a latency,
a few flapping periods), and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cbctl.errors import UsageError
from cbctl.faults import AsyncFaultProxy, FaultProxy, Mode
from tests.servers import LOOPBACK, PostgresServer, RedisServer

SHORT_WAIT = 0.2  # seconds a client waits for an answer that must not come
NO_RETRY = Retry(NoBackoff(), retries=0)  # redis-py tries once: we test the fault, not retries


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    """A real upstream that echoes every byte and counts the connections it accepted."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _EchoHandler)
        self.connections = 0

    def process_request(self, request: object, client_address: object) -> None:
        self.connections += 1  # in the accepting thread, so in connection order
        super().process_request(request, client_address)  # type: ignore[arg-type]

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(LOOPBACK, echo.port) as running:
        yield running


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection((LOOPBACK, proxy.port), timeout=timeout)


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        chunk = sock.recv(size - len(received))
        if not chunk:
            break
        received += chunk
    return bytes(received)


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    return receive_exactly(sock, len(payload))


def was_cut(sock: socket.socket) -> bool:
    """True when the peer closed or reset the connection (a timeout raises instead)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def answers(proxy: FaultProxy) -> bool:
    """One fresh connection and round trip through the proxy: did it work?"""
    try:
        with connect(proxy, timeout=1.0) as sock:
            return roundtrip(sock) == b"ping"
    except (ConnectionRefusedError, ConnectionResetError):
        return False


def test_up_passes_bytes_both_ways_intact(proxy: FaultProxy) -> None:
    payload = os.urandom(1 << 20)  # bigger than socket buffers: backpressure on both sides
    with connect(proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        echoed = receive_exactly(sock, len(payload))
        sender.join(5)
    assert echoed == payload
    stats = proxy.stats()
    assert (stats.bytes_to_upstream, stats.bytes_to_client) == (len(payload), len(payload))
    assert (stats.accepted, stats.upstream_connections) == (1, 1)


def test_end_of_stream_passes_through_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"request")
        sock.shutdown(socket.SHUT_WR)
        assert receive_exactly(sock, 100) == b"request"  # the echo saw EOF and closed


def test_down_refuses_new_connections(proxy: FaultProxy) -> None:
    proxy.set_mode("down")
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    assert proxy.stats().phase is Mode.DOWN


def test_down_cuts_open_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.set_mode(Mode.DOWN)
        assert was_cut(sock)
    stats = proxy.stats()
    assert (stats.cut, stats.active) == (1, 0)


def test_up_after_down_serves_again_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    proxy.set_mode("down")
    proxy.set_mode("up")
    assert proxy.port == port
    assert answers(proxy)


def test_blackhole_accepts_and_never_answers(proxy: FaultProxy) -> None:
    proxy.set_mode("blackhole")
    with connect(proxy, timeout=SHORT_WAIT) as sock:
        sock.sendall(b"ping")
        with pytest.raises(TimeoutError):
            sock.recv(1)
    stats = proxy.stats()
    assert (stats.accepted, stats.upstream_connections, stats.bytes_to_upstream) == (1, 0, 0)


def test_blackhole_holds_open_connections_until_up(proxy: FaultProxy) -> None:
    with connect(proxy, timeout=SHORT_WAIT) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.set_mode("blackhole")
        sock.sendall(b"held")
        with pytest.raises(TimeoutError):
            sock.recv(1)
        proxy.set_mode("up")
        sock.settimeout(2.0)
        assert receive_exactly(sock, 4) == b"held"


def test_latency_delays_every_reply_by_at_least_the_latency(proxy: FaultProxy) -> None:
    proxy.set_latency(80)
    with connect(proxy) as sock:
        for _ in range(2):
            started = time.perf_counter()
            assert roundtrip(sock) == b"ping"
            assert time.perf_counter() - started >= 0.080
    stats = proxy.stats()
    assert (stats.mode, stats.latency_ms) == (Mode.LATENCY, 80)


def test_flapping_goes_down_at_once(proxy: FaultProxy) -> None:
    proxy.set_flapping(period=30)
    assert not answers(proxy)
    assert (proxy.stats().mode, proxy.stats().phase) == (Mode.FLAPPING, Mode.DOWN)


def test_flapping_alternates_between_down_and_up(proxy: FaultProxy) -> None:
    proxy.set_flapping(period=0.1)
    seen: list[bool] = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and _changes(seen) < 4:
        seen.append(answers(proxy))
        time.sleep(0.01)
    assert _changes(seen) >= 4, seen


def _changes(seen: list[bool]) -> int:
    return sum(before != after for before, after in itertools.pairwise(seen))


def test_setting_a_mode_stops_flapping(proxy: FaultProxy) -> None:
    proxy.set_flapping(period=0.05)
    proxy.set_mode("up")
    deadline = time.monotonic() + 0.3  # six flapping periods
    while time.monotonic() < deadline:
        assert answers(proxy)
        time.sleep(0.01)


def test_no_upstream_connection_is_made_while_down_or_blackholed(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    proxy.set_mode("down")
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.set_mode("blackhole")
    with connect(proxy, timeout=SHORT_WAIT) as sock:
        sock.sendall(b"ping")
        with pytest.raises(TimeoutError):
            sock.recv(1)
    proxy.set_mode("up")
    assert answers(proxy)
    # The echo server accepts in order: had an earlier attempt reached it, it would count 2.
    assert echo.connections == 1
    stats = proxy.stats()
    assert (stats.accepted, stats.upstream_connections) == (2, 1)


def test_unreachable_upstream_ends_the_client_connection() -> None:
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind((LOOPBACK, 0))
        upstream_port = bound_not_listening.getsockname()[1]
        with FaultProxy(LOOPBACK, upstream_port) as proxy, connect(proxy) as sock:
            assert was_cut(sock)
    assert (proxy.stats().accepted, proxy.stats().upstream_connections) == (1, 0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FaultProxy(LOOPBACK, 0), "upstream port"),
        (lambda: FaultProxy(LOOPBACK, 65536), "upstream port"),
        (lambda: FaultProxy(LOOPBACK, 5432, listen_port=-1), "listen port"),
        (lambda: FaultProxy(LOOPBACK, 5432).port, "no port until it is started"),
        (lambda: FaultProxy(LOOPBACK, 5432).set_mode("down"), "not running"),
    ],
)
def test_bad_construction_or_use_raises_usage_error(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        make()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda proxy: proxy.set_latency(-1), "latency_ms"),
        (lambda proxy: proxy.set_latency(float("nan")), "latency_ms"),
        (lambda proxy: proxy.set_flapping(period=0), "flapping period"),
        (lambda proxy: proxy.set_flapping(period=-0.5), "flapping period"),
        (lambda proxy: proxy.set_flapping(period=1e308), "flapping period must be at most"),
        (lambda proxy: proxy.set_latency(1e308), "latency_ms must be at most"),
        (lambda proxy: proxy.set_mode("sideways"), "unknown fault mode 'sideways'"),
    ],
)
def test_bad_mode_changes_raise_usage_error_and_change_nothing(
    proxy: FaultProxy, change: Callable[[FaultProxy], None], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        change(proxy)
    assert proxy.stats().mode is Mode.UP
    assert answers(proxy)


def _proxy_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "cbctl-fault-proxy"]


def test_close_cuts_connections_stops_the_thread_and_can_be_repeated(echo: EchoServer) -> None:
    proxy = FaultProxy(LOOPBACK, echo.port).start()
    assert len(_proxy_threads()) == 1
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.close()
        assert was_cut(sock)
    proxy.close()
    assert _proxy_threads() == []
    assert proxy.stats().active == 0
    with pytest.raises(UsageError, match="closed"):
        proxy.start()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open fds via /proc")
def test_close_releases_every_socket(echo: EchoServer) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    with FaultProxy(LOOPBACK, echo.port) as proxy, connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.set_mode("blackhole")
        with connect(proxy) as held:
            held.sendall(b"swallowed")
            proxy.close()
    deadline = time.monotonic() + 2.0  # the echo server's handler threads close their side
    while open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open_fds() <= before  # other tests' servers may still be closing sockets


def test_asyncio_core_works_in_async_with(echo: EchoServer) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        async with AsyncFaultProxy(LOOPBACK, echo.port) as proxy:
            reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
            writer.write(b"ping")
            echoed = await asyncio.wait_for(reader.readexactly(4), 2.0)
            await proxy.set_mode("down")
            after_cut = await asyncio.wait_for(reader.read(), 2.0)
            writer.close()
            assert proxy.stats().cut == 1
        return echoed, after_cut

    assert asyncio.run(scenario()) == (b"ping", b"")


@pytest.mark.slow
def test_redis_client_works_through_the_proxy_and_fails_fast_when_down(
    redis_server: RedisServer,
) -> None:

    with FaultProxy(LOOPBACK, redis_server.port) as proxy:
        client = redis.Redis(host=LOOPBACK, port=proxy.port, socket_timeout=2.0, retry=NO_RETRY)
        try:
            assert client.set("fault", "proxy")
            assert client.get("fault") == b"proxy"
            proxy.set_mode("down")
            started = time.monotonic()
            with pytest.raises(redis.ConnectionError):
                client.get("fault")
            assert time.monotonic() - started < 1.0  # refused, not timed out
            proxy.set_mode("up")
            assert client.get("fault") == b"proxy"
        finally:
            client.close()
        assert proxy.stats().upstream_connections >= 2


@pytest.mark.slow
def test_redis_client_times_out_through_a_blackhole(redis_server: RedisServer) -> None:

    with FaultProxy(LOOPBACK, redis_server.port) as proxy:
        proxy.set_mode("blackhole")
        client = redis.Redis(
            host=LOOPBACK, port=proxy.port, socket_timeout=SHORT_WAIT, retry=NO_RETRY
        )
        try:
            with pytest.raises(redis.TimeoutError):
                client.ping()
        finally:
            client.close()
        assert proxy.stats().upstream_connections == 0


@pytest.mark.slow
def test_postgres_client_works_through_the_proxy(postgres: PostgresServer) -> None:
    with FaultProxy(LOOPBACK, postgres.port) as proxy:
        url = postgres.url.replace(f":{postgres.port}/", f":{proxy.port}/")
        with psycopg.connect(url, connect_timeout=5) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            proxy.set_mode("down")
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
        assert proxy.stats().upstream_connections == 1
