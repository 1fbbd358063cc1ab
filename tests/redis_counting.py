"""Round trips to Redis as the server saw them: MONITOR, minus what Lua scripts ran inside.

MONITOR reports every command a client sent, and marks commands run by a script as coming from
"lua"; counting the others gives the round trips (one request, one reply) an action cost.
Used by the Redis store tests and by benchmarks/bench_stores.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import redis

__all__ = ["count_round_trips"]


def count_round_trips(host: str, port: int, action: Callable[[], object]) -> int:
    """Client commands the server received while `action()` ran (script internals excluded)."""
    marker = f"cbctl-count-{uuid.uuid4().hex}"
    watcher = redis.Redis(host=host, port=port, decode_responses=True)
    signaller = redis.Redis(host=host, port=port)
    signaller.ping()  # connect (and its handshake commands) before counting starts
    seen: list[dict[str, Any]] = []
    try:
        with watcher.monitor() as monitor:
            ready = threading.Event()

            def collect() -> None:
                ready.set()
                while True:
                    command = monitor.next_command()
                    if marker in command["command"]:
                        return
                    seen.append(command)

            reader = threading.Thread(target=collect, daemon=True)
            reader.start()
            ready.wait(5)
            action()
            signaller.echo(marker)
            reader.join(10)
    finally:
        signaller.close()
        watcher.close()
    return sum(1 for command in seen if command.get("client_type") != "lua")
