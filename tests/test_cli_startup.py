"""Start-up cost guards: what `import cbctl.cli` must not pull in (client libraries load lazily).

Every cbctl command, `--help` and a probe rejected by an open circuit pay for whatever the CLI
imports at start-up; these modules are only needed by the commands that use them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from cbctl import serving
from cbctl.cli import serve

NOT_AT_START_UP = (
    "cbctl.fleet",
    "cbctl.health",
    "cbctl.metrics",
    "cbctl.scenarios",
    "cbctl.serving",
    "http.server",
    "httpx",
    "prometheus_client",
    "psycopg",
    "qdrant_client",
    "redis",
)


@pytest.mark.slow
def test_importing_the_cli_loads_no_server_scenario_or_client_module() -> None:
    code = (
        "import sys, cbctl.cli, cbctl.render\n"
        f"print(sorted(set({NOT_AT_START_UP!r}) & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_serve_defaults_are_the_health_servers() -> None:
    assert (serve.DEFAULT_HOST, serve.DEFAULT_PORT) == (serving.DEFAULT_HOST, serving.DEFAULT_PORT)
