"""The one URL parser: every URL cbctl is given (config, environment, --state, --url) goes here.

`parse_url` answers a frozen `Url` or raises the caller's error class (ConfigError for a file or
variable, UsageError for a flag, StateError for a state location) with one line that names
where the URL came from and what is wrong, the URL shown redacted. It refuses what clients
would misread: a port out of 1-65535 (httpx would wrap 99999 round to 34463), a broken IPv6
literal, control characters, and userinfo whose password was not percent-encoded (the parser
would cut the authority at its `/`, `?` or `#`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import SplitResult, unquote, urlsplit

from cbctl.errors import CbctlError, ClientErrorSummary, UsageError
from cbctl.redaction import redact_url

__all__ = ["Url", "parse_url"]

_ENCODE_HINT: Final = (
    "an '@' after the host: percent-encode / ? # @ % and spaces in a password (e.g. %2F for /), "
    "and @ in a path as %40"
)


@dataclass(frozen=True, slots=True)
class Url:
    """A parsed, checked URL; `shown` is the redacted form, the only one to print."""

    text: str = field(repr=False)
    shown: str
    scheme: str
    host: str | None
    port: int | None
    username: str | None
    password: str | None = field(repr=False)
    path: str
    query: str = field(repr=False)

    @property
    def has_userinfo(self) -> bool:
        return self.username is not None or self.password is not None


def parse_url(
    text: object,
    where: str,
    *,
    schemes: tuple[str, ...],
    error: type[CbctlError] = UsageError,
    need_host: bool = True,
    userinfo: bool = True,
    example: str = "",
    purpose: str | None = None,
) -> Url:
    """`text` as a URL with one of `schemes`, checked; `error(where: what is wrong)` otherwise."""
    if not isinstance(text, str):
        raise error(f"{where} must be a URL string, got {type(text).__name__}")
    shown = redact_url(text)
    expected = " or ".join(f"{scheme}://" for scheme in schemes)
    if not text.isprintable():
        raise error(f"{where}: the URL {shown!r} contains control characters")
    try:
        parts = urlsplit(text)
    except ValueError as problem:
        # urlsplit's message may quote the netloc, password and all: the cause says where it
        # was raised, with the redacted URL instead.
        summary = ClientErrorSummary(problem, f"cannot split {shown!r}")
        raise error(f"{where}: invalid URL {shown!r} (broken [IPv6] address?)") from summary
    scheme = parts.scheme.lower()
    if scheme not in schemes or not text.lower().startswith(f"{scheme}://"):
        needs = f"{purpose} needs" if purpose else "expected"
        raise error(f"{where}: {needs} a {expected} URL{example}, got {shown!r}")
    if "@" in text[len(scheme) + 3 + len(parts.netloc) :]:
        raise error(f"{where}: the URL {shown!r} is ambiguous: {_ENCODE_HINT}")
    if (parts.username is not None or parts.password is not None) and not userinfo:
        raise error(
            f"{where}: credentials in the URL are not accepted ({shown!r}); "
            "give the token with --token or $CBCTL_TOKEN"
        )
    port = _port(parts, where, shown, error)
    host = parts.hostname
    if need_host and not host:
        raise error(f"{where}: no host in URL {shown!r}")
    if host and any(c.isspace() for c in host):
        raise error(f"{where}: invalid host in URL {shown!r}")
    return Url(
        text=text,
        shown=shown,
        scheme=scheme,
        host=host,
        port=port,
        username=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
        path=parts.path,
        query=parts.query,
    )


def _port(parts: SplitResult, where: str, shown: str, error: type[CbctlError]) -> int | None:
    try:
        port = parts.port
    except ValueError as problem:
        what = "port out of range" if "out of range" in str(problem) else "invalid port"
        raise error(f"{where}: {what} in {shown!r} (must be 1-65535)") from problem
    if port == 0:
        raise error(f"{where}: port out of range in {shown!r} (must be 1-65535)")
    return port
