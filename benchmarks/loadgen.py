"""A small HTTP/1.1 keep-alive load generator: N connections, each a thread, for D seconds.

Run as its own process so it does not share the server's GIL:
    python benchmarks/loadgen.py http://127.0.0.1:8092/health --connections 8 --duration 3
Prints one JSON line: requests, errors, seconds, requests_per_second. Raw sockets, so the
generator costs far less CPU per request than the server it measures.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from urllib.parse import urlsplit


def _read_response(sock: socket.socket, buffer: bytearray) -> int:
    """Read one response off a keep-alive connection; returns its status code."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection mid-body")
        body += chunk
    buffer[:] = body[length:]
    return status


def run(url: str, connections: int, duration: float) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    counts = [0] * connections
    errors = [0] * connections
    start = time.perf_counter()
    deadline = start + duration

    def worker(index: int) -> None:
        sock = socket.create_connection((host, port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        with sock:
            while time.perf_counter() < deadline:
                sock.sendall(request)
                if _read_response(sock, buffer) == 200:
                    counts[index] += 1
                else:
                    errors[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    total = sum(counts)
    return {
        "requests": total,
        "errors": sum(errors),
        "seconds": round(seconds, 3),
        "requests_per_second": round(total / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    print(json.dumps(run(args.url, args.connections, args.duration)))


if __name__ == "__main__":
    main()
