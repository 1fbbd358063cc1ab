"""Circuits as data, wherever they live: the shared state, or services' health endpoints.

`status`, `watch`, `reset` and the health endpoint all read circuits through this module, so a
circuit looks the same (the `breaker.stats` keys) whether it came from the state file, Redis or
a remote `/health`. Nothing here prints; HTTP (httpx) is imported only when a URL is used.

A remote endpoint is not trusted: every read has a total deadline (a body dripped byte by byte
does not hold `watch`), a cap on the decoded size (gzip included), and its circuits are checked
field by field; a circuit whose record makes no sense shows as "unreadable" with the reason.
A store record that cannot be decoded is shown the same way.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlunsplit

from cbctl.breaker import circuit_stats
from cbctl.errors import (
    DependencyError,
    StateError,
    UnknownCircuitError,
    UnreadableCircuitsError,
    UsageError,
)
from cbctl.redaction import redact_url, remember, scrub
from cbctl.state import BreakerConfig, CircuitState, CircuitStore, StoredCircuit
from cbctl.urls import parse_url

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CircuitReset",
    "FleetReader",
    "SharedCircuit",
    "SourceReport",
    "distinct_circuits",
    "fetch_health",
    "forget_in_store",
    "health_url",
    "read_store",
    "report_from_store",
    "report_from_url",
    "reset_in_store",
    "reset_remote",
    "stored_stats",
    "unreadable_stats",
]

DEFAULT_HTTP_TIMEOUT = 2.0
MAX_RESPONSE_BYTES = 1 << 20
"""The most an endpoint's answer may hold once decoded; cbctl's own /health for 1,000 circuits
is about 600 kB."""
MAX_ERROR_CHARS = 200
UNREADABLE = "unreadable"
_STATES = frozenset({*(state.value for state in CircuitState), UNREADABLE})
_T = TypeVar("_T")
logger = logging.getLogger("cbctl.fleet")


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


# -- one circuit seen by several sources ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SharedCircuit:
    """A circuit as a fleet view counts it: its first report, and every source that showed it."""

    stats: dict[str, Any]
    sources: tuple[str, ...]


def _machine(where: str) -> str:
    """The host a source or store lives on; "" for this machine (a path, a loopback address)."""
    import ipaddress
    from urllib.parse import urlsplit

    if "://" not in where:
        return ""
    try:
        host = (urlsplit(where).hostname or "").lower()
    except ValueError:
        return where
    if host in ("", "localhost") or host.endswith(".localhost"):
        return ""
    try:
        return "" if ipaddress.ip_address(host).is_loopback else host
    except ValueError:
        return host


def _identity(stats: Mapping[str, Any], source: str) -> tuple[str, str, str] | None:
    """Which circuit `stats` is, across the sources of one view; None when it is nobody else's.

    The same circuit is the same name in the same store (`stats["store"]`): a Redis on another
    host is that host's wherever it is reported from, while a state file or a loopback Redis is
    the store of the machine that reports it (the source's host; this machine's for the local
    state and for endpoints on loopback). An in-process (memory) circuit or an unreadable entry
    belongs to its source alone.
    """
    store, name = stats.get("store"), stats.get("name")
    if not isinstance(store, str) or not store or store.startswith("memory"):
        return None
    if stats.get("state") == UNREADABLE:
        return None
    host = _machine(store) or _machine(source)
    return (str(name), store, host)


def distinct_circuits(reports: Sequence[SourceReport]) -> list[SharedCircuit]:
    """Every circuit of the reports once, in the order first seen: two services on one shared
    store (and the store itself, when watched too) report the same circuit, counted once."""
    seen: dict[tuple[str, str, str], int] = {}
    found: list[SharedCircuit] = []
    for report in reports:
        for stats in report.circuits:
            key = _identity(stats, report.source)
            if key is not None and key in seen:
                index = seen[key]
                first = found[index]
                found[index] = SharedCircuit(first.stats, (*first.sources, report.source))
                continue
            if key is not None:
                seen[key] = len(found)
            found.append(SharedCircuit(stats, (report.source,)))
    return found


# -- the shared state --------------------------------------------------------------------------


def stored_stats(stored: StoredCircuit, source: str) -> dict[str, Any]:
    """`breaker.stats` keys for a circuit read from a store.

    Stores keep state, not per-process call counters, so `calls`/`successes`/`failures`/
    `rejections`/`transitions` are None: only the process that made the calls knows them.
    """
    return circuit_stats(stored.name, stored.snapshot, stored.config, stored.now, store=source)


def unreadable_stats(name: str, reason: str, source: str) -> dict[str, Any]:
    """The stats of a circuit whose record could not be trusted: state "unreadable", and why."""
    return {"name": name, "state": UNREADABLE, "error": reason, "store": source}


def load_store(store: CircuitStore) -> tuple[list[StoredCircuit], dict[str, str]]:
    """The store's circuits that could be decoded, and {name: why} for those that could not."""
    try:
        return store.load_all(), {}
    except UnreadableCircuitsError as error:
        return error.readable, error.unreadable


def read_store(store: CircuitStore) -> list[dict[str, Any]]:
    """Stats of every circuit in the store, in name order; foreign records as "unreadable"."""
    source = store.url
    stored, unreadable = load_store(store)
    for reason in unreadable.values():
        logger.warning("%s", reason)
    stats = [stored_stats(each, source) for each in stored]
    stats += [unreadable_stats(name, reason, source) for name, reason in unreadable.items()]
    return sorted(stats, key=lambda each: str(each["name"]))


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
    loaded, unreadable = load_store(store)
    if name is not None and name in unreadable:
        raise StateError(unreadable[name])
    circuits = {stored.name: stored for stored in loaded}
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


def hold_in_store(
    store: CircuitStore,
    name: str,
    state: CircuitState,
    *,
    for_: float | None,
    reason: str | None,
    owner: str,
    known: Mapping[str, BreakerConfig],
) -> CircuitReset:
    """Hold one circuit OPEN or CLOSED in the store (for `for_` seconds, or until reset), with
    its stats before and after.

    The circuit must be in the store or in `known` (configured dependencies and their breaker
    settings, so a dependency can be held before its first call); otherwise UnknownCircuitError.
    """
    loaded, unreadable = load_store(store)
    if name in unreadable:
        raise StateError(unreadable[name])
    circuits = {stored.name: stored for stored in loaded}
    if name not in circuits and name not in known:
        raise UnknownCircuitError(name, {*circuits, *known})
    config = circuits[name].config if name in circuits else known[name]
    update = store.force(name, config, state, for_=for_, reason=reason, owner=owner)
    source = store.url
    before = StoredCircuit(name, update.before, config, update.now)
    after = StoredCircuit(name, update.after, config, update.now)
    return CircuitReset(name, stored_stats(before, source), stored_stats(after, source))


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

    The URL goes through cbctl's one parser: anything but an http(s) URL with a host and a port
    in range, and any URL with credentials in it (the bearer token is given apart), is a
    UsageError (exit 2) before anything is sent.
    """
    parsed = parse_url(
        url.strip(), "--url", schemes=("http", "https"), userinfo=False, purpose="a health endpoint"
    )
    path = parsed.path.rstrip("/")
    if not path.endswith("/health"):
        path = f"{path}/health"
    host = f"[{parsed.host}]" if parsed.host and ":" in parsed.host else parsed.host
    netloc = f"{host}:{parsed.port}" if parsed.port is not None else str(host)
    return urlunsplit((parsed.scheme, netloc, path, "", ""))


def _base_url(url: str) -> str:
    health = health_url(url)
    return health[: -len("/health")]


def _client(timeout: float) -> httpx.Client:
    import httpx

    from cbctl.redaction import scrub_logger

    scrub_logger("httpx")
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)


@dataclass(frozen=True, slots=True)
class _Answer:
    """An endpoint's answer, read in full within the deadline and the size cap."""

    status: int
    content_type: str
    body: bytes


def _decoder(encoding: str, where: str) -> zlib._Decompress | None:
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(wbits=47)  # gzip or zlib, by the header
    raise DependencyError(f"{where} answered with unsupported Content-Encoding {encoding[:40]!r}")


def _request(
    http: httpx.Client, method: str, target: str, where: str, timeout: float, **kwargs: Any
) -> _Answer:
    """One request, its whole answer within `timeout` seconds and MAX_RESPONSE_BYTES decoded.

    The body is read raw and decoded here, so a gzip bomb stops at the cap instead of being
    inflated in full first; a body dripped slowly stops at the deadline.
    """
    import httpx

    end = time.monotonic() + timeout
    headers = {**kwargs.pop("headers", {}), "Accept-Encoding": "gzip, identity"}
    try:
        with http.stream(method, target, headers=headers, timeout=timeout, **kwargs) as response:
            encoding = response.headers.get("content-encoding", "").strip().lower()
            decoder = _decoder(encoding, where)
            body = bytearray()
            for chunk in response.iter_raw():
                if decoder is not None:
                    chunk = decoder.decompress(chunk, MAX_RESPONSE_BYTES - len(body) + 1)
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise DependencyError(
                        f"{where} answered more than {MAX_RESPONSE_BYTES} bytes: not a cbctl "
                        "health endpoint"
                    )
                if time.monotonic() > end:
                    raise httpx.ReadTimeout("deadline passed")
            kind = response.headers.get("content-type", "").split(";")[0].strip()
            return _Answer(response.status_code, kind or "no content type", bytes(body))
    except httpx.TimeoutException as error:
        raise DependencyError(f"{where} unreachable: no full answer within {timeout:g}s") from error
    except zlib.error as error:
        raise DependencyError(f"{where} answered a body that does not decompress") from error
    except httpx.HTTPError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DependencyError(f"{where} unreachable: {_cut(reason)}") from error


def _cut(text: object) -> str:
    """An untrusted text for a message: secrets scrubbed first, then cut to length (a secret cut
    in half would no longer be recognised)."""
    clean = " ".join(scrub(str(text)).split())
    return clean if len(clean) <= MAX_ERROR_CHARS else clean[: MAX_ERROR_CHARS - 3] + "..."


def _decode(answer: _Answer, where: str) -> Any:
    """The JSON body of a cbctl health answer, or a DependencyError saying what came instead."""
    try:
        return json.loads(answer.body)
    except (ValueError, UnicodeDecodeError) as error:
        raise DependencyError(
            f"{where} answered HTTP {answer.status} with {_cut(answer.content_type)}, "
            "not cbctl health JSON"
        ) from error
    except RecursionError as error:
        raise DependencyError(f"{where} answered JSON nested too deeply") from error


def fetch_health(
    url: str, *, timeout: float = DEFAULT_HTTP_TIMEOUT, client: httpx.Client | None = None
) -> list[dict[str, Any]]:
    """The circuits a service's `/health` reports, as stats dicts in name order.

    Raises UsageError for a URL that cbctl does not accept and DependencyError when the endpoint
    is unreachable, too slow, too large, or answers anything but cbctl health JSON.
    """
    target = health_url(url)
    where = redact_url(target)
    return _with_client(client, timeout, lambda http: _fetch(http, target, where, timeout))


_COUNT_KEYS = ("failure_count", "success_count", "failure_threshold", "success_threshold")
_NUMBER_KEYS = ("retry_after", "timeout")
_RATE_KEYS = ("failure_rate", "slow_call_rate")
_DURATION_KEYS = ("open_duration",)
_TEXT_KEYS = (
    "last_failure",
    "last_error",
    "opened_at",
    "state_since",
    "error",
    "hold_reason",
    "hold_owner",
    "hold_until",
)


def _checked(name: str, entry: object) -> dict[str, Any]:
    """An endpoint's circuit as stats, or an "unreadable" entry saying which field is foreign."""
    if not isinstance(entry, Mapping):
        return unreadable_stats(name, "the circuit is not a JSON object", "")
    problem = None
    if entry.get("state") not in _STATES:
        problem = f"state {_cut(repr(entry.get('state')))} is not a circuit state"
    for key in _COUNT_KEYS:
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            problem = problem or f"{key} is {_cut(repr(value))}, not a whole number"
    for key in _NUMBER_KEYS:
        value = entry.get(key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and (not number or not math.isfinite(value)):
            problem = problem or f"{key} is {_cut(repr(value))}, not a number"
    for key in _TEXT_KEYS:
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            problem = problem or f"{key} is {_cut(repr(value))}, not text"
    for keys, low, high, kind in (
        (_RATE_KEYS, 0.0, 1.0, "a rate from 0 to 1"),
        (_DURATION_KEYS, 0.0, math.inf, "a number of seconds"),
    ):
        for key in keys:
            value = entry.get(key)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if value is not None and not (number and math.isfinite(value) and low <= value <= high):
                problem = problem or f"{key} is {_cut(repr(value))}, not {kind}"
    if problem is not None:
        return unreadable_stats(name, problem, "")
    return {**entry, "name": name}


def _fetch(http: httpx.Client, target: str, where: str, timeout: float) -> list[dict[str, Any]]:
    answer = _request(http, "GET", target, where, timeout)
    payload = _decode(answer, where)
    circuits = payload.get("circuits") if isinstance(payload, dict) else None
    if answer.status != 200 or not isinstance(circuits, dict):
        raise DependencyError(
            f"{where} answered HTTP {answer.status} without a 'circuits' object: "
            "not a cbctl health endpoint"
        )
    return [_checked(name, entry) for name, entry in sorted(circuits.items())]


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
    shown = redact_url(url)
    try:
        circuits = fetch_health(url, timeout=timeout, client=client)
    except DependencyError as error:
        return SourceReport(shown, (), now, str(error))
    return SourceReport(shown, tuple(circuits), now)


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
    service reports, anything unexpected a DependencyError. The token is never put in a message,
    and a URL that is refused (bad port, credentials in it) is refused before anything is sent.
    """
    base = _base_url(url)
    where = redact_url(base)
    remember(token)  # from now on every message, even an endpoint echoing it, masks it

    def run(http: httpx.Client) -> list[CircuitReset]:
        names: Sequence[str]
        if name is None:
            names = [entry["name"] for entry in _fetch(http, f"{base}/health", where, timeout)]
        else:
            names = [name]
        return [_reset_one(http, base, where, each, token, timeout) for each in names]

    return _with_client(client, timeout, run)


def _reset_one(
    http: httpx.Client, base: str, where: str, name: str, token: str, timeout: float
) -> CircuitReset:
    target = f"{base}/circuits/{quote(name, safe='')}/reset"
    headers = {"Authorization": f"Bearer {token}"}
    answer = _request(http, "POST", target, where, timeout, headers=headers)
    payload = _decode(answer, where)
    message = _cut(payload.get("error")) if isinstance(payload, dict) else None
    status = answer.status
    if status == 404 and isinstance(payload, dict) and isinstance(payload.get("known"), list):
        raise UnknownCircuitError(name, [str(each) for each in payload["known"]])
    if status in (401, 403):
        raise UsageError(f"{where} refused the reset (HTTP {status}): {message or 'forbidden'}")
    if status != 200 or not isinstance(payload, dict):
        raise DependencyError(
            f"{where} answered HTTP {status} to the reset: {message or _cut(payload)}"
        )
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
