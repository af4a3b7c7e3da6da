"""The client⇄master messages of scheduling: ``mgpu explain`` and ``mgpu share``.

Routes (``server/api_sched.py``): ``GET /api/v1/jobs/{id}/explain`` (:class:`ExplainReply`),
``GET /api/v1/shares`` (:class:`ShareListReply`), ``POST /api/v1/shares``
(:class:`ShareSetRequest`, admins; replies with the new :class:`ShareListReply`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from mgpu.core.api_messages import UserName

MAX_SHARES = 1_000_000.0


class ShareSetRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Give ``user`` this many shares (1 is everyone's default; 0: only what no one else
    wants)."""

    user: UserName
    shares: Annotated[float, msgspec.Meta(ge=0, le=MAX_SHARES)]


class ShareInfo(msgspec.Struct, kw_only=True):
    """One user's fair share: shares, decayed usage, and the factor (0 to 1) it gives."""

    user: str
    shares: float
    usage_gpu_hours: float  # decayed to now with the half-life
    fair_share: float  # 1: used nothing; 0.5: used exactly their share; towards 0 above it
    pending: int = 0  # their pending jobs
    running_gpus: int = 0


class ShareListReply(msgspec.Struct, kw_only=True):
    users: list[ShareInfo]
    half_life_s: float


class PriorityInfo(msgspec.Struct, kw_only=True):
    """A pending job's priority now and the weighted factors it is the sum of."""

    priority: float
    age: float
    fair_share: float
    job: float


class ExplainReply(msgspec.Struct, kw_only=True):
    """Why a job waits (``mgpu explain``): the facts, and ``lines``, the same in words."""

    job_id: int
    state: str
    pending_reason: str | None = None  # a core/scheduler.PendingReason value
    reason: str | None = None
    priority: PriorityInfo | None = None
    ahead: int | None = None  # pending jobs before it in priority order
    pending: int = 0  # pending jobs in all
    expected_start: datetime | None = None  # from the backfill plan, when it has one
    held_for: int | None = None  # Reserved: the job the GPUs it could use are held for
    share: ShareInfo | None = None  # its user's
    lines: list[str] = msgspec.field(default_factory=list)
