"""Numbers, URLs and records that used to crash: one validated range, one parser, one boundary.

Every generated value either passes (and then is finite and in range) or is one line on
stderr with exit 2 — never a traceback, through the function and through the real CLI.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cbctl import CircuitBreaker
from cbctl.cli import app
from cbctl.config import parse_config
from cbctl.errors import ConfigError, StateError, UsageError
from cbctl.health import health_app
from cbctl.limits import MAX_COUNT, MAX_SECONDS, count, seconds
from cbctl.state import BreakerConfig
from cbctl.stores import open_store
from cbctl.urls import parse_url

runner = CliRunner()
hostile = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([1e308, -0.0, 0, 1, 86400, 86400.0001, 10**20, MAX_COUNT + 1]),
)
number_texts = st.one_of(
    numbers.map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e308", "1e-400", "0x10", " 5", "5s", "", "1_000"]),
    st.text(max_size=6),
)


def _invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout, result.stderr


def _one_line(err: str) -> None:
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- numbers -----------------------------------------------------------------------------------


@given(value=st.one_of(numbers, number_texts))
def test_seconds_are_finite_and_bounded_or_a_clear_error(value: object) -> None:
    try:
        result = seconds(value, "--x", error=UsageError, text=True)
    except UsageError as error:
        message = str(error)
    else:
        assert math.isfinite(result)
        assert 0 < result <= MAX_SECONDS
        return
    assert message.startswith("--x must be ")


@given(value=st.one_of(numbers, number_texts))
def test_counts_are_whole_and_bounded_or_a_clear_error(value: object) -> None:
    try:
        result = count(value, "n", text=True)
    except ConfigError as error:
        message = str(error)
    else:
        assert isinstance(result, int)
        assert 1 <= result <= MAX_COUNT
        return
    assert message.startswith("n must be ")


@hostile
@given(interval=number_texts)
def test_watch_interval_is_in_range_or_exit_2_on_one_line(
    interval: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    state = str(tmp_path_factory.mktemp("watch") / "circuits.db")
    open_store(state).close()
    code, _, err = _invoke("--state", state, "watch", "--once", "--interval", interval)
    if code == 2:
        _one_line(err)
        assert "--interval" in err
    else:
        assert code == 0, err
        assert 0.1 <= float(interval) <= MAX_SECONDS


@hostile
@given(
    key=st.sampled_from(["failure_threshold", "success_threshold", "timeout", "call_timeout"]),
    value=numbers,
    option=st.sampled_from(["--interval", "--call-timeout"]),
    text=number_texts,
)
def test_probe_numbers_from_cbctl_toml_and_options_are_in_range_or_exit_2(
    key: str, value: float, option: str, text: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("numbers")
    shown = repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    shown = {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(shown, shown)
    config = directory / "cbctl.toml"
    config.write_text(
        f"[dependencies.t]\nkind = 'tcp'\nurl = 'tcp://127.0.0.1:{_closed_port()}'\n"
        f"{key} = {shown}\n"
    )
    args = ["--state", str(directory / "c.db"), "--config", str(config), "probe", "t"]
    code, _, err = _invoke(*args, option, text)
    assert code in (1, 2), err
    if code == 2:
        _one_line(err)


@pytest.mark.parametrize(
    ("count_text", "message"),
    [("0", "at least 1"), ("1e3", "whole number"), ("1000001", "at most 1000000"), ("x", "whole")],
)
def test_probe_count_is_in_range_or_exit_2(count_text: str, message: str) -> None:
    code, _, err = _invoke("probe", "redis", "--count", count_text)
    assert code == 2
    _one_line(err)
    assert message in err


def test_a_1e20_threshold_in_cbctl_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"failure_threshold must be at most 1000000"):
        parse_config("[defaults]\nfailure_threshold = 100000000000000000000\n", environ={})


def test_deeply_nested_toml_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "cbctl.toml"
    config.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    code, _, err = _invoke("--config", str(config), "probe", "redis")
    assert code == 2
    _one_line(err)
    assert "nested too deeply" in err


# -- URLs --------------------------------------------------------------------------------------

url_tails = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "[::1",
            "[::1]:99999",
            "127.0.0.1:99999",
            "127.0.0.1:0",
            "127.0.0.1:-1",
            "127.0.0.1:65536/health",
            "[fe80::1%25eth0]:x",
            "u:p/w@127.0.0.1:1",
            "::1]:80",
            "h:80\x1b[2J",
        ]
    ),
)


@given(scheme=st.sampled_from(["http", "https", "redis", "tcp", ""]), tail=url_tails)
def test_the_url_parser_answers_a_checked_url_or_a_clear_error(scheme: str, tail: str) -> None:
    text = f"{scheme}://{tail}" if scheme else tail
    try:
        url = parse_url(text, "--url", schemes=("http", "https", "redis", "tcp"))
    except UsageError as error:
        message = str(error)
    else:
        assert url.port is None or 1 <= url.port <= 65535
        assert url.host
        assert text.isprintable()
        return
    assert message.startswith("--url")


@hostile
@given(tail=url_tails)
def test_watch_and_reset_url_are_checked_before_anything_is_sent(tail: str) -> None:
    for args in (["watch", "--once", "--url"], ["reset", "--all", "--token", "t0ken", "--url"]):
        code, _, err = _invoke(*args, f"http://{tail}")
        assert code in (0, 1, 2), err
        if code == 2:
            _one_line(err)


def test_reset_to_a_port_out_of_range_sends_nothing() -> None:
    """99999 would wrap round to 34463 in httpx: nothing may reach that port."""
    with socket.socket() as trap:
        try:
            trap.bind(("127.0.0.1", 99999 - 65536))
        except OSError:
            pytest.skip("port 34463 is in use here")
        trap.listen()
        trap.setblocking(False)
        code, _, err = _invoke(
            "reset", "--all", "--url", "http://127.0.0.1:99999", "--token", "secret-tok"
        )
        with pytest.raises(BlockingIOError):
            trap.accept()
    assert code == 2
    assert "port out of range" in err
    _one_line(err)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("redis://[::1", "invalid URL"),
        ("~nosuchuser/x", "no such user 'nosuchuser'"),
        ("redis://127.0.0.1:70000/0", "port out of range"),
        ("redis://u:p/w@127.0.0.1:1/0", "percent-encode"),
    ],
)
def test_a_broken_state_location_is_exit_2_on_one_line(location: str, message: str) -> None:
    code, _, err = _invoke("--state", location, "status")
    assert code == 2
    _one_line(err)
    assert message in err


# -- records from a store ----------------------------------------------------------------------

foreign = st.one_of(
    st.tuples(st.just("state"), st.one_of(st.text(max_size=8), st.integers(), st.none())),
    st.tuples(
        st.sampled_from(["failure_threshold", "success_threshold", "half_open_max_calls"]),
        st.one_of(st.integers(max_value=0), st.text(max_size=4), st.floats()),
    ),
    st.tuples(
        st.sampled_from(["failure_count", "generation", "opened_at", "timeout"]),
        st.one_of(st.text(min_size=1, max_size=4), st.just(-1), st.just(float("nan"))),
    ),
)


def _is_foreign(column: str, value: object) -> bool:
    if column == "state":
        return value not in ("closed", "open", "half_open")
    if column in ("failure_threshold", "success_threshold", "half_open_max_calls"):
        return not (isinstance(value, int) and value >= 1)
    if column == "opened_at":
        return value is not None and (
            not isinstance(value, int | float) or not math.isfinite(value)
        )
    if column == "timeout":
        return not isinstance(value, int | float) or not 0 < value < math.inf
    return not (isinstance(value, int) and value >= 0)


def _seed(path: Path) -> None:
    store = open_store(str(path))
    try:
        for name in ("good", "bad"):
            store.record_failure(name, BreakerConfig(), None, "refused")
    finally:
        store.close()


@hostile
@given(change=foreign)
def test_a_foreign_state_row_is_named_and_the_others_still_show(
    change: tuple[str, object],
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    column, value = change
    path = tmp_path_factory.mktemp("rows") / "circuits.db"
    _seed(path)
    with sqlite3.connect(path) as connection:
        try:
            connection.execute(f"UPDATE circuits SET {column} = ? WHERE name = 'bad'", (value,))
        except (sqlite3.IntegrityError, OverflowError):  # NOT NULL, or too large for SQLite
            return
        # what SQLite kept (its column affinity turns '5' and 1.0 into the integer 5 and 1)
        (stored,) = connection.execute(
            f"SELECT {column} FROM circuits WHERE name = 'bad'"
        ).fetchone()
    broken = _is_foreign(column, stored)
    code, out, err = _invoke("--state", str(path), "status", "--json")
    assert code == 0, err
    shown = {each["name"]: each for each in json.loads(out)}
    assert shown["good"]["state"] == "open" or shown["good"]["state"] == "closed"
    if broken:
        assert shown["bad"]["state"] == "unreadable"
        assert "circuit 'bad' has an unreadable record" in shown["bad"]["error"]
        assert str(path) in shown["bad"]["error"]
    store = open_store(str(path))
    try:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            answer = health_app(store, max_age=0).respond("GET", "/health", {}, b"")
        assert answer.status == 200
        payload = json.loads(answer.body)
        assert "good" in payload["circuits"]
        if broken:
            assert payload["status"] == "degraded"
            assert payload["circuits"]["bad"]["state"] == "unreadable"
            assert "unreadable record" in caplog.text
            with pytest.raises(StateError, match="circuit 'bad' has an unreadable record"):
                CircuitBreaker("bad", store=store).call(lambda: None)
    finally:
        store.close()
    code, _, err = _invoke("--state", str(path), "watch", "--once")
    assert code == 0, err


@pytest.mark.slow
def test_a_foreign_redis_hash_is_named_and_the_others_still_show(redis_server: object) -> None:
    import redis

    url = redis_server.url  # type: ignore[attr-defined]
    store = open_store(url)
    try:
        for name in ("good", "bad"):
            store.record_failure(name, BreakerConfig(), None, "refused")
        redis.Redis.from_url(url).hset("cbctl:circuit:bad", mapping={"s": "bogus", "ft": "0"})
        answer = health_app(store, max_age=0).respond("GET", "/health", {}, b"")
        assert answer.status == 200
        circuits = json.loads(answer.body)["circuits"]
        assert circuits["good"]["state"] == "closed"
        assert circuits["bad"]["state"] == "unreadable"
        assert "Redis at" in circuits["bad"]["error"]
        with pytest.raises(StateError, match="circuit 'bad' has an unreadable record"):
            store.load("bad")
    finally:
        store.close()
    code, out, err = _invoke("--state", url, "status")
    assert code == 0, err
    assert "unreadable" in out
