"""Qdrant: readiness (`GET /readyz`), then the collection list (`GET /collections`), with httpx.

`/readyz` says whether the node can take traffic. The collection listing is the call that proves
the API key: Qdrant leaves its health endpoints open without a key. Both are the REST calls
qdrant-client makes; they are made with httpx because importing qdrant-client costs 1-5 s per
process (pydantic models, gRPC stubs), which a probe from cron or a shell would pay every time.
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
    headers = {"api-key": dep.api_key} if dep.api_key else {}
    base = dep.url.rstrip("/")
    try:
        ready = get(f"{base}/readyz", deadline.remaining(dep), headers)
        if ready.status_code != 200:
            raise _status_problem(ready.status_code, ready.text, dep)
        listing = get(f"{base}/collections", deadline.remaining(dep), headers)
    except httpx.HTTPError as error:
        raise transport_problem(error, dep, timeout) from cause(error, dep)
    if listing.status_code != 200:
        raise _status_problem(listing.status_code, _message(listing), dep)
    collections = _collections(listing)
    if collections is None:
        raise ProbeError(
            f"unexpected answer to GET /collections at {dep.address}: not Qdrant's JSON",
            "unhealthy",
        )
    count = len(collections)
    return f"ready, {count} collection{'' if count == 1 else 's'}"


def _collections(response: httpx.Response) -> list[Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    result = body.get("result") if isinstance(body, dict) else None
    found = result.get("collections") if isinstance(result, dict) else None
    return found if isinstance(found, list) else None


def _message(response: httpx.Response) -> str:
    """Qdrant's error text (`{"status": {"error": "..."}}`), else the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    status = body.get("status") if isinstance(body, dict) else None
    if isinstance(status, dict) and isinstance(status.get("error"), str):
        return str(status["error"])
    return response.text


def _status_problem(status: int | None, body: str, dep: Dependency) -> ProbeError:
    detail = scrub(body.strip() or "no message", secrets_of(dep))
    if status in (401, 403):
        return ProbeError(f"authentication failed: {detail} ({status})", "auth")
    if status == 503:
        return ProbeError(f"not ready: {detail} ({status})", "not_ready")
    return ProbeError(f"unhealthy: {detail} ({status})", "unhealthy")
