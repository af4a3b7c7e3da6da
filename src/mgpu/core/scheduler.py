"""The scheduling policy's contract, and the built-in ``fifo-reserve`` policy.

A policy is a pure function ``policy(snapshot: Snapshot) -> ScheduleResult``: no I/O, no
clock reads, no locks. The master calls it whenever something that could let a job start
happens (submit, job end, node join, cancel, a timer), with:

- ``now``;
- the pending jobs the gates let through (dependencies met, not held, past their begin time,
  within their user's limits), **highest priority first** (a lazy iterable: a policy reads
  only as far as it needs), each with its priority and the factors it is made of, its
  effective time limit and its constraints (GPU type, GPU memory, partition);
- the nodes that take jobs, with their free GPUs;
- the running jobs, with the time each is expected to end (its start plus its time limit, or
  plus ``default_time_limit`` when it has none);
- ``default_time_limit``: what a job without a limit counts as when planning.

It returns the placements, a :class:`Reason` for each pending job it examined and did not
place (a :class:`PendingReason` code and words), and the reservations of its backfill plan
(which job, which node, from when). Jobs it did not examine keep the master's default code
(``Priority`` behind a waiting job, ``Resources`` otherwise).

Constraints (:func:`node_fits`): a job with ``gpu_type`` uses only nodes of that type (the
names compared without case); with ``gpu_mem_mib`` only GPUs with at least that much free
memory (``gpu_free_mib``, when the node reports it); with ``partition`` only the nodes of that
partition, and without one only the nodes in no partition, besides the partitions in its
``spill`` (None: any; the master fills it: ``core/partitions.py``); a node that runs only some
users' jobs (``users``) runs no one else's.

``fifo-reserve`` (the founding policy, :func:`schedule` over the snapshot):

1. Jobs are considered in the order given.
2. A job that fits goes to the node with the *fewest* free GPUs that can hold it (best fit,
   so large holes stay open for large jobs); ties go to the node listed first. It takes that
   node's lowest-numbered free GPUs.
3. The first job that does not fit *reserves* the node where it will fit soonest (the node,
   among those with enough GPUs in total, with the most free GPUs now). Later jobs may not
   use a reserved node, so a stream of small jobs cannot starve a large one; they may still
   run on other nodes.
4. A job larger than every node never fits and reserves nothing; the master rejects such
   jobs at submit when nodes are known, so this only happens before nodes register.

``multifactor`` (the default, :mod:`mgpu.core.backfill`) gives its reservation a start time
from the running jobs' expected ends, and lets a lower job use the reserved node when that
delays nothing (backfill).

Other policies are installed under the entry-point group ``mgpu.schedulers`` (see
``docs/scheduling.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mgpu.core.backfill import multifactor
from mgpu.core.snapshot import (
    JobSnapshot,
    NodeSnapshot,
    PendingReason,
    Placement,
    Policy,
    PriorityFactors,
    Reason,
    Reservation,
    RunningSnapshot,
    ScheduleResult,
    Snapshot,
    node_fits,
    usable_gpus,
)

__all__ = [
    "BUILTIN",
    "JobSnapshot",
    "NodeSnapshot",
    "PendingReason",
    "Placement",
    "Policy",
    "PriorityFactors",
    "Reason",
    "Reservation",
    "RunningSnapshot",
    "ScheduleResult",
    "Snapshot",
    "fifo_reserve",
    "load_policy",
    "multifactor",
    "node_fits",
    "schedule",
    "usable_gpus",
]


def fifo_reserve(snap: Snapshot) -> ScheduleResult:
    """The ``fifo-reserve`` policy (module docstring): its reservation has no start time, so
    it plans none (``reservations`` stays empty)."""
    nodes = snap.nodes
    free: dict[str, list[int]] = {n.node_id: sorted(n.free_gpu_ids) for n in nodes}
    mem = {n.node_id: dict(zip(n.free_gpu_ids, n.gpu_free_mib, strict=True))
           for n in nodes if n.gpu_free_mib is not None}
    free_count = sum(len(v) for v in free.values())
    reserved: dict[str, int] = {}  # node -> the job it is held for
    out = ScheduleResult()
    for job in snap.pending:
        if free_count == 0:
            break
        fitting = [n for n in nodes if node_fits(job, n)]
        if not fitting:
            out.reasons[job.job_id] = Reason(PendingReason.NO_NODE_FITS,
                                             f"no node can run {job.gpus} GPUs of this kind")
            continue
        if len(fitting) < job.nodes:
            out.reasons[job.job_id] = Reason(PendingReason.NO_NODE_FITS,
                                             f"{len(fitting)} nodes can run {job.gpus} GPUs "
                                             f"of this kind; this job needs {job.nodes}")
            continue
        best: list[tuple[int, int, str, list[int]]] = []  # fewest usable first (a gang: N)
        for i, n in enumerate(fitting):
            if n.node_id in reserved:
                continue
            ids = _usable(job, free[n.node_id], mem.get(n.node_id))
            if len(ids) >= job.gpus:
                best.append((len(ids), i, n.node_id, ids))
        if len(best) < job.nodes:
            if not reserved:
                targets = sorted(fitting, key=lambda n: -len(free[n.node_id]))[: job.nodes]
                for target in targets:
                    reserved[target.node_id] = job.job_id
                out.reasons[job.job_id] = Reason(PendingReason.RESOURCES,
                                                 f"waits for {job.gpus} GPUs on " +
                                                 ", ".join(t.node_id for t in targets))
            else:
                holder = next(iter(reserved.values()))
                out.reasons[job.job_id] = Reason(PendingReason.RESERVED,
                                                 f"GPUs are held for job {holder}", holder)
            continue
        taken: list[tuple[str, tuple[int, ...]]] = []
        for _, _, node_id, ids in sorted(best)[: job.nodes]:
            take = ids[: job.gpus]
            for g in take:
                free[node_id].remove(g)
            free_count -= job.gpus
            taken.append((node_id, tuple(take)))
        out.placements.append(Placement(job.job_id, *taken[0], more=tuple(taken[1:])))
    return out


def _usable(job: JobSnapshot, free: list[int], mem: dict[int, int] | None) -> list[int]:
    if job.gpu_mem_mib is None or mem is None:
        return free
    return [g for g in free if mem.get(g, 0) >= job.gpu_mem_mib]


def schedule(
    pending: Iterable[JobSnapshot], nodes: Sequence[NodeSnapshot], now: float
) -> list[Placement]:
    """The placements of :func:`fifo_reserve` (the founding call form, kept for callers)."""
    return fifo_reserve(Snapshot(now, pending, nodes)).placements


BUILTIN = ("multifactor", "fifo-reserve")


def load_policy(name: str) -> Policy:
    """The policy called ``name``: a built-in one or an ``mgpu.schedulers`` entry point."""
    if name in ("multifactor", "default"):
        return multifactor
    if name == "fifo-reserve":
        return fifo_reserve
    from importlib.metadata import entry_points

    from mgpu.core.errors import ConfigError

    for ep in entry_points(group="mgpu.schedulers"):
        if ep.name == name:
            policy: Policy = ep.load()
            return policy
    raise ConfigError(f"unknown scheduler {name!r}: use one of {', '.join(BUILTIN)} or "
                      "install a plugin")
