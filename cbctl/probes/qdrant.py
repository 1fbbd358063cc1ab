"""Qdrant: readiness (`GET /readyz`), then the collection list through qdrant-client.

`/readyz` says whether the node can take traffic. It is read with httpx (qdrant-client's
own `readyz()` expects JSON where Qdrant answers plain text, qdrant-client issue #625). The
collection listing then goes through qdrant-client, the library applications use, and it is
the call that proves the API key: Qdrant leaves its health endpoints open without a key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from cbctl.probes import Deadline, ProbeError, scrub, secrets_of
from cbctl.probes._httpx import client_for, tls_for, transport_problem

if TYPE_CHECKING:
    from collections.abc import Callable

    from cbctl.config import Dependency

__all__ = ["check"]


def check(dep: Dependency, timeout: float) -> str:
    deadline = Deadline(timeout)
    headers = {"api-key": dep.api_key} if dep.api_key else {}
    http, base = client_for(dep.url.rstrip("/"), deadline.remaining(dep), headers)
    try:
        with http:
            ready = http.get(f"{base}/readyz")
    except httpx.HTTPError as error:
        raise transport_problem(error, dep, timeout) from None
    if ready.status_code != 200:
        raise _status_problem(ready.status_code, ready.text, dep)

    client = QdrantClient(
        url=base,
        headers=headers,  # `api_key=` would warn about plain http on every probe
        timeout=max(1, int(deadline.remaining(dep)) + 1),
        check_compatibility=False,
        verify=tls_for(base),
    )
    client.http.client.add_middleware(_bounded_by(deadline, dep))
    try:
        collections = client.get_collections().collections
    except UnexpectedResponse as error:
        raise _status_problem(
            error.status_code, error.content.decode(errors="replace"), dep
        ) from None
    except ResponseHandlingException as error:
        raise transport_problem(error, dep, timeout) from None
    finally:
        client.close()
    count = len(collections)
    return f"ready, {count} collection{'' if count == 1 else 's'}"


def _bounded_by(
    deadline: Deadline, dep: Dependency
) -> Callable[[httpx.Request, Callable[[httpx.Request], httpx.Response]], httpx.Response]:
    """qdrant-client middleware: each request may use only what is left of the probe's time."""

    def middleware(
        request: httpx.Request, call_next: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        request.extensions["timeout"] = httpx.Timeout(deadline.remaining(dep)).as_dict()
        return call_next(request)

    return middleware


def _status_problem(status: int | None, body: str, dep: Dependency) -> ProbeError:
    detail = scrub(body.strip()[:200] or "no message", secrets_of(dep))
    if status in (401, 403):
        return ProbeError(f"authentication failed: {detail} ({status})", "auth")
    if status == 503:
        return ProbeError(f"not ready: {detail} ({status})", "not_ready")
    return ProbeError(f"unhealthy: {detail} ({status})", "unhealthy")
