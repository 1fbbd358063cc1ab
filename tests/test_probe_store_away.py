"""`cbctl probe --count N` while the shared state is away: the breaker still protects.

One breaker per dependency for the whole run, so the failures counted in-process while the
store does not answer open the circuit, and the warning names the first cause once.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from typer.testing import CliRunner

from cbctl.cli import app

runner = CliRunner()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_probe_count_opens_the_circuit_in_process_when_redis_is_away(tmp_path: Path) -> None:
    config = tmp_path / "cbctl.toml"
    config.write_text(
        "[dependencies.t]\nkind = 'tcp'\n"
        f"url = 'tcp://127.0.0.1:{_closed_port()}'\nfailure_threshold = 3\n"
    )
    state = f"redis://127.0.0.1:{_closed_port()}/0"
    args = ["--state", state, "--config", str(config), "probe", "t", "--count", "5"]
    result = runner.invoke(app, [*args, "--interval", "0", "--json"])
    attempts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [each["outcome"] for each in attempts] == ["failure"] * 3 + ["rejected"] * 2
    assert [each["failure_count"] for each in attempts[:3]] == [1, 2, 3]
    assert attempts[-1]["state"] == "open"
    assert result.exit_code == 3
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert "is unavailable: " in warnings[0]
    assert "Connection refused" in warnings[0] or "ConnectionError" in warnings[0]
    assert "outcome kept in this process only" in warnings[0]
