"""Probes against real PostgreSQL and Redis, and against the Qdrant / llama.cpp stand-ins.

Each dependency is seen healthy, stopped, never answering, with wrong credentials and coming
back; every failure is one password-free line, and no probe outlives its call timeout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from cbctl.config import Dependency
from cbctl.errors import DependencyError, UsageError
from cbctl.probes import ProbeError, check
from cbctl.standins import LlamaCppStandin, QdrantStandin
from tests.servers import PostgresServer, RedisServer, SilentServer

# A machine under load (2 cores, CI) may add some scheduling delay on top of a timeout.
SLACK = 0.5


def dep(kind: str, url: str, **options: object) -> Dependency:
    return Dependency(name=f"test-{kind}", kind=kind, url=url, **options)  # type: ignore[arg-type]


def failure(probe: Callable[[], str]) -> ProbeError:
    with pytest.raises(ProbeError) as caught:
        probe()
    error = caught.value
    assert isinstance(error, DependencyError)
    assert error.exit_code == 1
    assert "\n" not in str(error)
    return error


def timed(probe: Callable[[], str]) -> tuple[ProbeError, float]:
    started = time.monotonic()
    error = failure(probe)
    return error, time.monotonic() - started


@pytest.fixture
def qdrant() -> Iterator[QdrantStandin]:
    with QdrantStandin(api_key="qk-secret-1", collections=("docs", "chunks")) as server:
        yield server


@pytest.fixture
def llamacpp() -> Iterator[LlamaCppStandin]:
    with LlamaCppStandin() as server:
        yield server


# --- PostgreSQL (real server) -------------------------------------------------------------


@pytest.mark.slow
def test_postgres_healthy_answers_select_1(postgres: PostgresServer) -> None:
    assert check(dep("postgresql", postgres.url), 2.0) == "SELECT 1 ok"


@pytest.mark.slow
def test_postgres_stopped_is_connection_refused(postgres: PostgresServer) -> None:
    postgres.stop()
    error = failure(lambda: check(dep("postgresql", postgres.url), 2.0))
    assert str(error) == f"connection refused at 127.0.0.1:{postgres.port}"
    assert error.reason == "refused"


@pytest.mark.slow
def test_postgres_wrong_password_is_authentication_failed_without_the_password(
    postgres: PostgresServer,
) -> None:
    url = postgres.url_with_password("not-the-Secret-42")
    error = failure(lambda: check(dep("postgresql", url), 2.0))
    assert str(error) == "authentication failed for user 'app'"
    assert error.reason == "auth"
    assert "not-the-Secret-42" not in str(error)
    assert postgres.password not in str(error)


@pytest.mark.slow
def test_postgres_without_password_is_authentication_failed(postgres: PostgresServer) -> None:
    error = failure(lambda: check(dep("postgresql", postgres.url_with_password(None)), 2.0))
    assert error.reason == "auth"


@pytest.mark.slow
def test_postgres_unknown_database_is_a_one_line_failure(postgres: PostgresServer) -> None:
    url = postgres.url.rsplit("/", 1)[0] + "/no_such_db"
    error = failure(lambda: check(dep("postgresql", url), 2.0))
    assert str(error) == 'database "no_such_db" does not exist'
    assert postgres.password not in str(error)


@pytest.mark.slow
def test_postgres_never_answering_times_out_within_the_call_timeout(
    silent: SilentServer,
) -> None:
    url = f"postgresql://app:pw-xyz@{silent.address}/postgres"
    error, elapsed = timed(lambda: check(dep("postgresql", url), 0.5))
    assert str(error) == f"timed out after 0.5s at {silent.address}"
    assert error.reason == "timeout"
    assert 0.45 <= elapsed < 0.5 + SLACK


@pytest.mark.slow
def test_postgres_client_timeout_alone_stops_a_silent_server(silent: SilentServer) -> None:
    """The module's own psycopg timeouts end the call (2 s is libpq's minimum), no dispatcher."""
    from cbctl.probes import postgres as postgres_probe

    url = f"postgresql://app:pw@{silent.address}/postgres"
    error, elapsed = timed(lambda: postgres_probe.check(dep("postgresql", url), 2.0))
    assert error.reason == "timeout"
    assert elapsed < 2.0 + SLACK


@pytest.mark.slow
def test_postgres_recovers_when_the_server_comes_back(postgres: PostgresServer) -> None:
    probe = dep("postgresql", postgres.url)
    postgres.stop()
    assert failure(lambda: check(probe, 2.0)).reason == "refused"
    postgres.start()
    assert check(probe, 2.0) == "SELECT 1 ok"


# --- Redis (real server) ------------------------------------------------------------------


@pytest.mark.slow
def test_redis_healthy_answers_pong(redis_server: RedisServer) -> None:
    assert check(dep("redis", redis_server.url), 2.0) == "PONG"


@pytest.mark.slow
def test_redis_stopped_is_connection_refused(redis_server: RedisServer) -> None:
    redis_server.stop()
    error = failure(lambda: check(dep("redis", redis_server.url), 2.0))
    assert str(error) == f"connection refused at 127.0.0.1:{redis_server.port}"


@pytest.mark.slow
def test_redis_wrong_or_missing_password_is_authentication_failed() -> None:
    with RedisServer(password="redis-Secret-7") as server:
        assert check(dep("redis", server.url), 2.0) == "PONG"
        wrong = failure(lambda: check(dep("redis", server.url_with_password("nope-nope")), 2.0))
        assert wrong.reason == "auth"
        assert str(wrong).startswith("authentication failed")
        assert "nope-nope" not in str(wrong)
        missing = failure(lambda: check(dep("redis", server.url_with_password(None)), 2.0))
        assert str(missing) == "authentication failed: the server requires a password (NOAUTH)"


@pytest.mark.slow
def test_redis_loading_its_dataset_is_not_ready() -> None:
    """A real Redis answering -LOADING (slowed down with key-load-delay) is not healthy.

    Redis answers clients between every 2 MB it loads: 40 MB at 5 ms a key keeps it loading
    for about 4 s, answering every 0.2 s.
    """
    with RedisServer(extra_args=["--rdbcompression", "no"]) as server:
        assert server.command("DEBUG", "POPULATE", "800", "key", "50000") == "+OK"
        assert server.command("SAVE") == "+OK"
        server.stop()
        server.extra_args += ["--key-load-delay", "5000"]
        server.start(wait_for_pong=False)
        assert server.ping().startswith("-LOADING")
        error = failure(lambda: check(dep("redis", server.url), 2.0))
        assert error.reason == "not_ready"
        assert str(error).startswith("not ready: LOADING")


@pytest.mark.slow
def test_redis_never_answering_times_out_within_the_call_timeout(silent: SilentServer) -> None:
    error, elapsed = timed(lambda: check(dep("redis", silent.url("redis")), 0.5))
    assert str(error) == f"timed out after 0.5s at {silent.address}"
    assert 0.45 <= elapsed < 0.5 + SLACK


@pytest.mark.slow
def test_redis_client_timeout_alone_stops_a_silent_server(silent: SilentServer) -> None:
    from cbctl.probes import redis as redis_probe

    error, elapsed = timed(lambda: redis_probe.check(dep("redis", silent.url("redis")), 0.5))
    assert error.reason == "timeout"
    assert elapsed < 0.5 + SLACK


@pytest.mark.slow
def test_redis_recovers_when_the_server_comes_back(redis_server: RedisServer) -> None:
    probe = dep("redis", redis_server.url)
    redis_server.stop()
    assert failure(lambda: check(probe, 2.0)).reason == "refused"
    redis_server.start()
    assert check(probe, 2.0) == "PONG"


# --- Qdrant (stand-in, its REST API over httpx) ------------------------------------------


def test_qdrant_ready_with_the_right_api_key(qdrant: QdrantStandin) -> None:
    probe = dep("qdrant", qdrant.url, api_key="qk-secret-1")
    assert check(probe, 2.0) == "ready, 2 collections"


def test_qdrant_wrong_api_key_is_authentication_failed_without_the_key(
    qdrant: QdrantStandin,
) -> None:
    error = failure(lambda: check(dep("qdrant", qdrant.url, api_key="qk-wrong-9"), 2.0))
    assert str(error) == "authentication failed: Invalid API key or JWT (401)"
    assert "qk-wrong-9" not in str(error)


def test_qdrant_missing_api_key_is_authentication_failed(qdrant: QdrantStandin) -> None:
    error = failure(lambda: check(dep("qdrant", qdrant.url), 2.0))
    assert error.reason == "auth"


def test_qdrant_not_ready_is_a_failure(qdrant: QdrantStandin) -> None:
    qdrant.set_mode("loading")
    error = failure(lambda: check(dep("qdrant", qdrant.url, api_key="qk-secret-1"), 2.0))
    assert str(error) == "not ready: some shards are not ready (503)"


def test_qdrant_down_then_back(qdrant: QdrantStandin) -> None:
    probe = dep("qdrant", qdrant.url, api_key="qk-secret-1")
    qdrant.set_mode("down")
    assert str(failure(lambda: check(probe, 2.0))) == f"connection refused at {qdrant.url[7:]}"
    qdrant.set_mode("ready")
    assert check(probe, 2.0).startswith("ready")


def test_qdrant_never_answering_times_out(silent: SilentServer) -> None:
    error, elapsed = timed(lambda: check(dep("qdrant", silent.url("http")), 0.5))
    assert error.reason == "timeout"
    assert elapsed < 0.5 + SLACK


# --- llama.cpp (stand-in) -----------------------------------------------------------------


def test_llamacpp_ready_is_200_ok(llamacpp: LlamaCppStandin) -> None:
    assert check(dep("llamacpp", llamacpp.url), 2.0) == "200 ok"


def test_llamacpp_loading_model_is_not_ready_and_a_failure(llamacpp: LlamaCppStandin) -> None:
    llamacpp.set_mode("loading")
    error = failure(lambda: check(dep("llamacpp", llamacpp.url), 2.0))
    assert str(error) == "not ready: Loading model (503)"
    assert error.reason == "not_ready"


def test_llamacpp_recovers_when_the_model_is_loaded(llamacpp: LlamaCppStandin) -> None:
    probe = dep("llamacpp", llamacpp.url)
    llamacpp.set_mode("down")
    assert failure(lambda: check(probe, 2.0)).reason == "refused"
    llamacpp.set_mode("loading")
    assert failure(lambda: check(probe, 2.0)).reason == "not_ready"
    llamacpp.set_mode("ready")
    assert check(probe, 2.0) == "200 ok"


def test_llamacpp_never_answering_times_out(silent: SilentServer) -> None:
    from cbctl.probes import llamacpp as llamacpp_probe

    error, elapsed = timed(lambda: llamacpp_probe.check(dep("llamacpp", silent.url("http")), 0.5))
    assert str(error) == f"timed out after 0.5s at {silent.address}"
    assert elapsed < 0.5 + SLACK


# --- http and tcp -------------------------------------------------------------------------


def test_http_expected_status_is_healthy_and_any_other_is_not(llamacpp: LlamaCppStandin) -> None:
    assert check(dep("http", llamacpp.url + "/health"), 2.0) == "200 ok"
    assert check(dep("http", llamacpp.url + "/nope", expected_status=404), 2.0) == "404 not found"
    error = failure(lambda: check(dep("http", llamacpp.url + "/nope"), 2.0))
    assert str(error) == "unexpected status 404 not found (expected 200)"


def test_http_error_messages_never_show_url_passwords(llamacpp: LlamaCppStandin) -> None:
    url = llamacpp.url.replace("http://", "http://ops:http-Secret-3@") + "/nope"
    error = failure(lambda: check(dep("http", url), 2.0))
    assert "http-Secret-3" not in str(error)
    llamacpp.set_mode("down")
    error = failure(lambda: check(dep("http", url), 2.0))
    assert error.reason == "refused"
    assert "http-Secret-3" not in str(error)


def test_tcp_connects_to_a_listening_port_and_is_refused_on_a_closed_one(
    silent: SilentServer, llamacpp: LlamaCppStandin
) -> None:
    assert check(dep("tcp", silent.url("tcp")), 1.0) == "connected"
    llamacpp.set_mode("down")
    error = failure(lambda: check(dep("tcp", f"tcp://127.0.0.1:{llamacpp.port}"), 1.0))
    assert str(error) == f"connection refused at 127.0.0.1:{llamacpp.port}"


def test_unresolvable_host_is_unreachable() -> None:
    error = failure(lambda: check(dep("tcp", "tcp://no-such-host.invalid:80"), 2.0))
    assert error.reason in ("unreachable", "timeout")


# --- the dispatcher -----------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan")])
def test_call_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(UsageError, match="call timeout must be a positive number"):
        check(dep("tcp", "tcp://127.0.0.1:9"), timeout)


def test_default_timeout_is_the_dependencys_call_timeout(silent: SilentServer) -> None:
    probe = dep("llamacpp", silent.url("http"), call_timeout=0.3)
    error, elapsed = timed(lambda: check(probe))
    assert str(error) == f"timed out after 0.3s at {silent.address}"
    assert elapsed < 0.3 + SLACK


@pytest.mark.slow
def test_importing_config_and_probes_loads_no_client_library() -> None:
    code = (
        "import sys, cbctl.config, cbctl.probes, cbctl.standins\n"
        "heavy = {'qdrant_client', 'psycopg', 'redis', 'httpx'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_tcp_probe_loads_no_client_library() -> None:
    code = (
        "import sys\nfrom cbctl.config import Dependency\nfrom cbctl.probes import check\n"
        "try:\n    check(Dependency(name='t', kind='tcp', url='tcp://127.0.0.1:9'), 1.0)\n"
        "except Exception:\n    pass\n"
        "print(sorted({'qdrant_client', 'psycopg', 'redis', 'httpx'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "[]"


def test_an_unexpected_error_inside_a_probe_is_a_password_free_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cbctl.probes import tcp as tcp_probe

    def broken(dependency: Dependency, timeout: float) -> str:
        raise RuntimeError(f"boom while talking to {dependency.url}")

    monkeypatch.setattr(tcp_probe, "check", broken)
    error = failure(lambda: check(dep("tcp", "tcp://ops:tcp-Secret-5@127.0.0.1:9"), 1.0))
    assert (
        str(error) == "probe failed: RuntimeError: boom while talking to tcp://ops:***@127.0.0.1:9"
    )


def test_http_credentials_travel_as_basic_auth_and_never_reach_the_logs(
    llamacpp: LlamaCppStandin, caplog: pytest.LogCaptureFixture
) -> None:
    import httpx

    from cbctl.probes._httpx import split_credentials

    bare, auth = split_credentials("https://ops:p%40ss-Secret@host:8443/health?x=1")
    assert bare == "https://host:8443/health?x=1"
    assert isinstance(auth, httpx.BasicAuth)
    assert split_credentials("http://host/health") == ("http://host/health", None)

    caplog.set_level("DEBUG")
    url = llamacpp.url.replace("http://", "http://ops:log-Secret-8@") + "/health"
    assert check(dep("http", url), 2.0) == "200 ok"
    assert "GET http://127.0.0.1" in caplog.text  # httpx did log the request...
    assert "log-Secret-8" not in caplog.text  # ...without the password
