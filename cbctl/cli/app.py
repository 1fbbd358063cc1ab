"""The Typer application, global options, and the one place errors become output and exit codes."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cbctl.errors import CbctlError

__all__ = ["Globals", "app", "globals_of"]


@dataclass(frozen=True)
class Globals:
    """Options given before the command: where the state and the configuration are."""

    state: str | None
    config: Path | None
    debug: bool


class _Group(TyperGroup):
    """The one place errors become output: one line on stderr and the documented exit code.

    CbctlError carries its own exit code (a traceback instead with --debug); a usage error from
    the parser (bad flag, bad value, missing argument) is exit 2, also on one line.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return list(super().parse_args(ctx, args))
        except Exception as error:
            _exit_on_usage_error(ctx, error)
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CbctlError as error:
            _fail(ctx, error, f"cbctl: {error}", error.exit_code)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as error:
            _exit_on_usage_error(ctx, error)
            if hasattr(error, "exit_code") and hasattr(error, "format_message"):
                raise  # the parser's own errors and exits (help, bad parameter) print themselves
            _fail(ctx, error, f"cbctl: internal error: {type(error).__name__}: {error}", 2)


def _fail(ctx: Any, error: BaseException, line: str, code: int) -> None:
    """Print `line` (after the traceback with --debug), scrubbed of secrets and control
    characters, on stderr, and exit with `code`."""
    from cbctl.printable import visible
    from cbctl.redaction import scrub

    if _debug(ctx):
        text = scrub("".join(traceback.format_exception(error)))
        typer.echo("\n".join(visible(each) for each in text.splitlines()), err=True)
    elif code == 2 and line.startswith("cbctl: internal error:"):
        line += " (run with --debug for the traceback)"
    typer.echo(visible(scrub(line)), err=True)
    ctx.exit(code)


def _exit_on_usage_error(ctx: Any, error: Exception) -> None:
    """Print a parser usage error as `cbctl CMD: what is wrong` and exit 2; else return.

    Recognised by shape (exit_code 2, format_message, ctx) because Typer vendors its parser
    privately; asking for help with no arguments is not an error and is left alone.
    """
    if getattr(error, "exit_code", None) != 2 or not hasattr(error, "format_message"):
        return
    if type(error).__name__ == "NoArgsIsHelpError":
        return
    where = getattr(getattr(error, "ctx", None), "command_path", None) or "cbctl"
    from cbctl.printable import visible
    from cbctl.redaction import scrub

    option = getattr(error, "option_name", None)
    if type(error).__name__ == "NoSuchOption" and option in GLOBAL_OPTIONS and where != "cbctl":
        message = f"`{option}` is a global option: put it before the command"
    else:
        message = error.format_message()
    typer.echo(visible(scrub(f"{where}: {message}")), err=True)
    ctx.exit(2)


GLOBAL_OPTIONS = frozenset({"--state", "--config", "--debug"})
"""Options of `cbctl` itself; given after a command they get a hint rather than "no such option"."""


def _debug(ctx: typer.Context) -> bool:
    obj = ctx.obj
    return (isinstance(obj, Globals) and obj.debug) or bool(os.environ.get("CBCTL_DEBUG"))


app = typer.Typer(
    name="cbctl",
    cls=_Group,
    help="Circuit breakers for a local AI stack: probe, watch, reset, serve, simulate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from cbctl import __version__

        typer.echo(f"cbctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            envvar="CBCTL_STATE",
            help="State file path or redis://URL shared by every cbctl process "
            "[default: the user state directory's circuits.db].",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="CBCTL_CONFIG",
            help="cbctl.toml to read [default: ./cbctl.toml, then the user config directory].",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Also show tracebacks of errors (the exit code stays the same)."
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Circuit breakers for Qdrant, PostgreSQL, Redis, llama.cpp and any HTTP/TCP service.

    Example: cbctl simulate outage --timeout 2
    """
    ctx.obj = Globals(state=state, config=config, debug=debug)


def globals_of(ctx: typer.Context) -> Globals:
    """The global options of this invocation (defaults when a command runs on its own)."""
    root_ctx = ctx.find_root()
    obj = root_ctx.obj
    return obj if isinstance(obj, Globals) else Globals(state=None, config=None, debug=False)
