"""Untrusted text reaches the terminal as text: control characters visible, never markup.

Circuit names and errors come from the state file, from a remote /health, and from the body a
dependency answers; generated ones (ESC sequences, OSC 8 links, `[/bold]`, newlines, bidi
controls) go through `cbctl status`, `watch`, `reset`, `probe` and the render functions.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from cbctl.cli import app
from cbctl.health import health_app
from cbctl.printable import visible
from cbctl.render import circuit_table, probe_line, probe_table, reset_table
from cbctl.serving import running
from cbctl.state import BreakerConfig
from cbctl.stores import open_store

runner = CliRunner()

NASTY = [
    "\x1b[2J\x1b[H",  # clear the screen
    "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\",  # OSC 8 link
    "\x1b]0;owned\x07",  # window title
    "[/bold]",
    "[link=http://evil.example]x[/link]",
    "\r\n",
    "\u202e",
    "\x00",
    "\x9b31m",
]
texts = st.lists(
    st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=8)), min_size=1, max_size=4
).map("".join)
names = texts.filter(lambda name: name.strip() != "")
hostile = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_OUR_STYLES = re.compile(r"\x1b\[[0-9;]*m")


def _assert_harmless(output: str) -> None:
    """Only printable characters and line breaks (plus, on a terminal, our own colours)."""
    stripped = _OUR_STYLES.sub("", output)
    bad = [char for char in stripped if not char.isprintable() and char != "\n"]
    assert not bad, f"raw control characters {bad!r} in {output!r}"


@given(text=st.text())
def test_visible_output_is_always_printable_and_printable_text_is_kept(text: str) -> None:
    shown = visible(text)
    assert shown.isprintable()
    if text.isprintable():
        assert shown == text


def _render(renderable: object, terminal: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=terminal, color_system="standard")
    console.print(renderable)
    return out.getvalue()


@given(name=names, error=texts)
def test_render_functions_show_generated_names_and_errors_as_text(name: str, error: str) -> None:
    from cbctl.fleet import CircuitReset, SourceReport

    stats = {
        "name": name,
        "dependency": name,
        "state": "open",
        "outcome": "failure",
        "failure_count": 3,
        "failure_threshold": 3,
        "last_failure": "2026-01-09T19:30:00Z",
        "last_error": error,
        "error": error,
    }
    report = SourceReport(f"http://{name}", (stats,), 0.0)
    unreachable = SourceReport(name, (), 0.0, error)
    renderables = [
        circuit_table([report, unreachable], 1e9),
        probe_line(stats),
        probe_table([stats]),
        reset_table([CircuitReset(name, stats, stats)], name),
    ]
    for renderable in renderables:
        for terminal in (False, True):
            output = _render(renderable, terminal)
            _assert_harmless(output)
            if not terminal:
                assert visible(name) in output or "…" in output


def _seed(path: Path, circuits: dict[str, str]) -> None:
    store = open_store(str(path))
    try:
        for name, error in circuits.items():
            store.record_failure(name, BreakerConfig(failure_threshold=1), None, error)
    finally:
        store.close()


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout, result.stderr


@hostile
@given(circuits=st.dictionaries(names, texts, min_size=1, max_size=3))
def test_status_watch_and_reset_show_hostile_names_and_errors_as_text(
    circuits: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("names") / "circuits.db"
    _seed(path, circuits)
    state = str(path)
    for args in (["status"], ["watch", "--once"]):
        code, out, err = _invoke("--state", state, *args)
        assert code == 0, err
        _assert_harmless(out + err)
        for name in circuits:
            assert visible(name) in out
    code, out, err = _invoke("--state", state, "status", "--json")
    assert {each["name"] for each in json.loads(out)} == set(circuits)
    name = next(iter(circuits))
    code, out, err = _invoke("--state", state, "reset", name)
    assert code == 0, err
    _assert_harmless(out + err)
    code, out, err = _invoke("--state", state, "reset", "\x1b[2Jnosuch[/bold]")
    assert code == 2
    _assert_harmless(out + err)
    assert err.count("\n") == 1


@hostile
@given(circuits=st.dictionaries(names, texts, min_size=1, max_size=3))
def test_watch_url_shows_a_remote_endpoints_hostile_names_as_text(
    circuits: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("remote") / "circuits.db"
    _seed(path, circuits)
    store = open_store(str(path))
    try:
        with running(health_app(store, max_age=0)) as server:
            code, out, err = _invoke("watch", "--once", "--url", server.url)
    finally:
        store.close()
    assert code == 0, err
    _assert_harmless(out + err)
    for name in circuits:
        assert visible(name) in out


@pytest.fixture
def hostile_llamacpp() -> Iterator[tuple[str, list[str]]]:
    """A llama.cpp-like /health that answers 503 with whatever message is queued."""
    messages: list[str] = []

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"error": {"code": 503, "message": messages[-1]}}).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", messages
    finally:
        server.shutdown()
        server.server_close()


@hostile
@given(message=texts.filter(lambda text: text.strip() != ""))
def test_a_dependencys_hostile_answer_is_shown_as_text(
    message: str,
    hostile_llamacpp: tuple[str, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url, messages = hostile_llamacpp
    messages.append(message)
    state = str(tmp_path_factory.mktemp("llama") / "circuits.db")
    for json_flag in ([], ["--json"]):
        result = runner.invoke(
            app,
            ["--state", state, "probe", "llamacpp", "--call-timeout", "2", *json_flag],
            env={"CBCTL_LLAMACPP_URL": url, "CBCTL_CONFIG": ""},
        )
        assert result.exit_code == 1, result.output
        _assert_harmless(result.stdout + result.stderr)
    code, out, err = _invoke("--state", state, "status")
    assert code == 0
    _assert_harmless(out + err)


@pytest.fixture
def hostile_redis() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback 'Redis' that answers every command with the queued RESP error reply."""
    import socket

    replies: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return

            def answer(conn: socket.socket = conn) -> None:
                with conn:
                    try:
                        while conn.recv(65536):
                            conn.sendall(b"-" + replies[-1] + b"\r\n")
                    except OSError:
                        pass

            threading.Thread(target=answer, daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0", replies
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@hostile
@given(reply=texts.filter(lambda text: "\r" not in text and "\n" not in text))
def test_a_redis_error_reply_is_shown_as_text(
    reply: str, hostile_redis: tuple[str, list[bytes]]
) -> None:
    url, replies = hostile_redis
    replies.append(("ERR " + reply).encode("utf-8", "replace"))
    for args in (["status"], ["probe", "redis", "--call-timeout", "0.5"]):
        result = runner.invoke(
            app,
            ["--state", url, *args],
            env={"CBCTL_REDIS_URL": "redis://127.0.0.1:1/0", "CBCTL_CONFIG": ""},
        )
        assert not isinstance(result.exception, Exception) or isinstance(
            result.exception, SystemExit
        ), result.exception
        assert result.exit_code in (1, 2)
        _assert_harmless(result.stdout + result.stderr)
