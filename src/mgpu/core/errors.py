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
"""

from __future__ import annotations


class MgpuError(Exception):
    """An error with a message meant for the user and the exit code to leave with."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(MgpuError):
    exit_code = 2


class ConfigError(MgpuError):
    exit_code = 2


class ConnectionFailed(MgpuError):
    exit_code = 3


class ApiError(MgpuError):
    """The master answered with an error status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class NotFound(ApiError):
    exit_code = 4

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message, status)


class Rejected(ApiError):
    exit_code = 5

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message, status)


class Unauthorized(ApiError):
    exit_code = 6

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message, status)


class Forbidden(ApiError):
    exit_code = 6

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message, status)


class InvalidTransition(MgpuError):
    def __init__(self, job_id: int, frm: str, to: str) -> None:
        super().__init__(f"job {job_id} cannot go from {frm} to {to}")
        self.job_id = job_id
        self.frm = frm
        self.to = to


class StoreError(MgpuError):
    """The master's database could not be read or written; ``full``: for want of room."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full
