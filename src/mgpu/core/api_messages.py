"""The client⇄master API: HTTP/1.1 with JSON bodies under ``/api/v1/``, one struct each.

* client → master: request bodies (``*Request``), decoded strictly (unknown fields refused).
* master → client: replies (``*Reply`` and the records they carry), and the status and end
  frames of a job's output stream.

Master⇄node messages are in :mod:`mgpu.core.messages`, which re-exports these names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from mgpu.core.models import JobSpec, SimpleJob

# The version of both protocols (this API and the node's): a node of another version is
# refused when it registers, and clients see it in /api/v1/health.
# 2: a frame may carry a list of messages; 3: NodeHealth, JobInputAck; 4: NodeLog
PROTOCOL_VERSION = 4

UserName = Annotated[str, msgspec.Meta(min_length=1, max_length=64,
                                       pattern=r"^[A-Za-z0-9_][A-Za-z0-9._@-]*$")]


# ---------------------------------------------------------------- client → master (JSON)


class SubmitRequest(msgspec.Struct, forbid_unknown_fields=True):
    jobs: list[JobSpec]


class CancelRequest(msgspec.Struct, forbid_unknown_fields=True):
    job_ids: list[int]


class WaitRequest(msgspec.Struct, forbid_unknown_fields=True):
    job_ids: list[int]
    timeout: float = 30.0


class SignalRequest(msgspec.Struct, forbid_unknown_fields=True):
    signum: int


class ResizeRequest(msgspec.Struct, forbid_unknown_fields=True):
    rows: int
    cols: int


class TokenCreateRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A new token for ``user`` (a Unix login name), an admin's when ``admin``."""

    user: UserName
    admin: bool = False


class TokenRevokeRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Revoke the token ``id``, or every token of ``user`` (exactly one of them)."""

    id: int | None = None
    user: str | None = None


# ---------------------------------------------------------------- master → client (JSON)


class SubmitReply(msgspec.Struct):
    job_ids: list[int]


class JobListReply(msgspec.Struct):
    jobs: list[SimpleJob]


class CancelResult(msgspec.Struct, omit_defaults=True):
    job_id: int
    ok: bool
    state: str | None = None
    error: str | None = None
    code: str | None = None  # why not: "not_found", "forbidden" or "ended"


class CancelReply(msgspec.Struct):
    results: list[CancelResult]


class ErrorReply(msgspec.Struct):
    error: str
    code: str = "bad_request"


class HealthReply(msgspec.Struct):
    status: str
    version: str
    protocol: int = PROTOCOL_VERSION


class WhoAmIReply(msgspec.Struct):
    user: str
    admin: bool


class TokenCreated(msgspec.Struct):
    """A new token: ``token`` is shown this once (the master keeps only its digest)."""

    id: int
    user: str
    admin: bool
    token: str


class TokenInfo(msgspec.Struct):
    id: int
    user: str
    admin: bool
    created_at: datetime


class TokenListReply(msgspec.Struct):
    tokens: list[TokenInfo]


class DrainRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /nodes/NODE/drain``: why (shown in ``mgpu nodes``)."""

    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class DrainReply(msgspec.Struct):
    """A node drained (or resumed): how many jobs still run there."""

    node_id: str
    draining: bool
    running_jobs: int = 0
    registered: bool = True  # False: drained ahead of its first join


class PoolInfo(msgspec.Struct):
    """A node pool (server/pools.py): its bounds, its nodes, what it asked for."""

    name: str
    min_nodes: int
    max_nodes: int
    gpus_per_node: int
    nodes: list[str] = msgspec.field(default_factory=list)
    requested: int = 0  # nodes asked for that have not joined yet
    releasing: list[str] = msgspec.field(default_factory=list)


class NodeCredentialReset(msgspec.Struct):
    """A node's credential was forgotten: its next join (with the join secret) gets a new one."""

    node_id: str


class TokenRevokeReply(msgspec.Struct):
    revoked: list[int]


class AuditEvent(msgspec.Struct):
    """One entry of the audit log: who did what (``action``), to what (``detail``), when."""

    id: int
    time: datetime
    user: str
    action: str
    detail: str


class EventListReply(msgspec.Struct):
    events: list[AuditEvent]


class OutputEnd(msgspec.Struct):
    """The last frame of an output stream: how the job ended."""

    state: str
    exit_code: int | None
    reason: str | None = None
    started: bool = True


class OutputStatus(msgspec.Struct):
    """A ``STREAM_STATUS`` frame: where the job is, sent when it changes (``status=1``)."""

    state: str
    node: str | None
    gpu_ids: list[int]
    gpus: int
    ahead: int  # pending jobs ahead of it in the queue
