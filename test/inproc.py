"""An in-process cluster for integration tests: a real master and real agents on one loop.

Real HTTP and WebSocket on 127.0.0.1 (port 0), real SQLite in a temp dir, real child
processes for jobs; only the process boundary between master and agents is missing (the
end-to-end tests add it). Clients talk to the master over HTTP from a worker thread, as a
user's client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from mgpu.client.client import SimpleClient
from mgpu.core.config import MasterConfig, NodeConfig
from mgpu.node.agent import Agent
from mgpu.server.master import Master
from mgpu.utils.gpu import fake_gpus

T = TypeVar("T")


class InProcCluster:
    def __init__(self, tmp: Path, **master_options: Any) -> None:
        self.tmp = tmp
        self.master_options = master_options
        self.master: Master | None = None
        self.agents: dict[str, Agent] = {}
        self.clients: list[SimpleClient] = []

    @property
    def port(self) -> int:
        assert self.master is not None
        return self.master.port

    async def start_master(self, port: int = 0) -> Master:
        cfg = MasterConfig(port=port, data_dir=self.tmp / "master", **self.master_options)
        self.master = Master(cfg)
        await self.master.start()
        return self.master

    async def stop_master(self) -> None:
        assert self.master is not None
        await self.master.stop()

    @property
    def token(self) -> str:
        """The admin token the master made on its first start."""
        return (self.tmp / "master" / "admin.token").read_text().strip()

    async def add_node(self, node_id: str, gpus: int = 4, wait: bool = True,
                       **options: Any) -> Agent:
        options.setdefault("allow_root_jobs", True)  # tests may run as root
        options.setdefault("allow_other_users", True)  # ... or not, and submit as others
        assert self.master is not None
        options.setdefault("join_token", self.master.join.secret)
        cfg = NodeConfig(node_id=node_id, master_port=self.port, port=0,
                         data_dir=self.tmp / node_id, **options)
        agent = Agent(cfg, fake_gpus(gpus))
        await agent.start()
        self.agents[node_id] = agent
        if wait:
            await asyncio.wait_for(agent.registered.wait(), 10)
        return agent

    def client(self, token: str | None = None) -> SimpleClient:
        """A client with ``token`` (default: the admin token)."""
        client = SimpleClient("127.0.0.1", self.port, token=token or self.token)
        self.clients.append(client)
        return client

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking client call in a thread, as a separate client would."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def close(self) -> None:
        for client in self.clients:
            client.close()
        for agent in self.agents.values():
            await agent.stop()
        if self.master is not None:
            with contextlib.suppress(Exception):
                await self.master.stop()


@contextlib.asynccontextmanager
async def cluster(tmp: Path, nodes: dict[str, int] | None = None,
                  **master_options: Any) -> AsyncIterator[InProcCluster]:
    c = InProcCluster(tmp, **master_options)
    await c.start_master()
    try:
        for node_id, gpus in (nodes or {}).items():
            await c.add_node(node_id, gpus)
        yield c
    finally:
        await c.close()


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "",
                *, blocking: bool = False) -> None:
    """Wait for ``cond()`` to hold, checking often; fail with ``what`` after ``timeout``.

    ``blocking=True`` runs ``cond`` in a thread: needed when it calls a client, whose
    blocking I/O would otherwise stall the loop that the master runs on.
    """
    deadline = time.monotonic() + timeout
    while not (await asyncio.to_thread(cond) if blocking else cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        await asyncio.sleep(0.005)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)
