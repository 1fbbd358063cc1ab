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
