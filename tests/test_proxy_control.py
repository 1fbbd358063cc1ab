"""`cbctl proxy` / `cbctl fault`: a named, long-running fault proxy switched from elsewhere."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cbctl.cli import app
from cbctl.proxyctl import RunningProxy, control
from cbctl.standins import QdrantStandin
from tests.servers import free_port

runner = CliRunner()


@pytest.fixture(autouse=True)
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "run"
    monkeypatch.setenv("CBCTL_RUNTIME_DIR", str(directory))
    return directory


@pytest.fixture
def qdrant() -> Iterator[QdrantStandin]:
    with QdrantStandin() as standin:
        yield standin


@pytest.fixture
def running(qdrant: QdrantStandin) -> Iterator[RunningProxy]:
    port = free_port()
    with RunningProxy("qdrant", ("127.0.0.1", port), ("127.0.0.1", qdrant.port), qdrant.url) as p:
        yield p


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def reachable(proxy: RunningProxy, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"http://{proxy.listen}/readyz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def test_fault_switches_a_running_proxy_and_shows_mode_and_contacts(
    running: RunningProxy,
) -> None:
    assert reachable(running)
    code, out, err = run("fault", "qdrant", "down")
    assert (code, err) == (0, "")
    assert "down" in out
    assert not reachable(running)
    code, out, _ = run("fault", "qdrant", "--json")
    status = json.loads(out)
    assert code == 0
    assert (status["mode"], status["accepted"], status["upstream_connections"]) == ("down", 1, 1)
    assert status["pid"] == os.getpid()
    assert "token" not in status
    assert run("fault", "qdrant", "up")[0] == 0
    assert reachable(running)
    assert running.stats().upstream_connections == 2


def test_fault_latency_with_jitter_and_flapping_take_their_values(running: RunningProxy) -> None:
    code, out, _ = run("fault", "qdrant", "latency", "150", "--jitter", "20", "--json")
    assert code == 0
    status = json.loads(out)
    assert (status["mode"], status["latency_ms"], status["jitter_ms"]) == ("latency", 150, 20)
    started = time.perf_counter()
    assert reachable(running)
    assert time.perf_counter() - started >= 0.12
    code, out, _ = run("fault", "qdrant", "flapping", "0.5", "--json")
    assert (json.loads(out)["mode"], json.loads(out)["flap_period_s"]) == ("flapping", 0.5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["latency"], "latency needs the milliseconds"),
        (["flapping"], "flapping needs the seconds"),
        (["down", "3"], "only latency and flapping take a value"),
        (["up", "--jitter", "5"], "--jitter goes with the latency mode"),
        (["latency", "nan"], "latency_ms must be a finite number >= 0"),
        (["latency", "1e308"], "latency_ms must be at most 8.64e+07"),
    ],
)
def test_a_malformed_fault_is_one_line_exit_2_and_changes_nothing(
    running: RunningProxy, args: list[str], message: str
) -> None:
    code, _, err = run("fault", "qdrant", *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert running.stats().mode == "up"


def test_fault_with_no_running_proxy_of_that_name_is_exit_2() -> None:
    code, out, err = run("fault", "postgresql", "down")
    assert code == 2
    assert out == ""
    assert err.strip() == (
        "cbctl: no running cbctl proxy named 'postgresql' (start one with: cbctl proxy "
        "postgresql --listen HOST:PORT)"
    )


def test_a_runtime_file_left_by_a_dead_proxy_counts_as_not_running(
    running: RunningProxy, runtime: Path
) -> None:
    record = runtime / "proxy-qdrant.json"
    data = json.loads(record.read_text())
    data["control_port"] = free_port()
    record.write_text(json.dumps(data))
    assert run("fault", "qdrant")[0] == 2


def test_the_runtime_file_is_private_and_removed_when_the_proxy_closes(
    qdrant: QdrantStandin, runtime: Path
) -> None:
    proxy = RunningProxy("qdrant", ("127.0.0.1", free_port()), ("127.0.0.1", qdrant.port), "x")
    with proxy:
        record = runtime / "proxy-qdrant.json"
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
        assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert not record.exists()
    with pytest.raises(Exception, match="no running cbctl proxy"):
        control("qdrant")


def test_a_second_proxy_of_the_same_name_or_on_a_taken_port_is_refused(
    running: RunningProxy, qdrant: QdrantStandin
) -> None:
    code, _, err = run(
        "proxy", "qdrant", "--listen", f"127.0.0.1:{free_port()}", "--upstream", qdrant.url
    )
    assert code == 2
    assert "a cbctl proxy named 'qdrant' is already running" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(
            "proxy", "other", "--listen", f"127.0.0.1:{port}", "--upstream", qdrant.url
        )
    assert code == 2
    assert err.strip().startswith(f"cbctl: cannot listen on 127.0.0.1:{port}:")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("listen", "upstream", "message"),
    [
        ("localhost", "http://127.0.0.1:1", "--listen must be HOST:PORT"),
        ("127.0.0.1:70000", "http://127.0.0.1:1", "--listen must be HOST:PORT"),
        ("127.0.0.1:9", "tcp://127.0.0.1", "has no port"),
    ],
)
def test_bad_proxy_arguments_are_exit_2(listen: str, upstream: str, message: str) -> None:
    code, _, err = run("proxy", "qdrant", "--listen", listen, "--upstream", upstream)
    assert code == 2
    assert message in err


@pytest.mark.slow
def test_cbctl_proxy_as_a_process_is_switched_from_another_and_stops_on_ctrl_c(
    qdrant: QdrantStandin, runtime: Path
) -> None:
    port = free_port()
    env = {**os.environ, "CBCTL_RUNTIME_DIR": str(runtime)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cbctl",
            "proxy",
            "qdrant",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            qdrant.url,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stderr is not None
        assert f"127.0.0.1:{port} -> 127.0.0.1:{qdrant.port}" in process.stderr.readline()
        url = f"http://127.0.0.1:{port}/readyz"
        assert httpx.get(url, timeout=2).status_code == 200
        switched = subprocess.run(
            [sys.executable, "-m", "cbctl", "fault", "qdrant", "blackhole"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert switched.returncode == 0, switched.stderr
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(url, timeout=0.3)
        status = control("qdrant").status()
        assert (status["mode"], status["accepted"], status["upstream_connections"]) == (
            "blackhole",
            2,
            1,
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
        assert not (runtime / "proxy-qdrant.json").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_an_unwritable_runtime_directory_is_one_line_exit_2_and_frees_the_port(
    qdrant: QdrantStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    monkeypatch.setenv("CBCTL_RUNTIME_DIR", str(blocked / "run"))
    port = free_port()
    code, _, err = run("proxy", "qdrant", "--listen", f"127.0.0.1:{port}", "--upstream", qdrant.url)
    assert code == 2
    assert "cannot write the proxy runtime file" in err
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))
