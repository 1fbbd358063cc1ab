"""Health probes, one module per dependency kind, behind one dispatcher.

Contract of every probe module: `check(dep, timeout) -> str` returns a short description of the
healthy answer ("PONG", "SELECT 1 ok", "200 ok") or raises `ProbeError` (a DependencyError)
with a one-line, password-free message. A module may also have `set_up(dep)`, which builds what
is reused across probes (an HTTP client) before the latency clock starts. Each module bounds
its client with connect and read timeouts; the dispatcher adds a deadline around the whole
call, because some waits cannot be bounded from inside a client (name resolution,
psycopg's 2-second minimum connect timeout).

The kind's module — and with it the client library — is imported only when a probe runs, so
a probe rejected by an open circuit never pays for httpx, redis or psycopg.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, Protocol, cast

from cbctl.errors import CbctlError, ClientErrorSummary, ProbeError, ProbeReason, UsageError
from cbctl.limits import seconds as seconds_in_range

if TYPE_CHECKING:
    from cbctl.config import Dependency

__all__ = [
    "MODULES",
    "Deadline",
    "ProbeError",
    "Reason",
    "cause",
    "check",
    "refused",
    "scrub",
    "seconds",
    "secrets_of",
    "timed_out",
]

Reason = ProbeReason

MODULES: Final = {
    "qdrant": "qdrant",
    "postgresql": "postgres",
    "redis": "redis",
    "llamacpp": "llamacpp",
    "http": "http",
    "tcp": "tcp",
}


class _ProbeModule(Protocol):
    def check(self, dep: Dependency, timeout: float) -> str: ...


def seconds(value: float) -> str:
    """`2.0s`, `0.25s`: a duration as people write it in messages."""
    return f"{value:.1f}s" if round(value, 1) == value else f"{value:g}s"


def timed_out(timeout: float, dep: Dependency) -> ProbeError:
    return ProbeError(f"timed out after {seconds(timeout)} at {dep.address}", "timeout")


def refused(dep: Dependency) -> ProbeError:
    return ProbeError(f"connection refused at {dep.address}", "refused")


class Deadline:
    """The time left for one probe, so that its steps share a single budget."""

    __slots__ = ("_end", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._end = time.monotonic() + timeout

    def remaining(self, dep: Dependency) -> float:
        """Seconds left; a timeout ProbeError once none are."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise timed_out(self.timeout, dep)
        return left


def secrets_of(dep: Dependency) -> list[str]:
    """Every secret a message about `dep` must not show: the URL's password, the API key."""
    from cbctl.redaction import url_secrets

    found = [*url_secrets(dep.url), dep.api_key]
    return [secret for secret in found if secret]


MAX_MESSAGE_CHARS: Final = 300


def scrub(message: str, secrets: Iterable[str]) -> str:
    """One line, every secret replaced by `***` (client messages may echo connection strings
    or reflect an api-key), then cut to MAX_MESSAGE_CHARS — in that order, so that a secret cut
    in half is never shown."""
    from cbctl.redaction import scrub as scrub_secrets

    line = " ".join(scrub_secrets(message, secrets).split())
    if len(line) > MAX_MESSAGE_CHARS:
        line = line[: MAX_MESSAGE_CHARS - 3] + "..."
    return line


def cause(error: BaseException, dep: Dependency) -> ClientErrorSummary:
    """What a ProbeError is raised `from`: the client's error, kept for `--debug`, scrubbed."""
    return ClientErrorSummary(error, scrub(str(error) or "no message", secrets_of(dep)))


def check(dep: Dependency, timeout: float | None = None) -> str:
    """Probe `dep` once, within `timeout` seconds (default: its call_timeout).

    Returns the healthy answer's description; raises ProbeError (DependencyError) otherwise.
    The client library is imported before the clock starts, so a cold import does not count
    against the dependency.
    """
    limit = seconds_in_range(
        dep.call_timeout if timeout is None else timeout, "call timeout", error=UsageError
    )
    try:
        module_name = MODULES[dep.kind]
    except KeyError as error:
        raise UsageError(f"no probe for kind {dep.kind!r} (known: {', '.join(MODULES)})") from error
    module = cast(_ProbeModule, importlib.import_module(f"cbctl.probes.{module_name}"))
    return _within(lambda: module.check(dep, limit), limit, dep)


_GRACE: Final = 0.05


def _within(probe: Callable[[], str], timeout: float, dep: Dependency) -> str:
    """Run `probe` on a daemon thread and give up at the deadline.

    The probe's own client timeouts end the thread shortly after; a daemon thread never holds
    up the interpreter's exit.
    """
    outcome: list[str | BaseException] = []
    finished = threading.Event()

    def run() -> None:
        try:
            outcome.append(probe())
        except BaseException as error:  # handed to the caller's thread below
            outcome.append(error)
        finally:
            finished.set()

    worker = threading.Thread(target=run, name=f"cbctl-probe-{dep.name}", daemon=True)
    worker.start()
    if not finished.wait(timeout + _GRACE):
        raise timed_out(timeout, dep)
    result = outcome[0]
    if isinstance(result, BaseException):
        if isinstance(result, CbctlError):
            raise result
        message = scrub(f"{type(result).__name__}: {result}", secrets_of(dep))
        raise ProbeError(f"probe failed: {message}", "unhealthy") from cause(result, dep)
    return result
