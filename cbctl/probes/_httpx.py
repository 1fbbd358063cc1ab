"""httpx for probes: bounded clients, credentials kept out of logged URLs, errors explained."""

from __future__ import annotations

import functools
import ssl
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from cbctl.probes import ProbeError, refused, scrub, secrets_of, timed_out

if TYPE_CHECKING:
    from cbctl.config import Dependency

__all__ = ["client_for", "split_credentials", "tls_for", "transport_problem"]


@functools.cache
def _verified_tls() -> ssl.SSLContext:
    """Loading the CA bundle costs ~40 ms; do it once per process, and only for https."""
    return httpx.create_ssl_context()


def tls_for(url: str) -> ssl.SSLContext | bool:
    """What to pass as httpx `verify=`: nothing to verify for plain http, the CA bundle else."""
    return _verified_tls() if url.lower().startswith("https:") else False


def split_credentials(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """The URL without `user:password@` and those credentials as basic auth.

    httpx logs every request's URL at INFO level; a password left in the URL would end up in
    the log of any application that turns logging on.
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return bare, httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))


def client_for(
    url: str, budget: float, headers: dict[str, str] | None = None
) -> tuple[httpx.Client, str]:
    """A client whose every phase (connect, read, write, pool) is bounded by `budget`, and
    the URL to request with it (credentials moved from the URL into the client's auth)."""
    bare, auth = split_credentials(url)
    client = httpx.Client(
        timeout=httpx.Timeout(budget),
        headers=headers,
        auth=auth,
        follow_redirects=False,
        verify=tls_for(url),
    )
    return client, bare


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
