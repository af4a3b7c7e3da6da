"""Multi-node jobs on a SLURM bridge, the master's side (README "Multi-node jobs through
SLURM").

A SLURM bridge (``mgpu node --backend slurm``) registers the nodes of its SLURM partition
and their GPUs (``Register.backend_nodes``, kept as ``Node.backend_nodes``). A gang job
(``-N N`` with ``G`` GPUs a node, or ``--ntasks-per-node K``) whose partition (``-p``) holds
only bridges is not cut into parts on the master: SLURM allocates its N nodes all or nothing
and starts its tasks itself (``sbatch -N``), so the master places it on one bridge as ONE run
of N*G of the bridge's GPUs (no ``parts``, no rendezvous round), and the bridge submits it
whole (``StartJob.nodes``). Its end, cancel, time limit and a lost node are then those of any
one-run job. A gang still never spills to another partition.

* :func:`check_on_bridges` refuses, at submit, a gang the bridges cannot run: more SLURM
  nodes than have G GPUs, or input (stdin) for its tasks;
* :func:`as_one_run` is how such a gang looks to the policy in a pass: one job of N*G GPUs;
* :func:`runs_whole` says whether a placement on a node is such a run.

Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from mgpu.core.errors import Rejected, UsageError
from mgpu.core.models import JobSpec, SimpleJob
from mgpu.core.snapshot import JobSnapshot
from mgpu.server.node_events import Node

__all__ = ["as_one_run", "bridge_partitions", "check_on_bridges", "runs_whole"]


def bridge_partitions(nodes: Iterable[Node]) -> frozenset[str]:
    """The partitions whose registered nodes are all SLURM bridges: their gangs run whole
    in SLURM. (A partition that mixes bridges and mgpu's own nodes keeps mgpu's gangs, in
    parts on its own nodes, as a bridge cannot run a part.)"""
    bridged: dict[str, bool] = {}
    for node in nodes:
        if node.partition is not None:
            is_bridge = node.backend_nodes is not None
            bridged[node.partition] = bridged.get(node.partition, True) and is_bridge
    return frozenset(p for p, only in bridged.items() if only)


def _fitting(node: Node, each: int) -> list[str]:
    """The SLURM nodes behind bridge ``node`` with at least ``each`` GPUs."""
    return [b.name for b in node.backend_nodes or () if b.gpus >= each]


def check_on_bridges(spec: JobSpec, each: int, where: str, nodes: list[Node]) -> bool:
    """Whether the gang ``spec`` (``each`` GPUs on each of its nodes) runs whole on a SLURM
    bridge, refusing with the fix what no bridge of its partition can run; False when its
    partition is not one of bridges (the gang is mgpu's own to split)."""
    if spec.partition is None or spec.partition not in bridge_partitions(nodes):
        return False
    if spec.stdin:
        raise UsageError(
            f"{where}a multi-node job in SLURM gets no input: run it without --stdin (for "
            "`mgpu srun`, with stdin from /dev/null: `< /dev/null`)")
    bridges = [n for n in nodes if n.partition == spec.partition]
    best = max(bridges, key=lambda n: len(_fitting(n, each)))
    fit = _fitting(best, each)
    if len(fit) < spec.nodes:
        gpus = f"{each} GPU{'s' if each != 1 else ''}"
        have = len(fit)
        raise Rejected(
            f"{where}asks for {spec.nodes} nodes with {gpus} each but only {have} SLURM "
            f"node{'s' if have != 1 else ''} of partition {spec.partition} (bridge "
            f"{best.node_id}) {'have' if have != 1 else 'has'} {gpus}"
            f"{' (' + ', '.join(fit[:5]) + ')' if fit else ''}: ask for at most "
            f"{have} (-N){'' if have else ', or for fewer GPUs a node (--gpus-per-node)'}")
    return True


def as_one_run(pending: Iterable[JobSnapshot], partitions: frozenset[str]
               ) -> Iterable[JobSnapshot]:
    """``pending`` as the policy should see it: each gang of a partition of ``partitions``
    (:func:`bridge_partitions`) as one job of all its GPUs, which the policy places on one
    bridge; the others as they are. Lazy: a policy reads only as far as it places jobs."""
    if not partitions:
        return pending
    return _each(pending, partitions)


def _each(pending: Iterable[JobSnapshot], partitions: frozenset[str]) -> Iterator[JobSnapshot]:
    for snap in pending:
        if snap.nodes > 1 and snap.partition in partitions:
            # (``gpus`` is a gang's GPUs a node: the bridge offers them all in one pool, and
            # SLURM, not mgpu, spreads them over its nodes)
            yield dataclasses.replace(snap, gpus=snap.gpus * snap.nodes, nodes=1)
        else:
            yield snap


def runs_whole(job: SimpleJob, node: Node) -> bool:
    """Whether ``job``, placed on ``node`` alone, runs there whole: a gang (several nodes
    or tasks) on a SLURM bridge, which ``sbatch``-es it as one SLURM job. (A placement on
    several nodes is an mgpu gang's, in parts, whichever nodes they are.)"""
    return (job.nodes > 1 or job.ntasks_per_node > 1) and node.backend_nodes is not None
