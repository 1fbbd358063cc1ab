"""cbctl: a fast, correct circuit-breaker library and an operations CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cbctl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
