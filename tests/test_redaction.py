"""Passwords never reach output: the redactor, and the real CLI with generated passwords.

Passwords are drawn from the whole printable range (`/ # ? @ %`, spaces, quotes, newlines),
put into URLs both percent-encoded (as they should be) and raw (as people type them), and
given to cbctl through cbctl.toml, `CBCTL_<NAME>_URL`, `--state redis://…`, `--url` and
`--debug`. None may appear — raw, encoded or decoded — in stdout, stderr, JSON, a log record,
the state file's rows, `/health` or `/metrics`.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import string
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cbctl.cli import app
from cbctl.health import health_app
from cbctl.redaction import redact_url, scrub
from cbctl.stores import open_store

runner = CliRunner()

# A fixed head and tail keep the generated middle from being a string that occurs in output
# anyway (a one-character password "a" would be "found" in every message).
passwords = st.text(alphabet=string.printable, min_size=1, max_size=24).map(
    lambda core: f"Pw{core}Zq"
)
hostile = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _forms(password: str) -> set[str]:
    return {password, quote(password, safe=""), quote_plus(password, safe="")}


def _assert_absent(password: str, *texts: str) -> None:
    for text in texts:
        for form in _forms(password):
            assert form not in text, f"{form!r} leaked into {text!r}"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _urls(scheme: str, password: str, port: int, path: str = "/0") -> list[str]:
    """The password percent-encoded, raw, and as a `password=` query value."""
    host = f"127.0.0.1:{port}"
    return [
        f"{scheme}://user:{quote(password, safe='')}@{host}{path}",
        f"{scheme}://user:{password}@{host}{path}",
        f"{scheme}://{host}{path}?password={quote(password, safe='')}&x=1",
    ]


@given(password=passwords, scheme=st.sampled_from(["redis", "postgresql", "http", "rediss"]))
def test_redact_url_never_shows_the_password(password: str, scheme: str) -> None:
    for url in _urls(scheme, password, 6379):
        _assert_absent(password, redact_url(url))


@given(password=passwords)
def test_a_token_in_the_query_is_masked(password: str) -> None:
    shown = redact_url(f"http://h:1/health?token={quote(password, safe='')}&api_key=x")
    _assert_absent(password, shown)
    assert "token=***" in shown


@given(password=passwords)
def test_scrub_masks_every_form_of_a_secret_seen_in_a_url(password: str) -> None:
    redact_url(f"redis://u:{quote(password, safe='')}@h:1/0")
    echoed = f"client said: bad auth {password} / {quote(password, safe='')}"
    _assert_absent(password, scrub(echoed))


def _invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout + result.stderr


@hostile
@given(password=passwords)
def test_state_redis_url_with_any_password_never_leaks(
    password: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = _closed_port()
    for url in _urls("redis", password, port):
        for debug in ((), ("--debug",)):
            caplog.clear()
            with caplog.at_level(logging.DEBUG):
                code, output = _invoke(*debug, "--state", url, "status", "--json")
            assert code == 2
            _assert_absent(password, output, caplog.text)


@hostile
@given(password=passwords, how=st.sampled_from(["file", "env"]))
def test_dependency_urls_with_any_password_never_leak_anywhere(
    password: str,
    how: str,
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A probe of a dead redis and postgresql: JSON, messages, logs, state rows, /health."""
    directory = tmp_path_factory.mktemp("secrets")
    state = str(directory / "circuits.db")
    port = _closed_port()
    for index, url in enumerate(
        [*_urls("redis", password, port), *_urls("postgresql", password, port, "/db")]
    ):
        kind = url.split(":", 1)[0]
        env = {"CBCTL_CONFIG": ""}
        config = directory / f"cbctl-{index}.toml"
        if how == "file":
            escaped = url.replace("\\", "\\\\").replace('"', '\\"')
            escaped = escaped.translate({c: f"\\u{c:04x}" for c in range(32)})
            config.write_text(f'[dependencies.dep]\nkind = "{kind}"\nurl = "{escaped}"\n')
        else:
            config.write_text(f'[dependencies.dep]\nkind = "{kind}"\nurl = "{kind}://x:1/0"\n')
            env["CBCTL_DEP_URL"] = url
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            for args in (
                ["probe", "dep", "--json", "--call-timeout", "1"],
                ["probe", "dep"],
                ["config", "--json"],
                ["config"],
            ):
                for debug in ([], ["--debug"]):
                    _, output = _invoke(
                        *debug, "--state", state, "--config", str(config), *args, env=env
                    )
                    _assert_absent(password, output)
        _assert_absent(password, caplog.text)
    with sqlite3.connect(state) as connection:
        rows = repr(connection.execute("SELECT * FROM circuits").fetchall())
    _assert_absent(password, rows)
    store = open_store(state)
    try:
        app_ = health_app(store, max_age=0)
        for path in ("/health", "/metrics"):
            body = app_.respond("GET", path, {}, b"").body.decode()
            _assert_absent(password, body)
    finally:
        store.close()


@hostile
@given(password=passwords)
def test_credentials_in_a_remote_url_are_refused_without_showing_them(password: str) -> None:
    port = _closed_port()
    for url in _urls("http", password, port, "/"):
        for args in (
            ["reset", "x", "--url", url, "--token", "tok-1234"],
            ["watch", "--once", "--url", url],
        ):
            code, output = _invoke(*args)
            _assert_absent(password, output)
            if "password=" not in url:
                assert code == 2


def test_the_token_never_appears_even_when_the_endpoint_reflects_it(tmp_path: Path) -> None:
    """An error body that echoes the token is scrubbed before it is cut to length."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    token = "reflected-token-0c47a9"

    class Reflect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = ('{"error": "' + "x" * 190 + self.headers["Authorization"] + '"}').encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Reflect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code, output = _invoke("reset", "x", "--url", url, "--token", token)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    assert "answered HTTP 500" in output
    assert token not in output
    assert token[:8] not in output


@hostile
@given(password=passwords)
def test_a_token_in_an_http_dependencys_query_never_reaches_a_log_record(
    password: str, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx logs each request's URL at INFO: the record is scrubbed, the request is not."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    directory = tmp_path_factory.mktemp("http")
    url = f"http://127.0.0.1:{server.server_address[1]}/ready?token={quote(password, safe='')}"
    config = directory / "cbctl.toml"
    config.write_text(f"[dependencies.web]\nkind = 'http'\nurl = '{url}'\n")
    try:
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            code, output = _invoke(
                "--state", str(directory / "c.db"), "--config", str(config), "probe", "web"
            )
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, output
    assert "token=" in seen[-1]  # the endpoint still got its token
    assert "HTTP Request" in caplog.text
    _assert_absent(password, output, caplog.text)
