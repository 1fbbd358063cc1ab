"""The architecture, enforced: which module may import what, read from the source with `ast`.

- The pure core (state.py: the state machine, clock.py, errors.py, limits.py: the one range of
  every number) imports nothing else of cbctl (state may use errors and limits, clock and
  limits errors), and state.py does no I/O and reads no clock.
- The library core (breaker.py, registry.py, failures.py, journal.py) runs on the pure core and
  each other.
- Only cbctl/cli/ and render.py import typer, click or rich: the library never prints.
- Client libraries (psycopg, redis, qdrant_client, httpx, grpc) are imported at module level only
  by the modules that exist to use them, which nothing imports at module level except each
  other: so `import cbctl`, `cbctl --help` and a rejected probe never pay for them.
  cbctl/failures.py never imports one at all: it classifies their errors by name.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cbctl"

Where = Literal["top", "lazy", "typing"]
"""At import time; inside a function (imported when called); under `if TYPE_CHECKING:`."""


@dataclass(frozen=True)
class Import:
    module: str  # the module the file is in, e.g. "cbctl.state"
    target: str  # what it imports, e.g. "cbctl.errors" or "rich.console"
    where: Where
    line: int

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target} ({self.where})"


def module_name(path: Path) -> str:
    parts = ["cbctl", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_cbctl_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative).is_dir()


def imports_of(source: str, module: str, package: bool = False) -> Iterator[Import]:
    """Every import in `source` (the text of `module`), with where it runs."""

    def visit(node: ast.AST, where: Where) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inner = where
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = "lazy" if where == "top" else where
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from visit_body(child.body, "typing")
                yield from visit_body(child.orelse, where)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, inner, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                base = resolve(child)
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    is_sub = base.startswith("cbctl") and is_cbctl_module(candidate)
                    yield Import(module, candidate if is_sub else base, inner, child.lineno)
            yield from visit(child, inner)

    def visit_body(body: list[ast.stmt], where: Where) -> Iterator[Import]:
        holder = ast.Module(body=body, type_ignores=[])
        yield from visit(holder, where)

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = module.split(".")
        anchor = parts if package else parts[:-1]
        anchor = anchor[: len(anchor) - node.level + 1]
        return ".".join([*anchor, *([node.module] if node.module else [])])

    yield from visit(ast.parse(source), "top")


@functools.cache
def _read_package() -> tuple[Import, ...]:
    found: list[Import] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        found.extend(imports_of(path.read_text(), name, package=path.name == "__init__.py"))
    return tuple(found)


def all_imports() -> list[Import]:
    return list(_read_package())


def top_package(target: str) -> str:
    return target.split(".")[0]


PURE_CORE = {
    "cbctl.errors": set(),
    "cbctl.limits": {"cbctl.errors"},
    "cbctl.clock": {"cbctl.errors"},
    "cbctl.state": {"cbctl.errors", "cbctl.limits"},
}
LIBRARY_CORE = {"cbctl.breaker", "cbctl.registry", "cbctl.failures", "cbctl.journal"}
CORE = {*PURE_CORE, *LIBRARY_CORE}
NO_IO_IN_STATE = {
    "asyncio", "datetime", "io", "logging", "os", "pathlib", "random", "select", "selectors",
    "shutil", "socket", "sqlite3", "subprocess", "tempfile", "threading", "time",
}  # fmt: skip
PRESENTATION = {"typer", "click", "rich"}
CLIENTS = {"psycopg", "psycopg_pool", "redis", "qdrant_client", "httpx", "grpc"}


def may_import_clients_at_top(module: str, client: str) -> bool:
    """The modules that exist to use a client, and are themselves only imported lazily."""
    if module.startswith("cbctl.probes.") and module != "cbctl.probes":
        return True
    return (module, client) in {("cbctl.httpx", "httpx"), ("cbctl.stores.redis", "redis")}


def violations(imports: list[Import]) -> list[str]:
    problems: list[str] = []
    for item in imports:
        target_top = top_package(item.target)
        in_cbctl = target_top == "cbctl"
        if item.module in PURE_CORE and in_cbctl and item.target not in PURE_CORE[item.module]:
            problems.append(f"{item}: the pure core imports nothing else of cbctl")
        if item.module == "cbctl.state" and target_top in NO_IO_IN_STATE:
            problems.append(f"{item}: state.py does no I/O and reads no clock")
        runtime = item.where != "typing"
        if item.module in LIBRARY_CORE and runtime and in_cbctl and item.target not in CORE:
            problems.append(f"{item}: the library core runs on the core alone")
        drawing = item.module.startswith("cbctl.cli") or item.module == "cbctl.render"
        if target_top in PRESENTATION and not drawing:
            problems.append(f"{item}: only cbctl/cli/ and cbctl/render.py draw")
        if target_top in CLIENTS:
            if item.module == "cbctl.failures":
                problems.append(f"{item}: failures.py classifies client errors by name only")
            elif item.where == "top" and not may_import_clients_at_top(item.module, target_top):
                problems.append(f"{item}: import client libraries inside the function using them")
    heavy = {
        item.module
        for item in imports
        if item.where == "top" and top_package(item.target) in CLIENTS
    }
    for item in imports:
        if item.where == "top" and item.target in heavy and item.module not in heavy:
            problems.append(f"{item}: {item.target} loads a client library; import it lazily")
    return problems


def test_the_package_keeps_its_layers() -> None:
    imports = all_imports()
    assert len({item.module for item in imports}) > 30  # the walk really read the package
    assert violations(imports) == []


def test_imports_are_told_apart_by_when_they_run() -> None:
    seen = {(item.module, item.target, item.where) for item in all_imports()}
    assert ("cbctl.render", "rich.live", "lazy") in seen
    assert ("cbctl.stores.redis", "redis", "typing") in seen
    assert ("cbctl.breaker", "cbctl.state", "top") in seen  # `from cbctl import state as machine`


def with_source(module: str, source: str) -> list[Import]:
    """The package's imports with `module`'s source replaced by `source`."""
    others = [item for item in all_imports() if item.module != module]
    return others + list(imports_of(source, module))


@pytest.mark.parametrize(
    ("module", "source", "complaint"),
    [
        ("cbctl.state", "import rich\n", "only cbctl/cli/ and cbctl/render.py draw"),
        ("cbctl.state", "from cbctl.clock import SYSTEM_CLOCK\n", "the pure core imports nothing"),
        ("cbctl.state", "import time\n", "state.py does no I/O"),
        ("cbctl.errors", "from cbctl import state\n", "the pure core imports nothing"),
        ("cbctl.clock", "def f():\n    from cbctl.config import load_config\n", "pure core"),
        ("cbctl.breaker", "from cbctl.stores import sqlite\n", "the library core runs on"),
        ("cbctl.health", "from rich.console import Console\n", "only cbctl/cli/"),
        ("cbctl.fleet", "import httpx\n", "import client libraries inside the function"),
        ("cbctl.registry", "import psycopg\n", "import client libraries inside the function"),
        ("cbctl.failures", "def f():\n    import redis\n", "classifies client errors by name"),
        ("cbctl.probing", "from cbctl.probes import redis\n", "loads a client library"),
        ("cbctl.cli.app", "import cbctl.httpx\n", "loads a client library"),
    ],
)
def test_a_forbidden_import_is_caught(module: str, source: str, complaint: str) -> None:
    found = violations(with_source(module, source))
    assert any(complaint in problem and problem.startswith(module) for problem in found), found


def test_importing_a_client_inside_a_function_is_allowed() -> None:
    source = "def call():\n    import psycopg\n    from rich import print\n"
    assert not [p for p in violations(with_source("cbctl.cli.app", source)) if "psycopg" in p]
