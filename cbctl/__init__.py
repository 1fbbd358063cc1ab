"""cbctl: a fast, correct circuit-breaker library and an operations CLI.

The public API is what this module exports; everything else is an implementation detail.
"""

import logging
from importlib.metadata import PackageNotFoundError, version

from cbctl.breaker import CircuitBreaker, Exclusion, StateChange
from cbctl.clock import Clock, FakeClock, SystemClock
from cbctl.errors import (
    CbctlError,
    CircuitBreakerError,
    ConfigError,
    DependencyError,
    StateError,
    StoreUnavailableError,
    UnknownCircuitError,
    UsageError,
)
from cbctl.registry import CircuitBreakerRegistry
from cbctl.state import BreakerConfig, CircuitState

try:
    __version__ = version("cbctl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BreakerConfig",
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
    "UnknownCircuitError",
    "UsageError",
    "__version__",
]

logging.getLogger("cbctl").addHandler(logging.NullHandler())
