"""Client calls of the job controls: hold, release, job references (``12_[3-5]``) and
per-user limits. Each takes a :class:`~mgpu.client.client.SimpleClient`; like it, they
return models and never print."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from mgpu.core.api_paths import API
from mgpu.core.control_messages import (
    JobIdsRequest,
    LimitsReply,
    LimitsSetRequest,
    ResolveReply,
    ResolveRequest,
    UserLimits,
)
from mgpu.core.messages import CancelReply, CancelResult

if TYPE_CHECKING:
    from mgpu.client.client import SimpleClient


def hold(client: SimpleClient, job_ids: list[int]) -> list[CancelResult]:
    """Hold pending jobs: they do not start until released. One result per id."""
    data = client._call("POST", f"{API}/jobs/hold",
                        msgspec.json.encode(JobIdsRequest(job_ids=job_ids)))
    return msgspec.json.decode(data, type=CancelReply).results


def release(client: SimpleClient, job_ids: list[int]) -> list[CancelResult]:
    """Release held jobs. One result per id."""
    data = client._call("POST", f"{API}/jobs/release",
                        msgspec.json.encode(JobIdsRequest(job_ids=job_ids)))
    return msgspec.json.decode(data, type=CancelReply).results


def resolve(client: SimpleClient, refs: list[str]) -> list[int]:
    """Job ids of references: ``12`` (every task of array 12 not ended, or job 12),
    ``12_4``, ``12_[3-5]``; :class:`~mgpu.core.errors.NotFound` for an unknown one."""
    data = client._call("POST", f"{API}/jobs/resolve",
                        msgspec.json.encode(ResolveRequest(refs=refs)))
    return msgspec.json.decode(data, type=ResolveReply).job_ids


def limits(client: SimpleClient) -> dict[str, UserLimits]:
    """Every user's limits (an admin), or the caller's own."""
    return msgspec.json.decode(client._call("GET", f"{API}/limits"), type=LimitsReply).limits


def set_limits(client: SimpleClient, req: LimitsSetRequest) -> str:
    """Set a user's limits (admins); the user's limits now, in words."""
    data = client._call("POST", f"{API}/limits", msgspec.json.encode(req))
    reply: dict[str, str] = msgspec.json.decode(data)
    return reply["limits"]
