"""The records of nodes and their GPUs, as agents report them and the master shows them
(``mgpu nodes``, ``GET /api/v1/nodes``). :mod:`mgpu.core.models` names them too."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

MAX_GPU_PROCESSES = 32  # processes listed per GPU in a report (the rest are counted)
Mib = Annotated[int, msgspec.Meta(ge=0, le=2**40)]


class GpuProcess(msgspec.Struct, kw_only=True):
    """A compute process on a GPU, as the node's NVML sees it. ``job_id``: the mgpu job it
    belongs to (in the job's process tree); ``outside``: no job of this node's started it."""

    pid: Annotated[int, msgspec.Meta(ge=0, le=2**31)]
    memory_used_mib: Mib | None = None  # None: NVML cannot say (some drivers, containers)
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    job_id: int | None = None
    outside: bool = False


class GpuUsage(msgspec.Struct, kw_only=True):
    """What one GPU holds now: memory used, utilisation (percent), compute processes (at
    most :data:`MAX_GPU_PROCESSES`; ``more_processes`` counts the others)."""

    index: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    memory_used_mib: Mib | None = None
    utilization: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    processes: Annotated[list[GpuProcess], msgspec.Meta(max_length=MAX_GPU_PROCESSES)] = (
        msgspec.field(default_factory=list))
    more_processes: Annotated[int, msgspec.Meta(ge=0, le=2**31)] = 0


class GpuInfo(msgspec.Struct, kw_only=True):
    """One GPU of a node; ``job_id`` is the job holding it, if any. The usage fields are
    the node's last report (None/empty before one); ``busy_outside``: a process no mgpu
    job started computes on it (the master allocates it only under
    ``foreign_gpu_policy = ignore``)."""

    index: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    name: Annotated[str, msgspec.Meta(max_length=256)]
    memory_total_mib: Mib
    uuid: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    job_id: int | None = None
    memory_used_mib: Mib | None = None
    utilization: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    processes: Annotated[list[GpuProcess], msgspec.Meta(max_length=MAX_GPU_PROCESSES)] = (
        msgspec.field(default_factory=list))
    busy_outside: bool = False

    @property
    def memory_free_mib(self) -> int | None:
        """Free memory by the last report (None before one)."""
        if self.memory_used_mib is None:
            return None
        return max(0, self.memory_total_mib - self.memory_used_mib)


class BackendNode(msgspec.Struct, kw_only=True):
    """One node of the engine behind a SLURM bridge (a SLURM node of its partition): its
    name and its GPUs (gres ``gpu``). A bridge registers its partition's, which is how the
    master knows whether a multi-node job fits there (``sbatch -N``)."""

    name: Annotated[str, msgspec.Meta(max_length=256)]
    gpus: Annotated[int, msgspec.Meta(ge=0, le=65535)]


class NodeInfo(msgspec.Struct, kw_only=True):
    """A node agent as the master sees it. ``free_gpu_ids``: the GPUs the master would
    allocate now (none held by a job, none it avoids as busy outside mgpu or short of
    memory); None from a master that does not say."""

    node_id: str
    state: str  # a NodeState value: "up", "degraded" (no new jobs: see reason), ...
    gpus: list[GpuInfo] = msgspec.field(default_factory=list)
    last_seen: datetime | None = None
    down_since: datetime | None = None
    hostname: str | None = None
    reason: str | None = None  # why it takes no jobs (degraded), when it says so
    users: list[str] | None = None  # whose jobs it runs: None, everyone's
    pool: str | None = None  # the node pool it belongs to (server/pools.py), if any
    draining: bool = False  # takes no new jobs; its running jobs finish (`mgpu drain`)
    drain_reason: str | None = None  # why, as the admin (or the pool) said
    free_gpu_ids: list[int] | None = None
    partition: str | None = None  # its partition (core/partitions.py); None: the default
    # A SLURM bridge's partition: its SLURM nodes and their GPUs (None: not a bridge).
    backend_nodes: list[BackendNode] | None = None

    @property
    def free_gpus(self) -> list[int]:
        """The GPUs a job could get now (``free_gpu_ids``), else those no job holds."""
        if self.free_gpu_ids is not None:
            return list(self.free_gpu_ids)
        return [g.index for g in self.gpus if g.job_id is None]


class JobProcess(msgspec.Struct, kw_only=True):
    """A job's process on a node, as its agent supervises it."""

    job_id: int
    pid: int
    gpu_ids: list[int]
    started_at: float
    output_offset: int = 0
