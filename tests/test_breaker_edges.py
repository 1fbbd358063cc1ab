"""Edges of the in-process breaker that a mutation run (tests/tools/mutate.py) found no other
test held: a forked child's writes are its own, the degraded store is logged once each way,
the outage log forgets failures a success cleared, and the time window's lock-free counter turns
its buckets at their edges."""

from __future__ import annotations

import contextlib
import os

import pytest

from cbctl import CircuitBreaker, CircuitState, FakeClock
from cbctl.state import BreakerConfig, Permit, Update
from cbctl.stores import MemoryStore


class OpRecordingStore(MemoryStore):
    """A memory store that keeps the op id of every failure it is asked to record."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.ops: list[str | None] = []

    def record_failure(
        self,
        name: str,
        config: BreakerConfig,
        permit: Permit | None,
        error: str,
        op: str | None = None,
        delay: float | None = None,
        draw: float = 0.0,
        slow: bool = False,
    ) -> Update:
        self.ops.append(op)
        return super().record_failure(name, config, permit, error, op, delay, draw, slow)


class Down(Exception):
    pass


def _fail() -> None:
    raise Down("down")


def _op_prefix(op: str | None) -> str:
    assert op is not None
    return op.rpartition("-")[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_names_its_failure_writes_apart_from_its_parents() -> None:
    """A write-back after an outage tells its own writes by op id: a child that inherited the
    parent's token and counter would mistake the parent's writes for its own."""
    clock = FakeClock()
    store = OpRecordingStore(clock)
    breaker = CircuitBreaker("db", clock=clock, store=store, failure_threshold=100)
    with pytest.raises(Down):
        breaker.call(_fail)
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # the child: one failure write, its op id sent to the parent
        try:
            with contextlib.suppress(Down):
                breaker.call(_fail)
            os.write(writing, (store.ops[-1] or "").encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as pipe:
        child_op = pipe.read()
    os.waitpid(child, 0)
    with pytest.raises(Down):
        breaker.call(_fail)
    parent_ops = store.ops
    assert len({_op_prefix(op) for op in parent_ops}) == 1, "one process, one token"
    assert _op_prefix(child_op) != _op_prefix(parent_ops[0])


# -- the time window's lock-free success counter -------------------------------------------------


@pytest.mark.parametrize("via", ["call", "decorator", "with"])
def test_a_success_at_the_exact_start_of_a_bucket_is_counted_in_that_bucket(via: str) -> None:
    """Buckets of a 20 s window are [2k, 2k + 2): a success at t = 2.0 belongs to bucket 1, which
    is still in the window at t = 20.0 when bucket 0 has left it; the failure then makes the
    rate 1 of 2."""
    clock = FakeClock(monotonic=0.0)
    breaker = CircuitBreaker(
        "api",
        clock=clock,
        window_seconds=20.0,
        failure_rate_threshold=0.5,
        minimum_calls=2,
        failure_threshold=100,
    )

    @breaker
    def decorated() -> str:
        return "ok"

    def succeed() -> None:
        if via == "call":
            breaker.call(lambda: "ok")
        elif via == "decorator":
            decorated()
        else:
            with breaker:
                pass

    clock.advance(1.0)
    succeed()
    clock.advance(1.0)
    succeed()
    clock.advance(18.0)
    assert breaker.stats["failure_rate"] is None, "bucket 0 left the window: one call in it"
    with pytest.raises(Down):
        breaker.call(_fail)
    assert breaker.state is CircuitState.OPEN, "1 failure of 2 calls: the rate reached 0.5"
