"""The breaker's contract (README, "The library"), one behaviour per test, with a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from cbctl import (
    BreakerConfig,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
    ConfigError,
    FakeClock,
    StateChange,
    StoreUnavailableError,
    UsageError,
)
from cbctl import state as machine
from cbctl.breaker import VIEW_MAX_AGE
from cbctl.fleet import read_store
from cbctl.state import CircuitStore
from cbctl.stores import MemoryStore
from cbctl.stores.sqlite import SqliteStore

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Boom(Exception):
    """The dependency failed."""


class NotFound(Exception):
    """A business answer, not a dependency failure: excluded in the tests that say so."""


def fail() -> None:
    raise Boom("dependency down")


def succeed() -> str:
    return "ok"


def make(clock: FakeClock, **settings: Any) -> CircuitBreaker:
    settings.setdefault("failure_threshold", 3)
    settings.setdefault("timeout", 10.0)
    return CircuitBreaker("dep", clock=clock, **settings)


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        with pytest.raises(Boom):
            breaker.call(fail)
    assert breaker.state is OPEN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- the original specification's scenarios -----------------------------------------------------


def test_closed_circuit_passes_calls_arguments_and_results_through(clock: FakeClock) -> None:
    breaker = make(clock)

    def add(a: int, b: int, *, scale: int = 1) -> int:
        return (a + b) * scale

    assert breaker.call(add, 2, 3, scale=10) == 50
    assert breaker.state is CLOSED
    assert breaker.stats["failure_count"] == 0


def test_defaults_are_the_specifications() -> None:
    breaker = CircuitBreaker("dep")
    assert breaker.config == BreakerConfig(
        failure_threshold=5, timeout=30.0, success_threshold=2, half_open_max_calls=1
    )


def test_threshold_consecutive_failures_open_the_circuit(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3)
    for expected in (1, 2):
        with pytest.raises(Boom):
            breaker.call(fail)
        assert breaker.state is CLOSED
        assert breaker.stats["failure_count"] == expected
    with pytest.raises(Boom):
        breaker.call(fail)
    assert breaker.state is OPEN
    assert breaker.stats["failure_count"] == 3


def test_a_success_between_failures_resets_the_count(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3)
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    breaker.call(succeed)
    assert breaker.stats["failure_count"] == 0
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    assert breaker.state is CLOSED


def test_the_tripping_calls_own_exception_reaches_the_caller(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    original = Boom("the real cause")

    def raise_original() -> None:
        raise original

    with pytest.raises(Boom) as caught:
        breaker.call(raise_original)
    assert caught.value is original
    assert breaker.state is OPEN


def test_open_circuit_does_not_call_the_function_and_raises_a_fresh_error(
    clock: FakeClock,
) -> None:
    breaker = make(clock, timeout=10.0)
    trip(breaker)
    calls: list[int] = []
    errors = []
    for _ in range(2):
        with pytest.raises(CircuitBreakerError) as caught:
            breaker.call(calls.append, 1)
        errors.append(caught.value)
        clock.advance(4.0)
    assert calls == []
    assert errors[0] is not errors[1]
    assert errors[0].name == "dep"
    assert errors[0].retry_after == pytest.approx(10.0)
    assert errors[1].retry_after == pytest.approx(6.0)
    assert errors[0].exit_code == 3
    assert "'dep' is open" in str(errors[0])


def test_after_the_timeout_the_next_call_is_a_half_open_trial(clock: FakeClock) -> None:
    breaker = make(clock, timeout=10.0)
    trip(breaker)
    clock.advance(9.5)
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
    clock.advance(0.5)
    seen: list[CircuitState] = []
    breaker.call(lambda: seen.append(breaker.state))
    assert seen == [HALF_OPEN]
    assert breaker.state is HALF_OPEN


def test_half_open_closes_after_success_threshold_successes(clock: FakeClock) -> None:
    breaker = make(clock, success_threshold=3)
    trip(breaker)
    clock.advance(10.0)
    for expected in (1, 2):
        assert breaker.call(succeed) == "ok"
        assert breaker.state is HALF_OPEN
        assert breaker.stats["success_count"] == expected
    breaker.call(succeed)
    assert breaker.state is CLOSED
    assert breaker.stats["failure_count"] == 0
    assert breaker.stats["success_count"] == 0
    for _ in range(breaker.failure_threshold - 1):
        with pytest.raises(Boom):
            breaker.call(fail)
    assert breaker.state is CLOSED


def test_one_half_open_failure_reopens_and_restarts_the_timer(clock: FakeClock) -> None:
    breaker = make(clock, timeout=10.0, success_threshold=2)
    trip(breaker)
    clock.advance(10.0)
    breaker.call(succeed)
    assert breaker.state is HALF_OPEN
    clock.advance(3.0)
    with pytest.raises(Boom):
        breaker.call(fail)
    assert breaker.state is OPEN
    with pytest.raises(CircuitBreakerError) as caught:
        breaker.call(succeed)
    assert caught.value.retry_after == pytest.approx(10.0)
    clock.advance(9.0)
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
    clock.advance(1.0)
    assert breaker.call(succeed) == "ok"
    assert breaker.state is HALF_OPEN


def test_half_open_rejects_other_callers_while_the_trial_is_in_flight(clock: FakeClock) -> None:
    breaker = make(clock, half_open_max_calls=1)
    trip(breaker)
    clock.advance(10.0)
    called: list[str] = []
    with breaker:
        assert breaker.state is HALF_OPEN
        clock.advance(4.0)
        with pytest.raises(CircuitBreakerError) as caught:
            breaker.call(called.append, "second")
        assert caught.value.retry_after == 10.0 - 4.0, "until the trial's lease ends"
        assert breaker.stats["retry_after"] == 10.0 - 4.0
        assert not breaker.allows_call()
    assert called == []


def test_half_open_admits_up_to_half_open_max_calls_trials(clock: FakeClock) -> None:
    breaker = make(clock, half_open_max_calls=2, success_threshold=5)
    trip(breaker)
    clock.advance(10.0)
    with breaker, breaker, pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
    assert breaker.stats["success_count"] == 2
    assert breaker.call(succeed) == "ok"


def test_manual_reset_closes_and_clears_counters(clock: FakeClock) -> None:
    breaker = make(clock)
    trip(breaker)
    breaker.reset()
    assert breaker.state is CLOSED
    stats = breaker.stats
    assert (stats["failure_count"], stats["success_count"], stats["retry_after"]) == (0, 0, None)
    assert stats["opened_at"] is None
    assert breaker.call(succeed) == "ok"
    for _ in range(breaker.failure_threshold - 1):
        with pytest.raises(Boom):
            breaker.call(fail)
    assert breaker.state is CLOSED


def test_an_outcome_admitted_before_a_reset_does_not_move_the_new_state(
    clock: FakeClock,
) -> None:
    breaker = make(clock)
    trip(breaker)
    clock.advance(10.0)

    def trial_failing_after_a_reset() -> None:
        with breaker:
            breaker.reset()
            raise Boom("late trial failure")

    with pytest.raises(Boom):
        trial_failing_after_a_reset()
    assert breaker.state is CLOSED
    assert breaker.stats["failure_count"] == 0


# -- neutral outcomes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exclude",
    [(NotFound,), (lambda exc: isinstance(exc, NotFound),)],
    ids=["type", "predicate"],
)
def test_excluded_errors_are_neutral_in_closed_and_half_open(
    clock: FakeClock, exclude: tuple[Any, ...]
) -> None:
    breaker = make(clock, failure_threshold=2, exclude=exclude)

    def not_found() -> None:
        raise NotFound("no such row")

    with pytest.raises(Boom):
        breaker.call(fail)
    for _ in range(5):
        with pytest.raises(NotFound):
            breaker.call(not_found)
    assert breaker.stats["failure_count"] == 1  # neither counted nor a reset
    with pytest.raises(Boom):
        breaker.call(fail)
    assert breaker.state is OPEN

    clock.advance(10.0)
    with pytest.raises(NotFound):
        breaker.call(not_found)
    assert breaker.state is HALF_OPEN
    assert breaker.stats["success_count"] == 0
    assert breaker.call(succeed) == "ok"  # the trial place was given back
    assert breaker.stats["failures"] == 2


def test_exclude_refuses_what_is_neither_an_exception_type_nor_a_predicate() -> None:
    with pytest.raises(TypeError):
        CircuitBreaker("dep", exclude=[int])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        CircuitBreaker("dep", exclude=["NotFound"])  # type: ignore[list-item]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_interruptions_are_neutral_and_release_the_half_open_permit(
    clock: FakeClock, interruption: type[BaseException]
) -> None:
    breaker = make(clock, failure_threshold=1)

    def interrupted() -> None:
        raise interruption

    with pytest.raises(interruption):
        breaker.call(interrupted)
    assert breaker.state is CLOSED
    assert breaker.stats["failure_count"] == 0

    trip(breaker)
    clock.advance(10.0)
    with pytest.raises(interruption):
        breaker.call(interrupted)
    assert breaker.state is HALF_OPEN
    assert breaker.call(succeed) == "ok"


def test_a_cancelled_async_trial_is_neutral_and_releases_its_permit(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)

    async def scenario() -> None:
        with pytest.raises(Boom):
            await breaker.call_async(async_fail)
        clock.advance(10.0)
        started = asyncio.Event()

        async def hang() -> None:
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(breaker.call_async(hang))
        await started.wait()
        with pytest.raises(CircuitBreakerError):
            await breaker.call_async(async_succeed)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert breaker.state is HALF_OPEN
        assert await breaker.call_async(async_succeed) == "ok"

    asyncio.run(scenario())
    assert breaker.stats["failures"] == 1


async def async_fail() -> None:
    raise Boom("async dependency down")


async def async_succeed() -> str:
    return "ok"


# -- listeners and logs -----------------------------------------------------------------------


def test_listeners_get_one_event_per_transition(clock: FakeClock) -> None:
    breaker = make(clock, success_threshold=1)
    events: list[StateChange] = []
    breaker.add_listener(events.append)
    trip(breaker)
    clock.advance(10.0)
    breaker.call(succeed)
    assert [(e.previous, e.state) for e in events] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert {e.name for e in events} == {"dep"}
    assert events[0].failure_count == 3
    assert events[0].at.isoformat() == "2026-01-01T00:00:00+00:00"
    assert events[1].at.isoformat() == "2026-01-01T00:00:10+00:00"
    breaker.remove_listener(events.append)
    breaker.force_open()
    assert len(events) == 3


def test_a_failing_listener_is_logged_and_changes_nothing(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = make(clock, failure_threshold=1)
    after: list[StateChange] = []

    def broken(event: StateChange) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    breaker.add_listener(after.append)
    with caplog.at_level(logging.INFO, logger="cbctl"), pytest.raises(Boom):
        breaker.call(fail)
    assert breaker.state is OPEN
    assert len(after) == 1  # later listeners still run
    failures = [r for r in caplog.records if r.exc_info and "listener" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    clock.advance(10.0)
    with caplog.at_level(logging.INFO, logger="cbctl"):
        assert breaker.call(succeed) == "ok"


def transition_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if hasattr(r, "circuit_state")]


def test_every_transition_logs_exactly_one_structured_record(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = CircuitBreaker("qdrant", failure_threshold=5, timeout=10.0, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="cbctl"):
        for _ in range(5):
            with pytest.raises(Boom):
                breaker.call(fail)
        for _ in range(3):
            with pytest.raises(CircuitBreakerError):
                breaker.call(succeed)
        clock.advance(10.0)
        breaker.call(succeed)
        breaker.call(succeed)
        breaker.call(succeed)
    records = transition_records(caplog)
    assert [r.getMessage() for r in records] == [
        "circuit=qdrant circuit_state=open previous=closed failures=5",
        "circuit=qdrant circuit_state=half_open previous=open failures=5",
        "circuit=qdrant circuit_state=closed previous=half_open failures=0",
    ]
    opened = records[0]
    assert (opened.circuit, opened.circuit_state, opened.previous, opened.failures) == (  # type: ignore[attr-defined]
        "qdrant",
        "open",
        "closed",
        5,
    )
    assert opened.levelno == logging.WARNING
    assert records[2].levelno == logging.INFO
    assert opened.name == "cbctl.breaker"


def test_reset_and_force_log_their_transitions(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = make(clock)
    with caplog.at_level(logging.INFO, logger="cbctl"):
        breaker.force_open()
        breaker.reset()
        breaker.reset()  # already closed: no transition, no record
    assert [(r.previous, r.circuit_state) for r in transition_records(caplog)] == [  # type: ignore[attr-defined]
        ("closed", "open"),
        ("open", "closed"),
    ]


# -- every way to wrap a call -----------------------------------------------------------------


def test_decorator_keeps_a_sync_functions_name_signature_and_kind(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)

    def fetch(key: str, *, default: int = 0) -> int:
        """Fetch a value."""
        if key == "bad":
            raise Boom(key)
        return default

    protected = breaker(fetch)
    assert protected.__name__ == "fetch"
    assert protected.__doc__ == "Fetch a value."
    assert inspect.signature(protected) == inspect.signature(fetch)
    assert not inspect.iscoroutinefunction(protected)
    assert protected("good", default=7) == 7
    with pytest.raises(Boom):
        protected("bad")
    with pytest.raises(CircuitBreakerError):
        protected("good")


def test_decorator_keeps_an_async_function_async(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)

    @breaker
    async def fetch(key: str) -> str:
        """Fetch asynchronously."""
        if key == "bad":
            raise Boom(key)
        return key.upper()

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    assert list(inspect.signature(fetch).parameters) == ["key"]

    async def scenario() -> None:
        assert await fetch("a") == "A"
        with pytest.raises(Boom):
            await fetch("bad")
        with pytest.raises(CircuitBreakerError):
            await fetch("a")

    asyncio.run(scenario())


def test_decorated_methods_bind_self_and_use_the_fallback_when_open(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, fallback=lambda rejection: "fallback")

    class Repository:
        def __init__(self) -> None:
            self.calls = 0

        @breaker
        def fetch(self, key: str) -> str:
            self.calls += 1
            if key == "bad":
                raise Boom(key)
            return key

    repository = Repository()
    assert repository.fetch("a") == "a"
    with pytest.raises(Boom):
        repository.fetch("bad")
    assert repository.fetch("a") == "fallback"
    assert repository.calls == 2
    assert breaker.stats["rejections"] == 1


def test_with_block_records_outcomes_and_rejects_when_open(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2)
    with breaker:
        pass
    for _ in range(2):
        with pytest.raises(Boom), breaker:
            raise Boom("inside with")
    assert breaker.state is OPEN
    ran: list[bool] = []
    with pytest.raises(CircuitBreakerError), breaker:
        ran.append(True)
    assert ran == []
    clock.advance(10.0)
    with breaker:
        ran.append(True)
    assert ran == [True]
    assert breaker.stats["success_count"] == 1


def test_async_with_records_outcomes_and_rejects_when_open(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, success_threshold=1)
    ran: list[str] = []

    async def scenario() -> None:
        with pytest.raises(Boom):
            async with breaker:
                raise Boom("inside async with")
        with pytest.raises(CircuitBreakerError):
            async with breaker:
                ran.append("open")
        clock.advance(10.0)
        async with breaker:
            ran.append("trial")

    asyncio.run(scenario())
    assert ran == ["trial"]
    assert breaker.state is CLOSED


def test_exiting_a_breaker_that_was_not_entered_is_an_error(clock: FakeClock) -> None:
    with pytest.raises(RuntimeError, match="without being entered"):
        make(clock).__exit__(None, None, None)


def test_fallback_answers_instead_of_the_rejection(clock: FakeClock) -> None:
    rejections: list[CircuitBreakerError] = []

    def cached(rejection: CircuitBreakerError) -> str:
        rejections.append(rejection)
        return "cached"

    breaker = make(clock, failure_threshold=1, fallback=cached)
    with pytest.raises(Boom):  # a failure is not hidden by the fallback
        breaker.call(fail)
    assert breaker.call(succeed) == "cached"

    async def scenario() -> str:
        return await breaker.call_async(async_succeed)

    assert asyncio.run(scenario()) == "cached"
    assert [r.name for r in rejections] == ["dep", "dep"]
    assert breaker.stats["rejections"] == 2


def test_allows_call_answers_without_raising_or_taking_a_permit(clock: FakeClock) -> None:
    breaker = make(clock)
    assert breaker.allows_call()
    trip(breaker)
    assert not breaker.allows_call()
    clock.advance(10.0)
    assert breaker.allows_call()
    assert breaker.allows_call()
    assert breaker.state is OPEN  # asking did not start the trial
    assert breaker.stats["rejections"] == 0
    assert breaker.call(succeed) == "ok"


# -- manual control ---------------------------------------------------------------------------


def test_force_open_holds_open_past_the_timeout_until_reset(clock: FakeClock) -> None:
    breaker = make(clock)
    breaker.force_open()
    called: list[int] = []
    for _ in range(3):
        clock.advance(1000.0)
        with pytest.raises(CircuitBreakerError) as caught:
            breaker.call(called.append, 1)
        assert caught.value.retry_after is None
        assert not breaker.allows_call()
    assert called == []
    assert breaker.stats["forced"] is True
    assert breaker.state is OPEN
    breaker.reset()
    breaker.call(called.append, 1)
    assert called == [1]
    assert breaker.stats["forced"] is False


def test_force_closed_never_trips_until_reset(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2)
    breaker.force_closed()
    for _ in range(10):
        with pytest.raises(Boom):
            breaker.call(fail)
    assert breaker.state is CLOSED
    assert breaker.stats["forced"] is True
    breaker.reset()
    trip(breaker)


def test_force_open_from_half_open_drops_the_trial(clock: FakeClock) -> None:
    breaker = make(clock)
    trip(breaker)
    clock.advance(10.0)
    with breaker:
        breaker.force_open()
    assert breaker.state is OPEN
    clock.advance(100.0)
    assert not breaker.allows_call()


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_threshold": 0},
        {"failure_threshold": -1},
        {"failure_threshold": True},
        {"failure_threshold": 2.5},
        {"success_threshold": 0},
        {"half_open_max_calls": 0},
        {"timeout": 0},
        {"timeout": -5.0},
        {"timeout": math.nan},
        {"timeout": math.inf},
        {"timeout": True},
        {"timeout": "30"},
    ],
    ids=repr,
)
def test_invalid_settings_are_refused_with_config_error(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        CircuitBreaker("dep", **settings)
    assert next(iter(settings)) in str(caught.value)
    assert caught.value.exit_code == 2


def test_an_integer_timeout_is_kept_as_seconds() -> None:
    assert CircuitBreaker("dep", timeout=3).timeout == 3.0


# -- statistics -------------------------------------------------------------------------------


def test_stats_carry_the_specified_keys_and_useful_extras(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2, timeout=10.0)
    stats = breaker.stats
    assert {
        key: stats[key]
        for key in ("name", "state", "failure_count", "success_count", "last_failure")
    } == {
        "name": "dep",
        "state": "closed",
        "failure_count": 0,
        "success_count": 0,
        "last_failure": None,
    }
    breaker.call(succeed)
    clock.advance(90.0)
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    clock.advance(4.0)
    with pytest.raises(CircuitBreakerError):
        breaker.call(succeed)
    stats = breaker.stats
    assert stats["state"] == "open"
    assert stats["failure_count"] == 2
    assert stats["last_failure"] == "2026-01-01T00:01:30Z"
    assert stats["last_error"] == "Boom: dependency down"
    assert stats["opened_at"] == "2026-01-01T00:01:30Z"
    assert stats["retry_after"] == pytest.approx(6.0)
    assert (stats["calls"], stats["successes"], stats["failures"], stats["rejections"]) == (
        4,
        1,
        2,
        1,
    )
    assert stats["store"] == "memory"
    assert stats["failure_threshold"] == 2
    assert breaker.stats is not breaker.stats


def test_stats_are_the_same_through_a_memory_store() -> None:
    stats = []
    for with_store in (False, True):
        clock = FakeClock()
        store = MemoryStore(clock) if with_store else None
        breaker = make(clock, failure_threshold=2, store=store)
        breaker.call(succeed)
        clock.advance(30.0)
        for _ in range(2):
            with pytest.raises(Boom):
                breaker.call(fail)
        clock.advance(3.0)
        with pytest.raises(CircuitBreakerError):
            breaker.call(succeed)
        stats.append(breaker.stats)
    local, shared = stats
    assert (local.pop("store"), shared.pop("store")) == ("memory", "memory://")
    assert shared == local
    assert shared["retry_after"] == pytest.approx(7.0)
    assert shared["opened_at"] == "2026-01-01T00:00:30Z"


def test_a_circuit_read_from_the_store_has_the_breakers_stats_without_its_call_counts() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    breaker = make(clock, failure_threshold=2, store=store)
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    clock.advance(3.0)
    mine = breaker.stats
    (stored,) = read_store(store)
    counted = ("calls", "successes", "failures", "rejections", "transitions")
    assert {key: stored.pop(key) for key in counted} == dict.fromkeys(counted)
    assert (mine["calls"], mine["failures"], mine["transitions"]) == (2, 2, 1)
    assert stored == {key: value for key, value in mine.items() if key not in counted}
    assert stored["retry_after"] == pytest.approx(7.0)


def test_two_breakers_sharing_a_memory_store_see_one_circuit(clock: FakeClock) -> None:
    store = MemoryStore(clock)
    first = make(clock, failure_threshold=2, store=store)
    second = make(clock, failure_threshold=2, store=store)
    for _ in range(2):
        with pytest.raises(Boom):
            first.call(fail)
    called: list[int] = []
    with pytest.raises(CircuitBreakerError):
        second.call(called.append, 1)
    assert called == []
    second.reset()
    assert first.state is CLOSED
    assert first.call(succeed) == "ok"


# -- half-open accounting: one lease per trial ---------------------------------------------------


class Trial:
    """A call held open in a context of its own, so trials can end in any order."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.context = contextvars.copy_context()
        self.context.run(breaker.__enter__)

    def succeed(self) -> None:
        self.context.run(self.breaker.__exit__, None, None, None)

    def fail(self) -> None:
        self.context.run(self.breaker.__exit__, Boom, Boom("late"), None)

    def end_neutrally(self) -> None:
        self.context.run(self.breaker.__exit__, KeyError, KeyError("not a failure"), None)


@pytest.fixture(params=["in-process", "memory store"])
def half_open(request: pytest.FixtureRequest, clock: FakeClock) -> Callable[..., CircuitBreaker]:
    """A factory of breakers already HALF_OPEN (timeout 10 s), in-process or store-backed."""

    def build(**settings: Any) -> CircuitBreaker:
        store = MemoryStore(clock) if request.param == "memory store" else None
        breaker = make(clock, failure_threshold=1, exclude=[KeyError], store=store, **settings)
        trip(breaker)
        clock.advance(10.0)
        return breaker

    return build


def rejected(breaker: CircuitBreaker) -> float | None:
    """The retry_after of a rejection (the test fails if the call is admitted)."""
    with pytest.raises(CircuitBreakerError) as caught:
        breaker.call(succeed)
    return caught.value.retry_after


def test_a_trial_slower_than_its_lease_neither_frees_a_place_nor_counts_when_it_ends(
    half_open: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = half_open(half_open_max_calls=1, success_threshold=2)
    slow = Trial(breaker)
    clock.advance(10.0)  # the slow trial's lease ends: its place is free again
    second = Trial(breaker)
    slow.succeed()
    assert breaker.stats["success_count"] == 0, "a late success does not count"
    assert rejected(breaker) == 10.0, "the late success did not free the second trial's place"
    second.succeed()
    assert breaker.stats["success_count"] == 1


def test_a_late_failure_of_an_expired_trial_still_reopens_the_circuit(
    half_open: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    """Fail-safe: the dependency is evidently down, and re-opening lets no more calls through."""
    breaker = half_open(half_open_max_calls=1)
    slow = Trial(breaker)
    clock.advance(10.0)
    second = Trial(breaker)
    slow.fail()
    assert breaker.state is OPEN
    assert breaker.stats["last_error"] == "Boom: late"
    second.succeed()
    assert breaker.stats["success_count"] == 0, "the re-opening made the second trial stale"


def test_admitting_a_trial_never_extends_another_trials_lease(
    half_open: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = half_open(half_open_max_calls=2, success_threshold=5)
    Trial(breaker)  # its holder dies: it never reports
    clock.advance(6.0)
    second = Trial(breaker)
    assert rejected(breaker) == 4.0, "until the first lease ends, not the second"
    clock.advance(4.0)
    third = Trial(breaker)  # the dead holder's place, freed on time
    assert rejected(breaker) == 6.0, "now the second lease is the earliest"
    second.succeed()
    third.succeed()
    assert breaker.stats["success_count"] == 2


def test_each_neutral_end_or_success_frees_exactly_one_place(
    half_open: Callable[..., CircuitBreaker],
) -> None:
    breaker = half_open(half_open_max_calls=2, success_threshold=5)
    first, second = Trial(breaker), Trial(breaker)
    assert rejected(breaker) is not None
    first.end_neutrally()
    third = Trial(breaker)
    assert rejected(breaker) is not None, "one neutral end freed one place, not two"
    second.succeed()
    fourth = Trial(breaker)
    assert rejected(breaker) is not None, "one success freed one place"
    third.end_neutrally()
    fourth.end_neutrally()
    Trial(breaker), Trial(breaker)
    assert rejected(breaker) is not None


def test_a_permit_of_an_earlier_generation_never_frees_a_place_of_the_new_one(
    half_open: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = half_open(half_open_max_calls=1)
    old = Trial(breaker)  # lease 1 of this half-open generation
    clock.advance(10.0)
    with pytest.raises(Boom):
        breaker.call(fail)  # its successor fails: OPEN again
    clock.advance(10.0)
    current = Trial(breaker)  # lease 1 of the new half-open generation
    old.end_neutrally()
    assert rejected(breaker) == 10.0, "the old permit freed nothing"
    current.succeed()
    assert breaker.stats["success_count"] == 1


def test_releasing_a_trial_twice_cannot_make_a_place_or_a_negative_count(clock: FakeClock) -> None:
    config = BreakerConfig(failure_threshold=1, timeout=10.0, half_open_max_calls=1)
    opened = machine.record_failure(machine.INITIAL, config, None, 0.0, 0.0, "down")
    snapshot, permit = machine.admit(opened, config, 10.0)
    assert permit is not None
    for _ in range(3):
        snapshot = machine.release(snapshot, permit, 11.0)
    assert snapshot.leases == ()
    snapshot, first = machine.admit(snapshot, config, 11.0)
    assert first is not None
    assert machine.admit(snapshot, config, 11.0)[1] is None
    assert machine.release(snapshot, permit, 11.0) == snapshot, "an ended permit frees nothing"


# -- a store that stops answering -----------------------------------------------------------------


class Unplugged:
    """A memory store that can be unplugged: every operation then raises StoreUnavailableError,
    as the state file and Redis do when they cannot be reached."""

    def __init__(self, clock: FakeClock) -> None:
        self.inner = MemoryStore(clock)
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StoreUnavailableError("store unplugged")
            return attribute(*args, **kwargs)

        return guarded


def unplugged_breaker(clock: FakeClock, **settings: Any) -> tuple[CircuitBreaker, Unplugged]:
    store = Unplugged(clock)
    return make(clock, store=cast(CircuitStore, store), **settings), store


def stored(store: Unplugged) -> machine.Snapshot:
    found = store.inner.load("dep")
    assert found is not None
    return found.snapshot


class LostAnswers(MemoryStore):
    """A store whose failure writes land but whose answers can be lost (a Redis reply that
    timed out): it keeps the op id of each write and the outages it is asked to reconcile."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.lose = False
        self.ops: list[str | None] = []
        self.outages: list[machine.Outage] = []

    def record_failure(self, *args: Any) -> machine.Update:
        update = super().record_failure(*args)
        self.ops.append(args[4])
        if self.lose:
            raise StoreUnavailableError("reply lost")
        return update

    def reconcile(self, name: str, config: BreakerConfig, outage: machine.Outage) -> machine.Update:
        self.outages.append(outage)
        return super().reconcile(name, config, outage)


@pytest.mark.parametrize("form", ["sync", "async"])
def test_a_failure_whose_answer_was_lost_is_written_back_with_its_op_id(
    clock: FakeClock, form: str
) -> None:
    """The write-back names each failure write that may have landed, so that a store that keeps
    op ids counts it once; every write has its own id."""
    store = LostAnswers(clock)
    breaker = make(clock, store=store, failure_threshold=5)

    async def failing() -> None:
        raise Boom("down")

    def failure() -> None:
        if form == "sync":
            with pytest.raises(Boom):
                breaker.call(fail)
        else:
            with pytest.raises(Boom):
                asyncio.run(breaker.call_async(failing))

    failure()
    store.lose = True
    failure()
    store.lose = False
    breaker.call(succeed)
    first, lost = store.ops
    assert first is not None
    assert lost not in (None, first)
    assert [outage.ops for outage in store.outages] == [(lost,)]


def _op_prefix(op: str | None) -> str:
    assert op is not None
    return op.rpartition("-")[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_names_its_failure_writes_apart_from_its_parents(clock: FakeClock) -> None:
    """A write-back after an outage tells its own writes by op id: a child that inherited the
    parent's token and counter would mistake the parent's writes for its own."""
    store = LostAnswers(clock)
    breaker = make(clock, store=store, failure_threshold=100)
    with pytest.raises(Boom):
        breaker.call(fail)
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # the child: one failure write, its op id sent to the parent
        try:
            with contextlib.suppress(Boom):
                breaker.call(fail)
            os.write(writing, (store.ops[-1] or "").encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as pipe:
        child_op = pipe.read()
    os.waitpid(child, 0)
    with pytest.raises(Boom):
        breaker.call(fail)
    parent_ops = store.ops
    assert len({_op_prefix(op) for op in parent_ops}) == 1, "one process, one token"
    assert _op_prefix(child_op) != _op_prefix(parent_ops[0])


def test_an_open_circuit_keeps_its_remaining_time_when_the_store_is_lost(
    clock: FakeClock,
) -> None:
    breaker, store = unplugged_breaker(clock, failure_threshold=1, timeout=30.0)
    trip(breaker)
    clock.advance(10.0)
    store.down = True
    assert rejected(breaker) == 20.0
    assert breaker.stats["retry_after"] == 20.0
    assert breaker.stats["degraded"] == "store unplugged"
    clock.advance(20.0)
    assert breaker.call(succeed) == "ok", "the trial comes on time, in-process"


def test_success_reset_and_force_apply_in_process_while_the_store_is_down(
    clock: FakeClock,
) -> None:
    breaker, store = unplugged_breaker(clock, failure_threshold=3)
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    store.down = True
    breaker.call(succeed)
    assert breaker.stats["failure_count"] == 0
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    assert breaker.state is CLOSED, "the success cleared the failures before it"
    with pytest.raises(Boom):
        breaker.call(fail)
    assert breaker.state is OPEN
    breaker.reset()
    assert breaker.call(succeed) == "ok"
    breaker.force_open()
    assert rejected(breaker) is None
    breaker.force_closed()
    for _ in range(5):
        with pytest.raises(Boom):
            breaker.call(fail)
    assert breaker.state is CLOSED
    assert stored(store).failure_count == 2, "nothing reached the unplugged store"


def test_async_calls_are_decided_in_process_while_the_store_is_down(clock: FakeClock) -> None:
    breaker, store = unplugged_breaker(clock, failure_threshold=2)
    store.down = True

    async def failing() -> None:
        raise Boom("down")

    async def ok() -> str:
        return "ok"

    async def scenario() -> None:
        with pytest.raises(Boom):
            await breaker.call_async(failing)
        assert await breaker.call_async(ok) == "ok"
        assert breaker.stats["failure_count"] == 0, "the success cleared the failure in-process"
        for _ in range(2):
            with pytest.raises(Boom):
                await breaker.call_async(failing)
        with pytest.raises(CircuitBreakerError):
            await breaker.call_async(failing)

    asyncio.run(scenario())
    assert breaker.state is OPEN
    assert breaker.stats["degraded"] == "store unplugged"


def test_a_neutral_end_frees_the_in_process_trial_while_the_store_is_down(
    clock: FakeClock,
) -> None:
    breaker, store = unplugged_breaker(clock, failure_threshold=1, exclude=[KeyError])
    trip(breaker)
    clock.advance(10.0)
    store.down = True
    trial = Trial(breaker)
    assert rejected(breaker) == 10.0
    trial.end_neutrally()
    assert breaker.call(succeed) == "ok"


def test_an_async_neutral_end_frees_the_in_process_trial_while_the_store_is_down(
    clock: FakeClock,
) -> None:
    breaker, store = unplugged_breaker(clock, failure_threshold=1, exclude=[KeyError])
    trip(breaker)
    clock.advance(10.0)
    store.down = True

    async def missing() -> None:
        raise KeyError("not a failure")

    async def ok() -> str:
        return "ok"

    async def scenario() -> str:
        with pytest.raises(KeyError):
            await breaker.call_async(missing)
        return await breaker.call_async(ok)

    assert asyncio.run(scenario()) == "ok", "the neutral trial gave its place back"


@pytest.mark.parametrize("form", ["sync", "async"])
def test_failures_counted_while_the_store_was_down_are_written_back_once(
    clock: FakeClock, form: str
) -> None:
    breaker, store = unplugged_breaker(clock, failure_threshold=5)

    async def failing() -> None:
        raise Boom("down")

    def failure() -> None:
        if form == "sync":
            with pytest.raises(Boom):
                breaker.call(fail)
        else:
            with pytest.raises(Boom):
                asyncio.run(breaker.call_async(failing))

    for _ in range(2):
        failure()
    store.down = True
    for _ in range(2):
        failure()
    store.down = False
    assert breaker.allows_call()
    assert stored(store).failure_count == 2, "nothing written back before the next operation"
    failure()
    assert (stored(store).state, stored(store).failure_count) == (OPEN, 5)
    assert breaker.stats["degraded"] is None


@pytest.mark.parametrize("form", ["sync", "async"])
def test_the_first_trial_after_an_outage_takes_its_place_in_the_store(
    clock: FakeClock, form: str
) -> None:
    """Once the write-back succeeds, the same operation goes on to the store: a half-open trial
    taken in-process instead would let another process's breaker run a second trial."""
    breaker, store = unplugged_breaker(clock, failure_threshold=1, timeout=10.0)
    theirs = make(clock, store=store.inner, failure_threshold=1, timeout=10.0)
    trip(breaker)
    store.down = True
    assert rejected(breaker) == 10.0
    clock.advance(10.0)
    store.down = False

    async def trial() -> None:
        async with breaker:
            rejected(theirs)  # the trial place is taken in the store

    if form == "sync":
        with breaker:
            rejected(theirs)  # the trial place is taken in the store
    else:
        asyncio.run(trial())
    assert stored(store).success_count == 1, "the trial's success reached the store"


def test_a_success_during_the_outage_drops_the_failures_before_it_from_the_write_back(
    clock: FakeClock,
) -> None:
    breaker, store = unplugged_breaker(clock, failure_threshold=5)
    store.down = True
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    breaker.call(succeed)
    with pytest.raises(Boom):
        breaker.call(fail)
    store.down = False
    with pytest.raises(Boom):
        breaker.call(fail)
    assert stored(store).failure_count == 2, "one failure after the success, one after the outage"


def test_a_store_lost_on_a_clock_near_zero_leaves_no_view() -> None:
    """Losing the store ends the view; on a monotonic clock that reads under a second (just
    after boot) a leftover deadline would admit calls the in-process circuit refuses."""
    clock = FakeClock(monotonic=0.0)
    breaker, store = unplugged_breaker(clock, failure_threshold=1)
    breaker.call(succeed)
    store.down = True
    with pytest.raises(Boom):
        breaker.call(fail)
    assert rejected(breaker) == 10.0


class SlowWriteBack(Unplugged):
    """An unpluggable store whose async write-back waits for a gate; it notes async admissions."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.gate = asyncio.Event()
        self.admitted = 0
        self.outages: list[machine.Outage] = []

    async def areconcile(self, name: str, config: BreakerConfig, outage: machine.Outage) -> Any:
        await self.gate.wait()
        self.outages.append(outage)
        return self.inner.reconcile(name, config, outage)

    async def aadmit(self, *args: Any) -> machine.Update:
        self.admitted += 1
        return self.inner.admit(*args)


def test_calls_during_another_tasks_write_back_stay_in_process(clock: FakeClock) -> None:
    """While one task writes back what the breaker counted during an outage, the others decide
    in-process: the store has not yet heard of those failures."""
    store = SlowWriteBack(clock)
    breaker = make(clock, store=cast(CircuitStore, store), failure_threshold=5)
    store.down = True
    with pytest.raises(Boom):
        breaker.call(fail)
    store.down = False

    async def ok() -> str:
        return "ok"

    async def scenario() -> None:
        writing_back = asyncio.ensure_future(breaker.call_async(ok))
        await asyncio.sleep(0)
        assert await breaker.call_async(ok) == "ok"
        assert store.admitted == 0, "decided in-process while the write-back is pending"
        store.gate.set()
        assert await writing_back == "ok"
        assert store.admitted == 1

    asyncio.run(scenario())


def test_a_failure_counted_during_the_write_back_is_written_back_next(clock: FakeClock) -> None:
    """A write-back takes what was counted when it began; a failure counted in-process while it
    was pending stays in the log, with its own op id only, and the next operation writes it."""
    store = SlowWriteBack(clock)
    breaker = make(clock, store=cast(CircuitStore, store), failure_threshold=10)
    store.down = True
    with pytest.raises(Boom):
        breaker.call(fail)
    store.down = False

    async def failing() -> None:
        raise Boom("down")

    async def scenario() -> None:
        writing_back = asyncio.ensure_future(breaker.call_async(failing))
        await asyncio.sleep(0)
        with pytest.raises(Boom):
            await breaker.call_async(failing)  # in-process: the write-back is pending
        store.gate.set()
        with pytest.raises(Boom):
            await writing_back

    asyncio.run(scenario())
    first, second = store.outages
    assert (first.failures, second.failures) == (1, 1)
    assert len(first.ops) == len(second.ops) == 1
    assert first.ops != second.ops
    assert stored(store).failure_count == 3
    assert breaker.stats["degraded"] is None


def test_a_write_back_that_opens_the_stored_circuit_is_announced(clock: FakeClock) -> None:
    """Failures written back on top of another process's may open the circuit in the store:
    that transition reaches this breaker's listeners like any other."""
    breaker, store = unplugged_breaker(clock, failure_threshold=3)
    theirs = make(clock, store=store.inner, failure_threshold=3)
    seen: list[CircuitState] = []
    breaker.add_listener(lambda change: seen.append(change.state))
    breaker.call(succeed)
    store.down = True
    with pytest.raises(Boom):
        breaker.call(fail)
    for _ in range(2):
        with pytest.raises(Boom):
            theirs.call(fail)
    store.down = False
    rejected(breaker)
    assert seen == [OPEN]


def test_stats_come_from_the_in_process_state_while_the_store_is_down(clock: FakeClock) -> None:
    breaker, store = unplugged_breaker(clock)
    store.down = True
    stats = breaker.stats
    assert stats["state"] == "closed"
    assert stats["degraded"] == "store unplugged"


def fail_with(error: Exception) -> None:
    raise error


def test_the_last_error_is_one_line_of_at_most_200_characters(clock: FakeClock) -> None:
    breaker = make(clock)
    with pytest.raises(Boom):
        breaker.call(fail_with, Boom("x" * 300 + "\nsecond line"))
    assert breaker.stats["last_error"] == ("Boom: " + "x" * 300)[:200]


def test_allows_call_notes_a_store_that_does_not_answer(clock: FakeClock) -> None:
    breaker, store = unplugged_breaker(clock)
    store.down = True
    assert breaker.allows_call()
    assert breaker.stats["degraded"] == "store unplugged"


def test_an_open_circuit_seen_while_the_store_was_down_is_written_back_with_its_time_left(
    clock: FakeClock,
) -> None:
    breaker, store = unplugged_breaker(clock, failure_threshold=2, timeout=30.0)
    store.down = True
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    clock.advance(10.0)
    store.down = False
    assert rejected(breaker) == 20.0
    found = store.inner.load("dep")
    assert found is not None
    assert found.snapshot.state is OPEN
    assert machine.retry_after(found.snapshot, breaker.config, found.now) == 20.0
    other = make(clock, store=cast(CircuitStore, store), failure_threshold=2, timeout=30.0)
    assert rejected(other) == 20.0, "another process sees the open circuit"


def test_a_reset_in_the_store_during_the_outage_wins_over_what_was_counted_locally(
    clock: FakeClock,
) -> None:
    breaker, store = unplugged_breaker(clock, failure_threshold=1)
    breaker.call(succeed)
    store.down = True
    trip(breaker)
    store.inner.reset("dep")  # an operator, through a path this process cannot reach
    store.down = False
    assert breaker.call(succeed) == "ok"
    assert stored(store).state is CLOSED


@pytest.mark.parametrize("operation", ["reset", "force_closed"])
def test_a_reset_or_hold_made_during_the_outage_drops_the_failures_counted_before_it(
    clock: FakeClock, operation: str
) -> None:
    breaker, store = unplugged_breaker(clock, failure_threshold=5)
    breaker.call(succeed)
    store.down = True
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    getattr(breaker, operation)()
    store.down = False
    with pytest.raises(Boom):
        breaker.call(fail)
    assert (stored(store).state, stored(store).failure_count) == (CLOSED, 1)


def test_a_breaker_shows_the_transitions_another_breaker_made_in_the_shared_store(
    clock: FakeClock,
) -> None:
    store = MemoryStore(clock)
    ours = make(clock, store=store, failure_threshold=1)
    theirs = make(clock, store=store, failure_threshold=1)
    trip(theirs)
    assert [(event.previous, event.state) for event in ours.events()] == [(CLOSED, OPEN)]


def test_the_store_going_away_and_coming_back_is_logged_once_each_way(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker, store = unplugged_breaker(clock, failure_threshold=2, timeout=30.0)
    breaker.call(succeed)
    store.down = True
    with caplog.at_level(logging.INFO, logger="cbctl"):
        for _ in range(3):
            with contextlib.suppress(Boom, CircuitBreakerError):
                breaker.call(fail)
        clock.advance(10.0)
        store.down = False
        assert rejected(breaker) == 20.0
        assert rejected(breaker) == 20.0
    store_records = [record for record in caplog.records if " store " in record.getMessage()]
    messages = [(record.levelname, record.getMessage()) for record in store_records]
    assert messages == [
        ("WARNING", "circuit=dep store degraded: store unplugged"),
        (
            "INFO",
            "circuit=dep store answers again; wrote back 2 failure(s) and an open circuit "
            "(20.0s left)",
        ),
    ]
    assert all(getattr(record, "circuit", None) == "dep" for record in store_records)


def test_a_store_back_under_a_closed_circuit_logs_its_return_without_an_open_circuit(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker, store = unplugged_breaker(clock, failure_threshold=5)
    breaker.call(succeed)
    store.down = True
    with pytest.raises(Boom):
        breaker.call(fail)
    store.down = False
    with caplog.at_level(logging.INFO, logger="cbctl"):
        breaker.call(succeed)
    assert [record.getMessage() for record in caplog.records] == [
        "circuit=dep store degraded: store unplugged",
        "circuit=dep store answers again; wrote back 1 failure(s)",
    ]
    assert breaker.stats["degraded"] is None


def test_allows_call_reads_a_shared_store_another_process_changed(tmp_path: Path) -> None:
    clock = FakeClock()
    mine = SqliteStore(tmp_path / "circuits.db", clock=clock)
    theirs = SqliteStore(tmp_path / "circuits.db", clock=clock)
    breaker = make(clock, store=mine, failure_threshold=1)
    breaker.call(succeed)
    assert breaker.allows_call()
    theirs.record_failure("dep", breaker.config, None, "down")
    assert breaker.allows_call(), "within its max age the local view of CLOSED still answers"
    clock.advance(VIEW_MAX_AGE)
    assert not breaker.allows_call()
    clock.advance(10.0)
    assert breaker.allows_call(), "past the timeout a trial would be admitted"
    theirs.force("dep", breaker.config, OPEN)
    assert not breaker.allows_call()
    theirs.reset("dep")
    assert breaker.allows_call()
    mine.close()
    theirs.close()


def test_an_in_process_breaker_journals_each_transition_with_time_failures_and_error(
    clock: FakeClock,
) -> None:
    breaker = make(clock, failure_threshold=2, timeout=5.0, success_threshold=1)
    assert breaker.events() == []
    trip(breaker)
    clock.advance(5.0)
    breaker.call(succeed)
    events = breaker.events()
    assert [(e.previous, e.state) for e in events] == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]
    assert (events[0].failures, events[0].error) == (2, "Boom: dependency down")
    assert events[2].error is None
    assert events[2].at.timestamp() == pytest.approx(clock.wall())
    assert events[0].id < events[1].id < events[2].id
    with pytest.raises(AttributeError):
        events[0].state = CircuitState.OPEN  # type: ignore[misc]


def test_an_in_process_journal_keeps_only_the_last_transitions(clock: FakeClock) -> None:
    from cbctl.journal import JOURNAL_LIMIT

    breaker = make(clock, failure_threshold=1)
    for _ in range(JOURNAL_LIMIT):
        with pytest.raises(Boom):
            breaker.call(fail)
        breaker.reset()
    events = breaker.events()
    assert len(events) == JOURNAL_LIMIT
    assert events[-1].state is CircuitState.CLOSED
    assert events[0].state is CircuitState.OPEN, "the oldest transitions were dropped first"


def test_steady_successes_add_nothing_to_the_journal(clock: FakeClock) -> None:
    breaker = make(clock)
    for _ in range(100):
        breaker.call(succeed)
    assert breaker.events() == []


class CountingStore(MemoryStore):
    """A memory store that counts admissions, and can hold async ones until released."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.admits = 0
        self.gate: asyncio.Event | None = None

    def admit(self, name: str, config: BreakerConfig) -> machine.Update:
        self.admits += 1
        return super().admit(name, config)

    async def aadmit(self, name: str, config: BreakerConfig) -> machine.Update:
        if self.gate is not None:
            self.admits += 1
            await self.gate.wait()
            return super().admit(name, config)
        return self.admit(name, config)


def failures_in(store: MemoryStore) -> int:
    found = store.load("dep")
    assert found is not None
    return found.snapshot.failure_count


def test_steady_successes_ask_the_store_once_per_view_max_age() -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    breaker = make(clock, store=store, view_max_age=2.0)
    for _ in range(100):
        breaker.call(succeed)
    assert store.admits == 1
    clock.advance(1.9)
    breaker.call(succeed)
    assert store.admits == 1
    clock.advance(0.1)
    for _ in range(100):
        breaker.call(succeed)
    assert store.admits == 2


def test_async_with_blocks_run_on_the_view_too() -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    breaker = make(clock, store=store)

    async def scenario() -> None:
        for _ in range(3):
            async with breaker:
                pass

    asyncio.run(scenario())
    assert store.admits == 1
    assert breaker.stats["successes"] == 3


def test_without_a_view_every_call_asks_the_store() -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    breaker = make(clock, store=store, view_max_age=0.0)
    for _ in range(5):
        breaker.call(succeed)
    assert store.admits == 5


def test_a_new_breaker_asks_the_store_first_even_on_a_clock_near_zero() -> None:
    """A monotonic clock may read under a second (just after boot): no view exists before the
    store has answered once."""
    clock = FakeClock(monotonic=0.0)
    store = CountingStore(clock)
    theirs = make(clock, store=store, failure_threshold=1)
    with pytest.raises(Boom):
        theirs.call(fail)
    with pytest.raises(CircuitBreakerError):
        make(clock, store=store).call(succeed)


def test_an_open_made_elsewhere_is_seen_once_the_view_expires() -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    mine = make(clock, store=store, failure_threshold=1)
    theirs = make(clock, store=store, failure_threshold=1)
    mine.call(succeed)
    with pytest.raises(Boom):
        theirs.call(fail)
    assert mine.call(succeed) == "ok", "inside the documented bound the view still admits"
    clock.advance(VIEW_MAX_AGE)
    with pytest.raises(CircuitBreakerError):
        mine.call(succeed)


def test_a_failure_admitted_by_the_view_is_recorded_at_once_and_ends_the_view() -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    breaker = make(clock, store=store, failure_threshold=2)
    breaker.call(succeed)
    with pytest.raises(Boom):
        breaker.call(fail)
    assert failures_in(store) == 1
    breaker.call(succeed)
    assert store.admits == 2, "a circuit counting failures asks the store"
    assert failures_in(store) == 0


def test_when_the_view_expires_one_of_many_concurrent_callers_refreshes_it() -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    breaker = make(clock, store=store)

    async def ok() -> str:
        return "ok"

    async def scenario() -> list[str]:
        await breaker.call_async(ok)
        clock.advance(VIEW_MAX_AGE)
        store.gate = asyncio.Event()
        calls = [asyncio.ensure_future(breaker.call_async(ok)) for _ in range(50)]
        await asyncio.sleep(0)
        store.gate.set()
        return list(await asyncio.gather(*calls))

    assert asyncio.run(scenario()) == ["ok"] * 50
    assert store.admits == 2, "one admission to make the view, one to refresh it"


def test_the_grace_of_an_expired_view_lasts_its_fraction_of_the_max_age() -> None:
    """While one caller refreshes, others keep the view for VIEW_GRACE x view_max_age, no longer:
    a refresh that never returns must not stretch the staleness bound."""
    clock = FakeClock()
    store = CountingStore(clock)
    breaker = make(clock, store=store, view_max_age=2.0)
    grace = 0.2  # VIEW_GRACE (0.1) of the 2.0 s max age

    async def ok() -> str:
        return "ok"

    async def scenario() -> None:
        await breaker.call_async(ok)
        clock.advance(2.0)
        store.gate = asyncio.Event()
        refresh = asyncio.ensure_future(breaker.call_async(ok))
        await asyncio.sleep(0)
        clock.advance(grace / 2)
        assert await breaker.call_async(ok) == "ok"
        assert store.admits == 2, "the refresh asked; inside the grace the view admits"
        clock.advance(grace)
        late = asyncio.ensure_future(breaker.call_async(ok))
        await asyncio.sleep(0)
        assert store.admits == 3, "past the grace a caller asks the store"
        store.gate.set()
        assert await asyncio.gather(refresh, late) == ["ok", "ok"]

    asyncio.run(scenario())


def test_a_breaker_name_must_be_a_non_empty_string() -> None:
    for name in (None, "", 3):
        with pytest.raises(UsageError, match="circuit name must be a non-empty string"):
            CircuitBreaker(name)  # type: ignore[arg-type]


@pytest.mark.parametrize("age", [-1.0, math.inf, math.nan])
def test_view_max_age_must_be_a_finite_non_negative_number(age: float) -> None:
    with pytest.raises(ValueError, match="view_max_age"):
        CircuitBreaker("dep", view_max_age=age)
