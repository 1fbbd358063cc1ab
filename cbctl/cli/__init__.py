"""The cbctl command line: thin commands over the library (parse, call, render, exit code)."""

from __future__ import annotations

from cbctl.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
