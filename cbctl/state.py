"""The circuit-breaker state machine as pure functions over immutable snapshots.

Nothing here does I/O or reads a clock: every function takes `now` (seconds, in the time base of
whoever keeps the state: a process's monotonic clock in memory, wall-clock UTC in a shared store)
and returns a new `Snapshot`. The in-process breaker, the memory store and the SQLite store all
apply these same functions; the Redis store mirrors them in Lua and is held to them by the store
contract tests.

Permits tie an outcome to the generation it was admitted in. Every transition bumps the
generation, so the result of a call admitted before a reset, a re-open or a close is recorded as
history (last failure) but never moves the new state.

In HALF_OPEN every trial holds a lease of its own: an id (the count of trials admitted in this
generation) and a deadline `timeout` seconds after its admission. A lease ends when its trial
reports (success, failure, neutral end) or when its deadline passes; either way it frees exactly
its own place, and admitting a trial never extends another one's lease. A success or neutral end
that arrives after its lease ended (the trial was slower than `timeout`) is stale like an outcome
of a past generation: it neither frees a place nor counts toward closing. A late failure of a
trial of the present half-open generation still re-opens the circuit: it is evidence that the
dependency is down, and re-opening never lets more calls through.

An operator hold (`force`) may carry an expiry (`hold_until`, in the keeper's time base), a reason
and an owner. Every operation first ends an expired hold exactly as `reset` does (CLOSED,
counters cleared, new generation), then does its own work; so the first operation at or after
the expiry, by any process, ends the hold for all of them. Readers that only show the state
apply `expire` too, so a hold never shows past its expiry.

Open-duration backoff (`backoff_factor`, `max_timeout`, `jitter`; off by default): an OPEN lasts
`open_duration` seconds instead of `timeout`. Tripping from CLOSED starts at `timeout`; each
half-open trial that fails multiplies the nominal duration (`backoff`) by the factor, up to
`max_timeout`; `jitter` shortens each open by a fraction `jitter x draw` of it, where `draw` in
[0, 1) is given by the caller (a random number in production, chosen in tests), so the stores and
the pure functions agree. A failure may carry `delay`, the seconds the dependency asked for (an
HTTP Retry-After): the open then lasts at least that long, never past `max_timeout`. A close,
reset or hold forgets the backoff.

Rate policies (`failure_rate_threshold`, `slow_call_rate_threshold` over the last
`window_calls` calls; off by default) count CLOSED calls in a window that every transition
clears. The window keeps how many calls it holds (`window_count`, at most N) and the failed and
the slow ones among them as bit masks (bit i: the call i calls ago). Once the window holds
`minimum_calls`, a failure opens the circuit when either rate has reached its threshold, a slow
success when the slow-call rate has: a success in time never opens a circuit. The consecutive
`failure_threshold` keeps working alongside. A write-back after a store outage (`reconcile`)
adds to the consecutive count only: the calls it reports were never in the shared window.
A call slower than `slow_call_duration` is slow whether it succeeded or failed.

A time window (`window_seconds` T instead of `window_calls`) keeps the last T seconds in
WINDOW_BUCKETS buckets of T / WINDOW_BUCKETS each (`window_buckets`: newest first, only buckets
that hold calls, each (bucket number, calls, failures, slow calls), bucket number =
floor(now / width) in the keeper's time base). A call therefore leaves the window between
0.9 T and T after it was made; the rates and `minimum_calls` count only the buckets still in it,
so a long idle gap empties the window. The trip rules are the count window's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any, Final, Protocol, Self

from cbctl.errors import ConfigError
from cbctl.limits import seconds

__all__ = [
    "MAX_HOLD_SECONDS",
    "MAX_REASON",
    "MAX_WINDOW_CALLS",
    "MIN_WINDOW_SECONDS",
    "WINDOW_BUCKETS",
    "BreakerConfig",
    "CircuitState",
    "CircuitStore",
    "Lease",
    "Outage",
    "Permit",
    "Snapshot",
    "StoredCircuit",
    "Update",
    "admit",
    "count_calls",
    "decode_buckets",
    "decode_leases",
    "decode_marks",
    "encode_buckets",
    "encode_leases",
    "encode_marks",
    "expire",
    "force",
    "held_buckets",
    "hold_stats",
    "hold_terms",
    "live_leases",
    "open_span",
    "rebase",
    "reconcile",
    "record_failure",
    "record_success",
    "release",
    "reset",
    "retry_after",
    "window_rates",
]


class CircuitState(StrEnum):
    """The three states of a circuit; the values are what JSON and the state file carry."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


CLOSED: Final = CircuitState.CLOSED
OPEN: Final = CircuitState.OPEN
HALF_OPEN: Final = CircuitState.HALF_OPEN

MAX_HOLD_SECONDS: Final = 30 * 86400.0
"""The longest operator hold (`force_open(for_=...)`, `cbctl force-open --for`): a month."""
MAX_REASON: Final = 200
"""The longest reason a hold keeps (it is shown in every table and /health answer)."""
MAX_WINDOW_CALLS: Final = 10_000
"""The largest count window: its masks stay small and a store's script walks it in microseconds."""
WINDOW_BUCKETS: Final = 10
"""A time window's buckets: T is kept to a tenth of it, and a store walks at most ten entries."""
MIN_WINDOW_SECONDS: Final = 0.1
"""The shortest time window: 10 ms buckets keep bucket numbers exact in a Lua double."""
DEFAULT_MINIMUM_CALLS: Final = 100
"""`minimum_calls` of a time window when not set (resilience4j's minimumNumberOfCalls)."""


def hold_terms(for_: object, reason: object) -> tuple[float | None, str | None]:
    """A hold's length and reason, checked: seconds in (0, MAX_HOLD_SECONDS] or None (until
    reset), text of at most MAX_REASON characters or None (blank: None)."""
    span = None
    if for_ is not None:
        span = seconds(for_, "for_", most=MAX_HOLD_SECONDS)
    if reason is None:
        return span, None
    if not isinstance(reason, str):
        raise ConfigError(f"reason must be text, got {type(reason).__name__}")
    text = reason.strip()
    if len(text) > MAX_REASON:
        raise ConfigError(f"reason must be at most {MAX_REASON} characters, got {len(text)}")
    return span, text or None


def hold_stats(snapshot: Snapshot, until: str | None) -> dict[str, Any]:
    """The stats keys of a hold: reason, owner and expiry (`until`, as shown; None: until
    reset); all None when the circuit is not held."""
    if not snapshot.forced:
        return {"hold_reason": None, "hold_owner": None, "hold_until": None}
    return {
        "hold_reason": snapshot.hold_reason,
        "hold_owner": snapshot.hold_owner,
        "hold_until": until,
    }


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")


def _rate(name: str, value: object) -> float | None:
    if value is None:
        return None
    rate = _number(name, value)
    if not 0 < rate <= 1:
        raise ConfigError(f"{name} must be above 0 and at most 1, got {rate:g}")
    return rate


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Breaker settings; the defaults are the original specification's 5 / 30 s / 2.

    Open-duration backoff is off unless `backoff_factor` > 1, `max_timeout` or `jitter` is set;
    without `max_timeout` the backoff stops at 10 x `timeout`. The rate policies are off unless
    `window_calls` (or `window_seconds`, never both) is set, with `failure_rate_threshold`
    and/or `slow_call_rate_threshold` (the latter with `slow_call_duration`); `minimum_calls`
    defaults to a count window's size, and to DEFAULT_MINIMUM_CALLS for a time window.

    `call_timeout` (seconds, None: off) is how long one call may take before it counts as a
    failure; it is the breaker's business only (stores neither keep nor need it).
    """

    failure_threshold: int = 5
    timeout: float = 30.0
    success_threshold: int = 2
    half_open_max_calls: int = 1
    backoff_factor: float = 1.0
    max_timeout: float | None = None
    jitter: float = 0.0
    call_timeout: float | None = None
    failure_rate_threshold: float | None = None
    window_calls: int | None = None
    minimum_calls: int | None = None
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float | None = None
    window_seconds: float | None = None

    def __post_init__(self) -> None:
        _positive_int("failure_threshold", self.failure_threshold)
        _positive_int("success_threshold", self.success_threshold)
        _positive_int("half_open_max_calls", self.half_open_max_calls)
        object.__setattr__(self, "timeout", seconds(self.timeout, "timeout"))
        if self.call_timeout is not None:
            object.__setattr__(self, "call_timeout", seconds(self.call_timeout, "call_timeout"))
        factor = _number("backoff_factor", self.backoff_factor)
        if factor < 1:
            raise ConfigError(f"backoff_factor must be at least 1, got {factor:g}")
        object.__setattr__(self, "backoff_factor", factor)
        jitter = _number("jitter", self.jitter)
        if not 0 <= jitter < 1:
            raise ConfigError(f"jitter must be at least 0 and below 1, got {jitter:g}")
        object.__setattr__(self, "jitter", jitter)
        if self.max_timeout is not None:
            cap = _number("max_timeout", self.max_timeout)
            if cap < self.timeout or cap > MAX_HOLD_SECONDS:
                raise ConfigError(
                    f"max_timeout must be at least timeout ({self.timeout:g}) and at most "
                    f"{MAX_HOLD_SECONDS:.0f} seconds, got {cap:g}"
                )
            object.__setattr__(self, "max_timeout", cap)
        self._check_window()

    def _check_window(self) -> None:
        """The rate policies' settings: each in range, and none without what it needs."""
        rate = _rate("failure_rate_threshold", self.failure_rate_threshold)
        object.__setattr__(self, "failure_rate_threshold", rate)
        slow_rate = _rate("slow_call_rate_threshold", self.slow_call_rate_threshold)
        object.__setattr__(self, "slow_call_rate_threshold", slow_rate)
        if self.slow_call_duration is not None:
            slow = seconds(self.slow_call_duration, "slow_call_duration")
            object.__setattr__(self, "slow_call_duration", slow)
        window = self.window_calls
        span = self.window_seconds
        if window is not None and span is not None:
            raise ConfigError(
                "window_calls and window_seconds are two kinds of window; set one of them"
            )
        if span is not None:
            span = seconds(span, "window_seconds")
            if span < MIN_WINDOW_SECONDS:
                raise ConfigError(
                    f"window_seconds must be at least {MIN_WINDOW_SECONDS:g}, got {span:g}"
                )
            object.__setattr__(self, "window_seconds", span)
            if rate is None and slow_rate is None:
                raise ConfigError(
                    "window_seconds needs failure_rate_threshold or slow_call_rate_threshold"
                )
        elif window is not None:
            _positive_int("window_calls", window)
            if window > MAX_WINDOW_CALLS:
                raise ConfigError(f"window_calls must be at most {MAX_WINDOW_CALLS}, got {window}")
            if rate is None and slow_rate is None:
                raise ConfigError(
                    "window_calls needs failure_rate_threshold or slow_call_rate_threshold"
                )
        elif rate is not None or slow_rate is not None or self.minimum_calls is not None:
            needs = "failure_rate_threshold" if rate is not None else "slow_call_rate_threshold"
            if rate is None and slow_rate is None:
                needs = "minimum_calls"
            raise ConfigError(
                f"{needs} needs window_calls or window_seconds (the calls the rate is taken over)"
            )
        if self.minimum_calls is not None:
            _positive_int("minimum_calls", self.minimum_calls)
            if window is not None and self.minimum_calls > window:
                raise ConfigError(
                    f"minimum_calls must be at most window_calls ({window}), "
                    f"got {self.minimum_calls}"
                )
        if (slow_rate is None) != (self.slow_call_duration is None):
            if slow_rate is None:
                raise ConfigError("slow_call_duration needs slow_call_rate_threshold")
            raise ConfigError("slow_call_rate_threshold needs slow_call_duration")

    @property
    def windowed(self) -> bool:
        """Whether the rate policies are on (CLOSED calls are counted in a window)."""
        return self.window_calls is not None or self.window_seconds is not None

    @property
    def least_calls(self) -> int:
        """Calls the window must hold before a rate counts: `minimum_calls`, else a count
        window's size (a time window's DEFAULT_MINIMUM_CALLS)."""
        if self.minimum_calls is not None:
            return self.minimum_calls
        if self.window_seconds is not None:
            return DEFAULT_MINIMUM_CALLS
        return self.window_calls or 1

    @property
    def backs_off(self) -> bool:
        """Whether the open-duration policy is on (an OPEN may last other than `timeout`)."""
        return self.backoff_factor > 1 or self.jitter > 0 or self.max_timeout is not None

    @property
    def open_cap(self) -> float:
        """The longest an OPEN lasts: `max_timeout`, else 10 x timeout with a backoff factor."""
        if self.max_timeout is not None:
            return self.max_timeout
        return self.timeout * 10 if self.backoff_factor > 1 else self.timeout

    @classmethod
    def from_mapping(
        cls, settings: Mapping[str, Any], base: BreakerConfig | None = None
    ) -> BreakerConfig:
        """Settings from a dict (e.g. `default_config=`), unknown keys refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(
                f"unknown breaker setting {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        return replace(base or cls(), **settings)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


Lease = tuple[int, float]
"""One half-open trial's place: (lease id, deadline in the keeper's time base)."""
Bucket = tuple[int, int, int, int]
"""A time window's bucket: its number, calls, failed calls and slow calls."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a circuit remembers, at one instant.

    Times `opened_at`, `changed_at` and the lease deadlines are in the keeper's time base;
    `last_failure_at` is always wall-clock UTC seconds, because it is shown to people.
    `leases` are the half-open trials in flight, oldest first (an expired one stays listed until
    the next admission drops it, but no longer holds a place); `trials_admitted` numbers them.
    A hold by force may end at `hold_until` (keeper's time base; None: held until reset) and
    carries who made it and why (`hold_owner`, `hold_reason`; shown to people, sanitised there).
    With backoff on, `open_duration` is how long the present (or last) OPEN lasts and `backoff`
    its nominal length before jitter and a requested delay; both None: `timeout`, no backoff.
    With a window on, `window_count` is how many CLOSED calls it holds and `failure_bits` /
    `slow_bits` mark the failed / slow ones (bit i: i calls ago); a time window keeps
    `window_buckets` instead (packed: see `held_buckets`, which lists them newest first).
    """

    state: CircuitState = CLOSED
    failure_count: int = 0
    success_count: int = 0
    generation: int = 0
    leases: tuple[Lease, ...] = ()
    trials_admitted: int = 0
    opened_at: float | None = None
    changed_at: float | None = None
    forced: bool = False
    last_failure_at: float | None = None
    last_error: str | None = None
    hold_until: float | None = None
    hold_reason: str | None = None
    hold_owner: str | None = None
    backoff: float | None = None
    open_duration: float | None = None
    window_count: int = 0
    failure_bits: int = 0
    slow_bits: int = 0
    window_buckets: tuple[int, ...] = ()


INITIAL: Final = Snapshot()


@dataclass(frozen=True, slots=True)
class Permit:
    """Admission to one call: the generation it belongs to and, for a half-open trial, the id of
    its lease (0: not a trial)."""

    generation: int
    lease: int = 0

    @property
    def trial(self) -> bool:
        return self.lease != 0


@dataclass(frozen=True, slots=True)
class Outage:
    """What a breaker learnt on its own while its store did not answer, to write back on return.

    `known_generation` is the store's generation when it was lost (None: never seen), so what
    happened in the store meanwhile (a reset, another process's write-back) wins. `failures` are
    the consecutive failures counted in-process while CLOSED; `ops` the ids of their writes, some
    of which may have reached the store although the client gave up waiting; `open_for` the
    seconds left of an OPEN the breaker holds (None when it is not open).
    """

    known_generation: int | None
    failures: int = 0
    open_for: float | None = None
    error: str | None = None
    ops: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Update:
    """The outcome of one atomic operation on a circuit: the state before and after, at `now`."""

    before: Snapshot
    after: Snapshot
    now: float
    permit: Permit | None = None


@dataclass(frozen=True, slots=True)
class StoredCircuit:
    """A circuit as a store keeps it: the snapshot, the settings last used with it, and `now`."""

    name: str
    snapshot: Snapshot
    config: BreakerConfig
    now: float


def _enter(snapshot: Snapshot, state: CircuitState, now: float, **changes: Any) -> Snapshot:
    """A transition: new state, new generation, no trials in flight."""
    return replace(
        snapshot,
        state=state,
        generation=snapshot.generation + 1,
        changed_at=now,
        leases=(),
        trials_admitted=0,
        window_count=0,
        failure_bits=0,
        slow_bits=0,
        window_buckets=(),
        **changes,
    )


def encode_marks(bits: int) -> str:
    """The text form stores keep a window's mask in: the set bits' ages, ascending ("0 3 17")."""
    ages = []
    age = 0
    while bits:
        if bits & 1:
            ages.append(str(age))
        bits >>= 1
        age += 1
    return " ".join(ages)


def decode_marks(text: str) -> int:
    """A window's mask from its text form (ValueError when it is not one)."""
    bits = 0
    for item in text.split():
        age = int(item)
        if not 0 <= age < MAX_WINDOW_CALLS:
            raise ValueError(f"window mark {age} is outside any window")
        bits |= 1 << age
    return bits


def held_buckets(snapshot: Snapshot) -> tuple[Bucket, ...]:
    """A time window's buckets, newest first, as (number, calls, failures, slow calls)."""
    packed = snapshot.window_buckets
    if not packed:
        return ()
    newest = packed[0]
    return tuple(
        (newest - packed[i], packed[i + 1], packed[i + 2], packed[i + 3])
        for i in range(1, len(packed), 4)
    )


def _packed(buckets: Iterable[Bucket]) -> tuple[int, ...]:
    """Buckets (newest first) in the snapshot's form: the newest bucket's number, then each
    bucket's age and counts, all in one tuple of mostly small (shared) ints, so that a window of
    ten buckets costs ~400 bytes rather than ~1.2 KB of nested tuples."""
    listed = list(buckets)
    if not listed:
        return ()
    newest = listed[0][0]
    return (newest, *(part for n, c, f, s in listed for part in (newest - n, c, f, s)))


def encode_buckets(packed: tuple[int, ...]) -> str:
    """The text form stores keep a time window in: "number:calls:failures:slow", newest first."""
    held = held_buckets(Snapshot(window_buckets=packed))
    return " ".join(":".join(str(part) for part in bucket) for bucket in held)


def decode_buckets(text: str) -> tuple[int, ...]:
    """A time window (the snapshot's form) from its text form (ValueError when it is not one)."""
    buckets = []
    for item in text.split():
        try:
            number, calls, failures, slow = (int(part) for part in item.split(":"))
        except ValueError as error:
            raise ValueError(f"window bucket {item!r} is not number:calls:failures:slow") from error
        if not 0 <= failures <= calls or not 0 <= slow <= calls or calls < 1:
            raise ValueError(f"window bucket {item!r} counts more failed or slow calls than calls")
        buckets.append((number, calls, failures, slow))
    if len(buckets) > WINDOW_BUCKETS or any(a[0] <= b[0] for a, b in itertools.pairwise(buckets)):
        raise ValueError("window buckets are not the newest first, at most ten")
    return _packed(buckets)


def _bucket_number(config: BreakerConfig, now: float) -> int:
    """The bucket `now` falls in (the stores' scripts compute it with the same two divisions)."""
    assert config.window_seconds is not None
    return math.floor(now / (config.window_seconds / WINDOW_BUCKETS))


def _stamp(
    snapshot: Snapshot, config: BreakerConfig, now: float, calls: int, failures: int, slow: int
) -> Snapshot:
    """`calls` more CLOSED calls at `now` in the time window, buckets older than the newest by
    WINDOW_BUCKETS falling out (a late fold's calls go to their own, older bucket)."""
    number = _bucket_number(config, now)
    held = held_buckets(snapshot)
    newest = max(number, held[0][0]) if held else number
    kept = {bucket[0]: bucket[1:] for bucket in held if newest - bucket[0] < WINDOW_BUCKETS}
    if newest - number < WINDOW_BUCKETS:
        was = kept.get(number, (0, 0, 0))
        kept[number] = (was[0] + calls, was[1] + failures, was[2] + slow)
    buckets = ((at, *kept[at]) for at in sorted(kept, reverse=True))
    return replace(snapshot, window_buckets=_packed(buckets))


def _tally(
    snapshot: Snapshot, config: BreakerConfig, now: float, *, failed: bool, slow: bool
) -> Snapshot:
    """One more CLOSED call in the window: the oldest falls out once it holds N (a count
    window) or once its bucket is older than the window (a time window)."""
    size = config.window_calls
    if size is None:
        if config.window_seconds is None:
            return snapshot
        return _stamp(snapshot, config, now, 1, int(failed), int(slow))
    full = (1 << size) - 1
    return replace(
        snapshot,
        window_count=min(size, snapshot.window_count + 1),
        failure_bits=((snapshot.failure_bits << 1) | failed) & full,
        slow_bits=((snapshot.slow_bits << 1) | slow) & full,
    )


def count_calls(
    snapshot: Snapshot, config: BreakerConfig, calls: int, now: float | None = None
) -> Snapshot:
    """`calls` more fast CLOSED successes in the window, at once: the same as recording each
    (an in-process breaker counts them without a lock and adds them here when it next decides).
    A time window needs `now`, the time of the calls (they all fall in its bucket)."""
    size = config.window_calls
    if calls <= 0 or snapshot.state is not CLOSED:
        return snapshot
    if size is None:
        if config.window_seconds is None:
            return snapshot
        if now is None:
            raise ValueError("a time window counts calls at a time: pass now")
        return _stamp(snapshot, config, now, calls, 0, 0)
    if calls >= size:
        return replace(snapshot, window_count=size, failure_bits=0, slow_bits=0)
    full = (1 << size) - 1
    return replace(
        snapshot,
        window_count=min(size, snapshot.window_count + calls),
        failure_bits=(snapshot.failure_bits << calls) & full,
        slow_bits=(snapshot.slow_bits << calls) & full,
    )


def window_rates(
    snapshot: Snapshot, config: BreakerConfig, now: float | None = None
) -> tuple[float | None, float | None]:
    """The failure rate and slow-call rate over the window (0..1), each None while the window
    holds fewer than `minimum_calls` calls (or its policy is off). A time window counts the
    buckets still in it at `now` (None: every bucket it holds, as just after a call)."""
    if config.window_seconds is not None:
        buckets = held_buckets(snapshot)
        if now is not None and buckets:
            newest = max(_bucket_number(config, now), buckets[0][0])
            buckets = tuple(b for b in buckets if newest - b[0] < WINDOW_BUCKETS)
        count = sum(bucket[1] for bucket in buckets)
        failed = sum(bucket[2] for bucket in buckets)
        slowed = sum(bucket[3] for bucket in buckets)
    elif config.window_calls is not None:
        count = snapshot.window_count
        failed, slowed = snapshot.failure_bits.bit_count(), snapshot.slow_bits.bit_count()
    else:
        return None, None
    if count < config.least_calls or not count:
        return None, None
    failures = None
    if config.failure_rate_threshold is not None:
        failures = failed / count
    slow = None
    if config.slow_call_rate_threshold is not None:
        slow = slowed / count
    return failures, slow


def _rate_trips(snapshot: Snapshot, config: BreakerConfig, *, failed: bool = True) -> bool:
    """Whether the window's slow-call rate, or after a failure its failure rate, has reached
    its threshold."""
    failures, slow = window_rates(snapshot, config)
    threshold = config.failure_rate_threshold
    if failed and failures is not None and threshold is not None and failures >= threshold:
        return True
    threshold = config.slow_call_rate_threshold
    return slow is not None and threshold is not None and slow >= threshold


def live_leases(snapshot: Snapshot, now: float) -> tuple[Lease, ...]:
    """The trial leases that still hold a place at `now`."""
    return tuple(lease for lease in snapshot.leases if now < lease[1])


def encode_leases(leases: tuple[Lease, ...]) -> str:
    """The text form stores keep leases in: "id:deadline" pairs separated by spaces."""
    return " ".join(f"{lease}:{deadline!r}" for lease, deadline in leases)


def decode_leases(text: str) -> tuple[Lease, ...]:
    """Leases from their text form (ValueError when it is not one)."""
    leases = []
    for item in text.split():
        lease, _, deadline = item.partition(":")
        leases.append((int(lease), float(deadline)))
    return tuple(leases)


def _holds(snapshot: Snapshot, permit: Permit, now: float) -> bool:
    """Whether a trial permit's lease is still live (the trial still holds its place)."""
    return any(lease[0] == permit.lease and now < lease[1] for lease in snapshot.leases)


def _without(snapshot: Snapshot, permit: Permit) -> tuple[Lease, ...]:
    return tuple(lease for lease in snapshot.leases if lease[0] != permit.lease)


def rebase(snapshot: Snapshot, delta: float) -> Snapshot:
    """The same snapshot in another time base (a store's wall clock -> a monotonic clock)."""

    def shift(moment: float | None) -> float | None:
        return None if moment is None else moment + delta

    return replace(
        snapshot,
        opened_at=shift(snapshot.opened_at),
        changed_at=shift(snapshot.changed_at),
        hold_until=shift(snapshot.hold_until),
        leases=tuple((lease, deadline + delta) for lease, deadline in snapshot.leases),
    )


def retry_after(snapshot: Snapshot, config: BreakerConfig, now: float) -> float | None:
    """Seconds until the circuit admits another call: an OPEN circuit's remaining timeout, or in
    HALF_OPEN with every place taken the time until the earliest live lease ends (sooner if its
    trial reports). None when a call would be admitted now, or the circuit is held open by force
    until reset; a hold that expires answers the time until its expiry.
    """
    snapshot = expire(snapshot, now)
    if snapshot.state is OPEN and snapshot.forced and snapshot.hold_until is not None:
        return max(0.0, snapshot.hold_until - now)
    if snapshot.state is HALF_OPEN:
        live = live_leases(snapshot, now)
        if len(live) < config.half_open_max_calls:
            return None
        return max(0.0, min(deadline for _, deadline in live) - now)
    if snapshot.state is not OPEN or snapshot.forced or snapshot.opened_at is None:
        return None
    return max(0.0, snapshot.opened_at + open_span(snapshot, config) - now)


def open_span(snapshot: Snapshot, config: BreakerConfig) -> float:
    """Seconds the circuit's present (or last) OPEN lasts: `timeout` unless backoff is on."""
    return config.timeout if snapshot.open_duration is None else snapshot.open_duration


def _opening(
    config: BreakerConfig, nominal: float, draw: float, delay: float | None
) -> dict[str, float | None]:
    """The backoff fields of a circuit that opens now for `nominal` seconds before jitter and a
    requested `delay` (no fields of its own when backoff is off)."""
    if not config.backs_off:
        return {"backoff": None, "open_duration": None}
    span = nominal * (1.0 - config.jitter * draw)
    if delay is not None and delay > span:
        span = min(delay, config.open_cap)
    return {"backoff": nominal, "open_duration": span}


def admit(snapshot: Snapshot, config: BreakerConfig, now: float) -> tuple[Snapshot, Permit | None]:
    """Decide whether a call may run now; None means rejected (the function must not be called).

    OPEN past its timeout becomes HALF_OPEN and the caller gets the first trial. In HALF_OPEN at
    most `half_open_max_calls` trials hold a live lease; each lease lasts `timeout` seconds, after
    which a trial that never reported back (its process died, or it is still running) no longer
    holds its place. A rejection changes nothing (so it never writes).
    """
    snapshot = expire(snapshot, now)
    state = snapshot.state
    if state is CLOSED:
        return snapshot, Permit(snapshot.generation)
    if state is OPEN:
        if snapshot.forced or retry_after(snapshot, config, now):
            return snapshot, None
        half_open = _enter(snapshot, HALF_OPEN, now, success_count=0)
        half_open = replace(half_open, leases=((1, now + config.timeout),), trials_admitted=1)
        return half_open, Permit(half_open.generation, 1)
    live = live_leases(snapshot, now)
    if len(live) >= config.half_open_max_calls:
        return snapshot, None
    lease = snapshot.trials_admitted + 1
    admitted = replace(
        snapshot, leases=(*live, (lease, now + config.timeout)), trials_admitted=lease
    )
    return admitted, Permit(snapshot.generation, lease)


def _current(snapshot: Snapshot, permit: Permit | None, now: float, *, late: bool = False) -> bool:
    """Whether an outcome still belongs to the circuit's present: its generation, and for a
    half-open trial its lease, which must still be live (unless `late` outcomes count).

    A permit of None stands for a call admitted by the lock-free CLOSED fast path: it counts
    while the circuit is still CLOSED.
    """
    if permit is None:
        return snapshot.state is CLOSED
    if permit.generation != snapshot.generation:
        return False
    if snapshot.state is HALF_OPEN:
        return permit.trial and (late or _holds(snapshot, permit, now))
    return True


def record_success(
    snapshot: Snapshot,
    config: BreakerConfig,
    permit: Permit | None,
    now: float,
    *,
    slow: bool = False,
) -> Snapshot:
    """A protected call succeeded; a half-open trial frees its place and counts toward closing.

    With a window on, a CLOSED success is counted in it; a `slow` one (slower than
    `slow_call_duration`) may open the circuit on the slow-call rate.
    """
    snapshot = expire(snapshot, now)
    if not _current(snapshot, permit, now):
        return snapshot
    if snapshot.state is CLOSED:
        if config.windowed:
            counted = replace(
                _tally(snapshot, config, now, failed=False, slow=slow), failure_count=0
            )
            if slow and not snapshot.forced and _rate_trips(counted, config, failed=False):
                return _trip(counted, config, now, 0.0, None)
            return counted
        return replace(snapshot, failure_count=0) if snapshot.failure_count else snapshot
    if snapshot.state is HALF_OPEN and permit is not None:
        successes = snapshot.success_count + 1
        if successes >= config.success_threshold:
            return _enter(
                snapshot,
                CLOSED,
                now,
                failure_count=0,
                success_count=0,
                opened_at=None,
                backoff=None,
                open_duration=None,
            )
        return replace(snapshot, success_count=successes, leases=_without(snapshot, permit))
    return snapshot


def record_failure(
    snapshot: Snapshot,
    config: BreakerConfig,
    permit: Permit | None,
    now: float,
    wall: float,
    error: str,
    *,
    delay: float | None = None,
    draw: float = 0.0,
    slow: bool = False,
) -> Snapshot:
    """A protected call failed: count it, and open the circuit when the threshold is reached
    (the consecutive one, or with a window on a failure or slow-call rate).

    The failure is remembered as the last failure even when it is stale (its generation has
    passed): it is still a fact about the dependency. A half-open trial that fails after its
    lease ended still re-opens the circuit (fail-safe), for the backed-off duration. `delay`
    (seconds the dependency asked for) and `draw` (in [0, 1), the jitter's random number) matter
    only when this failure opens the circuit and backoff is on.
    """
    snapshot = expire(snapshot, now)
    noted = replace(snapshot, last_failure_at=wall, last_error=error)
    if not _current(snapshot, permit, now, late=True):
        return noted
    if snapshot.state is CLOSED:
        failures = snapshot.failure_count + 1
        noted = replace(noted, failure_count=failures)
        if config.windowed:
            noted = _tally(noted, config, now, failed=True, slow=slow)
        if not snapshot.forced and (
            failures >= config.failure_threshold or (config.windowed and _rate_trips(noted, config))
        ):
            return _trip(noted, config, now, draw, delay)
        return noted
    if snapshot.state is HALF_OPEN:
        nominal = config.timeout if snapshot.backoff is None else snapshot.backoff
        nominal = min(config.open_cap, nominal * config.backoff_factor)
        return _enter(
            noted,
            OPEN,
            now,
            failure_count=snapshot.failure_count,
            success_count=0,
            opened_at=now,
            **_opening(config, nominal, draw, delay),
        )
    return noted


def _trip(
    snapshot: Snapshot, config: BreakerConfig, now: float, draw: float, delay: float | None
) -> Snapshot:
    """CLOSED -> OPEN, for `timeout` (or the backoff's first open duration)."""
    return _enter(
        snapshot,
        OPEN,
        now,
        success_count=0,
        opened_at=now,
        **_opening(config, config.timeout, draw, delay),
    )


def release(snapshot: Snapshot, permit: Permit | None, now: float) -> Snapshot:
    """A call ended neutrally (excluded error, cancellation): give back its trial place, once."""
    snapshot = expire(snapshot, now)
    if permit is None or not permit.trial or not _current(snapshot, permit, now):
        return snapshot
    return replace(snapshot, leases=_without(snapshot, permit))


def _cleared(snapshot: Snapshot, now: float) -> Snapshot:
    return _enter(
        snapshot,
        CLOSED,
        now,
        failure_count=0,
        success_count=0,
        opened_at=None,
        forced=False,
        hold_until=None,
        hold_reason=None,
        hold_owner=None,
        backoff=None,
        open_duration=None,
    )


def expire(snapshot: Snapshot, now: float) -> Snapshot:
    """End a hold whose expiry has come, exactly like a reset; anything else is unchanged."""
    until = snapshot.hold_until
    if snapshot.forced and until is not None and now >= until:
        return _cleared(snapshot, now)
    return snapshot


def reset(snapshot: Snapshot, now: float) -> Snapshot:
    """Manual reset: CLOSED, counters cleared, any hold lifted; the last failure stays."""
    return _cleared(expire(snapshot, now), now)


def force(
    snapshot: Snapshot,
    state: CircuitState,
    now: float,
    *,
    until: float | None = None,
    reason: str | None = None,
    owner: str | None = None,
) -> Snapshot:
    """Hold the circuit OPEN (rejecting everything) or CLOSED (never tripping) until reset, or
    until `until` when given; a new hold replaces any earlier one."""
    if state is HALF_OPEN:
        raise ValueError("a circuit can be forced open or closed, not half-open")
    opened_at = now if state is OPEN else None
    return _enter(
        expire(snapshot, now),
        state,
        now,
        failure_count=0,
        success_count=0,
        opened_at=opened_at,
        forced=True,
        hold_until=until,
        hold_reason=reason,
        hold_owner=owner,
        backoff=None,
        open_duration=None,
    )


def reconcile(
    snapshot: Snapshot, config: BreakerConfig, outage: Outage, now: float, applied: int = 0
) -> Snapshot:
    """Write back what a breaker learnt while its store was unreachable.

    `applied` of the outage's failures already reached the store (a write whose answer was lost)
    and are not counted again. Nothing is written over a hold by force, or when the store moved
    on meanwhile (its generation is not the one the breaker last saw: a reset, a close, or
    another process's write-back won). Otherwise a CLOSED circuit takes the failures (opening at
    its threshold), an OPEN the breaker holds is written back with the time it has left, and an
    OPEN circuit keeps the later of the two deadlines. With backoff on, the time left is bounded
    by `max_timeout` and a written-back OPEN starts its backoff afresh.
    """
    snapshot = expire(snapshot, now)
    if snapshot.forced or (
        outage.known_generation is not None and snapshot.generation != outage.known_generation
    ):
        return snapshot
    failures = max(0, outage.failures - applied)
    backs_off = config.backs_off
    open_for = outage.open_for
    if open_for is not None and not 0 < open_for <= config.open_cap:
        open_for = None if open_for <= 0 else config.open_cap
    span = open_for if open_for is not None and backs_off else config.timeout
    opened_at = None if open_for is None else now - (span - open_for)
    if snapshot.state is OPEN:
        held = snapshot.opened_at
        if open_for is None or opened_at is None or held is None:
            return snapshot
        if snapshot.open_duration is None and not backs_off:
            return replace(snapshot, opened_at=opened_at) if opened_at > held else snapshot
        until = now + open_for
        if until > held + open_span(snapshot, config):
            return replace(snapshot, open_duration=until - held)
        return snapshot
    if snapshot.state is not CLOSED or (failures == 0 and opened_at is None):
        return snapshot
    noted = snapshot
    if failures:
        noted = replace(snapshot, last_failure_at=now, last_error=outage.error)
    count = snapshot.failure_count + failures
    if opened_at is None and count >= config.failure_threshold:
        opened_at = now
    if opened_at is not None:
        backoff = {"backoff": config.timeout, "open_duration": span} if backs_off else {}
        return _enter(
            noted, OPEN, now, failure_count=count, success_count=0, opened_at=opened_at, **backoff
        )
    return replace(noted, failure_count=count)


class CircuitStore(Protocol):
    """Shared state for circuits: each method is one atomic operation across every process.

    A store applies the functions of this module (or their exact mirror) in its own time base,
    returned as `now` by `clock_now()`. Methods raise `StoreUnavailableError` when the store
    cannot be reached; the breaker then keeps protecting calls with its in-process state.
    """

    @property
    def url(self) -> str:
        """Where the state lives, passwords redacted (shown in stats and errors)."""
        ...

    def clock_now(self) -> float:
        """The store's present time, in the base its snapshots use."""
        ...

    def load(self, name: str) -> StoredCircuit | None: ...

    def load_all(self) -> list[StoredCircuit]: ...

    def admit(self, name: str, config: BreakerConfig) -> Update: ...

    def record_success(
        self, name: str, config: BreakerConfig, permit: Permit | None, slow: bool = False
    ) -> Update:
        """`slow`: the call took longer than `slow_call_duration` (`state.record_success`)."""
        ...

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
        """`op` names this write, so that a later `reconcile` can tell whether it arrived;
        `delay`, `draw` and `slow` are `state.record_failure`'s (a requested open duration,
        jitter, a call slower than `slow_call_duration`)."""
        ...

    def release(self, name: str, config: BreakerConfig, permit: Permit | None) -> Update: ...

    def reconcile(self, name: str, config: BreakerConfig, outage: Outage) -> Update: ...

    def reset(self, name: str, config: BreakerConfig | None = None) -> Update: ...

    def force(
        self,
        name: str,
        config: BreakerConfig,
        state: CircuitState,
        *,
        for_: float | None = None,
        reason: str | None = None,
        owner: str | None = None,
    ) -> Update:
        """Hold the circuit in `state`; with `for_`, until that many seconds from the store's
        now (`force(..., until=now + for_)`)."""
        ...

    def forget(self, name: str) -> bool:
        """Delete the circuit's state (True if there was any); the next call starts afresh."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self:
        """Every store is a context manager that closes it on exit."""
        ...

    def __exit__(self, *exc_info: object) -> None: ...
