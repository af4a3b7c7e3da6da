"""The client's scheduling calls (``explain``, ``shares``) and their views.

Functions over a :class:`~mgpu.client.client.SimpleClient` (kept out of ``client.py``, which
is at its size limit): typed calls that never print, and the text the ``mgpu`` commands
show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from mgpu.client.tables import table
from mgpu.core.api_paths import API
from mgpu.core.sched_messages import ExplainReply, ShareListReply, ShareSetRequest

if TYPE_CHECKING:
    from mgpu.client.client import SimpleClient


def explain(client: SimpleClient, job_id: int) -> ExplainReply:
    """Why job ``job_id`` waits: its reason code, priority factors, place in line and
    expected start, with ``lines`` saying the same in words."""
    data = client._call("GET", f"{API}/jobs/{int(job_id)}/explain")
    return msgspec.json.decode(data, type=ExplainReply)


def shares(client: SimpleClient) -> ShareListReply:
    """Every user's shares, decayed usage and fair-share factor."""
    return msgspec.json.decode(client._call("GET", f"{API}/shares"), type=ShareListReply)


def set_share(client: SimpleClient, user: str, count: float) -> ShareListReply:
    """Give ``user`` ``count`` shares (admins only); the shares after."""
    body = msgspec.json.encode(ShareSetRequest(user=user, shares=count))
    return msgspec.json.decode(client._call("POST", f"{API}/shares", body),
                               type=ShareListReply)


def shares_table(reply: ShareListReply) -> str:
    """``mgpu share list``: USER SHARES USAGE(GPU-h) FAIRSHARE PENDING RUNNING."""
    rows = [(u.user, f"{u.shares:g}", f"{u.usage_gpu_hours:.2f}", f"{u.fair_share:.3f}",
             str(u.pending), str(u.running_gpus)) for u in reply.users]
    return table(("USER", "SHARES", "USAGE(GPU-h)", "FAIRSHARE", "PENDING", "RUNNING_GPUS"),
                 rows, right=(1, 2, 3, 4, 5))


def start_table(jobs: list[dict[str, Any]], now: float) -> str:
    """``mgpu queue --start``: the pending jobs with their expected start (from the backfill
    plan) or ``N/A``, like ``squeue --start``."""
    from datetime import datetime

    from mgpu.core.timefmt import format_elapsed

    rows = []
    for j in jobs:
        if j["state"] != "pending":
            continue
        start = j.get("expected_start")
        if start:
            at = datetime.fromisoformat(start).astimezone()
            when = f"{at:%Y-%m-%d %H:%M:%S} (in {format_elapsed(at.timestamp() - now)})"
        else:
            when = "N/A"
        rows.append((str(j["id"]), j["name"], j["user"], str(j["gpus"]), when,
                     j.get("pending_reason") or "-"))
    return table(("ID", "NAME", "USER", "GPUS", "START_TIME", "REASON"), rows, right=(0, 3))
