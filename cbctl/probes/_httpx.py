"""What httpx's exceptions mean for a probe: refused, timed out, unreachable."""

from __future__ import annotations

import functools
import ssl
from typing import TYPE_CHECKING

import httpx

from cbctl.probes import ProbeError, refused, scrub, secrets_of, timed_out

if TYPE_CHECKING:
    from cbctl.config import Dependency

__all__ = ["client_for", "tls_for", "transport_problem"]


@functools.cache
def _verified_tls() -> ssl.SSLContext:
    """Loading the CA bundle costs ~40 ms; do it once per process, and only for https."""
    return httpx.create_ssl_context()


def tls_for(url: str) -> ssl.SSLContext | bool:
    """What to pass as httpx `verify=`: nothing to verify for plain http, the CA bundle else."""
    return _verified_tls() if url.lower().startswith("https:") else False


def client_for(url: str, budget: float, headers: dict[str, str] | None = None) -> httpx.Client:
    """An httpx client for `url` whose every phase (connect, read, write, pool) is bounded."""
    return httpx.Client(
        timeout=httpx.Timeout(budget),
        headers=headers,
        follow_redirects=False,
        verify=tls_for(url),
    )


def transport_problem(error: BaseException, dep: Dependency, timeout: float) -> ProbeError:
    """A ProbeError for an httpx transport failure (found anywhere in the cause chain)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, httpx.TimeoutException):
            return timed_out(timeout, dep)
        if isinstance(cause, httpx.ConnectError):
            message = str(cause)
            if "refused" in message.lower():
                return refused(dep)
            if "name or service not known" in message.lower():
                return ProbeError(f"cannot resolve host of {dep.address}", "unreachable")
            detail = scrub(message, secrets_of(dep))
            return ProbeError(f"cannot connect to {dep.address}: {detail}", "unreachable")
        if isinstance(cause, httpx.HTTPError):
            detail = scrub(str(cause) or type(cause).__name__, secrets_of(dep))
            return ProbeError(f"request to {dep.address} failed: {detail}", "unreachable")
        cause = cause.__cause__ or cause.__context__
    detail = scrub(str(error) or type(error).__name__, secrets_of(dep))
    return ProbeError(f"request to {dep.address} failed: {detail}", "unhealthy")
