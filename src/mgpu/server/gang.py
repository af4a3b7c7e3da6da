"""Multi-node (gang) jobs on the master: starting each node's part, and one job's end from
its parts' ends (``core/gang.py`` has the pure rules, README "Multi-node jobs").

A gang runs as one job with one ``TaskPart`` per node (``SimpleJob.parts``, node-rank order;
``node``/``gpu_ids`` are rank 0's). Rank 0's part starts first, with ``rendezvous``: its agent
picks ``MASTER_ADDR``/``MASTER_PORT`` and reports them (``JobStarted.rendezvous``); the master
saves them and then starts the other parts with the same two. When a part fails (ends other
than completed), the others are stopped (the node's cancel: SIGTERM, grace, SIGKILL) and the
job ends as that first failure did, with its exit code. A cancel or a time limit reaches every
part. A lost node loses the whole job (requeued when it may be: ``state.node_lost``).
Like every handler, nothing here does I/O or reads the clock.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mgpu.core import messages as m
from mgpu.core.errors import Rejected, UsageError
from mgpu.core.gang import part_env
from mgpu.core.models import EndCause, JobSpec, JobState, SimpleJob, TaskPart
from mgpu.server.accounting import end_run
from mgpu.server.effects import Effects
from mgpu.server.node_events import Node
from mgpu.server.slurm_gang import check_on_bridges


class GangJobs(ABC):
    """The gang part of :class:`~mgpu.server.state.ClusterState` (first in its bases, so that
    its methods stand where the other halves declare them abstract)."""

    jobs: dict[int, SimpleJob]
    nodes: dict[str, Node]
    envs: dict[int, dict[str, str]]
    cancel_requested: set[int]

    if TYPE_CHECKING:  # (defined by the other halves, after this one in the MRO)
        def run_env(self, job: SimpleJob) -> dict[str, str]: ...
        def node_lost(self, job: SimpleJob, why: str, now: float) -> Effects: ...
        def retried(self, job: SimpleJob, state: str, exit_code: int | None,
                    cause: EndCause | None) -> bool: ...
        def retry(self, job: SimpleJob, exit_code: int | None, now: float,
                  effects: Effects) -> None: ...

    @staticmethod
    def part_on(job: SimpleJob, node_id: str) -> TaskPart | None:
        """``job``'s part on ``node_id`` that has not ended (None: none, or not a gang)."""
        for part in job.parts or ():
            if part.node == node_id and not part.ended:
                return part
        return None

    def start_part(self, job: SimpleJob, rank: int, effects: Effects) -> None:
        """Send node rank ``rank``'s part its order (rank 0's picks the rendezvous)."""
        assert job.parts is not None
        part = job.parts[rank]
        part.started = True
        addr = port = None
        if job.rendezvous is not None:
            addr, _, port_text = job.rendezvous.rpartition(":")
            port = int(port_text)
        env = self.run_env(job) | part_env(
            job_id=job.id, nodes=[p.node for p in job.parts], rank=rank,
            tasks_per_node=job.ntasks_per_node, gpus_per_node=job.gpus_per_node,
            master_addr=addr, master_port=port, slurm_env=job.slurm_env)
        effects.sends.append((part.node, m.StartJob(
            job_id=job.id, run=job.run, command=job.command, cwd=job.cwd, env=env,
            gpu_ids=part.gpu_ids, user=job.user, name=job.name, time_limit=job.time_limit,
            stdin=job.stdin and rank == 0, pty=job.pty, argv=job.argv,
            rendezvous=rank == 0, tasks=job.ntasks_per_node)))

    def on_rendezvous(self, node_id: str, msg: m.JobStarted, effects: Effects) -> None:
        """Rank 0's agent picked the rendezvous: keep it, then start the other parts."""
        job = self.jobs.get(msg.job_id)
        if (job is None or job.parts is None or job.state is not JobState.RUNNING
                or job.run != msg.run or job.node != node_id or job.rendezvous is not None
                or msg.rendezvous is None):
            return
        job.rendezvous = msg.rendezvous
        for rank, part in enumerate(job.parts):
            if not part.started and not part.ended:
                self.start_part(job, rank, effects)
        effects.update(job)

    def stop_parts(self, job: SimpleJob, reason: str, effects: Effects,
                   state: str = JobState.CANCELLED.value) -> None:
        """Stop every part still running (its node cancels it); a part not started yet
        never will be."""
        for part in job.parts or ():
            if part.ended:
                continue
            if part.started:
                effects.sends.append((part.node, m.CancelJob(job.id, reason)))
            else:
                part.ended, part.state = True, state

    def release_parts(self, job: SimpleJob) -> None:
        """Free the GPUs of every node of ``job``."""
        for node_id in job.nodes_of():
            node = self.nodes.get(node_id)
            if node is not None:
                node.release(job.id)

    def part_ended(self, job: SimpleJob, node_id: str, msg: m.JobEnded, now: float,
                   effects: Effects) -> None:
        """A node reports its part of a running gang ``job`` ended."""
        part = self.part_on(job, node_id)
        if part is None or job.run != msg.run:
            return  # an old run's, or one already settled: just acknowledged
        node = self.nodes.get(node_id)
        if node is not None:
            node.release(job.id)
        if msg.state == JobState.NODE_FAIL.value and msg.end_cause is EndCause.NODE_LOST:
            effects.merge(self.node_lost(job, msg.reason or f"node {node_id} was lost", now))
            return
        rank = job.parts.index(part) if job.parts else 0
        part.ended, part.state, part.exit_code = True, msg.state, msg.exit_code
        if rank == 0 and msg.gpu_stats is not None:
            job.gpu_mem_peak_mib = msg.gpu_stats.memory_peak_mib
            job.gpu_util_mean = msg.gpu_stats.utilization_mean
        first = job.parts is not None and not any(p.reason for p in job.parts)
        if msg.state != JobState.COMPLETED.value and first:
            k = job.ntasks_per_node  # (node rank r runs tasks r*k .. r*k+k-1)
            tasks = f"task {rank}" if k == 1 else f"tasks {rank * k}-{rank * k + k - 1}"
            part.reason = f"{tasks} on {node_id}: {msg.reason or msg.state}"
            part.cause = msg.end_cause.value if msg.end_cause is not None else None
            if job.id not in self.cancel_requested:
                self.stop_parts(job, f"{tasks} of the job failed", effects)
        if any(not p.ended for p in job.parts or ()):
            effects.update(job)
            return
        self._gang_over(job, now, effects)

    def _gang_over(self, job: SimpleJob, now: float, effects: Effects) -> None:
        """Every part has ended: the job ends as its first failure did, else completed."""
        failed = next((p for p in job.parts or () if p.reason), None)
        if job.id in self.cancel_requested:
            self.cancel_requested.discard(job.id)
            to, code = JobState.CANCELLED, None
            reason, cause = "cancelled", None
        elif failed is None:
            to, code, reason, cause = JobState.COMPLETED, 0, None, None
        else:
            try:
                to = JobState(failed.state or JobState.FAILED.value)
            except ValueError:
                to = JobState.FAILED
            if not to.ended or to is JobState.COMPLETED:
                to = JobState.FAILED
            code, reason = failed.exit_code, failed.reason
            cause = EndCause(failed.cause) if failed.cause in _CAUSES else None
            if self.retried(job, to.value, code, cause):  # --retries: the whole gang again
                self.retry(job, code, now, effects)
                return
        end_run(effects, job, to, now, reason=reason, exit_code=code, end_cause=cause)
        self.envs.pop(job.id, None)
        effects.ended.append(job.id)


_CAUSES = frozenset(c.value for c in EndCause)


def check_gang(spec: JobSpec, where: str, nodes: Iterable[Node]) -> int:
    """Refuse a gang that cannot be (GPUs that do not split evenly, a terminal for many
    tasks, more nodes than have registered); the GPUs it asks of each node."""
    if spec.nodes == 1 and spec.ntasks_per_node == 1:
        return spec.gpus
    if spec.gpus % spec.nodes:
        raise UsageError(
            f"{where}{spec.gpus} GPUs do not split evenly over {spec.nodes} nodes: ask for a "
            f"multiple of {spec.nodes} (-G), or give --gpus-per-node")
    if spec.pty:
        raise UsageError(f"{where}--pty runs one task on a terminal; a job of "
                         f"{spec.nodes * spec.ntasks_per_node} tasks cannot have one: drop "
                         "--pty (stdin still goes to task 0)")
    each = spec.gpus // spec.nodes
    nodes = list(nodes)
    if check_on_bridges(spec, each, where, nodes):  # SLURM runs it whole (slurm_gang.py)
        return each
    known = [n for n in nodes if len(n.gpus) >= each and n.partition == spec.partition]
    registered = len(known)
    if known and registered < spec.nodes:
        raise Rejected(
            f"{where}asks for {spec.nodes} nodes with {each} GPU{'s' if each != 1 else ''} "
            f"each but only {registered} "
            f"such node{'s are' if registered != 1 else ' is'} registered"
            f"{f' in partition {spec.partition}' if spec.partition else ''} "
            f"({', '.join(n.node_id for n in known[:5])}): ask for at most {registered} (-N)")
    return each
