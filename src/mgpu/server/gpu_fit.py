"""GPUs as they are, on the master's side: what the scheduler's snapshot says of a job's
GPU constraints and of a node's GPUs, the check of constraints at submit, and the words
for a job that waits only for GPUs busy outside mgpu.

Types are compared as :func:`mgpu.core.gputypes.gpu_type` makes them (``A100`` and "NVIDIA
A100-SXM4-80GB" are both ``a100``). A node's type is its GPUs' type (the most common one,
on a node of mixed GPUs). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mgpu.core.errors import Rejected, UsageError
from mgpu.core.gputypes import format_mib, gpu_type
from mgpu.core.models import GpuInfo, JobSpec, SimpleJob
from mgpu.server.node_events import Node

MAX_NAMED = 5  # GPUs named in a reason


def job_constraints(job: SimpleJob) -> dict[str, Any]:
    """The ``JobSnapshot`` fields of ``job``'s constraints: its GPUs' (the type made
    comparable) and its partition."""
    return {"gpu_type": gpu_type(job.gpu_type) if job.gpu_type else None,
            "gpu_mem_mib": job.gpu_mem_mib, "partition": job.partition}


def node_type(node: Node) -> str:
    """The type of ``node``'s GPUs (the most common, if they differ); "" with none."""
    return node.gpu_type


def node_free_mib(node: Node, free_ids: Iterable[int]) -> tuple[int, ...]:
    """The free memory of each GPU of ``free_ids`` (``NodeSnapshot.gpu_free_mib``): as
    the node last reported it, or the GPU's whole memory where it has not (a node that
    reports no usage still has GPUs too small for a job's ``--gpu-mem``)."""
    by_index = {g.index: g for g in node.gpus}
    out = []
    for i in free_ids:
        free = by_index[i].memory_free_mib
        out.append(by_index[i].memory_total_mib if free is None else free)
    return tuple(out)


def check_gpu_constraints(spec: JobSpec, nodes: Iterable[Node], where: str = "") -> None:
    """Refuse a job whose GPU constraints no registered node could ever meet: an unknown
    type (:class:`Rejected` naming the types there are), or no node with ``spec.gpus`` GPUs
    of that type and of at least ``gpu_mem_mib`` memory. With no node known, anything
    goes (the nodes may not have joined yet)."""
    nodes = list(nodes)
    if spec.gpu_type is not None and not gpu_type(spec.gpu_type):
        raise UsageError(f"{where}--gpu-type {spec.gpu_type!r} names no GPU type: write e.g. "
                         "a100 or h200")
    if not nodes or (spec.gpu_type is None and spec.gpu_mem_mib is None):
        return
    want = gpu_type(spec.gpu_type) if spec.gpu_type else None
    kinds = sorted({gpu_type(g.name) for n in nodes for g in n.gpus})
    if want is not None and want not in kinds:
        raise Rejected(f"{where}no node has GPUs of type {spec.gpu_type!r}: the types here "
                       f"are {', '.join(kinds)} (`mgpu nodes` lists them)")
    need = spec.gpu_mem_mib or 0
    best = max(sum(1 for g in n.gpus if _fits(g, want, need)) for n in nodes)
    if best < spec.gpus:
        kind = f"{want} " if want else ""
        mem = f" with {format_mib(need)} of memory" if need else ""
        raise Rejected(f"{where}asks for {spec.gpus} {kind}GPUs{mem} but no node has more "
                       f"than {best}: ask for fewer, or for less memory (--gpu-mem)")


def _fits(g: GpuInfo, want: str | None, need: int) -> bool:
    return (want is None or gpu_type(g.name) == want) and g.memory_total_mib >= need


def busy_outside_words(job: SimpleJob, nodes: Iterable[Node]) -> str | None:
    """Why ``job`` waits, when it waits only for GPUs busy outside mgpu: some node that
    could run it would have enough GPUs if those were free (and none has enough now).
    None otherwise."""
    want = gpu_type(job.gpu_type) if job.gpu_type else None
    blocked: list[tuple[Node, GpuInfo]] = []
    for n in nodes:
        if not (n.state.takes_jobs and n.connected and n.serves(job.user)):
            continue
        if want is not None and node_type(n) != want:
            continue
        idle = [g for g in n.gpus if g.job_id is None]
        if len(n.free_gpu_ids()) >= job.gpus:
            return None  # it fits somewhere now: not waiting for those GPUs
        outside = [g for g in idle if g.busy_outside]
        if outside and len(idle) >= job.gpus:
            blocked.extend((n, g) for g in outside)
    if not blocked:
        return None
    named = "; ".join(f"{n.node_id} GPU {g.index} ({_procs(g)})"
                      for n, g in blocked[:MAX_NAMED])
    more = f" and {len(blocked) - MAX_NAMED} more" if len(blocked) > MAX_NAMED else ""
    return (f"GPUs busy outside mgpu: {named}{more} (foreign_gpu_policy = avoid; "
            "`mgpu nodes` shows them)")


def _procs(g: GpuInfo) -> str:
    shown = [f"pid {p.pid} of {p.user or '?'}" + (
        f", {format_mib(p.memory_used_mib)}" if p.memory_used_mib is not None else "")
        for p in g.processes if p.outside][:2]
    return "; ".join(shown) or "processes outside mgpu"
