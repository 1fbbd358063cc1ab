"""Which errors of a dependency's client mean "it is down" and which mean "it answered".

A circuit exists to stop calling a dependency that is unreachable or overloaded. A duplicate key,
a WRONGTYPE reply or a 404 prove the opposite: the dependency is up and said no to this request,
so they are neutral (neither failure nor success). A breaker's `kind=` picks the rules of one of
the stack's clients (psycopg, redis-py, httpx, qdrant-client); `cbctl.toml` gives every breaker
its dependency's kind.

Rules name exception classes by their import path ("psycopg.IntegrityError"), never by the class
object, so that classifying an error never imports a client library: an exception's own class and
its bases already carry those names. Lookup walks the exception's MRO and the first class with a
rule decides, so the most specific rule wins (redis-py's BusyLoadingError is a ConnectionError: a
failure; its MasterDownError is a ResponseError yet has its own failure rule). A user's rule for a
class replaces the built-in rule for it. An error no rule names counts as a failure, as it does
for a breaker without a kind.

A name matches a class by its full path (`redis.exceptions.ConnectionError`), by its package and
class name (`redis.ConnectionError`, `psycopg_pool.PoolTimeout`), or, for built-in exceptions, by
the bare class name (`TimeoutError`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, Literal

from cbctl.errors import ConfigError

__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "KINDS",
    "Decision",
    "ErrorName",
    "FailureRules",
    "as_rules",
    "builtin_rules",
    "rules_for",
    "status_set",
]

Decision = Literal["failure", "neutral", "status", "grpc", "source"]
"""What a rule says about an error: a failure; neutral; decided by its HTTP status (failure when
in `failure_statuses`); decided by its gRPC status code; decided by the error it wraps (`source`
or `__cause__`)."""

ErrorName = str | type[BaseException]
"""An exception class, or its import path as a string."""

DEFAULT_FAILURE_STATUSES: Final = frozenset({502, 503, 504})
GRPC_FAILURE_CODES: Final = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
_MAX_WRAPPED: Final = 8
_NAME: Final = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

_HTTPX: Final[Mapping[str, Decision]] = {
    "httpx.TransportError": "failure",  # connect/read/write errors and every timeout
    "httpx.HTTPStatusError": "status",  # raise_for_status(): 502/503/504 fail, 4xx is neutral
    "httpx.UnsupportedProtocol": "neutral",  # a wrong URL, not a dead server
    "httpx.LocalProtocolError": "neutral",  # this client sent something invalid
    "httpx.DecodingError": "neutral",
    "httpx.TooManyRedirects": "neutral",
    "httpx.InvalidURL": "neutral",
    "httpx.StreamError": "neutral",  # reading a closed or consumed stream: a caller's bug
}

_BUILTIN: Final[Mapping[str, Mapping[str, Decision]]] = MappingProxyType(
    {
        "postgresql": {
            "psycopg.OperationalError": "failure",  # refused, timed out, shut down, too many
            "psycopg.InterfaceError": "failure",  # connection lost or closed under the caller
            "psycopg_pool.PoolTimeout": "failure",
            "psycopg_pool.TooManyRequests": "failure",
            "psycopg.IntegrityError": "neutral",
            "psycopg.DataError": "neutral",
            "psycopg.ProgrammingError": "neutral",
            "psycopg.NotSupportedError": "neutral",
            "psycopg.errors.InFailedSqlTransaction": "neutral",
            "psycopg.errors.TransactionRollback": "neutral",  # retry the transaction, the
            "psycopg.errors.SerializationFailure": "neutral",  # server is fine (psycopg makes
            "psycopg.errors.DeadlockDetected": "neutral",  # these siblings, not subclasses)
            "psycopg.errors.LockNotAvailable": "neutral",  # lock_timeout on a contended row
        },
        "redis": {
            "redis.exceptions.ConnectionError": "failure",  # also auth, busy loading, pool full
            "redis.exceptions.TimeoutError": "failure",
            "redis.exceptions.BusyLoadingError": "failure",
            "redis.exceptions.MasterDownError": "failure",
            "redis.exceptions.ClusterDownError": "failure",
            "redis.exceptions.TryAgainError": "failure",
            "redis.exceptions.ReadOnlyError": "failure",  # writing to a replica after failover
            "redis.exceptions.OutOfMemoryError": "failure",
            "redis.exceptions.ResponseError": "neutral",  # WRONGTYPE, unknown command, NOSCRIPT
            "redis.exceptions.DataError": "neutral",
            "redis.exceptions.WatchError": "neutral",
            "redis.exceptions.LockError": "neutral",
        },
        "http": dict(_HTTPX),
        "llamacpp": dict(_HTTPX),
        "qdrant": {
            **_HTTPX,
            "qdrant_client.http.exceptions.UnexpectedResponse": "status",
            "qdrant_client.http.exceptions.ResponseHandlingException": "source",
            "qdrant_client.common.client_exceptions.ResourceExhaustedResponse": "failure",
            "grpc.RpcError": "grpc",
            "pydantic_core.ValidationError": "neutral",  # an answer this client cannot parse
        },
        "tcp": {},
    }
)

KINDS: Final = tuple(_BUILTIN)
"""The kinds that have rules; "tcp" has none (every error counts, as without a kind)."""


def builtin_rules(kind: str) -> Mapping[str, Decision]:
    """The built-in rules of `kind`, name -> decision (what README's table shows)."""
    return MappingProxyType(dict(_rules_table(kind)))


def _rules_table(kind: str) -> Mapping[str, Decision]:
    try:
        return _BUILTIN[kind]
    except KeyError as error:
        raise ConfigError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})") from error


@dataclass(frozen=True)
class FailureRules:
    """The classification a breaker applies to the errors its calls raise.

    `rules_for("postgresql")` gives the built-in rules of a kind; `with_overrides(...)` adds a
    user's. `is_failure(exc)` answers for one error; `is_neutral` fits `exclude=`.
    """

    kind: str | None = None
    builtin: Mapping[str, Decision] = field(default_factory=dict)
    user: Mapping[str, Decision] = field(default_factory=dict)
    failure_statuses: frozenset[int] = DEFAULT_FAILURE_STATUSES
    _memo: dict[type[BaseException], Decision] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __hash__(self) -> int:
        return hash(
            (
                self.kind,
                *map(frozenset, (self.builtin.items(), self.user.items())),
                self.failure_statuses,
            )
        )

    def with_overrides(
        self,
        *,
        failures: Iterable[ErrorName] = (),
        neutral: Iterable[ErrorName] = (),
        failure_statuses: Iterable[int] | None = None,
    ) -> FailureRules:
        """These rules plus a user's: classes that count as failures, classes that are neutral,
        and (replacing the current set) the HTTP statuses that count as failures."""
        user = dict(self.user)
        for item in failures:
            user[_name_of(item, "failures")] = "failure"
        for item in neutral:
            name = _name_of(item, "neutral")
            if user.get(name) == "failure":
                raise ConfigError(f"{name} is listed both as a failure and as neutral")
            user[name] = "neutral"
        statuses = self.failure_statuses
        if failure_statuses is not None:
            statuses = status_set(failure_statuses)
        return replace(self, user=MappingProxyType(user), failure_statuses=statuses)

    def is_failure(self, exc: BaseException) -> bool:
        """Whether `exc` means the dependency is down; only an `Exception` can be."""
        for _ in range(_MAX_WRAPPED):
            if not isinstance(exc, Exception):
                return False
            decision = self.decision(type(exc))
            if decision == "failure":
                return True
            if decision == "neutral":
                return False
            if decision == "status":
                status = _status_of(exc)
                return status is None or status in self.failure_statuses
            if decision == "grpc":
                code = _grpc_code(exc)
                return code is None or code in GRPC_FAILURE_CODES
            wrapped = getattr(exc, "source", None) or exc.__cause__
            if not isinstance(wrapped, BaseException):
                return True
            exc = wrapped
        return True

    def is_neutral(self, exc: BaseException) -> bool:
        """The opposite of `is_failure`, as a predicate for `exclude=`."""
        return not self.is_failure(exc)

    def decision(self, cls: type[BaseException]) -> Decision:
        """The rule that decides for errors of class `cls` (its nearest class with a rule)."""
        known = self._memo.get(cls)
        if known is not None:
            return known
        decision: Decision = "failure"
        tables = (self.user, self.builtin)
        for klass in cls.__mro__:
            found = next(
                (table[key] for table in tables for key in _keys(klass) if key in table), None
            )
            if found is not None:
                decision = found
                break
        self._memo[cls] = decision
        return decision


def rules_for(kind: str) -> FailureRules:
    """The built-in rules of a kind ("postgresql", "redis", "qdrant", "llamacpp", "http")."""
    return FailureRules(kind=kind, builtin=MappingProxyType(dict(_rules_table(kind))))


def as_rules(kind: str | FailureRules | None) -> FailureRules | None:
    """What a breaker's `kind=` means: a kind's built-in rules by name, given rules as they are,
    None for no rules."""
    if kind is None or isinstance(kind, FailureRules):
        return kind
    if not isinstance(kind, str):
        raise ConfigError(f"kind must be a kind name or FailureRules, got {kind!r}")
    return rules_for(kind)


def _keys(cls: type) -> tuple[str, ...]:
    module, name = cls.__module__, cls.__qualname__
    if module == "builtins":
        return name, f"builtins.{name}"
    package = module.partition(".")[0]
    return (f"{module}.{name}", f"{package}.{name}") if package != module else (f"{module}.{name}",)


def _name_of(item: ErrorName, where: str) -> str:
    if isinstance(item, type) and issubclass(item, BaseException):
        return f"{item.__module__}.{item.__qualname__}"
    if isinstance(item, str) and _NAME.fullmatch(item):
        return item
    raise ConfigError(
        f"{where} takes exception classes or their import paths "
        f"(e.g. 'psycopg.errors.UniqueViolation'), not {item!r}"
    )


def status_set(values: Iterable[int]) -> frozenset[int]:
    """HTTP statuses that count as failures, each checked to be a status code (100-599)."""
    return frozenset(_status(value) for value in values)


def _status(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise ConfigError(f"failure_statuses takes HTTP status codes (100-599), not {value!r}")
    return value


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status an error carries: qdrant-client's `status_code`, httpx's response's."""
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _grpc_code(exc: BaseException) -> str | None:
    code = getattr(exc, "code", None)
    if not callable(code):
        return None
    try:
        value = code()
    except Exception:
        return None
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else None
