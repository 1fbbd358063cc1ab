"""Shared state under faults, measured from the outside with real processes (issue 15).

    .venv/bin/python benchmarks/bench_outage.py [--processes 8] [--outages 3] [--trials 5]

1. Redis outage: `--processes` processes fail calls that take 20 ms each through one circuit
   (threshold out of reach, so it stays CLOSED and counts everything) while Redis is SIGSTOPped
   for 2 s and then resumed, `--outages` times. Every failure a process raised must end up
   counted in Redis exactly once: "lost" = raised - kept, "twice" = kept - raised.
2. Half-open limit, state file and Redis, `--trials` rounds each:
   (a) limit 1: a trial runs past its lease, a second takes the place, the first ends late; a
       third caller is admitted? (a trial over the limit)
   (b) limit 2: one holder is SIGKILLed while another process keeps taking trials; is the dead
       holder's place free once its lease is over? (if not, the limit is stuck one lower)

Targets: 0 lost, 0 twice, 0 trials over the limit, 0 places stuck. Exit code 1 if one is missed.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cbctl import CircuitBreaker, CircuitBreakerError, FakeClock  # noqa: E402
from cbctl.state import BreakerConfig, CircuitStore  # noqa: E402
from cbctl.stores.redis import RedisStore  # noqa: E402
from cbctl.stores.sqlite import SqliteStore  # noqa: E402
from tests import store_workers  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

SPAWN = multiprocessing.get_context("spawn")
_prefixes = itertools.count()


def redis_outage(server: RedisServer, processes: int) -> tuple[int, int]:
    """One SIGSTOP of 2 s under `processes` failing processes: (failures raised, kept)."""
    prefix = f"outage{next(_prefixes)}:"
    barrier, results = SPAWN.Barrier(processes + 1), SPAWN.Queue()
    workers = [
        SPAWN.Process(
            target=store_workers.fail_through_an_outage,
            args=(server.url, prefix, 0.02, 3.5, 0.05, barrier, results),
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    pid = server._process.pid if server._process is not None else 0
    try:
        barrier.wait(60)
        time.sleep(0.7)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(2.0)
        os.kill(pid, signal.SIGCONT)
        raised = sum(results.get(timeout=60)[0] for _ in workers)
    finally:
        os.kill(pid, signal.SIGCONT)
        for worker in workers:
            worker.join(30)
    stored = RedisStore(server.url, prefix=prefix).load("shared")
    return raised, 0 if stored is None else stored.snapshot.failure_count


def opener(location: str, prefix: str) -> CircuitStore:
    """A store whose clock is 100 s in the past, to open circuits already past their timeout."""
    if location.startswith("redis://"):
        return RedisStore(location, prefix=prefix, time_offset=lambda: -100.0)
    return SqliteStore(location, clock=FakeClock(wall=time.time() - 100))


def fresh(location: str, prefix: str) -> CircuitStore:
    if location.startswith("redis://"):
        return RedisStore(location, prefix=prefix)
    return SqliteStore(location)


def slow_trial_over_the_limit(location: str, prefix: str) -> bool:
    """Scenario (a); True when a third caller was admitted beside the second trial."""
    config = {"failure_threshold": 1, "timeout": 1.0, "success_threshold": 2}
    opener(location, prefix).record_failure("shared", BreakerConfig(**config), None, "down")
    results = SPAWN.Queue()
    started, finish = [SPAWN.Event(), SPAWN.Event()], [SPAWN.Event(), SPAWN.Event()]
    holders = [
        SPAWN.Process(
            target=store_workers.hold_trial,
            args=(location, prefix, config, started[i], finish[i], results),
        )
        for i in range(2)
    ]
    breaker = CircuitBreaker("shared", store=fresh(location, prefix), **config)
    try:
        holders[0].start()
        started[0].wait(30)
        while not breaker.allows_call():
            time.sleep(0.01)
        holders[1].start()
        started[1].wait(30)
        finish[0].set()
        results.get(timeout=30)
        try:
            breaker.call(lambda: None)
        except CircuitBreakerError:
            return False
        return True
    finally:
        for event in finish:
            event.set()
        for holder in holders:
            holder.join(30)


def killed_holder_stuck(location: str, prefix: str) -> bool:
    """Scenario (b); True when the killed holder's place was still taken after its lease."""
    lease = 1.0
    config: dict[str, Any] = {
        "failure_threshold": 1, "timeout": lease, "half_open_max_calls": 2,
        "success_threshold": 10**6,
    }  # fmt: skip
    opener(location, prefix).record_failure("shared", BreakerConfig(**config), None, "down")
    results, stop = SPAWN.Queue(), SPAWN.Event()
    victim = SPAWN.Process(
        target=store_workers.take_trial_and_hang, args=(location, prefix, config, results)
    )
    victim.start()
    results.get(timeout=30)
    killed = time.monotonic()
    os.kill(victim.pid or 0, signal.SIGKILL)
    victim.join(10)
    # a queue of its own: the victim may die holding the first queue's write lock
    counts = SPAWN.Queue()
    traffic = SPAWN.Process(
        target=store_workers.trial_traffic, args=(location, prefix, config, 0.05, stop, counts)
    )
    traffic.start()
    try:
        time.sleep(max(0.0, killed + lease + 0.3 - time.monotonic()))
        breaker = CircuitBreaker("shared", store=fresh(location, prefix), **config)
        stuck = 0
        for _ in range(5):
            try:
                with breaker:
                    pass
            except CircuitBreakerError:
                stuck += 1
        return stuck > 0
    finally:
        stop.set()
        counts.get(timeout=30)
        traffic.join(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--outages", type=int, default=3)
    parser.add_argument("--trials", type=int, default=5)
    options = parser.parse_args()
    missed = False
    with RedisServer() as server:
        print(f"Redis SIGSTOP 2 s under {options.processes} failing processes")
        print(f"  {'outage':<8} {'raised':>8} {'kept':>8} {'lost':>6} {'twice':>6}")
        for number in range(1, options.outages + 1):
            raised, kept = redis_outage(server, options.processes)
            lost, twice = max(0, raised - kept), max(0, kept - raised)
            missed = missed or bool(lost or twice)
            print(f"  {number:<8} {raised:>8} {kept:>8} {lost:>6} {twice:>6}")
        with tempfile.TemporaryDirectory() as directory:
            print(f"\nhalf-open limit, {options.trials} rounds per store")
            print(f"  {'store':<11} {'over the limit (a)':>19} {'places stuck (b)':>17}")
            for kind in ("state file", "Redis"):
                over = stuck = 0
                for _ in range(options.trials):
                    places = []
                    for _ in range(2):
                        number = next(_prefixes)
                        if kind == "Redis":
                            places.append((server.url, f"limit{number}:"))
                        else:
                            places.append((str(Path(directory) / f"c{number}.db"), ""))
                    over += slow_trial_over_the_limit(*places[0])
                    stuck += killed_holder_stuck(*places[1])
                missed = missed or bool(over or stuck)
                print(f"  {kind:<11} {over:>19} {stuck:>17}")
    print("\nMISS" if missed else "\nPASS: 0 lost, 0 twice, 0 over the limit, 0 stuck")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
