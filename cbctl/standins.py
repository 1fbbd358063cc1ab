"""Loopback HTTP stand-ins for Qdrant and llama.cpp's llama-server.

Neither server can be installed from a package registry here, yet `cbctl simulate outage` and
the tests need something that answers like them. A stand-in follows the service's documented
endpoints closely enough that the real client libraries (qdrant-client, httpx) run their usual
code path against it, and it can be switched at run time between three modes:

- `ready`   — answers like a healthy service;
- `loading` — up but not ready (llama-server's 503 "Loading model", Qdrant's 503 /readyz);
- `down`    — the listener is closed, so connections are refused; switching back reopens the
  same port.

Stdlib only (http.server in a daemon thread); binds 127.0.0.1 on a port the OS picks by default.
"""

from __future__ import annotations

import json
import threading
import time
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self

from cbctl.errors import UsageError

__all__ = ["HttpStandin", "LlamaCppStandin", "QdrantStandin", "StandinMode", "standin_for"]

LOOPBACK = "127.0.0.1"


class StandinMode(StrEnum):
    """What a stand-in pretends to be doing."""

    READY = "ready"
    LOADING = "loading"
    DOWN = "down"


Response = tuple[int, str, bytes]  # status, content type, body


def _json(status: int, payload: Any) -> Response:
    return status, "application/json", json.dumps(payload).encode()


def _text(status: int, body: str) -> Response:
    return status, "text/plain; charset=utf-8", body.encode()


class _Handler(BaseHTTPRequestHandler):
    """Routes every request to the stand-in that owns the server; never logs to stderr."""

    server: _StandinHTTPServer

    def _answer(self) -> None:
        standin = self.server.standin
        standin._count_request()
        length = self.headers.get("Content-Length")
        if length and length.isdigit():  # read the body, so a keep-alive connection stays in step
            self.rfile.read(min(int(length), 1 << 20))
        status, content_type, body = standin.respond(
            self.command,
            self.path.split("?", 1)[0],
            {k.lower(): v for k, v in self.headers.items()},
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = _answer
    do_HEAD = _answer
    do_POST = _answer
    do_PUT = _answer
    do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """The library never prints: request logging is dropped."""


class _StandinHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 drops the SYNs of a burst: 1 s retransmits

    def __init__(self, address: tuple[str, int], standin: HttpStandin) -> None:
        self.standin = standin
        super().__init__(address, _Handler)


class HttpStandin:
    """A switchable loopback HTTP service; subclasses say what each endpoint answers."""

    service: ClassVar[str] = "http"

    def __init__(
        self, *, host: str = LOOPBACK, port: int = 0, mode: StandinMode | str = StandinMode.READY
    ) -> None:
        self.host = host
        self.port = port
        self._mode = StandinMode(mode)
        self._lock = threading.Lock()
        self._requests = 0
        self._server: _StandinHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._started = False

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (the port is known once started)."""
        return f"http://{self.host}:{self.port}"

    @property
    def mode(self) -> StandinMode:
        return self._mode

    @property
    def requests_served(self) -> int:
        """Requests answered so far: proof that a fail-fast caller did not contact the service."""
        with self._lock:
            return self._requests

    def _count_request(self) -> None:
        with self._lock:
            self._requests += 1

    def start(self) -> Self:
        """Bind (learning the port if it was 0) and serve, unless the mode is `down`."""
        if self._started:
            return self
        self._started = True
        self._listen()
        if self._mode is StandinMode.DOWN:
            self._close_listener()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._started = False
        self._close_listener()

    def set_mode(self, mode: StandinMode | str) -> None:
        """Switch behaviour at run time; `down` closes the port, leaving `down` reopens it."""
        new_mode = StandinMode(mode)
        with self._lock:
            previous, self._mode = self._mode, new_mode
        if not self._started or previous is new_mode:
            return
        if new_mode is StandinMode.DOWN:
            self._close_listener()
        elif previous is StandinMode.DOWN:
            self._listen()

    def _listen(self) -> None:
        deadline = time.monotonic() + 5.0
        while True:
            try:
                server = _StandinHTTPServer((self.host, self.port), self)
                break
            except OSError:
                if self.port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"cbctl-{self.service}-standin",
            daemon=True,
        )
        self._thread.start()

    def _close_listener(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)

    def respond(self, method: str, path: str, headers: dict[str, str]) -> Response:
        """Status, content type and body for one request (headers have lower-case names)."""
        return _text(404, "not found")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, mode={self._mode.value!r})"


class QdrantStandin(HttpStandin):
    """Qdrant's REST health endpoints, collection listing and point upserts (counted in
    `upserts`, not stored), with optional API-key checks.

    As in Qdrant, `/`, `/healthz`, `/livez` and `/readyz` are open without a key; every other
    endpoint wants the `api-key` header (or `Authorization: Bearer KEY`) when a key is set.
    """

    service: ClassVar[str] = "qdrant"
    version: ClassVar[str] = "1.13.0"
    OPEN_PATHS: ClassVar[frozenset[str]] = frozenset({"/", "/healthz", "/livez", "/readyz"})

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        mode: StandinMode | str = StandinMode.READY,
        api_key: str | None = None,
        collections: tuple[str, ...] = (),
    ) -> None:
        super().__init__(host=host, port=port, mode=mode)
        self.api_key = api_key
        self.collections = collections
        self.upserts = 0

    def _key_problem(self, headers: dict[str, str]) -> str | None:
        if self.api_key is None:
            return None
        bearer = headers.get("authorization", "")
        given = headers.get("api-key") or (bearer[7:] if bearer.startswith("Bearer ") else None)
        if given is None:
            return "Must provide an API key or an Authorization bearer token"
        if given != self.api_key:
            return "Invalid API key or JWT"
        return None

    def respond(self, method: str, path: str, headers: dict[str, str]) -> Response:
        path = path.rstrip("/") or "/"
        if path not in self.OPEN_PATHS:
            problem = self._key_problem(headers)
            if problem is not None:
                return _text(401, problem)
        loading = self.mode is StandinMode.LOADING
        if path == "/":
            info = {"title": "qdrant - vector search engine", "version": self.version}
            return _json(200, {**info, "commit": "cbctl-standin"})
        if path == "/healthz":
            return _text(200, "healthz check passed")
        if path == "/livez":
            return _text(200, "livez check passed")
        if path == "/readyz":
            if loading:
                return _text(503, "some shards are not ready")
            return _text(200, "all shards are ready")
        if path == "/collections" and method == "GET":
            listing = [{"name": name} for name in self.collections]
            return _json(
                200, {"result": {"collections": listing}, "status": "ok", "time": 0.000_01}
            )
        parts = path.split("/")
        if (
            method == "PUT"
            and len(parts) == 4
            and parts[1] == "collections"
            and parts[3] == "points"
        ):
            self.upserts += 1
            result = {"operation_id": self.upserts, "status": "completed"}
            return _json(200, {"result": result, "status": "ok", "time": 0.000_01})
        return _json(404, {"status": {"error": f"Not found: {path}"}, "time": 0.0})


class LlamaCppStandin(HttpStandin):
    """llama.cpp's llama-server health endpoint: 200 when ready, 503 while loading the model."""

    service: ClassVar[str] = "llamacpp"
    LOADING_ERROR: ClassVar[dict[str, Any]] = {
        "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
    }

    def respond(self, method: str, path: str, headers: dict[str, str]) -> Response:
        loading = self.mode is StandinMode.LOADING
        if path in ("/health", "/v1/health"):
            if loading:
                return _json(503, self.LOADING_ERROR)
            return _json(200, {"status": "ok"})
        if path in ("/models", "/v1/models") and method == "GET":
            if loading:
                return _json(503, self.LOADING_ERROR)
            model = {"id": "standin.gguf", "object": "model", "owned_by": "llamacpp"}
            return _json(200, {"object": "list", "data": [model]})
        error = {"code": 404, "message": "File Not Found", "type": "not_found_error"}
        return _json(404, {"error": error})


_STANDINS: dict[str, type[HttpStandin]] = {"qdrant": QdrantStandin, "llamacpp": LlamaCppStandin}


def standin_for(kind: str, **options: Any) -> HttpStandin:
    """A stand-in for a dependency kind that has one (qdrant, llamacpp), not yet started."""
    try:
        factory = _STANDINS[kind]
    except KeyError as error:
        known = ", ".join(sorted(_STANDINS))
        raise UsageError(f"no stand-in for kind {kind!r} (available: {known})") from error
    return factory(**options)
