"""What runs a node's jobs, and so which GPUs it offers: this machine's (the keeper's) or a
SLURM partition's (the bridge of :mod:`mgpu.node.slurm`)."""

from __future__ import annotations

from mgpu.core.config import NodeConfig
from mgpu.core.errors import MgpuError
from mgpu.core.models import GpuInfo

BACKENDS = ("local", "slurm")
SLURM_PARTITION = "slurm"  # a bridge's partition in mgpu, unless told (README "Mixed mode")


def partition_of(cfg: NodeConfig) -> str | None:
    """The node's partition in mgpu (``--mgpu-partition``; a SLURM bridge's is ``slurm``
    unless told, a local node's the default one); None: the default partition ("" says so
    explicitly)."""
    if cfg.mgpu_partition is not None:
        return cfg.mgpu_partition or None
    return SLURM_PARTITION if cfg.backend == "slurm" else None


def queue_mode(cfg: NodeConfig) -> bool:
    """Whether the node is a SLURM bridge in queue-in-SLURM mode (``--slurm-queue``)."""
    return cfg.backend == "slurm" and cfg.slurm_queue


async def offered_gpus(cfg: NodeConfig, gpus: list[GpuInfo] | None,
                       source: str) -> tuple[list[GpuInfo], str]:
    """The GPUs the agent offers and where they came from: ``gpus`` when given (with
    ``source``); else the SLURM partition's, for a bridge; else this machine's (NVML,
    ``nvidia-smi``) or the fake ones it was told of. None found is an error naming the fix."""
    if cfg.backend not in BACKENDS:
        raise MgpuError(f"unknown backend {cfg.backend!r}: use local or slurm")
    if gpus is not None:
        return gpus, source
    if cfg.backend == "slurm":
        import os

        from mgpu.node import slurm_cli
        from mgpu.node.slurm_rest import transport_of

        return await slurm_cli.offered_gpus(cfg, transport_of(cfg, os.environ).partition_gpus)
    from mgpu.utils.gpu import detect_gpus, parse_gpu_list

    restrict = parse_gpu_list(cfg.gpus) if cfg.gpus else None
    found, source = detect_gpus(restrict, cfg.fake_gpus)
    if not found:
        raise MgpuError("no GPUs found on this machine (NVML and nvidia-smi found none): "
                        "pass --fake-gpus N (or set MGPU_FAKE_GPUS) to declare some for testing")
    return found, source
