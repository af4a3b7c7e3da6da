"""The master's scheduling pass: the snapshot the policy gets, and what its answer does.

:class:`SchedulingPass` is the half of :class:`~mgpu.server.state.ClusterState` that runs
the policy (``core/scheduler.py``'s contract) over the pending jobs and the nodes that take
jobs, turns its placements into started jobs (``Effects``: saved, then sent), and keeps its
plan (the reasons and reservations) so that ``queue``, ``show`` and ``explain`` can say why a
job waits and when it is expected to start. Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from mgpu.core import messages as m
from mgpu.core.models import JobState, NodeState, SimpleJob, advance, utc
from mgpu.core.scheduler import (
    JobSnapshot,
    NodeSnapshot,
    PendingReason,
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
    plan: ScheduleResult  # the last pass's answer (reasons and reservations)

    @abstractmethod
    def pending_in_order(self, now: float | None = None) -> Iterable[JobSnapshot]:
        """The pending jobs the gates let through, highest priority at ``now`` (default:
        the last pass's time) first."""

    @abstractmethod
    def _dequeue(self, job_id: int) -> None:
        """Take a job out of the pending queue."""

    def plan_limit(self) -> int:
        """What a job without a time limit counts as when planning."""
        return self.default_time_limit or PLAN_LIMIT

    def running_snapshot(self) -> list[RunningSnapshot]:
        """The running jobs, with their expected ends."""
        out: list[RunningSnapshot] = []
        limit = self.plan_limit()
        for node in self.nodes.values():
            held: dict[int, list[int]] = {}
            for g in node.gpus:
                if g.job_id is not None:
                    held.setdefault(g.job_id, []).append(g.index)
            for job_id, ids in held.items():
                job = self.jobs.get(job_id)
                if job is None or job.started_at is None:
                    continue
                end = job.started_at.timestamp() + (job.time_limit or limit)
                out.append(RunningSnapshot(job_id, job.user, node.node_id, tuple(ids), end))
        return out

    def schedule(self, now: float) -> Effects:
        """Place pending jobs on free GPUs; each placement is saved, then sent."""
        effects = Effects()
        nodes = [
            NodeSnapshot(n.node_id, len(n.gpus), free,
                         None if n.users is None else frozenset(n.users),
                         gpu_type=node_type(n), gpu_free_mib=node_free_mib(n, free))
            for n in self.nodes.values() if n.state.takes_jobs and n.connected
            for free in [n.free_gpu_ids()]
        ]
        running = self.running_snapshot()
        by_user: dict[str, int] = {}
        for r in running:
            by_user[r.user] = by_user.get(r.user, 0) + len(r.gpu_ids)
        self.fairshare.advance(now, by_user, set(self.pending_by_user))
        if not self.pending_by_user:
            self.plan = ScheduleResult()
            return effects
        self.plan = self.policy(Snapshot(now, self.pending_in_order(now), nodes, running,
                                         self.plan_limit(), self.backfill_depth))
        for p in self.plan.placements:
            self._start(p.job_id, p.node_id, p.gpu_ids, now, effects)
            self.fairshare.started(self.jobs[p.job_id].user, len(p.gpu_ids))
        return effects

    def _start(self, job_id: int, node_id: str, gpu_ids: tuple[int, ...], now: float,
               effects: Effects) -> None:
        job = self.jobs[job_id]
        node = self.nodes[node_id]
        held = {g.index: g for g in node.gpus}
        if job.state is not JobState.PENDING or any(
            i not in held or held[i].job_id is not None for i in gpu_ids
        ):
            raise AssertionError(f"policy made an impossible placement: {job_id} on "
                                 f"{node_id} {gpu_ids}")
        for i in gpu_ids:
            held[i].job_id = job.id
        self._dequeue(job.id)
        env = self.envs.get(job.id, {})
        advance(job, JobState.RUNNING, now)
        job.node = node.node_id
        job.gpu_ids = list(gpu_ids)
        effects.update(job)
        effects.sends.append((node.node_id, m.StartJob(
            job_id=job.id, run=job.requeues, command=job.command, cwd=job.cwd, env=env,
            gpu_ids=job.gpu_ids, user=job.user, name=job.name, time_limit=job.time_limit,
            stdin=job.stdin, pty=job.pty, argv=job.argv)))

    # ------------------------------------------------------------------ why it waits

    def refresh_pending_reasons(self) -> None:
        """Say why each pending job waits, in words (``reason``) and as a code
        (``pending_reason``), with its expected start when the plan has one (derived, not
        saved)."""
        up = [n for n in self.nodes.values() if n.state.takes_jobs]
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
            elif job.gpus > largest:
                job.reason = f"no node has {job.gpus} GPUs (largest has {largest})"
                code = PendingReason.NO_NODE_FITS
            elif not serving:
                job.reason = f"no node runs jobs of {job.user}: " + "; ".join(
                    f"{n.node_id} runs only {', '.join(n.users or [])}'s"
                    for n in list(self.nodes.values())[:5])
                code = PendingReason.NO_NODE_FITS
            elif not any(n.state.takes_jobs for n in serving):
                degraded = [n for n in serving if n.state is NodeState.DEGRADED]
                job.reason = ("no node is up" if not degraded else "no node is up: " + "; ".join(
                    f"{n.node_id} is degraded ({n.reason})" for n in degraded[:5]))
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
            job.pending_reason = code.value

    def queue_position(self, job_id: int) -> int:
        """How many pending jobs are ahead of ``job_id`` in the order of priority."""
        for ahead, snap in enumerate(self.pending_in_order()):
            if snap.job_id == job_id:
                return ahead
        return 0


def _words(job: SimpleJob, code: PendingReason, said: Reason | None) -> str:
    if said is not None and said.detail:
        return said.detail
    gpus = f"{job.gpus} free GPU{'s' if job.gpus > 1 else ''}"
    if code is PendingReason.PRIORITY:
        return f"waiting for {gpus}; jobs of higher priority are ahead"
    return f"waiting for {gpus}"
