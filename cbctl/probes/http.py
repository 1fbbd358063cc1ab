"""Any HTTP service: `GET url` with httpx; healthy when the status is the expected one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from cbctl.probes import Deadline, ProbeError, cause
from cbctl.probes._httpx import get, prepare, transport_problem

if TYPE_CHECKING:
    from cbctl.config import Dependency

__all__ = ["check", "set_up"]


def set_up(dep: Dependency) -> None:
    """Client set-up, kept out of the probe's latency."""
    prepare(dep.url)


def check(dep: Dependency, timeout: float) -> str:
    deadline = Deadline(timeout)
    try:
        response = get(dep.url, deadline.remaining(dep))
    except httpx.HTTPError as error:
        raise transport_problem(error, dep, timeout) from cause(error, dep)
    described = f"{response.status_code} {response.reason_phrase.lower()}".strip()
    if response.status_code != dep.expected_status:
        raise ProbeError(
            f"unexpected status {described} (expected {dep.expected_status})", "unhealthy"
        )
    return described
