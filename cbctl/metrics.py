"""Prometheus metrics of circuits, for a service's own registry (no second /metrics endpoint).

    from prometheus_client import REGISTRY
    from cbctl.metrics import CircuitCollector

    REGISTRY.register(CircuitCollector(registry))   # registry: the service's CircuitBreakerRegistry

Every scrape reads the circuits afresh: state, consecutive failures, calls by outcome, the
breaker's own transition count (since it was created, so transitions before the first scrape
count), whether a breaker runs without its shared store (`cbctl_circuit_store_degraded`), and
the rates and open duration of the policies that are on. Made over a registry, the collector
times the calls of its breakers (those made later too) into `cbctl_circuit_call_duration_seconds`
from the moment it is created; breakers without a collector never read the clock around a call.

This module is the only one that imports prometheus_client; `cbctl.health` imports it on the
first scrape of its own /metrics, and the CLI never does.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from cbctl.health import HealthApp
from cbctl.registry import CircuitBreakerRegistry
from cbctl.state import CircuitState, CircuitStore

__all__ = ["DEFAULT_BUCKETS", "CircuitCollector"]

DEFAULT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the call-duration buckets; +Inf is always added."""

TRANSITIONS_HELP: Final[Mapping[bool, str]] = {
    False: "State transitions of this process's breaker since it was created",
    True: "State changes recorded in the shared state (transitions, resets, holds) "
    "since the circuit was first recorded",
}
"""HELP of cbctl_circuit_transitions_total, by whether the circuits come from a store."""

POLICY_GAUGES: Final = (
    ("failure_rate", "cbctl_circuit_failure_rate", "Failure rate over the sliding window (0..1)"),
    (
        "slow_call_rate",
        "cbctl_circuit_slow_call_rate",
        "Rate of calls slower than slow_call_duration over the sliding window (0..1)",
    ),
    (
        "open_duration",
        "cbctl_circuit_open_duration_seconds",
        "Open duration now in force (backoff included)",
    ),
)
"""(stats key, metric, HELP) of each policy figure: a circuit has a sample only while its
policy is on and the figure is known (a rate is unknown below minimum_calls)."""

_OUTCOMES: Final = (("success", "successes"), ("failure", "failures"), ("rejected", "rejections"))


class _Durations:
    """Call durations per (circuit, outcome) in cumulative-ready buckets, under one short lock."""

    def __init__(self, buckets: Iterable[float]) -> None:
        bounds = sorted({float(bound) for bound in buckets})
        if not bounds or any(not math.isfinite(b) or b <= 0 for b in bounds):
            raise ValueError(f"buckets must be positive finite seconds, got {bounds!r}")
        self.bounds = tuple(bounds)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], list[float]] = {}

    def observe(self, circuit: str, seconds: float, outcome: str) -> None:
        """A breaker's CallObserver: one call of `circuit` took `seconds`."""
        slot = bisect_left(self.bounds, seconds)  # the first bucket whose bound is >= seconds
        with self._lock:
            series = self._series.get((circuit, outcome))
            if series is None:
                series = self._series[(circuit, outcome)] = [0.0] * (len(self.bounds) + 2)
            series[slot] += 1
            series[-1] += seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "cbctl_circuit_call_duration_seconds",
            "Duration of the calls the breaker let through, by outcome (success, failure, "
            "neutral: an excluded error)",
            labels=["circuit", "outcome"],
        )
        with self._lock:
            copied = {key: list(series) for key, series in self._series.items()}
        edges = [repr(bound) for bound in self.bounds] + ["+Inf"]
        for (circuit, outcome), series in sorted(copied.items()):
            total, buckets = 0.0, []
            for edge, count in zip(edges, series[:-1], strict=True):
                total += count
                buckets.append((edge, total))
            family.add_metric([circuit, outcome], buckets, series[-1])
        return family


class CircuitCollector:
    """A prometheus_client collector of circuits: `registry.register(CircuitCollector(source))`.

    `source` is the service's CircuitBreakerRegistry (its breakers' call durations are timed
    from now on, per process, unless `time_calls=False`) or a CircuitStore (what the shared
    state records; no per-process counters or durations). `buckets` are the call-duration upper
    bounds in seconds.
    """

    def __init__(
        self,
        source: CircuitBreakerRegistry | CircuitStore | HealthApp,
        *,
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        time_calls: bool = True,
    ) -> None:
        self._circuits = source if isinstance(source, HealthApp) else HealthApp(source, max_age=0)
        self._durations: _Durations | None = None
        if time_calls and not self._circuits.serves_store:
            self._durations = _Durations(buckets)
            self._circuits.registry().add_call_observer(self._durations.observe)

    def __repr__(self) -> str:
        return f"<CircuitCollector over {self._circuits!r}>"

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples: registering reads no circuit."""
        yield from self._families({})

    def collect(self) -> Iterator[Metric]:
        circuits, _ = self._circuits.circuits()
        yield from self._families(circuits)

    def _families(self, circuits: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
        serves_store = self._circuits.serves_store
        state = GaugeMetricFamily(
            "cbctl_circuit_state",
            "1 for the state the circuit is in, 0 for the others",
            labels=["circuit", "state"],
        )
        failures = GaugeMetricFamily(
            "cbctl_circuit_consecutive_failures",
            "Consecutive failures counted towards the failure threshold",
            labels=["circuit"],
        )
        calls = CounterMetricFamily(
            "cbctl_circuit_calls",
            "Calls through the breaker by outcome (success, failure, rejected)",
            labels=["circuit", "outcome"],
        )
        transitions = CounterMetricFamily(
            "cbctl_circuit_transitions", TRANSITIONS_HELP[serves_store], labels=["circuit"]
        )
        degraded = GaugeMetricFamily(
            "cbctl_circuit_store_degraded",
            "1 while the breaker's shared store does not answer and it decides in-process",
            labels=["circuit"],
        )
        policies = [
            (key, GaugeMetricFamily(metric, text, labels=["circuit"]))
            for key, metric, text in POLICY_GAUGES
        ]
        for name, stats in circuits.items():
            for each in CircuitState:
                state.add_metric([name, each.value], float(stats.get("state") == each.value))
            failures.add_metric([name], float(_number(stats.get("failure_count")) or 0))
            for outcome, key in _OUTCOMES:
                if isinstance(stats.get(key), int):
                    calls.add_metric([name, outcome], float(stats[key]))
            count = self._circuits.transitions(name, stats)
            if count is not None:
                transitions.add_metric([name], float(count))
            if not serves_store and "degraded" in stats:
                degraded.add_metric([name], float(bool(stats["degraded"])))
            for key, family in policies:
                value = _number(stats.get(key))
                if value is not None:
                    family.add_metric([name], value)
        yield from (state, failures, calls, transitions)
        if not serves_store:
            yield degraded
        yield from (family for _, family in policies)
        if self._durations is not None:
            yield self._durations.family()


def _number(value: object) -> float | None:
    """A finite number from stats, else None (a figure not known, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)
