"""The boundary where a stored record becomes frozen types: a foreign value is a StateError.

A state row or Redis hash may have been written by another program, a newer cbctl or a hand with
`sqlite3`/`redis-cli`: a `state` that is no state, a zero threshold, text where a count belongs.
Each store decodes through `decoded()`, so such a record is one clear error that names the store
and the circuit, never a KeyError or TypeError from deep inside a transition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from cbctl.errors import ConfigError, StateError, UnreadableCircuitsError
from cbctl.printable import visible
from cbctl.state import BreakerConfig, Snapshot, StoredCircuit

__all__ = ["decoded", "load_all_checked"]

_T = TypeVar("_T")
_COUNTS = (
    "failure_count",
    "success_count",
    "generation",
    "trials_admitted",
    "window_count",
    "failure_bits",
    "slow_bits",
)
_TIMES = ("opened_at", "changed_at", "last_failure_at", "hold_until")
_TEXTS = ("last_error", "hold_reason", "hold_owner")
_SPANS = ("backoff", "open_duration")


def _check(snapshot: Snapshot) -> None:
    for name in _COUNTS:
        value = getattr(snapshot, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} is {value!r}, not a count")
    for name in _TIMES:
        value = getattr(snapshot, name)
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ValueError(f"{name} is {value!r}, not a time")
    for name in _SPANS:
        value = getattr(snapshot, name)
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} is {value!r}, not a duration")
    for name in _TEXTS:
        value = getattr(snapshot, name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} is {value!r}, not text")
    if snapshot.hold_until is not None and not snapshot.forced:
        raise ValueError("hold_until is set on a circuit that is not held")


def decoded(
    where: str, name: str, decode: Callable[[], tuple[Snapshot, BreakerConfig]]
) -> tuple[Snapshot, BreakerConfig]:
    """`decode()`'s snapshot and settings, checked; a StateError naming `where` and `name`."""
    try:
        snapshot, config = decode()
        _check(snapshot)
    except KeyError as error:
        problem = f"unknown value {error.args[0]!r}" if error.args else "a missing field"
        raise StateError(_message(where, name, problem)) from error
    except (ValueError, TypeError, IndexError, ConfigError) as error:
        raise StateError(_message(where, name, str(error))) from error
    return snapshot, config


def _message(where: str, name: str, problem: str) -> str:
    return f"{where}: circuit {visible(name)!r} has an unreadable record ({visible(problem)[:200]})"


def load_all_checked(
    where: str,
    rows: Sequence[tuple[str, Callable[[], tuple[Snapshot, BreakerConfig]]]],
    now: float,
) -> list[StoredCircuit]:
    """Every row decoded; UnreadableCircuitsError (with the readable ones) if any is foreign."""
    circuits: list[StoredCircuit] = []
    unreadable: dict[str, str] = {}
    for name, decode in rows:
        try:
            snapshot, config = decoded(where, name, decode)
        except StateError as error:
            unreadable[name] = str(error)
            continue
        circuits.append(StoredCircuit(name, snapshot, config, now))
    if unreadable:
        first = next(iter(unreadable.values()))
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise UnreadableCircuitsError(f"{first}{more}", circuits, unreadable)
    return circuits
