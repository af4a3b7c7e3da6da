"""What the master measures of itself: the scheduling passes it runs, as ``GET
/api/v1/stats`` reports them (``bench/nodes.py`` reads them; metrics will export them).

A pass is counted when jobs were pending (a call with nothing to place costs nothing and
says nothing about the policy). Durations are wall-clock, on the event loop: while a pass
runs, the master does nothing else.
"""

from __future__ import annotations

import msgspec


class SchedulingStats(msgspec.Struct):
    """Scheduling passes since the master started: how many, and how long they took."""

    passes: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    last_ms: float = 0.0
    last_pending: int = 0  # pending jobs the last pass looked at
    max_pending: int = 0

    def record(self, seconds: float, pending: int) -> None:
        ms = seconds * 1000.0
        self.passes += 1
        self.total_ms += ms
        self.last_ms = ms
        self.max_ms = max(self.max_ms, ms)
        self.last_pending = pending
        self.max_pending = max(self.max_pending, pending)


class StatsReply(msgspec.Struct):
    """``GET /api/v1/stats``: the master's own figures."""

    scheduling: SchedulingStats
    jobs: dict[str, int]  # job state -> how many the master holds
    nodes: dict[str, int]  # node state -> how many
