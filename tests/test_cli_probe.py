"""`cbctl probe`: bad input, output shapes and exit codes, real servers, and real processes.

Fast tests run the Typer app in-process on a state file in tmp_path. The slow ones start real
PostgreSQL and Redis (tests/servers.py), the Qdrant / llama.cpp stand-ins, and whole `cbctl`
processes that share one state file, the way cron jobs and shells do.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cbctl.cli import app
from cbctl.standins import LlamaCppStandin, QdrantStandin
from tests.servers import PostgresServer, RedisServer, SilentServer, free_port

runner = CliRunner()

# A loaded 2-core machine may add scheduling delay on top of any timeout.
SLACK = 0.75


@pytest.fixture(autouse=True)
def _no_cbctl_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the files a test writes may configure cbctl (no CBCTL_* from the caller's shell)."""
    for variable in [name for name in os.environ if name.startswith("CBCTL_")]:
        monkeypatch.delenv(variable)


@pytest.fixture
def state(tmp_path: Path) -> str:
    return str(tmp_path / "circuits.db")


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cbctl.toml"
    path.write_text(text)
    return str(path)


def closed_port_url(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{free_port()}"


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout, result.stderr


def probe_json(state: str, config: str, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    code, out, err = run("--state", state, "--config", config, "probe", *args, "--json")
    return code, [json.loads(line) for line in out.splitlines()], err


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, (out, err)
    assert out == ""
    assert err.startswith("cbctl: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


JSON_KEYS = {
    "dependency",
    "ok",
    "outcome",
    "state",
    "latency_ms",
    "error",
    "failure_count",
    "success_count",
}


# --- bad input: one line on stderr, exit 2 ---------------------------------------------------


def test_help_has_every_option_and_an_example() -> None:
    code, out, _ = run("probe", "--help")
    assert code == 0
    for option in ("--all", "--count", "--interval", "--call-timeout", "--json"):
        assert option in out
    assert "cbctl probe redis" in out.split("Example:", 1)[1]


def test_unknown_dependency_names_the_known_ones(state: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, "")
    code, out, err = run("--state", state, "--config", config, "probe", "mongodb")
    assert_one_line_error(code, out, err, "unknown dependency 'mongodb'", "qdrant", "redis")


def test_no_name_and_no_all_is_a_usage_error(state: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, "")
    code, out, err = run("--state", state, "--config", config, "probe")
    assert_one_line_error(code, out, err, "give a NAME", "--all")


def test_name_and_all_together_is_a_usage_error(state: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, "")
    code, out, err = run("--state", state, "--config", config, "probe", "redis", "--all")
    assert_one_line_error(code, out, err, "not both")


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        (
            '[dependencies.vectors]\nkind = "milvus"\nurl = "http://127.0.0.1:1"\n',
            ["dependencies.vectors.kind", "unknown kind 'milvus'"],
        ),
        ("[dependencies.redis\nurl = 1\n", ["invalid TOML"]),
        ('[dependencies.redis]\nurl = "http://127.0.0.1:6379"\n', ["dependencies.redis.url"]),
        ("[defaults]\nfailure_threshold = 0\n", ["defaults.failure_threshold", "at least 1"]),
        (
            "[dependencies.redis]\nfailure_threshold = -3\n",
            ["dependencies.redis.failure_threshold"],
        ),
        ("[defaults]\ntimeout = 0\n", ["defaults.timeout"]),
        ("[dependencies.qdrant]\ntimeout = -1.5\n", ["dependencies.qdrant.timeout"]),
        ("[dependencies.redis]\ncall_timeout = 0\n", ["dependencies.redis.call_timeout"]),
        (
            '[dependencies.redis]\nurl = "redis://127.0.0.1:70000/0"\n',
            ["dependencies.redis.url", "port out of range"],
        ),
    ],
    ids=[
        "unknown-kind",
        "malformed-toml",
        "wrong-scheme",
        "zero-threshold",
        "negative-threshold",
        "zero-timeout",
        "negative-timeout",
        "zero-call-timeout",
        "port-out-of-range",
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file_and_key(
    state: str, tmp_path: Path, toml: str, fragments: list[str]
) -> None:
    config = write_config(tmp_path, toml)
    code, out, err = run("--state", state, "--config", config, "probe", "redis")
    assert_one_line_error(code, out, err, config, *fragments)
    assert not Path(state).exists(), "a refused configuration must not touch the state"


def test_a_wrong_scheme_in_the_environment_names_the_variable(state: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, "")
    code, out, err = run(
        "--state", state, "--config", config, "probe", "redis",
        env={"CBCTL_REDIS_URL": "postgresql://127.0.0.1:5432/postgres"},
    )  # fmt: skip
    assert_one_line_error(code, out, err, "$CBCTL_REDIS_URL", "redis")


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--count", "three", "--count must be a whole number"),
        ("--count", "0", "--count must be at least 1"),
        ("--count", "-2", "--count must be at least 1"),
        ("--count", "1.5", "--count must be a whole number"),
        ("--interval", "soon", "--interval must be a number of seconds"),
        ("--interval", "-1", "--interval must be zero or more seconds"),
        ("--interval", "inf", "--interval must be zero or more seconds"),
        ("--call-timeout", "fast", "--call-timeout must be a number of seconds"),
        ("--call-timeout", "0", "--call-timeout must be a positive number of seconds"),
        ("--call-timeout", "-0.5", "--call-timeout must be a positive number of seconds"),
        ("--call-timeout", "nan", "--call-timeout must be a positive number of seconds"),
    ],
)
def test_a_bad_option_value_is_one_line_and_exit_2(
    state: str, tmp_path: Path, option: str, value: str, fragment: str
) -> None:
    config = write_config(tmp_path, "")
    code, out, err = run("--state", state, "--config", config, "probe", "redis", option, value)
    assert_one_line_error(code, out, err, fragment)


def test_an_unusable_state_location_is_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, "")
    code, out, err = run("--state", "ftp://example/state", "--config", config, "probe", "redis")
    assert_one_line_error(code, out, err, "unsupported state location")


def test_a_password_in_a_bad_url_never_appears(state: str, tmp_path: Path) -> None:
    secret = "Pg-Secret-9f3a"
    config = write_config(
        tmp_path,
        f'[dependencies.postgresql]\nurl = "postgresql://app:{secret}@127.0.0.1:99999/db"\n',
    )
    code, out, err = run("--state", state, "--config", config, "probe", "postgresql")
    assert_one_line_error(code, out, err, "port out of range")
    assert secret not in out + err


# --- unreachable dependencies: exit 1 --------------------------------------------------------


def test_a_refused_connection_is_exit_1_with_the_address(state: str, tmp_path: Path) -> None:
    url = closed_port_url("tcp")
    config = write_config(tmp_path, f'[dependencies.cache]\nkind = "tcp"\nurl = "{url}"\n')
    code, out, err = run("--state", state, "--config", config, "probe", "cache")
    assert code == 1
    assert err == ""
    line = out.strip()
    assert line.startswith(f"cache {url}  failure  "), "the address probed is shown"
    assert "closed  failures 1/5" in line
    assert line.endswith(f"connection refused at {url.removeprefix('tcp://')}")


def test_an_unresolvable_host_is_exit_1_within_the_call_timeout(state: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, '[dependencies.far]\nkind = "tcp"\nurl = "tcp://no-such-host.invalid:80"\n'
    )
    started = time.monotonic()
    code, results, err = probe_json(state, config, "far", "--call-timeout", "1")
    assert time.monotonic() - started < 1 + SLACK
    assert code == 1
    assert err == ""
    assert results[0]["reason"] in ("unreachable", "timeout")
    assert "Traceback" not in results[0]["error"]


# --- output shapes and exit codes ------------------------------------------------------------


def test_json_has_the_contract_keys_and_the_state_after_each_attempt(
    state: str, tmp_path: Path
) -> None:
    url = closed_port_url("tcp")
    config = write_config(
        tmp_path, f'[dependencies.cache]\nkind = "tcp"\nurl = "{url}"\nfailure_threshold = 2\n'
    )
    code, results, err = probe_json(state, config, "cache", "--count", "3", "--interval", "0")
    assert code == 3, "the exit code is the last attempt's: rejected"
    assert err == ""
    assert all(set(result) >= JSON_KEYS for result in results)
    assert [r["outcome"] for r in results] == ["failure", "failure", "rejected"]
    assert [r["state"] for r in results] == ["closed", "open", "open"]
    assert [r["failure_count"] for r in results] == [1, 2, 2]
    assert [r["ok"] for r in results] == [False, False, False]
    assert results[2]["error"].startswith("circuit 'cache' is open; retry in")
    assert 0 < results[2]["retry_after"] <= 30
    assert all(isinstance(r["latency_ms"], float) and r["latency_ms"] >= 0 for r in results)


def test_the_exit_code_is_the_last_attempts_failure(state: str, tmp_path: Path) -> None:
    url = closed_port_url("tcp")
    config = write_config(tmp_path, f'[dependencies.cache]\nkind = "tcp"\nurl = "{url}"\n')
    code, results, _ = probe_json(state, config, "cache", "--count", "2", "--interval", "0")
    assert code == 1
    assert [r["outcome"] for r in results] == ["failure", "failure"]


def test_a_rejected_line_says_open_and_when_to_retry(state: str, tmp_path: Path) -> None:
    url = closed_port_url("tcp")
    config = write_config(
        tmp_path, f'[dependencies.cache]\nkind = "tcp"\nurl = "{url}"\nfailure_threshold = 1\n'
    )
    code, out, _ = run(
        "--state", state, "--config", config, "probe", "cache", "--count", "2", "--interval", "0"
    )
    assert code == 3
    failed, rejected = out.strip().splitlines()
    assert " failure " in failed
    assert "open  failures 1/1  retry in " in failed
    assert rejected.startswith(f"cache {url}  rejected  ")
    assert "circuit 'cache' is open; retry in" in rejected


@pytest.mark.slow
def test_interval_separates_attempts_and_none_follows_the_last(
    state: str, tmp_path: Path, silent: SilentServer
) -> None:
    config = write_config(
        tmp_path, f'[dependencies.port]\nkind = "tcp"\nurl = "{silent.url("tcp")}"\n'
    )
    started = time.monotonic()
    code, results, _ = probe_json(state, config, "port", "--count", "1", "--interval", "30")
    assert code == 0
    assert len(results) == 1
    assert time.monotonic() - started < 5, "no pause after the last attempt"
    started = time.monotonic()
    code, results, _ = probe_json(state, config, "port", "--count", "3", "--interval", "0.3")
    elapsed = time.monotonic() - started
    assert code == 0
    assert [r["attempt"] for r in results] == [1, 2, 3]
    assert 0.6 <= elapsed < 0.6 + SLACK + 1


# --- a circuit someone else uses: the probe names its address and keeps to its settings ------


def _service_circuit(state: str, name: str, **settings: Any) -> None:
    """What a service leaves in its state file: a circuit with its own settings, one failure."""
    from cbctl import CircuitBreaker
    from cbctl.stores import open_store

    def failing() -> None:
        raise OSError("the service's own dependency failed")

    with open_store(state) as store, pytest.raises(OSError, match="own dependency"):
        CircuitBreaker(name, store=store, **settings).call(failing)


def _stored(state: str, name: str) -> tuple[int, dict[str, Any]]:
    from cbctl.stores import open_store

    with open_store(state, create=False) as store:
        found = store.load(name)
    assert found is not None
    return found.snapshot.failure_count, found.config.as_dict()


def test_a_probe_is_refused_a_circuit_last_used_with_other_settings_and_changes_nothing(
    state: str, tmp_path: Path
) -> None:
    _service_circuit(state, "postgresql", failure_threshold=3, timeout=10.0)
    before = _stored(state, "postgresql")
    secret = "s3cr3t-pw"
    url = f"postgresql://app:{secret}@127.0.0.1:{free_port()}/db"
    config = write_config(tmp_path, f'[dependencies.postgresql]\nurl = "{url}"\n')
    for extra in ((), ("--json",)):
        code, out, err = run("--state", state, "--config", config, "probe", "postgresql", *extra)
        assert_one_line_error(
            code,
            out,
            err,
            "'postgresql'",
            "failure_threshold=3",
            "failure_threshold=5",
            "timeout=10.0",
            "timeout=30.0",
            "postgresql://app:***@127.0.0.1:",
            "--use-stored-settings",
        )
        assert secret not in err
        assert "success_threshold" not in err, "only the settings that differ are named"
    assert _stored(state, "postgresql") == before, "nothing recorded, settings kept"


def test_use_stored_settings_records_with_the_circuits_own_settings(
    state: str, tmp_path: Path
) -> None:
    _service_circuit(state, "postgresql", failure_threshold=3, timeout=10.0)
    url = closed_port_url("postgresql") + "/db"
    config = write_config(tmp_path, f'[dependencies.postgresql]\nurl = "{url}"\n')
    code, results, err = probe_json(state, config, "postgresql", "--use-stored-settings")
    assert (code, err) == (1, "")
    assert results[0]["url"] == url
    assert (results[0]["failure_count"], results[0]["failure_threshold"]) == (2, 3)
    failures, settings = _stored(state, "postgresql")
    assert (failures, settings["failure_threshold"], settings["timeout"]) == (2, 3, 10.0)


def test_a_circuit_last_used_with_the_same_settings_is_probed_as_before(
    state: str, tmp_path: Path
) -> None:
    _service_circuit(state, "cache", failure_threshold=2)
    url = closed_port_url("tcp")
    config = write_config(
        tmp_path, f'[dependencies.cache]\nkind = "tcp"\nurl = "{url}"\nfailure_threshold = 2\n'
    )
    code, results, err = probe_json(state, config, "cache")
    assert (code, err) == (1, "")
    assert (results[0]["state"], results[0]["failure_count"]) == ("open", 2)


def test_the_refusal_comes_before_any_dependency_of_the_run_is_probed(
    state: str, tmp_path: Path
) -> None:
    _service_circuit(state, "b", failure_threshold=3)
    config = write_config(
        tmp_path,
        f'[dependencies.a]\nkind = "tcp"\nurl = "{closed_port_url("tcp")}"\n'
        f'[dependencies.b]\nkind = "tcp"\nurl = "{closed_port_url("tcp")}"\n',
    )
    code, out, err = run("--state", state, "--config", config, "probe", "--all")
    assert_one_line_error(code, out, err, "'b'")
    assert "'a'" not in err
    from cbctl.stores import open_store

    with open_store(state, create=False) as store:
        assert store.load("a") is None, "no circuit of the run was recorded into"


def test_settings_mismatch_compares_every_breaker_setting() -> None:
    """Every field of BreakerConfig is compared, including ones added later."""
    from dataclasses import fields, replace

    from cbctl.errors import ConfigError
    from cbctl.probing import SettingsMismatch
    from cbctl.state import BreakerConfig

    def another(base: BreakerConfig, name: str) -> BreakerConfig | None:
        value = getattr(base, name)
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else 1
        for candidate in (number + 1, number * 2, number / 2, 0.5, 600.0):
            if candidate == value or (isinstance(value, int) and not isinstance(candidate, int)):
                continue
            try:
                return replace(base, **{name: candidate})
            except ConfigError:
                continue
        return None

    windowed = BreakerConfig(  # the rate policies' settings change only together with a window
        failure_rate_threshold=0.5,
        window_calls=10,
        minimum_calls=5,
        slow_call_duration=1.0,
        slow_call_rate_threshold=0.5,
    )
    timed = replace(windowed, window_calls=None, window_seconds=10.0)  # the other kind of window
    for setting in fields(BreakerConfig):
        for base in (BreakerConfig(), windowed, timed):
            other = another(base, setting.name)
            if other is not None:
                break
        assert other is not None, f"give the test a valid other value of {setting.name}"
        differences = SettingsMismatch("x", base, other).differences
        assert [name for name, _, _ in differences] == [setting.name]


# --- real servers ----------------------------------------------------------------------------


@pytest.mark.slow
def test_healthy_redis_is_exit_0_pong_and_a_closed_circuit(
    state: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    config = write_config(tmp_path, f'[dependencies.redis]\nurl = "{redis_server.url}"\n')
    code, results, err = probe_json(state, config, "redis")
    assert (code, err) == (0, "")
    assert results[0]["ok"] is True
    assert (results[0]["outcome"], results[0]["detail"]) == ("success", "PONG")
    assert (results[0]["state"], results[0]["failure_count"]) == ("closed", 0)
    code, out, _ = run("--state", state, "--config", config, "probe", "redis")
    assert code == 0
    assert out.startswith(f"redis {results[0]['url']}  success  ")
    assert "closed  failures 0/5  PONG" in out


@pytest.mark.slow
def test_stopped_redis_is_refused_then_recovers(
    state: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    config = write_config(tmp_path, f'[dependencies.redis]\nurl = "{redis_server.url}"\n')
    redis_server.stop()
    code, results, _ = probe_json(state, config, "redis")
    assert code == 1
    assert (results[0]["reason"], results[0]["failure_count"]) == ("refused", 1)
    redis_server.start()
    code, results, _ = probe_json(state, config, "redis")
    assert code == 0
    assert (results[0]["state"], results[0]["failure_count"]) == ("closed", 0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "postgresql"])
def test_a_never_answering_server_times_out_within_the_call_timeout(
    state: str, tmp_path: Path, silent: SilentServer, kind: str
) -> None:
    url = f"{silent.url(kind)}/0" if kind == "redis" else f"{silent.url(kind)}/postgres"
    config = write_config(tmp_path, f'[dependencies.{kind}]\nurl = "{url}"\n')
    started = time.monotonic()
    code, results, _ = probe_json(state, config, kind, "--call-timeout", "0.5")
    assert time.monotonic() - started < 0.5 + SLACK + 1.0  # + a cold client import
    assert code == 1
    assert results[0]["reason"] == "timeout"
    assert results[0]["error"] == f"timed out after 0.5s at {silent.address}"
    assert results[0]["latency_ms"] < (0.5 + SLACK) * 1000


@pytest.mark.slow
def test_redis_with_a_wrong_password_is_an_auth_failure_without_the_password(
    state: str, tmp_path: Path
) -> None:
    with RedisServer(password="right-Redis-pw-1") as server:
        url = server.url_with_password("wrong-Redis-pw-2")
        config = write_config(tmp_path, f'[dependencies.redis]\nurl = "{url}"\n')
        code, out, err = run("--state", state, "--config", config, "probe", "redis", "--json")
        assert code == 1
        assert json.loads(out)["reason"] == "auth"
        code, text, text_err = run("--state", state, "--config", config, "probe", "redis")
        assert code == 1
        for secret in ("right-Redis-pw-1", "wrong-Redis-pw-2"):
            assert secret not in out + err + text + text_err


@pytest.mark.slow
def test_postgres_healthy_stopped_and_recovered(
    state: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    config = write_config(tmp_path, f'[dependencies.postgresql]\nurl = "{postgres.url}"\n')
    code, results, _ = probe_json(state, config, "postgresql")
    assert (code, results[0]["detail"]) == (0, "SELECT 1 ok")
    postgres.stop()
    code, results, _ = probe_json(state, config, "postgresql")
    assert (code, results[0]["reason"], results[0]["failure_count"]) == (1, "refused", 1)
    postgres.start()
    code, results, _ = probe_json(state, config, "postgresql")
    assert (code, results[0]["state"], results[0]["failure_count"]) == (0, "closed", 0)


@pytest.mark.slow
def test_postgres_wrong_password_never_shows_a_password_anywhere(
    state: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    wrong = "Wr0ng-PG-pass-7c1e"
    url = postgres.url_with_password(wrong)
    config = write_config(
        tmp_path, f'[dependencies.postgresql]\nurl = "{url}"\nfailure_threshold = 2\n'
    )
    outputs = []
    for args in (("--json",), (), ("--json",)):
        code, out, err = run("--state", state, "--config", config, "probe", "postgresql", *args)
        outputs += [out, err]
        assert code in (1, 3)
    first = json.loads(outputs[0])
    assert (first["outcome"], first["reason"]) == ("failure", "auth")
    assert first["url"] == postgres.url_with_password("***")
    assert json.loads(outputs[4])["outcome"] == "rejected"
    code, out, err = run("--state", state, "status", "--json")
    outputs += [out, err]
    everything = "".join(outputs)
    assert "authentication failed" in everything
    assert wrong not in everything
    assert postgres.password not in everything


@pytest.mark.slow
def test_qdrant_standin_ready_loading_and_down(state: str, tmp_path: Path) -> None:
    with QdrantStandin() as qdrant:
        config = write_config(tmp_path, f'[dependencies.qdrant]\nurl = "{qdrant.url}"\n')
        code, results, _ = probe_json(state, config, "qdrant")
        assert (code, results[0]["outcome"]) == (0, "success")
        qdrant.set_mode("loading")
        code, results, _ = probe_json(state, config, "qdrant")
        assert (code, results[0]["outcome"], results[0]["failure_count"]) == (1, "failure", 1)
        qdrant.set_mode("down")
        code, results, _ = probe_json(state, config, "qdrant")
        assert (code, results[0]["reason"], results[0]["failure_count"]) == (1, "refused", 2)


@pytest.mark.slow
def test_llamacpp_loading_model_counts_as_a_failure_and_trips_the_circuit(
    state: str, tmp_path: Path
) -> None:
    with LlamaCppStandin(mode="loading") as llama:
        config = write_config(
            tmp_path, f'[dependencies.llamacpp]\nurl = "{llama.url}"\nfailure_threshold = 2\n'
        )
        code, results, _ = probe_json(state, config, "llamacpp", "--count", "3", "--interval", "0")
        assert code == 3
        assert [r["outcome"] for r in results] == ["failure", "failure", "rejected"]
        assert results[0]["reason"] == "not_ready"
        assert "oading" in results[0]["error"]
        assert llama.requests_served == 2, "the rejected attempt never reached the server"


@pytest.mark.slow
def test_all_probes_every_dependency_in_one_table_and_exits_with_the_worst(
    state: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    with QdrantStandin() as qdrant, LlamaCppStandin() as llama:
        config = write_config(
            tmp_path,
            f'[dependencies.redis]\nurl = "{redis_server.url}"\n'
            f'[dependencies.qdrant]\nurl = "{qdrant.url}"\n'
            f'[dependencies.llamacpp]\nurl = "{llama.url}"\n'
            f'[dependencies.postgresql]\nurl = "{closed_port_url("postgresql")}/db"\n'
            "failure_threshold = 1\n",
        )
        code, out, _ = run("--state", state, "--config", config, "probe", "--all")
        assert code == 1, "worst of success and failure"
        rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
        assert out.splitlines()[0].split()[:4] == ["dependency", "url", "outcome", "latency"]
        assert sorted(rows) == ["llamacpp", "postgresql", "qdrant", "redis"]
        assert rows["qdrant"][1] == qdrant.url, "the address probed is shown"
        assert [rows[name][2] for name in ("llamacpp", "qdrant", "redis")] == ["success"] * 3
        assert rows["postgresql"][2:3] == ["failure"]
        code, results, _ = probe_json(state, config, "--all")
        assert code == 3, "a rejection is the worst outcome"
        outcomes = {r["dependency"]: r["outcome"] for r in results}
        assert outcomes == {
            "llamacpp": "success",
            "postgresql": "rejected",
            "qdrant": "success",
            "redis": "success",
        }
        redis_server.stop()
        qdrant.set_mode("down")
        llama.set_mode("down")
        code, _, _ = probe_json(state, config, "--all")
        assert code == 3


# --- whole cbctl processes sharing one state file --------------------------------------------


def cbctl_process(
    *args: str, python_flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`python -m cbctl ARGS` as a separate process, without the caller's CBCTL_* settings."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CBCTL_")}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "cbctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def imported_top_level_modules(importtime_stderr: str) -> set[str]:
    """Top-level package names from `python -X importtime` output on stderr."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


CLIENT_LIBRARIES = {
    "qdrant": "httpx",  # Qdrant's REST API, not qdrant-client (1-5 s to import)
    "postgresql": "psycopg",
    "redis": "redis",
    "llamacpp": "httpx",
}


def settled_contacts(silent: SilentServer, markers: list[socket.socket]) -> int:
    """Connections others made to the silent server so far, once it has accepted all of them.

    A connection of the test's own, made now, is accepted after every earlier one (the listen
    queue is first in, first out): once it shows, the count is complete — no settling time.
    """
    marker = socket.create_connection((silent.host, silent.port))
    markers.append(marker)
    own = {each.getsockname() for each in markers}
    deadline = time.monotonic() + 30
    while marker.getsockname() not in {peer(each) for each in silent.connections}:
        assert time.monotonic() < deadline, "the silent server stopped accepting"
        time.sleep(0.01)
    return sum(1 for each in silent.connections if peer(each) not in own)


def peer(conn: socket.socket) -> object:
    try:
        return conn.getpeername()
    except OSError:  # the client has gone: not one of the markers, which stay open
        return None


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CLIENT_LIBRARIES))
def test_an_open_circuit_rejects_without_contacting_or_importing_the_client(
    tmp_path: Path, silent: SilentServer, kind: str
) -> None:
    url = silent.url("http" if kind in ("qdrant", "llamacpp") else kind)
    config = write_config(
        tmp_path, f'[dependencies.{kind}]\nurl = "{url}"\nfailure_threshold = 1\n'
    )
    state = str(tmp_path / "circuits.db")
    args = ("--state", state, "--config", config, "probe", kind, "--json", "--call-timeout", "0.3")

    # Whether the tripping probe got as far as connecting within 0.3 s depends on the machine's
    # load; what is proven is that the rejected one adds no connection to what was there.
    tripping = cbctl_process(*args, python_flags=("-X", "importtime"))
    assert tripping.returncode == 1, tripping.stderr[-500:]
    assert json.loads(tripping.stdout)["state"] == "open"
    assert CLIENT_LIBRARIES[kind] in imported_top_level_modules(tripping.stderr)
    assert "qdrant_client" not in imported_top_level_modules(tripping.stderr)
    markers: list[socket.socket] = []
    try:
        contacted = settled_contacts(silent, markers)

        rejected = cbctl_process(*args, python_flags=("-X", "importtime"))
        assert rejected.returncode == 3
        assert json.loads(rejected.stdout)["outcome"] == "rejected"
        loaded = imported_top_level_modules(rejected.stderr)
        assert not loaded & set(CLIENT_LIBRARIES.values()), loaded & set(CLIENT_LIBRARIES.values())
        assert settled_contacts(silent, markers) == contacted, "a rejected probe connected"
    finally:
        for marker in markers:
            marker.close()


@pytest.mark.slow
def test_probe_processes_trip_the_shared_circuit_fail_fast_and_recover(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    config = write_config(
        tmp_path,
        f'[dependencies.redis]\nurl = "{redis_server.url}"\n'
        "failure_threshold = 3\nsuccess_threshold = 2\ntimeout = 4.0\ncall_timeout = 5.0\n",
    )
    # timeout: the next process, started right after the one that opened the circuit, must
    # find it still open (a process start on a loaded machine takes far less than 4 s); the
    # recovery then waits on the state (retry_after reaching 0), not on a sleep of its own.
    # call_timeout is only a ceiling: a stopped Redis refuses at once, a running one answers.
    state = str(tmp_path / "circuits.db")

    def probe() -> tuple[int, dict[str, Any]]:
        done = cbctl_process("--state", state, "--config", config, "probe", "redis", "--json")
        assert done.stderr == ""
        return done.returncode, json.loads(done.stdout)

    def status() -> dict[str, Any]:
        done = cbctl_process("--state", state, "status", "--json")
        assert done.returncode == 0, done.stderr
        circuits: list[dict[str, Any]] = json.loads(done.stdout)
        return next(each for each in circuits if each["name"] == "redis")

    redis_server.stop()
    for failures in (1, 2, 3):
        code, result = probe()
        assert (code, result["outcome"], result["failure_count"]) == (1, "failure", failures)
    assert result["state"] == "open"
    code, result = probe()
    assert (code, result["outcome"], result["state"]) == (3, "rejected", "open")

    redis_server.start()
    deadline = time.monotonic() + 30
    while (retry_after := status()["retry_after"]) != 0:
        assert retry_after is not None
        assert time.monotonic() < deadline, retry_after
        time.sleep(min(retry_after, 0.5))
    code, result = probe()
    assert (code, result["outcome"], result["state"]) == (0, "success", "half_open")
    assert result["success_count"] == 1
    assert status()["state"] == "half_open"
    code, result = probe()
    assert (code, result["state"]) == (0, "closed")
    closed = status()
    assert (closed["state"], closed["failure_count"], closed["success_count"]) == ("closed", 0, 0)


@pytest.mark.slow
def test_ctrl_c_between_attempts_is_one_line_and_exit_130(
    tmp_path: Path, silent: SilentServer
) -> None:
    import signal

    config = write_config(
        tmp_path, f'[dependencies.port]\nkind = "tcp"\nurl = "{silent.url("tcp")}"\n'
    )
    state = str(tmp_path / "circuits.db")
    env = {name: value for name, value in os.environ.items() if not name.startswith("CBCTL_")}
    command = [sys.executable, "-m", "cbctl", "--state", state, "--config", config, "probe"]
    with subprocess.Popen(
        [*command, "port", "--json", "--count", "100", "--interval", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as process:
        try:
            assert process.stdout is not None
            first = json.loads(process.stdout.readline())
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert first["outcome"] == "success"
    assert process.returncode == 130
    assert out == ""
    assert err == "cbctl: probe interrupted after 1 of 100 attempts\n"


def test_an_unavailable_redis_state_is_a_warning_and_the_probe_still_runs(
    tmp_path: Path,
) -> None:
    url = closed_port_url("tcp")
    config = write_config(tmp_path, f'[dependencies.cache]\nkind = "tcp"\nurl = "{url}"\n')
    state = f"redis://:state-Secret-5@127.0.0.1:{free_port()}/0"
    code, results, err = probe_json(state, config, "cache", "--count", "2", "--interval", "0")
    assert code == 1
    assert [r["outcome"] for r in results] == ["failure", "failure"]
    assert results[0]["degraded"].startswith("Redis at redis://:***@127.0.0.1:")
    assert err.startswith("cbctl: warning: Redis at redis://:***@")
    assert err.endswith("outcome kept in this process only\n")
    assert err.count("\n") == 1
    assert "state-Secret-5" not in err + json.dumps(results)


@pytest.mark.slow
def test_all_probes_side_by_side_so_silent_dependencies_cost_one_call_timeout(
    state: str, tmp_path: Path, silent: SilentServer
) -> None:
    http = silent.url("http")
    tables = [f'[dependencies.{name}]\nurl = "{http}"\n' for name in ("qdrant", "llamacpp")]
    tables.append(f'[dependencies.redis]\nurl = "{silent.url("redis")}/0"\n')
    tables.append(f'[dependencies.postgresql]\nurl = "{silent.url("postgresql")}/db"\n')
    tables += [f'[dependencies.web{n}]\nkind = "http"\nurl = "{http}/{n}"\n' for n in range(6)]
    config = write_config(tmp_path, "".join(tables))
    started = time.monotonic()
    code, results, _ = probe_json(state, config, "--all", "--call-timeout", "1")
    elapsed = time.monotonic() - started
    assert code == 1
    assert len(results) == 10
    assert {r["reason"] for r in results} == {"timeout"}
    assert elapsed < 5, f"10 silent dependencies took {elapsed:.1f}s: probed one after another?"
