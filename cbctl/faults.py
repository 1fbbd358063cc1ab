"""Loopback TCP fault proxy: put it between a client and a dependency, then break the link.

The proxy copies bytes and speaks no protocol, so PostgreSQL, Redis and HTTP all work through
it. Modes, switched at run time and in effect when the call returns:

- ``up``: bytes pass both ways.
- ``down``: the proxy stops listening (new connections are refused) and cuts open ones.
- ``blackhole``: new connections are accepted, read and never answered; the upstream is never
  contacted. Open connections are held: their bytes wait and flow again once the mode allows.
- ``latency``: every chunk coming back from the upstream is held ``latency_ms`` (give or take
  a uniformly random ``jitter_ms``) before it is forwarded, so each request/response round trip
  is about that much slower (and a bulk download is paced at one 64 KiB read per
  ``latency_ms``). Requests are not delayed.
- ``flapping``: down at once, then up and down in turn, each phase lasting ``flap_period_s``.

It counts what it does (`ProxyStats`), so "the dependency was not contacted" is measured.
`AsyncFaultProxy` runs on the caller's event loop; `FaultProxy` runs its own loop in a thread
for synchronous code. Going down and up again re-binds the same port; should another socket
take it in between, going up raises OSError (a flapping proxy logs it and stays down a phase).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import math
import random
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Self, TypeVar

from cbctl.errors import UsageError
from cbctl.limits import MAX_SECONDS, seconds

__all__ = ["AsyncFaultProxy", "FaultProxy", "Mode", "ProxyStats"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_CHUNK = 64 * 1024  # bytes per read: one read per small reply, few reads for bulk streams
_COMMAND_TIMEOUT = 10.0  # seconds a thread waits for the proxy's loop to carry out a command
DEFAULT_LATENCY_MS = 100.0
DEFAULT_FLAP_PERIOD_S = 1.0


class Mode(StrEnum):
    """What the proxy does to traffic (see the module docstring)."""

    UP = "up"
    DOWN = "down"
    BLACKHOLE = "blackhole"
    LATENCY = "latency"
    FLAPPING = "flapping"


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """One consistent reading of the proxy, taken on its event loop.

    `mode` is what was asked for; `phase` is what the proxy does right now (a flapping proxy is
    up or down). Byte counts are bytes forwarded; bytes a blackhole swallows are not counted.
    """

    mode: Mode
    phase: Mode
    latency_ms: float
    flap_period_s: float
    accepted: int  # client connections accepted
    upstream_connections: int  # connections opened to the upstream: it was contacted
    active: int  # client connections open now
    cut: int  # open client connections the proxy cut (going down, closing)
    bytes_to_upstream: int
    bytes_to_client: int
    jitter_ms: float = 0.0


def _checked_port(value: int, what: str, *, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= 65535:
        raise UsageError(f"{what} must be an integer from {lowest} to 65535, got {value!r}")
    return value


def _milliseconds(value: float, what: str) -> float:
    """Latency or jitter: finite milliseconds >= 0, at most `limits.MAX_SECONDS` of them (seconds
    go through `limits.seconds`), so a fault can never ask asyncio for an endless wait."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if not math.isfinite(number) or number < 0:
        raise UsageError(f"{what} must be a finite number >= 0, got {value!r}")
    most = MAX_SECONDS * 1000
    if number > most:
        raise UsageError(f"{what} must be at most {most:g}, got {value!r}")
    return float(number)


def _parsed_mode(value: Mode | str) -> Mode:
    try:
        return Mode(value)
    except ValueError as error:
        known = ", ".join(mode.value for mode in Mode)
        raise UsageError(f"unknown fault mode {value!r} (known: {known})") from error


@contextlib.contextmanager
def _owned(writer: asyncio.StreamWriter) -> Iterator[None]:
    """Close `writer` when the block ends: flushed if it ran to its end, reset if it was cut.

    A peer that resets or vanishes (OSError) is an ordinary end of a connection, not an error.
    """
    try:
        yield
    except OSError:
        writer.transport.abort()
    except BaseException:
        writer.transport.abort()
        raise
    else:
        writer.close()


class AsyncFaultProxy:
    """The fault proxy for asyncio code: `async with AsyncFaultProxy(host, port) as proxy`."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self._upstream = (upstream_host, _checked_port(upstream_port, "upstream port", lowest=1))
        self._listen_host = listen_host
        self._port = _checked_port(listen_port, "listen port", lowest=0)
        self._mode = self._phase = Mode.UP
        self._latency_s = DEFAULT_LATENCY_MS / 1000
        self._jitter_s = 0.0
        self._flap_period_s = DEFAULT_FLAP_PERIOD_S
        self._listener: socket.socket | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._flapper: asyncio.Task[None] | None = None
        self._flowing = asyncio.Event()  # cleared while blackholed: open connections hold
        self._lock = asyncio.Lock()  # one mode change at a time
        self._started = self._closed = False
        self._accepted = self._upstream_connections = self._cut = 0
        self._bytes_to_upstream = self._bytes_to_client = 0

    @property
    def port(self) -> int:
        """The port clients connect to (chosen by the OS when `listen_port` was 0)."""
        if not self._started:
            raise UsageError("the fault proxy has no port until it is started")
        return self._port

    async def start(self) -> Self:
        """Listen, in mode up. Starting a started proxy does nothing."""
        if self._closed:
            raise UsageError("a closed fault proxy cannot be started again")
        async with self._lock:
            if not self._started:
                await self._enter(Mode.UP)
                self._started = True
        return self

    async def aclose(self) -> None:
        """Stop listening, stop flapping, cut every connection. Closing twice is fine."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await self._stop_flapping()
            await self._enter(Mode.DOWN)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def set_mode(self, mode: Mode | str) -> None:
        """Switch mode; latency and flapping use the last values set (see set_latency)."""
        mode = _parsed_mode(mode)
        async with self._lock:
            if not self._started or self._closed:
                raise UsageError("the fault proxy is not running; start it first")
            await self._stop_flapping()
            await self._enter(Mode.DOWN if mode is Mode.FLAPPING else mode)
            self._mode = mode
            if mode is Mode.FLAPPING:
                self._flapper = asyncio.create_task(self._flap())
        _log.debug("fault proxy on port %d: mode %s", self._port, mode)

    async def set_latency(self, latency_ms: float, jitter_ms: float = 0.0) -> None:
        """Switch to latency mode, holding each chunk from the upstream `latency_ms`, give or take
        up to `jitter_ms` (uniformly random, never below zero)."""
        latency_s = _milliseconds(latency_ms, "latency_ms") / 1000
        self._jitter_s = _milliseconds(jitter_ms, "jitter_ms") / 1000
        self._latency_s = latency_s
        await self.set_mode(Mode.LATENCY)

    async def set_flapping(self, period: float) -> None:
        """Switch to flapping: down now, then up and down in turn every `period` seconds."""
        self._flap_period_s = seconds(period, "flapping period", error=UsageError)
        await self.set_mode(Mode.FLAPPING)

    def stats(self) -> ProxyStats:
        """A reading of the counters; call it on the proxy's event loop."""
        return ProxyStats(
            mode=self._mode,
            phase=self._phase,
            latency_ms=self._latency_s * 1000,
            flap_period_s=self._flap_period_s,
            accepted=self._accepted,
            upstream_connections=self._upstream_connections,
            active=len(self._connections),
            cut=self._cut,
            bytes_to_upstream=self._bytes_to_upstream,
            bytes_to_client=self._bytes_to_client,
            jitter_ms=self._jitter_s * 1000,
        )

    async def _enter(self, phase: Mode) -> None:
        """Make the listener, the flow gate and the open connections match `phase`."""
        if phase is Mode.DOWN:
            self._phase = phase
            self._stop_listening()
            await self._cut_all()
        else:
            self._listen()
            self._phase = phase
        if phase is Mode.BLACKHOLE:
            self._flowing.clear()
        else:
            self._flowing.set()

    def _listen(self) -> None:
        """Listen on the proxy's port (SO_REUSEADDR: re-binding after `down` always works)."""
        if self._listener is None:
            family = socket.AF_INET6 if ":" in self._listen_host else socket.AF_INET
            listener = socket.create_server((self._listen_host, self._port), family=family)
            listener.setblocking(False)
            self._port = int(listener.getsockname()[1])
            asyncio.get_running_loop().add_reader(listener, self._accept_waiting, listener)
            self._listener = listener

    def _stop_listening(self) -> None:
        """Close the listening socket: from now on a connect is refused by the kernel."""
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener)
            self._listener.close()
            self._listener = None

    async def _cut_all(self) -> None:
        doomed = list(self._connections)
        for task in doomed:
            task.cancel()
        self._cut += len(doomed)
        await asyncio.gather(*doomed, return_exceptions=True)

    async def _flap(self) -> None:
        """Turn up and down in turn, one phase per period, until another mode is set."""
        while True:
            await asyncio.sleep(self._flap_period_s)
            async with self._lock:
                try:
                    await self._enter(Mode.UP if self._phase is Mode.DOWN else Mode.DOWN)
                except OSError as error:
                    _log.warning("fault proxy could not listen on port %d: %s", self._port, error)

    async def _stop_flapping(self) -> None:
        if self._flapper is not None:
            self._flapper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flapper
            self._flapper = None

    def _accept_waiting(self, listener: socket.socket) -> None:
        """Accept every waiting connection, each tracked from that moment on.

        Accepting here, not with asyncio.start_server, leaves no accepted socket that no task
        owns yet: closing the listener can then neither leak one nor trip asyncio's server.
        """
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of file descriptors, connection aborted...
                _log.warning("fault proxy on port %d could not accept: %s", self._port, error)
                return
            self._accepted += 1
            task = asyncio.get_running_loop().create_task(self._serve(conn))
            self._connections.add(task)
            task.add_done_callback(functools.partial(self._forget, conn))

    def _forget(self, conn: socket.socket, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        if task.cancelled():  # cut, perhaps before a transport owned the socket
            conn.close()
        elif (error := task.exception()) is not None:
            conn.close()
            _log.error("fault proxy connection on port %d failed: %r", self._port, error)

    async def _serve(self, conn: socket.socket) -> None:
        """Carry one client connection as the phase it arrived in says."""
        reader, writer = await asyncio.open_connection(sock=conn)
        with _owned(writer):
            if self._phase is Mode.BLACKHOLE:
                while await reader.read(_CHUNK):
                    pass
            else:
                await self._forward(reader, writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
        self._upstream_connections += 1
        with _owned(upstream_writer):
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._pump(reader, upstream_writer, to_client=False))
                pumps.create_task(self._pump(upstream_reader, writer, to_client=True))

    def _delay(self) -> float:
        jitter = self._jitter_s
        if not jitter:
            return self._latency_s
        return max(0.0, self._latency_s + random.uniform(-jitter, jitter))  # noqa: S311

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, to_client: bool
    ) -> None:
        """Copy one direction until end of stream, then pass the end on (half-close)."""
        try:
            while chunk := await source.read(_CHUNK):
                await self._flowing.wait()
                if to_client and self._phase is Mode.LATENCY:
                    await asyncio.sleep(self._delay())
                sink.write(chunk)
                if to_client:
                    self._bytes_to_client += len(chunk)
                else:
                    self._bytes_to_upstream += len(chunk)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except OSError:  # one side reset: reset the other, whose pump then ends too
            sink.transport.abort()


class FaultProxy:
    """The fault proxy for synchronous code: it runs its own event loop in a thread.

    `with FaultProxy("127.0.0.1", 5432) as proxy: proxy.set_mode("down")`. Every method is
    thread-safe and returns once the change has taken effect. `stats()` still answers after
    close(), with the final counts.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self._core = AsyncFaultProxy(
            upstream_host, upstream_port, listen_host=listen_host, listen_port=listen_port
        )
        self._lifecycle = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def port(self) -> int:
        """The port clients connect to."""
        return self._core.port

    def start(self) -> Self:
        """Start the loop thread and listen; returns once clients can connect."""
        with self._lifecycle:
            if self._closed:
                raise UsageError("a closed fault proxy cannot be started again")
            if self._thread is None:
                ready: concurrent.futures.Future[None] = concurrent.futures.Future()
                self._thread = threading.Thread(
                    target=asyncio.run,
                    args=(self._main(ready),),
                    name="cbctl-fault-proxy",
                    daemon=True,
                )
                self._thread.start()
                try:
                    ready.result(timeout=_COMMAND_TIMEOUT)
                except BaseException:
                    self._closed = True
                    self._thread.join(_COMMAND_TIMEOUT)
                    raise
        return self

    def close(self) -> None:
        """Cut every connection, stop the loop and join its thread. Closing twice is fine."""
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
            if self._thread is not None and self._loop is not None and self._stopping:
                self._loop.call_soon_threadsafe(self._stopping.set)
                self._thread.join(_COMMAND_TIMEOUT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def set_mode(self, mode: Mode | str) -> None:
        """See AsyncFaultProxy.set_mode."""
        self._submit(self._core.set_mode(mode))

    def set_latency(self, latency_ms: float, jitter_ms: float = 0.0) -> None:
        """See AsyncFaultProxy.set_latency."""
        self._submit(self._core.set_latency(latency_ms, jitter_ms))

    def set_flapping(self, period: float) -> None:
        """See AsyncFaultProxy.set_flapping."""
        self._submit(self._core.set_flapping(period))

    def stats(self) -> ProxyStats:
        """A consistent reading, taken on the proxy's loop (or the final one after close)."""
        if self._closed:
            return self._core.stats()

        async def reading() -> ProxyStats:
            return self._core.stats()

        return self._submit(reading())

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        """The loop thread's life: start the core, serve until told to stop, close the core."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self._core.start()
        except Exception as error:
            ready.set_exception(error)
            return
        ready.set_result(None)
        try:
            await self._stopping.wait()
        finally:
            await self._core.aclose()

    def _submit(self, command: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None or self._closed:
            command.close()
            raise UsageError("the fault proxy is not running; call start() or use `with`")
        future = asyncio.run_coroutine_threadsafe(command, self._loop)
        return future.result(timeout=_COMMAND_TIMEOUT)
