"""httpx for probes: bounded clients, credentials kept out of logged URLs, errors explained."""

from __future__ import annotations

import functools
import ssl
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from cbctl.probes import ProbeError, refused, scrub, secrets_of, timed_out
from cbctl.redaction import scrub_logger

scrub_logger("httpx")  # it logs each request's URL, `?api_key=` or `?token=` included

if TYPE_CHECKING:
    from cbctl.config import Dependency

__all__ = [
    "get",
    "prepare",
    "shared_client",
    "split_credentials",
    "tls_for",
    "transport_problem",
]


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


DEFAULT_TIMEOUT = 2.0


@functools.cache
def shared_client(https: bool) -> httpx.Client:
    """One client per process (per TLS need), built on first use and kept: building one costs
    far more than a loopback request, and is not the dependency's latency. Timeouts, headers
    and credentials are given per request, so every probe can share it."""
    return httpx.Client(
        follow_redirects=False,
        verify=_verified_tls() if https else False,
        timeout=DEFAULT_TIMEOUT,  # every probe request passes its own budget
    )


def prepare(url: str) -> None:
    """Build the shared client for `url` now, before a probe's clock starts.

    httpx encodes a request's host with the `idna` codec, whose first use imports it (~1 ms):
    set-up as well, so it is imported here.
    """
    import encodings.idna  # noqa: F401

    shared_client(url.lower().startswith("https:"))


def get(url: str, budget: float, headers: dict[str, str] | None = None) -> httpx.Response:
    """`GET url` on the shared client, every phase (connect, read, write, pool) bounded by
    `budget`; credentials in the URL are sent as basic auth, never logged with it."""
    bare, auth = split_credentials(url)
    client = shared_client(url.lower().startswith("https:"))
    return client.get(
        bare, headers=headers, auth=auth or httpx.USE_CLIENT_DEFAULT, timeout=httpx.Timeout(budget)
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
