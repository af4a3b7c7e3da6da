"""What the master's parts see of the running master: :class:`Context`.

The routes (``api.py``, ``admin.py``, ``http.py``), the node sessions (``nodelink.py``), the
output watchers (``watch.py``) and retention depend on this Protocol, not on
:class:`~mgpu.server.master.Master` itself: ``master.py`` assembles them, and none of them
imports it back (no import cycle; each can be read, and typed, on its own). So this module
names none of them either: the master passes their calls on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from mgpu.core.config import MasterConfig
    from mgpu.server.auth import JoinSecret, Tokens
    from mgpu.server.changes import Changes
    from mgpu.server.committer import Committer
    from mgpu.server.effects import Effects
    from mgpu.server.metrics import MasterMetrics
    from mgpu.server.nodeauth import NodeCredentials
    from mgpu.server.nodeconn import NodeConn
    from mgpu.server.pools import Pools
    from mgpu.server.state import ClusterState
    from mgpu.server.stats import SchedulingStats
    from mgpu.server.store import AuditRow, Store, TokenRow
    from mgpu.utils.spool import SpoolDir


class Context(Protocol):
    """The running master, as its routes and parts use it (``Master`` is the one there is).

    ``store``, ``committer`` and ``output`` are None only before ``Master.start``.
    """

    cfg: MasterConfig
    state: ClusterState
    store: Store | None
    committer: Committer | None
    output: SpoolDir | None
    output_lost: set[str]  # runs whose output a full disk cut short
    tokens: Tokens
    join: JoinSecret  # the secret a node presents to join
    open_requests: dict[int, set[asyncio.Task[Any]]]  # token id -> its running handlers
    node_credentials: NodeCredentials
    conns: dict[str, NodeConn]  # node id -> its live connection
    watchers: dict[int, set[asyncio.Event]]  # job id -> events set when it has news
    changes: Changes  # the dashboard streams' wake-ups when a change was saved
    ended: asyncio.Condition  # notified whenever jobs end (long-poll waits)
    closing: bool
    scheduling: SchedulingStats  # the scheduling passes run so far
    metrics: MasterMetrics  # its Prometheus metrics (GET /metrics)
    pools: Pools | None  # the node pools, when the master has a pools file

    def reschedule(self) -> None:
        """A scheduling pass now, for a change outside the state's handlers (a drain)."""

    def apply(self, effects: Effects, now: float | None = None,
              durable: bool = False) -> asyncio.Future[None]:
        """Schedule, save, then send (``Master.apply``)."""
        ...

    def committer_submit(self, effects: Effects) -> asyncio.Future[None]:
        """Save ``effects``; a failure is only logged."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, kept until it ends."""
        ...

    async def audit(self, user: str, action: str, detail: str) -> None:
        """Save an audit entry before acting."""
        ...

    async def save_tokens(self, new: list[TokenRow], revoked: dict[int, float], user: str,
                          action: str, detail: str, now: float) -> None:
        """Save token changes with their audit entry; then they take effect."""
        ...

    async def read_events(self, limit: int, user: str | None = None) -> list[AuditRow]:
        """The audit log's last ``limit`` entries (``user``'s only, when given)."""
        ...

    async def reset_node_credential(self, node_id: str, user: str) -> None:
        """Forget ``node_id``'s credential (saved with its audit entry, then in effect)."""
        ...

    def notify_output(self, job_id: int) -> None:
        """Wake whoever follows ``job_id``'s output or placement (``watch.py``)."""
        ...

    def attach(self, job_id: int) -> None:
        """A client follows an interactive job (``watch.py``)."""
        ...

    def detach(self, job_id: int) -> None:
        """A client stopped following an interactive job (``watch.py``)."""
        ...

    def admit_node(self, request: web.Request) -> None:
        """Let a node's handshake through with the join secret, or raise 401
        (``nodelink.py``)."""
        ...

    async def serve_node(self, ws: web.WebSocketResponse, peer: str = "?") -> None:
        """Run one node's connection until it ends (``nodelink.py``)."""
        ...
