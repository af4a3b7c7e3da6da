"""What ``mgpu nodes`` and ``mgpu show`` say of GPUs (README "GPUs as they are"): each
node's GPU types and the GPUs busy outside mgpu; a job's constraints and figures."""

from __future__ import annotations

from mgpu.client.tables import clean
from mgpu.core.gputypes import format_mib, gpu_type
from mgpu.core.models import NodeInfo, SimpleJob

MAX_OUTSIDE_SHOWN = 4  # processes listed in a node's OUTSIDE cell; the rest are counted


def node_free(node: NodeInfo) -> int:
    """The FREE column: the GPUs a job could get now."""
    return len(node.free_gpus)


def node_types(node: NodeInfo) -> str:
    """The TYPE column: ``4xa100``, or ``2xa100,2xv100``."""
    counts: dict[str, int] = {}
    for g in node.gpus:
        kind = gpu_type(g.name) or "?"
        counts[kind] = counts.get(kind, 0) + 1
    return ",".join(f"{n}x{kind}" for kind, n in counts.items()) or "-"


def node_outside(node: NodeInfo) -> str:
    """The OUTSIDE column: each process outside mgpu as ``GPU:PID(USER,MEM)``."""
    found = [(g.index, p) for g in node.gpus for p in g.processes if p.outside]
    shown = [
        f"{i}:{p.pid}({p.user or '?'},"
        f"{'?' if p.memory_used_mib is None else format_mib(p.memory_used_mib)})"
        for i, p in found[:MAX_OUTSIDE_SHOWN]]
    if len(found) > MAX_OUTSIDE_SHOWN:
        shown.append(f"+{len(found) - MAX_OUTSIDE_SHOWN}")
    return clean(" ".join(shown)) or "-"


def job_gpu_rows(job: SimpleJob) -> list[tuple[str, str]]:
    """``mgpu show``'s lines on GPUs: the constraints asked for, and the figures measured."""
    peak, mean = job.gpu_mem_peak_mib, job.gpu_util_mean
    return [
        ("gpu_type", job.gpu_type or "-"),
        ("gpu_mem_mib", "-" if job.gpu_mem_mib is None else format_mib(job.gpu_mem_mib)),
        ("gpu_mem_peak_mib", "-" if peak is None else format_mib(peak)),
        ("gpu_util_mean", "-" if mean is None else f"{mean:g}%"),
    ]
