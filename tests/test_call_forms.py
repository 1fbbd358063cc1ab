"""Calling a breaker from async code: the right form or a TypeError, async fallbacks and
listeners, call_timeout against an outer cancellation, nested breakers (issue 16).

Unit tests with a fake clock. The async call_timeout tests rely on asyncio's own timer, so they
use a 1 ms call_timeout around an await that never finishes: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cbctl import (
    CallTimeoutError,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitBreakerRegistry,
    CircuitState,
    ConfigError,
    FakeClock,
    StateChange,
)
from cbctl.config import parse_config
from cbctl.errors import DependencyError

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
TICK = 0.001  # an async call_timeout, around awaits that never finish


class Boom(Exception):
    """The dependency failed."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@contextlib.contextmanager
def no_unawaited_coroutines() -> Iterator[None]:
    """Fail when a coroutine was dropped un-awaited (and not closed) inside the block.

    Its "never awaited" RuntimeWarning is issued while the coroutine is collected, where an
    exception cannot propagate, so the warnings are recorded and checked after a collection.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        yield
        gc.collect()
    dropped = [str(w.message) for w in caught if "was never awaited" in str(w.message)]
    assert not dropped, dropped


@pytest.fixture(autouse=True)
def unawaited_coroutines_are_errors() -> Iterator[None]:
    with no_unawaited_coroutines():
        yield


def test_the_unawaited_coroutine_check_fails_on_a_dropped_coroutine() -> None:
    async def work() -> None:
        pass

    with pytest.raises(AssertionError, match="never awaited"), no_unawaited_coroutines():
        work()  # type: ignore[unused-coroutine]


def make(clock: FakeClock, **settings: Any) -> CircuitBreaker:
    settings.setdefault("failure_threshold", 2)
    settings.setdefault("timeout", 10.0)
    return CircuitBreaker("qdrant", clock=clock, **settings)


def counts(breaker: CircuitBreaker) -> tuple[int, int, int, int]:
    stats = breaker.stats
    return stats["successes"], stats["failures"], stats["failure_count"], stats["rejections"]


async def upsert_failing() -> None:
    raise Boom("qdrant down")


async def hang() -> None:
    await asyncio.Event().wait()


def fail() -> None:
    raise Boom("down")


def to_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(breaker.failure_threshold):
        with pytest.raises(Boom):
            breaker.call(fail)
    clock.advance(breaker.timeout)  # the next call is admitted as a trial


# -- call() with an async function ---------------------------------------------------------


def test_call_with_an_async_function_raises_type_error_and_records_nothing(
    clock: FakeClock,
) -> None:
    breaker = make(clock)
    for _ in range(5):  # on main: 5 "successes" of a coroutine nobody awaited
        with pytest.raises(TypeError, match=r"call\(\) cannot await .*upsert_failing.*call_async"):
            breaker.call(upsert_failing)
    assert counts(breaker) == (0, 0, 0, 0)
    assert breaker.state is CLOSED


def test_call_with_a_sync_function_returning_an_awaitable_is_refused_too(
    clock: FakeClock,
) -> None:
    breaker = make(clock, failure_threshold=1)
    with pytest.raises(TypeError, match="returned coroutine"):
        breaker.call(lambda: upsert_failing())
    loop = asyncio.new_event_loop()
    future: asyncio.Future[None] = loop.create_future()
    with pytest.raises(TypeError, match="returned Future"):
        breaker.call(lambda: future)
    loop.close()
    assert counts(breaker) == (0, 0, 0, 0)


def test_a_refusal_names_a_callable_object_by_its_name_when_it_has_no_qualname(
    clock: FakeClock,
) -> None:
    class Client:
        __name__ = "upsert_points"

        def __call__(self) -> Any:
            return upsert_failing()

    client = Client()
    assert not hasattr(client, "__qualname__")
    with pytest.raises(TypeError, match=r"cannot await upsert_points\(\)"):
        make(clock).call(client)


def test_a_refusal_names_a_nameless_callable_by_the_first_80_characters_of_its_repr(
    clock: FakeClock,
) -> None:
    class Nameless:
        def __call__(self) -> Any:
            return upsert_failing()

        def __repr__(self) -> str:
            return "N" * 100

    with pytest.raises(TypeError) as refused:
        make(clock).call(Nameless())
    assert f"cannot await {'N' * 80}, which" in str(refused.value)


def test_a_wrong_form_trial_releases_its_half_open_permit(clock: FakeClock) -> None:
    breaker = make(clock)
    to_half_open(breaker, clock)
    with pytest.raises(TypeError):
        breaker.call(upsert_failing)
    assert breaker.call(lambda: "ok") == "ok", "the trial place was given back"
    assert breaker.stats["success_count"] == 1


def test_the_sync_decorator_refuses_a_function_that_returns_a_coroutine(clock: FakeClock) -> None:
    breaker = make(clock)

    @breaker
    def upsert() -> Any:
        return upsert_failing()

    with pytest.raises(TypeError, match="call_async"):
        upsert()
    assert counts(breaker) == (0, 0, 0, 0)


def test_the_decorator_awaits_a_partial_or_a_callable_object_that_is_async(
    clock: FakeClock,
) -> None:
    breaker = make(clock)

    class Upsert:
        async def __call__(self) -> None:
            raise Boom("qdrant down")

    async def point(value: int) -> int:
        return value

    protected_object = breaker(Upsert())
    protected_partial = breaker(functools.partial(point, 7))

    async def scenario() -> int:
        with pytest.raises(Boom):
            await protected_object()
        return await protected_partial()

    assert asyncio.run(scenario()) == 7
    assert counts(breaker) == (1, 1, 0, 0)  # the failure, then a success that cleared it


# -- call_async() with a sync function -----------------------------------------------------


def test_call_async_with_a_sync_function_raises_type_error_and_never_opens(
    clock: FakeClock,
) -> None:
    breaker = make(clock)
    ran: list[int] = []

    def insert() -> int:
        ran.append(1)
        return 1

    async def scenario() -> None:
        for _ in range(5):  # on main: each TypeError of `await 1` was a failure: open after 2
            with pytest.raises(TypeError, match=r"call_async\(\) needs an async function"):
                await breaker.call_async(insert)  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert counts(breaker) == (0, 0, 0, 0)
    assert breaker.state is CLOSED
    assert len(ran) == 5, "it can only be told from what the function returns"


def test_call_async_of_a_sync_function_in_half_open_gives_the_trial_back(
    clock: FakeClock,
) -> None:
    breaker = make(clock)
    to_half_open(breaker, clock)

    async def ok() -> str:
        return "ok"

    async def scenario() -> str:
        with pytest.raises(TypeError):
            await breaker.call_async(lambda: "sync")  # type: ignore[arg-type,return-value]
        return await breaker.call_async(ok)

    assert asyncio.run(scenario()) == "ok"


def test_call_async_counts_a_client_failing_before_its_first_await(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)

    def connect() -> Any:
        raise Boom("refused while building the request")

    async def scenario() -> None:
        with pytest.raises(Boom):
            await breaker.call_async(connect)

    asyncio.run(scenario())
    assert breaker.state is OPEN


# -- with / async with inside async code ---------------------------------------------------


def test_with_and_async_with_blocks_in_async_code_record_awaited_outcomes(
    clock: FakeClock,
) -> None:
    breaker = make(clock, failure_threshold=2)

    async def scenario() -> None:
        with pytest.raises(Boom), breaker:
            await upsert_failing()
        with pytest.raises(Boom):
            async with breaker:
                await upsert_failing()

    asyncio.run(scenario())
    assert breaker.state is OPEN


# -- fallbacks -----------------------------------------------------------------------------


def test_call_async_awaits_an_async_fallback(clock: FakeClock) -> None:
    async def cached(rejection: CircuitBreakerError) -> str:
        return f"cached ({rejection.name})"

    breaker = make(clock, failure_threshold=1, fallback=cached)

    async def scenario() -> tuple[object, object]:
        with pytest.raises(Boom):
            await breaker.call_async(upsert_failing)
        first = await breaker.call_async(upsert_failing)  # rejected: the fallback answers
        clock.advance(10.0)
        with pytest.raises(Boom):
            await breaker.call_async(upsert_failing)  # the trial fails: open again
        return first, await breaker.call_async(upsert_failing)

    assert asyncio.run(scenario()) == ("cached (qdrant)", "cached (qdrant)")


def test_a_sync_call_with_an_async_fallback_raises_type_error_from_the_rejection(
    clock: FakeClock,
) -> None:
    async def cached(rejection: CircuitBreakerError) -> str:
        return "cached"

    breaker = make(clock, failure_threshold=1, fallback=cached)
    with pytest.raises(Boom):
        breaker.call(fail)
    with pytest.raises(TypeError, match=r"fallback .*cached.* is async") as raised:
        breaker.call(fail)
    assert isinstance(raised.value.__cause__, CircuitBreakerError)
    with pytest.raises(TypeError, match="is async"):
        breaker(fail)()


def test_a_coroutine_the_sync_forms_cannot_await_is_closed_unstarted(clock: FakeClock) -> None:
    """call() refusing an async function, and refusing an async fallback, closes the coroutine:
    it never runs and never warns "was never awaited" (a warning raised while it is collected
    is only printed, so the state is asserted)."""
    made: list[Any] = []

    def upsert() -> Any:
        made.append(upsert_failing())
        return made[-1]

    async def cached_answer() -> str:
        return "cached"

    def cached(rejection: CircuitBreakerError) -> Any:
        made.append(cached_answer())
        return made[-1]

    breaker = make(clock, failure_threshold=1, fallback=cached)
    with pytest.raises(TypeError, match="cannot await"):
        breaker.call(upsert)
    with pytest.raises(Boom):
        breaker.call(fail)
    with pytest.raises(TypeError, match="is async"):
        breaker.call(fail)
    assert [inspect.getcoroutinestate(c) for c in made] == [inspect.CORO_CLOSED] * 2


def test_a_fallback_that_is_not_callable_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match="fallback must be callable"):
        CircuitBreaker("qdrant", fallback="cached")  # type: ignore[arg-type]


# -- listeners -----------------------------------------------------------------------------


def test_an_async_listener_is_awaited_on_the_running_loop(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    seen: list[tuple[CircuitState, CircuitState]] = []

    async def notify(event: StateChange) -> None:
        await asyncio.sleep(0)
        seen.append((event.previous, event.state))

    async def scenario() -> None:
        breaker.add_listener(notify)
        with pytest.raises(Boom):
            await breaker.call_async(upsert_failing)
        assert seen == [], "the transition did not wait for the listener"
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(scenario())
    assert seen == [(CLOSED, OPEN)]


def test_an_async_listener_reaches_its_loop_from_a_worker_thread(clock: FakeClock) -> None:
    """The example service's shape: breakers called in `asyncio.to_thread`, listener added
    from inside the loop (a startup hook)."""
    breaker = make(clock, failure_threshold=1)
    seen: list[tuple[str, int]] = []

    async def scenario() -> None:
        arrived = asyncio.Event()

        async def notify(event: StateChange) -> None:
            seen.append((event.state.value, threading.get_ident()))
            arrived.set()

        breaker.add_listener(notify)
        with pytest.raises(Boom):
            await asyncio.to_thread(breaker.call, fail)
        await asyncio.wait_for(arrived.wait(), 10)

    asyncio.run(scenario())
    assert seen == [("open", threading.get_ident())]


def test_a_running_async_listener_is_kept_alive_until_it_ends(clock: FakeClock) -> None:
    """The loop holds its tasks weakly: a listener waiting on something only it refers to would
    be collected mid-run (its `finally` run early) unless the breaker keeps its task."""
    breaker = make(clock, failure_threshold=1)
    finished: list[str] = []

    async def on_change(event: StateChange) -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            finished.append(event.state.value)

    async def scenario() -> None:
        breaker.add_listener(on_change)
        with pytest.raises(Boom):
            await breaker.call_async(upsert_failing)
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        assert finished == [], "the listener's task was collected while it ran"

    asyncio.run(scenario())
    assert finished == ["open"], "cancelled when the loop closed, like any task"


def test_an_async_listener_that_raises_is_logged_and_changes_nothing(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = make(clock, failure_threshold=1)

    async def broken(event: StateChange) -> None:
        raise RuntimeError("listener bug")

    async def scenario() -> None:
        breaker.add_listener(broken)
        with pytest.raises(Boom):
            await breaker.call_async(upsert_failing)
        for _ in range(3):
            await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR, logger="cbctl.breaker"):
        asyncio.run(scenario())
    assert breaker.state is OPEN
    failed = [r for r in caplog.records if "listener" in r.getMessage() and r.exc_info]
    assert failed
    assert "listener bug" in str(failed[0].exc_info[1])  # type: ignore[index]


def test_an_async_listener_that_cannot_be_called_is_logged_by_name(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An async listener that raises before it returns an awaitable (here: a partial with an
    argument too many) is logged under its own repr, and the transition still happens."""
    breaker = make(clock, failure_threshold=1)

    async def on_change(event: StateChange) -> None:
        pass

    breaker.add_listener(functools.partial(on_change, "one too many"))
    with caplog.at_level(logging.ERROR, logger="cbctl.breaker"), pytest.raises(Boom):
        breaker.call(fail)
    assert breaker.state is OPEN
    (record,) = [r for r in caplog.records if r.exc_info]
    assert "listener functools.partial(<function" in record.getMessage()
    assert "on_change" in record.getMessage()


def test_an_async_listener_with_no_loop_to_run_on_is_logged_not_dropped_silently(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = make(clock, failure_threshold=1)
    seen: list[StateChange] = []

    async def notify(event: StateChange) -> None:
        seen.append(event)

    breaker.add_listener(notify)  # no loop running here, and none at the transition
    breaker.add_listener(lambda event: notify(event))  # a sync def returning a coroutine
    with caplog.at_level(logging.ERROR, logger="cbctl.breaker"), pytest.raises(Boom):
        breaker.call(fail)
    assert breaker.state is OPEN
    assert seen == []
    messages = [r.getMessage() for r in caplog.records]
    assert sum("async listener" in m and "not run" in m for m in messages) == 2


def test_an_async_listener_can_be_removed(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    seen: list[str] = []

    async def removed(event: StateChange) -> None:
        seen.append("removed")

    async def kept(event: StateChange) -> None:
        seen.append("kept")

    async def scenario() -> None:
        breaker.add_listener(removed)
        breaker.add_listener(kept)
        breaker.remove_listener(removed)
        with pytest.raises(Boom):
            await breaker.call_async(upsert_failing)
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(scenario())
    assert seen == ["kept"]


def test_a_listener_that_is_not_callable_is_refused(clock: FakeClock) -> None:
    with pytest.raises(TypeError, match="listener must be callable"):
        make(clock).add_listener("print")  # type: ignore[arg-type]


# -- timeouts: outer cancellation vs call_timeout ------------------------------------------


def test_a_timeout_outside_the_breaker_is_a_neutral_cancellation(clock: FakeClock) -> None:
    """asyncio.timeout / wait_for cancel the call: a hanging dependency never opens the circuit
    this way, and a half-open trial gives its place back."""
    breaker = make(clock, failure_threshold=1)

    async def scenario() -> None:
        for _ in range(3):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(breaker.call_async(hang), TICK)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(TICK):
                await breaker.call_async(hang)

    asyncio.run(scenario())
    assert breaker.state is CLOSED
    assert counts(breaker) == (0, 0, 0, 0)


def test_call_timeout_cancels_an_async_call_and_counts_it_as_a_failure(clock: FakeClock) -> None:
    breaker = make(clock, call_timeout=TICK)
    cancelled: list[bool] = []

    async def hanging() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def scenario() -> CallTimeoutError:
        with pytest.raises(CallTimeoutError):
            await breaker.call_async(hanging)
        with pytest.raises(TimeoutError) as raised:  # a TimeoutError too, for `except` clauses
            await breaker.call_async(hang)
        assert isinstance(raised.value, CallTimeoutError)
        with pytest.raises(CircuitBreakerError):
            await breaker.call_async(hang)
        return raised.value

    error = asyncio.run(scenario())
    assert cancelled == [True]
    assert breaker.state is OPEN
    assert isinstance(error, DependencyError)
    assert error.exit_code == 1
    assert (error.name, error.call_timeout, error.took) == ("qdrant", TICK, None)
    assert breaker.stats["last_error"].startswith("CallTimeoutError: circuit 'qdrant'")


def test_call_timeout_counts_even_when_timeout_errors_are_excluded(clock: FakeClock) -> None:
    """exclude= judges the dependency's own errors; the breaker's own deadline always counts.
    A TimeoutError the function raises itself stays subject to exclude=."""
    breaker = make(clock, call_timeout=TICK, exclude=[TimeoutError], failure_threshold=1)

    async def own_timeout() -> None:
        raise TimeoutError("the client's own")

    async def scenario() -> None:
        with pytest.raises(TimeoutError, match="the client's own"):
            await breaker.call_async(own_timeout)
        assert breaker.state is CLOSED
        with pytest.raises(CallTimeoutError):
            await breaker.call_async(hang)

    asyncio.run(scenario())
    assert breaker.state is OPEN


def test_call_timeout_applies_to_async_decorators_and_async_with(clock: FakeClock) -> None:
    breaker = make(clock, call_timeout=TICK, failure_threshold=2)
    protected = breaker(hang)

    async def scenario() -> None:
        with pytest.raises(CallTimeoutError):
            await protected()
        with pytest.raises(CallTimeoutError):
            async with breaker:
                await hang()

    asyncio.run(scenario())
    assert breaker.state is OPEN


def test_an_outer_timeout_shorter_than_call_timeout_stays_neutral(clock: FakeClock) -> None:
    breaker = make(clock, call_timeout=60.0, failure_threshold=1)

    async def scenario() -> None:
        with pytest.raises(TimeoutError) as raised:
            await asyncio.wait_for(breaker.call_async(hang), TICK)
        assert not isinstance(raised.value, CallTimeoutError)

    asyncio.run(scenario())
    assert counts(breaker) == (0, 0, 0, 0)


def test_a_fast_async_call_under_call_timeout_succeeds(clock: FakeClock) -> None:
    breaker = make(clock, call_timeout=60.0)

    async def point() -> int:
        await asyncio.sleep(0)
        return 3

    assert asyncio.run(breaker.call_async(point)) == 3
    assert counts(breaker) == (1, 0, 0, 0)


def slow(clock: FakeClock, seconds: float) -> Callable[[], str]:
    def call() -> str:
        clock.advance(seconds)
        return "late answer"

    return call


def test_a_sync_call_that_returns_after_call_timeout_is_a_failure(clock: FakeClock) -> None:
    """A thread cannot be interrupted: the call is judged when it returns, its result dropped."""
    breaker = make(clock, call_timeout=2.0)
    assert breaker.call(slow(clock, 2.0)) == "late answer", "at the limit is in time"
    with pytest.raises(CallTimeoutError, match=r"call_timeout=2s \(took 3\.000s\)") as raised:
        breaker.call(slow(clock, 3.0))
    assert raised.value.took == pytest.approx(3.0)
    assert breaker.stats["failure_count"] == 1
    with pytest.raises(CallTimeoutError):
        breaker(slow(clock, 2.5))()
    assert breaker.state is OPEN


def test_a_slow_with_block_is_a_failure_under_call_timeout(clock: FakeClock) -> None:
    breaker = make(clock, call_timeout=1.0, failure_threshold=1)
    with breaker:
        clock.advance(1.0)
    assert breaker.state is CLOSED
    with pytest.raises(CallTimeoutError), breaker:
        clock.advance(1.5)
    assert breaker.state is OPEN


def test_a_slow_half_open_trial_under_call_timeout_reopens(clock: FakeClock) -> None:
    breaker = make(clock, call_timeout=1.0)
    to_half_open(breaker, clock)
    with pytest.raises(CallTimeoutError):
        breaker.call(slow(clock, 5.0))
    assert breaker.state is OPEN


def test_a_sync_error_after_call_timeout_keeps_its_own_classification(clock: FakeClock) -> None:
    breaker = make(clock, call_timeout=1.0, exclude=[KeyError], failure_threshold=1)

    def late_not_found() -> None:
        clock.advance(5.0)
        raise KeyError("no such point")

    with pytest.raises(KeyError):
        breaker.call(late_not_found)
    assert breaker.state is CLOSED


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan"), "2", True])
def test_call_timeout_is_validated_like_the_other_settings(value: object) -> None:
    with pytest.raises(ConfigError, match="call_timeout must be a"):
        CircuitBreaker("qdrant", call_timeout=value)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="call_timeout must be a"):
        CircuitBreakerRegistry(default_config={"call_timeout": value})
    with pytest.raises(ConfigError, match="call_timeout must be a"):
        CircuitBreakerRegistry().get("qdrant", call_timeout=value)


def test_call_timeout_comes_from_the_constructor_the_registry_and_cbctl_toml() -> None:
    assert CircuitBreaker("a").call_timeout is None
    assert CircuitBreaker("a", call_timeout=3).call_timeout == 3.0
    registry = CircuitBreakerRegistry(default_config={"call_timeout": 1.5})
    assert registry.get("a").call_timeout == 1.5
    assert registry.get("b", call_timeout=4.0).call_timeout == 4.0
    with pytest.raises(ConfigError, match="already exists"):
        registry.get("b", call_timeout=5.0)
    config = parse_config(
        "[defaults]\ncall_timeout = 3.0\n"
        '[dependencies.qdrant]\nurl = "http://127.0.0.1:6333"\ncall_timeout = 0.5\n'
        '[dependencies.pg]\nkind = "postgresql"\nurl = "postgresql://127.0.0.1/x"\n',
        environ={},
    )
    from_file = CircuitBreakerRegistry.from_config(config)
    assert from_file.get("qdrant").call_timeout == 0.5
    assert from_file.get("pg").call_timeout == 3.0
    assert from_file.get("not-in-the-file").call_timeout == 3.0
    built_in = CircuitBreakerRegistry.from_config(parse_config("", environ={}))
    assert built_in.get("redis").call_timeout == 2.0, "the documented default call_timeout"


# -- nested breakers -----------------------------------------------------------------------


def test_an_inner_breakers_rejection_is_neutral_for_the_outer_breaker(clock: FakeClock) -> None:
    inner = CircuitBreaker("postgresql", failure_threshold=1, clock=clock)
    outer = CircuitBreaker("pipeline", failure_threshold=1, clock=clock)
    with pytest.raises(Boom):
        inner.call(fail)

    def step() -> None:
        inner.call(fail)

    for _ in range(3):  # on main: the first rejection opened the outer circuit
        with pytest.raises(CircuitBreakerError, match="'postgresql'"):
            outer.call(step)

    async def async_step() -> None:
        await inner.call_async(upsert_failing)

    async def scenario() -> None:
        with pytest.raises(CircuitBreakerError):
            await outer.call_async(async_step)

    asyncio.run(scenario())
    assert outer.state is CLOSED
    assert outer.stats["failures"] == 0


def test_an_inner_rejection_gives_the_outer_half_open_trial_back(clock: FakeClock) -> None:
    inner = CircuitBreaker("postgresql", failure_threshold=1, timeout=100.0, clock=clock)
    outer = make(clock)
    to_half_open(outer, clock)
    with pytest.raises(Boom):
        inner.call(fail)
    with pytest.raises(CircuitBreakerError):
        outer.call(inner.call, fail)
    assert outer.state is HALF_OPEN
    assert outer.call(lambda: "ok") == "ok"


def test_call_timeout_and_a_call_observer_share_one_measurement(clock: FakeClock) -> None:
    """A call observer sees a call judged by call_timeout once, with the outcome it was given."""
    breaker = make(clock, call_timeout=2.0, failure_threshold=5)
    seen: list[tuple[float, str]] = []
    breaker.add_call_observer(lambda circuit, took, outcome: seen.append((took, outcome)))
    breaker.call(slow(clock, 1.0))
    with pytest.raises(CallTimeoutError):
        breaker.call(slow(clock, 3.0))
    with breaker:
        clock.advance(0.5)

    assert seen == [(1.0, "success"), (3.0, "failure"), (0.5, "success")]
    assert breaker.stats["failures"] == 1

    # The async deadline is asyncio's real timer: a breaker of its own with a short one.
    hurried = make(clock, call_timeout=0.01, failure_threshold=5)
    hurried.add_call_observer(lambda circuit, took, outcome: seen.append((took, outcome)))

    async def scenario() -> None:
        with pytest.raises(CallTimeoutError):
            await hurried.call_async(hang)

    asyncio.run(scenario())
    assert [outcome for _, outcome in seen[3:]] == ["failure"]
    assert hurried.stats["failures"] == 1
