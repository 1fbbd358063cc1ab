"""PostgreSQL: connect with psycopg (bounded) and run `SELECT 1`.

Refused, timed out and authentication failed are told apart, because an operator fixes each
differently (start the server / look at the network / fix the credentials). psycopg's connect
timeout cannot go below 2 s (libpq's rule); the dispatcher's deadline covers shorter limits.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import psycopg

from cbctl.probes import Deadline, ProbeError, cause, refused, scrub, secrets_of, timed_out

if TYPE_CHECKING:
    from cbctl.config import Dependency

__all__ = ["check"]

_SERVER_PREFIX = re.compile(
    r'^(connection failed: )?connection to server at "[^"]*", port \d+ failed: '
)
_AUTH_USER = re.compile(r'password authentication failed for user "([^"]*)"')


def check(dep: Dependency, timeout: float) -> str:
    deadline = Deadline(timeout)
    try:
        budget = deadline.remaining(dep)
        with psycopg.connect(
            dep.url,
            connect_timeout=max(2, math.ceil(budget)),
            options=f"-c statement_timeout={max(1, int(budget * 1000))}",
            autocommit=True,
            application_name="cbctl-probe",
        ) as conn:
            row = conn.execute("SELECT 1").fetchone()
    except psycopg.errors.ConnectionTimeout as error:
        raise timed_out(timeout, dep) from cause(error, dep)
    except psycopg.errors.QueryCanceled as error:
        raise timed_out(timeout, dep) from cause(error, dep)
    except psycopg.OperationalError as error:
        raise _classify(str(error), dep, timeout) from cause(error, dep)
    except psycopg.Error as error:
        problem = ProbeError(f"query failed: {_first_line(str(error), dep)}", "unhealthy")
        raise problem from cause(error, dep)
    if row != (1,):
        raise ProbeError(f"unexpected answer to SELECT 1: {row!r}", "unhealthy")
    return "SELECT 1 ok"


def _first_line(message: str, dep: Dependency) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "no message"
    line = _SERVER_PREFIX.sub("", line).replace("FATAL:  ", "")
    return scrub(line, secrets_of(dep))


def _classify(message: str, dep: Dependency, timeout: float) -> ProbeError:
    if "Connection refused" in message:
        return refused(dep)
    auth = _AUTH_USER.search(message)
    if auth:
        return ProbeError(f"authentication failed for user '{auth.group(1)}'", "auth")
    if "no password supplied" in message:
        return ProbeError("authentication failed: no password supplied", "auth")
    if "timeout expired" in message:
        return timed_out(timeout, dep)
    if "failed to resolve host" in message or "could not translate host name" in message:
        return ProbeError(f"cannot resolve host of {dep.address}", "unreachable")
    return ProbeError(_first_line(message, dep), "unhealthy")
