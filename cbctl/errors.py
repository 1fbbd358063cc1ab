"""One exception hierarchy; each class knows the CLI exit code it maps to.

Exit codes: 0 healthy, 1 the dependency call or a scenario check failed, 2 usage/configuration/
state error, 3 rejected fast by an open circuit. `cbctl` prints a `CbctlError` as one line on
stderr and exits with its `exit_code` (a traceback instead with `--debug`).

Hierarchy (exit code in brackets):

* CbctlError [2]
  + UsageError [2] - a command line or API call that cannot be carried out as asked
  + ConfigError [2] - cbctl.toml, a setting or an environment variable is invalid
  + StateError [2] - the shared state cannot be opened, read or trusted
  |   + MissingStateError [2] - a reading command pointed at state that does not exist
  |   + UnreadableCircuitsError [2] - some stored records are foreign; carries the others
  |   + StoreUnavailableError [2] - the store did not answer; breakers degrade
  + UnknownCircuitError [2] - a circuit name nobody knows
  + DependencyError [1] - the protected dependency failed
  |   + ProbeError [1] - a health probe's failure, with a machine-readable `reason`
  |   + CallTimeoutError [1] - a call outlasted its breaker's `call_timeout`; also a TimeoutError
  |       + cbctl.httpx.CallTimedOut [1] - an httpx request past it; also an httpx.TimeoutException
  + CircuitBreakerError [3] - rejected: the circuit is open, nothing was called
      + cbctl.httpx.CircuitOpen [3] - a rejected httpx request; also an httpx.TransportError
  (the cbctl.httpx classes are defined there, in the one module that may import httpx)

* ClientErrorSummary (not a CbctlError) - stands in as the `__cause__` of a ProbeError for the
  client library's error, whose message may echo a password
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

__all__ = [
    "CallTimeoutError",
    "CbctlError",
    "CircuitBreakerError",
    "ClientErrorSummary",
    "ConfigError",
    "DependencyError",
    "MissingStateError",
    "ProbeError",
    "ProbeReason",
    "StateError",
    "StoreUnavailableError",
    "UnknownCircuitError",
    "UnreadableCircuitsError",
    "UsageError",
]

ProbeReason = Literal["refused", "timeout", "auth", "not_ready", "unhealthy", "unreachable"]
"""Why a probe failed, for scripts (`reason` in `cbctl probe --json`)."""


class CbctlError(Exception):
    """Base of every error cbctl raises on purpose."""

    exit_code: ClassVar[int] = 2


class UsageError(CbctlError):
    """A command line or an API call that cannot be carried out as asked."""


class ConfigError(CbctlError):
    """A configuration file, a setting or an environment variable is invalid."""


class StateError(CbctlError):
    """The shared state (state file, Redis) cannot be opened, read or trusted."""


class MissingStateError(StateError):
    """The state a reading command was pointed at does not exist (a mistyped --state)."""


class UnreadableCircuitsError(StateError):
    """Some circuits in the store hold records this cbctl cannot trust (a foreign `state`, a
    zero threshold); `readable` are the others, `unreadable` maps each bad name to why."""

    def __init__(
        self, message: str, readable: Sequence[Any], unreadable: Mapping[str, str]
    ) -> None:
        super().__init__(message)
        self.readable = list(readable)
        self.unreadable = dict(unreadable)


class StoreUnavailableError(StateError):
    """The store did not answer (Redis down, disk full); breakers degrade to in-process state."""


class UnknownCircuitError(CbctlError):
    """A circuit name that the registry or the state does not know."""

    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        self.name = name
        self.known = sorted(known)
        listing = ", ".join(self.known) if self.known else "none"
        super().__init__(f"unknown circuit {name!r} (known: {listing})")


class DependencyError(CbctlError):
    """The protected dependency failed (refused, timed out, unhealthy answer)."""

    exit_code: ClassVar[int] = 1


class ProbeError(DependencyError):
    """A probe's failure, with a machine-readable `reason` next to the one-line message."""

    def __init__(self, message: str, reason: ProbeReason = "unhealthy") -> None:
        super().__init__(message)
        self.reason: ProbeReason = reason


class CallTimeoutError(DependencyError, TimeoutError):
    """The protected call took longer than its breaker's `call_timeout`: a failure of the call.

    Async calls are cancelled at the deadline; a sync call cannot be interrupted, so it is judged
    when it returns, and its result is dropped. Either way the work may have taken effect.
    `took` is the measured duration (None when the call was cancelled at the deadline).
    """

    def __init__(self, name: str, call_timeout: float, took: float | None = None) -> None:
        spent = "" if took is None else f" (took {took:.3f}s)"
        super().__init__(f"circuit {name!r}: call exceeded call_timeout={call_timeout:g}s{spent}")
        self.name = name
        self.call_timeout = call_timeout
        self.took = took
        self.reason: ProbeReason = "timeout"


class CircuitBreakerError(CbctlError):
    """Raised instead of calling the protected function: the circuit is open.

    `retry_after` is the number of seconds until the breaker admits a trial call (in HALF_OPEN:
    until the earliest trial lease ends), or None when the circuit is held open by force.
    The message is formatted lazily so that a rejection stays cheap on the hot path.
    """

    exit_code: ClassVar[int] = 3
    __slots__ = ("name", "retry_after")

    def __init__(self, name: str, retry_after: float | None = None) -> None:
        # No super().__init__: BaseException.__new__ has already stored the arguments in
        # `args`, and skipping the extra call halves the cost of a rejection.
        self.name = name
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.retry_after is None:
            return f"circuit {self.name!r} is open"
        return f"circuit {self.name!r} is open; retry in {self.retry_after:.1f}s"


class ClientErrorSummary(Exception):
    """A client library's error as the cause of a cbctl error: its class, its message with every
    secret replaced by `***`, and the traceback of where it was raised. The original is dropped,
    because its message (libpq's, for one) may quote the password it could not parse."""

    def __init__(self, error: BaseException, message: str) -> None:
        cls = type(error)
        super().__init__(f"{cls.__module__}.{cls.__qualname__}: {message}")
        self.with_traceback(error.__traceback__)
