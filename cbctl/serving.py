"""A small stdlib HTTP/1.1 server for a `HealthApp`: what `cbctl serve` runs.

No web framework or ASGI server is needed: a thread per connection (keep-alive), the app's
`respond()` called directly. Loopback by default; request logs go to the `cbctl.health`
logger at DEBUG with client address, method, path and status only (never headers or the
query string, so never a token).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from cbctl.errors import UsageError
from cbctl.health import MAX_BODY_BYTES, HealthApp, HttpResponse

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "HealthServer", "running"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8092
IDLE_TIMEOUT = 30.0

logger = logging.getLogger("cbctl.health")


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

    def _serve(self) -> None:
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self._send(_plain_error(411, "send the body with Content-Length, not chunked"), True)
            return
        try:
            length = int(length_header) if length_header else 0
        except ValueError:
            length = -1
        if length < 0:
            self._send(_plain_error(400, "Content-Length is not a whole number"), True)
            return
        if length > MAX_BODY_BYTES:
            self._send(_plain_error(413, f"request body larger than {MAX_BODY_BYTES} bytes"), True)
            return
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        path = urlsplit(self.path).path or "/"
        try:
            response = self.server.app.respond(self.command, path, headers, body)
        except Exception:
            logger.exception("health endpoint failed on %s %s", self.command, path[:200])
            response = _plain_error(500, "internal error; see the server log")
        self._send(response, False)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def _send(self, response: HttpResponse, close: bool) -> None:
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
        logger.debug("%s %s", self.address_string(), format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urlsplit(getattr(self, "path", "")).path[:200]
        client = self.client_address[0] if self.client_address else "-"
        logger.debug("%s %s %s %s", client, getattr(self, "command", "-"), path, code)


def _plain_error(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, json.dumps({"error": message}).encode())


class HealthServer(ThreadingHTTPServer):
    """Serves one HealthApp; `port=0` lets the OS choose (read `.port` after creating it)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, app: HealthApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
        self.app = app
        try:
            super().__init__((host, port), _Handler)
        except OSError as error:
            raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None

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
