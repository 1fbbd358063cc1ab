"""cbctl.httpx: every request of an httpx client through a breaker, against real loopback servers.

The server is the llama.cpp stand-in (200 /health when ready, 503 "Loading model" while loading,
connections refused when down), so the client, its connection pool and the sockets are real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from cbctl import CircuitBreakerError, CircuitBreakerRegistry, CircuitState, FakeClock
from cbctl.errors import CallTimeoutError, CbctlError
from cbctl.httpx import (
    AsyncBreakerTransport,
    BreakerTransport,
    CallTimedOut,
    CircuitOpen,
    host_of,
)
from cbctl.standins import LlamaCppStandin, StandinMode
from tests.servers import SilentServer, free_port

pytestmark = pytest.mark.slow

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


@pytest.fixture
def llama() -> Iterator[LlamaCppStandin]:
    with LlamaCppStandin() as server:
        yield server


@pytest.fixture
def registry() -> CircuitBreakerRegistry:
    return CircuitBreakerRegistry(
        default_config={"failure_threshold": 2, "timeout": 10.0}, clock=FakeClock()
    )


def circuit_of(server: LlamaCppStandin) -> str:
    return f"127.0.0.1:{server.port}"


def test_a_healthy_server_answers_through_a_closed_circuit_named_for_its_host(
    llama: LlamaCppStandin, registry: CircuitBreakerRegistry
) -> None:
    with httpx.Client(transport=BreakerTransport(registry), timeout=5) as client:
        for _ in range(3):
            assert client.get(f"{llama.url}/health").json() == {"status": "ok"}
    assert registry.names() == [circuit_of(llama)]
    stats = registry.get(circuit_of(llama)).stats
    assert (stats["state"], stats["successes"], stats["failures"]) == ("closed", 3, 0)


def test_a_4xx_answer_is_a_success_not_a_failure(
    llama: LlamaCppStandin, registry: CircuitBreakerRegistry
) -> None:
    with httpx.Client(transport=BreakerTransport(registry), timeout=5) as client:
        for _ in range(5):
            assert client.get(f"{llama.url}/no-such-endpoint").status_code == 404
    assert registry.get(circuit_of(llama)).state is CLOSED


def test_503_loading_is_returned_to_the_caller_and_opens_the_circuit(
    llama: LlamaCppStandin, registry: CircuitBreakerRegistry
) -> None:
    llama.set_mode(StandinMode.LOADING)
    with httpx.Client(transport=BreakerTransport(registry), timeout=5) as client:
        for _ in range(2):
            response = client.get(f"{llama.url}/health")
            assert response.status_code == 503
            assert response.json()["error"]["message"] == "Loading model"
        served = llama.requests_served
        with pytest.raises(CircuitOpen) as caught:
            client.get(f"{llama.url}/health")
    assert llama.requests_served == served  # rejected before anything was sent
    rejection = caught.value
    assert rejection.name == circuit_of(llama)
    assert rejection.retry_after == pytest.approx(10.0)
    assert rejection.request.url == f"{llama.url}/health"
    assert isinstance(rejection, CircuitBreakerError)
    assert rejection.exit_code == 3


def test_existing_transport_error_handling_catches_a_rejection(
    llama: LlamaCppStandin, registry: CircuitBreakerRegistry
) -> None:
    llama.set_mode(StandinMode.LOADING)
    outcomes = []
    with httpx.Client(transport=BreakerTransport(registry), timeout=5) as client:
        for _ in range(3):
            try:
                outcomes.append(client.get(f"{llama.url}/health").status_code)
            except httpx.TransportError as error:
                outcomes.append(type(error).__name__)
    assert outcomes == [503, 503, "CircuitOpen"]
    assert issubclass(CircuitOpen, CbctlError)


def test_a_streamed_failed_answer_can_still_be_read_and_its_connection_reused(
    llama: LlamaCppStandin, registry: CircuitBreakerRegistry
) -> None:
    llama.set_mode(StandinMode.LOADING)
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 5})
    with httpx.Client(transport=BreakerTransport(registry), timeout=5) as client:
        for _ in range(3):
            with client.stream("GET", f"{llama.url}/health") as response:
                assert response.status_code == 503
                assert b"Loading model" in response.read()
        llama.set_mode(StandinMode.READY)
        assert client.get(f"{llama.url}/health").status_code == 200
    assert registry.get(circuit_of(llama)).stats["failure_count"] == 0  # closed by the success


def test_refused_connections_count_and_the_circuit_rejects_without_connecting(
    registry: CircuitBreakerRegistry,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    with httpx.Client(transport=BreakerTransport(registry), timeout=5) as client:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError):
                client.get(f"{nobody}/health")
        with pytest.raises(CircuitOpen):
            client.get(f"{nobody}/health")
    assert registry.get(nobody.removeprefix("http://")).state is OPEN


def test_each_host_has_its_own_circuit(registry: CircuitBreakerRegistry) -> None:
    with (
        LlamaCppStandin() as loading,
        LlamaCppStandin() as ready,
        httpx.Client(transport=BreakerTransport(registry), timeout=5) as client,
    ):
        loading.set_mode(StandinMode.LOADING)
        for _ in range(2):
            client.get(f"{loading.url}/health")
        with pytest.raises(CircuitOpen):
            client.get(f"{loading.url}/health")
        assert client.get(f"{ready.url}/health").status_code == 200
    assert registry.get(circuit_of(loading)).state is OPEN
    assert registry.get(circuit_of(ready)).state is CLOSED


def test_circuit_can_be_one_name_or_a_function_of_the_request(
    llama: LlamaCppStandin, registry: CircuitBreakerRegistry
) -> None:
    llama.set_mode(StandinMode.LOADING)
    named = BreakerTransport(registry, circuit="llm")
    by_path = BreakerTransport(registry, circuit=lambda request: f"llm{request.url.path}")
    with httpx.Client(transport=named, timeout=5) as one, httpx.Client(transport=by_path) as two:
        one.get(f"{llama.url}/health")
        one.get(f"{llama.url}/v1/models")
        two.get(f"{llama.url}/health")
    assert registry.get("llm").state is OPEN
    assert registry.get("llm/health").stats["failure_count"] == 1
    assert "127.0.0.1" not in " ".join(registry.names())


def test_failure_statuses_are_configurable(
    llama: LlamaCppStandin, registry: CircuitBreakerRegistry
) -> None:
    transport = BreakerTransport(registry, failure_statuses=(404,))
    with httpx.Client(transport=transport, timeout=5) as client:
        for _ in range(2):
            assert client.get(f"{llama.url}/nothing-here").status_code == 404
    assert registry.get(circuit_of(llama)).state is OPEN


class RecordingTransport(httpx.HTTPTransport):
    """A real HTTP transport that remembers what it sent and whether it was closed."""

    def __init__(self) -> None:
        super().__init__(retries=0)
        self.paths: list[str] = []
        self.closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)

    def close(self) -> None:
        self.closed = True
        super().close()


def test_a_wrapped_transport_is_used_and_closed(
    llama: LlamaCppStandin, registry: CircuitBreakerRegistry
) -> None:
    inner = RecordingTransport()
    with httpx.Client(transport=BreakerTransport(registry, inner), timeout=5) as client:
        assert client.get(f"{llama.url}/health").status_code == 200
        assert not inner.closed
    assert (inner.paths, inner.closed) == (["/health"], True)


def test_bad_arguments_are_refused() -> None:
    registry = CircuitBreakerRegistry()
    with pytest.raises(TypeError, match="circuit must be a name or a function"):
        BreakerTransport(registry, circuit=42)  # type: ignore[arg-type]
    with pytest.raises(CbctlError, match="not 700"):
        BreakerTransport(registry, failure_statuses=(503, 700))


def test_the_default_circuit_is_the_host_with_an_explicit_port() -> None:
    assert host_of(httpx.Request("GET", "http://127.0.0.1:8080/health")) == "127.0.0.1:8080"
    assert host_of(httpx.Request("GET", "https://llm.internal/v1")) == "llm.internal"


# --- async -----------------------------------------------------------------------------------


def test_async_transport_counts_503_rejects_when_open_and_answers_when_healthy(
    llama: LlamaCppStandin, registry: CircuitBreakerRegistry
) -> None:
    async def main() -> list[object]:
        seen: list[object] = []
        transport = AsyncBreakerTransport(registry)
        async with httpx.AsyncClient(transport=transport, timeout=5) as client:
            seen.append((await client.get(f"{llama.url}/health")).status_code)
            llama.set_mode(StandinMode.LOADING)
            for _ in range(3):
                try:
                    seen.append((await client.get(f"{llama.url}/health")).status_code)
                except httpx.TransportError as error:
                    seen.append(type(error).__name__)
        return seen

    assert asyncio.run(main()) == [200, 503, 503, "CircuitOpen"]


def test_a_cancelled_request_is_neutral_and_frees_the_half_open_trial(
    llama: LlamaCppStandin, silent: SilentServer
) -> None:
    clock = FakeClock()
    registry = CircuitBreakerRegistry(
        default_config={"failure_threshold": 1, "timeout": 10.0}, clock=clock
    )
    transport = AsyncBreakerTransport(registry, circuit="llm")
    breaker = registry.get("llm")

    async def main() -> int:
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{free_port()}/health")
            assert breaker.state is OPEN
            clock.advance(10.0)
            trial = asyncio.create_task(client.get(f"{silent.url('http')}/health"))
            while not silent.connections:  # the trial is in flight at the silent server
                await asyncio.sleep(0.01)
            with pytest.raises(CircuitOpen):  # the one trial place is taken
                await client.get(f"{llama.url}/health")
            trial.cancel()
            with pytest.raises(asyncio.CancelledError):
                await trial
            assert breaker.state is HALF_OPEN
            return (await client.get(f"{llama.url}/health")).status_code

    assert asyncio.run(main()) == 200
    assert breaker.stats["failures"] == 1  # the refused connection only, not the cancellation


def test_a_request_in_flight_does_not_hold_up_the_loop_for_others(
    llama: LlamaCppStandin, silent: SilentServer, registry: CircuitBreakerRegistry
) -> None:
    async def main() -> int:
        async with httpx.AsyncClient(transport=AsyncBreakerTransport(registry), timeout=30) as c:
            stuck = asyncio.create_task(c.get(f"{silent.url('http')}/health"))
            while not silent.connections:
                await asyncio.sleep(0.01)
            answered = [(await c.get(f"{llama.url}/health")).status_code for _ in range(3)]
            assert not stuck.done()
            stuck.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stuck
            return answered.count(200)

    assert asyncio.run(main()) == 3
    assert registry.get(silent.address).stats["failures"] == 0


class ClockTransport(httpx.HTTPTransport):
    """A real transport whose answers take `took` seconds of the breaker's fake clock."""

    def __init__(self, clock: FakeClock, took: float) -> None:
        super().__init__()
        self._clock, self.took = clock, took
        self.answers: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self._clock.advance(self.took)
        self.answers.append(response)
        return response


def test_a_request_past_call_timeout_is_an_httpx_timeout_and_a_failure(
    llama: LlamaCppStandin,
) -> None:
    clock = FakeClock()
    registry = CircuitBreakerRegistry(
        default_config={"failure_threshold": 2, "call_timeout": 1.0}, clock=clock
    )
    transport = BreakerTransport(registry, ClockTransport(clock, took=1.5), circuit="llm")
    raised: list[httpx.TransportError] = []
    with httpx.Client(transport=transport, timeout=5) as client:
        for _ in range(3):
            try:
                client.get(f"{llama.url}/health")
            except httpx.TransportError as error:  # what httpx code already handles
                raised.append(error)
    assert [type(error) for error in raised] == [CallTimedOut, CallTimedOut, CircuitOpen]
    timed_out = raised[0]
    assert isinstance(timed_out, CallTimedOut)
    assert isinstance(timed_out, httpx.TimeoutException)
    assert (timed_out.name, timed_out.call_timeout, timed_out.took) == ("llm", 1.0, 1.5)
    assert timed_out.request.url.path == "/health"
    assert registry.get("llm").stats["failures"] == 2


def test_a_late_answer_past_call_timeout_is_closed_so_its_connection_is_not_held(
    llama: LlamaCppStandin,
) -> None:
    clock = FakeClock()
    registry = CircuitBreakerRegistry(default_config={"call_timeout": 1.0}, clock=clock)
    late = ClockTransport(clock, took=1.5)
    with httpx.Client(transport=BreakerTransport(registry, late), timeout=5) as client:
        with pytest.raises(CallTimedOut):
            client.get(f"{llama.url}/health")
        assert [answer.is_closed for answer in late.answers] == [True]
        late.took = 0.0
        assert client.get(f"{llama.url}/health").status_code == 200


def test_an_async_request_past_call_timeout_is_cancelled_as_an_httpx_timeout(
    silent: SilentServer,
) -> None:
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 1, "call_timeout": 0.2})
    transport = AsyncBreakerTransport(registry, circuit="llm")

    async def main() -> BaseException:
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            with pytest.raises(httpx.TimeoutException) as raised:
                await client.get(f"{silent.url('http')}/health")
            with pytest.raises(CircuitOpen):
                await client.get(f"{silent.url('http')}/health")
            return raised.value

    error = asyncio.run(main())
    assert isinstance(error, CallTimedOut)
    assert isinstance(error.__cause__, CallTimeoutError)
    assert registry.get("llm").stats["failures"] == 1
