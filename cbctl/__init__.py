"""cbctl: a fast, correct circuit-breaker library and an operations CLI.

The public API is what this module exports; everything else is an implementation detail.
"""

import logging
from typing import Any

from cbctl.breaker import CircuitBreaker, Exclusion, StateChange
from cbctl.clock import Clock, FakeClock, SystemClock
from cbctl.errors import (
    CallTimeoutError,
    CbctlError,
    CircuitBreakerError,
    ConfigError,
    DependencyError,
    StateError,
    StoreUnavailableError,
    UnknownCircuitError,
    UsageError,
)
from cbctl.journal import TransitionEvent
from cbctl.registry import CircuitBreakerRegistry
from cbctl.state import BreakerConfig, CircuitState


def __getattr__(name: str) -> Any:
    """`__version__` is read from the package metadata on first use: importlib.metadata costs
    ~30 ms, which every `cbctl` command would otherwise pay at start-up."""
    if name != "__version__":
        raise AttributeError(f"module 'cbctl' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cbctl")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


__all__ = [
    "BreakerConfig",
    "CallTimeoutError",
    "CbctlError",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitBreakerRegistry",
    "CircuitState",
    "Clock",
    "ConfigError",
    "DependencyError",
    "Exclusion",
    "FakeClock",
    "StateChange",
    "StateError",
    "StoreUnavailableError",
    "SystemClock",
    "TransitionEvent",
    "UnknownCircuitError",
    "UsageError",
    "__version__",
]

logging.getLogger("cbctl").addHandler(logging.NullHandler())
