"""The decision rule of node pools: when to ask for nodes and which idle ones to release.

Pure (no I/O, no clock): the master's pools (``server/pools.py``) and the simulator's
(``core/simpools.py``) both call :func:`decide`, so what ``mgpu simulate --pool`` shows is
what the master would do. The rule, at each tick ``now``:

1. **Joins and expiries.** A pool node not seen before answers the oldest request; a
   request older than ``request_timeout`` is given up (its node never joined).
2. **Grow.** The pending jobs that one pool node could run (``gpus <= gpus_per_node``) and
   that have waited at least ``scale_up_after`` are packed by GPUs, read in queue order only
   as far as the pool could grow; the pool asks for as many nodes as they fill, less the
   nodes already asked for, up to ``max_nodes``; and always enough for ``min_nodes``.
3. **Shrink** (only when it asks for nothing): a node that takes jobs and runs none is idle
   from the first tick that sees it so; once idle for ``scale_down_after`` it is released,
   while the pool stays above ``min_nodes`` (busy nodes count towards it).
4. While an operator command runs (``busy``), nothing is asked for or released: the tick
   after it decides again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

SCALE_UP_AFTER = 60.0  # the defaults of a pool's settings (the pools file's, the simulator's)
SCALE_DOWN_AFTER = 600.0
REQUEST_TIMEOUT = 600.0


class PoolLimits(Protocol):
    """The settings the rule reads (a pools file's ``PoolSpec``, a simulated pool)."""

    @property
    def gpus_per_node(self) -> int: ...

    @property
    def min_nodes(self) -> int: ...

    @property
    def max_nodes(self) -> int: ...

    @property
    def scale_up_after(self) -> float: ...

    @property
    def scale_down_after(self) -> float: ...

    @property
    def request_timeout(self) -> float: ...


@dataclass(frozen=True, slots=True)
class PoolNode:
    """A node of the pool, as the rule sees it."""

    node_id: str
    up: bool = True  # not marked down (a lost node neither counts nor is released)
    connected: bool = True  # its agent is there
    busy: bool = False  # runs a job
    takes_jobs: bool = True  # up, connected, not draining


@dataclass(slots=True)
class Demand:
    """A pending job, as a pool sees it: ``gpus`` on each of ``nodes`` nodes (a multi-node
    job needs that many distinct nodes)."""

    gpus: int
    waited: float
    nodes: int = 1


@dataclass(kw_only=True)
class PoolMemory:
    """What a pool remembers between ticks; :func:`decide` changes it, nothing else does
    but :func:`forget` and an operator command's failure (``server/pools.py``)."""

    requested: list[float] = field(default_factory=list)  # when each asked-for node was
    known: set[str] = field(default_factory=set)  # pool nodes seen registered
    idle_since: dict[str, float] = field(default_factory=dict)
    releasing: set[str] = field(default_factory=set)
    busy: bool = False  # an operator command is running


@dataclass
class Decision:
    """What one tick decided for one pool."""

    request: int = 0  # nodes to ask for
    release: list[str] = field(default_factory=list)  # idle nodes to drain and release
    expired: int = 0  # requests given up (their node never joined)
    forget: list[str] = field(default_factory=list)  # released nodes now gone


def decide(limits: PoolLimits, memory: PoolMemory, nodes: Sequence[PoolNode],
           demand: Iterable[Demand], now: float) -> Decision:
    """One tick's decision (module docstring), also recorded in ``memory`` (its requests,
    idle times and releases), which is all it changes.

    ``nodes`` are the pool's nodes as the caller has them (a released node stays among them
    until its agent has gone: then it is in ``forget``); ``demand`` the pending jobs in
    queue order, read only as far as needed."""
    d = Decision()
    for n in nodes:
        if n.node_id not in memory.known:
            memory.known.add(n.node_id)
            if memory.requested:
                memory.requested.pop(0)  # an asked-for node joined
    fresh = [t for t in memory.requested if now - t < limits.request_timeout]
    d.expired = len(memory.requested) - len(fresh)
    memory.requested = fresh
    d.forget = [n.node_id for n in nodes
                if n.node_id in memory.releasing and not n.connected and not n.busy]
    staying = [n for n in nodes if n.up and n.node_id not in memory.releasing]
    have = len(staying) + len(memory.requested)
    # Grow: the jobs a pool node could run that waited long enough, packed by GPUs, read
    # only as far as the pool could grow.
    gpus, cap = 0, (limits.max_nodes - len(staying)) * limits.gpus_per_node
    for job in demand:
        if gpus >= cap:
            break
        if job.waited >= limits.scale_up_after and job.gpus <= limits.gpus_per_node:
            # (a multi-node job's parts need nodes of their own: whole nodes are counted)
            gpus += job.gpus if job.nodes == 1 else job.nodes * limits.gpus_per_node
    wanted = max(math.ceil(gpus / limits.gpus_per_node) - len(memory.requested),
                 limits.min_nodes - have)
    d.request = max(0, min(wanted, limits.max_nodes - have))
    # Shrink: idle nodes past scale_down_after, keeping min_nodes.
    if d.request == 0:
        spare = len(staying) - limits.min_nodes
        for n in staying:
            if n.busy or not n.takes_jobs:
                memory.idle_since.pop(n.node_id, None)
                continue
            since = memory.idle_since.setdefault(n.node_id, now)
            if spare > 0 and now - since >= limits.scale_down_after:
                d.release.append(n.node_id)
                spare -= 1
    if memory.busy:  # one operator command at a time per pool: decide again after it
        d.request, d.release = 0, []
    memory.requested += [now] * d.request
    memory.releasing.update(d.release)
    return d


def forget(memory: PoolMemory, node_id: str) -> None:
    """A released node is gone for good: the pool keeps nothing of it."""
    memory.releasing.discard(node_id)
    memory.known.discard(node_id)
    memory.idle_since.pop(node_id, None)
