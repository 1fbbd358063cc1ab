"""Circuits as data, wherever they live: the shared state, or services' health endpoints.

`status`, `watch`, `reset` and the health endpoint all read circuits through this module, so a
circuit looks the same (the `breaker.stats` keys) whether it came from the state file, Redis or
a remote `/health`. Nothing here prints; HTTP (httpx) is imported only when a URL is used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from cbctl import state as machine
from cbctl.clock import iso_utc
from cbctl.errors import (
    DependencyError,
    StateError,
    UnknownCircuitError,
    UsageError,
)
from cbctl.state import CircuitStore, StoredCircuit

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CircuitReset",
    "FleetReader",
    "SourceReport",
    "fetch_health",
    "forget_in_store",
    "health_url",
    "read_store",
    "report_from_store",
    "report_from_url",
    "reset_in_store",
    "reset_remote",
    "stored_stats",
]

DEFAULT_HTTP_TIMEOUT = 2.0
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SourceReport:
    """The circuits of one source at `fetched_at` (wall seconds); `error` when it did not answer."""

    source: str
    circuits: tuple[dict[str, Any], ...]
    fetched_at: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CircuitReset:
    """One circuit's stats just before and just after a manual reset."""

    name: str
    before: dict[str, Any]
    after: dict[str, Any]


# -- the shared state --------------------------------------------------------------------------


def stored_stats(stored: StoredCircuit, source: str) -> dict[str, Any]:
    """`breaker.stats` keys for a circuit read from a store.

    Stores keep state, not per-process call counters, so `calls`/`successes`/`failures`/
    `rejections`/`transitions` are None: only the process that made the calls knows them.
    """
    snapshot, config = stored.snapshot, stored.config
    return {
        "name": stored.name,
        "state": snapshot.state.value,
        "failure_count": snapshot.failure_count,
        "success_count": snapshot.success_count,
        "last_failure": iso_utc(snapshot.last_failure_at),
        "last_error": snapshot.last_error,
        "opened_at": iso_utc(snapshot.opened_at),
        "state_since": iso_utc(snapshot.changed_at),
        "retry_after": machine.retry_after(snapshot, config, stored.now),
        "forced": snapshot.forced,
        "failure_threshold": config.failure_threshold,
        "success_threshold": config.success_threshold,
        "timeout": config.timeout,
        "half_open_max_calls": config.half_open_max_calls,
        "calls": None,
        "successes": None,
        "failures": None,
        "rejections": None,
        "transitions": None,
        "store": source,
        "degraded": None,
    }


def read_store(store: CircuitStore) -> list[dict[str, Any]]:
    """Stats of every circuit in the store, in name order."""
    source = store.url
    return [stored_stats(stored, source) for stored in sorted(store.load_all(), key=_by_name)]


def _by_name(stored: StoredCircuit) -> str:
    return stored.name


def report_from_store(store: CircuitStore, now: float) -> SourceReport:
    """The store's circuits; an unreadable store is reported, not raised (for live views)."""
    try:
        circuits = read_store(store)
    except StateError as error:
        return SourceReport(store.url, (), now, f"state unreadable: {error}")
    return SourceReport(store.url, tuple(circuits), now)


def reset_in_store(store: CircuitStore, name: str | None) -> list[CircuitReset]:
    """Reset one circuit (or every one, with None) in the store, with its stats before and after.

    An unknown name raises UnknownCircuitError listing the circuits the store knows.
    """
    circuits = {stored.name: stored for stored in store.load_all()}
    if name is not None and name not in circuits:
        raise UnknownCircuitError(name, circuits)
    names = sorted(circuits) if name is None else [name]
    source = store.url
    results = []
    for each in names:
        stored = circuits[each]
        update = store.reset(each, stored.config)
        after = StoredCircuit(each, update.after, stored.config, update.now)
        before = StoredCircuit(each, update.before, stored.config, update.now)
        results.append(
            CircuitReset(each, stored_stats(before, source), stored_stats(after, source))
        )
    return results


def forget_in_store(
    store: CircuitStore, names: Sequence[str] = (), *, stale: float | None = None
) -> list[tuple[str, str]]:
    """Delete circuits from the store: `names` (all must exist, else UnknownCircuitError and
    nothing is deleted), or with `stale` every circuit whose last change and last failure are at
    least that many seconds old, except those held by force. Returns (name, state) of each."""
    circuits = {stored.name: stored for stored in store.load_all()}
    if stale is not None:
        now = store.clock_now()
        chosen = [
            name
            for name, stored in sorted(circuits.items())
            if not stored.snapshot.forced and now - _last_activity(stored) >= stale
        ]
    else:
        chosen = list(dict.fromkeys(names))
        for name in chosen:
            if name not in circuits:
                raise UnknownCircuitError(name, circuits)
    return [(name, circuits[name].snapshot.state.value) for name in chosen if store.forget(name)]


def _last_activity(stored: StoredCircuit) -> float:
    snapshot = stored.snapshot
    return max(snapshot.changed_at or 0.0, snapshot.last_failure_at or 0.0)


# -- health endpoints over HTTP ----------------------------------------------------------------


def health_url(url: str) -> str:
    """The `/health` URL of a service given its base URL or its `/health` URL.

    Anything but an http(s) URL with a host is a UsageError (exit 2).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"health endpoint must be an http:// or https:// URL, got {_safe(url)!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/health"):
        path = f"{path}/health"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _base_url(url: str) -> str:
    health = health_url(url)
    return health[: -len("/health")]


def _safe(url: str) -> str:
    """The URL without any password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _client(timeout: float) -> httpx.Client:
    import httpx

    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)


def _decode(response: httpx.Response, where: str) -> Any:
    """The JSON body of a cbctl health answer, or a DependencyError saying what came instead."""
    kind = response.headers.get("content-type", "").split(";")[0].strip() or "no content type"
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DependencyError(
            f"{where} answered HTTP {response.status_code} with {kind}, not cbctl health JSON"
        ) from None


def fetch_health(
    url: str, *, timeout: float = DEFAULT_HTTP_TIMEOUT, client: httpx.Client | None = None
) -> list[dict[str, Any]]:
    """The circuits a service's `/health` reports, as stats dicts in name order.

    Raises UsageError for a non-http(s) URL and DependencyError when the endpoint is
    unreachable or answers anything but cbctl health JSON.
    """
    target = health_url(url)
    where = _safe(target)
    return _with_client(client, timeout, lambda http: _fetch(http, target, where))


def _fetch(http: httpx.Client, target: str, where: str) -> list[dict[str, Any]]:
    response = _request(http, "GET", target, where)
    payload = _decode(response, where)
    circuits = payload.get("circuits") if isinstance(payload, dict) else None
    if response.status_code != 200 or not isinstance(circuits, dict):
        raise DependencyError(
            f"{where} answered HTTP {response.status_code} without a 'circuits' object: "
            "not a cbctl health endpoint"
        )
    stats = []
    for name, entry in sorted(circuits.items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("state"), str):
            raise DependencyError(f"{where} reported circuit {name!r} without a state")
        stats.append({**entry, "name": name})
    return stats


def _request(
    http: httpx.Client, method: str, target: str, where: str, **kwargs: Any
) -> httpx.Response:
    import httpx

    try:
        return http.request(method, target, **kwargs)
    except httpx.TimeoutException:
        raise DependencyError(f"{where} unreachable: timed out") from None
    except httpx.HTTPError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DependencyError(f"{where} unreachable: {reason}") from None


def _with_client(
    client: httpx.Client | None, timeout: float, work: Callable[[httpx.Client], _T]
) -> _T:
    if client is not None:
        return work(client)
    with _client(timeout) as own:
        return work(own)


def report_from_url(
    url: str,
    now: float,
    *,
    timeout: float = DEFAULT_HTTP_TIMEOUT,
    client: httpx.Client | None = None,
) -> SourceReport:
    """A service's circuits; an endpoint that fails is reported as unreachable, not raised."""
    try:
        circuits = fetch_health(url, timeout=timeout, client=client)
    except DependencyError as error:
        return SourceReport(_safe(url), (), now, str(error))
    return SourceReport(_safe(url), tuple(circuits), now)


def reset_remote(
    url: str,
    name: str | None,
    token: str,
    *,
    timeout: float = DEFAULT_HTTP_TIMEOUT,
    client: httpx.Client | None = None,
) -> list[CircuitReset]:
    """Reset one circuit (or every one, with None) through a service's health endpoint.

    401/403 are UsageErrors (a token problem), 404 an UnknownCircuitError with the circuits the
    service reports, anything unexpected a DependencyError. The token is never put in a message.
    """
    base = _base_url(url)
    where = _safe(base)

    def run(http: httpx.Client) -> list[CircuitReset]:
        names: Sequence[str]
        if name is None:
            names = [entry["name"] for entry in _fetch(http, f"{base}/health", where)]
        else:
            names = [name]
        return [_reset_one(http, base, where, each, token) for each in names]

    return _with_client(client, timeout, run)


def _reset_one(http: httpx.Client, base: str, where: str, name: str, token: str) -> CircuitReset:
    target = f"{base}/circuits/{quote(name, safe='')}/reset"
    response = _request(http, "POST", target, where, headers={"Authorization": f"Bearer {token}"})
    payload = _decode(response, where)
    message = payload.get("error") if isinstance(payload, dict) else None
    status = response.status_code
    if status == 404 and isinstance(payload, dict) and isinstance(payload.get("known"), list):
        raise UnknownCircuitError(name, [str(each) for each in payload["known"]])
    if status in (401, 403):
        raise UsageError(f"{where} refused the reset (HTTP {status}): {message or 'forbidden'}")
    if status != 200 or not isinstance(payload, dict):
        raise DependencyError(f"{where} answered HTTP {status} to the reset: {message or payload}")
    before, after = payload.get("before"), payload.get("after")
    if not isinstance(before, dict) or not isinstance(after, dict):
        raise DependencyError(f"{where} answered the reset without before/after stats")
    return CircuitReset(name, before, after)


class FleetReader:
    """Reads one store and any number of health endpoints together, again and again (for watch).

    One HTTP client (keep-alive) serves every refresh; endpoints are read in parallel so one
    that hangs costs at most `timeout` per refresh, and shows as unreachable.
    """

    def __init__(
        self, store: CircuitStore | None, urls: Sequence[str], *, timeout: float = 2.0
    ) -> None:
        self._store = store
        self._urls = [health_url(url) for url in urls]
        self._timeout = timeout
        self._client: httpx.Client | None = _client(timeout) if self._urls else None
        self._pool: ThreadPoolExecutor | None = None
        if len(self._urls) > 1:
            self._pool = ThreadPoolExecutor(min(8, len(self._urls)), "cbctl-watch")

    def read(self, now: float) -> list[SourceReport]:
        """Every source's report, the store first, then the endpoints in the order given."""
        reports = [] if self._store is None else [report_from_store(self._store, now)]

        def one(url: str) -> SourceReport:
            return report_from_url(url, now, timeout=self._timeout, client=self._client)

        if self._pool is not None:
            reports += list(self._pool.map(one, self._urls))
        else:
            reports += [one(url) for url in self._urls]
        return reports

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> FleetReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
