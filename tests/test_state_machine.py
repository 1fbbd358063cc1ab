"""Hypothesis drives a CircuitBreaker with random calls, clock moves and manual control, and
checks it step by step against a small reference model written here from the semantics README
promises alone (it shares no code with cbctl.state). The same machine runs against a breaker
whose state lives in a MemoryStore: the store path must behave exactly like the in-process one.
A third machine ends half-open trials in any order against a model of one lease per trial.
The breakers are drawn with and without open-duration backoff (factor, cap), and some failures
ask for a delay (`retry_after`, as an HTTP Retry-After does). Some are drawn with a count window
(failure rate, slow-call rate, minimum calls) or a time window of 2.5 s (its calls kept while
fewer than ten quarter-second buckets apart), and some calls are slow (they take SLOW_CALL
seconds of the fake clock, more than SLOW_DURATION) whether they succeed or fail.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cbctl import CircuitBreaker, CircuitBreakerError, FakeClock
from cbctl import state as machine
from cbctl.stores import MemoryStore

START_WALL = 1_767_225_600.0


class Boom(Exception):
    """A dependency failure."""


class NotFound(Exception):
    """Excluded by type."""


class Throttled(Exception):
    """Excluded by a predicate."""


OVERLOADED_DELAY = 12.25
SLOW_DURATION = 0.1
SLOW_CALL = 0.125
"""A slow call's length: off the quarter-second grid of holds and timeouts by less than any
timeout, so it never ends a lease or a hold while it runs."""


class Overloaded(Exception):
    """A dependency failure that asks to be left alone for OVERLOADED_DELAY seconds."""

    retry_after = OVERLOADED_DELAY


# Failures and successes drive the transitions, so they are drawn more often than neutral ends.
OUTCOMES = (
    ("success",) * 3
    + ("failure",) * 4
    + ("overloaded",)
    + ("slow_success",) * 2
    + ("slow_failure",)
    + (
        "excluded_type",
        "excluded_predicate",
        "interrupted",
    )
)
WAYS = ("call", "decorator", "with", "async")


@dataclass
class Model:
    """What README promises a breaker does, for calls that complete one at a time."""

    failure_threshold: int
    timeout: float
    success_threshold: int
    backoff_factor: float = 1.0
    max_timeout: float | None = None
    window_calls: int | None = None
    failure_rate: float | None = None
    slow_rate: float | None = None
    minimum_calls: int | None = None
    window_seconds: float | None = None
    # (failed, slow, when), oldest first
    window: list[tuple[bool, bool, float]] = field(default_factory=list)
    nominal: float = 0.0  # the open duration before a requested delay; 0: timeout
    span: float = 0.0  # how long the present (or last) open lasts; 0: timeout
    state: str = "closed"
    failure_count: int = 0
    success_count: int = 0
    opened_at: float | None = None
    forced: bool = False
    hold_until: float | None = None
    now: float = 0.0
    last_failure_at: float | None = None
    successes: int = 0
    failures: int = 0
    rejections: int = 0
    journal: list[tuple[str, str]] = field(default_factory=list)

    def _to(self, state: str) -> None:
        """Change state; a change is one journal record (staying put is none). Any transition,
        a reset or a hold (even to the same state) starts an empty window."""
        if state != self.state:
            self.journal.append((self.state, state))
        self.state = state
        self.window = []

    def count(self, failed: bool, slow: bool) -> None:
        if self.window_calls is not None:
            self.window = [*self.window, (failed, slow, self.now)][-self.window_calls :]
        elif self.window_seconds is not None:
            self.window = [*self.window, (failed, slow, self.now)]

    def held(self) -> list[tuple[bool, bool, float]]:
        """The calls in the window now: README's ten buckets of T / 10 seconds each, so a call
        stays while fewer than ten bucket widths separate its bucket from now's."""
        if self.window_seconds is None:
            return self.window
        width = self.window_seconds / 10
        return [
            c for c in self.window if math.floor(self.now / width) - math.floor(c[2] / width) < 10
        ]

    def rates(self) -> tuple[float | None, float | None]:
        """The failure and slow-call rates over the window (None below its minimum)."""
        calls = self.held()
        least = self.minimum_calls or self.window_calls or 100
        if (self.window_calls is None and self.window_seconds is None) or len(calls) < least:
            return None, None
        failed = sum(1 for c in calls if c[0]) / len(calls)
        slow = sum(1 for c in calls if c[1]) / len(calls)
        return (
            None if self.failure_rate is None else failed,
            None if self.slow_rate is None else slow,
        )

    def rate_trips(self, *, failure: bool) -> bool:
        """After a failure: either rate at its threshold; after a slow success: the slow one."""
        failed, slow = self.rates()
        rate = self.failure_rate
        if failure and failed is not None and rate is not None and failed >= rate:
            return True
        return slow is not None and self.slow_rate is not None and slow >= self.slow_rate

    def expired(self) -> bool:
        return self.forced and self.hold_until is not None and self.now >= self.hold_until

    def settle(self) -> None:
        """An expired hold ends like a reset before anything else happens."""
        if self.expired():
            self.reset()

    def view(self) -> Model:
        """What stats show now: an expired hold already ended (without a journal record yet)."""
        shown = replace(self, journal=list(self.journal))
        shown.settle()
        return shown

    def would_admit(self) -> bool:
        if self.expired():
            return True
        if self.state != "open":
            return True
        assert self.opened_at is not None
        return not self.forced and self.now >= self.opened_at + self.lasts()

    def retry_after(self) -> float | None:
        if self.expired():
            return None
        if self.state == "open" and self.hold_until is not None:
            return self.hold_until - self.now
        if self.state != "open" or self.forced:
            return None
        assert self.opened_at is not None
        return max(0.0, self.opened_at + self.lasts() - self.now)

    def backs_off(self) -> bool:
        return self.backoff_factor > 1 or self.max_timeout is not None

    def lasts(self) -> float:
        """The open duration in force (what stats show as open_duration)."""
        return self.span or self.timeout

    def open(self, delay: float | None = None, *, again: bool = False) -> None:
        """Open; `again` after a failed trial (the backoff grows), `delay` as requested."""
        self._to("open")
        self.opened_at, self.success_count = self.now, 0
        if not self.backs_off():
            return
        cap = self.max_timeout
        if cap is None:
            cap = self.timeout * 10 if self.backoff_factor > 1 else self.timeout
        self.nominal = (
            min(cap, (self.nominal or self.timeout) * self.backoff_factor)
            if again
            else self.timeout
        )
        self.span = self.nominal
        if delay is not None and delay > self.span:
            self.span = min(delay, cap)

    def forget_backoff(self) -> None:
        self.nominal = self.span = 0.0

    def call(self, outcome: str) -> bool:
        """Apply one call; True when the protected function runs."""
        self.settle()
        if not self.would_admit():
            self.rejections += 1
            return False
        if self.state == "open":
            self._to("half_open")
            self.success_count = 0
        slow = outcome.startswith("slow_")
        if slow:
            self.now += SLOW_CALL
            outcome = outcome.removeprefix("slow_")
            slow = self.slow_rate is not None  # timed against slow_call_duration only then
        if outcome == "success":
            self.successes += 1
            if self.state == "closed":
                self.failure_count = 0
                self.count(False, slow)
                if slow and not self.forced and self.rate_trips(failure=False):
                    self.open()
            else:
                self.success_count += 1
                if self.success_count >= self.success_threshold:
                    self._to("closed")
                    self.failure_count, self.success_count = 0, 0
                    self.opened_at = None
                    self.forget_backoff()
        elif outcome in ("failure", "overloaded"):
            self.failures += 1
            self.last_failure_at = self.now
            delay = OVERLOADED_DELAY if outcome == "overloaded" else None
            if self.state == "half_open":
                self.open(delay, again=True)
            else:
                self.failure_count += 1
                self.count(True, slow)
                tripped = self.failure_count >= self.failure_threshold or self.rate_trips(
                    failure=True
                )
                if tripped and not self.forced:
                    self.open(delay)
        return True

    def reset(self) -> None:
        self.forget_backoff()
        self._to("closed")
        self.failure_count, self.success_count = 0, 0
        self.opened_at, self.forced, self.hold_until = None, False, None

    def force(self, state: str, until: float | None = None) -> None:
        """A new hold replaces everything (an expired one too), so one record at most."""
        self.forget_backoff()
        self._to(state)
        self.hold_until = until
        self.failure_count, self.success_count = 0, 0
        self.opened_at = self.now if state == "open" else None
        self.forced = True


def iso(offset: float | None) -> str | None:
    if offset is None:
        return None
    moment = datetime.fromtimestamp(START_WALL + offset, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


TIMED_AS: dict[str, str] = {
    "success": "success",
    "failure": "failure",
    "overloaded": "failure",
    "slow_success": "success",
    "slow_failure": "failure",
    "excluded_type": "neutral",
    "excluded_predicate": "neutral",
}
"""What a call observer hears of each outcome (a cancellation or KeyboardInterrupt: nothing)."""


class BreakerMachine(RuleBasedStateMachine):
    use_store: ClassVar[bool] = False
    timed: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(wall=START_WALL)
        self.breaker: CircuitBreaker
        self.model: Model

    @initialize(
        failure_threshold=st.integers(1, 3),
        success_threshold=st.integers(1, 3),
        timeout_quarters=st.integers(1, 80),
        backoff_factor=st.sampled_from([1.0, 1.0, 1.5, 2.0]),
        cap_times=st.sampled_from([None, None, 1, 3]),
        window=st.sampled_from([None, None, 1, 3, 5]),
        rates=st.sampled_from([(0.5, None), (0.6, 0.5), (None, 0.5), (1.0, 1.0)]),
        minimum=st.sampled_from([None, 1, 2]),
        span=st.sampled_from([None, 2.5]),
    )
    def build(
        self,
        failure_threshold: int,
        success_threshold: int,
        timeout_quarters: int,
        backoff_factor: float,
        cap_times: int | None,
        window: int | None = None,
        rates: tuple[float | None, float | None] = (None, None),
        minimum: int | None = None,
        span: float | None = None,
    ) -> None:
        timeout = timeout_quarters / 4  # quarters add exactly in both time bases
        max_timeout = None if cap_times is None else timeout * cap_times
        span = span if window is None else None  # one kind of window at most
        windowed = window is not None or span is not None
        failure_rate, slow_rate = rates if windowed else (None, None)
        minimum = minimum if windowed and (minimum or 0) <= (window or minimum or 0) else None
        self.breaker = CircuitBreaker(
            "dep",
            failure_threshold=failure_threshold,
            timeout=timeout,
            success_threshold=success_threshold,
            backoff_factor=backoff_factor,
            max_timeout=max_timeout,
            window_calls=window,
            window_seconds=span,
            failure_rate_threshold=failure_rate,
            minimum_calls=minimum,
            slow_call_duration=None if slow_rate is None else SLOW_DURATION,
            slow_call_rate_threshold=slow_rate,
            exclude=(NotFound, lambda exc: isinstance(exc, Throttled)),
            clock=self.clock,
            store=MemoryStore(self.clock) if self.use_store else None,
        )
        self.model = Model(
            failure_threshold,
            timeout,
            success_threshold,
            backoff_factor,
            max_timeout,
            window,
            failure_rate,
            slow_rate,
            minimum,
            span,
        )
        self.timings: list[tuple[str, float, str]] = []
        if self.timed:
            self.breaker.add_call_observer(lambda *timing: self.timings.append(timing))

    @rule(
        calls=st.lists(
            st.tuples(st.sampled_from(OUTCOMES), st.sampled_from(WAYS)), min_size=1, max_size=5
        )
    )
    def call(self, calls: list[tuple[str, str]]) -> None:
        """A burst of calls, each checked against the model as it ends."""
        for outcome, way in calls:
            if self.model.forced:
                outcome = outcome.removeprefix("slow_")  # a hold's expiry is on no call's way
            expected_retry_after = self.model.retry_after()
            expected_call = self.model.call(outcome)
            timed_before = len(self.timings)
            called, raised = invoke(self.breaker, outcome, way, self.clock)
            assert called == expected_call
            if self.timed:
                heard = TIMED_AS.get(outcome) if called else None
                took = SLOW_CALL if outcome.startswith("slow_") else 0.0
                assert self.timings[timed_before:] == ([("dep", took, heard)] if heard else [])
            if not expected_call:
                assert isinstance(raised, CircuitBreakerError)
                assert raised.name == "dep"
                assert raised.retry_after == expected_retry_after
            elif outcome.endswith("success"):
                assert raised is None
            else:
                assert raised is not None
                assert not isinstance(raised, CircuitBreakerError)
            self.agrees_with_the_model()

    @rule(quarters=st.integers(1, 100))
    def advance(self, quarters: int) -> None:
        self.clock.advance(quarters / 4)
        self.model.now += quarters / 4

    @precondition(lambda self: self.model.retry_after() is not None)
    @rule(early=st.sampled_from([0.0, 0.25]))
    def advance_to_the_end_of_the_timeout(self, early: float) -> None:
        """Land exactly on (or a quarter before) the moment an open circuit admits a trial."""
        step = max(0.0, (self.model.retry_after() or 0.0) - early)
        self.clock.advance(step)
        self.model.now += step

    @rule(action=st.sampled_from(["reset", "force_open", "force_closed"]))
    def manual_control(self, action: str) -> None:
        if action == "reset":
            self.breaker.reset()
            self.model.reset()
        elif action == "force_open":
            self.breaker.force_open()
            self.model.force("open")
        else:
            self.breaker.force_closed()
            self.model.force("closed")

    @rule(
        state=st.sampled_from(["open", "closed"]),
        quarters=st.integers(1, 40),
    )
    def hold_for_a_while(self, state: str, quarters: int) -> None:
        if state == "open":
            self.breaker.force_open(for_=quarters / 4, reason="drill")
        else:
            self.breaker.force_closed(for_=quarters / 4, reason="drill")
        self.model.force(state, self.model.now + quarters / 4)

    @invariant()
    def agrees_with_the_model(self) -> None:
        stats = self.breaker.stats
        model = self.model.view()
        assert stats["hold_reason"] == ("drill" if model.hold_until is not None else None)
        assert self.breaker.state.value == model.state
        assert stats["state"] == model.state
        assert stats["failure_count"] == model.failure_count
        assert stats["success_count"] == model.success_count
        assert stats["retry_after"] == model.retry_after()
        assert stats["forced"] == model.forced
        assert stats["opened_at"] == iso(model.opened_at)
        assert stats["last_failure"] == iso(model.last_failure_at)
        assert (stats["successes"], stats["failures"], stats["rejections"]) == (
            model.successes,
            model.failures,
            model.rejections,
        )
        assert stats["calls"] == model.successes + model.failures + model.rejections
        if model.backs_off():
            assert stats["open_duration"] == model.lasts()
        else:
            assert "open_duration" not in stats
        failed, slow = model.rates()
        assert stats.get("failure_rate", "off") == ("off" if model.failure_rate is None else failed)
        assert stats.get("slow_call_rate", "off") == ("off" if model.slow_rate is None else slow)
        assert self.breaker.allows_call() == model.would_admit()
        events = self.breaker.events()
        journal = self.model.journal
        assert [(e.previous.value, e.state.value) for e in events] == journal[-200:]
        assert [e.id for e in events] == sorted({e.id for e in events})


def invoke(
    breaker: CircuitBreaker, outcome: str, way: str, clock: FakeClock
) -> tuple[bool, BaseException | None]:
    """Run one call the chosen way; whether the function ran, and what was raised. A slow call
    takes SLOW_CALL seconds of `clock`."""
    called: list[bool] = []
    slow = outcome.startswith("slow_")
    outcome = outcome.removeprefix("slow_")

    def body() -> str:
        called.append(True)
        if slow:
            clock.advance(SLOW_CALL)
        if outcome == "success":
            return "ok"
        if outcome == "failure":
            raise Boom("down")
        if outcome == "overloaded":
            raise Overloaded("busy")
        if outcome == "excluded_type":
            raise NotFound("no row")
        if outcome == "excluded_predicate":
            raise Throttled("slow down")
        if way == "async":
            raise asyncio.CancelledError
        raise KeyboardInterrupt

    async def async_body() -> str:
        return body()

    def run() -> Any:
        if way == "call":
            return breaker.call(body)
        if way == "decorator":
            return breaker(body)()
        if way == "with":
            with breaker:
                return body()
        protected: Callable[[], Awaitable[str]] = breaker(async_body)
        return asyncio.run(protected())

    try:
        result = run()
    except BaseException as raised:
        return bool(called), raised
    assert result == "ok"
    return bool(called), None


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class StoreBreakerMachine(BreakerMachine):
    use_store = True


class TimedBreakerMachine(BreakerMachine):
    """Timing every call (a CircuitCollector's observer) changes no decision of the breaker."""

    timed = True


class TimedStoreBreakerMachine(StoreBreakerMachine):
    timed = True


TestInProcessBreakerAgreesWithTheModel = BreakerMachine.TestCase
TestInProcessBreakerAgreesWithTheModel.settings = SETTINGS
TestStoreBreakerAgreesWithTheModel = StoreBreakerMachine.TestCase
TestStoreBreakerAgreesWithTheModel.settings = SETTINGS
TestTimedBreakerAgreesWithTheModel = TimedBreakerMachine.TestCase
TestTimedBreakerAgreesWithTheModel.settings = SETTINGS
TestTimedStoreBreakerAgreesWithTheModel = TimedStoreBreakerMachine.TestCase
TestTimedStoreBreakerAgreesWithTheModel.settings = SETTINGS


class MisremembersTheThreshold(BreakerMachine):
    """A model that expects one failure more than the breaker is told: must be caught."""

    @initialize(failure_threshold=st.integers(1, 4))
    def build_mismatched(self, failure_threshold: int) -> None:
        self.build(failure_threshold, 1, 4, 1.0, None)
        self.model.failure_threshold += 1


def test_the_machine_finds_a_breaker_that_disagrees_with_its_model() -> None:
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            MisremembersTheThreshold,
            settings=settings(SETTINGS, database=None, derandomize=True, phases=[Phase.generate]),
        )


# -- half-open accounting, trials ending in any order ------------------------------------------


class TrialAccounting(RuleBasedStateMachine):
    """Trials admitted, ended in any order (success, failure, neutral) or abandoned, and time
    passing, on the pure functions of cbctl.state, against a model that keeps one deadline per
    admitted trial: a trial counts, and frees its own place, only while its lease is live."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.config = machine.BreakerConfig()
        self.snapshot = machine.INITIAL
        self.permits: list[machine.Permit] = []
        # the model: state, generation (moved by every transition), live places, successes
        self.state = "closed"
        self.generation = 0
        self.places: dict[tuple[int, int], float] = {}
        self.successes = 0
        self.opened_at = 0.0

    @initialize(limit=st.integers(1, 3), successes=st.integers(1, 4))
    def build(self, limit: int, successes: int) -> None:
        self.config = machine.BreakerConfig(
            failure_threshold=1, timeout=4.0, success_threshold=successes, half_open_max_calls=limit
        )
        self.snapshot = machine.record_failure(self.snapshot, self.config, None, 0.0, 0.0, "down")
        self.state, self.generation = "open", 1

    def _move(self, state: str) -> None:
        self.state, self.generation, self.places, self.successes = state, self.generation + 1, {}, 0
        if state == "open":
            self.opened_at = self.now

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 4.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def admit(self) -> None:
        self.snapshot, permit = machine.admit(self.snapshot, self.config, self.now)
        if self.state == "open" and self.now >= self.opened_at + self.config.timeout:
            self._move("half_open")
        live = {key: end for key, end in self.places.items() if self.now < end}
        if self.state == "half_open" and len(live) < self.config.half_open_max_calls:
            assert permit is not None
            assert permit.generation == self.generation
            live[(permit.generation, permit.lease)] = self.now + self.config.timeout
            self.permits.append(permit)
        elif self.state == "closed":
            assert permit is not None
        else:
            assert permit is None
        self.places = live

    @precondition(lambda self: self.permits)
    @rule(index=st.integers(0, 50), outcome=st.sampled_from(["success", "failure", "neutral"]))
    def end(self, index: int, outcome: str) -> None:
        permit = self.permits[index % len(self.permits)]
        key = (permit.generation, permit.lease)
        holds = self.state == "half_open" and self.now < self.places.get(key, -1.0)
        late_failure = (
            outcome == "failure"
            and self.state == "half_open"
            and permit.generation == self.generation
        )
        if outcome == "success":
            self.snapshot = machine.record_success(self.snapshot, self.config, permit, self.now)
        elif outcome == "failure":
            self.snapshot = machine.record_failure(
                self.snapshot, self.config, permit, self.now, self.now, "late"
            )
        else:
            self.snapshot = machine.release(self.snapshot, permit, self.now)
        if late_failure and not holds:
            self._move("open")  # fail-safe: a trial of this generation failed, however late
            return
        if not holds:
            return  # stale: it neither frees a place nor counts
        del self.places[key]
        if outcome == "failure":
            self._move("open")
        elif outcome == "success":
            self.successes += 1
            if self.successes >= self.config.success_threshold:
                self._move("closed")

    @invariant()
    def agrees_with_the_model(self) -> None:
        snapshot = self.snapshot
        assert snapshot.state.value == self.state
        assert snapshot.generation == self.generation
        live = machine.live_leases(snapshot, self.now)
        expected = sorted(lease for (_, lease), end in self.places.items() if self.now < end)
        assert sorted(lease for lease, _ in live) == expected
        assert len(live) <= self.config.half_open_max_calls
        if self.state == "half_open":
            assert snapshot.success_count == self.successes


TestTrialAccounting = TrialAccounting.TestCase
TestTrialAccounting.settings = SETTINGS
