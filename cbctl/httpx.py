"""Circuit breakers for every request of an httpx client, as a transport.

```python
import httpx
from cbctl import CircuitBreakerRegistry
from cbctl.httpx import BreakerTransport

registry = CircuitBreakerRegistry(default_config={"failure_threshold": 3, "timeout": 10.0})
llama = httpx.Client(base_url="http://127.0.0.1:8080", transport=BreakerTransport(registry))
```

Each request goes through the breaker of its circuit: by default one per host (`127.0.0.1:8080`:
the host, and the port when the URL names one), or the name given as `circuit=`, or what
`circuit(request)` returns. A transport error (refused, timed out, dropped) or an answer whose
status is in `failure_statuses` (502, 503, 504: down, overloaded, still loading) is a failure;
any other answer, 4xx included, is a success: the server answered. A failed answer is still
returned to the caller, unread, exactly as the wrapped transport gave it, so streaming and
closing work as with any response. An open circuit raises `CircuitOpen` before anything is sent:
a `CircuitBreakerError` and an `httpx.TransportError`, so code that already handles transport
errors handles a rejection too. A request past its breaker's `call_timeout` raises
`CallTimedOut`: a `CallTimeoutError` (a failure of the circuit) and an `httpx.TimeoutException`,
so code that handles httpx timeouts handles it too. Cancellation is neutral and frees a
half-open trial.

The outcome is decided when the response headers arrive; an error while the caller reads the
body later is the caller's to handle. A failed answer's `Retry-After` (seconds or an HTTP date)
is the failure's requested delay: with open-duration backoff on (`max_timeout`), the circuit
opening on it stays open that long, never past `max_timeout`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, ClassVar

import httpx

from cbctl.errors import CallTimeoutError, CircuitBreakerError
from cbctl.failures import DEFAULT_FAILURE_STATUSES, status_set

if TYPE_CHECKING:
    from cbctl.breaker import CircuitBreaker
    from cbctl.registry import CircuitBreakerRegistry

__all__ = [
    "AsyncBreakerTransport",
    "BreakerTransport",
    "CallTimedOut",
    "Circuit",
    "CircuitOpen",
    "host_of",
    "retry_after_seconds",
]

Circuit = str | Callable[[httpx.Request], str] | None
"""Which circuit a request belongs to: a fixed name, a function of the request, or None (its
host)."""


class CircuitOpen(CircuitBreakerError, httpx.TransportError):
    """The request was not sent: its circuit is open. Carries `.name`, `.retry_after` (seconds,
    or None) and `.request`, like any httpx transport error."""

    exit_code: ClassVar[int] = 3

    def __init__(self, name: str, retry_after: float | None, request: httpx.Request) -> None:
        CircuitBreakerError.__init__(self, name, retry_after)
        self._request = request


class CallTimedOut(CallTimeoutError, httpx.TimeoutException):
    """The request took longer than its breaker's `call_timeout` (counted as a failure). Carries
    `.name`, `.call_timeout`, `.took` and `.request`, like any httpx timeout."""

    def __init__(self, timeout: CallTimeoutError, request: httpx.Request) -> None:
        CallTimeoutError.__init__(self, timeout.name, timeout.call_timeout, timeout.took)
        self._request = request


def host_of(request: httpx.Request) -> str:
    """The default circuit name: the request's host, with its port when the URL names one."""
    url = request.url
    return url.host if url.port is None else f"{url.host}:{url.port}"


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A `Retry-After` header's delay in seconds from `now` (wall clock): a number of seconds or
    an HTTP date; None when absent, unreadable or not in the future."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - now
        except (TypeError, ValueError, OverflowError):
            return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


class _FailedAnswer(Exception):
    """Carries an answer whose status counts as a failure out of the breaker's call, and its
    `Retry-After` as `retry_after`: the open duration the breaker is asked for."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response
        self.retry_after = retry_after_seconds(response.headers.get("retry-after"), time.time())


def _for_httpx(
    error: CircuitBreakerError | CallTimeoutError, request: httpx.Request
) -> CircuitOpen | CallTimedOut:
    """The breaker's rejection or call timeout as the httpx error a client already handles (one
    from a breaker transport this one wraps is already one)."""
    if isinstance(error, CircuitOpen | CallTimedOut):
        return error
    if isinstance(error, CircuitBreakerError):
        return CircuitOpen(error.name, error.retry_after, request)
    return CallTimedOut(error, request)


class _Breakers:
    """What both transports share: which breaker a request goes through, and what fails."""

    def __init__(
        self, registry: CircuitBreakerRegistry, circuit: Circuit, failure_statuses: Iterable[int]
    ) -> None:
        self._registry = registry
        if circuit is None:
            self._name: Callable[[httpx.Request], str] = host_of
        elif isinstance(circuit, str):
            self._name = lambda request: circuit
        elif callable(circuit):
            self._name = circuit
        else:
            raise TypeError(f"circuit must be a name or a function of the request, not {circuit!r}")
        self._statuses = status_set(failure_statuses)

    def breaker(self, request: httpx.Request) -> CircuitBreaker:
        return self._registry.get(self._name(request))

    def checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code in self._statuses:
            raise _FailedAnswer(response)
        return response


class BreakerTransport(httpx.BaseTransport):
    """Wraps a transport (default `httpx.HTTPTransport()`) so every request goes through a
    breaker of `registry`."""

    def __init__(
        self,
        registry: CircuitBreakerRegistry,
        transport: httpx.BaseTransport | None = None,
        *,
        circuit: Circuit = None,
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
    ) -> None:
        self._breakers = _Breakers(registry, circuit, failure_statuses)
        self._transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        breaker = self._breakers.breaker(request)
        answered: list[httpx.Response] = []
        try:
            return breaker.call(self._send, request, answered)
        except _FailedAnswer as failed:
            return failed.response
        except (CircuitBreakerError, CallTimeoutError) as error:
            for late in answered:  # past call_timeout: its connection goes back to the pool now
                late.close()
            translated = _for_httpx(error, request)
            if translated is error:
                raise  # from a breaker transport this one wraps
            raise translated from error

    def _send(self, request: httpx.Request, answered: list[httpx.Response]) -> httpx.Response:
        response = self._transport.handle_request(request)
        answered.append(response)
        return self._breakers.checked(response)

    def close(self) -> None:
        self._transport.close()


class AsyncBreakerTransport(httpx.AsyncBaseTransport):
    """The async twin of `BreakerTransport` (default `httpx.AsyncHTTPTransport()`)."""

    def __init__(
        self,
        registry: CircuitBreakerRegistry,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        circuit: Circuit = None,
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
    ) -> None:
        self._breakers = _Breakers(registry, circuit, failure_statuses)
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        breaker = self._breakers.breaker(request)
        try:
            return await breaker.call_async(self._send, request)
        except _FailedAnswer as failed:
            return failed.response
        except (CircuitBreakerError, CallTimeoutError) as error:
            translated = _for_httpx(error, request)
            if translated is error:
                raise  # from a breaker transport this one wraps
            raise translated from error

    async def _send(self, request: httpx.Request) -> httpx.Response:
        return self._breakers.checked(await self._transport.handle_async_request(request))

    async def aclose(self) -> None:
        await self._transport.aclose()
