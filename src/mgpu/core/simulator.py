"""Replay a job trace through a scheduling policy, in simulated time.

Pure: no I/O, no clock. :func:`simulate` takes the jobs of a trace (:mod:`mgpu.core.trace`),
the nodes (:func:`parse_nodes`) and a policy (the very callable the master runs, from
:func:`mgpu.core.scheduler.load_policy`), and returns what happened to every job; the
figures are in :mod:`mgpu.core.simmetrics`.

How time runs, as on the master (whose scheduling is event-driven):

1. Events are job submissions and job ends, in time order; at one instant the ends come
   before the submissions, and the submissions in queue order (the trace's order).
2. After the events of an instant, one scheduling pass, as the master's
   (``server/scheduling.py``): usage is brought to now (``Usage.advance`` with the GPUs each
   user runs and the users who wait), then the policy gets a
   :class:`~mgpu.core.scheduler.Snapshot`: the pending jobs that may start (submitted,
   dependencies met, under their array's ``%N`` cap) in the queue's order (``Queue.ordered``:
   the master's priority order, with the fair-share factors of ``Usage``), the nodes with
   their free GPUs, the running jobs with their expected ends (start plus time limit, or
   plus ``default_time_limit``) and ``backfill_depth``; each job it starts is charged
   (``Usage.started``). A pass when no GPU is free could place nothing: the policy is not
   called then (the master calls it for the reasons it gives).
3. A placed job runs ``min(duration, time_limit)`` seconds from that instant, then ends
   ``completed`` (or ``timeout``, stopped at its limit) and frees its GPUs.
4. A job larger than every node is ``rejected`` at submission (the master refuses it); a
   job whose dependency can no longer be met is ``cancelled``, as SLURM's
   ``DependencyNeverSatisfied``.
5. Node pools (:mod:`mgpu.core.simpools`) tick after the pass of each instant and at the
   instants their rule waits for (no pass then); a node joins before the submissions.

The replay ends when no event is left; a job that never started (a policy that left it
pending with nothing left to happen) stays ``pending``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from mgpu.core.errors import MgpuError, UsageError
from mgpu.core.poolrule import Demand
from mgpu.core.scheduler import JobSnapshot, NodeSnapshot, Policy, RunningSnapshot, Snapshot
from mgpu.core.simpools import PoolNodeRecord, SimPool, SimPools
from mgpu.core.simqueue import NoUsage, Queue, SubmitOrder, Usage
from mgpu.core.trace import Dependency, TraceJob

MAX_SIM_NODES = 100_000
PLAN_LIMIT = 86_400  # what a job without a time limit counts as when planning, as the master
NEVER = "DependencyNeverSatisfied"
# FairShare takes a clock of 0 for "never advanced": its clock is the trace's plus this.
USAGE_CLOCK = 1.0
_END, _JOIN, _SUBMIT, _TICK = 0, 1, 2, 3  # event kinds, in their order at one instant


class PolicyError(MgpuError):
    """The policy placed a job where it cannot go: a bug in the policy, not in the trace."""


@dataclass(slots=True)
class SimJob:
    """A job (or one array task) of the replay, and what became of it."""

    sim_id: int  # the id the policy sees: queue order
    trace: TraceJob
    task: int | None = None  # the array task id; None: not an array
    state: str = "pending"  # pending, running, completed, timeout, cancelled, rejected
    start: float | None = None
    end: float | None = None
    node: str | None = None
    gpu_ids: tuple[int, ...] = ()
    reason: str | None = None

    @property
    def label(self) -> str:
        """``12``, or ``12_3`` for task 3 of array 12 (SLURM's way)."""
        return str(self.trace.id) if self.task is None else f"{self.trace.id}_{self.task}"

    @property
    def user(self) -> str:
        return self.trace.user

    @property
    def gpus(self) -> int:
        return self.trace.gpus

    @property
    def submit(self) -> float:
        return self.trace.submit

    @property
    def ran(self) -> bool:
        return self.start is not None and self.end is not None


@dataclass
class SimResult:
    """The jobs of a replay in queue order, the cluster (its fixed nodes; its pools and
    the nodes they asked for) and the passes run."""

    jobs: list[SimJob]
    nodes: list[tuple[str, int]]
    passes: int = 0
    pools: list[SimPool] = field(default_factory=list)
    pool_nodes: list[PoolNodeRecord] = field(default_factory=list)

    @property
    def total_gpus(self) -> int:
        return sum(g for _, g in self.nodes)


def parse_nodes(text: str) -> list[tuple[str, int]]:
    """``8x8`` → eight nodes of 8 GPUs; ``4x8,2x4`` → four of 8 and two of 4. Names are
    ``n01``, ``n02``... in that order (the order the policy sees them). ``none``: no fixed
    node (a cluster of node pools only)."""
    if text.strip().lower() == "none":
        return []
    shapes: list[tuple[int, int]] = []
    for part in text.split(","):
        count, x, gpus = part.strip().lower().partition("x")
        if not x or not count.isdigit() or not gpus.isdigit() or not int(count) or not int(gpus):
            raise UsageError(f"--nodes {text!r}: use COUNTxGPUS, e.g. 8x8 (eight nodes of 8 "
                             "GPUs) or 4x8,2x4")
        shapes.append((int(count), int(gpus)))
    total = sum(c for c, _ in shapes)
    if total > MAX_SIM_NODES:
        raise UsageError(f"--nodes {text!r}: {total:,} nodes, at most {MAX_SIM_NODES:,}")
    width = max(2, len(str(total)))
    names = (f"n{i:0{width}d}" for i in range(1, total + 1))
    return [(next(names), gpus) for count, gpus in shapes for _ in range(count)]


def simulate(trace: Sequence[TraceJob], nodes: list[tuple[str, int]], policy: Policy, *,
             queue: Queue | None = None, usage: Usage | None = None,
             default_time_limit: int = PLAN_LIMIT, backfill_depth: int = 1_000,
             pools: Sequence[SimPool] = ()) -> SimResult:
    """Replay ``trace`` (in queue order, as :func:`mgpu.core.trace.parse_trace` returns
    it) on ``nodes`` with ``policy``; see the module docstring for the rules.

    ``queue`` and ``usage``: the master's priority queue and fair-share usage, fresh (see
    :mod:`mgpu.core.simqueue`); without them, submission order and no usage.
    ``default_time_limit``: what a job without a limit counts as in the policy's plan;
    ``backfill_depth``: as the master's settings of those names. ``pools``: node pools
    that grow and shrink with the queue (:mod:`mgpu.core.simpools`)."""
    return _Replay(trace, nodes, policy, SubmitOrder() if queue is None else queue,
                   NoUsage() if usage is None else usage,  # (an empty queue is falsy)
                   default_time_limit=default_time_limit, backfill_depth=backfill_depth,
                   pools=SimPools(pools)).run()


@dataclass
class _Replay:
    trace: Sequence[TraceJob]
    nodes: list[tuple[str, int]]
    policy: Policy
    queue: Queue
    usage: Usage
    jobs: list[SimJob] = field(default_factory=list)
    holders: dict[str, list[int | None]] = field(default_factory=dict)  # GPU -> sim_id
    pending: dict[int, SimJob] = field(default_factory=dict)  # may start (order: ``queue``)
    waiting: dict[int, SimJob] = field(default_factory=dict)  # on dependencies, queue order
    queued_by_user: dict[str, int] = field(default_factory=dict)  # jobs pending or waiting
    by_trace_id: dict[int, list[SimJob]] = field(default_factory=dict)
    running_of: dict[int, int] = field(default_factory=dict)  # trace id -> tasks running
    events: list[tuple[float, int, int]] = field(default_factory=list)  # (t, kind, sim_id)
    default_time_limit: int = PLAN_LIMIT
    backfill_depth: int = 1_000
    running: dict[int, RunningSnapshot] = field(default_factory=dict)  # sim_id -> as seen
    passes: int = 0
    starts_matter: bool = False  # some job waits for another's start (`after`)
    pools: SimPools = field(default_factory=lambda: SimPools(()))

    def run(self) -> SimResult:
        # Pool nodes join (and leave) ``holders``: its order is the nodes' order.
        self.holders = {n: [None] * g for n, g in self.nodes}
        largest = max([g for _, g in self.nodes] + [self.pools.largest])
        self.starts_matter = any(d.kind == "after" for row in self.trace
                                 for alt in row.depends for d in alt)
        for row in self.trace:
            tasks = [None] if not row.array else list(row.array)
            for task in tasks:
                job = SimJob(len(self.jobs) + 1, row, task)
                self.jobs.append(job)
                self.by_trace_id.setdefault(row.id, []).append(job)
                heapq.heappush(self.events, (row.submit, _SUBMIT, job.sim_id))
                self._wake(self.pools.after_submit(row.submit))
        while self.events:
            now = self.events[0][0]
            changed = False  # by an event other than a pool's tick
            while self.events and self.events[0][0] == now:
                _, kind, sim_id = heapq.heappop(self.events)
                changed = changed or kind != _TICK
                if kind == _TICK:
                    continue
                if kind == _JOIN:
                    record = self.pools.records[sim_id]
                    self.holders[record.node_id] = [None] * record.gpus
                    self.pools.joined(record, now)
                    continue
                job = self.jobs[sim_id - 1]
                if kind == _END:
                    self._end(job)
                elif job.gpus > largest:
                    job.state, job.end = "rejected", now
                    job.reason = f"no node has {job.gpus} GPUs (largest has {largest})"
                else:
                    self.queued_by_user[job.user] = self.queued_by_user.get(job.user, 0) + 1
                    if job.trace.depends:
                        self.waiting[job.sim_id] = job
                    else:
                        self._enqueue(job)
            # A start can meet an `after` dependency: pass again at once, as the master's
            # next event would, so that no time passes in between.
            while changed and self._pass(now) and self.starts_matter:
                pass
            if self.pools.pools:
                self._tick_pools(now)
        return SimResult(self.jobs, self.nodes, self.passes, list(self.pools.pools.values()),
                         self.pools.records)

    def _tick_pools(self, now: float) -> None:
        """The pools' decision: nodes asked for queued to join, released ones gone."""
        tick = self.pools.tick(now, lambda: self._demand(now),
                               lambda node_id: any(h is not None for h in self.holders[node_id]))
        for at, i in tick.joins:
            heapq.heappush(self.events, (at, _JOIN, i))
        for node_id in tick.released:
            del self.holders[node_id]
        self._wake(tick.wake_at)

    def _demand(self, now: float) -> Iterator[Demand]:
        """The jobs that may start, as the pools see them (as the master's: a capped
        array's tasks past its ``%N`` are not in its queue)."""
        room: dict[int, int] = {}
        return (Demand(j.gpus, now - j.submit) for j in self.pending.values()
                if not self._over_cap(j, room))

    def _wake(self, times: list[float]) -> None:
        for t in times:
            heapq.heappush(self.events, (t, _TICK, 0))

    def _end(self, job: SimJob) -> None:
        assert job.end is not None and job.node is not None
        limit = job.trace.time_limit
        job.state = "timeout" if limit is not None and job.trace.duration > limit else (
            "completed")
        held = self.holders[job.node]
        for i in job.gpu_ids:
            held[i] = None
        del self.running[job.sim_id]
        self.running_of[job.trace.id] -= 1

    def _pass(self, now: float) -> bool:
        """One scheduling pass at ``now``: what may start, the policy, its placements.
        Whether it started any job."""
        self._settle(now)
        by_user: dict[str, int] = {}
        releases: dict[str, list[tuple[float, int]]] = {}  # as the master's NodeSnapshots
        for r in self.running.values():
            by_user[r.user] = by_user.get(r.user, 0) + len(r.gpu_ids)
            releases.setdefault(r.node_id, []).append((r.expected_end, len(r.gpu_ids)))
        self.usage.advance(now + USAGE_CLOCK, by_user, set(self.queued_by_user))
        free = {n: tuple(i for i, h in enumerate(held) if h is None)
                for n, held in self.holders.items()}
        if not self.pending or not any(free.values()):
            return False
        self.passes += 1
        placed = False
        asked: dict[int, SimJob] = {}  # what the policy has read of the pending jobs
        snapshot = Snapshot(
            now,
            self._ready(asked, now),
            [NodeSnapshot(n, len(held), free[n], releases=tuple(sorted(releases.get(n, ()))))
             for n, held in self.holders.items()],
            list(self.running.values()),
            self.default_time_limit,
            self.backfill_depth,
        )
        for p in self.policy(snapshot).placements:
            job = asked.pop(p.job_id, None)
            held = self.holders.get(p.node_id)
            if (job is None or held is None or len(p.gpu_ids) != job.gpus
                    or len(set(p.gpu_ids)) != job.gpus
                    or any(not 0 <= i < len(held) or held[i] is not None for i in p.gpu_ids)):
                raise PolicyError(f"the policy made an impossible placement at t={now:g}: "
                                  f"{p} (a bug in the policy: check its placements)")
            self._start(job, p.node_id, p.gpu_ids, now)
            self.usage.started(job.user, job.gpus)
            placed = True
        return placed

    def _start(self, job: SimJob, node_id: str, gpu_ids: tuple[int, ...], now: float) -> None:
        held = self.holders[node_id]
        for i in gpu_ids:
            held[i] = job.sim_id
        del self.pending[job.sim_id]
        self.queue.remove(job.sim_id)
        self._unwait(job.user)
        self.running_of[job.trace.id] = self.running_of.get(job.trace.id, 0) + 1
        job.state, job.start, job.node, job.gpu_ids = "running", now, node_id, gpu_ids
        limit = job.trace.time_limit
        job.end = now + (job.trace.duration if limit is None else min(job.trace.duration, limit))
        self.running[job.sim_id] = RunningSnapshot(
            job.sim_id, job.user, node_id, gpu_ids,
            now + (self.default_time_limit if limit is None else limit))
        heapq.heappush(self.events, (job.end, _END, job.sim_id))

    def _enqueue(self, job: SimJob) -> None:
        self.pending[job.sim_id] = job
        self.queue.add(JobSnapshot(job.sim_id, job.gpus, job.user, submitted_at=job.submit,
                                   time_limit=_whole_seconds(job.trace.time_limit)), 0.0)

    def _unwait(self, user: str) -> None:
        left = self.queued_by_user[user] - 1
        if left:
            self.queued_by_user[user] = left
        else:
            del self.queued_by_user[user]

    def _ready(self, asked: dict[int, SimJob], now: float) -> Iterator[JobSnapshot]:
        """The pending jobs the policy may start, in the queue's order, each noted in
        ``asked`` as it is read: lazily, as the master's, so that a policy that stops early
        does not pay for the rest of the queue. A capped array's tasks past its ``%N`` are
        left out."""
        room: dict[int, int] = {}
        for snap in self.queue.ordered(now, self.usage.factor):
            job = self.pending[snap.job_id]
            if not self._over_cap(job, room):
                asked[job.sim_id] = job
                yield snap

    def _over_cap(self, job: SimJob, room: dict[int, int]) -> bool:
        """Whether ``job`` is a task past its array's ``%N``, counting the tasks read so
        far in ``room`` (trace id -> tasks that may still start)."""
        row = job.trace
        if row.array_limit is None:
            return False
        left = room.setdefault(row.id, row.array_limit - self.running_of.get(row.id, 0))
        room[row.id] = left - 1
        return left <= 0

    def _settle(self, now: float) -> None:
        """Jobs whose dependencies are met join the queue; those whose dependencies can no
        longer be met are cancelled. In queue order: a dependency comes before its
        dependants, so one sweep settles a chain."""
        for job in list(self.waiting.values()):
            met = self._met(job.trace.depends)
            if met is None:
                continue
            del self.waiting[job.sim_id]
            if met:
                self._enqueue(job)
            else:
                self._unwait(job.user)
                job.state, job.end, job.reason = "cancelled", now, NEVER

    def _met(self, alternatives: tuple[tuple[Dependency, ...], ...]) -> bool | None:
        """True: some alternative holds; False: none ever can; None: not yet known."""
        outcome: bool | None = False
        for conditions in alternatives:
            alt: bool | None = True
            for cond in conditions:
                each = [_holds(cond.kind, j) for i in cond.ids for j in self.by_trace_id[i]]
                got = False if False in each else None if None in each else True
                if got is False:
                    alt = False
                    break
                if got is None:
                    alt = None
            if alt is True:
                return True
            if alt is None:
                outcome = None
        return outcome


def _whole_seconds(limit: float | None) -> int | None:
    """A trace's time limit as the policy sees one (whole seconds, rounded up)."""
    return None if limit is None else math.ceil(limit)


def _holds(kind: str, dep: SimJob) -> bool | None:
    """Whether ``dep`` meets one condition of ``kind``: True, False (never will) or None."""
    ended = dep.state in ("completed", "timeout", "cancelled", "rejected")
    if kind == "after":  # started (or will never start)
        return True if dep.start is not None or ended else None
    if kind == "afterany":
        return True if ended else None
    if not ended:
        return None
    ok = dep.state == "completed"
    return ok if kind == "afterok" else not ok
