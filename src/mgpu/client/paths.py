"""The paths of the master's HTTP API, as a client asks for them: the ``/api/v1`` prefix
and the query strings, percent-encoded without ``urllib.parse`` (start-up cost).
"""

from __future__ import annotations

from mgpu.core.api_paths import API

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable

    from mgpu.core.models import JobState

__all__ = ["API", "jobs_path", "quote"]


def jobs_path(states: Iterable[JobState | str] | None, user: str | None, all: bool) -> str:
    """``GET`` path of the job list: ``states`` (None: the master's default), one ``user``'s
    jobs, or ``all`` (ended ones too)."""
    params: list[tuple[str, str]] = []
    if states is not None:
        params.append(("state", ",".join(str(s) for s in states)))
    if user:
        params.append(("user", user))
    if all:
        params.append(("all", "1"))
    path = f"{API}/jobs"
    if params:
        path += "?" + "&".join(f"{k}={quote(v)}" for k, v in params)
    return path


UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def quote(text: str) -> str:
    """``text`` percent-encoded for a query (as ``urllib.parse.quote(text, safe="")``;
    urllib.parse would cost ``mgpu queue`` 11 ms of start-up, through re and ipaddress)."""
    return "".join(chr(b) if b in UNRESERVED else f"%{b:02X}" for b in text.encode())
