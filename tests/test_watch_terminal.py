"""`cbctl watch` in a real terminal (tmux): redraws in place, follows changes, Ctrl-C exits 0."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cbctl import CircuitBreakerRegistry
from cbctl.stores import open_store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)"),
]


class Tmux:
    """One detached tmux session on a private server socket, killed afterwards."""

    def __init__(self, socket_name: str) -> None:
        self.socket_name = socket_name

    def run(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket_name, *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout

    def screen(self) -> str:
        """The visible screen and all the scrollback of the session's pane."""
        return self.run("capture-pane", "-p", "-S", "-", "-t", "watch")

    def wait_for(self, condition: Callable[[str], bool], what: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if condition(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"terminal never showed {what}; it shows:\n{self.screen()}")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    session = Tmux(f"cbctl-test-{os.getpid()}")
    try:
        yield session
    finally:
        subprocess.run(["tmux", "-L", session.socket_name, "kill-server"], capture_output=True)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[CircuitBreakerRegistry]:
    """Breakers writing to tmp_path/circuits.db, the state the watch shows."""
    store = open_store(str(tmp_path / "circuits.db"))
    try:
        yield CircuitBreakerRegistry(default_config={"failure_threshold": 1}, store=store)
    finally:
        store.close()


def test_watch_redraws_in_place_and_exits_cleanly_on_ctrl_c(
    tmux: Tmux, tmp_path: Path, registry: CircuitBreakerRegistry
) -> None:
    registry.get("qdrant").call(lambda: None)
    registry.get("redis").call(lambda: None)
    command = (
        # the terminal's own size, not COLUMNS/LINES inherited from whoever started tmux
        f"env -u COLUMNS -u LINES {sys.executable} -c 'from cbctl.cli import main; main()' "
        "--state circuits.db watch --interval 0.2; echo EXIT=$?"
    )
    tmux.run(
        "new-session", "-d", "-s", "watch", "-x", "200", "-y", "40", "-c", str(tmp_path), "sh"
    )  # fmt: skip
    size = "#{pane_width}x#{pane_height}"
    tmux.wait_for(lambda _: tmux.run("display", "-p", "-t", "watch", size) == "200x40\n", size)
    tmux.run("send-keys", "-t", "watch", "-l", command)
    tmux.run("send-keys", "-t", "watch", "Enter")
    tmux.wait_for(lambda screen: "2 circuits, 2 closed" in screen, "the first table")

    with pytest.raises(ConnectionError):
        registry.get("redis").call(_refused)
    tmux.wait_for(lambda screen: "1 closed, 1 open" in screen, "the circuit opening")
    time.sleep(1)  # five more refreshes
    screen = tmux.screen()
    assert screen.count("circuit ") == 1, "the table was printed again instead of redrawn"
    assert screen.count("qdrant") == 1

    tmux.run("send-keys", "-t", "watch", "C-c")
    screen = tmux.wait_for(
        lambda screen: any(line.startswith("EXIT=") for line in screen.splitlines()),
        "the watch ending",
    )
    assert "\nEXIT=0\n" in screen
    assert "Traceback" not in screen
    assert "KeyboardInterrupt" not in screen


def _refused() -> None:
    raise ConnectionError("refused")
