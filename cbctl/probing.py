"""Probing a dependency through its circuit breaker: what `cbctl probe` does, as a library.

One attempt = the breaker's admission decision, the probe (only if admitted: a rejected attempt
never contacts the dependency nor imports its client library), and the circuit as it stands
afterwards, recorded in the shared store so that probes from separate processes trip together.

A run of several attempts uses one breaker per dependency (`breakers_for`): when the store is
away, the breaker's degraded in-process state is what still protects the dependency, and a
fresh breaker per attempt would forget every failure and never open.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from cbctl.breaker import CircuitBreaker
from cbctl.errors import CircuitBreakerError, DependencyError, StateError

if TYPE_CHECKING:
    from cbctl.config import Dependency
    from cbctl.state import BreakerConfig, CircuitStore

__all__ = [
    "EXIT_CODES",
    "ProbeAttempt",
    "SettingsMismatch",
    "breakers_for",
    "probe_once",
    "probe_round",
    "settings_mismatch",
]

Outcome = Literal["success", "failure", "rejected"]

EXIT_CODES: dict[str, int] = {"success": 0, "failure": 1, "rejected": 3}
"""The CLI exit code of each outcome: 0 healthy, 1 the probe failed, 3 rejected by the circuit."""


@dataclass(frozen=True, slots=True)
class ProbeAttempt:
    """One probe through the breaker; `as_json()` is the `cbctl probe --json` object."""

    dependency: str
    ok: bool
    outcome: Outcome
    state: str
    latency_ms: float
    error: str | None
    failure_count: int
    success_count: int
    attempt: int
    kind: str
    url: str
    detail: str | None
    reason: str | None
    retry_after: float | None
    failure_threshold: int
    success_threshold: int
    degraded: str | None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SettingsMismatch:
    """A circuit that the store last used with other breaker settings than a probe's: most
    likely a service's circuit of the same name, for a dependency at another address."""

    circuit: str
    stored: BreakerConfig
    probe: BreakerConfig

    @property
    def differences(self) -> list[tuple[str, Any, Any]]:
        """(setting, stored value, probe's value) for every setting that differs; all of
        BreakerConfig's fields are compared, so a new setting is covered without a change here."""
        stored, probe = self.stored.as_dict(), self.probe.as_dict()
        return [(key, stored[key], probe[key]) for key in stored if stored[key] != probe[key]]


def settings_mismatch(dep: Dependency, store: CircuitStore) -> SettingsMismatch | None:
    """How `dep`'s circuit in `store` was last used with other breaker settings, if it was.

    A store that is away or a record it cannot read is no mismatch: the probe then reports
    the store itself, and nothing is recorded into the circuit.
    """
    try:
        stored = store.load(dep.name)
    except StateError:
        return None
    if stored is None or stored.config == dep.breaker:
        return None
    return SettingsMismatch(dep.name, stored.config, dep.breaker)


def breakers_for(deps: Sequence[Dependency], store: CircuitStore) -> dict[str, CircuitBreaker]:
    """One breaker per dependency on `store`, to be used for every attempt of one run."""
    return {
        dep.name: CircuitBreaker(dep.name, config=dep.breaker, store=store, kind=dep.failures)
        for dep in deps
    }


def probe_once(
    dep: Dependency,
    store: CircuitStore,
    number: int = 1,
    *,
    breaker: CircuitBreaker | None = None,
) -> ProbeAttempt:
    """Probe `dep` once through `breaker` (default: a new one on `store`).

    The latency of an admitted probe starts after its client library is imported and its client
    built (a probe module's `set_up(dep)`, once per process) and ends when the check returns,
    before the outcome is recorded in the store, so that it measures the dependency's round
    trip, not a cold import, set-up or state file; a rejection's latency is the whole decision.
    """
    from cbctl.probes import MODULES, check, scrub, secrets_of

    started = time.perf_counter()
    ended: float | None = None

    def probe() -> str:
        module = importlib.import_module(f"cbctl.probes.{MODULES[dep.kind]}")
        set_up = getattr(module, "set_up", None)
        if set_up is not None:
            set_up(dep)
        nonlocal started, ended
        started = time.perf_counter()
        try:
            return check(dep, dep.call_timeout)
        finally:
            ended = time.perf_counter()

    if breaker is None:
        breaker = CircuitBreaker(dep.name, config=dep.breaker, store=store, kind=dep.failures)
    outcome: Outcome = "success"
    detail = error = reason = None
    try:
        detail = breaker.call(probe)
    except CircuitBreakerError as rejection:
        outcome, error, reason = "rejected", str(rejection), "circuit_open"
    except DependencyError as failure:
        outcome, error = "failure", scrub(str(failure), secrets_of(dep))
        reason = getattr(failure, "reason", None)
    latency_ms = ((ended or time.perf_counter()) - started) * 1000
    stats = breaker.stats
    return ProbeAttempt(
        dependency=dep.name,
        ok=outcome == "success",
        outcome=outcome,
        state=stats["state"],
        latency_ms=round(latency_ms, 3),
        error=error,
        failure_count=stats["failure_count"],
        success_count=stats["success_count"],
        attempt=number,
        kind=dep.kind,
        url=dep.display_url,
        detail=detail,
        reason=reason,
        retry_after=stats["retry_after"],
        failure_threshold=stats["failure_threshold"],
        success_threshold=stats["success_threshold"],
        degraded=stats["degraded"],
    )


def probe_round(
    deps: Sequence[Dependency],
    store: CircuitStore,
    number: int = 1,
    *,
    breakers: dict[str, CircuitBreaker] | None = None,
) -> list[ProbeAttempt]:
    """One attempt per dependency, side by side, so a dead stack costs one call timeout.

    Pass the same `breakers` (from `breakers_for`) to every round of one run.
    """
    chosen = breakers or {}

    def one(dep: Dependency) -> ProbeAttempt:
        return probe_once(dep, store, number, breaker=chosen.get(dep.name))

    if len(deps) == 1:
        return [one(deps[0])]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(deps), thread_name_prefix="cbctl-probe-all") as pool:
        return list(pool.map(one, deps))
