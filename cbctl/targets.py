"""Real scenario targets: a dependency reached through the fault proxy, probed by its own client.

`ProxiedTarget` is what `cbctl simulate` hands to `cbctl.scenarios`: every call is the same probe
`cbctl probe` runs, sent to the proxy instead of the dependency, so the proxy can take the
dependency down (or the operator's stop/start commands really stop it) and count each connection.
`prepare_target` also decides when a built-in loopback stand-in replaces an address nobody chose.
"""

from __future__ import annotations

import contextlib
import importlib
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from cbctl import probes
from cbctl.config import Dependency
from cbctl.errors import DependencyError, UsageError
from cbctl.faults import FaultProxy, Mode
from cbctl.limits import seconds
from cbctl.scenarios import Event, FlappingReport, Journal, run_flapping, run_outage
from cbctl.standins import HttpStandin, LlamaCppStandin, standin_for
from cbctl.state import BreakerConfig

__all__ = [
    "DirectTarget",
    "ProxiedTarget",
    "StandinTarget",
    "answers",
    "prepare_target",
    "retarget",
    "simulate_flapping",
    "simulate_outage",
]

LOOPBACK = "127.0.0.1"
COMMAND_TIMEOUT = 120.0
"""How long a --stop-cmd/--start-cmd may run (podman stop waits 10 s by default)."""
STOP_GRACE = 10.0
"""How long the dependency may go on answering after --stop-cmd returned."""


def retarget(url: str, host: str, port: int) -> str:
    """`url` pointed at host:port, keeping scheme, user, password, path and query."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}:{port}"))


def _host_port(dep: Dependency) -> tuple[str, int]:
    host, _, port = dep.address.rpartition(":")
    return host.strip("[]"), int(port)


def answers(dep: Dependency, timeout: float = 0.5) -> bool:
    """Whether anything accepts a TCP connection at the dependency's address."""
    try:
        with socket.create_connection(_host_port(dep), timeout=timeout):
            return True
    except OSError:
        return False


def _check_paired(stop_cmd: str | None, start_cmd: str | None) -> None:
    if (stop_cmd is None) != (start_cmd is None):
        raise UsageError("--stop-cmd and --start-cmd go together: give both or neither")


def _run(command: str, what: str) -> None:
    """Run an operator's stop/start command; its failure is the dependency's failure (exit 1)."""
    try:
        done = subprocess.run(  # noqa: S603 - the operator's own command, no shell
            shlex.split(command),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as error:
        raise UsageError(f"{what}: command not found: {shlex.split(command)[0]!r}") from error
    except subprocess.TimeoutExpired as error:
        raise DependencyError(
            f"{what} {command!r} did not finish in {COMMAND_TIMEOUT:g}s"
        ) from error
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise DependencyError(
            f"{what} {command!r} exited {done.returncode}" + (f": {said[-1]}" if said else "")
        )


class ProxiedTarget:
    """A dependency behind a `FaultProxy`; down/up by proxy mode, or by the operator's commands."""

    def __init__(
        self,
        dep: Dependency,
        proxy: FaultProxy,
        *,
        mode: Mode = Mode.DOWN,
        flap_period: float = 1.0,
        stop_cmd: str | None = None,
        start_cmd: str | None = None,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        _check_paired(stop_cmd, start_cmd)
        self._dep = dep
        self._via_proxy = dep.with_url(retarget(dep.url, LOOPBACK, proxy.port), dep.source)
        # The client library loads now, so its import is not timed as the dependency's latency.
        importlib.import_module(f"cbctl.probes.{probes.MODULES[dep.kind]}")
        self._proxy = proxy
        self._mode = mode
        self._flap_period = flap_period
        self._stop_cmd = stop_cmd
        self._start_cmd = start_cmd
        self._sleep = sleep
        self._stopped = False

    @property
    def name(self) -> str:
        return self._dep.name

    @property
    def address(self) -> str:
        return self._dep.display_url

    def call(self) -> str:
        try:
            return probes.check(self._via_proxy)
        except DependencyError:
            if not self._stopped:
                raise
            # Stopped by the operator's command, the dependency fails behind the proxy, and the
            # client only sees the proxy hang up: ask the dependency itself what is wrong.
            try:
                probes.check(self._dep)
            except DependencyError:
                raise  # the dependency's own error, with its own (scrubbed) cause
            raise

    def take_down(self) -> None:
        if self._stop_cmd is not None:
            _run(self._stop_cmd, "--stop-cmd")
            self._stopped = True
            self._wait_until_down()
        elif self._mode is Mode.FLAPPING:
            self._proxy.set_flapping(self._flap_period)
        else:
            self._proxy.set_mode(self._mode)

    def bring_back(self) -> None:
        if self._start_cmd is None:
            self._proxy.set_mode(Mode.UP)
            return
        _run(self._start_cmd, "--start-cmd")
        self._stopped = False
        self._wait_until_answering()

    def _wait_until_down(self) -> None:
        """A stop command may return before the service has stopped (or stop nothing at all):
        the outage starts only once the dependency itself no longer answers."""
        limit = STOP_GRACE
        deadline = time.monotonic() + limit
        while True:
            try:
                probes.check(self._dep)
            except DependencyError:
                return
            if time.monotonic() > deadline:
                raise DependencyError(
                    f"the stop command returned but the dependency still answers at "
                    f"{self._dep.address} (checked for {limit:g}s)"
                )
            self._sleep(0.2)

    def _wait_until_answering(self, limit: float = 60.0) -> None:
        """After --start-cmd the service needs a moment: wait for it directly, not via the proxy."""
        deadline = time.monotonic() + limit
        while True:
            try:
                probes.check(self._dep)
                return
            except DependencyError:
                if time.monotonic() > deadline:
                    raise
                self._sleep(0.2)

    def contacts(self) -> int:
        """Connections that reached the proxy on their way to the dependency."""
        return self._proxy.stats().accepted


class DirectTarget:
    """A dependency probed directly (no proxy): the healthy bystander of the no-cascade check."""

    def __init__(self, dep: Dependency, standin: HttpStandin | None = None) -> None:
        self._dep = dep
        self._standin = standin
        self._calls = 0

    @property
    def name(self) -> str:
        return self._dep.name

    @property
    def address(self) -> str:
        return self._dep.display_url

    def call(self) -> str:
        self._calls += 1
        return probes.check(self._dep)

    def take_down(self) -> None:
        raise UsageError(f"{self.name} is the healthy bystander; it is never taken down")

    bring_back = take_down

    def contacts(self) -> int:
        """Requests the stand-in served, or the probes made when it is not a stand-in."""
        return self._standin.requests_served if self._standin is not None else self._calls


@dataclass(frozen=True)
class StandinTarget:
    """What `prepare_target` decided: the dependency to use and, if any, why a stand-in is in."""

    dependency: Dependency
    note: str | None


@contextlib.contextmanager
def prepare_target(dep: Dependency, *, standin_allowed: bool = True) -> Iterator[StandinTarget]:
    """The dependency as given, or a built-in stand-in when its address is only a built-in default
    and nothing answers there. An address the user gave is never replaced, and neither is one
    the operator's --stop-cmd/--start-cmd act on (they would stop the real service, not ours).
    """
    if not standin_allowed or dep.source != "builtin" or answers(dep):
        yield StandinTarget(dep, None)
        return
    try:
        standin: HttpStandin = standin_for(dep.kind)
    except UsageError:
        yield StandinTarget(dep, None)
        return
    with standin:
        note = (
            f"nothing answers at {dep.address} (built-in default for {dep.name}); "
            f"using a built-in {dep.kind} stand-in at {standin.url}"
        )
        yield StandinTarget(dep.with_url(standin.url, "builtin"), note)


def simulate_outage(
    dep: Dependency,
    settings: BreakerConfig,
    *,
    mode: Mode = Mode.DOWN,
    stop_cmd: str | None = None,
    start_cmd: str | None = None,
    expect: BreakerConfig | None = None,
    on_event: Callable[[Event], object] | None = None,
    on_notice: Callable[[str], object] | None = None,
) -> Journal:
    """`cbctl simulate outage`: the dependency (or its stand-in) behind a fault proxy, a healthy
    llama.cpp stand-in as the bystander, and the scenario; everything is closed afterwards.

    `expect` (default: `settings`) is what the checks hold the breaker to; see `run_outage`.
    """
    _check_paired(stop_cmd, start_cmd)
    stack = contextlib.ExitStack()
    try:
        prepared, proxy = _behind_proxy(stack, dep, on_notice, standin_allowed=stop_cmd is None)
        target = ProxiedTarget(
            prepared.dependency, proxy, mode=mode, stop_cmd=stop_cmd, start_cmd=start_cmd
        )
        bystander_standin = stack.enter_context(LlamaCppStandin())
        bystander = DirectTarget(
            Dependency("bystander", "llamacpp", bystander_standin.url, dep.call_timeout),
            bystander_standin,
        )
        notes = (prepared.note,) if prepared.note else ()
        return run_outage(
            target, bystander, settings, expect=expect, on_event=on_event, notes=notes
        )
    finally:
        stack.close()


def simulate_flapping(
    dep: Dependency,
    settings: BreakerConfig,
    *,
    period: float,
    calls: int,
    interval: float,
    on_notice: Callable[[str], object] | None = None,
) -> FlappingReport:
    """`cbctl simulate flapping`: the dependency (or its stand-in) behind a proxy that goes down
    and up every `period` seconds; the same calls with and without a breaker, counted by the proxy.

    The dependency must answer first (else DependencyError): a flapping run against something
    that never answers would compare nothing.
    """
    if calls < 1:
        raise UsageError(f"--calls must be at least 1, got {calls}")
    seconds(period, "--period", error=UsageError)
    seconds(interval, "--interval", zero_ok=True, error=UsageError)
    stack = contextlib.ExitStack()
    try:
        prepared, proxy = _behind_proxy(stack, dep, on_notice, standin_allowed=True)
        target = ProxiedTarget(prepared.dependency, proxy, mode=Mode.FLAPPING, flap_period=period)
        try:
            target.call()
        except DependencyError as error:
            raise DependencyError(
                f"{dep.name} did not answer before flapping started: {error}"
            ) from error
        return run_flapping(
            target,
            settings,
            calls=calls,
            interval=interval,
            notes=(prepared.note,) if prepared.note else (),
            conditions={"period_s": period},
        )
    finally:
        stack.close()


def _behind_proxy(
    stack: contextlib.ExitStack,
    dep: Dependency,
    on_notice: Callable[[str], object] | None,
    *,
    standin_allowed: bool,
) -> tuple[StandinTarget, FaultProxy]:
    """The dependency (or its stand-in, said through `on_notice`) and a fault proxy in front of
    it, both closed with `stack`."""
    prepared = stack.enter_context(prepare_target(dep, standin_allowed=standin_allowed))
    if prepared.note and on_notice is not None:
        on_notice(prepared.note)
    host, port = _host_port(prepared.dependency)
    return prepared, stack.enter_context(FaultProxy(host, port))
