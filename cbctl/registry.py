"""Named breakers with one default configuration and per-name overrides."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

from cbctl.breaker import CircuitBreaker
from cbctl.clock import Clock
from cbctl.errors import ConfigError, UnknownCircuitError
from cbctl.state import BreakerConfig, CircuitStore

__all__ = ["CircuitBreakerRegistry"]


class CircuitBreakerRegistry:
    """Get-or-create breakers by name; every breaker of one registry shares its clock and store.

    `default_config` applies to every circuit; `overrides` (or keyword arguments to the first
    `get`) change single settings for one name. Asking again for a name returns the same object.
    """

    def __init__(
        self,
        default_config: Mapping[str, Any] | BreakerConfig | None = None,
        *,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        store: CircuitStore | None = None,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(default_config, BreakerConfig):
            self._default = default_config
        else:
            self._default = BreakerConfig.from_mapping(default_config or {})
        self._overrides = {
            name: BreakerConfig.from_mapping(settings, self._default)
            for name, settings in (overrides or {}).items()
        }
        self._store = store
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    @property
    def default_config(self) -> BreakerConfig:
        return self._default

    @property
    def store(self) -> CircuitStore | None:
        return self._store

    def config_for(self, name: str) -> BreakerConfig:
        """The settings a breaker of this name gets (defaults + its overrides)."""
        return self._overrides.get(name, self._default)

    def get(self, name: str, **overrides: Any) -> CircuitBreaker:
        """The breaker called `name`, created on first use; later calls return the same object.

        Settings given for a name that already exists must match it: silently ignoring them would
        leave a caller believing in a threshold that is not in force.
        """
        breaker = self._breakers.get(name)
        if breaker is not None and not overrides:
            return breaker
        with self._lock:
            breaker = self._breakers.get(name)
            config = self.config_for(name)
            if overrides:
                config = BreakerConfig.from_mapping(overrides, config)
            if breaker is None:
                breaker = CircuitBreaker(name, config=config, clock=self._clock, store=self._store)
                self._breakers[name] = breaker
            elif breaker.config != config:
                raise ConfigError(
                    f"circuit {name!r} already exists with {breaker.config.as_dict()}; "
                    f"cannot change it to {config.as_dict()}"
                )
            return breaker

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def names(self) -> list[str]:
        return sorted(self._breakers)

    def get_all_stats(self) -> dict[str, dict[str, Any]]:
        """{name: stats} for every breaker, in name order."""
        return {name: self._breakers[name].stats for name in self.names()}

    def reset(self, name: str) -> None:
        """Reset one circuit; an unknown name raises UnknownCircuitError listing the known ones."""
        breaker = self._breakers.get(name)
        if breaker is None:
            raise UnknownCircuitError(name, self._breakers)
        breaker.reset()

    def reset_all(self) -> None:
        for breaker in self:
            breaker.reset()
