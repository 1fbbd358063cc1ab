"""The health endpoints of a service's circuits, as a plain ASGI app (no web framework needed).

    app = health_app(registry, token=os.environ.get("CBCTL_TOKEN"))
    fastapi_app.mount("/cbctl", app)          # or Starlette's Mount, or any ASGI server

- `GET /health` always answers 200 (a dependency outage must not make the service look dead):
  `{"status": "ok"|"degraded", "circuits": {name: stats}}`. "degraded" means at least one
  circuit is not CLOSED, or a breaker has lost its shared store, or the store cannot be read.
- `GET /metrics` is Prometheus text from a CollectorRegistry of this app's own, holding one
  `cbctl.metrics.CircuitCollector` (made at the first scrape: call durations count from then,
  unless `time_calls=False`; register your own collector at start-up to time every call).
- `GET /events?since=CURSOR` is the transition journal after the cursor (all kept when absent):
  `{"events": [{"id", "circuit", "at", "previous", "state", "failures", "error", "source"}...],
  "cursor": ...}`; pass `cursor` back as `since` to get only what is new (`&circuit=NAME` to
  keep one circuit's).
- `POST /circuits/{name}/reset` closes one circuit. It needs `Authorization: Bearer <token>`:
  without a configured token every reset is refused (403); a missing or wrong token is 401; an
  unknown circuit 404 (the body lists the known ones). Answers are `{"circuit", "before", "after"}`.

Every error is a JSON `{"error": ...}` with a 4xx status, never a traceback; tokens are compared
in constant time and never logged. The source is a `CircuitBreakerRegistry` (a service's own
breakers) or a `CircuitStore` (what `cbctl serve` shows: every circuit of the shared state).
/health answers are shared for up to `max_age` (0.1 s by default) between requests, which keeps
a burst of requests cheap. `HealthApp.respond` is the same logic as a plain function, for servers
that are not ASGI (`cbctl.serving`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from cbctl.errors import StateError, UnknownCircuitError, UsageError
from cbctl.fleet import load_store, reset_in_store, stored_stats, unreadable_stats
from cbctl.journal import Journaled, TransitionEvent
from cbctl.registry import CircuitBreakerRegistry
from cbctl.state import CircuitState, CircuitStore

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["HealthApp", "HttpResponse", "health_app"]

logger = logging.getLogger("cbctl.health")

MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_AGE = 0.1
JSON_TYPE = "application/json"

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """One answer: status, headers (name, value) and the body bytes."""

    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = field(default=())


def _json(status: int, payload: Any, *headers: tuple[str, str]) -> HttpResponse:
    return HttpResponse(status, json.dumps(payload).encode(), JSON_TYPE, headers)


def _error(status: int, message: str, **extra: Any) -> HttpResponse:
    return _json(status, {"error": message, **extra})


class HealthApp:
    """The endpoints over one registry or store; an ASGI app, and `respond()` for other servers."""

    def __init__(
        self,
        source: CircuitBreakerRegistry | CircuitStore,
        token: str | None = None,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        time_calls: bool = True,
    ) -> None:
        self._source = source
        self._max_age = max_age
        self._time_calls = time_calls
        self._cached: tuple[float, HttpResponse] | None = None
        self._cache_lock = threading.Lock()
        self._token = token.encode() if token else None
        self._generations: dict[str, int] = {}
        self._reported: frozenset[str] = frozenset()
        self._metrics: CollectorRegistry | None = None
        self._metrics_lock = threading.Lock()
        self._blocking = not (isinstance(source, CircuitBreakerRegistry) and source.store is None)

    def __repr__(self) -> str:
        return f"<HealthApp over {type(self._source).__name__}, reset {self.reset_enabled}>"

    @property
    def reset_enabled(self) -> bool:
        return self._token is not None

    # -- the circuits --------------------------------------------------------------------------

    def circuits(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        """{name: stats} now, and why the state could not be read (None when it could)."""
        source = self._source
        if isinstance(source, CircuitBreakerRegistry):
            return source.get_all_stats(), None
        try:
            loaded, unreadable = load_store(source)
        except StateError as error:
            return {}, str(error)
        stored = sorted(loaded, key=lambda each: each.name)
        self._generations = {each.name: each.snapshot.generation for each in stored}
        url = source.url
        circuits = {each.name: stored_stats(each, url) for each in stored}
        if unreadable:
            self._report(unreadable)
            for name, reason in unreadable.items():
                circuits[name] = unreadable_stats(name, reason, url)
            circuits = dict(sorted(circuits.items()))
        return circuits, None

    def _report(self, unreadable: Mapping[str, str]) -> None:
        """Log each unreadable record once (not on every request), with the reason."""
        fresh = set(unreadable.values()) - self._reported
        for reason in sorted(fresh):
            logger.warning("circuit shown as unreadable: %s", reason)
        self._reported = self._reported | fresh

    def registry(self) -> CircuitBreakerRegistry:
        """The service's registry this app shows; UsageError when it shows a store."""
        if not isinstance(self._source, CircuitBreakerRegistry):
            raise UsageError("this health app shows a store, not a registry of breakers")
        return self._source

    @property
    def serves_store(self) -> bool:
        """Whether the circuits come from a store (`cbctl serve`), not a service's registry."""
        return not isinstance(self._source, CircuitBreakerRegistry)

    def transitions(self, name: str, stats: Mapping[str, Any] | None = None) -> int | None:
        """Transitions of a circuit, as cbctl.metrics.TRANSITIONS_HELP says: a registry
        breaker's own count since it was created (also those before the first scrape); a store's
        state changes as recorded in the shared state (transitions, resets and holds each bump
        its generation)."""
        if not self.serves_store:
            counted = (stats or {}).get("transitions")
            return counted if isinstance(counted, int) else None
        return self._generations.get(name)

    # -- requests ------------------------------------------------------------------------------

    def respond(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, query: str = ""
    ) -> HttpResponse:
        """The answer to one request; `path` without query string (given apart as `query`),
        headers with lowercase names."""
        if path in ("/health", "/health/"):
            return self._only(method, "GET") or self._health()
        if path in ("/metrics", "/metrics/"):
            return self._only(method, "GET") or self._metrics_text()
        if path in ("/events", "/events/"):
            return self._only(method, "GET") or self._events(query)
        segments = path.split("/")
        if len(segments) == 4 and segments[:2] == ["", "circuits"] and segments[3] == "reset":
            return self._only(method, "POST") or self._reset(segments[2], headers, body)
        return _error(404, f"no such endpoint {path[:200]!r} (try /health, /metrics, /events)")

    @staticmethod
    def _only(method: str, allowed: str) -> HttpResponse | None:
        """None when `method` may be used here (HEAD wherever GET may), else a 405."""
        if method == allowed or (method == "HEAD" and allowed == "GET"):
            return None
        allow = "GET, HEAD" if allowed == "GET" else allowed
        message = f"method {method[:20]} not allowed here; use {allowed}"
        return _json(405, {"error": message}, ("Allow", allow))

    def _health(self) -> HttpResponse:
        """The /health answer, computed at most once per `max_age` however many ask."""
        if self._max_age <= 0:
            return self._fresh_health()
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < self._max_age:
            return cached[1]
        with self._cache_lock:
            cached = self._cached
            if cached is not None and time.monotonic() - cached[0] < self._max_age:
                return cached[1]
            response = self._fresh_health()
            self._cached = (time.monotonic(), response)
            return response

    def _fresh_health(self) -> HttpResponse:
        circuits, unreadable = self.circuits()
        degraded = unreadable is not None or any(
            stats.get("state") != CircuitState.CLOSED.value or stats.get("degraded")
            for stats in circuits.values()
        )
        payload: dict[str, Any] = {"status": "degraded" if degraded else "ok", "circuits": circuits}
        if unreadable is not None:
            payload["error"] = unreadable
        return _json(200, payload)

    def events(self, since: int | None = None) -> list[TransitionEvent]:
        """The journal of the source's circuits after cursor `since`, oldest first."""
        source = self._source
        if isinstance(source, CircuitBreakerRegistry):
            return source.events(since)
        if isinstance(source, Journaled):
            return source.events(None, since)
        return []

    def _events(self, query: str) -> HttpResponse:
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=False)
        except ValueError:
            params = {}
        raw_since = params.get("since", [""])[-1]
        since: int | None = None
        if raw_since:
            try:
                since = int(raw_since)
            except ValueError:
                return _error(
                    400, f"since must be a cursor from an earlier answer, got {raw_since[:40]!r}"
                )
        circuit = params.get("circuit", [""])[-1]
        try:
            events = self.events(since)
        except StateError as error:
            return _error(503, f"state unavailable: {error}")
        cursor = events[-1].id if events else since
        if circuit:
            events = [event for event in events if event.circuit == circuit]
        return _json(200, {"events": [event.to_json() for event in events], "cursor": cursor})

    def _reset(self, raw_name: str, headers: Mapping[str, str], body: bytes) -> HttpResponse:
        if self._token is None:
            return _error(403, "resets over HTTP are disabled: the server has no token configured")
        if not self._authorized(headers.get("authorization", "")):
            return _json(
                401, {"error": "missing or wrong bearer token"}, ("WWW-Authenticate", "Bearer")
            )
        problem = _body_problem(body)
        if problem is not None:
            return _error(400, problem)
        name = unquote(raw_name, errors="strict") if _decodable(raw_name) else ""
        if not name or not name.isprintable():
            return _error(400, "the circuit name in the path is empty or not printable")
        try:
            before, after = self._reset_circuit(name)
        except UnknownCircuitError as error:
            return _error(404, str(error), known=error.known)
        except StateError as error:
            return _error(503, f"state unavailable: {error}")
        self._cached = None
        logger.info("circuit=%s reset over HTTP", name, extra={"circuit": name})
        return _json(200, {"circuit": name, "before": before, "after": after})

    def _authorized(self, header: str) -> bool:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or self._token is None:
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)

    def _reset_circuit(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        source = self._source
        if isinstance(source, CircuitBreakerRegistry):
            if name not in source:
                raise UnknownCircuitError(name, source.names())
            breaker = source.get(name)
            before = breaker.stats
            source.reset(name)
            return before, breaker.stats
        (done,) = reset_in_store(source, name)
        return done.before, done.after

    def _metrics_text(self) -> HttpResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return HttpResponse(200, generate_latest(self._metrics_registry()), CONTENT_TYPE_LATEST)

    def _metrics_registry(self) -> CollectorRegistry:
        with self._metrics_lock:
            if self._metrics is None:
                from prometheus_client import CollectorRegistry

                from cbctl.metrics import CircuitCollector

                registry = CollectorRegistry(auto_describe=False)
                registry.register(CircuitCollector(self, time_calls=self._time_calls))
                self._metrics = registry
            return self._metrics

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI 3 entry point: HTTP requests, and lifespan events answered as supported."""
        kind = scope.get("type")
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        body, too_large = await _read_body(receive)
        if too_large:
            response = _error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        else:
            path = _route_path(scope)
            headers = {
                key.decode("latin-1").lower(): value.decode("latin-1")
                for key, value in scope.get("headers", ())
            }
            method = str(scope.get("method", "GET"))
            query = bytes(scope.get("query_string", b"")).decode("latin-1")
            if self._blocking:
                response = await asyncio.get_running_loop().run_in_executor(
                    None, self.respond, method, path, headers, body, query
                )
            else:
                response = self.respond(method, path, headers, body, query)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (b"content-type", response.content_type.encode()),
                    (b"content-length", str(len(response.body)).encode()),
                    *((k.encode(), v.encode()) for k, v in response.headers),
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})


def health_app(
    source: CircuitBreakerRegistry | CircuitStore,
    token: str | None = None,
    *,
    max_age: float = DEFAULT_MAX_AGE,
    time_calls: bool = True,
) -> HealthApp:
    """The health endpoints of `source`; resets over HTTP only when `token` is given.

    `max_age` (seconds) lets concurrent /health requests share one computed answer, so a burst
    of requests costs at most one pass over the circuits per `max_age`; 0 computes every time.
    A reset through the app is visible at once. `time_calls=False` leaves the call-duration
    histogram out of /metrics (and the breakers' calls untimed).
    """
    return HealthApp(source, token, max_age=max_age, time_calls=time_calls)


def _decodable(text: str) -> bool:
    try:
        unquote(text, errors="strict")
    except UnicodeDecodeError:
        return False
    return True


def _body_problem(body: bytes) -> str | None:
    """A reset takes no parameters: an empty body or a JSON object is fine, anything else is not."""
    if not body.strip():
        return None
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return "the request body is not valid JSON (send nothing, or {})"
    if not isinstance(payload, dict):
        return "the request body must be a JSON object (send nothing, or {})"
    return None


def _route_path(scope: Scope) -> str:
    """The path below the mount point (Starlette keeps the full path and sets root_path)."""
    path = str(scope.get("path", "/"))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            break
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), False


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message.get("type") == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message.get("type") == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
