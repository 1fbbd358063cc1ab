"""`cbctl.toml` plus the environment -> frozen dataclasses.

```toml
[defaults]            # breaker settings for every circuit (and a default call_timeout)
failure_threshold = 5
timeout = 30.0
success_threshold = 2

[dependencies.qdrant]
kind = "qdrant"       # qdrant | postgresql | redis | llamacpp | http | tcp
url = "http://localhost:6333"
failure_threshold = 3 # any breaker setting can be overridden per dependency
call_timeout = 2.0    # seconds one probe/call may take (`timeout` is the recovery timeout)
```

The file is found via `--config`, `$CBCTL_CONFIG`, `./cbctl.toml`, then the user config dir.
Without a file (or with one that has no `[dependencies]`), the four dependencies of a local
AI stack are built in; a file's `[dependencies]` replace them unless it sets top-level
`builtins = true`. `CBCTL_<NAME>_URL`
overrides any dependency's url. Every error names the file, the key and what is wrong, and
never shows a password: `repr(Dependency)` and every message carry `redact_url(url)`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from cbctl import limits
from cbctl.errors import ConfigError, UsageError
from cbctl.failures import FailureRules, rules_for
from cbctl.redaction import redact_url, remember
from cbctl.state import BreakerConfig
from cbctl.urls import parse_url

__all__ = [
    "BUILTIN_URLS",
    "DEFAULT_CALL_TIMEOUT",
    "KINDS",
    "Config",
    "Dependency",
    "UrlSource",
    "env_var_for",
    "find_config_file",
    "load_config",
    "parse_config",
    "redact_url",
]

KINDS: Final = ("qdrant", "postgresql", "redis", "llamacpp", "http", "tcp")
BUILTIN_URLS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "qdrant": "http://localhost:6333",
        "postgresql": "postgresql://localhost:5432/postgres",
        "redis": "redis://localhost:6379/0",
        "llamacpp": "http://localhost:8080",
    }
)
DEFAULT_CALL_TIMEOUT: Final = 2.0
CONFIG_FILE_NAME: Final = "cbctl.toml"

UrlSource = Literal["builtin", "file", "env", "flag"]

_BREAKER_INT_KEYS: Final = ("failure_threshold", "success_threshold", "half_open_max_calls")
_SECONDS_KEYS: Final = ("timeout", "call_timeout")
_POLICY_KEYS: Final = (
    "backoff_factor",
    "max_timeout",
    "jitter",
    "failure_rate_threshold",
    "window_calls",
    "window_seconds",
    "minimum_calls",
    "slow_call_duration",
    "slow_call_rate_threshold",
)
_FAILURE_KEYS: Final = ("failure_errors", "neutral_errors", "failure_statuses")
_DEFAULTS_KEYS: Final = frozenset(
    {*_BREAKER_INT_KEYS, *_SECONDS_KEYS, *_POLICY_KEYS, *_FAILURE_KEYS}
)
_COMMON_DEPENDENCY_KEYS: Final = frozenset({"kind", "url", *_DEFAULTS_KEYS})
_KIND_KEYS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {"qdrant": frozenset({"api_key"}), "http": frozenset({"expected_status"})}
)
_SCHEMES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "qdrant": ("http", "https"),
        "llamacpp": ("http", "https"),
        "http": ("http", "https"),
        "postgresql": ("postgresql", "postgres"),
        "redis": ("redis", "rediss"),
        "tcp": ("tcp",),
    }
)
_DEFAULT_PORTS: Final[Mapping[str, int]] = MappingProxyType(
    {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432, "redis": 6379, "rediss": 6379}
)
_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_ERROR_NAME: Final = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def env_var_for(name: str) -> str:
    """`CBCTL_<NAME>_URL` for a dependency name (`-` becomes `_`)."""
    return f"CBCTL_{name.upper().replace('-', '_')}_URL"


@dataclass(frozen=True)
class Dependency:
    """One dependency to probe/protect: where it is, how long a call may take, its breaker.

    `source` says where `url` came from ("builtin" | "file" | "env" | "flag"), so a caller can
    tell an address that nobody configured (built-in default) from one an operator chose.
    `failure_rules` holds the kind's error classification with the file's overrides (None: the
    kind's built-in rules); `failures` is the classification in force.
    """

    name: str
    kind: str
    url: str = field(repr=False)
    call_timeout: float = DEFAULT_CALL_TIMEOUT
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    source: UrlSource = "builtin"
    api_key: str | None = field(default=None, repr=False)
    expected_status: int = 200
    origins: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )
    """Where each setting came from (`dependencies.x.timeout`, `defaults.timeout`, `default`,
    `built-in`, `$CBCTL_X_URL`, `--url`), for `cbctl config`."""
    failure_rules: FailureRules | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        where = f"dependency {self.name!r}"
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: unknown kind {self.kind!r} (known: {', '.join(KINDS)})")
        _check_url(self.kind, self.url, where)
        remember(self.api_key)
        _check_seconds(self.call_timeout, f"{where}: call_timeout")
        _check_status(self.expected_status, f"{where}: expected_status")

    @property
    def failures(self) -> FailureRules:
        """Which errors of this dependency's client count as failures (`cbctl.failures`)."""
        return self.failure_rules or rules_for(self.kind)

    @property
    def display_url(self) -> str:
        """The url with its password replaced by `***` — the only form that may be shown."""
        return redact_url(self.url)

    @property
    def address(self) -> str:
        """`host:port` (as far as the URL says), for messages such as "refused at HOST:PORT"."""
        parts = urlsplit(self.url)
        host = parts.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
        return f"{host}:{port}" if port is not None else host

    def with_url(self, url: str, source: UrlSource = "flag") -> Dependency:
        """The same dependency at another address (e.g. `--url`), validated."""
        where = {"flag": "--url", "env": f"${env_var_for(self.name)}"}.get(source, self.name)
        _check_url(self.kind, url, where)
        origins = MappingProxyType({**self.origins, "url": where})
        return replace(self, url=url, source=source, origins=origins)

    def with_call_timeout(self, seconds: float) -> Dependency:
        """The same dependency with another call timeout (e.g. `--call-timeout`), validated."""
        _check_seconds(seconds, "--call-timeout")
        origins = MappingProxyType({**self.origins, "call_timeout": "--call-timeout"})
        return replace(self, call_timeout=float(seconds), origins=origins)

    def __repr__(self) -> str:
        return (
            f"Dependency(name={self.name!r}, kind={self.kind!r}, url={self.display_url!r}, "
            f"call_timeout={self.call_timeout!r}, breaker={self.breaker!r}, "
            f"source={self.source!r}, api_key={'***' if self.api_key else None!r}, "
            f"expected_status={self.expected_status!r})"
        )


@dataclass(frozen=True)
class Config:
    """The whole configuration: which file (None: built-ins only), defaults, dependencies."""

    path: Path | None
    defaults: BreakerConfig
    dependencies: Mapping[str, Dependency]
    call_timeout: float = DEFAULT_CALL_TIMEOUT

    @property
    def names(self) -> list[str]:
        return sorted(self.dependencies)

    @property
    def origin(self) -> str:
        """Where this configuration came from, for messages."""
        return str(self.path) if self.path is not None else "built-in defaults"

    def dependency(self, name: str) -> Dependency:
        """The dependency called `name`; a UsageError naming the known ones otherwise."""
        try:
            return self.dependencies[name]
        except KeyError as error:
            raise UsageError(
                f"unknown dependency {name!r} (known: {', '.join(self.names)}; "
                f"add [dependencies.{name}] to {self.path or CONFIG_FILE_NAME})"
            ) from error


def find_config_file(
    explicit: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path | None:
    """`--config`, else `$CBCTL_CONFIG`, else ./cbctl.toml, else the user config dir; or None.

    A file that was asked for by name (flag or variable) must exist; the two fallbacks are
    used only when present.
    """
    env = os.environ if environ is None else environ
    if explicit is not None:
        return _must_exist(Path(explicit), "--config")
    if env.get("CBCTL_CONFIG"):
        return _must_exist(Path(env["CBCTL_CONFIG"]), "$CBCTL_CONFIG")
    local = (cwd or Path.cwd()) / CONFIG_FILE_NAME
    if local.is_file():
        return local
    from platformdirs import user_config_dir

    user_file = Path(user_config_dir("cbctl")) / CONFIG_FILE_NAME
    return user_file if user_file.is_file() else None


def _must_exist(path: Path, named_by: str) -> Path:
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"config file {path} (from {named_by}) {what}")
    return path


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Find, read and validate the configuration, with `CBCTL_<NAME>_URL` applied."""
    env = os.environ if environ is None else environ
    found = find_config_file(path, environ=env, cwd=cwd)
    if found is None:
        return parse_config("", path=None, environ=env)
    try:
        text = found.read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"{found}: cannot read config file: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{found}: config file is not UTF-8 text") from error
    return parse_config(text, path=found, environ=env)


def parse_config(
    text: str, *, path: Path | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate TOML text as a cbctl configuration (`path` is only used in messages)."""
    env = os.environ if environ is None else environ
    origin = str(path) if path is not None else "<config>"
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{origin}: invalid TOML: {error}") from error
    except RecursionError as error:
        raise ConfigError(f"{origin}: invalid TOML: arrays or tables nested too deeply") from error
    _reject_unknown(document, {"builtins", "defaults", "dependencies"}, origin, "")
    builtins = document.get("builtins", "dependencies" not in document)
    if not isinstance(builtins, bool):
        raise ConfigError(
            f"{origin}: builtins must be true or false, got {limits.describe(builtins)}"
        )

    defaults_table = _table(document.get("defaults", {}), origin, "defaults")
    _reject_unknown(defaults_table, _DEFAULTS_KEYS, origin, "defaults.")
    defaults = _breaker(defaults_table, BreakerConfig(), origin, "defaults.")
    call_timeout = DEFAULT_CALL_TIMEOUT
    if "call_timeout" in defaults_table:
        call_timeout = _check_seconds(
            defaults_table["call_timeout"], f"{origin}: defaults.call_timeout"
        )

    overrides = _failure_overrides(defaults_table, _NO_OVERRIDES, origin, "defaults.")

    tables = _table(document.get("dependencies", {}), origin, "dependencies")
    dependencies: dict[str, Dependency] = {}
    chosen = [*BUILTIN_URLS] if builtins else []
    for name in [*chosen, *(n for n in tables if n not in chosen)]:
        table = _table(tables.get(name, {}), origin, f"dependencies.{name}")
        dependency = _dependency(name, table, defaults, call_timeout, overrides, origin)
        dependency = replace(dependency, origins=_origins(table, defaults_table, dependency))
        dependencies[name] = _apply_env(dependency, env)
    return Config(
        path=path,
        defaults=defaults,
        dependencies=MappingProxyType(dependencies),
        call_timeout=call_timeout,
    )


def _dependency(
    name: str,
    table: Mapping[str, Any],
    defaults: BreakerConfig,
    call_timeout: float,
    overrides: _FailureOverrides,
    origin: str,
) -> Dependency:
    key = f"dependencies.{name}"
    if not _NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{origin}: [{key}]: a dependency name may use letters, digits, '-' and '_' only"
        )
    kind_value = table.get("kind", name if name in BUILTIN_URLS else None)
    if kind_value is None:
        raise ConfigError(f"{origin}: {key}.kind is missing (one of: {', '.join(KINDS)})")
    if not isinstance(kind_value, str) or kind_value not in KINDS:
        raise ConfigError(
            f"{origin}: {key}.kind: unknown kind {kind_value!r} (known: {', '.join(KINDS)})"
        )
    kind: str = kind_value
    allowed = _COMMON_DEPENDENCY_KEYS | _KIND_KEYS.get(kind, frozenset())
    _reject_unknown(table, allowed, origin, f"{key}.", kind=kind)

    source: UrlSource = "file"
    if "url" in table:
        url = _check_url(kind, table["url"], f"{origin}: {key}.url")
    elif name in BUILTIN_URLS and kind == name:
        url, source = BUILTIN_URLS[name], "builtin"
    else:
        raise ConfigError(f"{origin}: {key}.url is missing (a {kind} dependency needs an address)")

    options: dict[str, Any] = {}
    if "api_key" in table:
        api_key = table["api_key"]
        if not isinstance(api_key, str) or not api_key:
            raise ConfigError(f"{origin}: {key}.api_key must be a non-empty string")
        options["api_key"] = api_key
    if "expected_status" in table:
        options["expected_status"] = _check_status(
            table["expected_status"], f"{origin}: {key}.expected_status"
        )
    if "call_timeout" in table:
        call_timeout = _check_seconds(table["call_timeout"], f"{origin}: {key}.call_timeout")
    overrides = _failure_overrides(table, overrides, origin, f"{key}.")
    if overrides != _NO_OVERRIDES:
        failures, neutral, statuses = overrides
        options["failure_rules"] = rules_for(kind).with_overrides(
            failures=failures, neutral=neutral, failure_statuses=statuses
        )
    return Dependency(
        name=name,
        kind=kind,
        url=url,
        call_timeout=call_timeout,
        breaker=_breaker(table, defaults, origin, f"{key}."),
        source=source,
        **options,
    )


def _origins(
    table: Mapping[str, Any], defaults: Mapping[str, Any], dependency: Dependency
) -> Mapping[str, str]:
    """Where each value of `dependency` came from, as `cbctl config` shows it."""
    own = f"dependencies.{dependency.name}"
    found = {
        key: f"{own}.{key}" if key in table else f"defaults.{key}" if key in defaults else "default"
        for key in (*_BREAKER_INT_KEYS, *_SECONDS_KEYS, *_POLICY_KEYS)
    }
    found["kind"] = f"{own}.kind" if "kind" in table else "built-in"
    found["url"] = f"{own}.url" if "url" in table else "built-in"
    for key in _KIND_KEYS.get(dependency.kind, ()):
        found[key] = f"{own}.{key}" if key in table else "default"
    for key in _FAILURE_KEYS:
        found[key] = (
            f"{own}.{key}" if key in table else f"defaults.{key}" if key in defaults else "default"
        )
    return MappingProxyType(found)


_FailureOverrides = tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...] | None]
_NO_OVERRIDES: Final[_FailureOverrides] = ((), (), None)


def _failure_overrides(
    table: Mapping[str, Any], base: _FailureOverrides, origin: str, prefix: str
) -> _FailureOverrides:
    """`failure_errors` / `neutral_errors` (added to `base`'s) and `failure_statuses` (replacing
    `base`'s), validated: names are import paths, statuses HTTP codes."""
    failures, neutral, statuses = base
    for key in ("failure_errors", "neutral_errors"):
        if key not in table:
            continue
        names = table[key]
        where = f"{origin}: {prefix}{key}"
        if not isinstance(names, list):
            raise ConfigError(
                f"{where} must be an array of exception names, got {limits.describe(names)}"
            )
        for name in names:
            if not isinstance(name, str) or not _ERROR_NAME.fullmatch(name):
                raise ConfigError(
                    f"{where}: {limits.describe(name)} is not an exception's import path "
                    "(e.g. 'psycopg.errors.UniqueViolation')"
                )
        if key == "failure_errors":
            failures = (*failures, *names)
        else:
            neutral = (*neutral, *names)
    if "failure_statuses" in table:
        values = table["failure_statuses"]
        where = f"{origin}: {prefix}failure_statuses"
        if not isinstance(values, list):
            raise ConfigError(
                f"{where} must be an array of HTTP status codes, got {limits.describe(values)}"
            )
        statuses = tuple(_check_status(value, where) for value in values)
    try:
        FailureRules().with_overrides(failures=failures, neutral=neutral)
    except ConfigError as error:
        raise ConfigError(f"{origin}: {prefix.rstrip('.')}: {error}") from error
    return failures, neutral, statuses


def _apply_env(dependency: Dependency, env: Mapping[str, str]) -> Dependency:
    variable = env_var_for(dependency.name)
    url = env.get(variable)
    if not url:
        return dependency
    _check_url(dependency.kind, url, f"${variable}")
    origins = MappingProxyType({**dependency.origins, "url": f"${variable}"})
    return replace(dependency, url=url, source="env", origins=origins)


def _table(value: Any, origin: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(
            f"{origin}: {key} must be a table ([{key}]), got {limits.describe(value)}"
        )
    return value


def _reject_unknown(
    table: Mapping[str, Any],
    known: frozenset[str] | set[str],
    origin: str,
    prefix: str,
    *,
    kind: str | None = None,
) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        scope = f" for kind {kind!r}" if kind else ""
        raise ConfigError(
            f"{origin}: {prefix}{unknown[0]}: unknown key{scope} "
            f"(known: {', '.join(sorted(known))})"
        )


def _breaker(
    table: Mapping[str, Any], base: BreakerConfig, origin: str, prefix: str
) -> BreakerConfig:
    settings: dict[str, Any] = {}
    for key in _BREAKER_INT_KEYS:
        if key in table:
            settings[key] = _check_positive_int(table[key], f"{origin}: {prefix}{key}")
    if "timeout" in table:
        settings["timeout"] = _check_seconds(table["timeout"], f"{origin}: {prefix}timeout")
    for key in ("max_timeout", "slow_call_duration", "window_seconds"):
        if key in table:
            settings[key] = _check_seconds(table[key], f"{origin}: {prefix}{key}")
    for key in ("window_calls", "minimum_calls"):
        if key in table:
            settings[key] = _check_positive_int(table[key], f"{origin}: {prefix}{key}")
    for key in ("backoff_factor", "jitter", "failure_rate_threshold", "slow_call_rate_threshold"):
        if key in table:
            settings[key] = _check_number(table[key], f"{origin}: {prefix}{key}")
    try:
        return replace(base, **settings)
    except ConfigError as error:
        text = str(error)
        if text.partition(" ")[0] in settings:  # "jitter must be ...": one key's problem
            raise ConfigError(f"{origin}: {prefix}{text}") from error
        raise ConfigError(f"{origin}: {prefix.rstrip('.')}: {text}") from error


def _check_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {limits.describe(value)}")
    return float(value)


def _check_positive_int(value: Any, where: str) -> int:
    return limits.count(value, where)


def _check_seconds(value: Any, where: str) -> float:
    return limits.seconds(value, where)


def _check_status(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be an HTTP status code, got {limits.describe(value)}")
    if not 100 <= value <= 599:
        raise ConfigError(f"{where} must be an HTTP status code (100-599), got {value}")
    return value


def _check_url(kind: str, value: Any, where: str) -> str:
    """`value` if it is a URL a `kind` dependency can use; a ConfigError saying why not."""
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a URL string, got {limits.describe(value)}")
    example = " (e.g. tcp://localhost:11211)" if kind == "tcp" else ""
    url = parse_url(
        value,
        where,
        schemes=_SCHEMES[kind],
        error=ConfigError,
        need_host=kind != "postgresql",
        example=example,
        purpose=f"a {kind} dependency",
    )
    if kind == "tcp" and url.port is None:
        raise ConfigError(f"{where}: a tcp URL needs a port (tcp://host:port), got {url.shown!r}")
    return value
