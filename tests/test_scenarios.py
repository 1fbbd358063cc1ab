"""The outage scenario in virtual time: a fake dependency, a FakeClock, and `sleep` = advance."""

from __future__ import annotations

from typing import Any

import pytest

from cbctl.clock import FakeClock
from cbctl.errors import DependencyError
from cbctl.scenarios import Event, Journal, run_flapping, run_outage
from cbctl.state import BreakerConfig, CircuitState


class FakeTarget:
    """A dependency in memory: up or down, counting every contact."""

    def __init__(self, name: str, *, ignores_outage: bool = False) -> None:
        self.name = name
        self.address = f"fake://{name}"
        self.up = True
        self.ignores_outage = ignores_outage
        self.contacted = 0
        self.brought_back = 0

    def call(self) -> str:
        self.contacted += 1
        if not self.up:
            raise DependencyError(f"connection refused at {self.address}")
        return "ok"

    def take_down(self) -> None:
        self.up = self.ignores_outage

    def bring_back(self) -> None:
        self.up = True
        self.brought_back += 1

    def contacts(self) -> int:
        return self.contacted


SPEC = BreakerConfig(failure_threshold=5, timeout=30.0, success_threshold=2)


def run(target: FakeTarget, settings: BreakerConfig = SPEC, **kwargs: Any) -> Journal:
    clock = FakeClock()
    return run_outage(
        target, FakeTarget("bystander"), settings, clock=clock, sleep=clock.advance, **kwargs
    )


def test_a_correct_breaker_passes_every_check_in_virtual_time() -> None:
    journal = run(FakeTarget("qdrant"))
    assert [c.name for c in journal.checks] == [
        "steady state",
        "opens after failure_threshold failures",
        "fails fast while open",
        "trial while down re-opens",
        "recovers: half-open, then closed",
        "no cascade",
    ]
    assert journal.passed, journal.checks
    moves = [(t.previous.value, t.state.value) for t in journal.transitions]
    assert moves == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_the_virtual_run_waits_exactly_the_recovery_timeout_twice() -> None:
    journal = run(FakeTarget("qdrant"))
    reopened, recovered = journal.transitions[1].at, journal.transitions[3].at
    assert reopened == pytest.approx(30.01)
    assert recovered == pytest.approx(60.02)


def test_while_open_the_dependency_is_not_contacted() -> None:
    target = FakeTarget("qdrant")
    journal = run(target)
    # 1 steady + 5 failures + 1 failed trial + 2 recovery successes; the 20 fail-fast calls: none
    assert target.contacted == 1 + 5 + 1 + 2
    assert "20/20 calls rejected" in journal.checks[2].detail


def test_a_threshold_that_never_trips_makes_the_verdict_say_no() -> None:
    broken = BreakerConfig(failure_threshold=1_000, timeout=30.0, success_threshold=2)
    journal = run(FakeTarget("qdrant"), broken, expect=SPEC)
    assert not journal.passed
    opens = journal.checks[1]
    assert not opens.passed
    assert "still closed after 5 calls" in opens.detail


def test_a_dependency_that_never_goes_down_fails_the_outage_check() -> None:
    journal = run(FakeTarget("qdrant", ignores_outage=True))
    assert not journal.passed
    assert not journal.checks[1].passed


def test_the_target_is_brought_back_even_when_the_run_is_interrupted() -> None:
    target = FakeTarget("qdrant")

    def interrupt(event: Event) -> None:
        if event.state is CircuitState.OPEN:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(target, on_event=interrupt)
    assert target.up
    assert target.brought_back == 1


def test_the_journal_json_has_the_documented_shape() -> None:
    data = run(FakeTarget("qdrant")).to_json()
    assert {"scenario", "dependency", "target", "passed", "checks", "transitions"} <= set(data)
    assert data["passed"] is True
    assert set(data["checks"][0]) == {"name", "passed", "detail"}
    assert set(data["transitions"][0]) == {"from", "to", "at"}


class FlappingTarget(FakeTarget):
    """Up for `period` seconds, down for `period` seconds, on the shared fake clock."""

    def __init__(self, clock: FakeClock, period: float) -> None:
        super().__init__("flappy")
        self.clock = clock
        self.period = period

    def call(self) -> str:
        self.up = int(self.clock.monotonic() / self.period) % 2 == 0
        return super().call()


def test_a_breaker_dampens_a_flapping_dependency() -> None:
    clock = FakeClock(monotonic=0.0)
    target = FlappingTarget(clock, period=10.0)
    settings = BreakerConfig(failure_threshold=3, timeout=5.0, success_threshold=2)
    report = run_flapping(
        target, settings, calls=200, interval=0.5, clock=clock, sleep=clock.advance
    )
    assert report.attempts_without_breaker == 200
    assert report.attempts_with_breaker < report.attempts_without_breaker
    assert report.rejected == report.calls - report.attempts_with_breaker
    assert report.failures_with_breaker < report.failures_without_breaker


def test_flapping_counts_successes_with_and_without_the_breaker() -> None:
    clock = FakeClock(monotonic=0.0)
    target = FlappingTarget(clock, period=10.0)
    settings = BreakerConfig(failure_threshold=3, timeout=5.0, success_threshold=2)
    report = run_flapping(
        target, settings, calls=200, interval=0.5, clock=clock, sleep=clock.advance
    )
    assert report.successes_without_breaker == 200 - report.failures_without_breaker
    assert report.successes_with_breaker == (
        report.calls - report.rejected - report.failures_with_breaker
    )
    assert report.successes_with_breaker > 0
    assert report.passed
    assert report.to_json()["with_breaker"]["successes"] == report.successes_with_breaker


def test_flapping_does_not_pass_when_the_breaker_let_nothing_through() -> None:
    clock = FakeClock(monotonic=0.0)
    target = FlappingTarget(clock, period=10.0)
    never_retries = BreakerConfig(failure_threshold=1, timeout=10_000.0, success_threshold=2)
    target.period = 0.1  # down by the first call, and the breaker never lets a trial through
    clock.advance(0.15)
    report = run_flapping(
        target, never_retries, calls=50, interval=0.5, clock=clock, sleep=clock.advance
    )
    assert report.attempts_with_breaker < report.attempts_without_breaker  # "dampened"...
    assert report.successes_with_breaker == 0
    assert not report.passed  # ...but it protected nothing


class StopsLate(FakeTarget):
    """A stop command that returned while the dependency still answers."""

    def take_down(self) -> None:
        raise DependencyError("the stop command returned but the dependency still answers at x:1")


def test_an_outage_that_never_began_is_reported_as_such_not_as_a_breaker_fault() -> None:
    target = StopsLate("redis")
    journal = run(target)
    assert [(c.name, c.passed) for c in journal.checks] == [
        ("steady state", True),
        ("outage begins", False),
    ]
    assert "still answers" in journal.checks[1].detail
    assert target.brought_back == 1


def test_the_first_real_cause_of_the_failures_is_in_the_verdict() -> None:
    journal = run(FakeTarget("qdrant"))
    assert journal.checks[1].detail == (
        "opened after 5 failures (threshold 5); first failure: connection refused at fake://qdrant"
    )


def test_flapping_with_backoff_measures_the_same_calls_without_it() -> None:
    clock = FakeClock(monotonic=0.0)
    target = FlappingTarget(clock, period=7.0)
    settings = BreakerConfig(failure_threshold=2, timeout=1.0, backoff_factor=2.0, max_timeout=16)
    report = run_flapping(
        target, settings, calls=400, interval=0.25, clock=clock, sleep=clock.advance
    )
    plain = report.without_backoff
    assert plain is not None
    assert report.attempts_with_breaker < plain.reached_dependency < report.attempts_without_breaker
    assert plain.rejected + plain.failures + plain.successes == report.calls
    assert report.to_json()["breaker_without_backoff"]["reached_dependency"] == (
        plain.reached_dependency
    )


def test_flapping_without_backoff_runs_two_passes() -> None:
    clock = FakeClock(monotonic=0.0)
    target = FlappingTarget(clock, period=10.0)
    report = run_flapping(
        target, BreakerConfig(timeout=5.0), calls=50, interval=0.5, clock=clock, sleep=clock.advance
    )
    assert report.without_backoff is None
    assert "breaker_without_backoff" not in report.to_json()
