"""Named breakers with one default configuration and per-name overrides."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator, Mapping
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any, Final

from cbctl.breaker import CallObserver, CircuitBreaker, checked_observer
from cbctl.clock import Clock
from cbctl.errors import ConfigError, StoreUnavailableError, UnknownCircuitError
from cbctl.failures import as_rules
from cbctl.journal import Journaled, TransitionEvent, select
from cbctl.state import BreakerConfig, CircuitStore

if TYPE_CHECKING:
    from cbctl.config import Config

__all__ = ["CircuitBreakerRegistry"]

_SETTINGS: Final = frozenset(f.name for f in fields(BreakerConfig))
_REGISTRY_WIDE: Final = frozenset({"clock", "store"})
_ARGUMENTS: Final = (
    frozenset(
        parameter.name
        for parameter in inspect.signature(CircuitBreaker.__init__).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    )
    - _SETTINGS
    - _REGISTRY_WIDE
    - {"config"}
)
"""Per-breaker arguments of CircuitBreaker that are not BreakerConfig settings (exclude,
fallback, and whatever CircuitBreaker learns later): read from its signature, so the registry
never lags behind it."""


def _split(given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(breaker settings, other per-breaker arguments); the registry's own are refused."""
    shared = sorted(set(given) & _REGISTRY_WIDE)
    if shared:
        raise ConfigError(
            f"{shared[0]} is shared by every breaker of a registry: "
            f"give it to CircuitBreakerRegistry({shared[0]}=...)"
        )
    unknown = sorted(set(given) - _SETTINGS - _ARGUMENTS)
    if unknown:
        known = ", ".join(sorted(_SETTINGS | _ARGUMENTS))
        raise ConfigError(f"unknown breaker setting {unknown[0]!r} (known: {known})")
    settings = {key: value for key, value in given.items() if key not in _ARGUMENTS}
    arguments = {key: value for key, value in given.items() if key in _ARGUMENTS}
    if "exclude" in arguments:
        arguments["exclude"] = tuple(arguments["exclude"])
    if "kind" in arguments:  # "redis" and rules_for("redis") are the same kind
        arguments["kind"] = as_rules(arguments["kind"])
    return settings, arguments


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
        self._overrides: dict[str, BreakerConfig] = {}
        self._arguments: dict[str, dict[str, Any]] = {}
        for name, settings in (overrides or {}).items():
            config, arguments = _split(settings)
            self._overrides[name] = BreakerConfig.from_mapping(config, self._default)
            self._arguments[name] = arguments
        self._store = store
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._made_with: dict[str, dict[str, Any]] = {}
        self._observers: tuple[CallObserver, ...] = ()
        self._lock = threading.Lock()

    @classmethod
    def from_config(
        cls, config: Config, *, store: CircuitStore | None = None, clock: Clock | None = None
    ) -> CircuitBreakerRegistry:
        """A registry for the dependencies of a `cbctl.toml`: each name gets its dependency's
        breaker settings, its `call_timeout` and its kind's failure rules (`kind=`, with the
        file's overrides); other names get `[defaults]`, with the default call_timeout."""
        return cls(
            replace(config.defaults, call_timeout=config.call_timeout),
            overrides={
                dep.name: {
                    **dep.breaker.as_dict(),
                    "call_timeout": dep.call_timeout,
                    "kind": dep.failures,
                }
                for dep in config.dependencies.values()
            },
            store=store,
            clock=clock,
        )

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

        `overrides` are breaker settings (failure_threshold, timeout, ...) and any other
        per-breaker argument of CircuitBreaker (exclude, fallback, ...); the clock and the store
        belong to the registry. Arguments given for a name that already exists must match it:
        silently ignoring them would leave a caller believing in a threshold that is not in force.
        """
        breaker = self._breakers.get(name)
        if breaker is not None and not overrides:
            return breaker
        settings, given = _split(overrides)
        with self._lock:
            breaker = self._breakers.get(name)
            config = self.config_for(name)
            if settings:
                config = BreakerConfig.from_mapping(settings, config)
            arguments = {**self._arguments.get(name, {}), **given}
            if breaker is None:
                breaker = CircuitBreaker(
                    name, config=config, clock=self._clock, store=self._store, **arguments
                )
                for observer in self._observers:
                    breaker.add_call_observer(observer)
                self._breakers[name] = breaker
                self._made_with[name] = arguments
            elif breaker.config != config:
                raise ConfigError(
                    f"circuit {name!r} already exists with {breaker.config.as_dict()}; "
                    f"cannot change it to {config.as_dict()}"
                )
            elif given and {**self._made_with[name], **given} != self._made_with[name]:
                raise ConfigError(
                    f"circuit {name!r} already exists with other "
                    f"{', '.join(sorted(given))}; give them on its first get()"
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

    def events(self, since: int | None = None) -> list[TransitionEvent]:
        """The recent transitions of this registry's circuits after cursor `since`, oldest first.

        With a shared store, the store's journal of these circuits (every process's transitions);
        `since` is the `id` of the last record already seen.
        """
        store = self._store
        breakers = list(self)
        if store is not None and isinstance(store, Journaled):
            names = {breaker.name for breaker in breakers}
            try:
                return [event for event in store.events(None, since) if event.circuit in names]
            except StoreUnavailableError:
                pass
        return select((event for breaker in breakers for event in breaker.events()), since)

    def add_call_observer(self, observer: CallObserver) -> None:
        """`breaker.add_call_observer(observer)` for every breaker, and those made later."""
        with self._lock:
            self._observers = (*self._observers, checked_observer(observer))
            breakers = list(self._breakers.values())
        for breaker in breakers:
            breaker.add_call_observer(observer)

    def remove_call_observer(self, observer: CallObserver) -> None:
        """Stop timing calls for `observer`, in every breaker (the untimed path comes back)."""
        with self._lock:
            self._observers = tuple(item for item in self._observers if item != observer)
            breakers = list(self._breakers.values())
        for breaker in breakers:
            breaker.remove_call_observer(observer)

    def reset(self, name: str) -> None:
        """Reset one circuit; an unknown name raises UnknownCircuitError listing the known ones."""
        breaker = self._breakers.get(name)
        if breaker is None:
            raise UnknownCircuitError(name, self._breakers)
        breaker.reset()

    def reset_all(self) -> None:
        for breaker in self:
            breaker.reset()
