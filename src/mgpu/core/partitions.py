"""Partitions and spill-over: the pure rules (README "Mixed mode").

A node is in one partition, named when it registers (``mgpu node --mgpu-partition NAME``;
a SLURM bridge's is ``slurm`` unless told otherwise); a node that names none is in the
*default partition*. Which nodes a pending job may run on:

1. A job submitted with ``-p NAME`` runs only on the nodes of partition NAME.
2. A job without one runs on the nodes of the default partition; where the master has no
   node of the default partition at all (only SLURM bridges, say), on any node, so that a
   master whose only node is a bridge runs every job there.
3. **Spill-over** (the master's ``spill_partitions``): a job without a partition may also
   run on the nodes of a spill partition, once it has been pending ``spill_after`` seconds
   and no node of the default partition can start it now (none has enough usable free
   GPUs for it). While a node of the default partition can start it, it never spills.

The rule is applied to each pass's snapshot (:class:`SpillPass`): the jobs that may use
other partitions in this pass carry them in ``JobSnapshot.spill``, which every policy
honours through :func:`~mgpu.core.snapshot.node_fits`. The decision is made from the free
GPUs at the start of the pass; a job that a higher one left without room in the default
partition may spill at the next pass (the master runs one at least every second).
Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mgpu.core.errors import ConfigError
from mgpu.core.snapshot import JobSnapshot, NodeSnapshot, node_fits, usable_gpus

# What a partition may be called (a job's -p, a node's --mgpu-partition, spill_partitions).
PARTITION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_NAME = re.compile(PARTITION_PATTERN)
DEFAULT = "the default partition"

__all__ = ["DEFAULT", "PARTITION_PATTERN", "SpillPass", "SpillRule", "check_name",
           "parse_partitions", "shown"]


def shown(partition: str | None) -> str:
    """A partition as words say it: ``partition slurm``, or ``the default partition``."""
    return DEFAULT if partition is None else f"partition {partition}"


def parse_partitions(text: str | None, where: str) -> frozenset[str]:
    """The partition names of a comma-separated setting (``"slurm"``, ``"slurm,cloud"``);
    a :class:`ConfigError` naming ``where`` and the fix for a name that cannot be one."""
    names = frozenset(p.strip() for p in (text or "").split(",") if p.strip())
    for name in sorted(names):
        if len(name) > 64 or not _NAME.match(name):
            raise ConfigError(f"{where}: {name!r} is not a partition name: give names of "
                              "letters, digits, '.', '_' and '-', comma-separated (e.g. slurm)")
    return names


def check_name(name: str | None, where: str) -> None:
    """A :class:`ConfigError` naming ``where`` unless ``name`` is None, "" (the default
    partition) or a partition name."""
    if name:
        parse_partitions(name if "," not in name else "?", where)


@dataclass(frozen=True, slots=True)
class SpillRule:
    """The master's spill-over setting: the partitions jobs without one may spill to, and
    how long they wait first (seconds)."""

    partitions: frozenset[str] = frozenset()
    after: float = 0.0


class SpillPass:
    """The partition rules for one scheduling pass at ``now``.

    ``nodes``: the nodes that take jobs, as the policy will see them; ``has_default``:
    whether any node of the default partition is registered (up or not)."""

    def __init__(self, rule: SpillRule, nodes: Sequence[NodeSnapshot], has_default: bool,
                 now: float) -> None:
        self.rule = rule
        self.has_default = has_default
        self.now = now
        self.nodes = nodes
        self.spill_nodes = bool(rule.partitions) and any(
            n.partition in rule.partitions for n in nodes)
        self._open_default: list[NodeSnapshot] | None = None  # (made when first needed)

    def applies(self) -> bool:
        """Whether any job's snapshot may change in this pass (else :meth:`job` is the
        identity and the master hands the pending jobs over as they are)."""
        return not self.has_default or self.spill_nodes

    def job(self, snap: JobSnapshot) -> JobSnapshot:
        """``snap`` with the partitions it may also use in this pass (``spill``)."""
        if snap.partition is not None or snap.nodes > 1:  # (a gang runs on mgpu nodes only)
            return snap
        if not self.has_default:
            return dataclasses.replace(snap, spill=None)  # any node (rule 2)
        if self.spill_nodes and self.waited(snap) and not self.default_can_start(snap):
            return dataclasses.replace(snap, spill=self.rule.partitions)
        return snap

    def waited(self, snap: JobSnapshot) -> bool:
        """Whether ``snap`` has been pending long enough to spill."""
        return self.now - snap.submitted_at >= self.rule.after

    def default_can_start(self, snap: JobSnapshot) -> bool:
        """Whether a node of the default partition has enough usable free GPUs for ``snap``
        now."""
        if self._open_default is None:  # only these can start a job now in the default one
            self._open_default = [n for n in self.nodes
                                  if n.partition is None and n.free_gpu_ids]
        plain = dataclasses.replace(snap, spill=frozenset())
        return any(node_fits(plain, n) and len(usable_gpus(plain, n)) >= snap.gpus
                   for n in self._open_default)

    def why_not(self, snap: JobSnapshot, partitions: Iterable[str | None]) -> str:
        """Why a pending job without a partition does not spill now, or that it may (for
        ``mgpu explain``); ``partitions``: those of the registered nodes."""
        rule = self.rule
        if not self.has_default:
            return ("No node of the default partition is registered: it may run on any "
                    "node.")
        names = ", ".join(sorted(rule.partitions))
        if not rule.partitions:
            there = sorted({p for p in partitions if p is not None})
            if not there:
                return "It runs in the default partition."
            return (f"It runs in the default partition only: spill-over to {', '.join(there)} "
                    "is off (the master's spill_partitions, `mgpu server --spill-to NAME`).")
        if not self.spill_nodes:
            return f"It may spill to {names}, but no node there takes jobs now."
        if not self.waited(snap):
            left = rule.after - (self.now - snap.submitted_at)
            return (f"It may spill to {names} once it has waited {rule.after:g}s "
                    f"(spill_after): {left:.0f}s to go.")
        if self.default_can_start(snap):
            return ("A node of the default partition can start it now: it does not spill "
                    f"to {names}.")
        return (f"No node of the default partition can start it now: it may spill to {names} "
                "and waits for GPUs there or here.")
