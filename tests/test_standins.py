"""The Qdrant and llama.cpp stand-ins answer like the documented endpoints, in every mode."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from cbctl.errors import UsageError
from cbctl.standins import LlamaCppStandin, QdrantStandin, StandinMode, standin_for


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_llamacpp_health_is_ok_when_ready_and_503_loading_model_while_loading() -> None:
    with LlamaCppStandin() as server:
        assert _get(server.url + "/health") == (200, '{"status": "ok"}')
        server.set_mode("loading")
        status, body = _get(server.url + "/health")
        assert status == 503
        assert json.loads(body) == {
            "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
        }


def test_down_refuses_connections_and_ready_reopens_the_same_port() -> None:
    with LlamaCppStandin() as server:
        port = server.port
        server.set_mode(StandinMode.DOWN)
        assert _refuses(port)
        server.set_mode(StandinMode.READY)
        assert server.port == port
        assert _get(server.url + "/health")[0] == 200


def test_standin_started_down_listens_only_after_switching_up() -> None:
    with QdrantStandin(mode="down") as server:
        assert server.port != 0
        assert _refuses(server.port)
        server.set_mode("ready")
        assert _get(server.url + "/readyz") == (200, "all shards are ready")


def test_qdrant_health_endpoints_are_open_but_collections_need_the_api_key() -> None:
    with QdrantStandin(api_key="k-1", collections=("docs",)) as server:
        assert _get(server.url + "/healthz") == (200, "healthz check passed")
        assert _get(server.url + "/livez") == (200, "livez check passed")
        assert _get(server.url + "/readyz")[0] == 200
        assert _get(server.url + "/collections")[0] == 401
        assert _get(server.url + "/collections", {"api-key": "wrong"})[0] == 401
        status, body = _get(server.url + "/collections", {"api-key": "k-1"})
        assert status == 200
        assert json.loads(body)["result"] == {"collections": [{"name": "docs"}]}
        bearer = {"Authorization": "Bearer k-1"}
        assert _get(server.url + "/collections", bearer)[0] == 200


def test_qdrant_readyz_is_503_while_loading_and_liveness_stays_200() -> None:
    with QdrantStandin(mode="loading") as server:
        assert _get(server.url + "/readyz") == (503, "some shards are not ready")
        assert _get(server.url + "/livez")[0] == 200


def test_requests_served_counts_every_answer() -> None:
    with LlamaCppStandin() as server:
        assert server.requests_served == 0
        _get(server.url + "/health")
        _get(server.url + "/nope")
        assert server.requests_served == 2


def test_stop_releases_the_port() -> None:
    server = QdrantStandin().start()
    port = server.port
    server.stop()
    assert _refuses(port)


def test_standin_for_knows_qdrant_and_llamacpp_only() -> None:
    assert isinstance(standin_for("qdrant"), QdrantStandin)
    assert isinstance(standin_for("llamacpp"), LlamaCppStandin)
    with pytest.raises(UsageError, match="no stand-in for kind 'redis'"):
        standin_for("redis")


def test_qdrant_stand_in_takes_point_upserts_on_a_keep_alive_connection() -> None:
    import httpx

    with QdrantStandin(api_key="k") as standin, httpx.Client(base_url=standin.url) as client:
        for _ in range(2):
            answer = client.put(
                "/collections/learning/points",
                json={"points": [{"id": 1, "vector": [0.1, 0.2], "payload": {}}]},
                headers={"api-key": "k"},
            )
            assert answer.status_code == 200
            assert answer.json()["result"]["status"] == "completed"
        assert client.put("/collections/learning/points", json={}).status_code == 401
        assert standin.upserts == 2
