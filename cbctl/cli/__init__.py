"""The cbctl command line: thin commands over the library (parse, call, render, exit code)."""

from __future__ import annotations

from cbctl.cli import events as events
from cbctl.cli import forget as forget
from cbctl.cli import hold as hold
from cbctl.cli import probe as probe
from cbctl.cli import proxy as proxy
from cbctl.cli import reset as reset
from cbctl.cli import serve as serve
from cbctl.cli import show_config as show_config
from cbctl.cli import simulate as simulate
from cbctl.cli import status as status
from cbctl.cli import watch as watch
from cbctl.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
