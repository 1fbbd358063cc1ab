"""`cbctl config`: the dependencies as cbctl resolved them, and where each value came from."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cbctl.cli.app import app, globals_of

if TYPE_CHECKING:
    from cbctl.config import Config


@app.command("config")
def show_config(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the resolved configuration as JSON on stdout.")
    ] = False,
) -> None:
    """Show the resolved dependencies: kind, url (password hidden), breaker settings, sources.

    Each value says where it came from: dependencies.NAME.KEY or defaults.KEY in the file,
    $CBCTL_NAME_URL, built-in, or default. A file with [dependencies] replaces the built-in
    four unless it sets `builtins = true` at the top.

    \b
    Example:
      cbctl --config ./cbctl.toml config --json
    """
    from cbctl.config import load_config

    resolved = describe(load_config(globals_of(ctx).config))
    if as_json:
        typer.echo(json.dumps(resolved, indent=2))
        return
    from cbctl.render import config_table, is_plain, make_console

    console = make_console()
    console.print(config_table(resolved, plain=is_plain(console)))


def describe(config: Config) -> dict[str, Any]:
    """The `cbctl config --json` document: no secret in it (urls redacted, api keys `***`)."""
    dependencies = []
    for name in config.names:
        dep = config.dependencies[name]
        entry: dict[str, Any] = {
            "name": name,
            "kind": dep.kind,
            "url": dep.display_url,
            **dep.breaker.as_dict(),
            "call_timeout": dep.call_timeout,  # the probe's, and from_config breakers'
        }
        if dep.kind == "qdrant":
            entry["api_key"] = "***" if dep.api_key else None
        if dep.kind == "http":
            entry["expected_status"] = dep.expected_status
        rules = dep.failure_rules
        if rules is not None:  # the file changed the kind's error classification
            entry["failure_errors"] = sorted(n for n, d in rules.user.items() if d == "failure")
            entry["neutral_errors"] = sorted(n for n, d in rules.user.items() if d == "neutral")
            entry["failure_statuses"] = sorted(rules.failure_statuses)
        entry["from"] = {key: dep.origins.get(key, "default") for key in entry if key != "name"}
        dependencies.append(entry)
    return {"file": None if config.path is None else str(config.path), "dependencies": dependencies}
