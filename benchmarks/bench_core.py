"""cbctl's breaker against pybreaker, circuitbreaker and purgatory, in one run on one machine.

Run: `python benchmarks/bench_core.py` (needs the `bench` extra). `--quick` takes fewer samples.
Prints ns per call (best and median of many short timeit repeats), the ratios to the peers, and
a PASS/MISS line for each target of issue 2; exit code 1 if one is missed. It is a benchmark, not
a test: figures move with the machine's load, so compare them within one run, and rerun on a
quieter machine before concluding.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import statistics
import sys
import threading
import time
import timeit
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import circuitbreaker
import pybreaker
from purgatory import SyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from cbctl import CircuitBreaker, CircuitBreakerError, FakeClock

PEERS = ("pybreaker", "circuitbreaker", "purgatory")
THREADS = 4


def noop() -> None:
    return None


def sleep_1ms() -> None:
    time.sleep(0.001)


class Boom(Exception):
    """Used to trip the peers' breakers open."""


def boom() -> None:
    raise Boom


@dataclass(frozen=True)
class Timing:
    """Nanoseconds per statement: the best repeat (least disturbed) and the median one."""

    best: float
    median: float

    def minus(self, base: Timing) -> Timing:
        return Timing(self.best - base.best, self.median - base.median)


@dataclass(frozen=True)
class Row:
    library: str
    api: str
    timing: Timing


class Bench:
    """Many short repeats rather than a few long ones: on a shared machine the best of many
    short windows finds the quiet ones, and the median shows what the load did."""

    def __init__(self, repeat: int, min_time: float) -> None:
        self.repeat = repeat
        self.min_time = min_time

    def time(self, stmt: str, **namespace: Any) -> Timing:
        """timeit's way: enough loops to last `min_time`, `repeat` runs, GC off while timing."""
        timer = timeit.Timer(stmt, globals=namespace)
        number = 1
        while timer.timeit(number) < self.min_time:
            number *= 2
        runs = [total / number * 1e9 for total in timer.repeat(self.repeat, number)]
        return Timing(min(runs), statistics.median(runs))


def rejecting(call: str) -> str:
    """A statement that makes one refused call and catches the refusal."""
    return f"try:\n    {call}\nexcept rejected:\n    pass"


# -- the libraries, each set up the way its documentation shows ---------------------------------


def tripped_cbctl() -> CircuitBreaker:
    breaker = CircuitBreaker("bench-open", failure_threshold=1)
    with contextlib.suppress(Boom):
        breaker.call(boom)
    return breaker


def tripped_circuitbreaker() -> circuitbreaker.CircuitBreaker:
    breaker = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=3600, name="o")
    with contextlib.suppress(Boom):
        breaker.decorate(boom)()
    return breaker


def purgatory_factory() -> SyncCircuitBreakerFactory:
    """A purgatory factory with a circuit "closed" and a circuit "open" (tripped)."""
    factory = SyncCircuitBreakerFactory(default_threshold=5, default_ttl=3600)
    factory.get_breaker("closed")
    with contextlib.suppress(Boom), factory.get_breaker("open", threshold=1):
        boom()
    return factory


# -- measurements -------------------------------------------------------------------------------


def closed_overheads(bench: Bench) -> tuple[Timing, list[Row]]:
    """CLOSED success path: the protected call's time minus the bare call's."""
    bare = bench.time("f()", f=noop)
    ours = CircuitBreaker("bench")
    backed = CircuitBreaker("bench-backoff", backoff_factor=2.0, max_timeout=300.0, jitter=0.1)
    windowed = windowed_breaker("bench-window")
    timed_window = time_windowed_breaker("bench-time-window")
    py = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    cb = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30, name="c")
    factory = purgatory_factory()
    cases: list[tuple[str, str, str, dict[str, Any]]] = [
        ("cbctl", "breaker.call(f)", "call(f)", {"call": ours.call}),
        ("cbctl", "@breaker decorator", "p()", {"p": ours(noop)}),
        ("cbctl", "with breaker: f()", "with b:\n    f()", {"b": ours}),
        ("cbctl", "call(f), backoff on", "call(f)", {"call": backed.call}),
        ("cbctl", "call(f), window on [3]", "call(f)", {"call": windowed.call}),
        ("cbctl", "@breaker, window on [3]", "p()", {"p": windowed(noop)}),
        ("cbctl", "call(f), 10 s window [4]", "call(f)", {"call": timed_window.call}),
        ("cbctl", "@breaker, 10 s window [4]", "p()", {"p": timed_window(noop)}),
        ("pybreaker", "breaker.call(f)", "call(f)", {"call": py.call}),
        ("pybreaker", "@breaker decorator", "p()", {"p": py(noop)}),
        ("circuitbreaker", "breaker.call(f) [1]", "call(f)", {"call": cb.call}),
        ("circuitbreaker", "@circuit decorator", "p()", {"p": cb.decorate(noop)}),
        (
            "purgatory",
            "with breaker: f()",
            "with b:\n    f()",
            {"b": factory.get_breaker("closed")},
        ),
        ("purgatory", "@factory(name) decorator", "p()", {"p": factory("closed")(noop)}),
    ]
    rows = [
        Row(library, api, bench.time(stmt, f=noop, **namespace).minus(bare))
        for library, api, stmt, namespace in cases
    ]
    timed = timed_breaker()
    rows.insert(
        3,
        Row(
            "cbctl",
            "call(f), timed [2]",
            bench.time("call(f)", f=noop, call=timed.call).minus(bare),
        ),
    )
    return bare, rows


WINDOW = {"failure_rate_threshold": 0.5, "window_calls": 100, "minimum_calls": 20}


def windowed_breaker(name: str) -> CircuitBreaker:
    """A breaker with a 100-call count window, its window filled: 100 calls, every 5th failed."""
    breaker = CircuitBreaker(name, failure_threshold=1000, **WINDOW)
    for index in range(100):
        with contextlib.suppress(Boom):
            breaker.call(boom if index % 5 == 0 else noop)
    return breaker


TIME_WINDOW = {"failure_rate_threshold": 0.5, "window_seconds": 10.0, "minimum_calls": 20}
_SHARED_FAKE_CLOCK = FakeClock()


def time_windowed_breaker(name: str, *, all_buckets: bool = False) -> CircuitBreaker:
    """A breaker with a 10 s time window and 100 calls in it, every 5th failed: on the system
    clock (a clock read per success), or with `all_buckets` on one shared fake clock moved
    0.1 s a call, so that all ten buckets hold calls (the largest window it keeps)."""
    clock = _SHARED_FAKE_CLOCK if all_buckets else None
    breaker = CircuitBreaker(name, failure_threshold=1000, clock=clock, **TIME_WINDOW)
    for index in range(100):
        if all_buckets:
            _SHARED_FAKE_CLOCK.advance(0.1)
        with contextlib.suppress(Boom):
            breaker.call(boom if index % 5 == 0 else noop)
    return breaker


def timed_breaker() -> CircuitBreaker:
    """A breaker whose calls a cbctl.metrics.CircuitCollector times (the opt-in observer)."""
    from cbctl import CircuitBreakerRegistry
    from cbctl.metrics import CircuitCollector

    registry = CircuitBreakerRegistry()
    CircuitCollector(registry)
    return registry.get("bench-timed")


def open_costs(bench: Bench) -> tuple[list[Row], list[Row]]:
    """OPEN: the whole cost of a refusal (raise + catch); and cbctl's non-raising check."""
    ours = tripped_cbctl()
    py = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600)
    py.open()
    cb = tripped_circuitbreaker()
    factory = purgatory_factory()
    # circuitbreaker's call() never refuses (only its decorator checks the state).
    cases: list[tuple[str, str, str, dict[str, Any]]] = [
        (
            "cbctl",
            "breaker.call(f)",
            "call(f)",
            {"call": ours.call, "rejected": CircuitBreakerError},
        ),
        ("cbctl", "@breaker decorator", "p()", {"p": ours(noop), "rejected": CircuitBreakerError}),
        (
            "pybreaker",
            "breaker.call(f)",
            "call(f)",
            {"call": py.call, "rejected": pybreaker.CircuitBreakerError},
        ),
        (
            "circuitbreaker",
            "@circuit decorator",
            "p()",
            {"p": cb.decorate(noop), "rejected": circuitbreaker.CircuitBreakerError},
        ),
        (
            "purgatory",
            "@factory(name) decorator",
            "p()",
            {"p": factory("open")(noop), "rejected": OpenedState},
        ),
    ]
    rows = [
        Row(library, api, bench.time(rejecting(stmt), f=noop, **namespace))
        for library, api, stmt, namespace in cases
    ]
    forced = CircuitBreaker("bench-forced")
    forced.force_open()
    checks = [
        Row("cbctl", "allows_call() OPEN", bench.time("a()", a=ours.allows_call)),
        Row("cbctl", "allows_call() forced OPEN", bench.time("a()", a=forced.allows_call)),
        Row("cbctl", "allows_call() CLOSED", bench.time("a()", a=CircuitBreaker("c").allows_call)),
    ]
    return rows, checks


def threaded_seconds(target: Callable[[], object], calls_per_thread: int) -> float:
    """Wall time for THREADS threads, released together, to make their calls."""
    start = threading.Barrier(THREADS + 1)

    def worker() -> None:
        start.wait()
        for _ in range(calls_per_thread):
            target()

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


def best_threaded(target: Callable[[], object], calls_per_thread: int, repeat: int) -> float:
    return min(threaded_seconds(target, calls_per_thread) for _ in range(repeat))


def threads(repeat: int, quick: bool) -> dict[str, float]:
    breaker = CircuitBreaker("bench-threads")
    calls = 50_000 if quick else 200_000
    noop_seconds = best_threaded(lambda: breaker.call(noop), calls, repeat)
    bare_noop_seconds = best_threaded(noop, calls, repeat)
    slow_calls = 50 if quick else 150
    bare, protected = [], []
    for _ in range(repeat):  # interleaved, so that a burst of load hits both alike
        bare.append(threaded_seconds(sleep_1ms, slow_calls))
        protected.append(threaded_seconds(lambda: breaker.call(sleep_1ms), slow_calls))
    return {
        "noop_calls_per_s": THREADS * calls / noop_seconds,
        "bare_noop_calls_per_s": THREADS * calls / bare_noop_seconds,
        "slow_bare_s": statistics.median(bare),
        "slow_protected_s": statistics.median(protected),
    }


def bytes_each(make: Callable[[str], object], count: int = 10_000) -> float:
    """Memory per object, over `count` objects (names made beforehand, list itself excluded).

    A full collection before each reading empties the interpreter's free lists: the tuples and
    floats that making the objects freed (a time window's stamping frees many) are held there
    for the whole process, not by any one object."""
    names = [f"circuit-{index}" for index in range(count)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [make(name) for name in names]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before - sys.getsizeof(kept)) / count


def memory() -> list[tuple[str, float]]:
    factory = SyncCircuitBreakerFactory()
    return [
        ("cbctl", bytes_each(lambda name: CircuitBreaker(name))),
        (
            "cbctl, backoff on",
            bytes_each(
                lambda name: CircuitBreaker(name, backoff_factor=2.0, max_timeout=300.0, jitter=0.1)
            ),
        ),
        ("cbctl, window on", bytes_each(windowed_breaker, count=2_000)),
        (
            "cbctl, 10 s window",
            bytes_each(lambda name: time_windowed_breaker(name, all_buckets=True), count=2_000),
        ),
        ("pybreaker", bytes_each(lambda name: pybreaker.CircuitBreaker(name=name))),
        ("circuitbreaker", bytes_each(lambda name: circuitbreaker.CircuitBreaker(name=name))),
        ("purgatory", bytes_each(factory.get_breaker)),
    ]


# -- report -------------------------------------------------------------------------------------


class Verdicts:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.missed = 0

    def check(self, what: str, figure: str, ok: bool) -> None:
        self.missed += not ok
        self.lines.append(f"  {'PASS' if ok else 'MISS'}  {what:<58} {figure}")


def table(title: str, rows: list[Row], reference: float | None = None) -> None:
    print(f"\n{title}")
    print(f"  {'library':<15} {'API':<27} {'best ns':>9} {'median ns':>10}", end="")
    print(f" {'x cbctl call':>13}" if reference else "")
    for row in rows:
        print(
            f"  {row.library:<15} {row.api:<27} {row.timing.best:>9.0f} {row.timing.median:>10.0f}",
            end="",
        )
        print(f" {row.timing.best / reference:>12.1f}x" if reference else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    options = parser.parse_args()
    bench = Bench(repeat=10, min_time=0.01) if options.quick else Bench(repeat=40, min_time=0.02)
    versions = ", ".join(f"{name} {version(name)}" for name in ("cbctl", *PEERS))
    print(
        f"cbctl core benchmark - {platform.python_implementation()} {platform.python_version()}"
        f" on {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.1f}"
    )
    print(f"libraries: {versions}")

    bare, closed = closed_overheads(bench)
    ours_call = next(r for r in closed if r.library == "cbctl" and r.api == "breaker.call(f)")
    ours_decorator = next(r for r in closed if r.library == "cbctl" and "decorator" in r.api)
    fastest_peer = min((r for r in closed if r.library != "cbctl"), key=lambda r: r.timing.best)
    print(f"\nbare no-op call: {bare.best:.0f} ns (best), {bare.median:.0f} ns (median)")
    table("CLOSED success: overhead over the bare call, ns/call", closed, ours_call.timing.best)
    print("  [1] circuitbreaker's call() never checks the state (only its decorator refuses);")
    print("      it is kept in, so 'the fastest peer' below is the strictest comparison.")
    print("  [2] with a cbctl.metrics.CircuitCollector timing the calls (two clock reads and a")
    print("      histogram update per call); the rows above have no observer and read no clock.")
    print("  [3] failure_rate_threshold 0.5 over a 100-call count window, filled (20 failures).")
    print("  [4] the same over a 10 s time window (10 buckets): one clock read per success.")

    rejections, checks = open_costs(bench)
    table("OPEN: refusal, raise + catch, ns/call", rejections)
    table("non-raising check, ns/call", checks)
    ours_reject = next(r for r in rejections if r.library == "cbctl" and r.api == "breaker.call(f)")
    fastest_peer_reject = min(
        (r for r in rejections if r.library != "cbctl"), key=lambda r: r.timing.best
    )

    threaded = threads(3 if options.quick else 5, options.quick)
    slow_overhead = threaded["slow_protected_s"] / threaded["slow_bare_s"] - 1
    print(f"\n{THREADS} threads, one breaker")
    print(
        f"  no-op through breaker.call: {threaded['noop_calls_per_s'] / 1e6:.2f} M calls/s"
        f" (bare no-op: {threaded['bare_noop_calls_per_s'] / 1e6:.2f} M calls/s)"
    )
    print(
        f"  1 ms function: bare {threaded['slow_bare_s']:.3f} s, through breaker"
        f" {threaded['slow_protected_s']:.3f} s ({slow_overhead:+.1%}, median of repeats)"
    )

    footprint = memory()
    print("\nmemory per breaker, over 10,000 breakers (tracemalloc)")
    for library, size in footprint:
        print(f"  {library:<15} {size:>7.0f} bytes")
    ours_bytes = footprint[0][1]

    verdicts = Verdicts()
    for row in (ours_call, ours_decorator):
        verdicts.check(
            f"CLOSED overhead, cbctl {row.api} <= 250 ns",
            f"{row.timing.best:.0f} ns",
            row.timing.best <= 250,
        )
        ratio = fastest_peer.timing.best / row.timing.best
        verdicts.check(
            f"  and >= 1.7x less than the fastest peer ({fastest_peer.library})",
            f"{ratio:.1f}x",
            ratio >= 1.7,
        )
    verdicts.check(
        "OPEN refusal, cbctl breaker.call(f) <= 700 ns",
        f"{ours_reject.timing.best:.0f} ns",
        ours_reject.timing.best <= 700,
    )
    worst_check = max(row.timing.best for row in checks)
    verdicts.check(
        "non-raising check allows_call() <= 200 ns (worst case above)",
        f"{worst_check:.0f} ns",
        worst_check <= 200,
    )
    verdicts.check(
        f"{THREADS} threads, no-op: >= 2 M calls/s",
        f"{threaded['noop_calls_per_s'] / 1e6:.2f} M/s",
        threaded["noop_calls_per_s"] >= 2e6,
    )
    verdicts.check(
        f"{THREADS} threads, 1 ms function: within 5 % of bare",
        f"{slow_overhead:+.1%}",
        abs(slow_overhead) <= 0.05,
    )
    verdicts.check("memory <= 1 KB per breaker", f"{ours_bytes:.0f} B", ours_bytes <= 1024)
    backed_bytes = footprint[1][1]
    verdicts.check(
        "  with backoff on: <= 2 KB per breaker (issue 11)",
        f"{backed_bytes:.0f} B",
        backed_bytes <= 2048,
    )
    ours_backoff = next(r for r in closed if r.api == "call(f), backoff on")
    ratio = ours_backoff.timing.best / ours_call.timing.best
    verdicts.check(
        "CLOSED overhead with backoff on <= 1.6x the plain path (issue 11)",
        f"{ratio:.2f}x",
        ratio <= 1.6,
    )
    window_bytes = footprint[2][1]
    verdicts.check(
        "  with a 100-call window on: <= 2 KB per breaker (issue 11)",
        f"{window_bytes:.0f} B",
        window_bytes <= 2048,
    )
    time_window_bytes = footprint[3][1]
    verdicts.check(
        "  with a 10 s time window on, ten buckets held: <= 2 KB per breaker (issue 11)",
        f"{time_window_bytes:.0f} B",
        time_window_bytes <= 2048,
    )
    for plain, windowed in (
        (ours_call, "call(f), window on [3]"),
        (ours_decorator, "@breaker, window on [3]"),
        (ours_call, "call(f), 10 s window [4]"),
        (ours_decorator, "@breaker, 10 s window [4]"),
    ):
        row = next(r for r in closed if r.api == windowed)
        ratio = row.timing.best / plain.timing.best
        verdicts.check(
            f"CLOSED overhead, {row.api} <= 1.6x {plain.api} (issue 11)",
            f"{ratio:.2f}x",
            ratio <= 1.6,
        )
        below = fastest_peer.timing.best / row.timing.best
        verdicts.check(
            f"  and >= 1.7x less than the fastest peer ({fastest_peer.library})",
            f"{below:.1f}x",
            below >= 1.7,
        )
    print(
        f"\nfor reference: the fastest peer's refusal is {fastest_peer_reject.library}"
        f" {fastest_peer_reject.timing.best:.0f} ns"
        f" ({fastest_peer_reject.timing.best / ours_reject.timing.best:.1f}x cbctl's)"
    )
    print("\ntargets (issue 2, best of repeats)")
    print("\n".join(verdicts.lines))
    return 1 if verdicts.missed else 0


if __name__ == "__main__":
    sys.exit(main())
