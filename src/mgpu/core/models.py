"""The job state machine and the records the cluster is made of.

Jobs move through a closed set of states::

    pending ──► running ──► completed | failed | cancelled | timeout | node_fail
       │           │
       │           └──► pending            (requeued after its node was lost)
       └──► cancelled | failed             (cancelled or rejected before it started)
    node_fail ──► pending                  (requeued later, by the failure policy)

``TRANSITIONS`` is the whole table; :func:`advance` is the only way a job changes state.
Why a job ended is kept apart from its state: ``exit_code``, ``reason`` (the words for
people) and :class:`EndCause` (what happened, for programs: a node sends it with a job's end,
``JobEnded.end_cause``).

Nodes, as the master sees them, have a closed set of states too (:class:`NodeState`)::

    (register) ──► up ◄──► degraded        (the node says it can or cannot take jobs)
                   │          │
                   └────┬─────┘
                        ▼
                   unreachable              (its link dropped; its jobs may still run)
                        │
                        ▼
                      down                  (silent past node_timeout: its jobs are lost)

A registration starts the node afresh, from any state, as ``up`` or ``degraded``.
``NODE_TRANSITIONS`` is the table of every other move.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from mgpu.core.errors import InvalidTransition

# The records of nodes and their GPUs live in core/node_models.py; named here too, as ever.
from mgpu.core.node_models import MAX_GPU_PROCESSES as MAX_GPU_PROCESSES
from mgpu.core.node_models import GpuInfo as GpuInfo
from mgpu.core.node_models import GpuProcess as GpuProcess
from mgpu.core.node_models import GpuUsage as GpuUsage
from mgpu.core.node_models import JobProcess as JobProcess
from mgpu.core.node_models import NodeInfo as NodeInfo
from mgpu.core.partitions import PARTITION_PATTERN


class JobState(enum.StrEnum):
    """Where a job is in its life. Stored and sent as the lowercase value."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    NODE_FAIL = "node_fail"

    @property
    def ended(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


ACTIVE_STATES = frozenset({JobState.PENDING, JobState.RUNNING})
ENDED_STATES = frozenset(s for s in JobState if s.ended)

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {
            JobState.COMPLETED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.TIMEOUT,
            JobState.NODE_FAIL,
            JobState.PENDING,
        }
    ),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMEOUT: frozenset(),
    JobState.NODE_FAIL: frozenset({JobState.PENDING}),
}


class EndCause(enum.StrEnum):
    """Why a job's run ended: what happened, beside the ended state and the free-text
    ``reason``. Sent as the lowercase value with a run's end (``JobEnded.end_cause``; None
    from a node that does not say)."""

    EXITED = "exited"  # its main process exited by itself (``exit_code`` says how)
    SIGNALED = "signaled"  # a signal ended it (not one of a cancel or a time limit)
    CANCELLED = "cancelled"  # a user, or the master, cancelled it
    TIME_LIMIT = "time_limit"  # it ran past its time limit and was stopped
    NODE_LOST = "node_lost"  # its node stopped answering, or came back without it
    FAILED_TO_START = "failed_to_start"  # refused or not startable on the node
    KEEPER_DIED = "keeper_died"  # the node's keeper died: nobody saw the job end


class MessageType(enum.StrEnum):
    """The tag of every WebSocket message between agents and the master."""

    REGISTER = "register"
    HEARTBEAT = "heartbeat"
    JOB_STARTED = "job_started"
    JOB_OUTPUT = "job_output"
    JOB_ENDED = "job_ended"
    REGISTERED = "registered"
    START_JOB = "start_job"
    CANCEL_JOB = "cancel_job"
    ENDED_ACK = "ended_ack"
    JOB_INPUT = "job_input"
    JOB_SIGNAL = "job_signal"
    JOB_RESIZE = "job_resize"
    NODE_HEALTH = "node_health"
    JOB_INPUT_ACK = "job_input_ack"
    NODE_LOG = "node_log"
    JOB_QUEUED = "job_queued"  # (queue-in-SLURM bridges: README "Queue in SLURM")
    HOLD_JOB = "hold_job"


class NodeState(enum.StrEnum):
    """Where a node is, as the master sees it. Stored and sent as the lowercase value."""

    UP = "up"  # connected, takes jobs
    DEGRADED = "degraded"  # connected, takes no new jobs (NodeInfo.reason says why)
    UNREACHABLE = "unreachable"  # its link dropped; not yet declared down
    DOWN = "down"  # silent for longer than the node timeout: its jobs were requeued or ended

    @property
    def takes_jobs(self) -> bool:
        return self is NodeState.UP


# Every move but registration (which starts a node afresh, as up or degraded, from any state).
NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.UP: frozenset({NodeState.DEGRADED, NodeState.UNREACHABLE, NodeState.DOWN}),
    NodeState.DEGRADED: frozenset({NodeState.UP, NodeState.UNREACHABLE, NodeState.DOWN}),
    NodeState.UNREACHABLE: frozenset({NodeState.DOWN}),
    NodeState.DOWN: frozenset(),
}
REGISTERED_STATES = frozenset({NodeState.UP, NodeState.DEGRADED})


def run_key(job_id: int, run: int) -> str:
    """The name of one run of a job on a node: ``"JOBID.RUN"`` (run 0, then 1 after a
    requeue, ...). Spool and exit files on the node and output files on the master use it."""
    return f"{job_id}.{run}"


def utc(ts: float) -> datetime:
    """A UTC datetime from a Unix timestamp."""
    return datetime.fromtimestamp(ts, UTC)


class JobSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a user asks for when submitting a job (the body of one submission)."""

    command: str
    gpus: int = 1
    name: str | None = None
    cwd: str = "/"
    env: dict[str, str] = msgspec.field(default_factory=dict)
    user: str = ""  # the submitting Unix user; the master decides what it trusts
    time_limit: int | None = None  # seconds; None: the master's default; 0: unlimited
    requeue: bool = True  # requeue when its node is lost (batch jobs)
    max_requeue: int | None = None  # None: the master's default (3)
    interactive: bool = False  # an srun: cancelled when its client goes, never requeued
    stdin: bool = False  # keep the job's stdin open for `mgpu attach` / srun to write to
    pty: bool = False  # run it on a pseudo-terminal (srun --pty)
    argv: list[str] | None = None  # run this without a shell (``command`` shows it joined)
    # Scheduling (issue 11): points added to (--priority, admins only) or taken off (--nice;
    # below 0, admins only) the job's priority.
    priority: int | None = None
    nice: int = 0
    # Job controls (README "Job controls"): kept together, at the end.
    dependency: str | None = None  # afterok:12:13,afterany:14 (',' all hold, '?' any)
    kill_on_invalid_dep: bool = True  # a dependency that can never hold cancels the job
    array: str | None = None  # 0-99%8 or 1,3,5-7: one job per task, at most N at once
    hold: bool = False  # queued held, until `mgpu release`
    begin: float | None = None  # POSIX time before which it may not start
    retries: int = 0  # run again after a non-zero exit, at most this many times
    # GPU constraints (README "GPUs as they are"): a GPU type (matched as core/gputypes.py
    # says) and the free memory each of its GPUs must have, in MiB.
    gpu_type: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    gpu_mem_mib: Annotated[int, msgspec.Meta(ge=1, le=2**40)] | None = None
    # Notifications (core/notify.py): mail on these events (BEGIN, END, FAIL, ALL) to
    # mail_user; a JSON webhook to notify_url on every begin and end.
    mail_type: list[str] | None = None
    mail_user: str | None = None
    notify_url: str | None = None
    # A multi-node (gang) job (README "Multi-node jobs"): ``gpus`` in all, spread evenly over
    # ``nodes`` nodes, allocated all or nothing; ``ntasks_per_node`` tasks on each;
    # ``slurm_env`` adds SLURM's variables (SLURM_PROCID, ...) to each task's environment.
    nodes: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    ntasks_per_node: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    slurm_env: bool = False

    # Partitions (README "Mixed mode"): run only on this partition's nodes (None: the
    # default partition's, or a spill partition's when the master allows it).
    partition: Annotated[str, msgspec.Meta(max_length=64, pattern=PARTITION_PATTERN)] | None = (
        None)


class TaskPart(msgspec.Struct, kw_only=True):
    """One node's part of a running gang job: node rank = its place in ``SimpleJob.parts``."""

    node: str
    gpu_ids: list[int]
    started: bool = False  # its StartJob was sent (rank 0 first: its agent picks the port)
    ended: bool = False
    state: str | None = None  # how it ended (a JobState value)
    exit_code: int | None = None
    reason: str | None = None  # set on the job's first failed part only: why it failed
    cause: str | None = None  # and its EndCause value


class SimpleJob(msgspec.Struct, kw_only=True):
    """One job as the master knows it and as ``--json`` shows it (the JSON contract)."""

    id: int
    name: str
    user: str
    state: JobState
    gpus: int
    command: str
    cwd: str
    node: str | None = None
    gpu_ids: list[int] = msgspec.field(default_factory=list)
    exit_code: int | None = None
    reason: str | None = None
    time_limit: int | None = None
    requeues: int = 0
    max_requeue: int = 0
    interactive: bool = False
    stdin: bool = False
    pty: bool = False
    argv: list[str] | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    end_cause: EndCause | None = None  # why it ended, beside ``reason``'s words
    # Scheduling (issue 11): why a pending job waits, as a code (a value of
    # core/scheduler.PendingReason), and when the backfill plan expects it to start.
    pending_reason: str | None = None
    expected_start: datetime | None = None
    priority: int = 0  # --priority (admins): points added to its priority
    nice: int = 0  # --nice: points taken off (below 0: admins)
    # Job controls (README "Job controls"): kept together, at the end.
    dependency: str | None = None
    kill_on_invalid_dep: bool = True
    array_job_id: int | None = None  # the array it is a task of (its first task's id)
    array_task_id: int | None = None
    array_throttle: int | None = None  # the %N of its array
    held: bool = False
    begin_at: datetime | None = None  # not before (--begin, or a retry's back-off)
    retries: int = 0  # runs again after a non-zero exit (apart from ``requeues``)
    max_retries: int = 0

    @property
    def run(self) -> int:
        """The number of the job's current run (0, then 1, ...): its requeues and retries
        together; it names the run's files (:func:`run_key`)."""
        return self.requeues + self.retries
    # GPU constraints as submitted (JobSpec), and its GPUs' figures while it last ran, as
    # its node measured them (None: not measured): peak memory used (summed over its
    # GPUs) and mean utilisation in percent.
    gpu_type: str | None = None
    gpu_mem_mib: int | None = None
    gpu_mem_peak_mib: int | None = None
    gpu_util_mean: float | None = None
    # Notifications, as submitted (JobSpec): mail events and address, webhook URL.
    mail_type: list[str] | None = None
    mail_user: str | None = None
    notify_url: str | None = None
    # Its id in the engine that runs it, when that is not an mgpu node (the SLURM job id).
    backend_id: str | None = None
    # A multi-node (gang) job (JobSpec): ``gpus`` counts them all; ``node``/``gpu_ids`` are
    # rank 0's; ``parts`` every node's, in node-rank order, while it runs (None: one node).
    nodes: int = 1
    ntasks_per_node: int = 1
    slurm_env: bool = False
    parts: list[TaskPart] | None = None
    rendezvous: str | None = None  # MASTER_ADDR:MASTER_PORT, as rank 0's agent chose them
    # Partitions (README "Mixed mode"): the partition it asked for (None: the default).
    partition: str | None = None
    # The SLURM nodes its current run holds (SLURM's NodeList, "n[1-2]"), on a SLURM bridge.
    backend_nodes: str | None = None

    @property
    def gpus_per_node(self) -> int:
        return self.gpus // self.nodes if self.nodes > 1 else self.gpus

    def nodes_of(self) -> list[str]:
        """The nodes it runs on (rank order), or ran on last."""
        if self.parts:
            return [p.node for p in self.parts]
        return [self.node] if self.node is not None else []

    @property
    def job_id(self) -> int:
        """The founding name of ``id``."""
        return self.id

    def to_dict(self) -> dict[str, Any]:
        """The job as plain JSON-ready data (the ``--json`` contract)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


def advance(
    job: SimpleJob,
    to: JobState,
    now: float,
    *,
    reason: str | None = None,
    exit_code: int | None = None,
    end_cause: EndCause | None = None,
) -> None:
    """Move ``job`` to state ``to`` at time ``now``, or raise :class:`InvalidTransition`.

    Sets ``started_at`` on entering running, ``ended_at`` on entering an ended state, and
    clears the placement when a job goes back to pending. ``reason`` replaces the old one.
    Entering an ended state sets ``end_cause`` (``end_cause``, else what ``to`` and
    ``exit_code`` say: :func:`end_cause_of`); any other move clears it.
    """
    if to not in TRANSITIONS[job.state]:
        raise InvalidTransition(job.id, job.state.value, to.value)
    job.state = to
    job.reason = reason
    if to is not JobState.PENDING:  # why it waited no longer holds
        job.pending_reason = None
        job.expected_start = None
    if to is JobState.RUNNING:
        job.started_at = utc(now)
        job.ended_at = None
        job.exit_code = None
    elif to is JobState.PENDING:
        job.node = None
        job.gpu_ids = []
        job.started_at = None
        job.ended_at = None
        job.exit_code = None
        job.backend_id = job.backend_nodes = None
        job.parts = None
        job.rendezvous = None
    else:
        job.ended_at = utc(now)
        job.exit_code = exit_code
        job.end_cause = end_cause_of(to, end_cause, exit_code)
        return
    job.end_cause = None


_CAUSE_OF_STATE = {
    JobState.COMPLETED: EndCause.EXITED,
    JobState.CANCELLED: EndCause.CANCELLED,
    JobState.TIMEOUT: EndCause.TIME_LIMIT,
    JobState.NODE_FAIL: EndCause.NODE_LOST,
}


def end_cause_of(state: JobState, given: EndCause | None,
                 exit_code: int | None) -> EndCause | None:
    """Why a job that ended in ``state`` ended: ``given`` (what its node saw), unless the
    state itself says more (a cancel or a time limit ends the job with the signal it sent);
    without ``given``, what the state says (a failed job with an exit code exited)."""
    if state in (JobState.CANCELLED, JobState.TIMEOUT) and given in (
            None, EndCause.EXITED, EndCause.SIGNALED):
        return _CAUSE_OF_STATE[state]
    if given is not None:
        return given
    if state is JobState.FAILED:
        return EndCause.EXITED if exit_code is not None else None
    return _CAUSE_OF_STATE.get(state)

