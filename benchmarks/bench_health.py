"""Benchmarks for issue 5: `cbctl watch` CPU and `/health` throughput.

    .venv/bin/python benchmarks/bench_health.py            # everything, about 40 s
    .venv/bin/python benchmarks/bench_health.py --quick    # shorter windows

1. `cbctl watch --interval 0.5` over 200 circuits, in a real pseudo-terminal (so rich's Live
   redraw path runs), from the state file and from a health endpoint: CPU time of the watch
   process (utime + stime from /proc) over a bounded window after a warm-up. Target < 10 %.
2. `/health` with 50 circuits on loopback, load from `benchmarks/loadgen.py` in its own process
   (8 keep-alive connections, raw sockets): `cbctl serve` over a state file, and the app over a
   service's own registry, with the default shared answer (max_age 0.1 s) and with max_age 0.
   Target >= 1,000 requests/s.

Prints one line per measurement and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cbctl import CircuitBreakerRegistry
from cbctl.health import health_app
from cbctl.serving import running
from cbctl.stores import open_store

ROOT = Path(__file__).resolve().parent.parent
CBCTL = [sys.executable, "-c", "from cbctl.cli import main; main()"]
TICKS = os.sysconf("SC_CLK_TCK")


def _fail(error: str) -> None:
    raise ConnectionError(error)


def populate(registry: CircuitBreakerRegistry, count: int) -> None:
    """`count` circuits: most closed, some with failures, every tenth open."""
    for index in range(count):
        breaker = registry.get(f"dependency-{index:03d}")
        breaker.call(lambda: None)
        failures = breaker.failure_threshold if index % 10 == 0 else index % 3
        for _ in range(failures):
            with suppress(ConnectionError):
                breaker.call(_fail, f"connection refused by dependency-{index:03d}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


@contextmanager
def in_terminal(
    args: list[str], env: dict[str, str], lines: int = 60
) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose stdin/stdout/stderr are a pseudo-terminal; its output is drained."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        args,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={
            **os.environ,
            "COLUMNS": "200",
            "LINES": str(lines),
            "TERM": "xterm-256color",
            **env,
        },
        cwd=ROOT,
        start_new_session=True,
    )
    os.close(terminal)
    received = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                return
            if not chunk:
                return
            received.extend(chunk[-4096:])

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)
        os.close(controller)
        reader.join(timeout=2)
        if b"dependency-" not in received:
            raise RuntimeError(f"watch showed no circuits: {bytes(received[-500:])!r}")


def watch_cpu(args: list[str], warmup: float, window: float, lines: int = 60) -> float:
    """Share of one core the watch uses on a 200 x `lines` terminal (it draws what fits)."""
    with in_terminal([*CBCTL, *args], {}, lines) as process:
        time.sleep(warmup)
        cpu0, wall0 = cpu_seconds(process.pid), time.monotonic()
        time.sleep(window)
        cpu1, wall1 = cpu_seconds(process.pid), time.monotonic()
    return (cpu1 - cpu0) / (wall1 - wall0)


def loadgen(url: str, seconds: float) -> dict[str, float]:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "loadgen.py"),
            url,
            "--connections",
            "8",
            "--duration",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@contextmanager
def cbctl_serve(state: str) -> Iterator[str]:
    process = subprocess.Popen(
        [*CBCTL, "--state", state, "serve", "--port", "0", "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        found = re.search(r" on (http://127\.0\.0\.1:\d+)", banner)
        if not found:
            raise RuntimeError(f"cbctl serve did not start: {banner!r}")
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def report(name: str, value: float, unit: str, ok: bool, target: str) -> bool:
    print(f"{name:<58} {value:>10.1f} {unit:<6} target {target:<10} {'ok' if ok else 'MISSED'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description="watch CPU and /health throughput")
    parser.add_argument("--quick", action="store_true", help="shorter measuring windows")
    parser.add_argument("--lines", type=int, default=60, help="terminal height for watch")
    args = parser.parse_args()
    warmup, window, load_seconds = (1.0, 4.0, 2.0) if args.quick else (2.0, 10.0, 5.0)
    results = []
    with tempfile.TemporaryDirectory(prefix="cbctl-bench-") as workdir:
        big = str(Path(workdir) / "watch-200.db")
        store = open_store(big)
        populate(CircuitBreakerRegistry(store=store), 200)
        store.close()
        cpu = watch_cpu(["--state", big, "watch", "--interval", "0.5"], warmup, window, args.lines)
        results.append(
            report(
                f"watch, 200 circuits from the state file, 0.5 s, {args.lines} lines",
                cpu * 100,
                "%",
                cpu < 0.10,
                "< 10 %",
            )
        )

        service = CircuitBreakerRegistry()
        populate(service, 200)
        with running(health_app(service)) as server:
            watching = ["watch", "--interval", "0.5", "--url", server.url]
            cpu = watch_cpu(watching, warmup, window, args.lines)
        results.append(
            report(
                f"watch, 200 circuits from a health endpoint, 0.5 s, {args.lines} lines",
                cpu * 100,
                "%",
                cpu < 0.10,
                "< 10 %",
            )
        )

        fifty = str(Path(workdir) / "serve-50.db")
        store = open_store(fifty)
        populate(CircuitBreakerRegistry(store=store), 50)
        store.close()
        with cbctl_serve(fifty) as url:
            rate = loadgen(f"{url}/health", load_seconds)["requests_per_second"]
        results.append(
            report(
                "/health, cbctl serve over a state file, 50 circuits",
                rate,
                "req/s",
                rate >= 1000,
                ">= 1,000",
            )
        )

        registry = CircuitBreakerRegistry()
        populate(registry, 50)
        for max_age, label in ((0.1, "shared answer 0.1 s"), (0.0, "max_age 0, informational")):
            with running(health_app(registry, max_age=max_age)) as server:
                rate = loadgen(f"{server.url}/health", load_seconds)["requests_per_second"]
            ok = rate >= 1000 or max_age == 0
            results.append(
                report(
                    f"/health, a service's registry, 50 circuits, {label}",
                    rate,
                    "req/s",
                    ok,
                    ">= 1,000" if max_age else "-",
                )
            )
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
