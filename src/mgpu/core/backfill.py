"""The ``multifactor`` policy: priority order, best fit, one reservation, and backfill.

A pure function of a :class:`~mgpu.core.scheduler.Snapshot` (no I/O, no clock). The master
gives the pending jobs highest priority first (age, fair share and ``--priority``/``--nice``:
:mod:`mgpu.core.priority`); this policy decides where and whether each may start:

1. Jobs are taken in the order given. A job that fits now goes to the node with the *fewest*
   usable free GPUs that can hold it (best fit; ties to the node listed first), on that
   node's lowest-numbered free GPUs.
2. The first job that does not fit (the *top blocked job*) gets a **reservation**: for every
   node that could run it, the time its GPUs will be free is worked out from the running jobs'
   expected ends (their start plus their time limit; ``default_time_limit`` for a job without
   one); the node free soonest is reserved for it from that time (ties: the node listed first).
   That time is the job's expected start.
3. **Backfill**: a lower job may still start now, on any node, unless that would delay the
   reservation: on the reserved node it starts only if its own limit ends by the reserved
   start, or if it takes only GPUs the reserved job will not need then (the node's GPUs free
   at the reserved start beyond those the job needs). Up to ``backfill_depth`` jobs past the
   top blocked one are tried (SLURM's ``bf_max_job_test``); the pass stops as soon as no GPU
   is free.
4. A job no node could ever run (too big, another GPU type or partition, nodes of other users
   only) is passed over with ``NoNodeFits`` and holds nothing back.

A job whose time limit is unknown is planned with ``default_time_limit``; if it runs longer,
the reserved job starts later than planned (the plan is remade on every pass). Jobs with a
limit are ended at it, so backfill behind them never delays the reserved job.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

from mgpu.core.snapshot import (
    JobSnapshot,
    NodeSnapshot,
    PendingReason,
    Placement,
    Reason,
    Reservation,
    ScheduleResult,
    Snapshot,
    node_fits,
)

__all__ = ["multifactor"]

Spill = frozenset[str] | None  # JobSnapshot.spill: part of a kind of job (_fitting)


def multifactor(snap: Snapshot) -> ScheduleResult:
    """Placements, reasons and the reservation for ``snap`` (see the module docstring)."""
    return _Pass(snap).run(snap.pending)


class _Pass:
    """One pass's working state: free GPUs, when busy ones free up, the reservation."""

    def __init__(self, snap: Snapshot) -> None:
        # Only what every pass needs is built here, and only for the nodes with a free GPU:
        # a pass after one job ends on a full cluster touches a handful of nodes.
        self.snap = snap
        self.now = snap.now
        self.nodes = {n.node_id: n for n in snap.nodes}
        self.rank = {n.node_id: i for i, n in enumerate(snap.nodes)}
        opened = [n for n in snap.nodes if n.free_gpu_ids]
        self.free = {n.node_id: sorted(n.free_gpu_ids) for n in opened}
        self.mem = {n.node_id: dict(zip(n.free_gpu_ids, n.gpu_free_mib, strict=True))
                    for n in opened if n.gpu_free_mib is not None}
        self.open = [n.node_id for n in opened]  # nodes with a free GPU, in node order
        self.free_count = sum(len(v) for v in self.free.values())
        # node -> sorted (expected end, GPUs it frees): built when a reservation needs it
        self._releases: dict[str, list[tuple[float, int]]] | None = None
        self._placed: list[tuple[str, float, int]] = []  # this pass's, until then
        self._indexed = False  # whether the nodes came with their releases
        self.by_user = any(n.users is not None for n in snap.nodes)  # does the user matter?
        self.kinds: dict[tuple[str, str | None, str | None, Spill], list[NodeSnapshot]] = {}
        self.fitting: dict[tuple[str, str | None, str | None, Spill, int],
                           list[NodeSnapshot]] = {}
        self.res: Reservation | None = None
        # The reserved node(s): GPUs free at the reserved start beyond what the job needs.
        self.spare: dict[str, int] = {}
        self.out = ScheduleResult()

    def releases(self, node_id: str) -> list[tuple[float, int]] | tuple[tuple[float, int], ...]:
        """When the busy GPUs of ``node_id`` are expected to free up: (time, GPUs), sorted
        (times may be past: an overdue job counts as ending now)."""
        if self._releases is None:
            self._releases = {}
            self._indexed = indexed = all(n.releases is not None for n in self.snap.nodes)
            if not indexed:
                for r in self.snap.running:
                    if r.node_id in self.nodes:
                        self._releases.setdefault(r.node_id, []).append(
                            (r.expected_end, len(r.gpu_ids)))
            for placed_on, end, gpus in self._placed:
                self._releases.setdefault(placed_on, []).append((end, gpus))
            for node_id_, events in self._releases.items():
                if indexed:
                    events.extend(self.nodes[node_id_].releases or ())
                events.sort()
        got = self._releases.get(node_id)
        if got is not None:
            return got
        return (self.nodes[node_id].releases or ()) if self._indexed else ()

    def run(self, pending: Iterable[JobSnapshot]) -> ScheduleResult:
        tried = 0
        for job in pending:
            if self.free_count == 0 and self.res is not None:
                break
            if self.res is not None:
                tried += 1
                if tried > self.snap.backfill_depth:
                    break
            # With no GPU free and no reservation yet, the next job that fits a node is the
            # top blocked one: it is still examined, for its reservation (its start time).
            self._one(job)
        return self.out

    def _one(self, job: JobSnapshot) -> None:
        end = self.now + (job.time_limit or self.snap.default_time_limit)
        res = self.res
        spare = self.spare
        chosen: list[tuple[int, int, str, list[int]]] = []  # (a gang takes several)
        held_back = False
        for node_id in self.open:
            node = self.nodes[node_id]
            if not node_fits(job, node):
                continue
            ids = self._usable(job, node_id)
            if len(ids) < job.gpus:
                continue
            if (res is not None and node_id in spare and end > res.start
                    and job.gpus > spare[node_id]):
                held_back = True
                continue
            key = (len(ids), self.rank[node_id], node_id, ids)
            if job.nodes > 1:
                chosen.append(key)
            elif not chosen or key[:2] < chosen[0][:2]:
                chosen = [key]
        if len(chosen) >= job.nodes:  # best fit: the nodes with the fewest usable GPUs
            chosen.sort(key=lambda c: c[:2])
            taken = [(c[2], c[3][: job.gpus]) for c in chosen[: job.nodes]]
            for node_id, ids in taken:
                self._take(job.gpus, node_id, ids, end)
            (first, ids), *rest = taken
            self.out.placements.append(Placement(
                job.job_id, first, tuple(ids), tuple((n, tuple(i)) for n, i in rest)))
            return
        fitting = self._fitting(job)
        if len(fitting) < job.nodes or not fitting:
            self.out.reasons[job.job_id] = Reason(
                PendingReason.NO_NODE_FITS,
                f"no node that takes jobs can run {job.gpus} GPU"
                f"{'s' if job.gpus > 1 else ''}{_constraints(job)}" if job.nodes == 1 else
                f"{len(fitting)} node{'s' if len(fitting) != 1 else ''} that take jobs can "
                f"run {job.gpus} GPU{'s' if job.gpus != 1 else ''}{_constraints(job)}; this "
                f"job needs {job.nodes}")
        elif res is None:
            self._reserve(job, fitting)
        elif held_back:
            self.out.reasons[job.job_id] = Reason(
                PendingReason.RESERVED,
                f"the free GPUs of {', '.join(self.spare)} are held for job {res.job_id}, "
                "and this "
                "job's time limit ends after that job's expected start", res.job_id)
        else:
            self.out.reasons[job.job_id] = Reason(
                PendingReason.PRIORITY,
                f"waiting for {job.gpus} free GPU{'s' if job.gpus > 1 else ''}; job "
                f"{res.job_id}, of higher priority, waits first")

    def _take(self, gpus: int, node_id: str, ids: list[int], end: float) -> None:
        """Count ``ids`` of ``node_id`` as taken by a job placed this pass until ``end``."""
        free = self.free[node_id]
        for g in ids:
            free.remove(g)
        if not free:
            self.open.remove(node_id)
        self.free_count -= gpus
        if self._releases is None:
            self._placed.append((node_id, end, gpus))
        else:
            events = self._releases.get(node_id)
            if events is None:
                events = self._releases[node_id] = list(self.releases(node_id))
            bisect.insort(events, (end, gpus))
        res = self.res
        if res is not None and node_id in self.spare and end > res.start:
            self.spare[node_id] -= gpus

    def _reserve(self, job: JobSnapshot, fitting: list[NodeSnapshot]) -> None:
        """Reserve for the top blocked job the node where it can start soonest."""
        # (One loop over every node that fits, the hot spot of a pass on a full cluster:
        # kept to plain operations.) Nodes come in order, so the first of equals wins.
        need, now = job.gpus, self.now
        self.releases(fitting[0].node_id)  # (builds the index)
        overrides, indexed, free = self._releases or {}, self._indexed, self.free
        gang = job.nodes > 1
        starts: list[tuple[float, int, str]] = []  # (start, node order, node): a gang's all
        best_start = math.inf
        for node in fitting:
            node_id = node.node_id
            avail = len(self._usable(job, node_id)) if node_id in free else 0
            if avail >= need:
                start = now
            else:
                events: Sequence[tuple[float, int]] | None = overrides.get(node_id)
                if events is None:
                    events = (node.releases or ()) if indexed else ()
                start = math.inf
                for end, count in events:
                    avail += count
                    if avail >= need:
                        start = end if end > now else now
                        break
            if gang:
                if start < math.inf:
                    starts.append((start, self.rank[node_id], node_id))
            elif start < best_start:
                best_start = start
                starts = [(start, 0, node_id)]
                if start <= now:
                    break
        if len(starts) < job.nodes:
            self.out.reasons[job.job_id] = Reason(
                PendingReason.RESOURCES,
                f"waiting for {job.gpus} free GPU{'s' if job.gpus > 1 else ''}"
                f"{'' if job.nodes == 1 else f' on each of {job.nodes} nodes'}; no start "
                "time can be given (GPUs are in use outside mgpu's jobs)")
            return
        held = sorted(starts)[: job.nodes]  # the nodes free soonest (ties: listed first)
        start = held[-1][0]
        self.spare = {}
        for _, _, node_id in held:
            # Everything that ends by the start counts as free then, not only what was needed.
            self.spare[node_id] = len(self._usable(job, node_id)) + sum(
                c for e, c in self.releases(node_id) if max(e, now) <= start) - job.gpus
        names = [h[2] for h in held]
        self.res = Reservation(job.job_id, names[0], start, job.gpus, tuple(names[1:]))
        self.out.reservations.append(self.res)
        where = (f"of {names[0]} are" if job.nodes == 1 else
                 f"on each of {', '.join(names)} are")
        self.out.reasons[job.job_id] = Reason(
            PendingReason.RESOURCES,
            f"next to start: {job.gpus} GPU{'s' if job.gpus > 1 else ''} {where} "
            "held for it from when their running jobs' time limits end")

    def _fitting(self, job: JobSnapshot) -> list[NodeSnapshot]:
        """The nodes that could ever run ``job`` (cached per kind of job)."""
        kind = (job.user if self.by_user else "", job.gpu_type, job.partition, job.spill)
        sized = self.fitting.get((*kind, job.gpus))
        if sized is None:
            nodes = self.kinds.get(kind)
            if nodes is None:
                probe = JobSnapshot(0, 1, job.user, gpu_type=job.gpu_type,
                                    partition=job.partition, spill=job.spill)
                nodes = self.kinds[kind] = [n for n in self.snap.nodes if node_fits(probe, n)]
            sized = self.fitting[(*kind, job.gpus)] = [
                n for n in nodes if n.total_gpus >= job.gpus]
        return sized

    def _usable(self, job: JobSnapshot, node_id: str) -> list[int]:
        free = self.free.get(node_id, [])
        mem = self.mem.get(node_id)
        if job.gpu_mem_mib is None or mem is None:
            return free
        return [g for g in free if mem.get(g, 0) >= job.gpu_mem_mib]


def _constraints(job: JobSnapshot) -> str:
    parts = []
    if job.gpu_type is not None:
        parts.append(f"of type {job.gpu_type}")
    if job.gpu_mem_mib is not None:
        parts.append(f"with {job.gpu_mem_mib} MiB free")
    if job.partition is not None:
        parts.append(f"in partition {job.partition}")
    return (" " + ", ".join(parts)) if parts else ""
