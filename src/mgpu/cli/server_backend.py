"""``mgpu server --backend slurm``: a master with its own SLURM bridge node, in one process.

A lab whose GPUs are a SLURM cluster runs only this; other machines may still join with
``mgpu node`` (mixed mode: README "Mixed mode"). The bridge is the same agent as
``mgpu node --backend slurm`` (:mod:`mgpu.node.slurm`), started in the master's own event
loop rather than as a child process, because it holds no job of its own: SLURM runs the
jobs, and the bridge keeps its runs in its data directory (``[backend] data_dir``, by
default the master's ``DATA_DIR/backend``). So:

* one process to start and supervise (the same systemd unit as a plain master); the
  bridge joins with the master's secret, passed in memory, over loopback;
* stopping the server leaves the SLURM jobs running (unlike ``mgpu up``, which ends its
  jobs): the next start re-adopts them, as a restarted ``mgpu node --backend slurm`` does;
  a crash loses nothing either, for the same reason;
* a bridge that cannot start (SLURM unreachable at start-up, no GPUs in its partition)
  stops the server with the fix named, and so does a master that refuses it; once started,
  a bridge whose SLURM stops answering is shown degraded and retried, as a node is.

Like ``cli/up.py``, a command of the CLI and so allowed to import both the server and the
node packages (which never import each other); ``cli`` imports it only for this command.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from mgpu.cli.up import joined, serve_pair
from mgpu.core.config import BackendConfig, LogConfig, MasterConfig, NodeConfig
from mgpu.node.agent import Agent
from mgpu.server.master import Master

log = logging.getLogger("mgpu.master")


def bridge_config(master_cfg: MasterConfig, backend: BackendConfig, master: Master) -> NodeConfig:
    """The bridge node's settings: the ``[node]`` settings (environment, file) for what
    the backend section does not say, joined to ``master`` (``cli/up.joined``)."""
    from mgpu.utils.settings import load

    node, _ = load(NodeConfig, {"node_id": backend.node_id})
    node = replace(
        node, backend="slurm", partition=backend.partition, slurm_poll=backend.slurm_poll,
        mgpu_partition=backend.mgpu_partition, slurm_queue=backend.slurm_queue,
        slurm_rest=backend.slurm_rest,
        slurm_jwt=backend.slurm_jwt, slurm_jwt_file=backend.slurm_jwt_file,
        data_dir=backend.data_dir or master_cfg.data_dir / "backend", port=0, pool=None)
    return joined(node, master_cfg, master)


async def serve_with_backend(master_cfg: MasterConfig, backend: BackendConfig) -> None:
    """Run the master and its bridge until SIGTERM or SIGINT (or the bridge stops)."""
    def started(master: Master, agent: Agent, node_cfg: NodeConfig) -> None:
        log.info("SLURM backend: node %s runs jobs of partition %s in SLURM%s",
                 backend.node_id, backend.mgpu_partition or "(default)",
                 f" (partition {backend.partition})" if backend.partition else "")

    # SLURM keeps its jobs when the bridge stops: the next start re-adopts them.
    await serve_pair(master_cfg, lambda master: bridge_config(master_cfg, backend, master),
                     started, kill_jobs=False)


def run_server_with_backend(master_cfg: MasterConfig, backend: BackendConfig,
                            log_cfg: LogConfig | None = None) -> int:
    """The ``mgpu server --backend slurm`` command: run until stopped."""
    from mgpu.utils.logging import setup_logging

    setup_logging(log_cfg or LogConfig(), "master")
    asyncio.run(serve_with_backend(master_cfg, backend))
    return 0
