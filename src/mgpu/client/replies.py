"""The master's replies, read: bodies decoded into typed structs, error replies into the
exception of :mod:`mgpu.core.errors` that their status stands for.

Cheap to import (``mgpu submit`` and ``mgpu srun`` load it): msgspec is imported by
:func:`decode`, the only caller that needs it.
"""

from __future__ import annotations

from mgpu.core.errors import ApiError, error_for_status
from mgpu.utils import plainjson

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")


def error_from_reply(status: int, body: bytes) -> ApiError:
    """The exception for an error reply (``ErrorReply {error, code}``) of ``status``."""
    code = None
    try:
        reply = plainjson.loads(body)
        message = str(reply["error"])
        code = reply.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        message = f"the master answered HTTP {status}"
    return error_for_status(status, message, code if isinstance(code, str) else None)


def unreadable(problem: object) -> ApiError:
    """The error for a reply this client cannot read (most likely another mgpu version)."""
    return ApiError(f"cannot read the master's reply ({problem}); are the master and this "
                    "client the same version of mgpu?", 502)


def decode(data: bytes, kind: type[T]) -> T:
    """``data`` (a reply's JSON) as ``kind``, validated; :func:`unreadable` if it is not."""
    import msgspec

    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as e:
        raise unreadable(e) from None
