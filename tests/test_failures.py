"""Failure classification: which client errors open a circuit and which are neutral answers.

The rules are checked against the client libraries' real exception classes, then through
breakers (fake clock), the configuration, and finally against real PostgreSQL, Redis and a
loopback HTTP server, where the errors come from the clients themselves.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
import psycopg.errors
import pytest
import redis
import redis.exceptions
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from cbctl import CircuitBreaker, CircuitBreakerRegistry, CircuitState, ConfigError, FakeClock
from cbctl.config import parse_config
from cbctl.failures import KINDS, FailureRules, builtin_rules, rules_for
from cbctl.standins import LlamaCppStandin, StandinMode
from tests.servers import PostgresServer, RedisServer, free_port

CLOSED, OPEN = CircuitState.CLOSED, CircuitState.OPEN


def status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1:8080/completion")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


def unexpected(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status, "x", b"{}", httpx.Headers())


class Unavailable(grpc.RpcError):
    """A gRPC error as qdrant-client's grpc mode raises it: `code()` says what happened."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def validation_error() -> ValidationError:
    class Answer(BaseModel):
        result: int

    try:
        Answer.model_validate({"result": "not a number"})
    except ValidationError as error:
        return error
    raise AssertionError("unreachable")


def wrapped(source: Exception) -> ResponseHandlingException:
    return ResponseHandlingException(source)


CASES: list[tuple[str, BaseException, bool]] = [
    ("postgresql", psycopg.OperationalError("connection refused"), True),
    ("postgresql", psycopg.errors.ConnectionTimeout("timeout expired"), True),
    ("postgresql", psycopg.errors.AdminShutdown("terminating connection"), True),
    ("postgresql", psycopg.errors.TooManyConnections("too many clients"), True),
    ("postgresql", psycopg.InterfaceError("the connection is closed"), True),
    ("postgresql", psycopg.errors.UniqueViolation("duplicate key"), False),
    ("postgresql", psycopg.IntegrityError("constraint"), False),
    ("postgresql", psycopg.DataError("invalid input syntax"), False),
    ("postgresql", psycopg.errors.UndefinedTable("no such table"), False),
    ("postgresql", psycopg.errors.SerializationFailure("could not serialize"), False),
    ("postgresql", psycopg.errors.InFailedSqlTransaction("aborted"), False),
    ("postgresql", TimeoutError(), True),
    ("redis", redis.exceptions.ConnectionError("Connection refused"), True),
    ("redis", redis.exceptions.TimeoutError("Timeout reading"), True),
    ("redis", redis.exceptions.BusyLoadingError("LOADING"), True),
    ("redis", redis.exceptions.MasterDownError("MASTERDOWN"), True),
    ("redis", redis.exceptions.ReadOnlyError("READONLY"), True),
    ("redis", redis.exceptions.AuthenticationError("invalid password"), True),
    ("redis", redis.exceptions.ResponseError("WRONGTYPE Operation against a key"), False),
    ("redis", redis.exceptions.NoScriptError("NOSCRIPT"), False),
    ("redis", redis.exceptions.WatchError("watched key changed"), False),
    ("http", httpx.ConnectError("refused"), True),
    ("http", httpx.ReadTimeout("timed out"), True),
    ("http", httpx.PoolTimeout("pool"), True),
    ("http", httpx.RemoteProtocolError("server disconnected"), True),
    ("http", status_error(502), True),
    ("http", status_error(503), True),
    ("http", status_error(504), True),
    ("http", status_error(404), False),
    ("http", status_error(400), False),
    ("http", status_error(429), False),
    ("http", status_error(500), False),
    ("http", httpx.UnsupportedProtocol("ftp://"), False),
    ("llamacpp", status_error(503), True),
    ("llamacpp", status_error(422), False),
    ("qdrant", unexpected(503), True),
    ("qdrant", unexpected(404), False),
    ("qdrant", unexpected(None), True),  # type: ignore[arg-type]
    ("qdrant", wrapped(httpx.ConnectError("refused")), True),
    ("qdrant", wrapped(httpx.ReadTimeout("timed out")), True),
    ("qdrant", wrapped(validation_error()), False),
    ("qdrant", ResourceExhaustedResponse("rate limited", 3), True),
    ("qdrant", Unavailable(grpc.StatusCode.UNAVAILABLE), True),
    ("qdrant", Unavailable(grpc.StatusCode.DEADLINE_EXCEEDED), True),
    ("qdrant", Unavailable(grpc.StatusCode.INVALID_ARGUMENT), False),
    ("qdrant", Unavailable(grpc.StatusCode.NOT_FOUND), False),
    ("qdrant", status_error(503), True),
]


@pytest.mark.parametrize(("kind", "error", "failure"), CASES, ids=lambda v: repr(v)[:40])
def test_each_kind_counts_unreachable_and_overloaded_and_not_wrong_requests(
    kind: str, error: BaseException, failure: bool
) -> None:
    assert rules_for(kind).is_failure(error) is failure
    assert rules_for(kind).is_neutral(error) is not failure


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("error", [KeyboardInterrupt(), asyncio.CancelledError(), SystemExit(1)])
def test_interrupts_and_cancellation_are_never_failures(kind: str, error: BaseException) -> None:
    assert not rules_for(kind).is_failure(error)


@pytest.mark.parametrize("kind", KINDS)
def test_an_error_no_rule_names_counts_as_a_failure(kind: str) -> None:
    assert rules_for(kind).is_failure(RuntimeError("something else"))


def test_the_rules_of_one_client_do_not_apply_to_another_kind() -> None:
    assert rules_for("redis").is_failure(psycopg.IntegrityError("duplicate"))
    assert rules_for("postgresql").is_failure(redis.exceptions.ResponseError("WRONGTYPE"))
    assert rules_for("tcp").is_failure(status_error(404))


def test_a_users_rule_replaces_the_builtin_rule_for_the_same_class() -> None:
    rules = rules_for("redis").with_overrides(failures=["redis.exceptions.ResponseError"])
    assert rules.is_failure(redis.exceptions.ResponseError("WRONGTYPE"))
    relaxed = rules_for("postgresql").with_overrides(neutral=[psycopg.errors.TooManyConnections])
    assert not relaxed.is_failure(psycopg.errors.TooManyConnections("too many clients"))
    assert relaxed.is_failure(psycopg.OperationalError("refused"))


def test_the_most_specific_rule_wins_over_a_users_rule_for_a_base_class() -> None:
    rules = rules_for("redis").with_overrides(neutral=["redis.exceptions.RedisError"])
    assert rules.is_failure(redis.exceptions.ConnectionError("refused"))
    assert not rules.is_failure(redis.exceptions.InvalidResponse("garbage"))


def test_names_match_by_full_path_by_package_and_class_and_builtins_by_bare_name() -> None:
    rules = FailureRules().with_overrides(
        neutral=["redis.ConnectionError", "psycopg.UniqueViolation", "LookupError"]
    )
    assert not rules.is_failure(redis.exceptions.ConnectionError("refused"))
    assert not rules.is_failure(psycopg.errors.UniqueViolation("duplicate"))
    assert not rules.is_failure(KeyError("missing"))
    assert rules.is_failure(psycopg.errors.ForeignKeyViolation("fk"))
    assert rules.is_failure(ValueError("other"))


def test_failure_statuses_replace_the_default_set() -> None:
    rules = rules_for("http").with_overrides(failure_statuses=[429, 503])
    assert rules.is_failure(status_error(429))
    assert not rules.is_failure(status_error(502))


@given(
    status=st.integers(100, 599),
    statuses=st.frozensets(st.integers(100, 599), max_size=6),
    kind=st.sampled_from(["http", "llamacpp", "qdrant"]),
)
def test_a_status_error_is_a_failure_exactly_when_its_status_is_listed(
    status: int, statuses: frozenset[int], kind: str
) -> None:
    rules = rules_for(kind).with_overrides(failure_statuses=statuses)
    assert rules.is_failure(status_error(status)) is (status in statuses)
    if kind == "qdrant":
        assert rules.is_failure(unexpected(status)) is (status in statuses)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"neutral": ["not a name!"]}, "not 'not a name!'"),
        ({"failures": [42]}, "not 42"),
        ({"failure_statuses": [600]}, "not 600"),
        ({"failure_statuses": [True]}, "not True"),
        ({"failures": ["a.B"], "neutral": ["a.B"]}, "a.B is listed both"),
    ],
)
def test_bad_overrides_are_refused_with_what_is_wrong(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        rules_for("http").with_overrides(**overrides)


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown kind 'mysql' \(known: postgresql, redis"):
        CircuitBreaker("db", kind="mysql")


def test_every_builtin_rule_names_an_importable_path_shape() -> None:
    for kind in KINDS:
        for name, decision in builtin_rules(kind).items():
            assert decision in ("failure", "neutral", "status", "grpc", "source")
            assert name.count(".") >= 1, name


# --- breakers --------------------------------------------------------------------------------


def raising(error: BaseException) -> Any:
    def call() -> None:
        raise error

    return call


def test_a_breaker_of_a_kind_never_opens_on_neutral_errors_but_does_on_failures() -> None:
    breaker = CircuitBreaker("pg", kind="postgresql", failure_threshold=2, clock=FakeClock())
    for _ in range(10):
        with pytest.raises(psycopg.IntegrityError):
            breaker.call(raising(psycopg.errors.UniqueViolation("duplicate key")))
    assert (breaker.state, breaker.stats["failure_count"]) == (CLOSED, 0)
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError):
            breaker.call(raising(psycopg.OperationalError("connection refused")))
    assert breaker.state is OPEN


def test_a_neutral_error_between_failures_neither_resets_nor_adds_to_the_count() -> None:
    breaker = CircuitBreaker("cache", kind="redis", failure_threshold=2, clock=FakeClock())
    with pytest.raises(redis.exceptions.ConnectionError):
        breaker.call(raising(redis.exceptions.ConnectionError("refused")))
    with pytest.raises(redis.exceptions.ResponseError):
        breaker.call(raising(redis.exceptions.ResponseError("WRONGTYPE")))
    assert breaker.stats["failure_count"] == 1
    with pytest.raises(redis.exceptions.ConnectionError):
        breaker.call(raising(redis.exceptions.ConnectionError("refused")))
    assert breaker.state is OPEN


def test_exclude_still_adds_neutral_errors_to_a_kinds_rules() -> None:
    breaker = CircuitBreaker(
        "pg", kind="postgresql", exclude=[psycopg.errors.QueryCanceled], failure_threshold=1
    )
    with pytest.raises(psycopg.errors.QueryCanceled):
        breaker.call(raising(psycopg.errors.QueryCanceled("statement timeout")))
    assert breaker.state is CLOSED
    with pytest.raises(psycopg.errors.AdminShutdown):
        breaker.call(raising(psycopg.errors.AdminShutdown("shutting down")))
    assert breaker.state is OPEN


def test_the_rules_fit_exclude_as_a_predicate() -> None:
    breaker = CircuitBreaker("web", exclude=[rules_for("http").is_neutral], failure_threshold=1)
    with pytest.raises(httpx.HTTPStatusError):
        breaker.call(raising(status_error(404)))
    assert breaker.state is CLOSED
    with pytest.raises(httpx.HTTPStatusError):
        breaker.call(raising(status_error(503)))
    assert breaker.state is OPEN


def test_a_breaker_without_a_kind_counts_every_exception_as_before() -> None:
    breaker = CircuitBreaker("any", failure_threshold=1)
    assert breaker.failure_rules is None
    with pytest.raises(psycopg.IntegrityError):
        breaker.call(raising(psycopg.IntegrityError("duplicate")))
    assert breaker.state is OPEN


def test_async_calls_classify_the_same_way() -> None:
    breaker = CircuitBreaker("web", kind="http", failure_threshold=1, clock=FakeClock())

    async def answer(error: BaseException) -> None:
        raise error

    async def main() -> None:
        with pytest.raises(httpx.HTTPStatusError):
            await breaker.call_async(answer, status_error(404))
        assert breaker.state is CLOSED
        with pytest.raises(httpx.ConnectError):
            await breaker.call_async(answer, httpx.ConnectError("refused"))

    asyncio.run(main())
    assert breaker.state is OPEN


OUTCOMES = {
    "neutral": psycopg.errors.UniqueViolation("duplicate"),
    "failure": psycopg.OperationalError("refused"),
}


@given(steps=st.lists(st.sampled_from(["neutral", "failure", "success"]), max_size=40))
def test_only_consecutive_failures_open_the_circuit_whatever_neutral_errors_come_between(
    steps: list[str],
) -> None:
    threshold = 3
    breaker = CircuitBreaker("pg", kind="postgresql", failure_threshold=threshold)
    consecutive = 0
    for step in steps:
        if breaker.state is OPEN:
            break
        if step == "success":
            breaker.call(lambda: None)
            consecutive = 0
            continue
        with pytest.raises(psycopg.Error):
            breaker.call(raising(OUTCOMES[step]))
        consecutive += step == "failure"
        assert breaker.state is (OPEN if consecutive >= threshold else CLOSED)
    assert breaker.stats["failure_count"] == (consecutive if breaker.state is CLOSED else threshold)


def test_registry_get_takes_a_kind_and_refuses_to_change_it() -> None:
    registry = CircuitBreakerRegistry()
    pg = registry.get("pg", kind="postgresql")
    assert registry.get("pg") is pg
    assert registry.get("pg", kind="postgresql") is pg
    assert registry.get("pg", kind=rules_for("postgresql")) is pg
    assert pg.failure_rules is not None
    assert pg.failure_rules.kind == "postgresql"
    with pytest.raises(ConfigError, match="already exists with other kind"):
        registry.get("pg", kind="redis")


def test_registry_overrides_pick_the_rules_of_each_name() -> None:
    custom = rules_for("redis").with_overrides(failures=["redis.exceptions.ResponseError"])
    registry = CircuitBreakerRegistry(
        overrides={"db": {"kind": "postgresql"}, "cache": {"kind": custom, "timeout": 5.0}}
    )
    assert registry.get("db").failure_rules == rules_for("postgresql")
    assert registry.get("cache").failure_rules is custom
    assert registry.get("other").failure_rules is None


# --- cbctl.toml ------------------------------------------------------------------------------


def test_breakers_made_from_the_config_take_their_dependencys_kind_and_overrides() -> None:
    config = parse_config(
        """
        builtins = true

        [defaults]
        neutral_errors = ["psycopg.errors.QueryCanceled"]

        [dependencies.postgresql]
        failure_threshold = 1

        [dependencies.llamacpp]
        failure_statuses = [429, 503]

        [dependencies.cache]
        kind = "redis"
        url = "redis://127.0.0.1:6379/1"
        failure_errors = ["redis.exceptions.ResponseError"]
        """,
        environ={},
    )
    registry = CircuitBreakerRegistry.from_config(config, clock=FakeClock())
    pg = registry.get("postgresql")
    assert pg.failure_threshold == 1
    with pytest.raises(psycopg.errors.QueryCanceled):
        pg.call(raising(psycopg.errors.QueryCanceled("statement timeout")))
    with pytest.raises(psycopg.IntegrityError):
        pg.call(raising(psycopg.IntegrityError("duplicate")))
    assert pg.state is CLOSED
    llama = config.dependency("llamacpp").failures
    assert llama.is_failure(status_error(429))
    assert not llama.is_failure(status_error(502))
    cache = config.dependency("cache").failures
    assert cache.kind == "redis"
    assert cache.is_failure(redis.exceptions.ResponseError("WRONGTYPE"))
    assert hash(config.dependency("cache")) == hash(config.dependency("cache"))  # still a value
    assert not cache.is_failure(psycopg.errors.QueryCanceled("from [defaults]"))
    assert config.dependency("qdrant").failures.user == {"psycopg.errors.QueryCanceled": "neutral"}
    plain = parse_config("", environ={})
    assert plain.dependency("qdrant").failures == rules_for("qdrant")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[defaults]\nneutral_errors = 'psycopg.IntegrityError'",
            "/etc/cbctl.toml: defaults.neutral_errors must be an array of exception names, "
            "got 'psycopg.IntegrityError' (a string)",
        ),
        (
            "[dependencies.redis]\nfailure_errors = ['redis exceptions']",
            "/etc/cbctl.toml: dependencies.redis.failure_errors: 'redis exceptions' (a string) "
            "is not an exception's import path",
        ),
        (
            "[dependencies.llamacpp]\nfailure_statuses = [503, 700]",
            "/etc/cbctl.toml: dependencies.llamacpp.failure_statuses must be an HTTP status "
            "code (100-599), got 700",
        ),
        (
            "[dependencies.llamacpp]\nfailure_statuses = 503",
            "/etc/cbctl.toml: dependencies.llamacpp.failure_statuses must be an array of HTTP "
            "status codes, got 503",
        ),
        (
            "[defaults]\nfailure_errors = ['a.B']\nneutral_errors = ['a.B']",
            "/etc/cbctl.toml: defaults: a.B is listed both as a failure and as neutral",
        ),
    ],
)
def test_bad_classification_settings_name_the_file_and_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, path=Path("/etc/cbctl.toml"), environ={})
    assert str(caught.value).startswith(message)


# --- client libraries stay unimported --------------------------------------------------------


@pytest.mark.slow
def test_classifying_an_error_imports_no_client_library() -> None:
    code = (
        "import sys\n"
        "from cbctl.failures import KINDS, rules_for\n"
        "class Mine(Exception): pass\n"
        "for kind in KINDS:\n"
        "    rules = rules_for(kind)\n"
        "    assert rules.is_failure(Mine()) and rules.is_failure(TimeoutError())\n"
        "print(sorted({'psycopg', 'redis', 'qdrant_client', 'httpx', 'grpc'} & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


# --- real servers ----------------------------------------------------------------------------


@pytest.mark.slow
def test_postgresql_integrity_errors_in_a_loop_never_open_a_refused_connection_does(
    postgres: PostgresServer,
) -> None:
    breaker = CircuitBreaker("postgresql", kind="postgresql", failure_threshold=3)
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE seen (id int PRIMARY KEY)")
        conn.execute("INSERT INTO seen VALUES (1)")
        for _ in range(20):
            with pytest.raises(psycopg.errors.UniqueViolation):
                breaker.call(conn.execute, "INSERT INTO seen VALUES (1)")
        with pytest.raises(psycopg.errors.UndefinedTable):
            breaker.call(conn.execute, "SELECT * FROM no_such_table")
    assert (breaker.state, breaker.stats["failure_count"]) == (CLOSED, 0)

    nobody = f"postgresql://app:pw@127.0.0.1:{free_port()}/postgres"
    for _ in range(3):
        with pytest.raises(psycopg.OperationalError, match="refused"):
            breaker.call(psycopg.connect, nobody, connect_timeout=2)
    assert breaker.state is OPEN


@pytest.mark.slow
def test_redis_wrongtype_is_neutral_and_a_refused_connection_counts(
    redis_server: RedisServer,
) -> None:
    breaker = CircuitBreaker("redis", kind="redis", failure_threshold=2)
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    client.set("greeting", "hello")
    for _ in range(20):
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            breaker.call(client.lpush, "greeting", "x")
    with pytest.raises(redis.exceptions.ResponseError):
        breaker.call(client.execute_command, "NO-SUCH-COMMAND")
    assert (breaker.state, breaker.stats["failure_count"]) == (CLOSED, 0)
    client.close()

    redis_server.stop()
    gone = redis.Redis.from_url(redis_server.url, socket_connect_timeout=2)
    for _ in range(2):
        with pytest.raises(redis.exceptions.ConnectionError):
            breaker.call(gone.get, "greeting")
    assert breaker.state is OPEN


@pytest.mark.slow
def test_httpx_against_a_loopback_server_404_is_neutral_503_is_a_failure() -> None:
    breaker = CircuitBreaker("llamacpp", kind="llamacpp", failure_threshold=2)
    with LlamaCppStandin() as server, httpx.Client(base_url=server.url, timeout=5) as client:

        def get(path: str) -> httpx.Response:
            return client.get(path).raise_for_status()

        for _ in range(10):
            with pytest.raises(httpx.HTTPStatusError, match="404"):
                breaker.call(get, "/no-such-endpoint")
        assert (breaker.state, breaker.stats["failure_count"]) == (CLOSED, 0)
        server.set_mode(StandinMode.LOADING)
        for _ in range(2):
            with pytest.raises(httpx.HTTPStatusError, match="503"):
                breaker.call(get, "/health")
        assert breaker.state is OPEN


def test_cbctl_config_shows_the_files_classification_overrides_and_where_they_came_from(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from cbctl.cli import app

    path = tmp_path / "cbctl.toml"
    path.write_text(
        '[defaults]\nneutral_errors = ["psycopg.errors.QueryCanceled"]\n'
        '[dependencies.cache]\nkind = "redis"\nurl = "redis://127.0.0.1:6379/1"\n'
        'failure_errors = ["redis.exceptions.ResponseError"]\nfailure_statuses = [503]\n'
    )
    result = CliRunner().invoke(app, ["--config", str(path), "config", "--json"], env={})
    assert result.exit_code == 0, result.output
    [cache] = json.loads(result.stdout)["dependencies"]
    assert cache["failure_errors"] == ["redis.exceptions.ResponseError"]
    assert cache["neutral_errors"] == ["psycopg.errors.QueryCanceled"]
    assert cache["failure_statuses"] == [503]
    assert cache["from"]["failure_errors"] == "dependencies.cache.failure_errors"
    assert cache["from"]["neutral_errors"] == "defaults.neutral_errors"
    table = CliRunner().invoke(app, ["--config", str(path), "config"], env={"NO_COLOR": "1"})
    assert "redis.exceptions.ResponseError" in table.stdout
    assert "['" not in table.stdout
