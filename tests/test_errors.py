"""The exception hierarchy: one tree, drawn where it is defined, causes kept without secrets."""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import cast

import pytest

import cbctl.errors
import cbctl.probes
from cbctl.config import Dependency, load_config
from cbctl.errors import CbctlError, ClientErrorSummary, ConfigError, ProbeError
from cbctl.faults import FaultProxy
from cbctl.httpx import CircuitOpen
from cbctl.probes import check
from cbctl.targets import ProxiedTarget
from tests.servers import free_port


def every_cbctl_error() -> set[type[CbctlError]]:
    found: set[type[CbctlError]] = set()
    pending: list[type[CbctlError]] = [CbctlError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_the_docstring_draws_every_error_class_with_its_exit_code() -> None:
    drawn = dict(re.findall(r"([\w.]+) \[(\d)\]", cbctl.errors.__doc__ or ""))
    for cls in every_cbctl_error():
        if cls.__module__.startswith("tests"):
            continue
        name = cls.__name__ if cls.__module__ == "cbctl.errors" else f"cbctl.httpx.{cls.__name__}"
        assert drawn.get(name) == str(cls.exit_code), name
    assert CircuitOpen in every_cbctl_error()


def test_probe_error_lives_in_errors_and_stays_importable_from_probes() -> None:
    assert cbctl.probes.ProbeError is ProbeError
    assert ProbeError.__module__ == "cbctl.errors"
    assert ProbeError("x").exit_code == 1


def test_a_probe_failure_keeps_the_client_error_as_its_cause_without_the_password() -> None:
    url = f"postgresql://app:se%zzcret@127.0.0.1:{free_port()}/postgres"
    dep = Dependency("postgresql", "postgresql", url, source="flag")
    with pytest.raises(ProbeError) as caught:
        check(dep, 1.0)
    cause = caught.value.__cause__
    assert isinstance(cause, ClientErrorSummary)
    assert str(cause).startswith("psycopg.ProgrammingError: ")
    printed = "".join(traceback.format_exception(caught.value))
    assert "direct cause" in printed
    assert "conninfo.py" in printed  # where psycopg raised it
    assert "zzcret" not in printed


def test_a_config_error_keeps_what_caused_it(tmp_path: Path) -> None:
    path = tmp_path / "cbctl.toml"
    path.write_text("[defaults\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert type(caught.value.__cause__).__name__ == "TOMLDecodeError"


class _Proxy:
    port = 1


def test_a_stopped_dependencys_error_reaches_the_caller_with_its_own_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dep = Dependency("cache", "tcp", "tcp://127.0.0.1:2", source="flag")
    target = ProxiedTarget(dep, cast(FaultProxy, _Proxy()))
    target._stopped = True  # as after the operator's --stop-cmd
    direct = ProbeError("cache unreachable: connection refused")
    direct.__cause__ = ConnectionRefusedError("refused")
    through_proxy = ProbeError("cache unreachable: connection reset")
    through_proxy.__cause__ = ConnectionResetError("reset")
    answers: dict[str, ProbeError | None] = {dep.url: direct, "proxy": through_proxy}

    def check(checked: Dependency, timeout: float | None = None) -> str:
        error = answers[checked.url if checked.url == dep.url else "proxy"]
        if error is None:
            return "ok"
        raise error

    monkeypatch.setattr(cbctl.probes, "check", check)
    with pytest.raises(ProbeError) as caught:
        target.call()
    assert caught.value is direct
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    answers[dep.url] = None  # the dependency answers directly: the proxy's error stands
    with pytest.raises(ProbeError) as caught:
        target.call()
    assert caught.value is through_proxy
    assert isinstance(caught.value.__cause__, ConnectionResetError)


PACKAGE = Path(cbctl.errors.__file__).resolve().parent


def test_no_error_in_the_package_drops_its_cause() -> None:
    """`raise X from None` hides why; --debug must be able to show the whole chain."""
    import ast

    dropped = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and isinstance(node.cause, ast.Constant):
                dropped.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert dropped == []


@pytest.mark.parametrize(
    "args",
    [
        ["--state", "~no-such-user-cbctl/x.db", "status"],
        ["watch", "--once", "--interval", "fast"],
        ["--state", "redis://u:hunter22@[::1/0", "status"],
    ],
)
def test_a_kept_cause_shows_with_debug_only_and_never_a_secret(
    args: list[str], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cbctl.cli import app

    runner = CliRunner()
    plain = runner.invoke(app, args)
    assert plain.exit_code == 2
    assert plain.stderr.count("\n") == 1, plain.stderr
    assert "Traceback" not in plain.stderr
    assert "cause" not in plain.stderr
    debug = runner.invoke(app, ["--debug", *args])
    assert debug.exit_code == 2
    assert "The above exception was the direct cause of the following exception" in debug.stderr
    assert "hunter22" not in plain.stderr + debug.stderr
