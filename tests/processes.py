"""Starting and stopping the test-owned service processes (uvicorn apps, the example service)."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_until_answering(
    process: subprocess.Popen[str], url: str, what: str, within: float = 30.0
) -> None:
    """Poll `url` until it answers 200; fail with the process's stderr if it exits first."""
    deadline = time.monotonic() + within
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, f"{what} did not start within {within:g} s"
        time.sleep(0.05)


def stop(process: subprocess.Popen[str]) -> None:
    """Terminate, then kill after 10 s: a test never leaves a server behind."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
