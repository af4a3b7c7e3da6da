"""Agents in a process: ``mgpu node`` (one agent), :class:`SimpleNode` (the founding API) and
:class:`NodeManager` (many agents in one process, as tests and ``bench/`` simulate nodes).

Each runs its agents until SIGTERM/SIGINT, or until the master refuses one of them, and then
stops every agent it started. :mod:`mgpu.node.agent` re-exports the two published classes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from mgpu.core.config import LogConfig, NodeConfig
from mgpu.node.agent import Agent
from mgpu.utils.settings import from_options
from mgpu.utils.signals import stop_on_signals


async def run_agents(agents: list[Agent]) -> None:
    """Start ``agents`` and run until SIGTERM/SIGINT or until one is refused."""
    stop = asyncio.Event()
    stop_on_signals(asyncio.get_running_loop(), stop.set)
    if len(agents) > 1:  # a module's warning could be any agent's: each ships its own only
        for agent in agents:
            agent.logs.everything = False
    started: list[Agent] = []
    try:
        for agent in agents:
            await agent.start()
            started.append(agent)
        waits = [asyncio.ensure_future(a.wait()) for a in agents]
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
        for fut in done:
            if fut is not stopper:
                fut.result()
    finally:
        for agent in started:
            await agent.stop(kill_jobs=agent.cfg.kill_jobs_on_exit)


def run_node(cfg: NodeConfig, log_cfg: LogConfig | None = None) -> int:
    """The ``mgpu node`` command: run one agent in the foreground until stopped."""
    from mgpu.utils.logging import setup_logging

    setup_logging(log_cfg or LogConfig(), "node")
    asyncio.run(run_agents([Agent(cfg)]))
    return 0


class SimpleNode:
    """The founding API: ``SimpleNode('node1', 'localhost', 8080, 8081).start_agent()``."""

    def __init__(self, node_id: str, master_host: str = "localhost", master_port: int = 8080,
                 node_port: int = 8081, **options: object) -> None:
        self.config = from_options(NodeConfig, {
            "node_id": node_id, "master_host": master_host, "master_port": master_port,
            "port": node_port, **options})

    def start_agent(self) -> None:
        asyncio.run(run_agents([Agent(self.config)]))


class NodeManager:
    """Several agents in one process (tests and benchmarks use it to simulate many nodes)."""

    def __init__(self, master_host: str = "localhost", master_port: int = 8080) -> None:
        self.master_host = master_host
        self.master_port = master_port
        self.agents: list[Agent] = []

    def add_node(self, node_id: str, fake_gpus: int | str | None = None, gpus: str | None = None,
                 port: int = 0, data_dir: str | Path | None = None,
                 **options: object) -> Agent:
        cfg = from_options(NodeConfig, {
            "node_id": node_id, "master_host": self.master_host,
            "master_port": self.master_port, "port": port, "fake_gpus": fake_gpus,
            "gpus": gpus, "data_dir": data_dir, **options})
        agent = Agent(cfg)
        self.agents.append(agent)
        return agent

    async def start(self) -> None:
        for agent in self.agents:
            await agent.start()

    async def stop(self) -> None:
        for agent in self.agents:
            await agent.stop()

    def run(self) -> None:
        """Run every agent until SIGTERM/SIGINT (blocks)."""
        asyncio.run(run_agents(self.agents))
