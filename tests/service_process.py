"""A stand-in for a user's Python service: its own breakers, cbctl's health app mounted at /ops.

Run as a separate process by the end-to-end tests:
    python tests/service_process.py TOKEN
It prints `listening PORT` once ready, then serves until terminated. The ASGI app is served by
the few lines of asyncio below, the way a framework mount passes it requests (`root_path`), so
the tests exercise `cbctl.health` as an ASGI app over a real socket, in another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

from cbctl import CircuitBreakerRegistry
from cbctl.health import health_app


def build_registry() -> CircuitBreakerRegistry:
    """The service's breakers: qdrant healthy, redis tripped open, postgresql one failure in."""
    registry = CircuitBreakerRegistry(default_config={"failure_threshold": 2, "timeout": 300})
    registry.get("qdrant").call(lambda: None)

    def refused() -> None:
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    for name, failures in (("redis", 2), ("postgresql", 1)):
        for _ in range(failures):
            with contextlib.suppress(ConnectionRefusedError):
                registry.get(name).call(refused)
    return registry


async def call_app(
    app: Any, method: str, path: str, mount: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request through the ASGI app, as a framework's mount at `mount` would pass it."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        messages.append(dict(message))

    scope = {"type": "http", "method": method, "path": path, "root_path": mount, "headers": headers}
    await app(scope, receive, send)
    payload = b"".join(message.get("body", b"") for message in messages[1:])
    return messages[0]["status"], list(messages[0]["headers"]), payload


async def serve(app: Any, mount: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [
                    (name.strip().lower().encode(), value.strip().encode())
                    for name, _, value in (line.partition(":") for line in lines[1:] if line)
                ]
                length = int(dict(headers).get(b"content-length", b"0"))
                body = await reader.readexactly(length) if length else b""
                path = target.split("?", 1)[0]
                if path.startswith(f"{mount}/"):
                    status, out_headers, payload = await call_app(
                        app, method, path, mount, headers, body
                    )
                else:
                    status, out_headers, payload = 404, [], b"service: not found"
                    out_headers.append((b"content-length", str(len(payload)).encode()))
                writer.write(f"HTTP/1.1 {status} X\r\n".encode())
                for name, value in out_headers:
                    writer.write(name + b": " + value + b"\r\n")
                writer.write(b"\r\n" + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(health_app(build_registry(), token=sys.argv[1]), "/ops"))
