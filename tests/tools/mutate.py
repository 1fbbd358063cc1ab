"""Mutation testing for cbctl's core: which small deliberate bugs do the tests fail to notice?

    python tests/tools/mutate.py cbctl/state.py cbctl/breaker.py [--jobs 1] [--json out.json]
    python tests/tools/mutate.py cbctl/breaker.py --sample 300 --seed 1   # a measured subset
    python tests/tools/mutate.py cbctl/breaker.py --rerun out.json        # its survivors again

Each mutant changes one thing in one module (a comparison, an arithmetic or boolean operator, a
dropped `not`, a constant +-1, True/False/None swapped, a returned value replaced by None, a
statement removed). It is written into a private copy of the project in a temporary directory,
never into the working tree, and the tests run in a subprocess whose PYTHONPATH and working
directory are that copy, so no other process can import it. The copy is checked to be what the
subprocess imports, and the unmutated copy must pass before any mutant is run.

Per mutant the run is bounded: the core's unit tests only (`-m 'not slow'`), stopping at the first
failure, Hypothesis at a small fixed derandomised budget (tests/tools/hypothesis_budget.py), and a
timeout. A mutant is killed when the tests fail, timed out when they hang (also a detection),
and survives when they pass. Not part of the test suite; one job by default, since the machine
is shared.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from queue import Queue

ROOT = Path(__file__).resolve().parents[2]

DEFAULT_TESTS = (
    "tests/test_breaker.py",
    "tests/test_core_details.py",
    "tests/test_store_contract.py",
    "tests/test_concurrency.py",
    "tests/test_registry.py",
    "tests/test_store_mirror.py",
    "tests/test_call_forms.py",
    "tests/test_policies.py",
    "tests/test_metrics.py",
    "tests/test_windows.py",
    "tests/test_time_windows.py",
    "tests/test_holds.py",
    "tests/test_state_file.py",
    "tests/test_failures.py",
    "tests/test_health.py",
    "tests/test_fleet.py",
    "tests/test_config.py",
    "tests/test_errors.py",
    "tests/test_state_machine.py",
)
"""Fast tests first: with -x, most mutants die in the first second."""

DESELECTED = (
    "tests/test_state_machine.py::test_the_machine_finds_a_breaker_that_disagrees_with_its_model",
)
"""Tests of the tests (they need the full Hypothesis budget to find their planted bug)."""

COPIED = ("cbctl", "tests", "pyproject.toml")

_COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BINARY_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
}
_SYMBOLS: dict[type[ast.AST], str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.And: "and",
    ast.Or: "or",
}
_REMOVABLE = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Raise, ast.Delete)
_REMOVABLE += (ast.Continue, ast.Break)


@dataclass(frozen=True, slots=True)
class Mutant:
    """One mutation of one module: where, what, and the whole mutated source."""

    path: str
    line: int
    column: int
    mutation: str
    source: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}:{self.column + 1}"


@dataclass(frozen=True, slots=True)
class Outcome:
    where: str
    mutation: str
    status: str  # "killed" | "survived" | "timeout"
    seconds: float


# -- finding mutations --------------------------------------------------------------------------


def _is_layout(node: ast.AST) -> bool:
    """`__all__`, `__slots__`, a dataclass's `slots=`: layout and exports, not behaviour."""
    if isinstance(node, ast.keyword):
        return node.arg == "slots"
    return isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id in ("__all__", "__slots__") for t in node.targets
    )


def _is_protocol(node: ast.AST) -> bool:
    """A `typing.Protocol` class: its method bodies and defaults never run."""
    return isinstance(node, ast.ClassDef) and any(
        (isinstance(base, ast.Name) and base.id == "Protocol")
        or (isinstance(base, ast.Attribute) and base.attr == "Protocol")
        for base in node.bases
    )


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """Ids of nodes never mutated: annotations (not evaluated), docstrings, f-string parts
    (their positions are unreliable), `__all__` / `__slots__` and dataclasses' `slots=`."""
    skipped: set[int] = set()

    def skip(node: ast.AST | None) -> None:
        if node is not None:
            skipped.update(id(child) for child in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            skip(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            skip(node.returns)
        elif isinstance(node, ast.AnnAssign):
            skip(node.annotation)
        elif isinstance(node, ast.JoinedStr) or _is_layout(node) or _is_protocol(node):
            skip(node)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip(body[0])
    return skipped


def _function_statements(tree: ast.Module) -> set[int]:
    """Ids of statements directly inside a function body (the removable ones)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for child in ast.walk(node):
                if isinstance(child, ast.stmt) and child is not node:
                    inside.add(id(child))
    return inside


def _replacements(node: ast.AST, removable: bool) -> Iterator[tuple[ast.AST, str]]:
    """(replacement node, description) for each mutation of `node` itself."""
    if isinstance(node, ast.Compare):
        for index, op in enumerate(node.ops):
            swap = _COMPARE_SWAPS.get(type(op))
            if swap is not None:
                changed = copy.deepcopy(node)
                changed.ops[index] = swap()
                yield changed, f"{_SYMBOLS[type(op)]} -> {_SYMBOLS[swap]}"
    elif isinstance(node, ast.BinOp | ast.AugAssign):
        swap_op = _BINARY_SWAPS.get(type(node.op))
        if swap_op is not None:
            changed = copy.deepcopy(node)
            changed.op = swap_op()
            yield changed, f"{_SYMBOLS[type(node.op)]} -> {_SYMBOLS[swap_op]}"
    elif isinstance(node, ast.BoolOp):
        other: ast.boolop = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        changed = copy.deepcopy(node)
        changed.op = other
        yield changed, f"{_SYMBOLS[type(node.op)]} -> {_SYMBOLS[type(other)]}"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield copy.deepcopy(node.operand), "not dropped"
    elif isinstance(node, ast.Constant):
        value = node.value
        if value is True or value is False:
            yield ast.Constant(not value), f"{value} -> {not value}"
        elif value is None:
            yield ast.Constant(True), "None -> True"
        elif isinstance(value, int):
            yield ast.Constant(value + 1), f"{value} -> {value + 1}"
            yield ast.Constant(value - 1), f"{value} -> {value - 1}"
        elif isinstance(value, float):
            yield ast.Constant(value + 1), f"{value} -> {value + 1}"
    returned = node.value if isinstance(node, ast.Return) else None
    if returned is not None and not (isinstance(returned, ast.Constant) and returned.value is None):
        yield ast.Return(ast.Constant(None)), "return value -> None"
    docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    if removable and isinstance(node, _REMOVABLE) and not docstring:
        yield ast.Pass(), "statement removed"


def find_mutants(source: str, path: str) -> list[Mutant]:
    """Every mutant of `source`, in source order; each one's source is checked to parse and to
    differ from the original."""
    tree = ast.parse(source)
    original = ast.dump(tree)
    skipped = _skipped_nodes(tree)
    removable = _function_statements(tree)
    data = source.encode()
    line_starts = [0]
    for line in data.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    found: list[Mutant] = []
    for node in ast.walk(tree):
        if id(node) in skipped or not hasattr(node, "end_col_offset"):
            continue
        for replacement, description in _replacements(node, id(node) in removable):
            start = line_starts[node.lineno - 1] + node.col_offset
            end = line_starts[(node.end_lineno or node.lineno) - 1] + (node.end_col_offset or 0)
            text = ast.unparse(replacement)
            if isinstance(node, ast.expr):
                text = f"({text})"
            mutated = (data[:start] + text.encode() + data[end:]).decode()
            try:
                changed = ast.dump(ast.parse(mutated))
            except SyntaxError:
                continue
            if changed == original:
                continue
            segment = ast.get_source_segment(source, node) or ""
            shown = segment.splitlines()[0] if segment else ""
            found.append(
                Mutant(path, node.lineno, node.col_offset, f"{description}  [{shown}]", mutated)
            )
    found.sort(key=lambda m: (m.line, m.column, m.mutation))
    return found


def sample(mutants: Sequence[Mutant], count: int, seed: int) -> list[Mutant]:
    """`count` mutants drawn uniformly without replacement (the same ones for the same seed and
    source), kept in source order: a module too big to run whole is measured on a subset."""
    if count >= len(mutants):
        return list(mutants)
    chosen = sorted(random.Random(seed).sample(range(len(mutants)), count))
    return [mutants[index] for index in chosen]


def survivors_of(mutants: Sequence[Mutant], recorded: Sequence[dict[str, object]]) -> list[Mutant]:
    """The mutants an earlier run's JSON records as survived (same place, same mutation)."""
    wanted = {(o["where"], o["mutation"]) for o in recorded if o["status"] == "survived"}
    return [m for m in mutants if (m.where, m.mutation) in wanted]


# -- running ------------------------------------------------------------------------------------


def make_copy(into: Path, root: Path = ROOT, copied: Sequence[str] = COPIED) -> Path:
    """A private copy of the project (package, tests, pytest settings) to mutate."""
    into.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.pyc")
    for name in copied:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=ignore)
        else:
            shutil.copy2(source, into / name)
    return into


def environment(workdir: Path, max_examples: int, steps: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(workdir)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutant must never be served from a stale .pyc
    env["CBCTL_MUTATION_MAX_EXAMPLES"] = str(max_examples)
    env["CBCTL_MUTATION_STEPS"] = str(steps)
    return env


def check_isolation(workdir: Path, env: dict[str, str], modules: Sequence[str]) -> None:
    """Fail loudly unless the subprocess imports the copy's modules, not the working tree's."""
    names = [module.removesuffix(".py").replace("/", ".") for module in modules]
    code = (
        "import importlib, sys\nfor n in sys.argv[1:]:\n print(importlib.import_module(n).__file__)"
    )
    found = subprocess.run(
        [sys.executable, "-c", code, *names],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name, path in zip(names, found, strict=True):
        if not Path(path).resolve().is_relative_to(workdir.resolve()):
            raise SystemExit(f"mutate: {name} is imported from {path}, not from the copy")


def run_tests(workdir: Path, env: dict[str, str], tests: Sequence[str], timeout: float) -> str:
    """'passed', 'failed' or 'timeout' for the selected tests in `workdir`.

    The first file runs alone, then the others: most mutants die in the first file, and a
    pytest run that collects only it starts in a fraction of the time. `timeout` is the total.
    """
    deadline = time.monotonic() + timeout
    stages = [tests[:1], tests[1:]] if len(tests) > 1 else [tests]
    for stage in stages:
        result = _run_pytest(workdir, env, stage, deadline - time.monotonic())
        if result != "passed":
            return result
    return "passed"


def _run_pytest(workdir: Path, env: dict[str, str], tests: Sequence[str], timeout: float) -> str:
    if timeout <= 0:
        return "timeout"
    command = [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-m", "not slow"]
    command += ["-p", "no:cacheprovider"]
    if not any("hypothesis" in (workdir / test).read_text() for test in tests):
        command += ["-p", "no:hypothesispytest"]  # importing Hypothesis alone takes ~1 s
    elif (workdir / "tests" / "tools" / "hypothesis_budget.py").exists():
        command += ["-p", "tests.tools.hypothesis_budget"]
    command += ["-o", "addopts=", "--timeout", str(int(timeout) + 1)]
    command += [f"--deselect={test}" for test in DESELECTED]
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return "timeout"
    # 5: nothing collected (every test of the stage deselected): nothing failed either.
    return "passed" if code in (0, 5) else "failed"


def run(
    mutants: Sequence[Mutant],
    *,
    jobs: int,
    tests: Sequence[str],
    timeout: float | None,
    max_examples: int,
    steps: int,
    progress: bool = True,
    root: Path = ROOT,
    copied: Sequence[str] = COPIED,
) -> list[Outcome]:
    """Run every mutant in private copies (one per job) and return their outcomes in order."""
    with tempfile.TemporaryDirectory(prefix="cbctl-mutate-") as scratch:
        copies: Queue[Path] = Queue()
        workdirs = [make_copy(Path(scratch) / f"job{index}", root, copied) for index in range(jobs)]
        env0 = environment(workdirs[0], max_examples, steps)
        check_isolation(workdirs[0], env0, sorted({m.path for m in mutants}))
        started = time.monotonic()
        if run_tests(workdirs[0], env0, tests, 600.0) != "passed":
            raise SystemExit("mutate: the tests fail on the unmutated copy; fix that first")
        baseline = time.monotonic() - started
        limit = timeout if timeout is not None else max(20.0, 4 * baseline)
        if progress:
            print(f"baseline {baseline:.1f} s, timeout {limit:.0f} s per mutant", file=sys.stderr)
        for workdir in workdirs:
            copies.put(workdir)
        done = 0
        lock = threading.Lock()

        def one(mutant: Mutant) -> Outcome:
            nonlocal done
            workdir = copies.get()
            target = workdir / mutant.path
            pristine = target.read_text()
            began = time.monotonic()
            try:
                target.write_text(mutant.source)
                env = environment(workdir, max_examples, steps)
                result = run_tests(workdir, env, tests, limit)
            finally:
                target.write_text(pristine)
                copies.put(workdir)
            status = {"passed": "survived", "failed": "killed"}.get(result, result)
            outcome = Outcome(mutant.where, mutant.mutation, status, time.monotonic() - began)
            with lock:
                done += 1
                if progress:
                    print(
                        f"[{done}/{len(mutants)}] {status:8} {mutant.where} {mutant.mutation}",
                        file=sys.stderr,
                    )
            return outcome

        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            return list(pool.map(one, mutants))
        finally:
            pool.shutdown(cancel_futures=True)  # on Ctrl-C / SIGTERM: finish running ones only


def summary(outcomes: Sequence[Outcome], path: str) -> str:
    mine = [o for o in outcomes if o.where.startswith(f"{path}:")]
    killed = sum(o.status == "killed" for o in mine)
    timeouts = sum(o.status == "timeout" for o in mine)
    survivors = [o for o in mine if o.status == "survived"]
    score = 100.0 * (killed + timeouts) / len(mine) if mine else 100.0
    lines = [
        f"{path}: {len(mine)} mutants, {killed} killed, {len(survivors)} survived, "
        f"{timeouts} timed out: score {score:.1f} %"
    ]
    lines += [f"  survived  {o.where}  {o.mutation}" for o in survivors]
    return "\n".join(lines)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so the temporary copies are removed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mutate.py",
        description="Mutation testing of cbctl modules in a private copy of the project.",
        epilog="example: python tests/tools/mutate.py cbctl/state.py --json /tmp/state.json",
    )
    parser.add_argument("modules", nargs="+", help="module paths relative to the project root")
    parser.add_argument(
        "--jobs", type=int, default=1, help="parallel runs (default 1: the machine is shared)"
    )
    parser.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS), help="test files")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default 4x baseline)")
    parser.add_argument("--max-examples", type=int, default=20, help="Hypothesis examples")
    parser.add_argument("--steps", type=int, default=30, help="Hypothesis stateful steps")
    parser.add_argument("--line", type=int, action="append", help="only mutants on these lines")
    parser.add_argument("--sample", type=int, help="only this many mutants, drawn at random")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("--rerun", type=Path, help="only the survivors recorded in this JSON")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--json", type=Path, help="write every outcome here as JSON")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    mutants: list[Mutant] = []
    for module in args.modules:
        path = Path(module).as_posix()
        mutants += find_mutants((ROOT / path).read_text(), path)
    if args.line:
        mutants = [m for m in mutants if m.line in args.line]
    if args.rerun:
        mutants = survivors_of(mutants, json.loads(args.rerun.read_text()))
    if args.sample is not None:
        if args.sample < 1:
            parser.error("--sample must be at least 1")
        mutants = sample(mutants, args.sample, args.seed)
    if args.list:
        for mutant in mutants:
            print(f"{mutant.where}  {mutant.mutation}")
        return 0
    outcomes = run(
        mutants,
        jobs=args.jobs,
        tests=args.tests,
        timeout=args.timeout,
        max_examples=args.max_examples,
        steps=args.steps,
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    for module in args.modules:
        print(summary(outcomes, Path(module).as_posix()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
