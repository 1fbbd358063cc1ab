"""llama.cpp's llama-server: `GET /health` with httpx.

200 `{"status": "ok"}` is healthy. 503 `{"error": {"message": "Loading model", ...}}` means the
server is up but still loading its model: "not ready", and a failure for the breaker, because
completions would fail too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from cbctl.probes import Deadline, ProbeError, cause, scrub, secrets_of
from cbctl.probes._httpx import get, prepare, transport_problem

if TYPE_CHECKING:
    from cbctl.config import Dependency

__all__ = ["check", "set_up"]


def set_up(dep: Dependency) -> None:
    """Client set-up, kept out of the probe's latency."""
    prepare(dep.url)


def check(dep: Dependency, timeout: float) -> str:
    deadline = Deadline(timeout)
    url = dep.url.rstrip("/") + "/health"
    try:
        response = get(url, deadline.remaining(dep))
    except httpx.HTTPError as error:
        raise transport_problem(error, dep, timeout) from cause(error, dep)
    body = _json(response)
    if response.status_code == 200:
        status = body.get("status") if isinstance(body, dict) else None
        if status == "ok":
            return "200 ok"
        raise ProbeError(f"unexpected health answer: status {status!r}", "unhealthy")
    message = _error_message(body) or response.reason_phrase or "no message"
    message = scrub(message, secrets_of(dep))
    if response.status_code == 503:
        raise ProbeError(f"not ready: {message} (503)", "not_ready")
    raise ProbeError(f"unhealthy: {message} ({response.status_code})", "unhealthy")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_message(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
        return str(message) if message else None
    return None
