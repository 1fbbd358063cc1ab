"""Event-loop lag with 200 concurrent protected calls on a Redis store (issue 10).

    .venv/bin/python benchmarks/bench_async.py [--seconds 3] [--repeats 3]

A sleeper task sleeps 10 ms in a loop and records how late each wake-up is (the overshoot);
meanwhile 200 tasks call a protected coroutine (a 10 ms dependency) in a loop, ~20,000 calls/s,
through a breaker whose state is in a real redis-server on loopback. Reported: the p99
overshoot, best of `--repeats` runs, for
- bare: the same 200 tasks with no breaker (the loop's own lag under that load: the baseline);
- blocking: every store operation run on the loop with the sync client (what `call_async` did
  before; view_max_age=0 so that each call reaches Redis);
- async: the same, every call reaching Redis, through redis.asyncio;
- async + view: the default breaker, whose steady CLOSED successes skip the store.
Target: the default breaker (async + view) p99 overshoot <= 2 ms over bare. Exit 1 if missed.
The every-call rows show what the loop pays per Redis exchange: blocking, it waits for the
server; with redis.asyncio it only pays the client's CPU (~20,000 exchanges/s here).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cbctl import CircuitBreaker  # noqa: E402
from cbctl.state import CircuitStore  # noqa: E402
from cbctl.stores.redis import RedisStore  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

TASKS = 200
DEPENDENCY = 0.01  # each protected call awaits a 10 ms dependency


class Blocking:
    """A store whose async methods run the sync ones on the loop (the behaviour before)."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name.startswith("a") and hasattr(self._store, name[1:]):
            sync = getattr(self._store, name[1:])

            async def on_the_loop(*args: Any) -> Any:
                return sync(*args)

            return on_the_loop
        return getattr(self._store, name)


async def work() -> None:
    await asyncio.sleep(DEPENDENCY)


async def lag_p99(breaker: CircuitBreaker | None, seconds: float) -> float:
    """p99 overshoot in the steady state: one round of 200 calls first (connections made)."""
    if breaker is not None:
        await asyncio.gather(*(breaker.call_async(work) for _ in range(TASKS)))
    overshoots: list[float] = []
    stop = time.perf_counter() + seconds

    async def sleeper() -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            overshoots.append(time.perf_counter() - start - 0.01)

    async def caller() -> None:
        while time.perf_counter() < stop:
            if breaker is None:
                await work()
            else:
                await breaker.call_async(work)

    await asyncio.gather(sleeper(), *(caller() for _ in range(TASKS)))
    overshoots.sort()
    return overshoots[int(len(overshoots) * 0.99)]


def best(make: Any, seconds: float, repeats: int) -> float:
    results = []
    for _ in range(repeats):

        async def run() -> float:
            breaker, store = make()
            try:
                return await lag_p99(breaker, seconds)
            finally:
                if store is not None:
                    await store.aclose()

        results.append(asyncio.run(run()))
    return min(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    with RedisServer() as server:
        store = RedisStore(server.url)

        def bare() -> tuple[None, None]:
            return None, None

        def blocking() -> tuple[CircuitBreaker, RedisStore]:
            wrapped: CircuitStore = Blocking(store)  # type: ignore[assignment]
            return CircuitBreaker("blocking", store=wrapped, view_max_age=0.0), store

        def native() -> tuple[CircuitBreaker, RedisStore]:
            return CircuitBreaker("async", store=store, view_max_age=0.0), store

        def viewed() -> tuple[CircuitBreaker, RedisStore]:
            return CircuitBreaker("viewed", store=store), store

        rows = [
            (label, best(make, options.seconds, options.repeats))
            for label, make in (
                ("bare (no breaker)", bare),
                ("blocking store calls on the loop", blocking),
                ("async, every call reaches Redis", native),
                ("async + local view (default)", viewed),
            )
        ]
        store.close()
    baseline = rows[0][1]
    print(f"{'200 tasks, Redis store':<36}{'p99 overshoot ms':>18}{'over bare ms':>14}")
    for label, value in rows:
        print(f"{label:<36}{value * 1e3:>18.2f}{(value - baseline) * 1e3:>14.2f}")
    over = (rows[3][1] - baseline) * 1e3
    if over > 2.0:
        print(f"MISSED: default breaker p99 overshoot {over:.2f} ms over bare > 2 ms")
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
