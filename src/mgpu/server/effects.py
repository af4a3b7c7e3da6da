"""What a state handler returns: :class:`Effects`.

Every ``on_*`` handler of :class:`~mgpu.server.state.ClusterState` changes memory and
returns what must be saved and, once saved, what must be sent to which node. The outer
layer (``master.py``, through ``committer.py``) commits ``batch`` before it sends ``sends``
or answers anyone ("save before you say"); ``ended`` wakes whoever waits on those jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mgpu.core import messages as m
from mgpu.core.models import SimpleJob
from mgpu.server.store import AuditRow, Batch


@dataclass
class Effects:
    """What a handler changed: rows to save, then messages to send to nodes."""

    batch: Batch = field(default_factory=Batch)
    sends: list[tuple[str, m.MasterMessage]] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)

    def update(self, job: SimpleJob) -> None:
        self.batch.updates[job.id] = job

    def audit(self, now: float, user: str, action: str, detail: str) -> None:
        """Record a state-changing request (saved with the change it made)."""
        self.batch.audit.append(AuditRow(now, user, action, detail))

    def merge(self, other: Effects) -> Effects:
        self.batch.merge(other.batch)
        self.sends.extend(other.sends)
        self.ended.extend(other.ended)
        return self
