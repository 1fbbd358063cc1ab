"""The transition journal wherever it lives: the shared state, or a service's `/events`.

`cbctl events` and `cbctl simulate outage --service` read it through here, so a record looks the
same (a `TransitionEvent`) from the state file, Redis or a remote service. Nothing here prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from cbctl.errors import DependencyError
from cbctl.fleet import DEFAULT_HTTP_TIMEOUT, _base_url, _decode, _request, _with_client
from cbctl.journal import Journaled, TransitionEvent
from cbctl.redaction import redact_url
from cbctl.state import CircuitStore

if TYPE_CHECKING:
    import httpx

__all__ = ["Batch", "events_url", "fetch_events", "store_events"]

Batch = tuple[list[TransitionEvent], int | None]
"""Records oldest first, and the cursor to pass as `since` next time."""


def store_events(store: CircuitStore, since: int | None = None) -> Batch:
    """The journal of every circuit in the store after `since` (empty for a store without one)."""
    events = store.events(None, since) if isinstance(store, Journaled) else []
    return events, events[-1].id if events else since


def events_url(url: str) -> str:
    """The `/events` URL of a service given its base URL or its `/health` URL."""
    return f"{_base_url(url)}/events"


def fetch_events(
    url: str,
    since: int | None = None,
    *,
    timeout: float = DEFAULT_HTTP_TIMEOUT,
    client: httpx.Client | None = None,
) -> Batch:
    """A service's journal after `since`. DependencyError when it is unreachable or is not a
    cbctl health endpoint (UsageError for a URL that is not http(s))."""
    target = events_url(url)
    where = redact_url(target)
    if since is not None:
        target = f"{target}?{urlencode({'since': since})}"

    def get(http: httpx.Client) -> Batch:
        response = _request(http, "GET", target, where, timeout)
        payload: Any = _decode(response, where)
        listed = payload.get("events") if isinstance(payload, dict) else None
        cursor = payload.get("cursor") if isinstance(payload, dict) else None
        if response.status != 200 or not isinstance(listed, list):
            raise DependencyError(
                f"{where} answered HTTP {response.status} without an 'events' list: "
                "not a cbctl health endpoint (or one older than the journal)"
            )
        try:
            events = [TransitionEvent.from_json(item) for item in listed]
        except ValueError as problem:
            raise DependencyError(f"{where}: {problem}") from problem
        if cursor is not None and (isinstance(cursor, bool) or not isinstance(cursor, int)):
            raise DependencyError(f"{where} answered a cursor that is not a whole number")
        return events, cursor

    return _with_client(client, timeout, get)
