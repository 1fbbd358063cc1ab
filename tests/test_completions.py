"""The committed shell completions are what the app generates now, and they complete commands."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

COMPLETIONS = Path(__file__).resolve().parent.parent / "completions"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", COMPLETIONS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_committed_completion_matches_what_the_app_generates(shell: str) -> None:
    committed = (COMPLETIONS / f"cbctl.{shell}").read_text()
    assert committed == _generator().generate(shell), (
        f"completions/cbctl.{shell} is stale: run .venv/bin/python completions/generate.py"
    )


def test_the_zsh_script_starts_with_compdef_for_fpath_installs() -> None:
    assert (COMPLETIONS / "cbctl.zsh").read_text().startswith("#compdef cbctl\n")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    ("words", "expected"),
    [("cbctl wa", {"watch"}), ("cbctl watch --", {"--interval", "--url", "--once", "--help"})],
)
def test_the_bash_completion_completes_commands_and_options(words: str, expected: set[str]) -> None:
    script = (
        f"source {COMPLETIONS / 'cbctl.bash'}; COMP_WORDS=({words}); "
        f"COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); _cbctl_completion cbctl; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    bin_dir = str(Path(sys.executable).parent)
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    assert expected <= set(result.stdout.split()), result.stdout


def _bash_complete(words: str, env: dict[str, str] | None = None) -> list[str]:
    script = (
        f"source {COMPLETIONS / 'cbctl.bash'}; COMP_WORDS=({words}); "
        f"COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); _cbctl_completion cbctl; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    bin_dir = str(Path(sys.executable).parent)
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "CBCTL_CONFIG": "",
            **(env or {}),
        },
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_dependency_names_from_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "cbctl.toml"
    config.write_text(
        "[dependencies.search]\nkind = 'tcp'\nurl = 'tcp://h:7700'\n"
        "[dependencies.sessions]\nkind = 'redis'\nurl = 'redis://h:6379/0'\n"
    )
    assert _bash_complete(f"cbctl --config {config} probe se") == ["search", "sessions"]
    assert _bash_complete(f"cbctl --config {config} simulate outage s") == ["search", "sessions"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_circuit_names_from_the_state_then_the_configuration(
    tmp_path: Path,
) -> None:
    from cbctl import CircuitBreakerRegistry
    from cbctl.stores import open_store

    state = tmp_path / "circuits.db"
    store = open_store(str(state))
    CircuitBreakerRegistry(store=store).get("retired-index").call(lambda: None)
    store.close()
    names = _bash_complete(f"cbctl --state {state} reset ''", {"HOME": str(tmp_path)})
    assert names == ["retired-index", "llamacpp", "postgresql", "qdrant", "redis"]
    assert _bash_complete(f"cbctl --state {state} forget re") == ["retired-index", "redis"]
    assert _bash_complete(f"cbctl --state {state} status q") == ["qdrant"]
