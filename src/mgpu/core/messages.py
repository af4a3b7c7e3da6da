"""Every message mgpu sends, one typed struct each, named by direction.

* node → master and master → node (defined here): msgpack over one WebSocket per agent, a
  tagged union (``NodeMessage`` and ``MasterMessage``) whose tag is a :class:`MessageType`
  value (defined in ``core/models.py``, where the seed puts it).
* client → master (``*Request``) and master → client (``*Reply``): HTTP/1.1 with JSON bodies
  under ``/api/v1/``, defined in ``core/api_messages.py`` and re-exported here.

Output frames (the node spool, the master's copy and the stream a client reads) are defined
in ``core/frames.py`` and re-exported here.
"""

from __future__ import annotations

from typing import Annotated, Protocol, TypeVar

import msgspec

from mgpu.core.api_messages import PROTOCOL_VERSION as PROTOCOL_VERSION
from mgpu.core.api_messages import AuditEvent as AuditEvent
from mgpu.core.api_messages import CancelReply as CancelReply
from mgpu.core.api_messages import CancelRequest as CancelRequest
from mgpu.core.api_messages import CancelResult as CancelResult
from mgpu.core.api_messages import DrainReply as DrainReply
from mgpu.core.api_messages import DrainRequest as DrainRequest
from mgpu.core.api_messages import ErrorReply as ErrorReply
from mgpu.core.api_messages import EventListReply as EventListReply
from mgpu.core.api_messages import HealthReply as HealthReply
from mgpu.core.api_messages import JobListReply as JobListReply
from mgpu.core.api_messages import NodeCredentialReset as NodeCredentialReset
from mgpu.core.api_messages import OutputEnd as OutputEnd
from mgpu.core.api_messages import OutputStatus as OutputStatus
from mgpu.core.api_messages import PoolInfo as PoolInfo
from mgpu.core.api_messages import ResizeRequest as ResizeRequest
from mgpu.core.api_messages import SignalRequest as SignalRequest
from mgpu.core.api_messages import SubmitReply as SubmitReply
from mgpu.core.api_messages import SubmitRequest as SubmitRequest
from mgpu.core.api_messages import TokenCreated as TokenCreated
from mgpu.core.api_messages import TokenCreateRequest as TokenCreateRequest
from mgpu.core.api_messages import TokenInfo as TokenInfo
from mgpu.core.api_messages import TokenListReply as TokenListReply
from mgpu.core.api_messages import TokenRevokeReply as TokenRevokeReply
from mgpu.core.api_messages import TokenRevokeRequest as TokenRevokeRequest
from mgpu.core.api_messages import UserName as UserName
from mgpu.core.api_messages import WaitRequest as WaitRequest
from mgpu.core.api_messages import WhoAmIReply as WhoAmIReply
from mgpu.core.frames import FRAME_HEADER as FRAME_HEADER
from mgpu.core.frames import STREAM_END as STREAM_END
from mgpu.core.frames import STREAM_STATUS as STREAM_STATUS
from mgpu.core.frames import STREAM_STDERR as STREAM_STDERR
from mgpu.core.frames import STREAM_STDOUT as STREAM_STDOUT
from mgpu.core.frames import frame as frame
from mgpu.core.frames import split_frames as split_frames
from mgpu.core.models import EndCause, GpuInfo, GpuUsage, run_key
from mgpu.core.models import MessageType as MessageType
from mgpu.core.node_models import BackendNode as BackendNode
from mgpu.core.partitions import PARTITION_PATTERN

T_co = TypeVar("T_co", covariant=True)
T_msg = TypeVar("T_msg")

# Bounds checked as node messages are decoded: a message outside them is malformed, and the
# master cuts off the node that sent it (docs/protocol.md).
JobId = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
RunNo = Annotated[int, msgspec.Meta(ge=0, le=2**31)]
Offset = Annotated[int, msgspec.Meta(ge=0, le=2**50)]
ExitCode = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
Reason = Annotated[str, msgspec.Meta(max_length=4096)]


# ---------------------------------------------------------------- node → master (msgpack)


class RunningReport(msgspec.Struct):
    """A job the node still holds: running, or ended but not yet acknowledged by the master.

    After :class:`Registered` the node resends the job's output from the master's offset
    and then, for an ended job, its :class:`JobEnded`.
    """

    job_id: JobId
    run: RunNo
    output_size: Offset

    @property
    def key(self) -> str:
        return run_key(self.job_id, self.run)


class Register(msgspec.Struct, tag=MessageType.REGISTER.value):
    node_id: Annotated[str, msgspec.Meta(max_length=256)]
    gpus: Annotated[list[GpuInfo], msgspec.Meta(max_length=4096)]
    protocol: int = PROTOCOL_VERSION
    hostname: Annotated[str, msgspec.Meta(max_length=256)] = ""
    running: Annotated[list[RunningReport], msgspec.Meta(max_length=1_000_000)] = (
        msgspec.field(default_factory=list))
    # The node's own credential, from an earlier Registered (None before its first join).
    credential: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    # Whose jobs the node runs: None, every user's; else only these users' (an agent that
    # is not root runs jobs as its own account). The scheduler places no other job there.
    users: Annotated[list[UserName], msgspec.Meta(max_length=4096)] | None = None
    # Why the node cannot take jobs now (its keeper died and is being restarted), or None.
    degraded: Reason | None = None
    # The node pool it was started for (its operator's `--pool`), or None.
    pool: Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9._-]+$")] | None = None
    # The node's own settings for GPUs busy outside mgpu (None: the master's).
    foreign_gpu_policy: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    min_free_mib: Annotated[int, msgspec.Meta(ge=0, le=2**40)] | None = None
    # Its partition (core/partitions.py; `--mgpu-partition`), or None: the default one.
    partition: Annotated[str, msgspec.Meta(max_length=64, pattern=PARTITION_PATTERN)] | None = (
        None)
    # A SLURM bridge in queue-in-SLURM mode (`--slurm-queue`): jobs bound for it are handed
    # to it at once, to wait in SLURM's queue (server/handoff.py).
    slurm_queue: bool = False
    # A SLURM bridge: the nodes of its SLURM partition and their GPUs, so that the master
    # can place a multi-node job there whole (``sbatch -N``); None for any other node.
    backend_nodes: Annotated[list[BackendNode], msgspec.Meta(max_length=65536)] | None = None


class NodeHealth(msgspec.Struct, tag=MessageType.NODE_HEALTH.value):
    """The node's fitness changed: ``degraded`` says why it cannot take jobs now (None: it
    can again). A degraded node is listed with that reason and gets no new jobs."""

    degraded: Reason | None = None


class NodeLogRecord(msgspec.Struct):
    """One warning or error the node logged: when (the node's clock), how bad, where."""

    time: float
    level: Annotated[str, msgspec.Meta(max_length=16)]
    logger: Annotated[str, msgspec.Meta(max_length=128)]
    message: Annotated[str, msgspec.Meta(max_length=1000)]


class NodeLog(msgspec.Struct, tag=MessageType.NODE_LOG.value):
    """Warnings and errors the node logged, for the master's audit log (``node/logship.py``,
    ``server/nodelog.py``)."""

    records: Annotated[list[NodeLogRecord], msgspec.Meta(max_length=100)]


class JobInputAck(msgspec.Struct, tag=MessageType.JOB_INPUT_ACK.value):
    """``delivered`` bytes of the job's input (all :class:`JobInput` data, counted from the
    first) have left the node's hands: written to the job's stdin, or dropped because the
    job no longer reads it. The master keeps at most a window of input unacknowledged."""

    job_id: JobId
    delivered: Offset


class Heartbeat(msgspec.Struct, tag=MessageType.HEARTBEAT.value):
    """Sent by agents every heartbeat interval; the master answers each with one (bare).

    ``gpus``: the node's GPUs' usage, when it changed since the node's last report (None:
    no change, or a node that does not report; ``node/gpuwatch.py``)."""

    gpus: Annotated[list[GpuUsage], msgspec.Meta(max_length=4096)] | None = None


class JobGpuStats(msgspec.Struct, kw_only=True):
    """A job's GPU figures while it ran, as its node sampled them: the peak memory used on
    its GPUs (summed over them) and the mean utilisation (percent, over GPUs and samples)."""

    memory_peak_mib: Annotated[int, msgspec.Meta(ge=0, le=2**40)] | None = None
    utilization_mean: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None
    samples: Annotated[int, msgspec.Meta(ge=0, le=2**40)] = 0


class JobStarted(msgspec.Struct, tag=MessageType.JOB_STARTED.value):
    """A run started; ``backend_id`` is its id in the engine that runs it (the SLURM job
    id of a run the SLURM bridge submitted), which the master keeps on the job."""

    job_id: JobId
    pid: Annotated[int, msgspec.Meta(ge=-1, le=2**31)]
    run: RunNo = 0
    backend_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    # The engine's nodes it runs on, as the engine writes them (SLURM's NodeList, "n[1-2]").
    backend_nodes: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    # A gang job's rank 0 (core/gang.py): the MASTER_ADDR:MASTER_PORT its agent picked.
    rendezvous: Annotated[str, msgspec.Meta(max_length=300)] | None = None


class JobOutput(msgspec.Struct, tag=MessageType.JOB_OUTPUT.value):
    """Framed output bytes of a job's run, starting at ``offset`` in the run's spool."""

    job_id: JobId
    run: RunNo
    offset: Offset
    data: bytes


class JobEnded(msgspec.Struct, tag=MessageType.JOB_ENDED.value):
    """A job's end, sent after all of its output. ``state`` is the ended state."""

    job_id: JobId
    run: RunNo
    state: str  # an ended state's value; the master cuts off a node that sends another
    exit_code: ExitCode | None
    reason: Reason | None
    output_size: Offset
    end_cause: EndCause | None = None  # why it ended (None from a node that does not say)
    gpu_stats: JobGpuStats | None = None  # its GPUs' figures (None: not measured)

    @property
    def key(self) -> str:
        return run_key(self.job_id, self.run)


class JobQueued(msgspec.Struct, tag=MessageType.JOB_QUEUED.value):
    """A queue-in-SLURM bridge's word on a run it handed to SLURM: its SLURM id
    (``backend_id``), and SLURM's state and reason for it (``PENDING``/``Priority``,
    ``PENDING``/``JobHeldUser``...). Sent once SLURM has the run, again on every change and
    on every new link. ``RUNNING`` (with SLURM's ``start_time``) starts the job in mgpu."""

    job_id: JobId
    run: RunNo
    backend_id: Annotated[str, msgspec.Meta(max_length=256)]
    state: Annotated[str, msgspec.Meta(max_length=64)]
    reason: Annotated[str, msgspec.Meta(max_length=256)] = ""
    start_time: float | None = None  # SLURM's start (Unix time), once it started


NodeMessage = (
    Register | Heartbeat | JobStarted | JobOutput | JobEnded | NodeHealth | JobInputAck
    | NodeLog | JobQueued
)


# ---------------------------------------------------------------- master → node (msgpack)


class Registered(msgspec.Struct, tag=MessageType.REGISTERED.value):
    """The master's answer to :class:`Register`.

    ``output_offsets`` says how much output the master already holds of each run the node
    reported, so the node resends only the rest. ``kill`` lists runs the node must stop at
    once (their jobs were ended or requeued while it was away). Runs are named by
    :func:`~mgpu.core.models.run_key`. ``credential`` is sent once, on the node id's first
    join (``server/nodeauth.py``); ``retry`` marks a refusal that is not final.
    """

    accepted: bool
    error: str | None = None
    output_offsets: dict[str, int] = msgspec.field(default_factory=dict)
    kill: list[str] = msgspec.field(default_factory=list)
    heartbeat_interval: float = 2.0
    node_timeout: float = 10.0
    # On a node id's first join: its credential, to keep and present in every later Register.
    credential: str | None = None
    # A refusal that may pass (the id is connected already): register again after a while.
    retry: bool = False


class ArrayTask(msgspec.Struct, array_like=True):
    """One task of an array handed to SLURM as one ``sbatch --array``: its task id, its
    job's id and run, and the variables its environment has other than the order's."""

    task_id: int
    job_id: int
    run: int
    env: dict[str, str] = msgspec.field(default_factory=dict)


class QueueOrder(msgspec.Struct):
    """What SLURM is to decide of a run handed to its queue (README "Queue in SLURM"):
    ``dependency`` in mgpu job ids (the bridge puts SLURM's in), only the terms on live runs
    of the same bridge; ``hold`` (``sbatch --hold``); ``begin`` (Unix time, ``--begin``).
    ``array``: the order is an array's tasks (its own job the first), one SLURM array job
    (``--array=IDS%throttle``)."""

    dependency: str | None = None
    hold: bool = False
    begin: float | None = None
    array: list[ArrayTask] | None = None
    throttle: int | None = None


class StartJob(msgspec.Struct, tag=MessageType.START_JOB.value):
    """Run a job. ``run`` counts its runs (0, then 1 after a requeue, ...): output and
    ends of an old run that comes back late are told apart from the current one."""

    job_id: int
    run: int
    command: str
    cwd: str
    env: dict[str, str]
    gpu_ids: list[int]
    user: str
    name: str
    time_limit: float | None = None
    stdin: bool = False
    pty: bool = False
    argv: list[str] | None = None
    rendezvous: bool = False  # a gang's rank 0: pick MASTER_ADDR/PORT and report them
    tasks: int = 1  # tasks of the job on this node (core/gang.py: the task launcher)
    # To a queue-in-SLURM bridge: the run waits in SLURM's queue, with these of its controls.
    queue: QueueOrder | None = None
    # A multi-node or several-task job that the node's engine runs whole (a SLURM bridge:
    # ``sbatch -N``): its node count, ``tasks`` on each, ``gpu_ids`` all of them (0: not
    # such a job; mgpu's own gangs come in parts, one StartJob a node).
    nodes: int = 0


class CancelJob(msgspec.Struct, tag=MessageType.CANCEL_JOB.value):
    job_id: int
    reason: str = "cancelled"


class EndedAck(msgspec.Struct, tag=MessageType.ENDED_ACK.value):
    """The master has saved these runs' ends (run keys); the node may forget them."""

    runs: list[str]


class JobInput(msgspec.Struct, tag=MessageType.JOB_INPUT.value):
    """Bytes for a job's stdin; ``eof`` closes it."""

    job_id: int
    data: bytes
    eof: bool = False


class JobSignal(msgspec.Struct, tag=MessageType.JOB_SIGNAL.value):
    job_id: int
    signum: int


class JobResize(msgspec.Struct, tag=MessageType.JOB_RESIZE.value):
    job_id: int
    rows: int
    cols: int


class HoldJob(msgspec.Struct, tag=MessageType.HOLD_JOB.value):
    """Hold (``hold``) or release a run waiting in SLURM's queue (a queue-in-SLURM bridge:
    ``scontrol uhold``/``release``)."""

    job_id: int
    hold: bool


MasterMessage = (
    Registered | StartJob | CancelJob | EndedAck | JobInput | JobSignal | JobResize | Heartbeat
    | HoldJob
)

# A WebSocket frame carries one message, or a list of them (what a sender had queued at
# once: one frame, one write, one wake-up of the reader, however many jobs it concerns).
MAX_BATCH = 1024  # messages in one frame
BATCH_BYTES = 1 << 20  # a frame takes no more messages once it has this many bytes
_Batch = Annotated[list[T_msg], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]
NodeFrame = NodeMessage | _Batch[NodeMessage]
MasterFrame = MasterMessage | _Batch[MasterMessage]

node_encoder = msgspec.msgpack.Encoder()
node_message_decoder = msgspec.msgpack.Decoder(NodeMessage)
master_message_decoder = msgspec.msgpack.Decoder(MasterMessage)
node_frame_decoder = msgspec.msgpack.Decoder(NodeFrame)
master_frame_decoder = msgspec.msgpack.Decoder(MasterFrame)


class _Queue(Protocol[T_co]):
    def empty(self) -> bool: ...
    def get_nowait(self) -> T_co: ...


def take_frame(first: object, queue: _Queue[object]) -> bytes:
    """The frame to send: ``first`` encoded, or, when more messages wait in ``queue``, the
    msgpack array of ``first`` and as many of them as fit (:data:`MAX_BATCH` messages,
    about :data:`BATCH_BYTES`), each message encoded once."""
    one = node_encoder.encode(first)
    if queue.empty():
        return one
    parts = [one]
    size = len(one)
    while not queue.empty() and len(parts) < MAX_BATCH and size < BATCH_BYTES:
        part = node_encoder.encode(queue.get_nowait())
        parts.append(part)
        size += len(part)
    if len(parts) == 1:
        return one
    n = len(parts)  # a msgpack array header: fixarray, or array 16 (MAX_BATCH < 2**16)
    head = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    return head + b"".join(parts)


def decode_node_frame(data: bytes) -> list[NodeMessage]:
    """The messages of a frame from a node, in order (raises msgspec's errors)."""
    frame = node_frame_decoder.decode(data)
    return frame if isinstance(frame, list) else [frame]


def decode_master_frame(data: bytes) -> list[MasterMessage]:
    """The messages of a frame from the master, in order (raises msgspec's errors)."""
    frame = master_frame_decoder.decode(data)
    return frame if isinstance(frame, list) else [frame]
