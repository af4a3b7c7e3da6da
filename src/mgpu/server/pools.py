"""Node pools that grow and shrink with the queue.

A pool is a named set of nodes (agents started with ``--pool NAME``) with a size between
``min_nodes`` and ``max_nodes`` and two operator commands, declared in the master's pools
file (``pools = PATH``, ``MGPU_POOLS``, ``mgpu server --pools PATH``)::

    [pool.cloud]
    gpus_per_node = 8                 # what one node of the pool offers
    min_nodes = 0
    max_nodes = 4
    scale_up = "launch-gpu-node --count $MGPU_POOL_COUNT"     # shell; or plugin = "NAME"
    scale_down = "stop-gpu-node $MGPU_POOL_NODES"
    scale_up_after = 60               # seconds a fitting job waits before nodes are asked for
    scale_down_after = 600            # seconds a node sits idle before it is released
    request_timeout = 600             # a requested node that has not joined by then is given up
    partition = "cloud"               # optional: its nodes' --mgpu-partition (default: none)

The decision rule is :mod:`mgpu.core.poolrule` (pure: ``mgpu simulate --pool`` runs it too).
The master asks for nodes (``scale_up`` with ``MGPU_POOL_COUNT``) when pending jobs that a
node of the pool could run (of its ``partition``, with ``gpus <= gpus_per_node`` a node) have
waited longer than ``scale_up_after``: as many as those jobs fill (a multi-node job counts a
whole node for each of its parts), counting the nodes already asked for, up to
``max_nodes``; and always enough for ``min_nodes``. It drains a node of the pool that has been
idle for ``scale_down_after`` (no new job goes there) and releases it (``scale_down`` with
``MGPU_POOL_NODES``, space-separated node ids) while the pool stays above ``min_nodes``; once
the released node's agent is gone, the master forgets it. Each command runs in the
background with ``MGPU_POOL`` set, never blocking the master; what it does (start a cloud VM,
``systemctl start mgpu-node``, ``sbatch`` an agent into SLURM) is the operator's business.
A plugin is an entry point of the group ``mgpu.pools``: a class taking the pool's
:class:`PoolSpec`, with ``async scale_up(count)`` and ``async scale_down(nodes)``.

Every request, release and command failure is in the audit log (``mgpu events``) as user
``pool:NAME``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from mgpu.core import poolrule
from mgpu.core.api_messages import PoolInfo
from mgpu.core.errors import ConfigError
from mgpu.core.models import NodeState, SimpleJob
from mgpu.core.partitions import PARTITION_PATTERN
from mgpu.core.poolrule import Decision as Decision  # (re-exported: the master's pools'
from mgpu.core.poolrule import Demand as Demand  # names for what the rule takes and gives)
from mgpu.core.poolrule import PoolMemory, PoolNode
from mgpu.server.node_events import Node

log = logging.getLogger("mgpu.pools")

DRAIN_KEY = "drain:"  # the store's meta keys of drained nodes: drain:NODE -> reason
COMMAND_TIMEOUT = 300.0  # an operator command still running after this is killed
_KEYS = {"partition", "gpus_per_node", "min_nodes", "max_nodes", "scale_up", "scale_down", "plugin",
         "scale_up_after", "scale_down_after", "request_timeout"}


class PoolSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One pool, as its ``[pool.NAME]`` table declares it."""

    name: str
    gpus_per_node: int
    max_nodes: int
    min_nodes: int = 0
    scale_up: str | None = None
    scale_down: str | None = None
    plugin: str | None = None
    scale_up_after: float = poolrule.SCALE_UP_AFTER
    scale_down_after: float = poolrule.SCALE_DOWN_AFTER
    request_timeout: float = poolrule.REQUEST_TIMEOUT
    partition: str | None = None  # its nodes' (--mgpu-partition); None: the default one


def read_pools(path: str | os.PathLike[str]) -> list[PoolSpec]:
    """The pools of the TOML file at ``path``; a :class:`ConfigError` that names the
    mistake and the fix otherwise."""
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"pools file {path}: {e}") from e
    if set(data) - {"pool"} or not isinstance(data.get("pool"), dict):
        raise ConfigError(f"pools file {path}: declare each pool as a [pool.NAME] table")
    specs = []
    for name, table in data["pool"].items():
        where = f"pools file {path}, [pool.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table of settings")
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown setting {unknown[0]!r}; the settings are "
                              f"{', '.join(sorted(_KEYS))}")
        try:
            spec = msgspec.convert({"name": name, **table}, PoolSpec)
        except msgspec.ValidationError as e:
            raise ConfigError(f"{where}: {e}") from e
        problem = _problem(spec)
        if problem:
            raise ConfigError(f"{where}: {problem}")
        specs.append(spec)
    return specs


def _partition_ok(name: str) -> bool:
    return len(name) <= 64 and re.match(PARTITION_PATTERN, name) is not None


def _problem(s: PoolSpec) -> str | None:
    if not s.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        return "a pool name is letters, digits, '.', '-' and '_'"
    if s.gpus_per_node < 1:
        return "gpus_per_node must be 1 or more"
    if not 0 <= s.min_nodes <= s.max_nodes or s.max_nodes < 1:
        return "need 0 <= min_nodes <= max_nodes and max_nodes >= 1"
    if (s.plugin is None) == (s.scale_up is None):
        return "give scale_up (a shell command) or plugin (an mgpu.pools entry point)"
    if s.plugin is None and s.scale_down is None:
        return "give scale_down too: the command that releases idle nodes"
    if s.partition is not None and not _partition_ok(s.partition):
        return "partition is a partition name (letters, digits, '.', '-', '_')"
    if min(s.scale_up_after, s.scale_down_after) < 0 or s.request_timeout <= 0:
        return "scale_up_after and scale_down_after must be >= 0, request_timeout > 0"
    return None


class Operator(Protocol):
    """What grows and shrinks a pool: shell commands, or a plugin."""

    async def scale_up(self, count: int) -> None: ...

    async def scale_down(self, nodes: list[str]) -> None: ...


class ShellOperator:
    """Runs the pool's ``scale_up`` / ``scale_down`` through ``/bin/sh``; a non-zero exit
    (or one past :data:`COMMAND_TIMEOUT`) raises ``RuntimeError`` with its output's end."""

    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec

    async def scale_up(self, count: int) -> None:
        assert self.spec.scale_up is not None
        await self._run(self.spec.scale_up, MGPU_POOL_COUNT=str(count))

    async def scale_down(self, nodes: list[str]) -> None:
        assert self.spec.scale_down is not None
        await self._run(self.spec.scale_down, MGPU_POOL_NODES=" ".join(nodes))

    async def _run(self, command: str, **env: str) -> None:
        proc = await asyncio.create_subprocess_shell(
            command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MGPU_POOL": self.spec.name, **env})
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(
                f"{command!r} ran past {COMMAND_TIMEOUT:g}s and was killed") from None
        if proc.returncode:
            tail = out.decode(errors="replace").strip()[-300:]
            raise RuntimeError(f"{command!r} exited with {proc.returncode}: {tail}")


def operator_for(spec: PoolSpec) -> Operator:
    if spec.plugin is None:
        return ShellOperator(spec)
    from importlib.metadata import entry_points

    for ep in entry_points(group="mgpu.pools"):
        if ep.name == spec.plugin:
            op: Operator = ep.load()(spec)
            return op
    raise ConfigError(f"pool {spec.name}: no mgpu.pools entry point named {spec.plugin!r}: "
                      "install the package that provides it, or use scale_up/scale_down")


@dataclass
class PoolState(PoolMemory):
    """What the master remembers of one pool between ticks: the rule's memory
    (:class:`~mgpu.core.poolrule.PoolMemory`), its settings and its operator."""

    spec: PoolSpec
    operator: Operator

    def members(self, nodes: Iterable[Node]) -> list[Node]:
        return [n for n in nodes if n.pool == self.spec.name]


def decide(pool: PoolState, nodes: list[Node], demand: Iterable[Demand],
           now: float) -> Decision:
    """One tick's decision for ``pool`` (the rule: :func:`mgpu.core.poolrule.decide`), also
    recorded in ``pool`` (its requests and releases), which is all it changes.

    ``nodes`` are the pool's nodes as the master has them; ``demand`` the pending jobs in
    queue order (read only as far as needed)."""
    seen = [PoolNode(n.node_id, up=n.state is not NodeState.DOWN, connected=n.connected,
                     busy=n.busy(), takes_jobs=n.takes_jobs) for n in nodes]
    return poolrule.decide(pool.spec, pool, seen, demand, now)


def status(pool: PoolState, nodes: list[Node]) -> PoolInfo:
    """The pool as ``GET /api/v1/nodes`` shows it (beside the nodes)."""
    spec = pool.spec
    mine = pool.members(nodes)
    return PoolInfo(name=spec.name, min_nodes=spec.min_nodes, max_nodes=spec.max_nodes,
                    gpus_per_node=spec.gpus_per_node,
                    nodes=sorted(n.node_id for n in mine if n.node_id not in pool.releasing),
                    # (a node that joined since the last tick answers a request already)
                    requested=max(0, len(pool.requested)
                                  - sum(1 for n in mine if n.node_id not in pool.known)),
                    releasing=sorted(pool.releasing))


class PoolHost(Protocol):
    """What the pools need of the master (``server/master.py``)."""

    @property
    def state(self) -> Any: ...  # ClusterState: nodes, pending, jobs, set_drain

    async def audit(self, user: str, action: str, detail: str) -> None: ...

    def reschedule(self) -> None: ...


class Pools:
    """Every pool of the master, and the task that ticks them."""

    def __init__(self, specs: list[PoolSpec]) -> None:
        self.pools = {s.name: PoolState(s, operator_for(s)) for s in specs}
        self._tasks: set[asyncio.Task[None]] = set()

    def statuses(self, nodes: list[Node]) -> list[PoolInfo]:
        return [status(p, nodes) for p in self.pools.values()]

    async def run(self, host: PoolHost, interval: float = 0.5) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick(host, time.time())
            except Exception:  # a bug here must not stop the pools for good: said, retried
                log.exception("node pools: a tick failed")

    def tick(self, host: PoolHost, now: float) -> None:
        state = host.state
        nodes: list[Node] = list(state.nodes.values())
        for pool in self.pools.values():
            d = decide(pool, pool.members(nodes), demand_of(pool.spec, state.jobs,
                                                            state.pending, now), now)
            name, who = pool.spec.name, f"pool:{pool.spec.name}"
            for node_id in d.forget:
                poolrule.forget(pool, node_id)
                state.drained.pop(node_id, None)
                state.nodes.pop(node_id, None)
                log.info("pool %s: released node %s is gone", name, node_id)
            if d.expired:
                self._spawn(host.audit(who, "pool.request_expired",
                                       f"{d.expired} requested node(s) did not join within "
                                       f"{pool.spec.request_timeout:g}s"))
            if d.request:
                self._spawn(self._scale(host, pool, d.request, []))
            elif d.release:
                for node_id in d.release:
                    state.set_drain(node_id, f"pool {name}: idle, released")
                self._spawn(self._scale(host, pool, 0, d.release))

    async def _scale(self, host: PoolHost, pool: PoolState, count: int,
                     release: list[str]) -> None:
        name, who = pool.spec.name, f"pool:{pool.spec.name}"
        pool.busy = True
        try:
            if count:
                log.info("pool %s: asking for %d node(s)", name, count)
                await host.audit(who, "pool.scale_up", f"asked for {count} node(s)")
                await pool.operator.scale_up(count)
            else:
                log.info("pool %s: releasing %s", name, " ".join(release))
                await host.audit(who, "pool.scale_down", "released " + " ".join(release))
                await pool.operator.scale_down(release)
        except Exception as e:  # the operator's failure, never the master's
            log.error("pool %s: %s failed: %s", name, "scale_up" if count else "scale_down", e)
            if count:
                del pool.requested[-count:]
            for node_id in release:  # not released after all: back in service
                pool.releasing.discard(node_id)
                host.state.set_drain(node_id, None)
            host.reschedule()
            await host.audit(who, "pool.error", str(e)[:500])
        finally:
            pool.busy = False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def demand_of(spec: PoolSpec, jobs: dict[int, SimpleJob], pending: Iterable[int],
              now: float) -> Iterator[Demand]:
    """The pending jobs (``pending``: their ids, in queue order) as ``spec``'s pool sees
    them: those of its partition, each with the GPUs it needs on a node."""
    for job_id in pending:
        job = jobs[job_id]
        if job.partition == spec.partition:
            submitted = job.submitted_at.timestamp() if job.submitted_at is not None else now
            yield Demand(job.gpus_per_node, now - submitted, job.nodes)
