"""Partitions on the master's side (README "Mixed mode"): the spill-over setting, each
pass's partition rules (:class:`~mgpu.core.partitions.SpillPass` over the nodes the master
has), the check of ``-p`` at submit, and what ``mgpu explain`` says of a job's partition.

The rules themselves are :mod:`mgpu.core.partitions`'s. Nothing here does I/O or reads the
clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from mgpu.core.config import MasterConfig
from mgpu.core.errors import Rejected, UnknownPartition
from mgpu.core.models import JobSpec, JobState, SimpleJob
from mgpu.core.partitions import SpillPass, SpillRule, parse_partitions, shown
from mgpu.core.snapshot import JobSnapshot, NodeSnapshot
from mgpu.server.gpu_fit import node_free_mib
from mgpu.server.node_events import Node

__all__ = ["check_partition", "partition_words", "spill_pass", "spill_rule"]


class _State(Protocol):
    """What these rules read of the master's state (``ClusterState``)."""

    nodes: dict[str, Node]
    spill: SpillRule


def spill_rule(cfg: MasterConfig) -> SpillRule:
    """The spill-over rule of the master's settings, or a :class:`ConfigError` naming the
    setting to fix."""
    from mgpu.core.errors import ConfigError

    names = parse_partitions(cfg.spill_partitions, "spill_partitions (MGPU_SPILL_PARTITIONS)")
    if not cfg.spill_after >= 0:
        raise ConfigError(f"spill_after (MGPU_SPILL_AFTER) is {cfg.spill_after}: give 0 (spill "
                          "at once) or more seconds")
    return SpillRule(names, cfg.spill_after)


def spill_pass(state: _State, nodes: Sequence[NodeSnapshot], now: float) -> _Pass:
    """The partition rules of a pass at ``now`` over ``nodes`` (those that take jobs)."""
    has_default = any(n.partition is None for n in state.nodes.values())
    return _Pass(state.spill, nodes, has_default, now)


class _Pass(SpillPass):
    def pending(self, jobs: Iterable[JobSnapshot]) -> Iterable[JobSnapshot]:
        """``jobs`` as the policy should see them in this pass (lazily: a policy reads only
        as far as it places jobs)."""
        if not self.applies():
            return jobs
        return self._each(jobs)

    def _each(self, jobs: Iterable[JobSnapshot]) -> Iterator[JobSnapshot]:
        job = self.job
        for snap in jobs:
            yield job(snap)


def check_partition(spec: JobSpec, nodes: Iterable[Node], where: str = "") -> None:
    """Refuse a job whose ``-p`` names no partition of the registered nodes (naming those
    there are), or asks for more GPUs than any node of it has. With no node known, any
    name goes (the nodes may not have joined yet)."""
    if spec.partition is None:
        return
    nodes = list(nodes)
    if not nodes:
        return
    inside = [n for n in nodes if n.partition == spec.partition]
    if not inside:
        named = sorted({n.partition for n in nodes if n.partition is not None})
        there = (f"the partitions here are {', '.join(named)}, and the default one (no -p)"
                 if named else "every node is in the default partition (leave out -p)")
        raise UnknownPartition(f"{where}no node is in partition {spec.partition!r}: {there} "
                         "(`mgpu nodes` lists them)")
    largest = max(len(n.gpus) for n in inside)
    each = spec.gpus // spec.nodes  # (a multi-node job's GPUs a node)
    if each > largest:
        raise Rejected(f"{where}asks for {each} GPUs{' a node' if spec.nodes > 1 else ''} but "
                       "the largest node of partition "
                       f"{spec.partition} has {largest}: ask for at most {largest}, or for "
                       "another partition (-p)")


def partition_words(state: _State, job: SimpleJob, snap: JobSnapshot | None,
                    now: float) -> str | None:
    """What ``mgpu explain`` says of ``job``'s partition: where it runs or may run, and
    whether it spilled or why not (``snap``: its pending snapshot, if queued). None for a
    job of the default partition on a master with one partition."""
    nodes = state.nodes
    partitions = {n.partition for n in nodes.values()}
    if job.state is JobState.RUNNING:
        node = nodes.get(job.node or "")
        ran = None if node is None else node.partition
        if node is None or ran == job.partition:
            return None if partitions <= {None} else f"It runs in {shown(ran)}."
        if job.partition is None and ran in state.spill.partitions:
            return (f"It spilled to partition {ran}: no node of the default partition could "
                    "start it when it was placed.")
        return f"It runs in {shown(ran)} (it asked for {shown(job.partition)})."
    if job.state is not JobState.PENDING:
        return None
    if job.partition is not None:
        return f"It runs only in partition {job.partition} (-p)."
    if snap is None or (partitions <= {None} and not state.spill.partitions):
        return None
    ups = [_snapshot(n) for n in nodes.values() if n.takes_jobs]
    return spill_pass(state, ups, now).why_not(snap, partitions)


def _snapshot(node: Node) -> NodeSnapshot:
    """Enough of ``node`` for the spill rule (its partition, size and free GPUs)."""
    free = node.free_gpu_ids()
    return NodeSnapshot(node.node_id, len(node.gpus), free,
                        None if node.users is None else frozenset(node.users),
                        gpu_type=node.gpu_type, gpu_free_mib=node_free_mib(node, free),
                        partition=node.partition)
