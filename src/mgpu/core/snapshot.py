"""The types of the scheduling contract: what a policy gets (:class:`Snapshot`) and what it
returns (:class:`ScheduleResult`), and the constraint rules every policy honours.

:mod:`mgpu.core.scheduler` re-exports all of them and documents the contract; import them
from there.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field


class PendingReason(enum.StrEnum):
    """Why a pending job waits: the code in ``queue``, ``show`` and ``--json``
    (``SimpleJob.pending_reason``), named as SLURM names its own."""

    PRIORITY = "Priority"  # jobs of higher priority are ahead of it
    RESOURCES = "Resources"  # it is next, but not enough GPUs are free
    RESERVED = "Reserved"  # the GPUs it could use are held for a higher job (detail: which)
    DEPENDENCY = "Dependency"  # a job it depends on has not ended as it needs
    HELD = "Held"  # held by its user or an admin
    BEGIN_TIME = "BeginTime"  # its --begin time has not come
    QOS_MAX_GPUS = "QOSMaxGPUs"  # its user already runs as many GPUs as allowed
    NODE_DOWN = "NodeDown"  # no node that could run it is up
    NO_NODE_FITS = "NoNodeFits"  # no node could ever run it (size, type, memory, partition)
    GPUS_BUSY_OUTSIDE = "GpusBusyOutside"  # free GPUs are in use by processes outside mgpu


@dataclass(frozen=True, slots=True)
class PriorityFactors:
    """The weighted parts a job's priority is the sum of (each already times its weight)."""

    age: float = 0.0  # how long it has waited
    fair_share: float = 0.0  # how little its user has used of their share
    job: float = 0.0  # its --priority, less its --nice


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """A pending job, as the policy sees it (the master's record is a ``SimpleJob``)."""

    job_id: int
    gpus: int
    user: str = ""
    submitted_at: float = 0.0  # Unix time
    time_limit: int | None = None  # effective, seconds; None: plan with default_time_limit
    priority: float = 0.0
    factors: PriorityFactors = PriorityFactors()
    # Constraints, filled by the parts that own them (None: any).
    gpu_type: str | None = None
    gpu_mem_mib: int | None = None
    partition: str | None = None
    # A gang (multi-node) job: ``gpus`` on each of ``nodes`` distinct nodes, all or nothing.
    nodes: int = 1
    # Other partitions it may run in, in this pass (core/partitions.py: spill-over): none,
    # these, or (None) any.
    spill: frozenset[str] | None = frozenset()


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """A node that takes jobs. ``gpu_free_mib``, when known, is the free memory of each GPU
    of ``free_gpu_ids``, in the same order."""

    node_id: str
    total_gpus: int
    free_gpu_ids: tuple[int, ...]
    users: frozenset[str] | None = None  # whose jobs it runs: None, everyone's
    gpu_type: str = ""
    gpu_free_mib: tuple[int, ...] | None = None
    partition: str | None = None
    # When its busy GPUs are expected to free up: (expected end, GPUs), sorted; the same
    # facts as ``Snapshot.running``, indexed by node (None: work them out from ``running``).
    releases: tuple[tuple[float, int], ...] | None = None

    def serves(self, user: str) -> bool:
        return self.users is None or user in self.users


@dataclass(frozen=True, slots=True)
class RunningSnapshot:
    """A running job: whose, where, and when it is expected to end (Unix time)."""

    job_id: int
    user: str
    node_id: str
    gpu_ids: tuple[int, ...]
    expected_end: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a policy may look at (see the module docstring)."""

    now: float
    pending: Iterable[JobSnapshot]  # highest priority first
    nodes: Sequence[NodeSnapshot]
    running: Sequence[RunningSnapshot] = ()
    default_time_limit: int = 86_400
    backfill_depth: int = 1_000  # how many jobs past the first blocked one backfill tries


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a job starts: ``gpu_ids`` of ``node_id``; for a gang, also ``more``: the other
    nodes and their GPUs, in node-rank order (``node_id`` is rank 0)."""

    job_id: int
    node_id: str
    gpu_ids: tuple[int, ...]
    more: tuple[tuple[str, tuple[int, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class Reason:
    """Why the policy did not place a job it examined. ``job_id``: for ``Reserved``, the
    job the GPUs are held for."""

    code: PendingReason
    detail: str = ""
    job_id: int | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """The backfill plan holds ``gpus`` GPUs of ``node_id`` for ``job_id`` from ``start``
    (and as many of each of ``more_nodes``, for a gang)."""

    job_id: int
    node_id: str
    start: float
    gpus: int
    more_nodes: tuple[str, ...] = ()  # a gang's other nodes, ``gpus`` held on each too


@dataclass(slots=True)
class ScheduleResult:
    placements: list[Placement] = field(default_factory=list)
    reasons: dict[int, Reason] = field(default_factory=dict)
    reservations: list[Reservation] = field(default_factory=list)

    @property
    def starts(self) -> dict[int, float]:
        """The expected start time of each reserved job."""
        return {r.job_id: r.start for r in self.reservations}


Policy = Callable[[Snapshot], ScheduleResult]


def node_fits(job: JobSnapshot, node: NodeSnapshot) -> bool:
    """Whether ``node`` may ever run ``job``: size, users, GPU type, partition (its own, or
    one it may spill to: ``spill``), not memory, which changes (:func:`usable_gpus`)."""
    if job.gpus > node.total_gpus or not node.serves(job.user):
        return False
    if job.gpu_type is not None and job.gpu_type.casefold() != node.gpu_type.casefold():
        return False
    spill = job.spill
    return job.partition == node.partition or spill is None or (
        bool(spill) and node.partition in spill)


def usable_gpus(job: JobSnapshot, node: NodeSnapshot) -> tuple[int, ...]:
    """The free GPUs of ``node`` that ``job`` may use now (enough free memory)."""
    if job.gpu_mem_mib is None or node.gpu_free_mib is None:
        return node.free_gpu_ids
    need = job.gpu_mem_mib
    return tuple(g for g, mib in zip(node.free_gpu_ids, node.gpu_free_mib, strict=True)
                 if mib >= need)
