"""What the fault proxy costs when it is up: added latency per small request, and throughput.

    python benchmarks/bench_proxy.py [--requests 5000] [--megabytes 512]

The upstreams (echo, source, sink) run in a child process, so they do not share the GIL with
the proxy; the proxy runs as `cbctl simulate` runs it: `FaultProxy` in a thread of the client's
process. Direct and proxied runs alternate within one run, on the same machine state.
Targets: median added latency <= 1 ms; throughput >= 100 MB/s (exit code 1 if one is missed).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from cbctl.faults import FaultProxy

LOOPBACK = "127.0.0.1"
MESSAGE = b"x" * 64
BLOCK = 1 << 20
SIZE = 8  # bytes of a length prefix
LATENCY_TARGET_MS = 1.0
THROUGHPUT_TARGET_MB_S = 100.0


# --- upstreams (child process) ------------------------------------------------------------


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def _source(conn: socket.socket) -> None:
    """Send as many bytes as the client asks for (an 8-byte size), then close."""
    remaining = int.from_bytes(_receive_exactly(conn, SIZE), "big")
    block = bytes(BLOCK)
    while remaining > 0:
        conn.sendall(block[: min(remaining, BLOCK)])
        remaining -= BLOCK


def _sink(conn: socket.socket) -> None:
    """Read until end of stream, then answer how many bytes arrived."""
    received, buffer = 0, bytearray(BLOCK)
    while count := conn.recv_into(buffer):
        received += count
    conn.sendall(received.to_bytes(SIZE, "big"))


def _serve_forever(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def run(conn: socket.socket = conn) -> None:
            with conn:
                handle(conn)

        threading.Thread(target=run, daemon=True).start()


def run_upstreams() -> None:
    """Child process: print the three ports, serve until stdin closes."""
    ports = []
    for handle in (_echo, _source, _sink):
        listener = socket.create_server((LOOPBACK, 0))
        ports.append(listener.getsockname()[1])
        threading.Thread(target=_serve_forever, args=(listener, handle), daemon=True).start()
    print(*ports, flush=True)
    sys.stdin.read()


# --- client (this process) ----------------------------------------------------------------


def _receive_exactly(conn: socket.socket, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        chunk = conn.recv(size - len(received))
        if not chunk:
            raise ConnectionError("upstream closed early")
        received += chunk
    return bytes(received)


def _connect(port: int) -> socket.socket:
    conn = socket.create_connection((LOOPBACK, port), timeout=30)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def round_trips_ms(port: int, count: int) -> list[float]:
    """Request/response times of `count` small echoes on one connection."""
    times = []
    with _connect(port) as conn:
        for _ in range(count):
            started = time.perf_counter()
            conn.sendall(MESSAGE)
            _receive_exactly(conn, len(MESSAGE))
            times.append((time.perf_counter() - started) * 1000)
    return times


def download_mb_s(port: int, size: int) -> float:
    """Throughput upstream -> client: the source sends `size` bytes."""
    buffer = bytearray(BLOCK)
    with _connect(port) as conn:
        started = time.perf_counter()
        conn.sendall(size.to_bytes(SIZE, "big"))
        received = 0
        while count := conn.recv_into(buffer):
            received += count
        elapsed = time.perf_counter() - started
    assert received == size, (received, size)
    return size / elapsed / 1e6


def upload_mb_s(port: int, size: int) -> float:
    """Throughput client -> upstream: the sink counts what arrived, after end of stream."""
    block = bytes(BLOCK)
    with _connect(port) as conn:
        started = time.perf_counter()
        for _ in range(size // BLOCK):
            conn.sendall(block)
        conn.shutdown(socket.SHUT_WR)
        received = int.from_bytes(_receive_exactly(conn, SIZE), "big")
        elapsed = time.perf_counter() - started
    assert received == size, (received, size)
    return size / elapsed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="small echoes per run")
    parser.add_argument("--megabytes", type=int, default=512, help="MiB streamed per run")
    parser.add_argument("--rounds", type=int, default=3, help="direct/proxied alternations")
    parser.add_argument("--upstreams", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstreams:
        run_upstreams()
        return

    child = subprocess.Popen(
        [sys.executable, __file__, "--upstreams"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        echo, source, sink = map(int, child.stdout.readline().split())
        with (
            FaultProxy(LOOPBACK, echo) as echo_proxy,
            FaultProxy(LOOPBACK, source) as source_proxy,
            FaultProxy(LOOPBACK, sink) as sink_proxy,
        ):
            met = report(args, (echo, source, sink), (echo_proxy, source_proxy, sink_proxy))
    finally:
        child.kill()
        child.wait(10)
    sys.exit(0 if met else 1)


def report(
    args: argparse.Namespace, direct: tuple[int, int, int], proxies: tuple[FaultProxy, ...]
) -> bool:
    """Measure, print the figures, and say whether both targets were met."""
    proxied = tuple(proxy.port for proxy in proxies)
    size = args.megabytes * BLOCK
    rtt: dict[str, list[float]] = {"direct": [], "proxied": []}
    down: dict[str, list[float]] = {"direct": [], "proxied": []}
    up: dict[str, list[float]] = {"direct": [], "proxied": []}
    for _ in range(args.rounds):
        for label, (echo, source, sink) in (("direct", direct), ("proxied", proxied)):
            rtt[label] += round_trips_ms(echo, args.requests)
            down[label].append(download_mb_s(source, size))
            up[label].append(upload_mb_s(sink, size))

    median = {label: statistics.median(times) for label, times in rtt.items()}
    p99 = {label: statistics.quantiles(times, n=100)[98] for label, times in rtt.items()}
    added = median["proxied"] - median["direct"]
    worst_throughput = min(statistics.median(down["proxied"]), statistics.median(up["proxied"]))
    print(f"fault proxy, mode up: {args.rounds} rounds of {args.requests} x {len(MESSAGE)} B")
    print(f"echoes and {args.megabytes} MiB streams, Python {sys.version.split()[0]}\n")
    print(f"{'':28}{'direct':>12}{'proxied':>12}")
    print(f"{'round trip median (ms)':28}{median['direct']:>12.3f}{median['proxied']:>12.3f}")
    print(f"{'round trip p99 (ms)':28}{p99['direct']:>12.3f}{p99['proxied']:>12.3f}")
    for label, runs in (("upstream -> client (MB/s)", down), ("client -> upstream (MB/s)", up)):
        direct_mb_s, proxied_mb_s = (statistics.median(runs[key]) for key in ("direct", "proxied"))
        print(f"{label:28}{direct_mb_s:>12.0f}{proxied_mb_s:>12.0f}")
    print()
    verdict = "ok" if added <= LATENCY_TARGET_MS else "MISSED"
    print(f"added latency, median: {added:.3f} ms (target <= {LATENCY_TARGET_MS} ms) {verdict}")
    verdict = "ok" if worst_throughput >= THROUGHPUT_TARGET_MB_S else "MISSED"
    print(
        f"proxied throughput, slower direction: {worst_throughput:.0f} MB/s "
        f"(target >= {THROUGHPUT_TARGET_MB_S:.0f} MB/s) {verdict}"
    )
    return added <= LATENCY_TARGET_MS and worst_throughput >= THROUGHPUT_TARGET_MB_S


if __name__ == "__main__":
    main()
