"""The fault proxy as a long-running, named process, switched from other processes.

`cbctl proxy NAME --listen HOST:PORT` runs a `FaultProxy` plus a small control server on a
loopback port chosen by the OS. Where to find that control server is written to a runtime file
keyed by NAME (`$CBCTL_RUNTIME_DIR`, else the user runtime directory, file `proxy-NAME.json`,
mode 0600, in a 0700 directory, symlinks refused) together with a random token that every
control request must carry (compared in constant time). `cbctl fault NAME ...` and
`cbctl simulate outage --service` read the file and talk to the control server with stdlib
HTTP: switching a mode costs one loopback round trip and imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from cbctl.errors import StateError, UsageError
from cbctl.faults import FaultProxy, Mode, ProxyStats

__all__ = [
    "RUNTIME_ENV_VAR",
    "ProxyControl",
    "ProxyRecord",
    "RunningProxy",
    "control",
    "parse_listen",
    "upstream_address",
]

RUNTIME_ENV_VAR: Final = "CBCTL_RUNTIME_DIR"
CONTROL_TIMEOUT: Final = 5.0
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DEFAULT_PORTS: Final = {
    "postgresql": 5432,
    "postgres": 5432,
    "redis": 6379,
    "rediss": 6379,
    "http": 80,
    "https": 443,
}


def _checked_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"proxy name {name[:80]!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(it names the proxy's runtime file)"
        )
    return name


def runtime_dir() -> Path:
    """Where running proxies are recorded: $CBCTL_RUNTIME_DIR, else the user runtime dir."""
    given = os.environ.get(RUNTIME_ENV_VAR)
    if given:
        return Path(given).expanduser()
    from platformdirs import user_runtime_dir

    return Path(user_runtime_dir("cbctl"))


def _record_path(name: str) -> Path:
    return runtime_dir() / f"proxy-{_checked_name(name)}.json"


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) -> (host, port); UsageError saying what is wrong."""
    host, colon, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"--listen must be HOST:PORT with a port from 1 to 65535, got {text!r}")
    return host, int(port)


def upstream_address(url: str) -> tuple[str, int]:
    """The host and port a dependency URL points at (its scheme's default port if none)."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = parts._replace(netloc="")
    if not parts.hostname:
        raise UsageError(f"upstream {_shown(url)!r} has no host (expected e.g. tcp://host:port)")
    port = port or _DEFAULT_PORTS.get(parts.scheme.lower())
    if port is None:
        raise UsageError(f"upstream {_shown(url)!r} has no port and its scheme has no default")
    return parts.hostname, port


def _shown(url: str) -> str:
    from cbctl.config import redact_url

    return redact_url(url)


@dataclass(frozen=True, slots=True)
class ProxyRecord:
    """What the runtime file says about a running proxy (the token is never shown)."""

    name: str
    pid: int
    listen: str
    upstream: str
    control_port: int
    token: str

    def public(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "token"}


def _stats_json(stats: ProxyStats) -> dict[str, Any]:
    return {
        "mode": stats.mode.value,
        "phase": stats.phase.value,
        "latency_ms": stats.latency_ms,
        "jitter_ms": stats.jitter_ms,
        "flap_period_s": stats.flap_period_s,
        "accepted": stats.accepted,
        "upstream_connections": stats.upstream_connections,
        "active": stats.active,
        "cut": stats.cut,
        "bytes_to_upstream": stats.bytes_to_upstream,
        "bytes_to_client": stats.bytes_to_client,
    }


def apply_fault(proxy: FaultProxy, request: Mapping[str, Any]) -> None:
    """Carry out one mode change as the control protocol states it; UsageError if malformed."""
    mode = request.get("mode")
    if mode == Mode.LATENCY.value:
        proxy.set_latency(request.get("latency_ms", 100.0), request.get("jitter_ms", 0.0))
    elif mode == Mode.FLAPPING.value:
        proxy.set_flapping(request.get("period_s", 1.0))
    elif isinstance(mode, str):
        proxy.set_mode(mode)
    else:
        raise UsageError("a fault needs a mode")


class _ControlHandler(BaseHTTPRequestHandler):
    server: _ControlServer
    protocol_version = "HTTP/1.1"
    timeout = 10.0

    def _authorized(self) -> bool:
        scheme, _, credentials = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self.server.token.encode()
        )

    def _answer(self, status: int, payload: Mapping[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if not self._authorized():
            self._answer(401, {"error": "missing or wrong token"})
        elif self.path != "/status":
            self._answer(404, {"error": "no such endpoint"})
        else:
            self._answer(200, self.server.status())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 4096)) if length > 0 else b""
        if not self._authorized():
            self._answer(401, {"error": "missing or wrong token"})
            return
        if self.path != "/fault":
            self._answer(404, {"error": "no such endpoint"})
            return
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise UsageError("a fault request is a JSON object")
            apply_fault(self.server.proxy, request)
        except (UsageError, ValueError) as error:
            self._answer(400, {"error": str(error)})
            return
        self._answer(200, self.server.status())

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the proxy's own output is its one status line."""


class _ControlServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: FaultProxy, record: dict[str, Any], token: str) -> None:
        self.proxy = proxy
        self.token = token
        self.record = record
        super().__init__(("127.0.0.1", 0), _ControlHandler)

    def status(self) -> dict[str, Any]:
        return {**self.record, **_stats_json(self.proxy.stats())}


class RunningProxy:
    """A named fault proxy with its control server and runtime file, for `cbctl proxy`.

    `start()` refuses (UsageError) when a proxy of that name already answers, or when the
    listen address cannot be bound; `close()` puts everything back (the runtime file removed).
    """

    def __init__(
        self, name: str, listen: tuple[str, int], upstream: tuple[str, int], upstream_shown: str
    ) -> None:
        self.name = _checked_name(name)
        self._listen = listen
        self._proxy = FaultProxy(*upstream, listen_host=listen[0], listen_port=listen[1])
        self._upstream_shown = upstream_shown
        self._control: _ControlServer | None = None
        self._thread: threading.Thread | None = None
        self._path = _record_path(name)

    @property
    def listen(self) -> str:
        host, port = self._listen
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> RunningProxy:
        try:
            running: ProxyRecord | None = control(self.name).record
        except UsageError:
            running = None
        if running is not None:
            raise UsageError(
                f"a cbctl proxy named {self.name!r} is already running (pid {running.pid}, "
                f"listening on {running.listen})"
            )
        try:
            self._proxy.start()
        except OSError as error:
            raise UsageError(
                f"cannot listen on {self.listen}: {error.strerror or error}"
            ) from error
        try:
            token = secrets.token_urlsafe(24)
            public = {
                "name": self.name,
                "pid": os.getpid(),
                "listen": self.listen,
                "upstream": self._upstream_shown,
            }
            self._control = _ControlServer(self._proxy, public, token)
            self._thread = threading.Thread(
                target=self._control.serve_forever, name="cbctl-proxy-control", daemon=True
            )
            self._thread.start()
            try:
                _write_private(
                    self._path,
                    {**public, "control_port": self._control.server_address[1], "token": token},
                )
            except OSError as error:
                raise StateError(
                    f"cannot write the proxy runtime file {self._path}: {error.strerror or error} "
                    f"(set ${RUNTIME_ENV_VAR} to a writable directory)"
                ) from error
        except BaseException:
            self.close()
            raise
        return self

    def stats(self) -> ProxyStats:
        return self._proxy.stats()

    def close(self) -> None:
        """Stop the control server, remove the runtime file if it is ours, close the proxy."""
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()
            self._control = None
        with contextlib.suppress(OSError, ValueError, StateError):
            if _read_record(self._path).pid == os.getpid():
                self._path.unlink()
        self._proxy.close()

    def __enter__(self) -> RunningProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _write_private(path: Path, payload: Mapping[str, Any]) -> None:
    """Write the runtime file 0600 through a fresh temporary file, never following a symlink."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = directory / f".{path.name}.{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(payload, handle)
        if path.is_symlink():
            raise StateError(f"refusing the proxy runtime file {path}: it is a symbolic link")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _read_record(path: Path) -> ProxyRecord:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise StateError(f"refusing the proxy runtime file {path}: not a regular file")
    data = json.loads(path.read_text())
    return ProxyRecord(
        name=str(data["name"]),
        pid=int(data["pid"]),
        listen=str(data["listen"]),
        upstream=str(data["upstream"]),
        control_port=int(data["control_port"]),
        token=str(data["token"]),
    )


class ProxyControl:
    """Talks to one running proxy's control server (see `control`)."""

    def __init__(self, record: ProxyRecord) -> None:
        self.record = record

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.record.control_port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={
                "Authorization": f"Bearer {self.record.token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=CONTROL_TIMEOUT) as answer:  # noqa: S310
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            try:
                said = json.loads(error.read()).get("error", "")
            except (ValueError, AttributeError):
                said = ""
            raise UsageError(f"proxy {self.record.name!r}: {said or error.reason}") from error
        except (OSError, ValueError) as error:
            raise _not_running(self.record.name) from error

    def status(self) -> dict[str, Any]:
        """Mode, phase and contact counts, with the proxy's name, pid, listen and upstream."""
        answer: dict[str, Any] = self._call("GET", "/status")
        return answer

    def set_fault(
        self,
        mode: Mode | str,
        *,
        latency_ms: float | None = None,
        jitter_ms: float | None = None,
        period_s: float | None = None,
    ) -> dict[str, Any]:
        """Switch the proxy; returns its status after the switch took effect."""
        request: dict[str, Any] = {"mode": str(mode)}
        for key, value in (
            ("latency_ms", latency_ms),
            ("jitter_ms", jitter_ms),
            ("period_s", period_s),
        ):
            if value is not None:
                request[key] = value
        answer: dict[str, Any] = self._call("POST", "/fault", request)
        return answer


def _not_running(name: str) -> UsageError:
    return UsageError(
        f"no running cbctl proxy named {name!r} (start one with: cbctl proxy {name} --listen "
        "HOST:PORT)"
    )


def control(name: str) -> ProxyControl:
    """The control of the running proxy `name`; UsageError (exit 2) when none is running."""
    path = _record_path(name)
    try:
        record = _read_record(path)
    except (OSError, ValueError, KeyError, TypeError) as error:  # none, or not one we wrote
        raise _not_running(name) from error
    handle = ProxyControl(record)
    handle.status()  # a stale file of a proxy that died answers nothing: not running
    return handle
