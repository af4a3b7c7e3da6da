"""Client⇄master messages of the job controls: holds, job references (``12_[3-5]``) and
per-user limits (README "Job controls"). Routes: ``server/api_controls.py``."""

from __future__ import annotations

from typing import Annotated

import msgspec

LIMIT_FIELDS = ("max_gpus", "max_pending", "max_time")
_Count = Annotated[int, msgspec.Meta(ge=0, le=10**9)]
_Ref = Annotated[str, msgspec.Meta(max_length=4096)]


class JobIdsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The jobs to hold or release."""

    job_ids: Annotated[list[int], msgspec.Meta(max_length=100_000)]


class ResolveRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Job references to turn into job ids: ``12``, ``12_4``, ``12_[3-5]``."""

    refs: Annotated[list[_Ref], msgspec.Meta(max_length=1000)]


class ResolveReply(msgspec.Struct):
    job_ids: list[int]


class UserLimits(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What one user may use, set by admins; None: no limit.

    ``max_gpus``: GPUs of the user's jobs running (or let into the queue) at once; further
    jobs wait with reason QOSMaxGPUs. ``max_pending``: jobs pending at once (more are
    refused at submit). ``max_time``: the longest time limit, in seconds (a longer one is
    refused at submit; a job without one gets this one).
    """

    max_gpus: _Count | None = None
    max_pending: _Count | None = None
    max_time: _Count | None = None


class LimitsSetRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Set ``user``'s limits (admins): the fields given replace the old ones; ``clear``
    removes all of the user's limits first."""

    user: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    max_gpus: _Count | None = None
    max_pending: _Count | None = None
    max_time: _Count | None = None
    clear: bool = False
    unset: list[str] = msgspec.field(default_factory=list)  # field names to set to no limit


class LimitsReply(msgspec.Struct):
    """Every user's limits (an admin), or the caller's own."""

    limits: dict[str, UserLimits]


def describe_limits(limits: UserLimits | None) -> str:
    """``max_gpus=4 max_pending=100 max_time=1-00:00:00``, or ``no limits``."""
    from mgpu.core.timefmt import format_duration

    if limits is None:
        return "no limits"
    parts = []
    for name in LIMIT_FIELDS:
        value = getattr(limits, name)
        if value is not None:
            parts.append(f"{name}={format_duration(value) if name == 'max_time' else value}")
    return " ".join(parts) or "no limits"
