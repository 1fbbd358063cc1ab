"""The health endpoints: /health, /metrics and authenticated resets, as logic and as ASGI."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cbctl import CircuitBreakerRegistry, FakeClock
from cbctl.errors import StoreUnavailableError
from cbctl.health import HealthApp, HttpResponse, health_app
from cbctl.state import StoredCircuit
from cbctl.stores import MemoryStore

TOKEN = "s3cret-token"


def trip(registry: CircuitBreakerRegistry, name: str) -> None:
    breaker = registry.get(name)
    for _ in range(breaker.failure_threshold):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)


@pytest.fixture
def registry() -> CircuitBreakerRegistry:
    registry = CircuitBreakerRegistry(
        default_config={"failure_threshold": 2, "timeout": 30.0}, clock=FakeClock()
    )
    registry.get("qdrant").call(lambda: None)
    registry.get("redis")
    return registry


def get(app: HealthApp, path: str) -> HttpResponse:
    return app.respond("GET", path, {}, b"")


def reset(app: HealthApp, name: str, token: str | None = TOKEN, body: bytes = b"") -> HttpResponse:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return app.respond("POST", f"/circuits/{name}/reset", headers, body)


def payload(response: HttpResponse) -> Any:
    return json.loads(response.body)


def test_health_is_ok_with_every_circuit_when_all_are_closed(
    registry: CircuitBreakerRegistry,
) -> None:
    response = get(health_app(registry, max_age=0), "/health")
    assert response.status == 200
    body = payload(response)
    assert body["status"] == "ok"
    assert sorted(body["circuits"]) == ["qdrant", "redis"]
    assert body["circuits"]["qdrant"]["state"] == "closed"
    assert body["circuits"]["qdrant"]["successes"] == 1


def test_health_is_degraded_but_still_200_when_a_circuit_is_open(
    registry: CircuitBreakerRegistry,
) -> None:
    trip(registry, "redis")
    response = get(health_app(registry, max_age=0), "/health")
    assert response.status == 200
    body = payload(response)
    assert body["status"] == "degraded"
    assert body["circuits"]["redis"]["state"] == "open"


class UnreachableStore(MemoryStore):
    """A store whose backend is down: every read fails the way a lost Redis does."""

    def load_all(self) -> list[StoredCircuit]:
        raise StoreUnavailableError("redis://127.0.0.1:1 unreachable")


def test_health_is_degraded_with_the_reason_when_the_store_cannot_be_read() -> None:
    response = get(health_app(UnreachableStore(), max_age=0), "/health")
    assert response.status == 200
    body = payload(response)
    assert body == {
        "status": "degraded",
        "circuits": {},
        "error": "redis://127.0.0.1:1 unreachable",
    }


def test_health_answers_are_shared_within_max_age_and_fresh_after_a_reset(
    registry: CircuitBreakerRegistry,
) -> None:
    app = health_app(registry, TOKEN, max_age=60)
    assert payload(get(app, "/health"))["status"] == "ok"
    trip(registry, "redis")
    assert payload(get(app, "/health"))["status"] == "ok"  # the shared answer
    assert reset(app, "qdrant").status == 200
    assert payload(get(app, "/health"))["status"] == "degraded"


def test_a_reset_without_a_configured_token_is_refused_with_403(
    registry: CircuitBreakerRegistry,
) -> None:
    trip(registry, "redis")
    response = reset(health_app(registry), "redis")
    assert response.status == 403
    assert "no token configured" in payload(response)["error"]
    assert registry.get("redis").state == "open"


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", ""],
)
def test_a_reset_with_a_missing_or_wrong_token_is_401(
    registry: CircuitBreakerRegistry, header: str | None
) -> None:
    trip(registry, "redis")
    headers = {} if header is None else {"authorization": header}
    response = health_app(registry, TOKEN).respond("POST", "/circuits/redis/reset", headers, b"")
    assert response.status == 401
    assert ("WWW-Authenticate", "Bearer") in response.headers
    assert TOKEN not in response.body.decode()
    assert registry.get("redis").state == "open"


def test_a_reset_with_the_token_closes_the_circuit_and_answers_before_and_after(
    registry: CircuitBreakerRegistry,
) -> None:
    trip(registry, "redis")
    response = reset(health_app(registry, TOKEN), "redis")
    assert response.status == 200
    body = payload(response)
    assert body["circuit"] == "redis"
    assert body["before"]["state"] == "open"
    assert body["after"]["state"] == "closed"
    assert registry.get("redis").state == "closed"


def test_a_reset_of_an_unknown_circuit_is_404_listing_the_known_ones(
    registry: CircuitBreakerRegistry,
) -> None:
    response = reset(health_app(registry, TOKEN), "postgres")
    assert response.status == 404
    body = payload(response)
    assert body["known"] == ["qdrant", "redis"]
    assert "postgres" in body["error"]
    assert "postgres" not in registry


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/circuits/redis/reset", b"{not json", 400),
        ("POST", "/circuits/redis/reset", b"[1, 2]", 400),
        ("POST", "/circuits/%ff%fe/reset", b"", 400),
        ("POST", "/circuits//reset", b"", 400),
        ("GET", "/circuits/redis/reset", b"", 405),
        ("POST", "/health", b"", 405),
        ("DELETE", "/metrics", b"", 405),
        ("GET", "/circuits/redis", b"", 404),
        ("GET", "/../../etc/passwd", b"", 404),
        ("GET", "/", b"", 404),
    ],
)
def test_malformed_requests_get_a_json_error_and_a_4xx(
    registry: CircuitBreakerRegistry, method: str, path: str, body: bytes, status: int
) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    response = health_app(registry, TOKEN).respond(method, path, headers, body)
    assert response.status == status
    assert isinstance(payload(response)["error"], str)


def test_a_reset_accepts_an_empty_json_object_as_body(registry: CircuitBreakerRegistry) -> None:
    trip(registry, "redis")
    assert reset(health_app(registry, TOKEN), "redis", body=b"{}").status == 200


def test_metrics_expose_state_calls_transitions_and_failures(
    registry: CircuitBreakerRegistry,
) -> None:
    app = health_app(registry)
    get(app, "/metrics")  # the app starts counting transitions of the breakers it has seen
    trip(registry, "redis")
    response = get(app, "/metrics")
    assert response.status == 200
    assert response.content_type.startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.body.decode())
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("cbctl_circuit_state", circuit="redis", state="open") == 1
    assert value("cbctl_circuit_state", circuit="redis", state="closed") == 0
    assert value("cbctl_circuit_state", circuit="redis", state="half_open") == 0
    assert value("cbctl_circuit_state", circuit="qdrant", state="closed") == 1
    assert value("cbctl_circuit_calls_total", circuit="redis", outcome="failure") == 2
    assert value("cbctl_circuit_calls_total", circuit="qdrant", outcome="success") == 1
    assert value("cbctl_circuit_transitions_total", circuit="redis") == 1
    assert value("cbctl_circuit_consecutive_failures", circuit="redis") == 2


def test_metrics_use_their_own_registry_not_the_global_one(
    registry: CircuitBreakerRegistry,
) -> None:
    from prometheus_client import REGISTRY, generate_latest

    get(health_app(registry), "/metrics")
    assert b"cbctl_circuit_state" not in generate_latest(REGISTRY)


def test_a_store_source_shows_and_resets_the_circuits_of_the_shared_state() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    writer = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, store=store)
    trip(writer, "postgresql")
    app = health_app(store, TOKEN, max_age=0)
    body = payload(get(app, "/health"))
    assert body["status"] == "degraded"
    assert body["circuits"]["postgresql"]["state"] == "open"
    assert body["circuits"]["postgresql"]["store"] == "memory://"
    assert body["circuits"]["postgresql"]["retry_after"] == pytest.approx(30.0)
    metrics = get(app, "/metrics").body.decode()
    assert 'cbctl_circuit_transitions_total{circuit="postgresql"} 1.0' in metrics
    assert reset(app, "postgresql").status == 200
    assert writer.get("postgresql").state == "closed"
    assert reset(app, "nope").status == 404


# -- as an ASGI app -----------------------------------------------------------------------------


def asgi_request(app: HealthApp, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def test_the_asgi_app_answers_health_and_resets(registry: CircuitBreakerRegistry) -> None:
    trip(registry, "redis")
    app = health_app(registry, TOKEN, max_age=0)
    assert asgi_request(app, "GET", "/health").json()["status"] == "degraded"
    response = asgi_request(
        app, "POST", "/circuits/redis/reset", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 200
    assert response.json()["after"]["state"] == "closed"
    assert asgi_request(app, "GET", "/health").json()["status"] == "ok"


def test_the_asgi_app_routes_below_its_mount_point(registry: CircuitBreakerRegistry) -> None:
    app = health_app(registry)

    async def mounted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app({**scope, "root_path": "/ops"}, receive, send)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=mounted)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            return await client.get("/ops/health")

    response = asyncio.run(go())
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_the_asgi_app_refuses_an_oversized_body_with_413(
    registry: CircuitBreakerRegistry,
) -> None:
    response = asgi_request(
        health_app(registry, TOKEN), "POST", "/circuits/redis/reset", content=b"x" * 70_000
    )
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]


def test_the_asgi_app_shows_the_circuits_of_a_store() -> None:
    store = MemoryStore()
    writer = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, store=store)
    trip(writer, "qdrant")
    body = asgi_request(health_app(store, max_age=0), "GET", "/health").json()
    assert body["circuits"]["qdrant"]["state"] == "open"


def test_the_asgi_app_completes_lifespan_startup_and_shutdown(
    registry: CircuitBreakerRegistry,
) -> None:
    app = health_app(registry)
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


def _families(app: Any) -> dict[str, Any]:
    text = get(app, "/metrics").body.decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_a_circuit_that_opened_before_the_first_scrape_counts_its_transition(
    registry: CircuitBreakerRegistry,
) -> None:
    trip(registry, "redis")
    families = _families(health_app(registry))
    transitions = families["cbctl_circuit_transitions"]
    assert (
        transitions.documentation
        == "State transitions of this process's breaker since it was created"
    )
    counted = {sample.labels["circuit"]: sample.value for sample in transitions.samples}
    assert counted["redis"] == 1
    state = {
        (sample.labels["circuit"], sample.labels["state"]): sample.value
        for sample in families["cbctl_circuit_state"].samples
    }
    assert state[("redis", "open")] == 1


def test_under_serve_counters_the_state_cannot_know_are_absent() -> None:
    store = MemoryStore(FakeClock())
    writer = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, store=store)
    trip(writer, "postgresql")
    families = _families(health_app(store))
    assert not families["cbctl_circuit_calls"].samples  # calls are counted per process
    transitions = families["cbctl_circuit_transitions"]
    assert transitions.documentation.startswith("State changes recorded in the shared state")
    assert [sample.value for sample in transitions.samples] == [1]


# -- the transition journal -----------------------------------------------------------------------


def test_events_list_the_journal_and_a_cursor_that_returns_only_what_is_new(
    registry: CircuitBreakerRegistry,
) -> None:
    app = health_app(registry, TOKEN)
    trip(registry, "redis")
    first = payload(get_query(app, "/events", ""))
    assert [(e["circuit"], e["previous"], e["state"], e["failures"]) for e in first["events"]] == [
        ("redis", "closed", "open", 2)
    ]
    assert first["events"][0]["error"] == "ZeroDivisionError: division by zero"
    assert first["events"][0]["at"].endswith("Z")
    assert first["cursor"] == first["events"][0]["id"]
    assert payload(get_query(app, "/events", f"since={first['cursor']}")) == {
        "events": [],
        "cursor": first["cursor"],
    }
    registry.reset("redis")
    trip(registry, "qdrant")
    newer = payload(get_query(app, "/events", f"since={first['cursor']}"))
    assert [(e["circuit"], e["state"]) for e in newer["events"]] == [
        ("redis", "closed"),
        ("qdrant", "open"),
    ]
    only = payload(get_query(app, "/events", f"since={first['cursor']}&circuit=qdrant"))
    assert [e["circuit"] for e in only["events"]] == ["qdrant"]
    assert only["cursor"] == newer["cursor"], "the cursor moves past the circuits left out"


def test_events_refuse_a_cursor_that_is_not_one(registry: CircuitBreakerRegistry) -> None:
    response = get_query(health_app(registry), "/events", "since=yesterday")
    assert response.status == 400
    assert "since" in payload(response)["error"]
    assert health_app(registry).respond("POST", "/events", {}, b"").status == 405


def test_events_of_a_store_source_are_every_process_journal_of_the_shared_state() -> None:
    store = MemoryStore(FakeClock())
    writer = CircuitBreakerRegistry(default_config={"failure_threshold": 1}, store=store)
    trip(writer, "postgresql")
    events = payload(get_query(health_app(store), "/events", ""))["events"]
    assert [(e["circuit"], e["state"]) for e in events] == [("postgresql", "open")]


def test_the_asgi_app_passes_the_query_string_to_events(registry: CircuitBreakerRegistry) -> None:
    trip(registry, "redis")
    app = health_app(registry)
    cursor = asgi_request(app, "GET", "/events").json()["cursor"]
    assert asgi_request(app, "GET", f"/events?since={cursor}").json()["events"] == []
    assert asgi_request(app, "GET", "/events?since=x").status_code == 400


def get_query(app: HealthApp, path: str, query: str) -> HttpResponse:
    return app.respond("GET", path, {}, b"", query)
