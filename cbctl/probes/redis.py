"""Redis: `PING` with redis-py; only a `PONG` reply is healthy.

A server that answers LOADING (still reading its dataset), NOAUTH / WRONGPASS (credentials)
or MASTERDOWN (a replica cut off from its master) is up but not usable, so it is a failure.
redis-py's own retries are switched off: the breaker, not the client, decides about retrying.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cbctl.probes import Deadline, ProbeError, cause, refused, scrub, secrets_of, timed_out

if TYPE_CHECKING:
    from cbctl.config import Dependency

__all__ = ["check"]

_NOT_READY_CODES = ("LOADING", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN")
# redis-py turns these replies into exceptions and drops the code from the message; put it back.
_NOT_READY_ERRORS: tuple[type[redis.RedisError], ...] = (
    redis.exceptions.BusyLoadingError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)
_AUTH_ERRORS: tuple[type[redis.RedisError], ...] = (
    redis.AuthenticationError,
    redis.exceptions.AuthorizationError,
    redis.exceptions.NoPermissionError,
)


def _not_ready(error: redis.RedisError, dep: Dependency) -> ProbeError:
    code = {
        redis.exceptions.BusyLoadingError: "LOADING",
        redis.exceptions.MasterDownError: "MASTERDOWN",
        redis.exceptions.ClusterDownError: "CLUSTERDOWN",
        redis.exceptions.TryAgainError: "TRYAGAIN",
    }.get(type(error), "")
    message = _line(error, dep)
    if code and not message.startswith(code):
        message = f"{code} {message}"
    return ProbeError(f"not ready: {message}", "not_ready")


def check(dep: Dependency, timeout: float) -> str:
    deadline = Deadline(timeout)
    budget = deadline.remaining(dep)
    client = redis.Redis.from_url(
        dep.url,
        socket_connect_timeout=budget,
        socket_timeout=budget,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
        client_name="cbctl-probe",
    )
    try:
        answer = client.ping()  # True only for a PONG reply
    except _NOT_READY_ERRORS as error:
        raise _not_ready(error, dep) from cause(error, dep)
    except _AUTH_ERRORS as error:
        raise _auth_problem(_line(error, dep)) from cause(error, dep)
    except redis.TimeoutError as error:
        raise timed_out(timeout, dep) from cause(error, dep)
    except redis.ConnectionError as error:
        raise _connection_problem(error, dep) from cause(error, dep)
    except redis.ResponseError as error:
        message = _line(error, dep)
        if message.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            raise _auth_problem(message) from cause(error, dep)
        if message.startswith(_NOT_READY_CODES):
            raise ProbeError(f"not ready: {message}", "not_ready") from cause(error, dep)
        raise ProbeError(f"unhealthy answer to PING: {message}", "unhealthy") from cause(error, dep)
    except redis.RedisError as error:
        raise ProbeError(f"PING failed: {_line(error, dep)}", "unhealthy") from cause(error, dep)
    finally:
        client.close()
    if answer is not True:
        raise ProbeError(f"unexpected answer to PING: {answer!r:.60}", "unhealthy")
    return "PONG"


def _line(error: Exception, dep: Dependency) -> str:
    return scrub(str(error) or type(error).__name__, secrets_of(dep))


def _auth_problem(message: str) -> ProbeError:
    """NOAUTH (and RESP3's HELLO variant of it) means no password was given at all."""
    if message.startswith("NOAUTH") or "HELLO must be called" in message:
        return ProbeError("authentication failed: the server requires a password (NOAUTH)", "auth")
    return ProbeError(f"authentication failed: {message}", "auth")


def _connection_problem(error: redis.ConnectionError, dep: Dependency) -> ProbeError:
    message = _line(error, dep)
    if "refused" in message.lower():
        return refused(dep)
    if "name or service not known" in message.lower() or "nodename nor servname" in message:
        return ProbeError(f"cannot resolve host of {dep.address}", "unreachable")
    return ProbeError(f"cannot connect to {dep.address}: {message}", "unreachable")
