"""The mutation-testing tool (tests/tools/mutate.py) on a toy module: what it mutates and how it
judges a mutant."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.tools.mutate import Mutant, Outcome, find_mutants, run, sample, summary, survivors_of

TOY = '''"""A toy module."""

from __future__ import annotations

__all__ = ["clamp"]


def clamp(value: int | None, low: int = 0) -> int:
    """Docstring: never mutated."""
    if value is None or not value >= low:
        return low
    total = value + 1
    return total
'''


def mutations(source: str) -> list[str]:
    return [m.mutation.split("  [")[0] for m in find_mutants(source, "toy.py")]


def test_each_operator_family_yields_its_mutants_once() -> None:
    assert sorted(mutations(TOY)) == sorted(
        [
            "is -> is not",
            "None -> True",
            "or -> and",
            "not dropped",
            ">= -> >",
            "return value -> None",
            "0 -> 1",
            "0 -> -1",
            "statement removed",
            "+ -> -",
            "1 -> 2",
            "1 -> 0",
            "return value -> None",
        ]
    )


def test_annotations_docstrings_and_exports_are_left_alone() -> None:
    for mutant in find_mutants(TOY, "toy.py"):
        mutated = mutant.source
        assert '"""Docstring: never mutated."""' in mutated
        assert '__all__ = ["clamp"]' in mutated
        assert "def clamp(value: int | None, low: int = " in mutated


def test_every_mutant_parses_differs_in_one_place_and_keeps_line_numbers() -> None:
    original_lines = TOY.splitlines()
    for mutant in find_mutants(TOY, "toy.py"):
        assert ast.dump(ast.parse(mutant.source)) != ast.dump(ast.parse(TOY))
        lines = mutant.source.splitlines()
        assert len(lines) == len(original_lines)
        changed = [
            n for n, (a, b) in enumerate(zip(original_lines, lines, strict=True), 1) if a != b
        ]
        assert changed == [mutant.line], mutant


def test_a_statement_is_removed_by_putting_pass_in_its_place() -> None:
    (removed,) = [m for m in find_mutants(TOY, "toy.py") if "statement removed" in m.mutation]
    assert removed.line == 12
    assert "    pass\n" in removed.source


def test_the_summary_counts_timeouts_as_detected_and_lists_survivors() -> None:
    outcomes = [
        Outcome("m.py:1:1", "a", "killed", 0.1),
        Outcome("m.py:2:1", "b", "timeout", 0.1),
        Outcome("m.py:3:5", "< -> <=  [x < 1]", "survived", 0.1),
        Outcome("other.py:1:1", "c", "survived", 0.1),
    ]
    text = summary(outcomes, "m.py")
    assert text.splitlines() == [
        "m.py: 3 mutants, 1 killed, 1 survived, 1 timed out: score 66.7 %",
        "  survived  m.py:3:5  < -> <=  [x < 1]",
    ]


def test_a_sample_is_a_repeatable_uniform_subset_in_source_order() -> None:
    mutants = [Mutant("m.py", line, 0, "x", "") for line in range(1, 201)]
    drawn = sample(mutants, 50, seed=3)
    assert len(drawn) == len(set(drawn)) == 50
    assert drawn == sorted(drawn, key=lambda m: m.line)
    assert drawn == sample(mutants, 50, seed=3)
    assert drawn != sample(mutants, 50, seed=4)
    assert {m.line > 100 for m in drawn} == {True, False}, "drawn from the whole module"
    assert sample(mutants, 500, seed=3) == mutants


def test_a_rerun_selects_the_recorded_survivors_by_place_and_mutation() -> None:
    mutants = find_mutants(TOY, "toy.py")
    constant_0 = [m for m in mutants if m.mutation.startswith("0 -> ")]
    assert constant_0[0].where == constant_0[1].where, "two mutants share one place"
    recorded = [
        {"where": constant_0[0].where, "mutation": constant_0[0].mutation, "status": "survived"},
        {"where": constant_0[1].where, "mutation": constant_0[1].mutation, "status": "killed"},
        {"where": "toy.py:99:1", "mutation": "gone", "status": "survived"},
    ]
    assert survivors_of(mutants, recorded) == [constant_0[0]]


@pytest.mark.slow
def test_mutants_run_in_a_private_copy_and_are_judged_by_the_tests(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "toy").mkdir(parents=True)
    (project / "tests").mkdir()
    module = "def double(x):\n    return x * 2\n\n\ndef spin(x):\n    while x:\n        pass\n"
    (project / "toy" / "__init__.py").write_text("")
    (project / "toy" / "calc.py").write_text(module)
    (project / "tests" / "test_calc.py").write_text(
        "from toy.calc import double, spin\n\n\n"
        "def test_double():\n    assert double(3) == 6\n    spin(0)\n"
    )
    source = (project / "toy" / "calc.py").read_text()
    mutants = [
        Mutant("toy/calc.py", 2, 11, "* -> /", source.replace("x * 2", "x / 2")),
        Mutant("toy/calc.py", 2, 15, "2 -> 3", source.replace("x * 2", "x * 2 or 1")),
        Mutant("toy/calc.py", 6, 10, "while 1", source.replace("while x", "while not x")),
    ]
    outcomes = run(
        mutants,
        jobs=1,
        tests=["tests/test_calc.py"],
        timeout=8.0,
        max_examples=5,
        steps=5,
        progress=False,
        root=project,
        copied=("toy", "tests"),
    )
    assert [o.status for o in outcomes] == ["killed", "survived", "timeout"]
    assert (project / "toy" / "calc.py").read_text() == module, "the project was mutated"
