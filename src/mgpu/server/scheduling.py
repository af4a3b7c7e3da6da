"""The master's scheduling pass: the snapshot the policy gets, and what its answer does.

:class:`SchedulingPass` is the half of :class:`~mgpu.server.state.ClusterState` that runs
the policy (``core/scheduler.py``'s contract) over the pending jobs and the nodes that take
jobs, turns its placements into started jobs (``Effects``: saved, then sent), and keeps its
plan (the reasons and reservations) so that ``queue``, ``show`` and ``explain`` can say why a
job waits and when it is expected to start. Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from mgpu.core import messages as m
from mgpu.core.models import JobState, NodeState, SimpleJob, TaskPart, advance, utc
from mgpu.core.partitions import SpillRule
from mgpu.core.scheduler import (
    JobSnapshot,
    NodeSnapshot,
    PendingReason,
    Placement,
    Policy,
    Reason,
    RunningSnapshot,
    ScheduleResult,
    Snapshot,
)
from mgpu.server.effects import Effects
from mgpu.server.fairshare import FairShare
from mgpu.server.gpu_fit import busy_outside_words, node_free_mib, node_type
from mgpu.server.node_events import Node
from mgpu.server.partitions import spill_pass
from mgpu.server.slurm_gang import as_one_run, bridge_partitions, runs_whole

# One node as a pass sees it: its snapshot (None: it takes no jobs), its running jobs, and
# the GPUs each user runs there.
_NodeView = tuple[NodeSnapshot | None, tuple[RunningSnapshot, ...], dict[str, int]]

PLAN_LIMIT = 86_400  # what a job without a time limit counts as when planning (seconds)


class SchedulingPass(ABC):
    """Runs the policy and keeps its last plan; see the module docstring."""

    jobs: dict[int, SimpleJob]
    nodes: dict[str, Node]
    envs: dict[int, dict[str, str]]
    pending_by_user: dict[str, int]
    policy: Policy
    default_time_limit: int | None
    backfill_depth: int
    fairshare: FairShare
    spill: SpillRule = SpillRule()  # spill-over (server/partitions.py); the master sets it
    plan: ScheduleResult  # the last pass's answer (reasons and reservations)
    _view_cache: dict[str, tuple[tuple[object, ...], _NodeView]]  # node id -> (key, view)
    _running_by_user: dict[str, int]  # GPUs each user runs, over the cached views

    @abstractmethod
    def pending_in_order(self, now: float | None = None) -> Iterable[JobSnapshot]:
        """The pending jobs the gates let through, highest priority at ``now`` (default:
        the last pass's time) first."""

    @abstractmethod
    def _dequeue(self, job_id: int) -> None:
        """Take a job out of the pending queue."""

    @abstractmethod
    def run_env(self, job: SimpleJob) -> dict[str, str]:
        """The environment ``job`` runs with (``arrays.py``: an array task's ids added)."""

    @abstractmethod
    def start_part(self, job: SimpleJob, rank: int, effects: Effects) -> None:
        """Send a gang's node rank ``rank`` its order (``gang.py``)."""

    def plan_limit(self) -> int:
        """What a job without a time limit counts as when planning."""
        return self.default_time_limit or PLAN_LIMIT

    def running_snapshot(self) -> list[RunningSnapshot]:
        """The running jobs, with their expected ends."""
        return [r for view in self._views() for r in view[1]]

    def _views(self) -> list[_NodeView]:
        """Each node's snapshot (None if it takes no jobs), running jobs and GPUs per user,
        remade only for the nodes whose GPUs changed hands since the last pass (a pass after
        one job ends costs a comparison per node, not a rebuild of thousands of records).
        Whatever a NodeSnapshot is built from belongs in the key."""
        cache = self._view_cache
        limit = self.plan_limit()
        views: list[_NodeView] = []
        for node in self.nodes.values():
            held_by = tuple([g.job_id for g in node.gpus])
            # What a node offers also moves with its GPUs' usage reports (busy outside
            # mgpu, free memory): their readings belong in the key too.
            usage = tuple([(g.busy_outside, g.memory_free_mib) for g in node.gpus])
            key = (node.state, node.connected, node.drain_reason, limit, held_by, usage,
                   None if node.users is None else tuple(node.users), node.partition)
            hit = cache.get(node.node_id)
            if hit is None or hit[0] != key:
                if hit is not None:
                    self._count_running(hit[1][2], -1)
                hit = cache[node.node_id] = (key, self._view(node, limit))
                self._count_running(hit[1][2], 1)
            views.append(hit[1])
        if len(cache) > len(self.nodes):
            for gone in cache.keys() - self.nodes.keys():
                self._count_running(cache.pop(gone)[1][2], -1)
        return views

    def _count_running(self, by_user: dict[str, int], sign: int) -> None:
        """Keep :attr:`_running_by_user` (GPUs each user runs, every node) as views change."""
        totals = self._running_by_user
        for user, gpus in by_user.items():
            left = totals.get(user, 0) + sign * gpus
            if left:
                totals[user] = left
            else:
                totals.pop(user, None)

    def _view(self, node: Node, limit: int) -> _NodeView:
        held: dict[int, list[int]] = {}
        for g in node.gpus:
            if g.job_id is not None:
                held.setdefault(g.job_id, []).append(g.index)
        running: list[RunningSnapshot] = []
        by_user: dict[str, int] = {}
        for job_id, ids in held.items():
            job = self.jobs.get(job_id)
            if job is None or job.started_at is None:
                continue
            end = job.started_at.timestamp() + (job.time_limit or limit)
            running.append(RunningSnapshot(job_id, job.user, node.node_id, tuple(ids), end))
            by_user[job.user] = by_user.get(job.user, 0) + len(ids)
        snap = None
        if node.takes_jobs:  # up, connected, not draining
            free = node.free_gpu_ids()
            snap = NodeSnapshot(node.node_id, len(node.gpus), free,
                                None if node.users is None else frozenset(node.users),
                                gpu_type=node_type(node), gpu_free_mib=node_free_mib(node, free),
                                partition=node.partition,
                                releases=tuple(sorted((r.expected_end, len(r.gpu_ids))
                                                      for r in running)))
        return snap, tuple(running), by_user

    def schedule(self, now: float) -> Effects:
        """Place pending jobs on free GPUs; each placement is saved, then sent."""
        effects = Effects()
        views = self._views()
        nodes = [v[0] for v in views if v[0] is not None]
        running = _Running(views)
        self.fairshare.advance(now, dict(self._running_by_user), set(self.pending_by_user))
        if not self.pending_by_user:
            self.plan = ScheduleResult()
            return effects
        pending = spill_pass(self, nodes, now).pending(self.pending_in_order(now))
        # A gang of a partition of SLURM bridges is one job of all its GPUs to the policy
        # (it never spills: gangs keep their partition), placed on one bridge, which
        # sbatch-es it whole (slurm_gang.py): the policy needs no notion of SLURM's nodes.
        pending = as_one_run(pending, bridge_partitions(self.nodes.values()))
        self.plan = self.policy(Snapshot(now, pending, nodes, running,
                                         self.plan_limit(), self.backfill_depth))
        for p in self.plan.placements:
            self._start(p, now, effects)
            self.fairshare.started(self.jobs[p.job_id].user, self.jobs[p.job_id].gpus)
        return effects

    def _start(self, p: Placement, now: float, effects: Effects) -> None:
        job = self.jobs[p.job_id]
        parts = [(p.node_id, p.gpu_ids), *p.more]
        helds = [{g.index: g for g in self.nodes[n].gpus} for n, _ in parts]
        # (a gang that SLURM runs: placed on one bridge; a part of an mgpu gang that the
        # policy put on a bridge, in a partition that mixes them, goes there as a part)
        whole = not p.more and runs_whole(job, self.nodes[p.node_id])
        if job.state is not JobState.PENDING or len(parts) != (1 if whole else job.nodes) or len(
                {n for n, _ in parts}) != len(parts) or any(
            i not in held or held[i].job_id is not None
            for held, (_, ids) in zip(helds, parts, strict=True) for i in ids
        ):
            raise AssertionError(f"policy made an impossible placement: {p}")
        for held, (_, ids) in zip(helds, parts, strict=True):
            for i in ids:
                held[i].job_id = job.id
        self._dequeue(job.id)
        env = self.run_env(job)
        advance(job, JobState.RUNNING, now)
        job.node = p.node_id
        job.gpu_ids = list(p.gpu_ids)
        effects.update(job)
        if (job.nodes > 1 or job.ntasks_per_node > 1) and not whole:  # a gang: rank 0
            job.parts = [TaskPart(node=n, gpu_ids=list(ids)) for n, ids in parts]  # first
            self.start_part(job, 0, effects)  # (gang.py)
            return
        effects.sends.append((p.node_id, m.StartJob(
            job_id=job.id, run=job.run, command=job.command, cwd=job.cwd, env=env,
            gpu_ids=job.gpu_ids, user=job.user, name=job.name, time_limit=job.time_limit,
            stdin=job.stdin, pty=job.pty, argv=job.argv,
            tasks=job.ntasks_per_node if whole else 1, nodes=job.nodes if whole else 0)))

    # ------------------------------------------------------------------ why it waits

    def refresh_pending_reasons(self) -> None:
        """Say why each pending job waits, in words (``reason``) and as a code
        (``pending_reason``), with its expected start when the plan has one (derived, not
        saved)."""
        up = [n for n in self.nodes.values() if n.takes_jobs]
        largest = max((len(n.gpus) for n in self.nodes.values()), default=0)
        by_user: dict[str, list[Node]] = {}  # (a listing reads 10,000 jobs of few users)
        starts = self.plan.starts
        reasons = self.plan.reasons
        first = True
        for snap in self.pending_in_order():
            job = self.jobs[snap.job_id]
            serving = by_user.get(job.user)
            if serving is None:
                serving = by_user[job.user] = [
                    n for n in self.nodes.values() if n.serves(job.user)]
            start = starts.get(job.id)
            job.expected_start = None if start is None else utc(start)
            code = PendingReason.PRIORITY if not first else PendingReason.RESOURCES
            first = False
            if not self.nodes:
                job.reason = "waiting for a node to register"
                code = PendingReason.NODE_DOWN
            elif job.gpus_per_node > largest:
                job.reason = f"no node has {job.gpus_per_node} GPUs (largest has {largest})"
                code = PendingReason.NO_NODE_FITS
            elif not serving:
                job.reason = f"no node runs jobs of {job.user}: " + "; ".join(
                    f"{n.node_id} runs only {', '.join(n.users or [])}'s"
                    for n in list(self.nodes.values())[:5])
                code = PendingReason.NO_NODE_FITS
            elif not any(n.takes_jobs for n in serving):
                why = [f"{n.node_id} is degraded ({n.reason})" if n.drain_reason is None else
                       f"{n.node_id} is draining ({n.drain_reason})" for n in serving
                       if n.state is NodeState.DEGRADED or n.drain_reason is not None]
                job.reason = "no node is up" + (": " + "; ".join(why[:5]) if why else "")
                code = PendingReason.NODE_DOWN
            elif not up:
                job.reason = "no node is up"
                code = PendingReason.NODE_DOWN
            else:
                said = reasons.get(job.id)
                if said is not None:
                    code = said.code
                job.reason = _words(job, code, said)
                outside = (busy_outside_words(job, self.nodes.values())
                           if code is PendingReason.RESOURCES else None)
                if outside is not None:  # (README "GPUs as they are")
                    code, job.reason = PendingReason.GPUS_BUSY_OUTSIDE, outside
            if job.partition is not None and job.partition not in job.reason:
                job.reason += f" (partition {job.partition})"  # (unless the words said it)
            job.pending_reason = code.value

    def queue_position(self, job_id: int) -> int:
        """How many pending jobs are ahead of ``job_id`` in the order of priority."""
        for ahead, snap in enumerate(self.pending_in_order()):
            if snap.job_id == job_id:
                return ahead
        return 0


class _Running(Sequence[RunningSnapshot]):
    """``Snapshot.running``: the views' running jobs, put in one list only if a policy reads
    them (``multifactor`` reads the nodes' ``releases`` instead)."""

    def __init__(self, views: list[_NodeView]) -> None:
        self._views = views
        self._flat: list[RunningSnapshot] | None = None

    def _all(self) -> list[RunningSnapshot]:
        if self._flat is None:
            self._flat = [r for v in self._views for r in v[1]]
        return self._flat

    def __len__(self) -> int:
        return len(self._all())

    @overload
    def __getitem__(self, i: int) -> RunningSnapshot: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[RunningSnapshot]: ...
    def __getitem__(self, i: int | slice) -> RunningSnapshot | Sequence[RunningSnapshot]:
        return self._all()[i]

    def __iter__(self) -> Iterator[RunningSnapshot]:
        return iter(self._all())


def _words(job: SimpleJob, code: PendingReason, said: Reason | None) -> str:
    if said is not None and said.detail:
        return said.detail
    each = job.gpus_per_node
    gpus = f"{each} free GPU{'s' if each != 1 else ''}" + (
        f" on each of {job.nodes} nodes" if job.nodes > 1 else "")
    if code is PendingReason.PRIORITY:
        return f"waiting for {gpus}; jobs of higher priority are ahead"
    return f"waiting for {gpus}"
