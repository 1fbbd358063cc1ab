"""cbctl.toml + environment: defaults, overrides, lookup order, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbctl.config import (
    BUILTIN_URLS,
    Dependency,
    find_config_file,
    load_config,
    parse_config,
    redact_url,
)
from cbctl.errors import ConfigError, UsageError
from cbctl.state import BreakerConfig

FILE = Path("/etc/cbctl/cbctl.toml")


def _parse(text: str, **environ: str) -> object:
    return parse_config(text, path=FILE, environ=environ)


def _error(text: str, **environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, path=FILE, environ=environ)
    return str(caught.value)


# --- defaults and overrides -------------------------------------------------------------


def test_without_a_file_the_four_dependencies_are_built_in() -> None:
    config = parse_config("", environ={})
    assert config.path is None
    assert config.names == ["llamacpp", "postgresql", "qdrant", "redis"]
    for name, url in BUILTIN_URLS.items():
        dependency = config.dependency(name)
        assert (dependency.kind, dependency.url, dependency.source) == (name, url, "builtin")
        assert dependency.call_timeout == 2.0
        assert dependency.breaker == BreakerConfig(5, 30.0, 2, 1)


def test_design_example_file_sets_defaults_and_per_dependency_overrides() -> None:
    config = parse_config(
        """
        builtins = true
        [defaults]
        failure_threshold = 5
        timeout = 30.0
        success_threshold = 2

        [dependencies.qdrant]
        kind = "qdrant"
        url = "http://localhost:6333"
        failure_threshold = 3
        call_timeout = 2.0
        """,
        path=FILE,
        environ={},
    )
    qdrant = config.dependency("qdrant")
    assert qdrant.breaker == BreakerConfig(failure_threshold=3, timeout=30.0, success_threshold=2)
    assert qdrant.source == "file"
    assert config.dependency("redis").breaker.failure_threshold == 5


def test_defaults_apply_to_every_dependency_unless_overridden() -> None:
    config = parse_config(
        """
        builtins = true
        [defaults]
        failure_threshold = 7
        timeout = 12
        call_timeout = 0.5
        [dependencies.redis]
        success_threshold = 4
        call_timeout = 1
        """,
        environ={},
    )
    redis = config.dependency("redis")
    assert redis.breaker == BreakerConfig(failure_threshold=7, timeout=12.0, success_threshold=4)
    assert redis.call_timeout == 1.0
    assert redis.url == BUILTIN_URLS["redis"]
    assert redis.source == "builtin"
    assert config.dependency("qdrant").call_timeout == 0.5
    assert config.dependency("qdrant").breaker.timeout == 12.0


def test_a_file_with_dependencies_replaces_the_built_ins() -> None:
    config = parse_config(
        "[dependencies.redis]\nurl = 'redis://cache:6379/0'\n"
        "[dependencies.pg]\nkind = 'postgresql'\nurl = 'postgresql://db/app'\n",
        environ={},
    )
    assert config.names == ["pg", "redis"]


def test_builtins_true_keeps_the_built_ins_next_to_the_file_s_dependencies() -> None:
    config = parse_config(
        "builtins = true\n[dependencies.pg]\nkind = 'postgresql'\nurl = 'postgresql://db/a'\n",
        environ={},
    )
    assert config.names == ["llamacpp", "pg", "postgresql", "qdrant", "redis"]


def test_a_file_with_only_defaults_keeps_the_built_ins() -> None:
    config = parse_config("[defaults]\nfailure_threshold = 9\n", environ={})
    assert config.names == ["llamacpp", "postgresql", "qdrant", "redis"]
    assert config.dependency("redis").breaker.failure_threshold == 9


def test_builtins_must_be_a_boolean() -> None:
    assert _error("builtins = 'yes'") == (
        f"{FILE}: builtins must be true or false, got 'yes' (a string)"
    )


def test_every_value_says_where_it_came_from() -> None:
    config = parse_config(
        "[defaults]\ntimeout = 12\n[dependencies.redis]\nfailure_threshold = 3\n",
        environ={"CBCTL_REDIS_URL": "redis://elsewhere:6379/0"},
    )
    origins = config.dependency("redis").origins
    assert origins["failure_threshold"] == "dependencies.redis.failure_threshold"
    assert origins["timeout"] == "defaults.timeout"
    assert origins["success_threshold"] == "default"
    assert origins["url"] == "$CBCTL_REDIS_URL"
    assert origins["kind"] == "built-in"


def test_extra_http_and_tcp_dependencies_with_their_own_options() -> None:
    config = parse_config(
        """
        [dependencies.embedder]
        kind = "http"
        url = "https://embed.internal:8443/healthz"
        expected_status = 204
        [dependencies.memcached]
        kind = "tcp"
        url = "tcp://127.0.0.1:11211"
        [dependencies.vectors]
        kind = "qdrant"
        url = "https://qdrant.internal:6333"
        api_key = "qk-123"
        """,
        environ={},
    )
    assert config.dependency("embedder").expected_status == 204
    assert config.dependency("memcached").kind == "tcp"
    assert config.dependency("vectors").api_key == "qk-123"
    assert "vectors" in config.names


def test_env_var_overrides_the_url_and_says_so() -> None:
    config = parse_config(
        "builtins = true\n[dependencies.my-cache]\nkind = 'redis'\nurl = 'redis://a:6379/0'",
        environ={
            "CBCTL_QDRANT_URL": "http://10.0.0.5:6333",
            "CBCTL_MY_CACHE_URL": "redis://b:6380/1",
        },
    )
    assert config.dependency("qdrant").url == "http://10.0.0.5:6333"
    assert config.dependency("qdrant").source == "env"
    assert config.dependency("my-cache").url == "redis://b:6380/1"
    assert config.dependency("my-cache").source == "env"
    assert config.dependency("redis").source == "builtin"


def test_with_url_and_with_call_timeout_record_a_flag_and_validate() -> None:
    qdrant = parse_config("", environ={}).dependency("qdrant")
    moved = qdrant.with_url("http://127.0.0.1:7000")
    assert (moved.url, moved.source) == ("http://127.0.0.1:7000", "flag")
    assert qdrant.with_call_timeout(0.25).call_timeout == 0.25
    with pytest.raises(ConfigError, match=r"^--url: a qdrant dependency needs a http://"):
        qdrant.with_url("redis://127.0.0.1:7000")
    with pytest.raises(ConfigError, match="--call-timeout must be a positive number"):
        qdrant.with_call_timeout(0)


def test_unknown_dependency_name_lists_the_known_ones() -> None:
    config = parse_config("", path=FILE, environ={})
    with pytest.raises(UsageError) as caught:
        config.dependency("mongo")
    message = str(caught.value)
    assert "unknown dependency 'mongo'" in message
    assert "llamacpp, postgresql, qdrant, redis" in message
    assert str(FILE) in message


# --- lookup order -----------------------------------------------------------------------


def _write(path: Path, threshold: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[defaults]\nfailure_threshold = {threshold}\n")
    return path


def test_lookup_order_flag_then_env_then_cwd_then_user_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    user_file = _write(tmp_path / "xdg" / "cbctl" / "cbctl.toml", 4)
    cwd = tmp_path / "work"
    cwd.mkdir()
    assert find_config_file(environ={}, cwd=cwd) == user_file
    local = _write(cwd / "cbctl.toml", 3)
    assert find_config_file(environ={}, cwd=cwd) == local
    env_file = _write(tmp_path / "env.toml", 2)
    assert find_config_file(environ={"CBCTL_CONFIG": str(env_file)}, cwd=cwd) == env_file
    flag_file = _write(tmp_path / "flag.toml", 1)
    found = find_config_file(flag_file, environ={"CBCTL_CONFIG": str(env_file)}, cwd=cwd)
    assert found == flag_file
    config = load_config(flag_file, environ={"CBCTL_CONFIG": str(env_file)}, cwd=cwd)
    assert (config.path, config.defaults.failure_threshold) == (flag_file, 1)


def test_no_file_anywhere_means_built_in_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty-xdg"))
    config = load_config(environ={}, cwd=tmp_path)
    assert config.path is None
    assert config.origin == "built-in defaults"


def test_a_named_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml \(from --config\) does not exist"):
        load_config(missing, environ={})
    with pytest.raises(ConfigError, match=r"nope\.toml \(from \$CBCTL_CONFIG\) does not exist"):
        load_config(environ={"CBCTL_CONFIG": str(missing)})


def test_errors_from_a_loaded_file_name_that_file(tmp_path: Path) -> None:
    path = tmp_path / "cbctl.toml"
    path.write_text("[defaults]\ntimeout = 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: defaults\.timeout must be a positive"):
        load_config(path, environ={})


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cbctl.toml"
    path.write_bytes(b"[defaults]\nx = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, environ={})


# --- bad input: each names the file, the key, what is wrong -----------------------------


def test_malformed_toml_names_the_file_and_the_line() -> None:
    message = _error("[defaults]\nfailure_threshold = 5\ntimeout = = 3\n")
    assert message.startswith(f"{FILE}: invalid TOML:")
    assert "line 3" in message


def test_unknown_kind() -> None:
    message = _error("[dependencies.mongo]\nkind = 'mongodb'\nurl = 'mongodb://x'")
    assert message == (
        f"{FILE}: dependencies.mongo.kind: unknown kind 'mongodb' "
        "(known: qdrant, postgresql, redis, llamacpp, http, tcp)"
    )


def test_missing_kind_for_a_new_dependency() -> None:
    assert "dependencies.thing.kind is missing" in _error("[dependencies.thing]\nurl = 'x'")


def test_missing_url_for_a_new_dependency() -> None:
    message = _error("[dependencies.web]\nkind = 'http'")
    assert (
        message == f"{FILE}: dependencies.web.url is missing (a http dependency needs an address)"
    )


def test_unknown_key_in_a_dependency() -> None:
    message = _error("[dependencies.redis]\nfailure_treshold = 3")
    assert message.startswith(f"{FILE}: dependencies.redis.failure_treshold: unknown key")
    assert "failure_threshold" in message


def test_kind_specific_key_on_the_wrong_kind() -> None:
    message = _error("[dependencies.redis]\napi_key = 'x'")
    assert "dependencies.redis.api_key: unknown key for kind 'redis'" in message


def test_unknown_key_in_defaults_and_at_top_level() -> None:
    assert "defaults.retries: unknown key" in _error("[defaults]\nretries = 3")
    assert f"{FILE}: servers: unknown key" in _error("[servers]\na = 1")


@pytest.mark.parametrize(
    ("kind", "url", "expected"),
    [
        ("qdrant", "redis://localhost:6333", "needs a http:// or https:// URL"),
        ("llamacpp", "localhost:8080", "needs a http:// or https:// URL"),
        ("http", "ftp://example.com", "needs a http:// or https:// URL"),
        ("postgresql", "mysql://localhost/db", "needs a postgresql:// or postgres:// URL"),
        ("redis", "http://localhost:6379", "needs a redis:// or rediss:// URL"),
        ("tcp", "http://localhost:11211", "needs a tcp:// URL (e.g. tcp://localhost:11211)"),
    ],
)
def test_wrong_scheme_url(kind: str, url: str, expected: str) -> None:
    message = _error(f"[dependencies.dep]\nkind = '{kind}'\nurl = '{url}'")
    assert message.startswith(f"{FILE}: dependencies.dep.url: a {kind} dependency {expected}")
    assert repr(url) in message


def test_both_postgres_schemes_and_rediss_are_accepted() -> None:
    config = parse_config(
        "[dependencies.a]\nkind='postgresql'\nurl='postgres://h/db'\n"
        "[dependencies.b]\nkind='redis'\nurl='rediss://h:6380/0'\n",
        environ={},
    )
    assert config.dependency("a").url == "postgres://h/db"
    assert config.dependency("b").url == "rediss://h:6380/0"


def test_tcp_url_needs_a_port() -> None:
    message = _error("[dependencies.t]\nkind = 'tcp'\nurl = 'tcp://localhost'")
    assert "dependencies.t.url: a tcp URL needs a port (tcp://host:port)" in message


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_port_out_of_range(port: str) -> None:
    message = _error(f"[dependencies.redis]\nurl = 'redis://localhost:{port}/0'")
    assert message == (
        f"{FILE}: dependencies.redis.url: port out of range in "
        f"'redis://localhost:{port}/0' (must be 1-65535)"
    )


def test_non_numeric_port() -> None:
    assert "invalid port" in _error("[dependencies.qdrant]\nurl = 'http://localhost:abc'")


def test_url_without_a_host() -> None:
    assert "no host in URL" in _error("[dependencies.qdrant]\nurl = 'http://:6333'")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("failure_threshold", "0", "defaults.failure_threshold must be at least 1, got 0"),
        ("failure_threshold", "-3", "defaults.failure_threshold must be at least 1, got -3"),
        ("success_threshold", "0", "defaults.success_threshold must be at least 1, got 0"),
        ("half_open_max_calls", "0", "defaults.half_open_max_calls must be at least 1, got 0"),
        ("timeout", "0", "defaults.timeout must be a positive number of seconds, got 0"),
        ("timeout", "-1.5", "defaults.timeout must be a positive number of seconds, got -1.5"),
        ("timeout", "inf", "defaults.timeout must be a positive number of seconds, got inf"),
        ("call_timeout", "0.0", "defaults.call_timeout must be a positive number of seconds"),
        ("failure_threshold", "2.5", "defaults.failure_threshold must be a whole number, got 2.5"),
        ("failure_threshold", "'5'", "defaults.failure_threshold must be a whole number, got '5'"),
    ],
)
def test_bad_numbers_in_defaults(key: str, value: str, expected: str) -> None:
    assert _error(f"[defaults]\n{key} = {value}").startswith(f"{FILE}: {expected}")


@pytest.mark.parametrize("key", ["failure_threshold", "success_threshold", "half_open_max_calls"])
def test_bool_where_an_int_is_needed(key: str) -> None:
    message = _error(f"[dependencies.qdrant]\n{key} = true")
    assert message == (
        f"{FILE}: dependencies.qdrant.{key} must be a whole number, got true (a boolean)"
    )


@pytest.mark.parametrize("key", ["timeout", "call_timeout"])
def test_bool_where_seconds_are_needed(key: str) -> None:
    message = _error(f"[dependencies.redis]\n{key} = false")
    assert message == (
        f"{FILE}: dependencies.redis.{key} must be a number of seconds, got false (a boolean)"
    )


def test_zero_threshold_per_dependency_names_the_dependency() -> None:
    message = _error("[dependencies.postgresql]\nsuccess_threshold = 0")
    assert message == f"{FILE}: dependencies.postgresql.success_threshold must be at least 1, got 0"


def test_expected_status_must_be_an_http_status() -> None:
    base = "[dependencies.web]\nkind = 'http'\nurl = 'http://x'\nexpected_status = "
    assert "expected_status must be an HTTP status code (100-599), got 99" in _error(base + "99")
    assert "expected_status must be an HTTP status code, got true" in _error(base + "true")


def test_dependencies_must_be_tables() -> None:
    assert "dependencies.redis must be a table" in _error("[dependencies]\nredis = 'x'")
    assert "defaults must be a table" in _error("defaults = 3")


def test_bad_dependency_name() -> None:
    message = _error("[dependencies.'my cache']\nkind = 'redis'\nurl = 'redis://h'")
    assert "a dependency name may use letters, digits, '-' and '_' only" in message


def test_bad_env_url_names_the_variable_and_hides_the_password() -> None:
    message = _error("", CBCTL_POSTGRESQL_URL="mysql://app:hunter2@db/x")
    assert message.startswith("$CBCTL_POSTGRESQL_URL: a postgresql dependency needs")
    assert "hunter2" not in message
    assert "app:***@db" in message


def test_api_key_must_be_a_non_empty_string() -> None:
    assert "api_key must be a non-empty string" in _error("[dependencies.qdrant]\napi_key = ''")


def test_dependency_constructed_directly_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="unknown kind 'mongo'"):
        Dependency(name="m", kind="mongo", url="mongodb://x")
    with pytest.raises(ConfigError, match="call_timeout must be a positive number"):
        Dependency(name="r", kind="redis", url="redis://x", call_timeout=-1)


# --- passwords never shown --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://app:s3cr3t@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("redis://:s3cr3t@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://default:s3cr3t@cache/0", "redis://default:***@cache/0"),
        ("postgresql://db/x?user=app&password=s3cr3t", "postgresql://db/x?user=app&password=***"),
        ("http://user@host:1/x", "http://user@host:1/x"),
        ("http://host/path", "http://host/path"),
        ("redis://u:p%40ss@[::1:6379/0", "redis://u:***@[::1:6379/0"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_repr_of_dependency_and_config_hides_passwords_and_api_keys() -> None:
    config = parse_config(
        "builtins = true\n[dependencies.vectors]\nkind = 'qdrant'\nurl = 'http://h:6333'\n"
        "api_key = 'qk-secret'\n",
        environ={"CBCTL_POSTGRESQL_URL": "postgresql://app:pg-secret@db/x?password=pg-secret"},
    )
    shown = repr(config) + str(config) + repr(config.dependency("postgresql"))
    assert "pg-secret" not in shown
    assert "qk-secret" not in shown
    assert "app:***@db" in repr(config.dependency("postgresql"))
    assert config.dependency("postgresql").display_url.startswith("postgresql://app:***@db/x")


def test_wrong_scheme_error_hides_the_password() -> None:
    message = _error("[dependencies.redis]\nurl = 'http://:topsecret@h:1'")
    assert "topsecret" not in message


@pytest.mark.parametrize(
    ("kind", "url", "address"),
    [
        ("postgresql", "postgresql://app:pw@db.internal/x", "db.internal:5432"),
        ("postgresql", "postgresql:///x", "localhost:5432"),
        ("redis", "redis://[::1]:6380/0", "[::1]:6380"),
        ("redis", "rediss://cache/0", "cache:6379"),
        ("http", "https://api.example.com/health", "api.example.com:443"),
        ("qdrant", "http://localhost:6333", "localhost:6333"),
        ("tcp", "tcp://10.0.0.1:11211", "10.0.0.1:11211"),
    ],
)
def test_address_is_host_and_port_for_messages(kind: str, url: str, address: str) -> None:
    assert Dependency(name="d", kind=kind, url=url).address == address


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), 86400.5, "30", True])
def test_settings_in_code_have_the_range_of_cbctl_toml(timeout: object) -> None:
    """One reading of seconds (cbctl.limits) for a breaker's timeout, in code or in the file."""
    from cbctl.limits import seconds
    from cbctl.state import BreakerConfig

    with pytest.raises(ConfigError) as in_code:
        BreakerConfig(timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as in_file:
        seconds(timeout, "timeout")
    assert str(in_code.value) == str(in_file.value)
