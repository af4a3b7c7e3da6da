"""The master's in-memory cluster state and its event handlers: the job side here (submit,
cancel, scheduling, requeue), the node side in ``node_events.py``.

Each ``on_*`` handler changes memory and returns :class:`~mgpu.server.effects.Effects`:
what must be saved and, once saved, what must be sent to which node. The outer layer
(``master.py``) commits the saves before it sends anything or answers anyone ("save before
you say"). Nothing here does I/O or reads the clock: ``now`` is always passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from mgpu.core import messages as m
from mgpu.core.errors import Forbidden, NotFound, Rejected, UsageError
from mgpu.core.models import JobSpec, JobState, SimpleJob, advance, utc
from mgpu.core.notify import NotifyPolicy
from mgpu.core.notify import check_job as check_notify
from mgpu.core.priority import PriorityWeights, job_term
from mgpu.core.scheduler import JobSnapshot, Policy, ScheduleResult, fifo_reserve
from mgpu.server.accounting import end_run
from mgpu.server.arrays import SubmitControls
from mgpu.server.auth import Identity
from mgpu.server.effects import Effects
from mgpu.server.fairshare import FairShare
from mgpu.server.gang import GangJobs, check_gang
from mgpu.server.gpu_fit import check_gpu_constraints, job_constraints
from mgpu.server.handoff import Handoff
from mgpu.server.node_events import Node
from mgpu.server.partitions import check_partition
from mgpu.server.queue import PendingQueue
from mgpu.server.scheduling import SchedulingPass
from mgpu.server.store import LoadedJob
from mgpu.server.validate import MAX_TIME_LIMIT, check_priority, check_spec

__all__ = ["ClusterState", "Effects", "Node"]


class ClusterState(Handoff, GangJobs, SubmitControls, SchedulingPass):
    """Jobs and nodes in memory; the single place that decides what happens to them."""

    def __init__(
        self,
        policy: Policy = fifo_reserve,
        node_timeout: float = 10.0,
        default_time_limit: int | None = None,
        max_time_limit: int | None = None,
        max_requeue: int = 3,
        max_batch_jobs: int = 10_000,
        max_pending_per_user: int = 100_000,
        weights: PriorityWeights | None = None,
        half_life: float = 7 * 86_400.0,
        backfill_depth: int = 1_000,
    ) -> None:
        self.jobs: dict[int, SimpleJob] = {}
        self.pending: dict[int, JobSnapshot] = {}  # the queue (its order: ``queue``)
        self.queue = PendingQueue(weights)  # the same jobs, in priority order
        self.fairshare = FairShare(half_life)
        self.backfill_depth = backfill_depth
        self.pending_by_user: dict[str, int] = {}  # kept by _enqueue and _dequeue
        self.envs: dict[int, dict[str, str]] = {}  # of jobs not yet ended (kept to requeue)
        self.nodes: dict[str, Node] = {}
        self.cancel_requested: set[int] = set()
        self.drained: dict[str, str] = {}
        self.next_id = 1
        self.policy = policy
        self.plan = ScheduleResult()
        self._view_cache = {}
        self._running_by_user = {}
        self.node_timeout = node_timeout
        self.default_time_limit = default_time_limit
        self.max_time_limit = max_time_limit
        self.max_requeue = max_requeue
        self.max_batch_jobs = max_batch_jobs
        self.max_pending_per_user = max_pending_per_user
        self.init_controls()  # the gate of holds, dependencies, arrays, limits (controls.py)
        self.init_handoff()  # jobs waiting in SLURM's queue (handoff.py)
        self.notify_policy = NotifyPolicy()  # the master sets its own (core/notify.py)

    def _enqueue(self, job: SimpleJob, *, in_place: bool = False) -> None:
        """Put ``job`` in the pending queue. Its place is its priority, whose age counts from
        its first submit, so a requeued job goes back where it was (``in_place``: kept for
        callers; every job is in place)."""
        snap = JobSnapshot(
            job.id, job.gpus_per_node, job.user,
            submitted_at=job.submitted_at.timestamp() if job.submitted_at else 0.0,
            time_limit=job.time_limit, nodes=job.nodes, **job_constraints(job))
        self.pending[job.id] = snap
        self.queue.add(snap, job_term(job.priority, job.nice))
        self.pending_by_user[job.user] = self.pending_by_user.get(job.user, 0) + 1

    def pending_in_order(self, now: float | None = None) -> Iterable[JobSnapshot]:
        """The pending jobs, highest priority at ``now`` (default: the last pass) first."""
        at = self.fairshare.as_of if now is None else now
        pending = self.pending
        return (j for j in self.queue.ordered(at, self.fairshare.factor) if j.job_id in pending)

    def _dequeue(self, job_id: int) -> None:
        self.queue.remove(job_id)
        p = self.pending.pop(job_id, None)
        if p is not None:
            left = self.pending_by_user[p.user] - 1
            if left:
                self.pending_by_user[p.user] = left
            else:
                del self.pending_by_user[p.user]

    # ------------------------------------------------------------------ start-up

    def load(self, rows: Iterable[LoadedJob], last_id: int, now: float = 0.0,
             shares: str | None = None) -> None:
        """Rebuild memory from the database (``shares``: the saved fair-share shares). Running
        jobs wait for their node to report. Fair-share usage is the jobs' GPU-seconds, decayed
        to ``now`` (a running job's until ``now``)."""
        self.fairshare.load_shares(shares)
        self.fairshare.advance(now)
        for row in rows:
            job = row.job
            self.jobs[job.id] = job
            if job.state is JobState.PENDING:
                self._enqueue(job)
            if not job.state.ended:
                self.envs[job.id] = row.env
            if job.started_at is not None and now:
                end = job.ended_at.timestamp() if job.ended_at else now
                self.fairshare.charge(job.user, job.gpus, job.started_at.timestamp(), end, now)
        self.fairshare.advance(now)
        self.next_id = last_id + 1

    # ------------------------------------------------------------------ clients

    def largest_node(self) -> int:
        return max((len(n.gpus) for n in self.nodes.values()), default=0)

    def on_submit(
        self, specs: list[JobSpec], now: float, user: str | None = None, admin: bool = True
    ) -> tuple[list[int], Effects]:
        """Accept a batch of jobs whole, or reject it whole with the reason.

        ``user`` owns the jobs (the token's user); None takes each spec's ``user`` (only
        when authentication is off). Only an ``admin`` may raise a job's priority.
        """
        if not specs:
            raise UsageError("no jobs to submit: give at least one job")
        specs, tasks = self.expand_arrays(specs)  # (arrays.py: one spec per task)
        if len(specs) > self.max_batch_jobs:
            raise Rejected(
                f"{len(specs)} jobs in one submit is over this master's limit of "
                f"{self.max_batch_jobs} (max_batch_jobs / MGPU_MAX_BATCH): submit in batches"
            )
        owners: dict[str, int] = {}
        for spec in specs:
            owner = user if user is not None else (spec.user or "unknown")
            owners[owner] = owners.get(owner, 0) + 1
        for owner, count in owners.items():
            queued = self.pending_by_user.get(owner, 0)
            if queued + count > self.max_pending_per_user:
                raise Rejected(
                    f"{owner} has {queued} pending jobs; {count} more would pass this "
                    f"master's limit of {self.max_pending_per_user} pending jobs per user "
                    "(max_pending_per_user / MGPU_MAX_PENDING): wait for some to start"
                )
        self.check_controls(specs, user)
        largest = self.largest_node()
        for i, spec in enumerate(specs):
            if i and spec is specs[i - 1]:
                continue  # an array's next task (arrays.py): checked with its first
            where = f"job {i + 1} of the batch: " if len(specs) > 1 else ""
            check_spec(spec, where)
            check_priority(spec, admin, where)
            check_gpu_constraints(spec, self.nodes.values(), where)
            check_partition(spec, self.nodes.values(), where)
            check_notify(spec, self.notify_policy, where)
            self._time_limit(spec, where)
            each = check_gang(spec, where, self.nodes.values())
            if self.nodes and each > largest:
                biggest = max(self.nodes.values(), key=lambda n: len(n.gpus))
                raise Rejected(
                    f"{where}asks for {each} GPUs{' a node' if spec.nodes > 1 else ''} but "
                    f"the largest node ({biggest.node_id}) has {largest}: ask for at most "
                    f"{largest}")
        effects = Effects()
        ids: list[int] = []
        submitted = utc(now)
        for spec in specs:
            job_id = self.next_id
            self.next_id += 1
            job = SimpleJob(
                id=job_id,
                name=spec.name or _default_name(spec.command),
                user=user if user is not None else (spec.user or "unknown"),
                state=JobState.PENDING,
                gpus=spec.gpus,
                command=spec.command,
                cwd=spec.cwd or "/",
                submitted_at=submitted,
                time_limit=self._time_limit(spec, ""),
                max_requeue=(0 if not spec.requeue or spec.interactive else
                             self.max_requeue if spec.max_requeue is None else spec.max_requeue),
                interactive=spec.interactive,
                stdin=spec.stdin or spec.pty,
                pty=spec.pty,
                argv=spec.argv or None,
                priority=spec.priority or 0,
                nice=spec.nice,
                gpu_type=spec.gpu_type, gpu_mem_mib=spec.gpu_mem_mib,
                mail_type=spec.mail_type, mail_user=spec.mail_user, notify_url=spec.notify_url,
                nodes=spec.nodes, ntasks_per_node=spec.ntasks_per_node, slurm_env=spec.slurm_env,
                partition=spec.partition,
            )
            self.jobs[job_id] = job
            if not spec.array:  # (an array's tasks are let in by gate_submitted)
                self._enqueue(job)
            self.envs[job_id] = spec.env
            effects.batch.inserts.append((job, spec.env))
            ids.append(job_id)
        self.gate_submitted(ids, specs, tasks, effects, now)
        return ids, effects

    def forget_submit(self, ids: list[int]) -> None:
        """Undo :meth:`on_submit` when its batch could not be saved (nothing was promised)."""
        for job_id in ids:
            self._dequeue(job_id)
            self.jobs.pop(job_id, None)
            self.envs.pop(job_id, None)
        self.gate_forget(ids)

    def _time_limit(self, spec: JobSpec, where: str) -> int | None:
        """The job's time limit: its own, else the default; never above the maximum."""
        from mgpu.core.timefmt import format_duration

        asked = spec.time_limit
        if asked is not None and not 0 <= asked <= MAX_TIME_LIMIT:
            raise UsageError(f"{where}the time limit must be from 0 (unlimited) to "
                             f"{MAX_TIME_LIMIT} seconds")
        limit = self.default_time_limit if asked is None else (asked or None)
        top = self.max_time_limit
        if top is not None and asked is not None and (asked == 0 or asked > top):
            raise Rejected(
                f"{where}time limit {format_duration(asked or None)} is over this cluster's "
                f"maximum of {format_duration(top)}: ask for at most that (-t)"
            )
        if top is not None and (limit is None or limit > top):
            limit = top
        return limit

    def get(self, job_id: int, who: Identity | None = None, private: bool = False) -> SimpleJob:
        """The job, for ``who`` to see (a job ``private_jobs`` hides is not found)."""
        job = self.jobs.get(job_id)
        if job is None or (who is not None and not who.sees(job, private)):
            raise NotFound(f"no job {job_id}: `mgpu queue --all` lists the jobs there are")
        return job

    def get_own(self, job_id: int, who: Identity | None, private: bool, what: str) -> SimpleJob:
        """The job, for ``who`` to act on (``what``: "read the output of", ...): its owner
        or an admin; 403 for anyone else."""
        job = self.get(job_id, who, private)
        if who is not None and not who.owns(job):
            raise Forbidden(
                f"job {job_id} belongs to {job.user}: only its owner or an admin may {what} it"
            )
        return job

    def on_cancel(
        self,
        job_ids: list[int],
        now: float,
        reason: str = "cancelled",
        who: Identity | None = None,
        private: bool = False,
    ) -> tuple[list[m.CancelResult], Effects]:
        """Cancel pending jobs at once; ask the node to stop running ones. ``who`` may
        cancel only its own jobs, unless an admin (None: the master itself)."""
        effects = Effects()
        results: list[m.CancelResult] = []
        for job_id in job_ids:
            job = self.acted_on(job_id, who, private, "cancel")
            if isinstance(job, m.CancelResult):
                results.append(job)
            elif job.state is JobState.PENDING:
                self.cancel_handed(job_id, reason, effects)  # (waiting in SLURM: scancel)
                self._dequeue(job_id)
                self.envs.pop(job_id, None)
                end_run(effects, job, JobState.CANCELLED, now, reason=f"{reason} while pending")
                effects.ended.append(job_id)
                results.append(m.CancelResult(job_id, True, state=job.state.value))
            elif job.state is JobState.RUNNING:
                self.cancel_requested.add(job_id)
                if job.parts is not None:  # a gang: every part (gang.py)
                    self.stop_parts(job, reason, effects)
                elif job.node is not None:
                    effects.sends.append((job.node, m.CancelJob(job_id, reason)))
                results.append(m.CancelResult(job_id, True, state="cancelling"))
            else:
                results.append(
                    m.CancelResult(
                        job_id, False, state=job.state.value,
                        error=f"job {job_id} has already ended ({job.state.value})",
                        code="ended",
                    )
                )
        return results, effects

    def unplace(self, job_ids: Iterable[int], now: float, reason: str) -> Effects:
        """Put placed jobs back in the queue when their placement could not be saved or
        sent. A gang whose rank 0 already runs (its rendezvous came back) is stopped and
        requeued instead, as for a lost node: its next run has a number of its own."""
        effects = Effects()
        for job_id in job_ids:
            job = self.jobs[job_id]
            if job_id in self.handed:  # (its hand-off to SLURM: back to mgpu's queue)
                self.unhand(job, reason, now, effects)
            if job.state is not JobState.RUNNING or job.node is None:
                continue
            if job.rendezvous is not None:
                effects.merge(self.node_lost(job, reason, now))
                continue
            self.release_parts(job)
            advance(job, JobState.PENDING, now, reason=reason)
            self._enqueue(job, in_place=True)
        return effects

    def node_lost(self, job: SimpleJob, why: str, now: float) -> Effects:
        """A running job's node is gone: requeue it if it may be, else end it as node_fail."""
        effects = Effects()
        if job.parts is not None:  # a gang: its other nodes stop their parts too
            self.release_parts(job)
            self.stop_parts(job, f"another node of the job was lost: {why}", effects)
        if job.id in self.cancel_requested:
            self.cancel_requested.discard(job.id)
            end_run(effects, job, JobState.CANCELLED, now, reason=f"cancelled; {why}")
        elif job.requeues < job.max_requeue:
            end_run(effects, job, JobState.PENDING, now,
                    reason=f"requeued ({job.requeues + 1} of {job.max_requeue}): {why}")
            job.requeues += 1  # (after end_run, which records the run that ended)
            self._enqueue(job, in_place=True)  # back in its original place
            return effects
        else:
            end_run(effects, job, JobState.NODE_FAIL, now, reason=why)
        self.envs.pop(job.id, None)
        effects.ended.append(job.id)
        return effects


@lru_cache(maxsize=256)  # (the tasks of an array share their command)
def _default_name(command: str) -> str:
    first = command.strip().split(None, 1)[0] if command.strip() else "job"
    return first.rsplit("/", 1)[-1][:64]

