"""Secrets out of everything cbctl shows, logs or raises: one redactor for URLs and DSNs.

`redact_url` is built on `urllib.parse.urlsplit`, not a pattern: the password of the userinfo and
the values of secret-looking query keys (`password=`, `token=`, `api_key=`, ...) become `***`.
A password that was not percent-encoded can make the parser cut the authority short (`/`, `?`
or `#` in it); an `@` after the parsed authority shows that, and then everything up to the last
`@` counts as userinfo, so such a URL is over-redacted rather than leaked.

Every secret the redactor sees (raw, percent-encoded and decoded) is also remembered for the
life of the process, so that `scrub(text)` can take it out of texts that did not come through
here: a client library's error message, a traceback printed with `--debug`, a log record.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qsl, quote, quote_plus, unquote, unquote_plus, urlencode, urlsplit

__all__ = [
    "MASK",
    "SECRET_QUERY_KEYS",
    "ScrubSecrets",
    "redact_url",
    "remember",
    "scrub",
    "scrub_logger",
    "url_secrets",
]

MASK: Final = "***"
MIN_REMEMBERED: Final = 4
"""Shorter secrets are masked where they stand in a URL, but not hunted for in other texts:
masking every "ab" in every message would make the messages unreadable."""
SECRET_QUERY_KEYS: Final = frozenset(
    {
        "password",
        "pass",
        "passwd",
        "pwd",
        "secret",
        "api_key",
        "apikey",
        "api-key",
        "token",
        "access_token",
        "auth",
        "key",
        "sslpassword",
    }
)

_known: set[str] = set()
_known_sorted: tuple[str, ...] = ()
_lock = threading.Lock()


def _forms(secret: str) -> set[str]:
    """The ways a secret can be written in a text: raw, percent-encoded, decoded."""
    return {
        form
        for form in (
            secret,
            quote(secret, safe=""),
            quote_plus(secret, safe=""),
            unquote(secret),
            unquote_plus(secret),
        )
        if form
    }


def remember(*secrets: str | None) -> None:
    """Add secrets (any form) that `scrub` must take out of every text from now on."""
    global _known_sorted
    fresh = {
        form
        for secret in secrets
        if secret
        for form in _forms(secret)
        if len(form) >= MIN_REMEMBERED and form not in _known
    }
    if not fresh:
        return
    with _lock:
        _known.update(fresh)
        _known_sorted = tuple(sorted(_known, key=len, reverse=True))


def scrub(text: str, extra: Iterable[str | None] = ()) -> str:
    """`text` with every remembered secret (and each of `extra`, however short) as `***`."""
    given = [secret for secret in extra if secret]
    if given:
        remember(*given)
    more = sorted({form for secret in given for form in _forms(secret)}, key=len, reverse=True)
    for secret in (*more, *_known_sorted):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _split_authority(url: str) -> tuple[str, str, str] | None:
    """(scheme "://", authority, rest) of `url`, None when it has no `//` authority.

    The authority ends where the parser says, unless an `@` follows it: then at the first
    `/`, `?` or `#` after the last `@` (an unencoded password character cut it short).
    """
    scheme, sep, remainder = url.partition("://")
    if not sep or not scheme or "/" in scheme:
        return None
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # a broken IPv6 literal: the parser gives up, the cut below does not
        netloc = remainder.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    end = len(netloc) if remainder.startswith(netloc) else 0
    if "@" in remainder[end:]:
        last_at = remainder.rindex("@")
        tail = [remainder.find(c, last_at) for c in "/?#"]
        end = min([i for i in tail if i >= 0], default=len(remainder))
    return f"{scheme}{sep}", remainder[:end], remainder[end:]


def url_secrets(url: str) -> list[str]:
    """The secrets in `url`: the userinfo's password and the values of secret query keys."""
    found: list[str] = []
    split = _split_authority(url)
    if split is not None:
        _, authority, rest = split
        userinfo, at, _ = authority.rpartition("@")
        if at and ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    else:
        rest = url
    query = rest.partition("?")[2]
    for part in (query.partition("#")[0], query.partition("#")[2] or rest.partition("#")[2]):
        if part:
            found += [
                value
                for key, value in parse_qsl(part, keep_blank_values=True)
                if key.lower() in SECRET_QUERY_KEYS and value
            ]
            found += [
                piece.partition("=")[2]
                for piece in part.split("&")
                if piece.partition("=")[0].lower() in SECRET_QUERY_KEYS and piece.partition("=")[2]
            ]
    return found


def _redact_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(key.lower() in SECRET_QUERY_KEYS for key, _ in pairs):
        return query
    return urlencode(
        [(key, MASK if key.lower() in SECRET_QUERY_KEYS else value) for key, value in pairs],
        safe="*",
    )


def redact_url(url: str) -> str:
    """`url` with its password and secret query values replaced by `***` — the only form shown.

    Anything that is not a URL comes back scrubbed of remembered secrets only.
    """
    secrets = url_secrets(url)
    remember(*secrets)
    split = _split_authority(url)
    if split is None:
        return scrub(url)
    prefix, authority, rest = split
    userinfo, at, hostport = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostport}"
    path, qmark, query = rest.partition("?")
    query, hashmark, fragment = query.partition("#")
    if not qmark:
        path, hashmark, fragment = rest.partition("#")
    shown = f"{prefix}{authority}{path}"
    if qmark:
        shown += f"?{_redact_query(query)}"
    if hashmark:
        shown += f"#{_redact_query(fragment)}"
    return scrub(shown)


class ScrubSecrets(logging.Filter):
    """A logging filter that takes remembered secrets out of every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _known_sorted:
            message = record.getMessage()
            clean = scrub(message)
            if clean != message:
                record.msg, record.args = clean, ()
        return True


_SCRUB_FILTER: Final = ScrubSecrets()


def scrub_logger(name: str) -> None:
    """Scrub the records of a library's logger that may carry a URL with a secret in its query
    (httpx logs every request's full URL at INFO)."""
    logger = logging.getLogger(name)
    if _SCRUB_FILTER not in logger.filters:
        logger.addFilter(_SCRUB_FILTER)
