"""``mgpu up``: a master and a local node agent in one foreground process.

A command of the CLI, and with it the one place that imports both the server and the node
packages (they never import each other); ``cli`` imports it only for ``mgpu up``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import replace

from mgpu.core.config import LogConfig, MasterConfig, NodeConfig
from mgpu.core.models import GpuInfo
from mgpu.node.agent import Agent
from mgpu.server.master import Master
from mgpu.utils.gpu import detect_gpus, parse_gpu_list
from mgpu.utils.signals import stop_on_signals

DEFAULT_FAKE_GPUS = 4


def _say(text: str) -> None:
    print(f"mgpu: {text}", file=sys.stderr, flush=True)


def _local_gpus(node_cfg: NodeConfig) -> tuple[list[GpuInfo], bool, str]:
    """This machine's GPUs (or fake ones, saying so), whether they are fake, and where
    they came from (how their usage is read: NVML, or the fake state)."""
    restrict = parse_gpu_list(node_cfg.gpus) if node_cfg.gpus else None
    gpus, source = detect_gpus(restrict, node_cfg.fake_gpus)
    fake = not gpus or source == "fake"
    if not gpus:
        gpus, source = detect_gpus(None, DEFAULT_FAKE_GPUS)
        _say(f"no GPUs found on this machine: using {DEFAULT_FAKE_GPUS} fake GPUs "
             "(--fake-gpus N to choose how many)")
    else:
        _say(f"{len(gpus)} GPUs ({source}): " + ", ".join(f"{g.index}: {g.name}" for g in gpus))
    return gpus, fake, source


async def _up(master_cfg: MasterConfig, node_cfg: NodeConfig, log_cfg: LogConfig) -> None:
    if os.geteuid() == 0 and "MGPU_ALLOW_ROOT_JOBS" not in os.environ:
        node_cfg = replace(node_cfg, allow_root_jobs=True)
        _say("running as root: root's jobs run as root here (MGPU_ALLOW_ROOT_JOBS=0 to "
             "refuse them); other users' jobs run under their own accounts")
    gpus: list[GpuInfo] | None = None  # (the SLURM bridge counts its partition's)
    fake, source = False, ""
    if node_cfg.backend == "slurm":
        _say("jobs run in SLURM" + (f" (partition {node_cfg.partition})"
                                    if node_cfg.partition else ""))
    else:
        gpus, fake, source = _local_gpus(node_cfg)

    def started(master: Master, agent: Agent, node_cfg: NodeConfig) -> None:
        address = f"{_dial_host(master_cfg.host)}:{master.port}"
        scheme = "https" if master_cfg.tls_cert is not None else "http"
        _say(f"master listening on {scheme}://{master_cfg.host}:{master.port}")
        _say(f"data in {master_cfg.data_dir} and {node_cfg.effective_data_dir}")
        _say("logs go to " + (str(log_cfg.file) if log_cfg.file else "this terminal (stderr)"))
        if agent.users is not None:
            _say(f"the node runs jobs of {', '.join(agent.users)} only"
                 + ("" if os.geteuid() == 0 else
                    " (not root: jobs run as this account; MGPU_ALLOW_OTHER_USERS=1 to run "
                    "other users' jobs as it too)"))
        env_hint = "" if master.port == 8080 else f"MGPU_MASTER={address} "
        example = "'echo GPU $CUDA_VISIBLE_DEVICES'" if fake else "nvidia-smi"
        _say(f"from another terminal: {env_hint}mgpu submit -G 1 {example}; "
             f"{env_hint}mgpu queue")
        _say("press Ctrl-C to stop (running jobs are killed)")

    # Unlike `mgpu node`, `up` ends its jobs with it (as it says).
    await serve_pair(master_cfg, lambda master: joined(node_cfg, master_cfg, master),
                     started, kill_jobs=True, gpus=gpus, gpu_source=source)


def joined(node_cfg: NodeConfig, master_cfg: MasterConfig, master: Master) -> NodeConfig:
    """``node_cfg`` joined to ``master``, which runs in this process: its secret passed in
    memory; with TLS it dials https and verifies the master against --ca / MGPU_CA, or else
    against the master's own certificate file (its chain), which it has at hand."""
    return replace(node_cfg, master_host=_dial_host(master_cfg.host), master_port=master.port,
                   join_token=master.join.secret, join_token_file=None,
                   tls=master_cfg.tls_cert is not None, ca=node_cfg.ca or master_cfg.tls_cert)


async def serve_pair(master_cfg: MasterConfig, node_of: Callable[[Master], NodeConfig],
                     started: Callable[[Master, Agent, NodeConfig], None], *, kill_jobs: bool,
                     gpus: list[GpuInfo] | None = None, gpu_source: str = "") -> None:
    """Run a master and one agent in this process (``mgpu up``, ``mgpu server --backend
    slurm``) until SIGTERM or SIGINT, or until the agent stops (a master that refuses it:
    its reason, raised). ``node_of`` makes the agent's settings once the master listens;
    ``kill_jobs``: whether its jobs end with it."""
    stop = asyncio.Event()
    stop_on_signals(asyncio.get_running_loop(), stop.set)
    master = Master(master_cfg)
    await master.start()
    agent: Agent | None = None
    try:
        node_cfg = node_of(master)
        agent = Agent(node_cfg, gpus)
        if gpu_source:  # (how it reads their usage: NVML, or the fake state)
            agent.gpu_source = gpu_source
        await agent.start()
        started(master, agent, node_cfg)
        waiter = asyncio.ensure_future(agent.wait())
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            waiter.result()
        else:
            waiter.cancel()
    finally:
        if agent is not None:
            await agent.stop(kill_jobs=kill_jobs)
        await master.stop()


def _dial_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def run_up(master_cfg: MasterConfig, node_cfg: NodeConfig, log_cfg: LogConfig | None = None) -> int:
    from mgpu.utils.logging import setup_logging

    log_cfg = log_cfg or LogConfig()
    setup_logging(log_cfg, "up")
    asyncio.run(_up(master_cfg, node_cfg, log_cfg))
    return 0
