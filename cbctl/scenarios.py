"""Outage and recovery verification, as the original specification did it by hand, with a verdict.

`run_outage` drives one breaker through: steady state, outage (exactly failure_threshold
failures, then OPEN), fail-fast (rejections, no contact with the dependency), a trial while still
down (HALF_OPEN -> OPEN), recovery (HALF_OPEN -> CLOSED after success_threshold successes), and
no cascade (a second, healthy dependency answers throughout). It returns a typed `Journal` and
never prints; progress goes to an `on_event` callback so the CLI can draw a live timeline.

What the scenario acts on is a `Target`: the real one (`cbctl.targets`) talks to a dependency
through the fault proxy; tests can drive the same scenario in virtual time with a fake target and
a `FakeClock` whose `advance` is the scenario's `sleep`.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cbctl.breaker import CircuitBreaker, StateChange
from cbctl.clock import SYSTEM_CLOCK, Clock
from cbctl.errors import CircuitBreakerError, DependencyError
from cbctl.state import BreakerConfig, CircuitState

__all__ = [
    "Check",
    "Event",
    "FlappingReport",
    "Journal",
    "PassCounts",
    "Target",
    "Transition",
    "run_flapping",
    "run_outage",
]

OPEN = CircuitState.OPEN
CLOSED = CircuitState.CLOSED
HALF_OPEN = CircuitState.HALF_OPEN

FAIL_FAST_CALLS = 20
"""Calls made while OPEN to show that every one is rejected without contacting the dependency."""


class Target(Protocol):
    """A dependency the scenario can call, take down, bring back, and count contacts with."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str:
        """Where it is, passwords redacted (shown in the journal)."""
        ...

    def call(self) -> str:
        """One health call; returns a short answer or raises (DependencyError, OSError...)."""
        ...

    def take_down(self) -> None: ...

    def bring_back(self) -> None: ...

    def contacts(self) -> int:
        """Connections that reached the dependency (or its proxy) so far — measured, not assumed."""
        ...


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Transition:
    previous: CircuitState
    state: CircuitState
    at: float
    """Seconds since the scenario started."""


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the live timeline."""

    at: float
    phase: str
    message: str
    state: CircuitState | None = None


@dataclass(frozen=True, slots=True)
class Journal:
    """The scenario's record: what was checked, what was measured, how the circuit moved."""

    scenario: str
    dependency: str
    target: str
    settings: BreakerConfig
    checks: tuple[Check, ...]
    transitions: tuple[Transition, ...]
    notes: tuple[str, ...] = ()
    measurements: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        """The `simulate --json` object: scenario, dependency, target, passed, checks, and
        transitions."""
        return {
            "scenario": self.scenario,
            "dependency": self.dependency,
            "target": self.target,
            "passed": self.passed,
            "settings": self.settings.as_dict(),
            "notes": list(self.notes),
            "checks": [
                {"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks
            ],
            "transitions": [
                {"from": t.previous.value, "to": t.state.value, "at": round(t.at, 3)}
                for t in self.transitions
            ],
            "measurements": {key: round(value, 6) for key, value in self.measurements.items()},
        }


class _Run:
    """The mutable bookkeeping of one scenario run (kept out of the frozen Journal)."""

    def __init__(
        self,
        clock: Clock,
        on_event: Callable[[Event], object] | None,
    ) -> None:
        self.clock = clock
        self.started = clock.monotonic()
        self.on_event = on_event
        self.checks: list[Check] = []
        self.transitions: list[Transition] = []
        self.measurements: dict[str, float] = {}

    def elapsed(self) -> float:
        return self.clock.monotonic() - self.started

    def event(self, phase: str, message: str, state: CircuitState | None = None) -> None:
        if self.on_event is not None:
            self.on_event(Event(self.elapsed(), phase, message, state))

    def check(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(name, passed, detail))
        self.event(name, ("passed: " if passed else "FAILED: ") + detail)
        return passed

    def on_transition(self, change: StateChange) -> None:
        self.transitions.append(Transition(change.previous, change.state, self.elapsed()))
        self.event("transition", f"{change.previous.value} -> {change.state.value}", change.state)


def _attempt(breaker: CircuitBreaker, target: Target) -> tuple[str, str]:
    """One call through the breaker: ("success"|"failure"|"rejected", detail)."""
    try:
        return "success", breaker.call(target.call)
    except CircuitBreakerError as rejection:
        return "rejected", str(rejection)
    except Exception as error:
        return "failure", str(error) or type(error).__name__


def run_outage(
    target: Target,
    healthy: Target,
    settings: BreakerConfig,
    *,
    expect: BreakerConfig | None = None,
    clock: Clock | None = None,
    sleep: Callable[[float], object] = time.sleep,
    on_event: Callable[[Event], object] | None = None,
    notes: tuple[str, ...] = (),
) -> Journal:
    """Run the outage -> fail fast -> recovery scenario against `target`; see the module doc.

    `settings` configure the breaker under test; `expect` (default: the same) is what the checks
    hold it to, so a breaker configured wrongly makes the verdict say no. The target is always
    brought back, even when a check fails or the run is interrupted.
    """
    clock = clock or SYSTEM_CLOCK
    expect = expect or settings
    run = _Run(clock, on_event)
    breaker = CircuitBreaker(target.name, config=settings, clock=clock)
    bystander = CircuitBreaker(healthy.name, config=settings, clock=clock)
    breaker.add_listener(run.on_transition)
    bystander_results: list[str] = []

    def bystander_call() -> None:
        bystander_results.append(_attempt(bystander, healthy)[0])

    down = False
    try:
        if not _steady(run, breaker, target):
            return _journal(run, target, settings, notes)
        bystander_call()
        down = True  # before: an interrupted --stop-cmd may have stopped it halfway
        try:
            target.take_down()
        except DependencyError as error:  # the outage never began: blame that, not the breaker
            run.check("outage begins", False, str(error))
            return _journal(run, target, settings, notes)
        run.event("outage", f"{target.name} taken down")
        if _opens(run, breaker, target, expect, bystander_call):
            _fails_fast(run, breaker, target)
            bystander_call()
            _trial_reopens(run, breaker, target, expect, sleep)
            bystander_call()
        target.bring_back()
        down = False
        run.event("recovery", f"{target.name} brought back")
        _recovers(run, breaker, target, expect, sleep, bystander_call)
    finally:
        if down:
            target.bring_back()
    answered = bystander_results.count("success")
    run.check(
        "no cascade",
        answered == len(bystander_results) and bystander.state is CLOSED,
        f"{healthy.name} answered {answered} of {len(bystander_results)} calls through its own "
        f"breaker, which stayed {bystander.state.value}",
    )
    return _journal(run, target, settings, notes)


def _journal(run: _Run, target: Target, settings: BreakerConfig, notes: tuple[str, ...]) -> Journal:
    return Journal(
        scenario="outage",
        dependency=target.name,
        target=target.address,
        settings=settings,
        checks=tuple(run.checks),
        transitions=tuple(run.transitions),
        notes=notes,
        measurements=run.measurements,
    )


def _steady(run: _Run, breaker: CircuitBreaker, target: Target) -> bool:
    """The dependency answers and the circuit is CLOSED; without that, nothing else can be shown."""
    started = run.clock.monotonic()
    outcome, detail = _attempt(breaker, target)
    latency = (run.clock.monotonic() - started) * 1000
    run.measurements["steady_latency_ms"] = latency
    return run.check(
        "steady state",
        outcome == "success" and breaker.state is CLOSED,
        f"{target.name} answered {detail!r} in {latency:.1f} ms; circuit {breaker.state.value}"
        if outcome == "success"
        else f"{target.name} did not answer before the outage: {detail}",
    )


def _opens(
    run: _Run,
    breaker: CircuitBreaker,
    target: Target,
    expect: BreakerConfig,
    between_calls: Callable[[], None],
) -> bool:
    """Exactly `failure_threshold` failures, then OPEN (not one call earlier, not later)."""
    threshold = expect.failure_threshold
    failures = 0
    opened_after: int | None = None
    first_cause: str | None = None
    for attempt in range(1, threshold + 1):
        outcome, detail = _attempt(breaker, target)
        run.event("outage", f"call {attempt}: {outcome} ({detail})", breaker.state)
        if outcome == "failure":
            failures += 1
            first_cause = first_cause or detail
        if breaker.state is OPEN:
            opened_after = attempt
            break
        between_calls()
    passed = failures == threshold and opened_after == threshold
    if opened_after is None:
        detail = f"still {breaker.state.value} after {threshold} calls ({failures} failed)"
        if not failures:
            detail += f": {target.name} kept answering"
    else:
        detail = f"opened after {failures} failures (threshold {threshold})"
    if first_cause is not None:
        detail += f"; first failure: {first_cause}"
    return run.check("opens after failure_threshold failures", passed, detail)


def _fails_fast(run: _Run, breaker: CircuitBreaker, target: Target) -> None:
    """While OPEN, every call is rejected: the probe never runs and no connection is made."""
    contacts_before = target.contacts()
    probe_runs = 0

    def counted_call() -> str:
        nonlocal probe_runs
        probe_runs += 1
        return target.call()

    latencies: list[float] = []
    rejected = 0
    for _ in range(FAIL_FAST_CALLS):
        started = time.perf_counter()
        with contextlib.suppress(Exception):  # only rejections count; probe_runs tells the rest
            try:
                breaker.call(counted_call)
            except CircuitBreakerError:
                rejected += 1
        latencies.append(time.perf_counter() - started)
    new_contacts = target.contacts() - contacts_before
    median_us = statistics.median(latencies) * 1e6
    run.measurements["rejection_median_us"] = median_us
    run.check(
        "fails fast while open",
        rejected == FAIL_FAST_CALLS and probe_runs == 0 and new_contacts == 0,
        f"{rejected}/{FAIL_FAST_CALLS} calls rejected in {median_us:.1f} us (median); "
        f"the probe ran {probe_runs} times; {new_contacts} new connections reached "
        f"{target.name}",
    )


def _wait_for_retry(run: _Run, breaker: CircuitBreaker, sleep: Callable[[float], object]) -> None:
    wait = breaker.stats["retry_after"] or 0.0
    run.event("waiting", f"recovery timeout: {wait:.1f}s until a trial", breaker.state)
    sleep(wait + 0.01)


def _trial_reopens(
    run: _Run,
    breaker: CircuitBreaker,
    target: Target,
    expect: BreakerConfig,
    sleep: Callable[[float], object],
) -> None:
    """After the timeout, one trial is let through; the dependency is still down, so OPEN again."""
    _wait_for_retry(run, breaker, sleep)
    seen = len(run.transitions)
    outcome, detail = _attempt(breaker, target)
    moves = [(t.previous, t.state) for t in run.transitions[seen:]]
    passed = outcome == "failure" and moves == [(OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]
    run.check(
        "trial while down re-opens",
        passed,
        f"trial {outcome} ({detail}); circuit went "
        + (" -> ".join([OPEN.value, *(state.value for _, state in moves)]) if moves else "nowhere"),
    )


def _recovers(
    run: _Run,
    breaker: CircuitBreaker,
    target: Target,
    expect: BreakerConfig,
    sleep: Callable[[float], object],
    between_calls: Callable[[], None],
) -> None:
    """After the timeout: HALF_OPEN, then CLOSED after exactly success_threshold successes."""
    if breaker.state is OPEN:
        _wait_for_retry(run, breaker, sleep)
    seen = len(run.transitions)
    successes = 0
    closed_after: int | None = None
    for attempt in range(1, expect.success_threshold + 1):
        outcome, detail = _attempt(breaker, target)
        run.event("recovery", f"call {attempt}: {outcome} ({detail})", breaker.state)
        successes += outcome == "success"
        if breaker.state is CLOSED:
            closed_after = attempt
            break
        between_calls()
    moves = [(t.previous, t.state) for t in run.transitions[seen:]]
    passed = (
        successes == expect.success_threshold
        and closed_after == expect.success_threshold
        and moves == [(OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    )
    path = " -> ".join([OPEN.value, *(state.value for _, state in moves)]) if moves else "nowhere"
    run.check(
        "recovers: half-open, then closed",
        passed,
        f"{successes} successes (threshold {expect.success_threshold}); circuit went {path}",
    )


@dataclass(frozen=True, slots=True)
class PassCounts:
    """One pass of a flapping run: contacts the target measured, and how the calls ended."""

    reached_dependency: int
    rejected: int
    failures: int
    successes: int

    def to_json(self) -> dict[str, int]:
        return {
            "reached_dependency": self.reached_dependency,
            "rejected": self.rejected,
            "failures": self.failures,
            "successes": self.successes,
        }


@dataclass(frozen=True, slots=True)
class FlappingReport:
    """How much a breaker dampens a flapping dependency: the same calls with and without one.

    `attempts_*` are contacts the target measured (for a proxied target: connections that
    reached the dependency through the proxy), not calls made; `successes_*` are calls answered.
    """

    dependency: str
    target: str
    settings: BreakerConfig
    calls: int
    interval: float
    attempts_with_breaker: int
    attempts_without_breaker: int
    rejected: int
    failures_with_breaker: int
    failures_without_breaker: int
    notes: tuple[str, ...] = ()
    successes_with_breaker: int = 0
    successes_without_breaker: int = 0
    conditions: dict[str, float] = field(default_factory=dict)
    """What the target did, for the record (e.g. the proxy's flapping period)."""
    without_backoff: PassCounts | None = None
    """With backoff on in `settings`: the same calls through a breaker with the same settings
    but a fixed open duration (`timeout`), so what backoff changes is measured in this run."""

    scenario: str = "flapping"

    @property
    def passed(self) -> bool:
        """Fewer calls reached the dependency with the breaker, and it still let some succeed:
        a breaker that rejects everything "dampens" too, and protects nothing."""
        return (
            self.attempts_with_breaker < self.attempts_without_breaker
            and self.successes_with_breaker > 0
        )

    def to_json(self) -> dict[str, Any]:
        """The `cbctl simulate flapping --json` object."""
        return {
            "scenario": self.scenario,
            "dependency": self.dependency,
            "target": self.target,
            "passed": self.passed,
            "settings": self.settings.as_dict(),
            "notes": list(self.notes),
            "calls": self.calls,
            "interval_s": self.interval,
            **{key: round(value, 6) for key, value in self.conditions.items()},
            "with_breaker": {
                "reached_dependency": self.attempts_with_breaker,
                "rejected": self.rejected,
                "failures": self.failures_with_breaker,
                "successes": self.successes_with_breaker,
            },
            "without_breaker": {
                "reached_dependency": self.attempts_without_breaker,
                "rejected": 0,
                "failures": self.failures_without_breaker,
                "successes": self.successes_without_breaker,
            },
            **(
                {}
                if self.without_backoff is None
                else {"breaker_without_backoff": self.without_backoff.to_json()}
            ),
        }


def run_flapping(
    target: Target,
    settings: BreakerConfig,
    *,
    calls: int,
    interval: float,
    clock: Clock | None = None,
    sleep: Callable[[float], object] = time.sleep,
    notes: tuple[str, ...] = (),
    conditions: dict[str, float] | None = None,
) -> FlappingReport:
    """Call a flapping target `calls` times with and then without a breaker; count what reached it.

    `take_down` starts each pass (for a proxied target: flapping restarts, so every pass sees
    the same sequence of phases); the target is brought back afterwards, even on interruption.
    With backoff on in `settings`, a third pass runs the calls through a breaker without it.
    """
    clock = clock or SYSTEM_CLOCK
    breaker = CircuitBreaker(target.name, config=settings, clock=clock)

    def with_breaker() -> str:
        return _attempt(breaker, target)[0]

    fixed = replace(settings, backoff_factor=1.0, max_timeout=None, jitter=0.0)
    plain = CircuitBreaker(target.name, config=fixed, clock=clock)

    def with_plain_breaker() -> str:
        return _attempt(plain, target)[0]

    def without_breaker() -> str:
        try:
            target.call()
        except Exception:
            return "failure"
        return "success"

    def one_pass(call: Callable[[], str]) -> tuple[int, Counter[str]]:
        outcomes: Counter[str] = Counter()
        before = target.contacts()
        try:
            target.take_down()
            for _ in range(calls):
                outcomes[call()] += 1
                sleep(interval)
        finally:
            target.bring_back()
        return target.contacts() - before, outcomes

    reached_with, with_outcomes = one_pass(with_breaker)
    reached_without, without_outcomes = one_pass(without_breaker)
    without_backoff = None
    if settings.backs_off:
        reached_plain, plain_outcomes = one_pass(with_plain_breaker)
        without_backoff = PassCounts(
            reached_plain,
            plain_outcomes["rejected"],
            plain_outcomes["failure"],
            plain_outcomes["success"],
        )
    rejected, failures_with = with_outcomes["rejected"], with_outcomes["failure"]
    failures_without = without_outcomes["failure"]
    return FlappingReport(
        dependency=target.name,
        target=target.address,
        settings=settings,
        calls=calls,
        interval=interval,
        attempts_with_breaker=reached_with,
        attempts_without_breaker=reached_without,
        rejected=rejected,
        failures_with_breaker=failures_with,
        failures_without_breaker=failures_without,
        notes=notes,
        conditions=dict(conditions or {}),
        successes_with_breaker=with_outcomes["success"],
        successes_without_breaker=without_outcomes["success"],
        without_backoff=without_backoff,
    )
