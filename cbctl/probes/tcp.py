"""Any TCP service: healthy when a connection to `tcp://host:port` is accepted in time."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cbctl.probes import Deadline, ProbeError, cause, refused, timed_out

if TYPE_CHECKING:
    from cbctl.config import Dependency

__all__ = ["check"]


def check(dep: Dependency, timeout: float) -> str:
    parts = urlsplit(dep.url)
    host, port = parts.hostname or "localhost", parts.port
    if port is None:
        raise ProbeError(f"no port in {dep.display_url}", "unhealthy")
    deadline = Deadline(timeout)
    try:
        with socket.create_connection((host, port), timeout=deadline.remaining(dep)):
            pass
    except ConnectionRefusedError as error:
        raise refused(dep) from cause(error, dep)
    except TimeoutError as error:
        raise timed_out(timeout, dep) from cause(error, dep)
    except socket.gaierror as error:
        problem = ProbeError(f"cannot resolve host of {dep.address}", "unreachable")
        raise problem from cause(error, dep)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        problem = ProbeError(f"cannot connect to {dep.address}: {reason}", "unreachable")
        raise problem from cause(error, dep)
    return "connected"
