"""`CircuitBreaker`: the state machine of `cbctl.state` around calls; thread- and asyncio-safe.

Two paths keep it fast and correct:
- the CLOSED fast path (in-process state only) calls the function with no lock at all and
  touches shared data only when the call fails or follows failures;
- every other path decides under a short lock, or in one atomic store operation, and never
  holds a lock while the protected function runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import getpass
import inspect
import itertools
import logging
import math
import os
import random
import secrets
import socket
import threading
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final, NamedTuple, ParamSpec, TypeVar, cast, overload

from cbctl import state as machine
from cbctl.clock import SYSTEM_CLOCK, Clock, iso_utc
from cbctl.errors import CallTimeoutError, CircuitBreakerError, StoreUnavailableError, UsageError
from cbctl.failures import FailureRules, as_rules
from cbctl.journal import (
    JOURNAL_LIMIT,
    Journaled,
    TransitionEvent,
    error_of,
    next_event_id,
    process_source,
    wall_time,
)
from cbctl.state import (
    BreakerConfig,
    CircuitState,
    CircuitStore,
    Outage,
    Permit,
    Snapshot,
    Update,
)

__all__ = [
    "VIEW_MAX_AGE",
    "CallCounters",
    "CallObserver",
    "CircuitBreaker",
    "Exclusion",
    "StateChange",
    "checked_observer",
    "circuit_stats",
    "policy_stats",
    "requested_delay",
]

logger = logging.getLogger("cbctl.breaker")

P = ParamSpec("P")
R = TypeVar("R")

Exclusion = type[BaseException] | Callable[[BaseException], bool]
"""An exception type, or a predicate, whose errors are neutral: neither failure nor success."""

CallObserver = Callable[[str, float, str], object]
"""`observer(circuit, seconds, outcome)` after each call the breaker let through and timed;
outcome is "success", "failure" or "neutral" (an excluded error). Rejected calls and
cancellations are not timed."""

_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN
_HALF_OPEN: Final = CircuitState.HALF_OPEN

_count_value = itertools.count.__repr__

VIEW_MAX_AGE: Final = 1.0
"""Seconds a store-backed breaker trusts the store's "CLOSED, no failures" without asking again:
how late it may see an open or a reset made by another process (its own failures go through the
store at once)."""

VIEW_GRACE: Final = 0.1
"""While one caller refreshes an expired view, the others keep it for this fraction of its max
age: the bound on staleness is (1 + VIEW_GRACE) x view_max_age, plus one store round trip."""

_op_token = secrets.token_hex(6)
_op_ids = itertools.count(1)


def _new_op_token() -> None:
    """A forked child names its writes apart from its parent's."""
    global _op_token
    _op_token = secrets.token_hex(6)


os.register_at_fork(after_in_child=_new_op_token)


def _counted(counter: itertools.count[int] | _WindowTicks) -> int:
    """The value of an `itertools.count` (lock-free under the GIL) without advancing it."""
    if isinstance(counter, _WindowTicks):
        counter = counter.inner
    text = _count_value(counter)
    return int(text[6:-1])


class _WindowTicks:
    """The successes counter of an in-process breaker with a time window: counted like the
    plain `itertools.count` (`inner`), with one clock read per success. When a success falls
    past the bucket of the ones counted before it (`end`), those are first added to the window
    at `at`, a time in their bucket (a success racing that turn may be counted one bucket late).
    `fast`: the breaker's steady, untimed state, where call() counts here without a lock."""

    __slots__ = ("_breaker", "_clock", "_width", "at", "end", "fast", "inner")

    def __init__(self, breaker: CircuitBreaker, clock: Clock, window_seconds: float) -> None:
        self._breaker = breaker
        self._clock = clock
        self._width = window_seconds / machine.WINDOW_BUCKETS
        self.inner = itertools.count()
        self.at = 0.0
        self.end = -math.inf
        self.fast = False

    def __iter__(self) -> _WindowTicks:
        return self

    def __next__(self) -> int:
        now = self._clock.monotonic()
        if now >= self.end:
            self._breaker._turn_bucket(self, now, (math.floor(now / self._width) + 1) * self._width)
        return next(self.inner)


class _Timed(NamedTuple):
    """The permit of a `with` block that is timed, for call observers or a call_timeout: when it
    began (sync; None when only an async deadline needs it) and the deadline that cancels it
    (`async with` under a call_timeout)."""

    permit: Permit | None
    started: float | None
    deadline: asyncio.Timeout | None


class _OutageLog:
    """What a breaker counted on its own since its store stopped answering (kept under its lock).

    `epoch` moves whenever the counted failures are dropped (a success, a transition), so a
    write-back that raced with that knows which of its failures are still current.
    """

    __slots__ = ("epoch", "failures", "known_generation", "ops")

    def __init__(self, known_generation: int | None) -> None:
        self.known_generation = known_generation
        self.failures = 0
        self.ops: list[str] = []
        self.epoch = 0


@dataclass(frozen=True, slots=True)
class StateChange:
    """One transition, as given to listeners (after the transition, outside any lock)."""

    name: str
    previous: CircuitState
    state: CircuitState
    at: datetime
    failure_count: int


_shared_config = functools.lru_cache(maxsize=256, typed=True)(BreakerConfig)
"""Breakers made with equal settings share one frozen BreakerConfig (a service's breakers mostly
have the same ones): ~150 B less per breaker. `typed`, so 1 and True are told apart."""


class CircuitBreaker:
    """Protects calls to one dependency: fails fast while the dependency is known to be down.

    Use it as `breaker.call(fn, ...)`, `await breaker.call_async(fn, ...)`, a decorator on a sync
    or async function, or `with breaker:` / `async with breaker:`. With a store, `view_max_age`
    is how long a stored "CLOSED, no failures" is trusted without asking the store again.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_closed_fast",
        "_config",
        "_counts_each",
        "_degraded",
        "_entered",
        "_ever_timed",
        "_exclude_predicates",
        "_exclude_types",
        "_failure_rules",
        "_failures",
        "_fallback",
        "_folded",
        "_journal",
        "_listeners",
        "_lock",
        "_observers",
        "_open_until",
        "_outage",
        "_reconciling",
        "_rejections",
        "_snapshot",
        "_steady",
        "_store",
        "_stored",
        "_successes",
        "_timing",
        "_transitions",
        "_view_max_age",
        "_view_until",
        "name",
    )

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        timeout: float = 30.0,
        success_threshold: int = 2,
        half_open_max_calls: int = 1,
        backoff_factor: float = 1.0,
        max_timeout: float | None = None,
        jitter: float = 0.0,
        call_timeout: float | None = None,
        failure_rate_threshold: float | None = None,
        window_calls: int | None = None,
        minimum_calls: int | None = None,
        slow_call_duration: float | None = None,
        slow_call_rate_threshold: float | None = None,
        window_seconds: float | None = None,
        exclude: Iterable[Exclusion] = (),
        clock: Clock | None = None,
        store: CircuitStore | None = None,
        fallback: Callable[[CircuitBreakerError], Any] | None = None,
        config: BreakerConfig | None = None,
        kind: str | FailureRules | None = None,
        view_max_age: float = VIEW_MAX_AGE,
    ) -> None:
        if not isinstance(name, str) or not name:  # a None name would share one store key
            raise UsageError(f"a circuit name must be a non-empty string, got {name!r}")
        if not view_max_age >= 0 or math.isinf(view_max_age):
            raise ValueError(f"view_max_age must be a finite number >= 0, not {view_max_age!r}")
        self.name = name
        self._failure_rules = as_rules(kind)
        self._config = config or _shared_config(
            failure_threshold=failure_threshold,
            timeout=timeout,
            success_threshold=success_threshold,
            half_open_max_calls=half_open_max_calls,
            backoff_factor=backoff_factor,
            max_timeout=max_timeout,
            jitter=jitter,
            call_timeout=call_timeout,
            failure_rate_threshold=failure_rate_threshold,
            window_calls=window_calls,
            minimum_calls=minimum_calls,
            slow_call_duration=slow_call_duration,
            slow_call_rate_threshold=slow_call_rate_threshold,
            window_seconds=window_seconds,
        )
        types: list[type[BaseException]] = []
        predicates: list[Callable[[BaseException], bool]] = []
        for item in exclude:
            if isinstance(item, type):
                if not issubclass(item, BaseException):
                    raise TypeError(f"exclude takes exception types or predicates, not {item!r}")
                types.append(item)
            elif callable(item):
                predicates.append(item)
            else:
                raise TypeError(f"exclude takes exception types or predicates, not {item!r}")
        self._exclude_types = tuple(types)
        self._exclude_predicates = tuple(predicates)
        self._clock = clock or SYSTEM_CLOCK
        self._store = store
        self._stored: Snapshot | None = None
        if fallback is not None and not callable(fallback):
            raise TypeError(f"fallback must be callable, not {fallback!r}")
        self._fallback = fallback
        self._lock = threading.Lock()
        self._snapshot = Snapshot(changed_at=self._clock.monotonic())
        self._observers: tuple[CallObserver, ...] = ()
        # Calls are timed for call observers, or for the slow-call policy (slow_call_duration).
        self._timing = self._config.slow_call_duration is not None
        # whether a `with` block may hold a _Timed permit (timing, an observer, or call_timeout)
        self._ever_timed = self._timing or self._config.call_timeout is not None
        # With a window on in a shared store every success is one write, so the window stays
        # exact across processes; in-process, fast successes are only counted (`_successes`) and
        # `_folded` of them are already in the window (machine.count_calls adds the rest).
        self._counts_each = store is not None and self._config.windowed
        self._folded = 0
        # _steady: in-process and CLOSED with no hold, so admission needs no lock; _closed_fast:
        # that, no timing and no call_timeout, so call() needs neither lock nor clock
        # (kept by _install).
        self._steady = store is None
        self._closed_fast = self._steady and not self._timing and self._config.call_timeout is None
        self._open_until: float | None = None
        # Store-backed only: until this monotonic time, calls run on the store's last answer of
        # "CLOSED, no failures" without a round trip (0.0: ask the store).
        self._view_max_age = view_max_age
        self._view_until = 0.0
        # The permit of each `with` block still open, per thread / asyncio task (innermost last);
        # a `_Timed` one when call observers want the block's duration or it has a call_timeout.
        self._entered: ContextVar[tuple[Any, ...]] = ContextVar("cbctl_entered", default=())
        self._degraded: str | None = None
        self._outage: _OutageLog | None = None
        self._reconciling = threading.Lock() if store is not None else None
        self._listeners: tuple[Callable[[StateChange], object], ...] = ()
        self._journal: deque[TransitionEvent] | None = None  # made on the first transition
        # A time window in-process needs each success's time: its counter reads the clock.
        span = self._config.window_seconds
        self._successes: itertools.count[int] | _WindowTicks = (
            itertools.count()
            if span is None or store is not None
            else _WindowTicks(self, self._clock, span)
        )
        self._rejections = itertools.count()
        self._failures = itertools.count()
        self._transitions = itertools.count()

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state.value}>"

    @property
    def config(self) -> BreakerConfig:
        return self._config

    @property
    def failure_rules(self) -> FailureRules | None:
        """How errors are classified (`kind=`); None: every `Exception` not excluded fails."""
        return self._failure_rules

    @property
    def failure_threshold(self) -> int:
        return self._config.failure_threshold

    @property
    def timeout(self) -> float:
        return self._config.timeout

    @property
    def success_threshold(self) -> int:
        return self._config.success_threshold

    @property
    def call_timeout(self) -> float | None:
        return self._config.call_timeout

    # -- calling -----------------------------------------------------------------------------

    def call(self, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call `func` through the breaker; when open, raise CircuitBreakerError instead.

        For sync functions only: one that returns an awaitable (an `async def`) raises TypeError
        and records nothing, since call() cannot await it; use `await call_async(...)`.
        """
        if self._closed_fast:
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                self._settle_error(None, exc)
                raise
            if result is not None and result.__class__ not in _PLAIN and _awaitable(result):
                self._refuse_awaitable(None, func, result)
            if self._snapshot.failure_count:
                self._settle_success(None)
            else:
                next(self._successes)
            return result
        if self._open_until is not None:
            rejection = self._rejection()
            if rejection is not None:
                if self._fallback is None:
                    raise rejection
                return cast(R, self._sync_fallback(rejection))
        ticks = self._successes
        if ticks.__class__ is _WindowTicks and ticks.fast:
            # a time window's steady path: the _closed_fast one, plus the success's clock read
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                self._settle_error(None, exc)
                raise
            if result is not None and result.__class__ not in _PLAIN and _awaitable(result):
                self._refuse_awaitable(None, func, result)
            if self._snapshot.failure_count or self._clock.monotonic() >= ticks.end:
                self._settle_success(None)
            else:
                next(ticks.inner)
            return result
        try:
            permit = self._admit()
        except CircuitBreakerError as rejection:
            if self._fallback is None:
                raise
            return cast(R, self._sync_fallback(rejection))
        timed = self._timing or self._config.call_timeout is not None
        started = self._clock.monotonic() if timed else None
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._settle_error(permit, exc, started)
            raise
        if result is not None and result.__class__ not in _PLAIN and _awaitable(result):
            self._refuse_awaitable(permit, func, result)
        self._settle_success(permit, started)
        return result

    async def call_async(
        self, func: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await `func(...)` through the breaker; cancellation is neutral and frees a trial.

        Store operations never block the loop: Redis is spoken to with redis.asyncio, a store
        without async methods (the state file) runs in a worker thread.
        """
        if self._steady or (self._view_until and self._clock.monotonic() < self._view_until):
            permit = None
        else:
            try:
                permit = await self._aadmit()
            except CircuitBreakerError as rejection:
                if self._fallback is None:
                    raise
                answer = self._fallback(rejection)
                if _awaitable(answer):
                    answer = await answer
                return cast(R, answer)
        started = self._clock.monotonic() if self._timing else None
        try:
            awaitable: Any = func(*args, **kwargs)
        except BaseException as exc:  # a dependency's client may fail before its first await
            await self._asettle_error(permit, exc, started)
            raise
        if awaitable.__class__ is not _COROUTINE and not inspect.isawaitable(awaitable):
            await self._arelease(permit)
            raise TypeError(
                f"circuit {self.name!r}: call_async() needs an async function, but "
                f"{_name_of(func)} returned {type(awaitable).__name__} (it ran; nothing was "
                "recorded); use breaker.call() for a sync function"
            )
        limit = self._config.call_timeout
        try:
            result: R = await (awaitable if limit is None else self._within(awaitable, limit))
        except BaseException as exc:
            await self._asettle_error(permit, exc, started)
            raise
        if (
            started is None
            and permit is None
            and not self._snapshot.failure_count
            and not self._counts_each
        ):
            next(self._successes)
        else:
            await self._asettle_success(permit, started)
        return result

    @overload
    def __call__(self, func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...

    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, func: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a function; an async function stays async, a sync one stays sync."""
        if _is_async(func):

            @functools.wraps(func)
            async def async_protected(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call_async(func, *args, **kwargs)

            return async_protected

        call = self.call

        # call()'s two lock-free paths are inlined here: the decorator is the most common way in,
        # and one Python frame more costs ~100 ns on success and ~500 ns on a rejection (the
        # frame object a traceback needs).
        @functools.wraps(func)
        def protected(*args: P.args, **kwargs: P.kwargs) -> Any:
            if self._closed_fast:
                try:
                    result = func(*args, **kwargs)
                except BaseException as exc:
                    self._settle_error(None, exc)
                    raise
                if result is not None and result.__class__ not in _PLAIN and _awaitable(result):
                    self._refuse_awaitable(None, func, result)
                if self._snapshot.failure_count:
                    self._settle_success(None)
                else:
                    next(self._successes)
                return result
            if self._open_until is not None:
                rejection = self._rejection()
                if rejection is not None:
                    if self._fallback is None:
                        raise rejection
                    return self._sync_fallback(rejection)
            ticks = self._successes
            if ticks.__class__ is _WindowTicks and ticks.fast:
                try:
                    result = func(*args, **kwargs)
                except BaseException as exc:
                    self._settle_error(None, exc)
                    raise
                if result is not None and result.__class__ not in _PLAIN and _awaitable(result):
                    self._refuse_awaitable(None, func, result)
                if self._snapshot.failure_count or self._clock.monotonic() >= ticks.end:
                    self._settle_success(None)
                else:
                    next(ticks.inner)
                return result
            return call(func, *args, **kwargs)

        return protected

    def __enter__(self) -> CircuitBreaker:
        permit = self._admit()
        if self._closed_fast or not (self._timing or self._config.call_timeout is not None):
            self._entered.set((*self._entered.get(), permit))
        else:
            self._entered.set((*self._entered.get(), _Timed(permit, self._clock.monotonic(), None)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        permit = self._pop_permit()
        started = None
        if self._ever_timed and permit.__class__ is _Timed:
            permit, started, _ = permit
        if exc is None:
            self._settle_success(permit, started)
        else:
            self._settle_error(permit, exc, started)

    async def __aenter__(self) -> CircuitBreaker:
        permit = await self._aadmit()
        limit = self._config.call_timeout
        deadline = None
        if limit is not None:
            deadline = asyncio.timeout(limit)
            await deadline.__aenter__()
        started = self._clock.monotonic() if self._timing else None
        timed = started is not None or deadline is not None
        entry = _Timed(permit, started, deadline) if timed else permit
        self._entered.set((*self._entered.get(), entry))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        permit = self._pop_permit()
        started = deadline = None
        if self._ever_timed and permit.__class__ is _Timed:
            permit, started, deadline = permit
        if deadline is not None:
            try:
                await deadline.__aexit__(exc_type, exc, traceback)
            except TimeoutError as expired:
                error = self._timed_out()
                await self._asettle_error(permit, error, started)
                raise error from expired
        if exc is None:
            await self._asettle_success(permit, started)
        else:
            await self._asettle_error(permit, exc, started)

    def _pop_permit(self) -> Any:
        """The innermost open block's permit: Permit | None, or a _Timed one."""
        entered = self._entered.get()
        if not entered:
            raise RuntimeError(f"circuit {self.name!r} exited without being entered")
        self._entered.set(entered[:-1])
        return entered[-1]

    # -- call forms and call_timeout --------------------------------------------------------

    def _refuse_awaitable(self, permit: Permit | None, func: object, result: object) -> None:
        """call() got an awaitable: it cannot await it, so nothing is recorded (a coroutine is
        closed unstarted) and TypeError tells the caller which form to use."""
        if result.__class__ is _COROUTINE:
            cast(Coroutine[Any, Any, Any], result).close()
        self._release(permit)
        raise TypeError(
            f"circuit {self.name!r}: call() cannot await {_name_of(func)}, which returned "
            f"{type(result).__name__} (nothing was recorded); use "
            "`await breaker.call_async(fn, ...)`, or decorate the async def"
        )

    def _sync_fallback(self, rejection: CircuitBreakerError) -> Any:
        """The fallback's answer for a sync caller; an async fallback cannot be awaited here."""
        assert self._fallback is not None
        answer = self._fallback(rejection)
        if answer.__class__ not in _PLAIN and _awaitable(answer):
            if answer.__class__ is _COROUTINE:
                answer.close()
            raise TypeError(
                f"circuit {self.name!r} is open and its fallback {_name_of(self._fallback)} is "
                "async: a sync call() cannot await it; use `await breaker.call_async(...)`"
            ) from rejection
        return answer

    async def _within(self, awaitable: Awaitable[R], limit: float) -> R:
        """Await `awaitable` for at most `limit` seconds; past that it is cancelled and the call
        fails with CallTimeoutError (a timeout of the caller's own stays a cancellation)."""
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                return await awaitable
        except TimeoutError as expired:
            if not deadline.expired():
                raise  # the function's own TimeoutError, classified as any other error
            raise self._timed_out() from expired

    def _timed_out(self, took: float | None = None) -> CallTimeoutError:
        limit = self._config.call_timeout
        assert limit is not None
        return CallTimeoutError(self.name, limit, took)

    def allows_call(self) -> bool:
        """Whether a call made now would be admitted, without raising and without taking a permit.

        For callers that must not pay for an exception; in HALF_OPEN the answer is advisory, since
        another caller may take the last trial place first.
        """
        if self._steady:
            return True
        open_until = self._open_until
        if open_until is not None and self._clock.monotonic() < open_until:
            return False
        if self._view_until and self._clock.monotonic() < self._view_until:
            return True
        if self._store is not None and self._degraded is None:
            stored = self._load()
            if stored is not None:
                snapshot, now = stored
                return machine.admit(snapshot, self._config, now)[1] is not None
        snapshot = self._snapshot
        if snapshot.state is _CLOSED:
            return True
        return machine.admit(snapshot, self._config, self._clock.monotonic())[1] is not None

    # -- admission and outcomes ---------------------------------------------------------------

    def _admit(self) -> Permit | None:
        """A permit for one call, or CircuitBreakerError. None is a CLOSED fast-path permit."""
        if self._steady:
            return None
        if self._store is not None:
            if self._on_view():
                return None  # the local view: CLOSED with no failures, recently confirmed
            update = self._store_op(lambda store: store.admit(self.name, self._config))
            if update is not None:
                if update.permit is None:
                    self._reject(update.after, update.now)
                return update.permit
        return self._admit_locally()

    async def _aadmit(self) -> Permit | None:
        """`_admit` for async callers: the store operation is awaited, never run on the loop."""
        if self._steady:
            return None
        if self._store is not None:
            if self._on_view():
                return None
            update = await self._astore_op("admit")
            if update is not None:
                if update.permit is None:
                    self._reject(update.after, update.now)
                return update.permit
        return self._admit_locally()

    def _on_view(self) -> bool:
        """Whether the local view admits this call. The caller that finds it just expired
        refreshes it through the store, while the others go on using it for a short grace
        (`VIEW_GRACE` of its max age): one refresh at a time, not one per concurrent caller."""
        until = self._view_until
        if not until:
            return False
        now = self._clock.monotonic()
        if now < until:
            return True
        self._view_until = now + self._view_max_age * VIEW_GRACE
        return False

    def _admit_locally(self) -> Permit | None:
        """Admission decided in-process (no store, or the store did not answer)."""
        rejection = self._rejection()
        if rejection is not None:
            raise rejection
        with self._lock:
            now = self._clock.monotonic()
            before = self._snapshot
            after, permit = machine.admit(before, self._config, now)
            self._install(after)
        self._announce(before, after)
        if permit is None:
            self._reject(after, now)
        return permit

    def _rejection(self) -> CircuitBreakerError | None:
        """The refusal of an in-process circuit that is OPEN inside its timeout, decided without
        a lock from the deadline `_install` keeps; None when the general path must decide."""
        open_until = self._open_until
        if open_until is None:
            return None
        now = self._clock.monotonic()
        if now >= open_until:
            return None
        next(self._rejections)
        return CircuitBreakerError(self.name, None if open_until == math.inf else open_until - now)

    def _reject(self, snapshot: Snapshot, now: float) -> None:
        next(self._rejections)
        raise CircuitBreakerError(self.name, machine.retry_after(snapshot, self._config, now))

    def _settle_success(self, permit: Permit | None, started: float | None = None) -> None:
        """Record a success, timed from `started` for call observers; a sync call that outlasted
        call_timeout is a failure instead, and raises CallTimeoutError (its result is dropped)."""
        slow = False
        if started is None:
            next(self._successes)
        else:
            took = self._clock.monotonic() - started
            limit = self._config.call_timeout
            if limit is not None and took > limit:
                error = self._timed_out(took)
                slow = self._timed(took, "failure")
                self._settle_error(permit, error, slow=slow)
                raise error
            next(self._successes)
            slow = self._timed(took, "success")
        if permit is None and not (self._snapshot.failure_count or slow or self._counts_each):
            return  # a fast-path success with no failures to clear changes nothing
        if self._store is not None:
            if self._unchanged_by_success(permit):
                return
            update = self._store_op(
                lambda store: store.record_success(self.name, self._config, permit, slow)
            )
            if update is not None:
                return
        self._succeed_locally(permit, slow)

    async def _asettle_success(self, permit: Permit | None, started: float | None = None) -> None:
        next(self._successes)
        slow = False
        if started is not None:
            slow = self._timed(self._clock.monotonic() - started, "success")
        if permit is None and not (self._snapshot.failure_count or slow or self._counts_each):
            return
        if self._store is not None:
            if self._unchanged_by_success(permit):
                return
            if await self._astore_op("record_success", permit, slow) is not None:
                return
        self._succeed_locally(permit, slow)

    def _unchanged_by_success(self, permit: Permit | None) -> bool:
        """Whether a success leaves the stored circuit as it is (so it is not written): a CLOSED
        call with no failures to clear and no window to count it in."""
        if permit is None or permit.trial or self._counts_each:
            return False
        return not self._snapshot.failure_count

    def _timed(self, took: float, outcome: str) -> bool:
        """Report a timed call to the call observers; whether it was a slow call."""
        self._observe(took, outcome)
        slow = self._config.slow_call_duration
        return slow is not None and took > slow

    def _succeed_locally(self, permit: Permit | None, slow: bool = False) -> None:
        with self._lock:
            before = self._snapshot
            now = self._clock.monotonic()
            after = machine.record_success(
                self._fold(before, 1), self._config, permit, now, slow=slow
            )
            self._install(after)
            self._note_local(before, after)
        self._announce(before, after)

    def _fold(self, snapshot: Snapshot, own: int) -> Snapshot:
        """`snapshot` with the fast successes counted since the last fold in its window (called
        with the lock held; `own`: those of them the caller records itself)."""
        if self._store is not None or not self._config.windowed:
            return snapshot
        counted = _counted(self._successes)
        pending = counted - self._folded - own
        self._folded = counted
        ticks = self._successes
        at = ticks.at if isinstance(ticks, _WindowTicks) else None
        return machine.count_calls(snapshot, self._config, pending, at)

    def _turn_bucket(self, ticks: _WindowTicks, now: float, end: float) -> None:
        """A success in a new bucket of the time window: the successes counted before it go
        into the window first, at the time of their own bucket."""
        with self._lock:
            self._install(self._fold(self._snapshot, 0))
            ticks.at, ticks.end = now, end

    def _settle_error(
        self,
        permit: Permit | None,
        exc: BaseException,
        started: float | None = None,
        *,
        slow: bool = False,
    ) -> None:
        """Record a failure (or a neutral end), timed from `started`; `slow` for a call timed
        by the caller (a sync call past its call_timeout)."""
        took = None if started is None else self._clock.monotonic() - started
        failed = self._is_failure(exc)
        if took is not None and isinstance(exc, Exception):
            slow = self._timed(took, "failure" if failed else "neutral")
        if not failed:
            self._release(permit)
            return
        next(self._failures)
        error = _describe(exc)
        delay, draw = requested_delay(exc), self._draw()
        op = None
        if self._store is not None:
            op = f"{_op_token}-{next(_op_ids)}"
            update = self._store_op(
                lambda store: store.record_failure(
                    self.name, self._config, permit, error, op, delay, draw, slow
                )
            )
            if update is not None:
                return
        self._fail_locally(permit, error, op, delay, draw, slow)

    async def _asettle_error(
        self, permit: Permit | None, exc: BaseException, started: float | None = None
    ) -> None:
        took = None if started is None else self._clock.monotonic() - started
        failed = self._is_failure(exc)
        slow = False
        if took is not None and isinstance(exc, Exception):
            slow = self._timed(took, "failure" if failed else "neutral")
        if not failed:
            await self._arelease(permit)
            return
        next(self._failures)
        error = _describe(exc)
        delay, draw = requested_delay(exc), self._draw()
        op = None
        if self._store is not None:
            op = f"{_op_token}-{next(_op_ids)}"
            update = await self._astore_op("record_failure", permit, error, op, delay, draw, slow)
            if update is not None:
                return
        self._fail_locally(permit, error, op, delay, draw, slow)

    def _draw(self) -> float:
        """The jitter's random number for a failure that may open the circuit (0: no jitter)."""
        return random.random() if self._config.jitter else 0.0  # noqa: S311 - not a secret

    def _fail_locally(
        self,
        permit: Permit | None,
        error: str,
        op: str | None,
        delay: float | None,
        draw: float,
        slow: bool = False,
    ) -> None:
        with self._lock:
            before = self._snapshot
            after = machine.record_failure(
                self._fold(before, 0),
                self._config,
                permit,
                self._clock.monotonic(),
                self._clock.wall(),
                error,
                delay=delay,
                draw=draw,
                slow=slow,
            )
            self._install(after)
            self._note_local(before, after, op)
        self._announce(before, after)

    def _release(self, permit: Permit | None) -> None:
        if permit is None or not permit.trial:
            return
        if self._store is not None:
            update = self._store_op(lambda store: store.release(self.name, self._config, permit))
            if update is not None:
                return
        with self._lock:
            self._install(machine.release(self._snapshot, permit, self._clock.monotonic()))

    async def _arelease(self, permit: Permit | None) -> None:
        if permit is None or not permit.trial:
            return
        if self._store is not None and await self._astore_op("release", permit) is not None:
            return
        with self._lock:
            self._install(machine.release(self._snapshot, permit, self._clock.monotonic()))

    def _is_failure(self, exc: BaseException) -> bool:
        """Only a non-excluded `Exception` that the kind's rules call a failure counts;
        KeyboardInterrupt and cancellation are neutral, and so is another breaker's rejection
        (a nested breaker: this call's dependency was not the one found down). This breaker's
        own call_timeout always counts. Runs only when a call raised."""
        if not isinstance(exc, Exception):
            return False
        if isinstance(exc, CircuitBreakerError):
            return False
        if exc.__class__ is CallTimeoutError and exc.name == self.name:
            return True
        if self._exclude_types and isinstance(exc, self._exclude_types):
            return False
        if any(predicate(exc) for predicate in self._exclude_predicates):
            return False
        rules = self._failure_rules
        return rules is None or rules.is_failure(exc)

    def _install(self, snapshot: Snapshot) -> None:
        """Make `snapshot` current; called with the lock held (or from a store's answer)."""
        in_process = self._store is None
        if in_process and snapshot.generation != self._snapshot.generation:
            self._folded = _counted(self._successes)  # a transition starts an empty window
        self._snapshot = snapshot
        self._open_until = _open_until(snapshot, self._config) if in_process else None
        self._steady = in_process and snapshot.state is _CLOSED and snapshot.hold_until is None
        fast = self._steady and not self._timing and self._config.call_timeout is None
        ticks = self._successes
        if ticks.__class__ is _WindowTicks:  # a time window: call() counts through _WindowTicks
            ticks.fast, fast = fast, False
        self._closed_fast = fast

    # -- shared store ---------------------------------------------------------------------------

    def _store_op(self, operation: Callable[[CircuitStore], Update]) -> Update | None:
        """Run one store operation; on an unreachable store, note it and return None (degrade).

        After an outage, what the breaker learnt on its own is written back first; until that
        succeeds the breaker stays on its in-process state.
        """
        store = self._store
        assert store is not None
        try:
            if self._outage is not None and not self._write_back(store):
                return None
            update = operation(store)
        except StoreUnavailableError as error:
            self._lose(error)
            return None
        self._degraded = None
        self._adopt(update)
        return update

    async def _astore_op(self, method: str, *args: Any) -> Update | None:
        """`_store_op` for async callers: the store's `a`-prefixed method if it has one (Redis),
        else the blocking method in a worker thread, so the event loop never waits on I/O."""
        store = self._store
        assert store is not None
        try:
            if self._outage is not None and not await self._awrite_back(store):
                return None
            update = await _on_store(store, method, self.name, self._config, *args)
        except StoreUnavailableError as error:
            self._lose(error)
            return None
        self._degraded = None
        self._adopt(update)
        return update

    def _adopt(self, update: Update) -> None:
        """Make the store's answer the in-process state (in the monotonic time base)."""
        if update.after is not self._stored:
            local = machine.rebase(update.after, self._clock.monotonic() - update.now)
            with self._lock:
                self._install(local)
            self._stored = update.after
        self._view(update.after)
        self._announce(update.before, update.after)

    def _view(self, stored: Snapshot) -> None:
        """Trust a stored "CLOSED, no failures" for `view_max_age`; anything else ends the view.

        A call admitted by the view carries the CLOSED fast-path permit (None): its failure is
        still recorded by the store at once, and counts only while the stored circuit is CLOSED.
        """
        steady = stored.state is _CLOSED and not stored.failure_count and self._outage is None
        if steady and self._view_max_age:
            self._view_until = self._clock.monotonic() + self._view_max_age
        else:
            self._view_until = 0.0

    def _lose(self, error: StoreUnavailableError) -> None:
        """The store did not answer: degrade, and start counting what it must learn later."""
        if self._degraded is None:
            logger.warning(
                "circuit=%s store degraded: %s", self.name, error, extra={"circuit": self.name}
            )
        self._degraded = str(error)
        self._view_until = 0.0
        with self._lock:
            if self._outage is None:
                known = None if self._stored is None else self._stored.generation
                self._outage = _OutageLog(known)
        self._stored = None

    def _note_local(self, before: Snapshot, after: Snapshot, op: str | None = None) -> None:
        """Count a failure decided in-process during an outage (called with the lock held)."""
        log = self._outage
        if log is None:
            return
        if before.state is _CLOSED and after.failure_count == before.failure_count + 1:
            log.failures += 1
            if op is not None:
                log.ops.append(op)
        elif after.failure_count == 0 and (log.failures or log.ops):
            log.failures = 0
            log.ops.clear()
            log.epoch += 1

    def _write_back(self, store: CircuitStore) -> bool:
        """Reconcile the store with what this breaker counted during an outage; False while
        another thread is at it (this call then stays in-process). Raises when the store is
        still unavailable."""
        reconciling = self._reconciling
        assert reconciling is not None
        if not reconciling.acquire(blocking=False):
            return False
        try:
            plan = self._outage_plan()
            if plan is not None:
                self._outage_written(*plan, store.reconcile(self.name, self._config, plan[0]))
            return True
        finally:
            reconciling.release()

    async def _awrite_back(self, store: CircuitStore) -> bool:
        """`_write_back` for async callers."""
        reconciling = self._reconciling
        assert reconciling is not None
        if not reconciling.acquire(blocking=False):
            return False
        try:
            plan = self._outage_plan()
            if plan is not None:
                update = await _on_store(store, "reconcile", self.name, self._config, plan[0])
                self._outage_written(*plan, update)
            return True
        finally:
            reconciling.release()

    def _outage_plan(self) -> tuple[Outage, int] | None:
        """What to write back, and the outage log's epoch it was taken at; None: nothing."""
        with self._lock:
            log = self._outage
            if log is None:
                return None
            snapshot = self._snapshot
            open_for = None
            opened_at = snapshot.opened_at
            if snapshot.state is _OPEN and not snapshot.forced and opened_at is not None:
                span = machine.open_span(snapshot, self._config)
                open_for = opened_at + span - self._clock.monotonic()
            outage = Outage(
                log.known_generation, log.failures, open_for, snapshot.last_error, tuple(log.ops)
            )
            return outage, log.epoch

    def _outage_written(self, outage: Outage, epoch: int, update: Update) -> None:
        """The store took `outage`: drop what it now knows from the log and adopt its answer."""
        with self._lock:
            log = self._outage
            if log is not None and log.epoch == epoch:
                log.failures -= outage.failures
                del log.ops[: len(outage.ops)]
            if log is not None:
                log.known_generation = update.after.generation
                if not log.failures:
                    self._outage = None
        if self._degraded is not None:
            open_for = outage.open_for
            logger.info(
                "circuit=%s store answers again; wrote back %d failure(s)%s",
                self.name,
                outage.failures,
                "" if open_for is None else f" and an open circuit ({open_for:.1f}s left)",
                extra={"circuit": self.name},
            )
        self._degraded = None
        self._adopt(update)

    def _store_now(self) -> float:
        assert self._store is not None
        try:
            return self._store.clock_now()
        except StoreUnavailableError:
            return self._clock.wall()

    def _load(self) -> tuple[Snapshot, float] | None:
        """The store's view of this circuit and the store's `now`, or None if unavailable/absent."""
        assert self._store is not None
        try:
            stored = self._store.load(self.name)
        except StoreUnavailableError as error:
            self._degraded = str(error)
            return None
        if stored is None:
            return Snapshot(), self._store_now()
        return stored.snapshot, stored.now

    # -- transitions and listeners -------------------------------------------------------------

    def add_listener(self, listener: Callable[[StateChange], object]) -> None:
        """Call `listener(StateChange)` after every transition this breaker makes.

        An async listener is awaited without holding up the transition: as a task on the event
        loop running in the thread that made it, else on the loop that was running when the
        listener was added (so add it from inside the service's loop); with neither, it is not
        run and an error is logged. What it raises is logged.
        """
        if not callable(listener):
            raise TypeError(f"a listener must be callable, not {listener!r}")
        if _is_async(listener):
            listener = _AsyncListener(listener, _running_loop())
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Callable[[StateChange], object]) -> None:
        """Stop calling `listener`; compared by equality, since `obj.method` is new each time."""
        with self._lock:
            self._listeners = tuple(item for item in self._listeners if item != listener)

    def add_call_observer(self, observer: CallObserver) -> None:
        """Call `observer(circuit, seconds, outcome)` after each call this breaker times.

        Opt-in: a breaker without observers never reads the clock around a call. Observers run in
        the caller's thread right after the call and must be quick; one that raises is logged.
        """
        checked_observer(observer)
        with self._lock:
            self._observers = (*self._observers, observer)
            self._timing = self._ever_timed = True
            self._install(self._snapshot)

    def remove_call_observer(self, observer: CallObserver) -> None:
        """Stop calling `observer` (compared by equality, like `remove_listener`)."""
        with self._lock:
            self._observers = tuple(item for item in self._observers if item != observer)
            self._timing = bool(self._observers) or self._config.slow_call_duration is not None
            self._install(self._snapshot)

    def _observe(self, took: float, outcome: str) -> None:
        for observer in self._observers:
            try:
                observer(self.name, took, outcome)
            except Exception:
                logger.exception("circuit=%s call observer %r failed", self.name, observer)

    def _announce(self, before: Snapshot, after: Snapshot) -> None:
        """One log record and one listener call per transition; a failing listener is logged."""
        if before.state is after.state:
            return
        next(self._transitions)
        level = logging.WARNING if after.state is _OPEN else logging.INFO
        logger.log(
            level,
            "circuit=%s circuit_state=%s previous=%s failures=%d",
            self.name,
            after.state.value,
            before.state.value,
            after.failure_count,
            extra={
                "circuit": self.name,
                "circuit_state": after.state.value,
                "previous": before.state.value,
                "failures": after.failure_count,
            },
        )
        at = wall_time(self._clock.wall())
        record = TransitionEvent(
            next_event_id(),
            self.name,
            at,
            before.state,
            after.state,
            after.failure_count,
            error_of(after, before, self._clock.monotonic()),
            process_source(),
        )
        with self._lock:
            if self._journal is None:
                self._journal = deque(maxlen=JOURNAL_LIMIT)
            self._journal.append(record)
        if not self._listeners:
            return
        event = StateChange(self.name, before.state, after.state, at, after.failure_count)
        for listener in self._listeners:
            try:
                answer = listener(event)
            except Exception:
                logger.exception("circuit=%s listener %r failed", self.name, listener)
                continue
            if answer is not None and _awaitable(answer):  # a sync def returning a coroutine
                _start_listener(self.name, listener, answer, None)

    def events(self) -> list[TransitionEvent]:
        """The recent transitions of this circuit, oldest first (the last JOURNAL_LIMIT).

        With a shared store, the store's journal: every process's transitions, with their source.
        """
        store = self._store
        if store is not None and self._degraded is None and isinstance(store, Journaled):
            try:
                return store.events(self.name)
            except StoreUnavailableError as error:
                self._degraded = str(error)
        with self._lock:
            return list(self._journal or ())

    # -- manual control and inspection --------------------------------------------------------

    def reset(self) -> None:
        """Back to CLOSED, counters cleared, any force lifted; here and in the store."""
        if self._store is not None:
            config = self._config
            if self._store_op(lambda store: store.reset(self.name, config)) is not None:
                return
        with self._lock:
            before = self._snapshot
            after = machine.reset(before, self._clock.monotonic())
            self._install(after)
            self._note_local(before, after)
        self._announce(before, after)

    def force_open(self, *, for_: float | None = None, reason: str | None = None) -> None:
        """Reject every call until `reset()`, or for `for_` seconds; the recovery timeout does not
        apply. `reason` and the owner (user@host) are kept with the hold and shown with it."""
        self._force(_OPEN, for_, reason)

    def force_closed(self, *, for_: float | None = None, reason: str | None = None) -> None:
        """Admit every call and never trip until `reset()` or for `for_` seconds (e.g. during a
        known-noisy migration); `reason` and the owner are kept like force_open's."""
        self._force(_CLOSED, for_, reason)

    def _force(self, state: CircuitState, for_: float | None, reason: str | None) -> None:
        span, why = machine.hold_terms(for_, reason)
        owner = hold_owner()
        if self._store is not None:
            config = self._config
            if (
                self._store_op(
                    lambda store: store.force(
                        self.name, config, state, for_=span, reason=why, owner=owner
                    )
                )
                is not None
            ):
                return
        with self._lock:
            before = self._snapshot
            now = self._clock.monotonic()
            until = None if span is None else now + span
            after = machine.force(before, state, now, until=until, reason=why, owner=owner)
            self._install(after)
            self._note_local(before, after)
        self._announce(before, after)

    def _current(self) -> tuple[Snapshot, float, float]:
        """The freshest snapshot, `now` in its time base, and the wall-clock offset to convert."""
        if self._store is not None and self._degraded is None:
            stored = self._load()
            if stored is not None:
                snapshot, now = stored
                return snapshot, now, 0.0
        now = self._clock.monotonic()
        return self._snapshot, now, self._clock.wall() - now

    @property
    def state(self) -> CircuitState:
        """The state now (an OPEN circuit past its timeout turns HALF_OPEN on the next call; a
        hold past its expiry shows as the CLOSED it becomes on the next call)."""
        snapshot, now, _ = self._current()
        return machine.expire(snapshot, now).state

    @property
    def stats(self) -> dict[str, Any]:
        """A fresh dict of the circuit's state and counters (the keys README shows, and more)."""
        snapshot, now, to_wall = self._current()
        config = self._config
        if self._store is None and config.windowed:
            pending = _counted(self._successes) - self._folded
            ticks = self._successes
            at = ticks.at if isinstance(ticks, _WindowTicks) else None
            snapshot = machine.count_calls(snapshot, config, pending, at)
        return circuit_stats(
            self.name,
            snapshot,
            config,
            now,
            to_wall=to_wall,
            counters=CallCounters(
                successes=_counted(self._successes),
                failures=_counted(self._failures),
                rejections=_counted(self._rejections),
                transitions=_counted(self._transitions),
            ),
            store="memory" if self._store is None else self._store.url,
            degraded=self._degraded,
        )


class _AsyncListener:
    """An async listener, with the event loop that was running when it was added (or None)."""

    __slots__ = ("home", "listener")

    def __init__(
        self, listener: Callable[[StateChange], object], home: asyncio.AbstractEventLoop | None
    ) -> None:
        self.listener = listener
        self.home = home

    def __call__(self, event: StateChange) -> None:
        _start_listener(event.name, self.listener, self.listener(event), self.home)

    def __eq__(self, other: object) -> bool:  # remove_listener(fn) finds it
        found = other.listener if isinstance(other, _AsyncListener) else other
        return bool(self.listener == found)

    def __hash__(self) -> int:
        return hash(self.listener)

    def __repr__(self) -> str:
        return repr(self.listener)


_LISTENER_RUNS: set[object] = set()
"""Async listener runs in flight: the loop keeps only weak references to its tasks."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _start_listener(
    circuit: str,
    listener: object,
    awaitable: Any,
    home: asyncio.AbstractEventLoop | None,
) -> None:
    """Run an async listener's awaitable on this thread's loop, else on `home`, without waiting
    for it; its exceptions are logged. With no loop to run it on, it is closed and logged."""

    async def run() -> None:
        try:
            await awaitable
        except Exception:
            logger.exception("circuit=%s listener %r failed", circuit, listener)

    loop = _running_loop()
    if loop is not None:
        started: asyncio.Task[None] | concurrent.futures.Future[None] = loop.create_task(run())
    elif home is not None and home.is_running():
        started = asyncio.run_coroutine_threadsafe(run(), home)
    else:
        if awaitable.__class__ is _COROUTINE:
            awaitable.close()
        logger.error(
            "circuit=%s async listener %r not run: no event loop runs in this thread, nor in "
            "the one it was added from (add it from inside the service's event loop)",
            circuit,
            listener,
            extra={"circuit": circuit},
        )
        return
    _LISTENER_RUNS.add(started)
    started.add_done_callback(_LISTENER_RUNS.discard)


@dataclass(frozen=True, slots=True)
class CallCounters:
    """What one process counted of a circuit's calls (stores keep state, not these)."""

    successes: int
    failures: int
    rejections: int
    transitions: int


def circuit_stats(
    name: str,
    snapshot: Snapshot,
    config: BreakerConfig,
    now: float,
    *,
    store: str,
    to_wall: float = 0.0,
    counters: CallCounters | None = None,
    degraded: str | None = None,
) -> dict[str, Any]:
    """The one home of the `stats` keys, for a breaker and for a circuit read from a store.

    `now` and the snapshot's times are in one time base; `to_wall` converts it to wall-clock
    seconds (0 for a store, whose times are wall-clock already). Without `counters` (a circuit
    read from a store) `calls`, `successes`, `failures`, `rejections` and `transitions` are None.
    A hold past its expiry is shown as the CLOSED it becomes on the next operation.
    """
    snapshot = machine.expire(snapshot, now)

    def wall(moment: float | None) -> str | None:
        return None if moment is None else iso_utc(moment + to_wall)

    counted: dict[str, int | None] = dict.fromkeys(
        ("calls", "successes", "failures", "rejections", "transitions")
    )
    if counters is not None:
        counted = {
            "calls": counters.successes + counters.failures + counters.rejections,
            "successes": counters.successes,
            "failures": counters.failures,
            "rejections": counters.rejections,
            "transitions": counters.transitions,
        }
    return {
        "name": name,
        "state": snapshot.state.value,
        "failure_count": snapshot.failure_count,
        "success_count": snapshot.success_count,
        "last_failure": iso_utc(snapshot.last_failure_at),
        "last_error": snapshot.last_error,
        "opened_at": wall(snapshot.opened_at),
        "state_since": wall(snapshot.changed_at),
        "retry_after": machine.retry_after(snapshot, config, now),
        "forced": snapshot.forced,
        **machine.hold_stats(snapshot, wall(snapshot.hold_until)),
        "failure_threshold": config.failure_threshold,
        "success_threshold": config.success_threshold,
        "timeout": config.timeout,
        "half_open_max_calls": config.half_open_max_calls,
        **policy_stats(snapshot, config, now),
        **counted,
        "store": store,
        "degraded": degraded,
    }


def policy_stats(
    snapshot: Snapshot, config: BreakerConfig, now: float | None = None
) -> dict[str, Any]:
    """The stats keys of the optional policies, each present only when its policy is on:
    `failure_rate` and `slow_call_rate` (0..1 over the window, None while it holds fewer than
    `minimum_calls`; a time window's at `now`), `open_duration` (seconds an OPEN lasts now:
    the backed-off one, `timeout` when closed)."""
    shown: dict[str, Any] = {}
    if config.windowed:
        failures, slow = machine.window_rates(snapshot, config, now)
        if config.failure_rate_threshold is not None:
            shown["failure_rate"] = failures
        if config.slow_call_rate_threshold is not None:
            shown["slow_call_rate"] = slow
    if config.backs_off:
        shown["open_duration"] = machine.open_span(snapshot, config)
    return shown


async def _on_store(store: CircuitStore, method: str, *args: Any) -> Update:
    """Run one store operation without blocking the loop: `store.a<method>` when the store has
    it, else `store.<method>` in a worker thread."""
    native = getattr(store, "a" + method, None)
    if native is not None:
        update: Update = await native(*args)
        return update
    update = await asyncio.to_thread(getattr(store, method), *args)
    return update


def _open_until(snapshot: Snapshot, config: BreakerConfig) -> float | None:
    """When an OPEN circuit admits its next trial (inf: held open by force); None if not OPEN."""
    if snapshot.state is not _OPEN or snapshot.opened_at is None:
        return None
    if snapshot.forced:
        return math.inf if snapshot.hold_until is None else snapshot.hold_until
    return snapshot.opened_at + machine.open_span(snapshot, config)


def requested_delay(exc: BaseException) -> float | None:
    """The open duration a failure asks for: its `retry_after` attribute when that is a positive
    finite number of seconds (the httpx transport's failed answers carry an HTTP Retry-After so;
    an inner breaker's `CircuitBreakerError` has one too, but is neutral, never a failure);
    honoured up to `max_timeout`."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def checked_observer(observer: CallObserver) -> CallObserver:
    """`observer`, or TypeError if it cannot be one: it is called, never awaited."""
    if inspect.iscoroutinefunction(observer) or not callable(observer):
        raise TypeError(f"a call observer must be a plain (sync) callable, not {observer!r}")
    return observer


_COROUTINE: Final = types.CoroutineType
_PLAIN: set[type] = {type(None), bool, int, float, str, bytes, tuple, list, dict}
"""Classes whose instances are known not to be awaitable: call() checks each result's class
against this set (one lookup), and looks further only for a class it has not seen."""
_PLAIN_LIMIT: Final = 1024


def _awaitable(value: object) -> bool:
    """Whether `value` can be awaited; a class found not to be is remembered (not generators:
    a generator-based coroutine is awaitable while a plain generator is not)."""
    if inspect.isawaitable(value):
        return True
    cls = value.__class__
    if cls is not types.GeneratorType and len(_PLAIN) < _PLAIN_LIMIT:
        _PLAIN.add(cls)
    return False


def _is_async(func: object) -> bool:
    """An `async def` (also behind functools.partial), or an object whose __call__ is one."""
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(type(func), "__call__", None)  # noqa: B004 - whether __call__ is async
    )


def _name_of(func: object) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return f"{name}()" if isinstance(name, str) else repr(func)[:80]


def hold_owner() -> str:
    """`user@host` of this process, recorded with a hold it makes."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):
        user = "unknown"
    return f"{user}@{socket.gethostname() or 'unknown'}"


def _describe(exc: BaseException) -> str:
    """A short, single-line description of an error for `last_error`."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}"[:200] if text else name
