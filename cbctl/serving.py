"""A small stdlib HTTP/1.1 server for a `HealthApp`: what `cbctl serve` runs.

No web framework or ASGI server is needed: a thread per connection (keep-alive), the app's
`respond()` called directly. Loopback by default; request logs go to the `cbctl.health`
logger at DEBUG with client address, method, path and status only (never headers or the
query string, so never a token).

Slow or lying clients cannot hold the server: a connection may wait IDLE_TIMEOUT for its next
request, and once a request has begun, its request line, headers and body must all arrive
within REQUEST_DEADLINE (every read is bounded by what is left, so dripping a byte at a time
does not help); at most MAX_CONNECTIONS are served at once, the next ones get a 503 at once.
Duplicate Authorization or conflicting Content-Length headers are a 400.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from cbctl.errors import UsageError
from cbctl.health import MAX_BODY_BYTES, HealthApp, HttpResponse
from cbctl.printable import visible

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "HealthServer", "running"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8092
IDLE_TIMEOUT = 30.0
REQUEST_DEADLINE = 10.0
MAX_CONNECTIONS = 64

logger = logging.getLogger("cbctl.health")


_SLACK = 0.25
"""How far past its deadline one read may end, so that a fast client's reads need no new
socket timeout each."""


class _DeadlineReader(io.RawIOBase):
    """A connection's reads, each allowed only the time left until the handler's deadline."""

    def __init__(self, connection: socket.socket, handler: _Handler) -> None:
        self._connection = connection
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client took too long to send its request")
        current = self._connection.gettimeout()
        if current is None or current > left + _SLACK:  # settimeout costs a syscall
            self._connection.settimeout(left)
        return self._connection.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    """Turns each request into `app.respond(...)`; malformed requests get a JSON 4xx."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # so even a garbled request line gets a status line
    server_version = "cbctl"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # headers and body leave in one send; flushed after each request
    server: HealthServer
    deadline: float = 0.0
    _reader: io.BufferedReader

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)
        self.rfile.close()
        self.rfile = self._reader = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        """Wait up to IDLE_TIMEOUT for a request to begin, then give it REQUEST_DEADLINE."""
        self.deadline = time.monotonic() + self.server.idle_timeout
        try:
            started = self._reader.peek(1)
        except (TimeoutError, OSError):
            started = b""
        if not started:
            self.close_connection = True
            return
        self.deadline = time.monotonic() + self.server.request_deadline
        super().handle_one_request()

    def _serve(self) -> None:
        problem = _header_problem(self.headers)
        if problem is not None:
            self._send(problem, True)
            return
        length_header = self.headers.get("Content-Length")
        length = int(length_header) if length_header else 0
        if length > MAX_BODY_BYTES:
            self._send(_plain_error(413, f"request body larger than {MAX_BODY_BYTES} bytes"), True)
            return
        try:
            body = self.rfile.read(length) if length else b""
        except TimeoutError:
            body = b""
        if len(body) < length:
            self._send(_plain_error(408, "the request body did not arrive in time"), True)
            return
        headers = {key.lower(): value for key, value in self.headers.items()}
        target = urlsplit(self.path)
        path = target.path or "/"
        try:
            response = self.server.app.respond(self.command, path, headers, body, target.query)
        except Exception:
            logger.exception("health endpoint failed on %s %s", self.command, visible(path[:200]))
            response = _plain_error(500, "internal error; see the server log")
        self._send(response, False)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def _send(self, response: HttpResponse, close: bool) -> None:
        if self.connection.gettimeout() != self.server.idle_timeout:
            self.connection.settimeout(self.server.idle_timeout)  # reads may have shortened it
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, unsupported method) as JSON too."""
        self.close_connection = True
        body = json.dumps({"error": message or self.responses.get(code, ("error",))[0]}).encode()
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if getattr(self, "command", "") != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), visible(format % args)[:300])

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One access-log record; the method and path are the client's bytes, made visible."""
        if not logger.isEnabledFor(logging.DEBUG):
            return
        path = visible(urlsplit(getattr(self, "path", "")).path[:200])
        client = self.client_address[0] if self.client_address else "-"
        method = visible(getattr(self, "command", "-"))[:20]
        logger.debug("%s %s %s %s", client, method, path, code)


def _plain_error(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, json.dumps({"error": message}).encode())


def _header_problem(headers: Any) -> HttpResponse | None:
    """A 4xx for headers a server and a proxy in front of it could read differently."""
    if headers.get("Transfer-Encoding"):
        return _plain_error(411, "send the body with Content-Length, not chunked")
    if len(headers.get_all("Authorization") or ()) > 1:
        return _plain_error(400, "more than one Authorization header")
    lengths = {value.strip() for value in headers.get_all("Content-Length") or ()}
    if len(lengths) > 1:
        return _plain_error(400, "conflicting Content-Length headers")
    for value in lengths:
        if not (value.isascii() and value.isdigit()):
            return _plain_error(400, "Content-Length is not a whole number")
    return None


_BUSY: bytes = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: 40\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
    b'{"error": "too many connections; retry"}'
)


class HealthServer(ThreadingHTTPServer):
    """Serves one HealthApp; `port=0` lets the OS choose (read `.port` after creating it).

    `request_deadline`: seconds a begun request has for its line, headers and body;
    `idle_timeout`: seconds a keep-alive connection may wait for its next request.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        app: HealthApp,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_deadline: float = REQUEST_DEADLINE,
        idle_timeout: float = IDLE_TIMEOUT,
    ):
        self.app = app
        self.max_connections = max_connections
        self.request_deadline = request_deadline
        self.idle_timeout = idle_timeout
        self._active = 0
        self._active_lock = threading.Lock()
        try:
            super().__init__((host, port), _Handler)
        except OSError as error:
            raise UsageError(
                f"cannot listen on {host}:{port}: {error.strerror or error}"
            ) from error

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the connection, or at once a 503 when max_connections are being served."""
        with self._active_lock:
            busy = self._active >= self.max_connections
            if not busy:
                self._active += 1
        if busy:
            try:
                request.settimeout(0.5)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self) -> None:
        with self._active_lock:
            self._active -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke mid-request is the client's business: debug log, no stderr."""
        logger.debug("connection from %s failed", client_address[0], exc_info=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"


@contextmanager
def running(app: HealthApp, host: str = DEFAULT_HOST, port: int = 0) -> Iterator[HealthServer]:
    """The app served from a background thread for the duration of the block."""
    server = HealthServer(app, host, port)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="cbctl-health", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
