"""What `cbctl.httpx.BreakerTransport` adds to an httpx request, against a bare client, same run.

Run: `python benchmarks/bench_httpx.py [--quick]`. Two measurements:
- a loopback request: GET /health on the llama.cpp stand-in, served from another process over a
  keep-alive connection, by a bare `httpx.Client` and by one with `BreakerTransport`, in
  alternating batches; the ratio of the best batches (target: <= 2 % added);
- the transport's own cost: `handle_request()` of an `httpx.MockTransport` (no network), bare
  and wrapped, so the difference is the breaker, the circuit lookup and the status check alone.
The direct loopback ratio is the honest end-to-end figure, but on a loaded machine its noise is
larger than the transport's cost; the own cost divided by the bare loopback request is the
steadier estimate. Exit code 1 if either exceeds 2 %. Compare figures within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable

import httpx

from cbctl import CircuitBreakerRegistry
from cbctl.httpx import BreakerTransport

SERVER = """
import sys
from cbctl import standins
standins._Handler.protocol_version = "HTTP/1.1"  # keep-alive, as a service's client would use
standins._Handler.disable_nagle_algorithm = True  # else headers and body wait for a delayed ACK
server = standins.LlamaCppStandin().start()
print(server.port, flush=True)
sys.stdin.read()
"""


def batch_seconds(send: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        send()
    return (time.perf_counter() - started) / count


def compare(
    bare: Callable[[], object], wrapped: Callable[[], object], repeats: int, count: int
) -> tuple[float, float]:
    """Best seconds per request of each, from alternating batches (warm-up first)."""
    batch_seconds(bare, count)
    batch_seconds(wrapped, count)
    best_bare = best_wrapped = float("inf")
    for _ in range(repeats):
        best_bare = min(best_bare, batch_seconds(bare, count))
        best_wrapped = min(best_wrapped, batch_seconds(wrapped, count))
    return best_bare, best_wrapped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter batches")
    options = parser.parse_args()
    repeats, count = (10, 100) if options.quick else (30, 200)
    print(
        f"cbctl httpx transport benchmark - {platform.python_implementation()}"
        f" {platform.python_version()}, httpx {httpx.__version__}, {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.1f}"
    )

    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/health"
        registry = CircuitBreakerRegistry()
        with (
            httpx.Client(timeout=5) as plain,
            httpx.Client(transport=BreakerTransport(registry), timeout=5) as guarded,
        ):
            bare, wrapped = compare(
                lambda: plain.get(url), lambda: guarded.get(url), repeats, count
            )
        assert registry.get_all_stats()[url[7:-7]]["failures"] == 0
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)
    added = wrapped / bare - 1

    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "ok"})

    request = httpx.Request("GET", "http://llm:8080/health")
    mock = httpx.MockTransport(ok)
    transport = BreakerTransport(CircuitBreakerRegistry(), mock)
    mock_bare, mock_wrapped = compare(
        lambda: mock.handle_request(request),
        lambda: transport.handle_request(request),
        repeats,
        count * 20,
    )

    print(f"\nloopback GET /health, keep-alive, best of {repeats} batches of {count}")
    print(f"  bare httpx.Client            {bare * 1e6:8.1f} us/request")
    print(f"  with BreakerTransport        {wrapped * 1e6:8.1f} us/request ({added:+.2%})")
    print("\nno network: handle_request() on httpx.MockTransport, bare and wrapped")
    print(f"  bare                         {mock_bare * 1e6:8.1f} us/request")
    print(
        f"  with BreakerTransport        {mock_wrapped * 1e6:8.1f} us/request"
        f" (+{(mock_wrapped - mock_bare) * 1e6:.2f} us)"
    )
    own = (mock_wrapped - mock_bare) / bare
    print(f"  the transport's own cost is {own:.2%} of the bare loopback request")
    passed = own <= 0.02 and added <= 0.02
    print(
        f"\n{'PASS' if passed else 'MISS'}  loopback request: <= 2 % added"
        f"   own cost {own:+.2%}, measured directly {added:+.2%}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
