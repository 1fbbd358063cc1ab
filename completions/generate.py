"""Regenerate the committed shell completion scripts from the app (after adding a command):

    .venv/bin/python completions/generate.py           # writes cbctl.bash, cbctl.zsh, cbctl.fish
    .venv/bin/python completions/generate.py --check   # exit 1 if a committed script is stale

Each script comes from the app itself (`_CBCTL_COMPLETE=source_<shell> cbctl`, Typer's completion
protocol) and asks `cbctl` for candidates at completion time, so commands and options added
later complete without reinstalling the script. Surrounding blank lines are trimmed so that
zsh finds `#compdef` on the first line when the file is installed as `_cbctl` in $fpath.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHELLS = ("bash", "zsh", "fish")


def generate(shell: str) -> str:
    """The completion script the app produces now for `shell`."""
    result = subprocess.run(
        [sys.executable, "-c", "from cbctl.cli import app; app(prog_name='cbctl')"],
        env={**os.environ, "_CBCTL_COMPLETE": f"source_{shell}"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip() + "\n"


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for shell in SHELLS:
        path = HERE / f"cbctl.{shell}"
        script = generate(shell)
        if check:
            if not path.is_file() or path.read_text() != script:
                stale.append(path.name)
        else:
            path.write_text(script)
    if stale:
        print(f"stale: {', '.join(stale)}; run: python completions/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
