"""The node side of the cluster state: the :class:`Node` record, and the handlers of what
nodes do (register, heartbeat, report an end, disconnect, fall silent).

:class:`NodeEvents` is the half of :class:`~mgpu.server.state.ClusterState` that decides
when a node is lost; what then happens to its jobs (requeued or ended) is the job side's
decision, :meth:`NodeEvents.node_lost`. Like every handler, these change memory and return
:class:`~mgpu.server.effects.Effects`; nothing here does I/O or reads the clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from mgpu.core import messages as m
from mgpu.core.gputypes import common_type
from mgpu.core.models import (
    NODE_TRANSITIONS,
    REGISTERED_STATES,
    EndCause,
    GpuInfo,
    GpuUsage,
    JobState,
    NodeInfo,
    NodeState,
    SimpleJob,
    run_key,
    utc,
)
from mgpu.core.node_models import BackendNode
from mgpu.server.accounting import end_run
from mgpu.server.effects import Effects
from mgpu.server.validate import register_problem


@dataclass
class Node:
    """A node as the master tracks it: its GPUs, who holds them, whether it answers."""

    node_id: str
    gpus: list[GpuInfo]
    hostname: str = ""
    connected: bool = True
    state: NodeState = NodeState.UP  # core/models.py: the states and their moves
    last_seen: float = 0.0
    down_since: float | None = None
    reason: str | None = None  # why it is degraded
    users: list[str] | None = None  # whose jobs it runs: None, everyone's
    pool: str | None = None  # its node pool (server/pools.py)
    partition: str | None = None  # its partition (core/partitions.py); None: the default
    drain_reason: str | None = None  # draining: no new jobs, its running jobs finish
    slurm_queue: bool = False  # a queue-in-SLURM bridge (server/handoff.py)
    # A SLURM bridge: its partition's SLURM nodes and their GPUs (server/slurm_gang.py).
    backend_nodes: list[BackendNode] | None = None

    @property
    def takes_jobs(self) -> bool:
        """Whether new jobs may be placed here: up, connected and not draining."""
        return self.state.takes_jobs and self.connected and self.drain_reason is None

    def busy(self) -> bool:
        return any(g.job_id is not None for g in self.gpus)
    avoid_outside: bool = True  # foreign_gpu_policy: avoid GPUs busy outside mgpu
    min_free_mib: int = 0  # a GPU with less free memory (by the last report) is not offered
    gpu_type: str = ""  # its GPUs' type (core/gputypes.py: common_type), set at registration

    def free_gpu_ids(self) -> tuple[int, ...]:
        """The GPUs no job holds that may be allocated (:meth:`offers`)."""
        return tuple(g.index for g in self.gpus if g.job_id is None and self.offers(g))

    def offers(self, g: GpuInfo) -> bool:
        """Whether ``g``, were no job holding it, could be allocated: not busy outside mgpu
        (under foreign_gpu_policy avoid), and with min_free_mib free (when reported)."""
        if g.busy_outside and self.avoid_outside:
            return False
        free = g.memory_free_mib
        return free is None or free >= self.min_free_mib

    def apply_usage(self, usage: list[GpuUsage]) -> bool:
        """Take a usage report (``Heartbeat.gpus``); whether the GPUs offered changed."""
        before = self.free_gpu_ids()
        by_index = {g.index: g for g in self.gpus}
        for u in usage:
            g = by_index.get(u.index)
            if g is not None:
                g.memory_used_mib, g.utilization = u.memory_used_mib, u.utilization
                g.processes = u.processes
                g.busy_outside = any(p.outside for p in u.processes)
        return self.free_gpu_ids() != before

    def release(self, job_id: int) -> None:
        for g in self.gpus:
            if g.job_id == job_id:
                g.job_id = None

    def info(self) -> NodeInfo:
        return NodeInfo(
            node_id=self.node_id,
            state=self.state.value,
            gpus=self.gpus,
            last_seen=utc(self.last_seen) if self.last_seen else None,
            down_since=utc(self.down_since) if self.down_since else None,
            hostname=self.hostname or None,
            reason=self.reason if self.state is NodeState.DEGRADED else None,
            users=self.users,
            pool=self.pool,
            draining=self.drain_reason is not None,
            drain_reason=self.drain_reason,
            free_gpu_ids=list(self.free_gpu_ids()),
            partition=self.partition,
            backend_nodes=self.backend_nodes,
        )

    def move(self, to: NodeState) -> None:
        """Change state along ``NODE_TRANSITIONS`` (staying put is no move); a forbidden
        move is a bug, raised (registration makes a new record instead)."""
        if to is not self.state and to not in NODE_TRANSITIONS[self.state]:
            raise AssertionError(f"node {self.node_id} cannot go from {self.state} to {to}")
        self.state = to

    def serves(self, user: str) -> bool:
        return self.users is None or user in self.users


class NodeEvents(ABC):
    """The node-side handlers of :class:`~mgpu.server.state.ClusterState`, which holds the
    memory they change."""

    jobs: dict[int, SimpleJob]
    nodes: dict[str, Node]
    envs: dict[int, dict[str, str]]  # of jobs not yet ended (kept to requeue)
    cancel_requested: set[int]
    node_timeout: float
    drained: dict[str, str]  # node id -> why it drains (kept across its re-registrations)

    def set_drain(self, node_id: str, reason: str | None) -> None:
        """Drain ``node_id`` (``reason``) or, with None, resume it. A node not registered
        yet is drained when it registers."""
        if reason is None:
            self.drained.pop(node_id, None)
        else:
            self.drained[node_id] = reason
        node = self.nodes.get(node_id)
        if node is not None:
            node.drain_reason = reason
    foreign_gpu_policy = "avoid"  # the master's; a node may send its own (Register)
    min_free_mib = 0

    @abstractmethod
    def part_ended(self, job: SimpleJob, node_id: str, msg: m.JobEnded, now: float,
                   effects: Effects) -> None:
        """A node reports its part of a running gang job ended (``gang.py``)."""

    @abstractmethod
    def on_rendezvous(self, node_id: str, msg: m.JobStarted, effects: Effects) -> None:
        """A gang's rank 0 reports its rendezvous (``gang.py``)."""

    @abstractmethod
    def node_lost(self, job: SimpleJob, why: str, now: float) -> Effects:
        """A running job's node is gone: requeue it if it may be, else end it as
        node_fail (the job side, ``state.py``, decides)."""

    def unclaimed(self, now: float) -> Effects:
        """Lose the jobs loaded as running whose node has not come back since the master
        restarted (called once, a node timeout after the start)."""
        effects = Effects()
        for job in list(self.jobs.values()):
            if job.state is JobState.RUNNING and job.node not in self.nodes:
                effects.merge(self.node_lost(
                    job, f"node {job.node} did not return after the master restarted", now))
        return effects

    def running_on(self, node_id: str) -> list[SimpleJob]:
        """The running jobs with a part on ``node_id`` (a gang's that has not ended)."""
        return [
            j for j in self.jobs.values() if j.state is JobState.RUNNING and (
                j.node == node_id if j.parts is None else
                any(p.node == node_id and not p.ended for p in j.parts))
        ]

    def on_register(self, msg: m.Register, now: float) -> tuple[m.Registered, Effects]:
        """A node (re)joins: reconcile what it runs with what the master believes.

        A registration that cannot be true (no GPUs, the same GPU twice, a node id that
        cannot be one) is refused, and nothing changes.
        """
        why = register_problem(msg)
        if why is not None:
            return m.Registered(accepted=False, error=why), Effects()
        effects = Effects()
        node = Node(msg.node_id, [GpuInfo(index=g.index, name=g.name,
                                          memory_total_mib=g.memory_total_mib, uuid=g.uuid)
                                  for g in msg.gpus],
                    hostname=msg.hostname, last_seen=now, users=msg.users, pool=msg.pool,
                    drain_reason=self.drained.get(msg.node_id), partition=msg.partition,
                    slurm_queue=msg.slurm_queue, backend_nodes=msg.backend_nodes)
        if msg.degraded is not None:
            node.state, node.reason = NodeState.DEGRADED, msg.degraded
        node.gpu_type = common_type([g.name for g in node.gpus])
        node.apply_usage([GpuUsage(index=g.index, memory_used_mib=g.memory_used_mib,
                                   utilization=g.utilization, processes=g.processes)
                          for g in msg.gpus])  # (as it joins: no GPU busy outside is given)
        node.avoid_outside = (msg.foreign_gpu_policy or self.foreign_gpu_policy) != "ignore"
        node.min_free_mib = (self.min_free_mib if msg.min_free_mib is None
                             else msg.min_free_mib)
        self.nodes[msg.node_id] = node
        reported = {r.key for r in msg.running}
        kill: list[str] = []
        offsets: dict[str, int] = {}
        believed = {run_key(j.id, j.run): j for j in self.running_on(msg.node_id)}
        by_index = {g.index: g for g in node.gpus}
        for key, job in believed.items():
            part = next((p for p in job.parts or () if p.node == msg.node_id and not p.ended),
                        None)
            if key in reported or (part is not None and not part.started):
                for i in job.gpu_ids if part is None else part.gpu_ids:
                    if i in by_index:
                        by_index[i].job_id = job.id
                if key in reported:
                    offsets[key] = -1  # filled in by the outer layer (it owns the files)
            else:
                effects.merge(self.node_lost(
                    job, f"node {msg.node_id} restarted without this job", now))
        for key in sorted(reported):
            if key not in believed:
                kill.append(key)
        return (
            m.Registered(accepted=True, output_offsets=offsets, kill=kill),
            effects,
        )

    def on_heartbeat(self, node_id: str, now: float) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.last_seen = now

    def on_gpu_usage(self, node_id: str, usage: list[GpuUsage]) -> bool:
        """A node reports its GPUs' usage; whether the GPUs it offers changed (a
        scheduling pass is then due)."""
        node = self.nodes.get(node_id)
        return node is not None and node.apply_usage(usage)

    def on_job_ended(
        self,
        node_id: str,
        msg: m.JobEnded,
        now: float,
        *,
        node: Node | None = None,
    ) -> Effects:
        """A node reports a job's end (after all its output)."""
        effects = Effects()
        effects.sends.append((node_id, m.EndedAck([msg.key])))
        job = self.jobs.get(msg.job_id)
        if job is not None and job.parts is not None and job.state is JobState.RUNNING:
            self.part_ended(job, node_id, msg, now, effects)
            return effects
        node = node or self.nodes.get(node_id)
        if (job is None or job.state is not JobState.RUNNING or job.node != node_id
                or job.run != msg.run):
            return effects  # settled already, or an old run: just acknowledge
        if node is not None:
            node.release(job.id)
        try:
            to = JobState(msg.state)
        except ValueError:
            to = JobState.FAILED
        if job.id in self.cancel_requested:
            self.cancel_requested.discard(job.id)
            if to is not JobState.COMPLETED:
                to = JobState.CANCELLED
        if not to.ended:
            to = JobState.FAILED
        if to is JobState.NODE_FAIL and msg.end_cause is EndCause.NODE_LOST:
            # The node saw the job's machine fail under it (a SLURM bridge: NODE_FAIL, a
            # preemption): requeued as for a lost node, when it may be.
            return effects.merge(self.node_lost(job, msg.reason or "its node was lost", now))
        if msg.gpu_stats is not None:  # its GPUs' figures, as its node measured them
            job.gpu_mem_peak_mib = msg.gpu_stats.memory_peak_mib
            job.gpu_util_mean = msg.gpu_stats.utilization_mean
        end_run(effects, job, to, now, reason=msg.reason, exit_code=msg.exit_code,
                end_cause=msg.end_cause)
        self.envs.pop(job.id, None)
        effects.ended.append(job.id)
        return effects

    def on_job_started(self, node_id: str, msg: m.JobStarted) -> Effects:
        """A node says a run started; its ``backend_id`` (the SLURM job id of a run on the
        SLURM bridge) is kept on the job, if that run is still the job's current one."""
        effects = Effects()
        if msg.rendezvous is not None:
            self.on_rendezvous(node_id, msg, effects)
        job = self.jobs.get(msg.job_id)
        if (msg.backend_id is not None and job is not None and job.node == node_id
                and job.run == msg.run and job.state is JobState.RUNNING
                and (job.backend_id, job.backend_nodes) != (msg.backend_id, msg.backend_nodes)):
            job.backend_id = msg.backend_id
            job.backend_nodes = msg.backend_nodes or job.backend_nodes
            effects.update(job)
        return effects

    def on_node_health(self, node_id: str, msg: m.NodeHealth) -> None:
        """A connected node says it cannot take jobs now (``degraded``), or can again."""
        node = self.nodes.get(node_id)
        if node is None or node.state not in REGISTERED_STATES:
            return
        node.move(NodeState.UP if msg.degraded is None else NodeState.DEGRADED)
        node.reason = msg.degraded

    def on_disconnect(self, node_id: str, now: float) -> None:
        node = self.nodes.get(node_id)
        if node is not None and node.state in REGISTERED_STATES:
            node.connected = False
            node.move(NodeState.UNREACHABLE)

    def on_tick(self, now: float) -> Effects:
        """Declare nodes silent for longer than the timeout down; end their jobs."""
        effects = Effects()
        for node in self.nodes.values():
            if node.state is NodeState.DOWN or now - node.last_seen <= self.node_timeout:
                continue
            node.move(NodeState.DOWN)
            node.connected = False
            node.down_since = now
            for job in self.running_on(node.node_id):
                node.release(job.id)
                effects.merge(self.node_lost(
                    job, f"node {node.node_id} stopped answering for over "
                    f"{self.node_timeout:g}s", now))
        return effects
