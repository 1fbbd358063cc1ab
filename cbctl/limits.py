"""The one validated range of every number cbctl takes (options, cbctl.toml, library settings).

Seconds are finite and at most MAX_SECONDS (a day: longer waits overflow `time.sleep` and
thread timeouts long before 1e308, and nobody means them); counts are whole numbers up to
MAX_COUNT (larger thresholds overflow the state file's integers and lose precision in Redis).
Both take text too, for options that arrive as strings.
"""

from __future__ import annotations

import math
from typing import Final

from cbctl.errors import CbctlError, ConfigError

__all__ = [
    "COUNT_RANGE",
    "MAX_COUNT",
    "MAX_SECONDS",
    "SECONDS_RANGE",
    "count",
    "describe",
    "seconds",
]

MAX_SECONDS: Final = 86400.0
MAX_COUNT: Final = 1_000_000
SECONDS_RANGE: Final = "0 < SECONDS <= 86400"
COUNT_RANGE: Final = "1 <= N <= 1000000"


def describe(value: object) -> str:
    """A value as a configuration error names it: its TOML type where that says more."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def seconds(
    value: object,
    where: str,
    *,
    minimum: float = 0.0,
    zero_ok: bool = False,
    error: type[CbctlError] = ConfigError,
    text: bool = False,
    most: float = MAX_SECONDS,
) -> float:
    """`value` as finite seconds in (minimum, most] (or [0, ...] with `zero_ok`); `most` is
    MAX_SECONDS unless a setting has a longer range of its own (a hold's 30 days)."""
    if text and isinstance(value, str):
        try:
            value = float(value)
        except ValueError as cause:
            raise error(f"{where} must be a number of seconds, got {value!r}") from cause
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{where} must be a number of seconds, got {describe(value)}")
    if math.isfinite(value) and value > most:
        raise error(f"{where} must be at most {most:g} seconds, got {_show_number(value)}")
    if zero_ok:
        valid, bound = value >= 0, "zero or more seconds"
    elif minimum:
        valid, bound = minimum <= value, f"at least {minimum:g} seconds"
    else:
        valid, bound = value > 0, "a positive number of seconds"
    if not valid or not math.isfinite(value):  # NaN compares false either way
        raise error(f"{where} must be {bound}, got {_show_number(value)}")
    return float(value)


def count(
    value: object,
    where: str,
    *,
    error: type[CbctlError] = ConfigError,
    text: bool = False,
    maximum: int = MAX_COUNT,
) -> int:
    """`value` as a whole number in [1, maximum]."""
    if text and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError as cause:
            raise error(f"{where} must be a whole number, got {value!r}") from cause
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where} must be a whole number, got {describe(value)}")
    if value < 1:
        raise error(f"{where} must be at least 1, got {_show_number(value)}")
    if value > maximum:
        raise error(f"{where} must be at most {maximum}, got {_show_number(value)}")
    return value


def _show_number(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
