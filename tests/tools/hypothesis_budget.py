"""A pytest plugin for mutation runs: each Hypothesis test gets a small, fixed, derandomised budget.

A mutant is run against the same tests many times over, so each run must be short and repeatable:
a fixed number of examples, the same examples every time, no database (runs must not teach each
other) and no shrinking (a failure is all a mutation run needs). Loaded with
`-p tests.tools.hypothesis_budget`; the budget comes from `CBCTL_MUTATION_MAX_EXAMPLES` and
`CBCTL_MUTATION_STEPS`.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import Phase, settings, stateful

MAX_EXAMPLES = int(os.environ.get("CBCTL_MUTATION_MAX_EXAMPLES", "20"))
STEPS = int(os.environ.get("CBCTL_MUTATION_STEPS", "30"))


def bounded(original: settings | None) -> settings:
    """`original` with at most the budget's examples and steps, derandomised, never shrinking."""
    base = original if original is not None else settings.default
    return settings(
        base,
        max_examples=min(base.max_examples, MAX_EXAMPLES),
        stateful_step_count=min(base.stateful_step_count, STEPS),
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
    )


_run_state_machine = stateful.run_state_machine_as_test


def _bounded_run_state_machine(
    state_machine_factory: Any, *, settings: settings | None = None, _min_steps: int = 0
) -> None:
    _run_state_machine(state_machine_factory, settings=bounded(settings), _min_steps=_min_steps)


# Stateful test cases call this module global from their runTest, and test modules imported
# after this plugin pick up the bounded version by name.
stateful.run_state_machine_as_test = _bounded_run_state_machine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        test = getattr(item, "obj", None)
        current = getattr(test, "_hypothesis_internal_use_settings", None)
        if current is not None:
            test._hypothesis_internal_use_settings = bounded(current)  # type: ignore[union-attr]
