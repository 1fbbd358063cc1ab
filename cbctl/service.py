"""Service verification: the outage scenario against the breakers inside a running service.

`cbctl simulate outage NAME` proves cbctl's own probe breaker; this proves the user's. The
service is driven the way an operator would (`curl -X POST .../learning/process`), its
dependency NAME is taken down through its running `cbctl proxy` (or the operator's
`--stop-cmd/--start-cmd`), and what its breaker did is read from its own health endpoint:
`/health` for its settings and state, `/events` (the transition journal) for what happened.

Five checks, each with the figure it measured: steady state, outage (opens after exactly its
own failure_threshold failures, read from the journal), fail fast (latency p50/p99 of the
driven request before the breaker opened and after; the proxy sees no new connection),
recovery (after its own recovery timeout: half_open -> closed) and no cascade. Everything the
run changed is put back on any exit. Nothing here prints; progress goes to `on_event`.

While the circuit is open the proxy blackholes instead of refusing: a refused connection never
reaches the proxy, a blackholed one is counted (and still fails), so a service that calls its
dependency despite the open circuit shows up as new connections.
"""

from __future__ import annotations

import math
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from cbctl.errors import DependencyError, UnknownCircuitError, UsageError
from cbctl.journal import TransitionEvent
from cbctl.scenarios import Check, Event, Journal, Transition
from cbctl.state import BreakerConfig, CircuitState

if TYPE_CHECKING:
    import httpx

    from cbctl.proxyctl import ProxyControl

__all__ = [
    "CommandDriver",
    "CommandOutage",
    "HttpDriver",
    "Outage",
    "Outcome",
    "ProxyOutage",
    "Service",
    "parse_request",
    "percentile",
    "prepare",
    "run_service_outage",
]

OPEN = CircuitState.OPEN
CLOSED = CircuitState.CLOSED
HALF_OPEN = CircuitState.HALF_OPEN

STEADY_DRIVES = 5
"""Requests driven before the outage: the latency baseline, and proof that the request works."""
FAST_DRIVES = 10
"""Requests driven while the circuit is open, to measure failing fast."""
DRIVE_TIMEOUT = 60.0
"""How long one driven request may take (the specification's 30 s call timeout fits)."""


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (p50: fraction 0.5); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One driven request: answered successfully or not, its status, latency and a summary."""

    ok: bool
    status: int | None
    latency_s: float
    detail: str

    @property
    def unrelated_failure(self) -> bool:
        """A failure that says the request itself is wrong (4xx), not that a dependency is down."""
        return self.status is not None and 400 <= self.status < 500


class Driver(Protocol):
    @property
    def label(self) -> str: ...

    def drive(self) -> Outcome: ...


def parse_request(
    text: str, headers: tuple[str, ...] = ()
) -> tuple[str, str, bytes, dict[str, str]]:
    """`METHOD URL [BODY]` (+ `Name: value` headers) -> (method, url, body, headers)."""
    method, _, rest = text.strip().partition(" ")
    url, _, body = rest.strip().partition(" ")
    parts = urlsplit(url)
    if not method.isalpha() or parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"a request must be 'METHOD URL [BODY]' with an http(s) URL, got {text[:120]!r}"
        )
    parsed: dict[str, str] = {}
    for header in headers:
        key, colon, value = header.partition(":")
        if not colon or not key.strip():
            raise UsageError(f"a header must be 'Name: value', got {header[:80]!r}")
        parsed[key.strip()] = value.strip()
    if body.strip().startswith(("{", "[")) and not any(k.lower() == "content-type" for k in parsed):
        parsed["Content-Type"] = "application/json"
    return method.upper(), url, body.strip().encode(), parsed


class HttpDriver:
    """Sends one HTTP request per drive; success is a 2xx/3xx answer."""

    def __init__(
        self,
        request: str,
        headers: tuple[str, ...] = (),
        *,
        timeout: float = DRIVE_TIMEOUT,
        client: httpx.Client | None = None,
    ) -> None:
        import httpx

        self.method, self.url, self._body, self._headers = parse_request(request, headers)
        self._client = client or httpx.Client(timeout=timeout, trust_env=False)
        self._owned = client is None

    @property
    def label(self) -> str:
        return f"{self.method} {_safe(self.url)}"

    def drive(self) -> Outcome:
        import httpx

        started = time.perf_counter()
        try:
            answer = self._client.request(
                self.method, self.url, content=self._body or None, headers=self._headers
            )
        except httpx.HTTPError as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            return Outcome(False, None, time.perf_counter() - started, reason)
        elapsed = time.perf_counter() - started
        summary = answer.text.strip().replace("\n", " ")[:120]
        return Outcome(answer.status_code < 400, answer.status_code, elapsed, summary)

    def close(self) -> None:
        if self._owned:
            self._client.close()


class CommandDriver:
    """Runs the operator's command per drive (`--drive-cmd`); success is exit status 0."""

    def __init__(self, command: str, *, timeout: float = DRIVE_TIMEOUT) -> None:
        self._argv = shlex.split(command)
        if not self._argv:
            raise UsageError("--drive-cmd is empty")
        self._command = command
        self._timeout = timeout

    @property
    def label(self) -> str:
        return self._command

    def drive(self) -> Outcome:
        started = time.perf_counter()
        try:
            done = subprocess.run(  # noqa: S603 - the operator's own command, no shell
                self._argv, capture_output=True, text=True, timeout=self._timeout, check=False
            )
        except FileNotFoundError as error:
            raise UsageError(f"--drive-cmd: command not found: {self._argv[0]!r}") from error
        except subprocess.TimeoutExpired:
            return Outcome(False, None, time.perf_counter() - started, "timed out")
        said = (done.stdout or done.stderr).strip().splitlines()
        return Outcome(
            done.returncode == 0,
            None,
            time.perf_counter() - started,
            f"exit {done.returncode}" + (f": {said[-1][:100]}" if said else ""),
        )

    def close(self) -> None:
        """Nothing to release."""


def _safe(url: str) -> str:
    from cbctl.config import redact_url

    return redact_url(url)


class Outage(Protocol):
    """How the dependency is taken down and brought back, and (if measurable) contacts."""

    @property
    def label(self) -> str: ...

    def take_down(self) -> None: ...

    def bring_back(self) -> None: ...

    def count_contacts(self) -> None:
        """From now on, make every connection attempt countable (still failing)."""
        ...

    def contacts(self) -> int | None: ...


class ProxyOutage:
    """Through the running `cbctl proxy NAME`: mode down (or blackhole), then up."""

    def __init__(self, handle: ProxyControl, mode: str = "down") -> None:
        self._handle = handle
        self._mode = mode
        status = handle.status()
        if status.get("mode") != "up":
            raise UsageError(
                f"the cbctl proxy {handle.record.name!r} is in mode {status.get('mode')!r}; "
                f"switch it up first (cbctl fault {handle.record.name} up)"
            )

    @property
    def label(self) -> str:
        record = self._handle.record
        return f"cbctl proxy {record.name} at {record.listen} (mode {self._mode})"

    def take_down(self) -> None:
        self._handle.set_fault(self._mode)

    def bring_back(self) -> None:
        self._handle.set_fault("up")

    def count_contacts(self) -> None:
        """A refused connection never reaches the proxy's counters; a blackholed one does (and
        still fails), so while the circuit is open the proxy blackholes."""
        if self._mode != "blackhole":
            self._handle.set_fault("blackhole")

    def contacts(self) -> int | None:
        accepted = self._handle.status().get("accepted")
        return accepted if isinstance(accepted, int) else None


class CommandOutage:
    """The operator's `--stop-cmd` / `--start-cmd`; contacts cannot be counted."""

    def __init__(self, stop_cmd: str, start_cmd: str) -> None:
        self._stop, self._start = stop_cmd, start_cmd

    @property
    def label(self) -> str:
        return f"--stop-cmd {self._stop!r}"

    def take_down(self) -> None:
        from cbctl.targets import _run

        _run(self._stop, "--stop-cmd")

    def bring_back(self) -> None:
        from cbctl.targets import _run

        _run(self._start, "--start-cmd")

    def count_contacts(self) -> None:
        """A stopped process cannot count who knocked."""

    def contacts(self) -> int | None:
        return None


class Service:
    """A running service's mounted cbctl health endpoint: its circuits and its journal."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        import httpx

        from cbctl.fleet import health_url

        self.url = health_url(url)
        self._client = httpx.Client(timeout=timeout, trust_env=False)

    def circuits(self) -> dict[str, dict[str, Any]]:
        from cbctl.fleet import fetch_health

        return {stats["name"]: stats for stats in fetch_health(self.url, client=self._client)}

    def events(self, since: int | None) -> tuple[list[TransitionEvent], int | None]:
        from cbctl.feed import fetch_events

        return fetch_events(self.url, since, client=self._client)

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True, slots=True)
class Prepared:
    """What was checked before anything was changed: the circuit's settings and the cursor."""

    settings: BreakerConfig
    cursor: int | None
    others: tuple[str, ...]


def prepare(service: Service, name: str) -> Prepared:
    """The service answers as a cbctl health endpoint with a journal and has circuit `name`;
    UsageError (exit 2) otherwise, before anything is changed."""
    try:
        circuits = service.circuits()
        _, cursor = service.events(None)
    except DependencyError as error:
        raise UsageError(f"--service: {error}") from error
    if name not in circuits:
        raise UnknownCircuitError(name, circuits)
    stats = circuits[name]
    try:
        settings = BreakerConfig(
            failure_threshold=int(stats["failure_threshold"]),
            timeout=float(stats["timeout"]),
            success_threshold=int(stats.get("success_threshold", 2)),
            half_open_max_calls=int(stats.get("half_open_max_calls", 1)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(
            f"--service: circuit {name!r} does not report its breaker settings ({error})"
        ) from error
    others = tuple(sorted(other for other in circuits if other != name))
    return Prepared(settings, cursor, others)


@dataclass
class _Run:
    clock: Callable[[], float]
    wall: Callable[[], float]
    on_event: Callable[[Event], object] | None
    started: float = 0.0
    started_wall: float = 0.0
    checks: list[Check] = field(default_factory=list)
    measurements: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started, self.started_wall = self.clock(), self.wall()

    def event(self, phase: str, message: str, state: CircuitState | None = None) -> None:
        if self.on_event is not None:
            self.on_event(Event(self.clock() - self.started, phase, message, state))

    def check(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(name, passed, detail))
        self.event(name, ("passed: " if passed else "FAILED: ") + detail)
        return passed


def _ms(seconds: list[float]) -> tuple[float, float]:
    return percentile(seconds, 0.5) * 1000, percentile(seconds, 0.99) * 1000


def _figures(label: str, seconds: list[float]) -> str:
    p50, p99 = _ms(seconds)
    if not seconds:
        return f"{label}: none"
    return f"{label} p50 {p50:.1f} ms / p99 {p99:.1f} ms"


def run_service_outage(
    service: Service,
    name: str,
    drive: Driver,
    outage: Outage,
    *,
    bystander: Driver | None = None,
    expect: BreakerConfig | None = None,
    prepared: Prepared | None = None,
    sleep: Callable[[float], object] = time.sleep,
    on_event: Callable[[Event], object] | None = None,
    notes: tuple[str, ...] = (),
) -> Journal:
    """Verify circuit `name` of the running service; see the module docstring.

    Bad input (UsageError, exit 2) is found before the dependency is touched: a service that
    is not a cbctl health endpoint, an unknown circuit, a driven request that fails with a 4xx
    (or cannot reach the service) before the outage. `expect` (default: the service's own
    settings) is what the checks hold the breaker to.
    """
    prepared = prepared or prepare(service, name)
    settings = prepared.settings
    expect = expect or settings
    run = _Run(time.monotonic, time.time, on_event)
    bystanding: list[Outcome] = []
    transitions: list[TransitionEvent] = []
    seen_all: list[TransitionEvent] = []
    cursor = prepared.cursor

    def stats_now() -> dict[str, Any]:
        """/health's view of the circuit, once it agrees with the journal (/health answers
        may be shared for a moment, so right after a transition they can be a step behind)."""
        known = transitions[-1].state if transitions else None
        for _ in range(20):
            stats = service.circuits()[name]
            if known is None or stats.get("state") == known.value:
                break
            sleep(0.05)
        return stats

    def state_now() -> CircuitState:
        return CircuitState(stats_now()["state"])

    def fresh_events() -> list[TransitionEvent]:
        nonlocal cursor
        batch, cursor = service.events(cursor)
        seen_all.extend(batch)
        mine = [event for event in batch if event.circuit == name]
        for event in mine:
            transitions.append(event)
            run.event("transition", f"{event.previous.value} -> {event.state.value}", event.state)
        return mine

    def bystand() -> None:
        if bystander is not None:
            bystanding.append(bystander.drive())

    def journal() -> Journal:
        return Journal(
            scenario="outage",
            dependency=name,
            target=service.url,
            settings=settings,
            checks=tuple(run.checks),
            transitions=tuple(
                Transition(e.previous, e.state, e.at.timestamp() - run.started_wall)
                for e in transitions
            ),
            notes=(f"drive: {drive.label}", f"outage: {outage.label}", *notes),
            measurements=run.measurements,
        )

    # 1. steady state: closed, and the driven request works (a 4xx is the request's fault)
    steady: list[Outcome] = []
    for _ in range(STEADY_DRIVES):
        outcome = drive.drive()
        if isinstance(drive, CommandDriver) and not outcome.ok and not steady:
            raise UsageError(f"--drive-cmd failed before the outage: {outcome.detail}")
        if outcome.unrelated_failure or (outcome.status is None and not outcome.ok):
            said = f"HTTP {outcome.status} {outcome.detail}" if outcome.status else outcome.detail
            raise UsageError(
                f"the drive request {drive.label} failed before the outage: {said}"[:300]
            )
        steady.append(outcome)
    if bystander is not None:
        first = bystander.drive()
        if not first.ok:
            raise UsageError(f"the bystander request {bystander.label} failed: {first.detail}")
        bystanding.append(first)
    fresh_events()
    state = state_now()
    run.measurements["steady_p50_ms"], run.measurements["steady_p99_ms"] = _ms(
        [o.latency_s for o in steady]
    )
    answered = sum(o.ok for o in steady)
    if not run.check(
        "steady state",
        state is CLOSED and answered == len(steady),
        f"circuit {name} {state.value}; {answered}/{len(steady)} driven requests succeeded, "
        + _figures("latency", [o.latency_s for o in steady]),
    ):
        return journal()

    down = True  # before: an interrupted --stop-cmd may have stopped it halfway
    try:
        outage.take_down()
        run.event("outage", f"{name} taken down ({outage.label})")
        opened = _outage(run, name, drive, expect, fresh_events, bystand)
        if opened is not None:
            _fail_fast(run, name, drive, outage, expect, opened, fresh_events, state_now)
            bystand()
        outage.bring_back()
        down = False
        run.event("recovery", f"{name} brought back")
        if opened is not None:
            _recovery(run, drive, expect, stats_now, fresh_events, sleep, bystand)
    finally:
        if down:
            outage.bring_back()
    fresh_events()
    cascaded = sorted({e.circuit for e in seen_all if e.circuit != name and e.state is OPEN})
    ok_bystanders = sum(o.ok for o in bystanding)
    detail = (
        f"other circuits opened: {', '.join(cascaded)}"
        if cascaded
        else f"no other circuit opened ({', '.join(prepared.others) or 'none other'})"
    )
    if bystander is not None:
        detail += f"; bystander {bystander.label} answered {ok_bystanders}/{len(bystanding)}"
    run.check("no cascade", not cascaded and ok_bystanders == len(bystanding), detail)
    return journal()


def _outage(
    run: _Run,
    name: str,
    drive: Driver,
    expect: BreakerConfig,
    fresh_events: Callable[[], list[TransitionEvent]],
    bystand: Callable[[], None],
) -> TransitionEvent | None:
    """Drive until the journal shows the opening; it must say exactly failure_threshold."""
    threshold = expect.failure_threshold
    budget = threshold * 2 + 3
    failing: list[float] = []
    opened: TransitionEvent | None = None
    drives = 0
    for drives in range(1, budget + 1):
        outcome = drive.drive()
        failing.append(outcome.latency_s)
        run.event("outage", f"request {drives}: {_said(outcome)}")
        opened = next((e for e in fresh_events() if e.state is OPEN), None)
        if opened is not None:
            break
        bystand()
    p50, p99 = _ms(failing)
    run.measurements["before_open_p50_ms"], run.measurements["before_open_p99_ms"] = p50, p99
    run.measurements["requests_to_open"] = float(drives)
    if opened is None:
        run.check(
            "opens after failure_threshold failures",
            False,
            f"circuit {name} did not open in {drives} driven requests "
            f"(failure_threshold {threshold}); " + _figures("latency", failing),
        )
        return None
    run.measurements["failures_at_open"] = float(opened.failures)
    run.check(
        "opens after failure_threshold failures",
        opened.failures == threshold and opened.previous is CLOSED,
        f"journal: {opened.previous.value} -> open after {opened.failures} failures "
        f"(failure_threshold {threshold}), on driven request {drives}; error "
        f"{opened.error or 'none'!r}",
    )
    return opened


def _said(outcome: Outcome) -> str:
    status = f"HTTP {outcome.status}" if outcome.status is not None else "no answer"
    if outcome.status is None and outcome.detail:
        status = outcome.detail
    return f"{status} in {outcome.latency_s * 1000:.1f} ms"


def _fail_fast(
    run: _Run,
    name: str,
    drive: Driver,
    outage: Outage,
    expect: BreakerConfig,
    opened: TransitionEvent,
    fresh_events: Callable[[], list[TransitionEvent]],
    state_now: Callable[[], CircuitState],
) -> None:
    """While open, the driven request answers at once and nothing reaches the dependency.

    Driving stops well inside the recovery timeout, so no trial is let through meanwhile.
    """
    deadline = time.monotonic() + expect.timeout * 0.6
    outage.count_contacts()
    before = outage.contacts()
    latencies: list[float] = []
    for _ in range(FAST_DRIVES):
        if latencies and time.monotonic() >= deadline:
            break
        latencies.append(drive.drive().latency_s)
    after = outage.contacts()
    moved = fresh_events()
    state = state_now()
    p50, p99 = _ms(latencies)
    run.measurements["open_p50_ms"], run.measurements["open_p99_ms"] = p50, p99
    new = None if before is None or after is None else after - before
    if new is not None:
        run.measurements["proxy_contacts_while_open"] = float(new)
    before_p50 = run.measurements.get("before_open_p50_ms", math.nan)
    before_p99 = run.measurements.get("before_open_p99_ms", math.nan)
    contacts = (
        f"the proxy saw {new} new connections" if new is not None else "contacts not measured"
    )
    run.check(
        "fails fast while open",
        (new is None or new == 0) and not moved and state is OPEN,
        f"{len(latencies)} requests while open: p50 {p50:.1f} ms / p99 {p99:.1f} ms "
        f"(before it opened: p50 {before_p50:.1f} ms / p99 {before_p99:.1f} ms); {contacts}; "
        f"circuit {state.value}",
    )


def _recovery(
    run: _Run,
    drive: Driver,
    expect: BreakerConfig,
    stats_now: Callable[[], dict[str, Any]],
    fresh_events: Callable[[], list[TransitionEvent]],
    sleep: Callable[[float], object],
    bystand: Callable[[], None],
) -> None:
    """After the service's own recovery timeout, driven requests close it: half_open, closed."""
    moves: list[TransitionEvent] = []
    started = time.monotonic()
    deadline = started + expect.timeout * 3 + 30
    closed = False
    while not closed and time.monotonic() < deadline:
        stats = stats_now()
        wait = stats.get("retry_after")
        if stats.get("state") == OPEN.value and isinstance(wait, int | float) and wait > 0:
            run.event("waiting", f"recovery timeout: {wait:.1f}s until a trial", OPEN)
            sleep(wait + 0.05)
        for _ in range(expect.success_threshold + 2):
            outcome = drive.drive()
            run.event("recovery", f"request: {_said(outcome)}")
            moves.extend(fresh_events())
            if any(e.state is CLOSED for e in moves):
                closed = True
                break
            if moves and moves[-1].state is OPEN:
                break  # a trial failed (the dependency is still starting): wait again
        bystand()
    run.measurements["recovery_s"] = time.monotonic() - started
    path = " -> ".join([OPEN.value, *(e.state.value for e in moves)]) if moves else "nowhere"
    run.check(
        "recovers: half-open, then closed",
        closed and [e.state for e in moves[-2:]] == [HALF_OPEN, CLOSED],
        f"after the {expect.timeout:g}s recovery timeout the circuit went {path} "
        f"in {run.measurements['recovery_s']:.1f}s",
    )
