"""Nodes' warnings and errors, kept in the master's audit log: one entry per record, by the
user ``node:NODE_ID`` and the action ``node.warning`` / ``node.error``, so that ``mgpu events
--node NODE`` shows a node's joins and what it logged, in order, with everything else an
operator audits (and pruned with it, after ``audit_days``).

A node may log a great deal when something is wrong with it: each node has a budget of
:data:`PER_MINUTE` records a minute; the rest are counted, and one entry says how many went.
"""

from __future__ import annotations

from mgpu.core import messages as m
from mgpu.server.effects import Effects

PER_MINUTE = 120
_LEVELS = {"warning": "node.warning", "error": "node.error", "critical": "node.error"}


class NodeLogs:
    """The per-node budget; :meth:`keep` turns a node's records into audit entries."""

    def __init__(self, per_minute: int = PER_MINUTE) -> None:
        self.per_minute = per_minute
        self._window: dict[str, tuple[float, int, int]] = {}  # node -> (start, kept, dropped)

    def keep(self, node_id: str, msg: m.NodeLog, now: float, effects: Effects) -> None:
        """Add ``msg``'s records to ``effects`` as audit entries, within the node's budget."""
        start, kept, dropped = self._window.get(node_id, (now, 0, 0))
        if now - start >= 60.0:
            if dropped:
                effects.audit(now, f"node:{node_id}", "node.warning",
                              f"{dropped} more warnings or errors of this node were not kept "
                              f"(over {self.per_minute} a minute)")
            start, kept, dropped = now, 0, 0
        for record in msg.records:
            if kept >= self.per_minute:
                dropped += 1
                continue
            kept += 1
            effects.audit(now, f"node:{node_id}",
                          _LEVELS.get(record.level, "node.warning"),
                          f"{record.logger}: {record.message}")
        self._window[node_id] = (start, kept, dropped)
