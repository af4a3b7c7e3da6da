"""One exception tree for everything mgpu reports to a user.

::

    MgpuError                      exit 1   anything mgpu can explain to a user
    ├── UsageError                 exit 2   bad arguments or bad request content
    ├── ConfigError                exit 2   a config file or variable that cannot be used
    ├── ConnectionFailed           exit 3   the master cannot be reached
    ├── ApiError                   exit 1   the master answered with an error (carries status)
    │   ├── NotFound               exit 4   an unknown job id
    │   ├── Rejected               exit 5   a request the master refuses (e.g. too many GPUs)
    │   ├── Unauthorized           exit 6   no token, or one the master does not accept (401)
    │   └── Forbidden              exit 6   a token that may not do this (403: not your job)
    ├── InvalidTransition          exit 1   a job state change the state machine forbids
    └── StoreError                 exit 1   the database cannot be written (full disk, ...)

``cli.main`` catches ``MgpuError`` once, prints ``error: <message>`` and exits with
``exit_code``.

Each class also carries the HTTP status and ``ErrorReply.code`` the master answers it with
(``status``, ``code``: the one table of both directions). The master replies to an error
``e`` with ``e.status`` and ``e.code`` (an ``ApiError`` may carry a status of its own, e.g.
408); the client turns a status back into an exception with :func:`error_for_status`.

=====================  =======  ================  ==================================
class                  status   code              back on the client
=====================  =======  ================  ==================================
MgpuError (any other)  400      ``error``         ApiError
UsageError             400      ``bad_request``   ApiError
StoreError             507      ``store``         ApiError
ApiError               its own  ``error``         ApiError (with that status)
NotFound               404      ``not_found``     NotFound
Rejected               422      ``rejected``      Rejected
Unauthorized           401      ``unauthorized``  Unauthorized
Forbidden              403      ``forbidden``     Forbidden
=====================  =======  ================  ==================================
"""

from __future__ import annotations


class MgpuError(Exception):
    """An error with a message meant for the user and the exit code to leave with."""

    exit_code = 1
    status = 400  # the HTTP status the master answers it with
    code = "error"  # ErrorReply.code

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(MgpuError):
    exit_code = 2
    code = "bad_request"


class ConfigError(MgpuError):
    exit_code = 2


class ConnectionFailed(MgpuError):
    exit_code = 3


class ApiError(MgpuError):
    """The master answered with an error status: its class's, or ``status``."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(ApiError):
    exit_code = 4
    status = 404
    code = "not_found"


class Rejected(ApiError):
    exit_code = 5
    status = 422
    code = "rejected"


class Unauthorized(ApiError):
    exit_code = 6
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    exit_code = 6
    status = 403
    code = "forbidden"


class UnknownPartition(ApiError):
    """``-p NAME`` names no partition of the registered nodes: a mistake in the command
    line (exit 2, as a usage error), which only the master can tell."""

    exit_code = 2
    status = 400
    code = "unknown_partition"


class InvalidTransition(MgpuError):
    def __init__(self, job_id: int, frm: str, to: str) -> None:
        super().__init__(f"job {job_id} cannot go from {frm} to {to}")
        self.job_id = job_id
        self.frm = frm
        self.to = to


class StoreError(MgpuError):
    """The master's database could not be read or written; ``full``: for want of room."""

    status = 507
    code = "store"

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


# The statuses a client turns back into a class of their own; any other is an ApiError.
_BY_STATUS: dict[int, type[ApiError]] = {
    kind.status: kind for kind in (NotFound, Rejected, Unauthorized, Forbidden)
}


# Codes that name a class of their own where the status alone does not.
_BY_CODE: dict[str, type[ApiError]] = {UnknownPartition.code: UnknownPartition}


def error_for_status(status: int, message: str, code: str | None = None) -> ApiError:
    """The exception a client raises for the master's error reply of ``status`` (and
    ``code``, the reply's, where it names a class of its own)."""
    by_code = _BY_CODE.get(code or "")
    if by_code is not None and by_code.status == status:
        return by_code(message)
    kind = _BY_STATUS.get(status)
    return ApiError(message, status) if kind is None else kind(message)
