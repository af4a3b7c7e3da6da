"""Node pools in the simulator: pools that grow and shrink with the replayed queue.

A simulated pool is the master's (``server/pools.py``) with the operator taken out: the
same rule (:func:`mgpu.core.poolrule.decide`) asks for nodes and picks the idle ones to
release, and here a requested node joins ``boot_time`` seconds later (it always joins: no
request times out) and a released one goes at once. The replay
(:mod:`mgpu.core.simulator`) ticks the pools after the scheduling pass of every instant
with events, and at the instants when the rule could change its mind with nothing
happening: when a job has waited ``scale_up_after`` and when a node has been idle
``scale_down_after``. Pool nodes are named ``POOL-001``, ``POOL-002``... in request order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from mgpu.core.errors import UsageError
from mgpu.core.poolrule import (
    SCALE_DOWN_AFTER,
    SCALE_UP_AFTER,
    Demand,
    PoolMemory,
    PoolNode,
    decide,
    forget,
)

POOL_FORMAT = "NAME:GPUS_PER_NODE:MIN:MAX, e.g. cloud:8:0:4"
MAX_POOL_NODES = 10_000


@dataclass(frozen=True, slots=True)
class SimPool:
    """A simulated pool: the settings of a pools file's ``[pool.NAME]`` that the rule reads,
    and how long a node takes to join once asked for."""

    name: str
    gpus_per_node: int
    min_nodes: int
    max_nodes: int
    scale_up_after: float = SCALE_UP_AFTER
    scale_down_after: float = SCALE_DOWN_AFTER
    boot_time: float = 0.0
    request_timeout: float = math.inf  # a simulated node always joins, after boot_time


@dataclass(slots=True)
class PoolNodeRecord:
    """One node a pool asked for, and its life (seconds of the trace's clock)."""

    node_id: str
    pool: str
    gpus: int
    requested: float
    joined: float | None = None  # None: still booting when the replay ended
    released: float | None = None  # None: still in the pool when the replay ended


def parse_pool(text: str, *, scale_up_after: float = SCALE_UP_AFTER,
               scale_down_after: float = SCALE_DOWN_AFTER,
               boot_time: float = 0.0) -> SimPool:
    """``cloud:8:0:4`` → the pool ``cloud`` of nodes of 8 GPUs, 0 to 4 of them; a
    :class:`UsageError` naming the format otherwise."""
    name, *numbers = text.strip().split(":")
    bad = f"--pool {text!r}: use {POOL_FORMAT} (a pool of 0 to 4 nodes of 8 GPUs)"
    if (len(numbers) != 3 or not all(n.isdigit() for n in numbers) or not name
            or not name.replace("-", "").replace("_", "").replace(".", "").isalnum()):
        raise UsageError(bad)
    gpus, low, high = (int(n) for n in numbers)
    if gpus < 1 or high < 1 or not 0 <= low <= high:
        raise UsageError(f"{bad}; GPUS_PER_NODE >= 1 and 0 <= MIN <= MAX, MAX >= 1")
    if high > MAX_POOL_NODES:
        raise UsageError(f"--pool {text!r}: MAX {high:,} nodes, at most {MAX_POOL_NODES:,}")
    for what, value in (("--scale-up-after", scale_up_after),
                        ("--scale-down-after", scale_down_after), ("--boot-time", boot_time)):
        if not 0 <= value < math.inf:
            raise UsageError(f"{what} {value:g}: give seconds, 0 or more")
    return SimPool(name, gpus, low, high, scale_up_after, scale_down_after, boot_time)


def check_pools(pools: Sequence[SimPool]) -> None:
    """A :class:`UsageError` if two pools share a name (the fixed nodes, ``n01``..., never
    share one with a pool's, ``NAME-001``...)."""
    names = [p.name for p in pools]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--pool {twice[0]} is given twice: give each pool its own name")


@dataclass
class Tick:
    """What a tick of the pools changed: nodes asked for (when each joins, and its index
    in :attr:`SimPools.records`), nodes released, and when to tick again (times not
    asked for before)."""

    joins: list[tuple[float, int]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    wake_at: list[float] = field(default_factory=list)


class SimPools:
    """The pools of one replay: each one's memory for the rule, its nodes, their lives."""

    def __init__(self, pools: Sequence[SimPool]) -> None:
        self.pools = {p.name: p for p in pools}
        self.memory = {p.name: PoolMemory() for p in pools}
        self.records: list[PoolNodeRecord] = []
        self.by_id: dict[str, PoolNodeRecord] = {}
        self.up: dict[str, list[str]] = {p.name: [] for p in pools}  # joined, not released
        self.asked: dict[str, int] = {p.name: 0 for p in pools}
        self.wakes: set[float] = set()  # the ticks asked for so far

    @property
    def largest(self) -> int:
        """The GPUs of the largest node any pool could bring."""
        return max((p.gpus_per_node for p in self.pools.values()), default=0)

    def after_submit(self, submit: float) -> list[float]:
        """When a job submitted at ``submit`` will have waited long enough for each pool
        (the times not asked for before)."""
        return self._new([_at_least(submit, p.scale_up_after) for p in self.pools.values()])

    def _new(self, times: Iterable[float]) -> list[float]:
        fresh = sorted(set(times) - self.wakes)
        self.wakes.update(fresh)
        return fresh

    def joined(self, record: PoolNodeRecord, now: float) -> None:
        record.joined = now
        self.up[record.pool].append(record.node_id)

    def tick(self, now: float, demand: Callable[[], Iterable[Demand]],
             busy: Callable[[str], bool]) -> Tick:
        """Each pool's decision at ``now``: ``demand()`` gives the pending jobs in queue
        order, ``busy(node_id)`` whether a node runs a job."""
        out = Tick()
        for name, pool in self.pools.items():
            memory = self.memory[name]
            nodes = [PoolNode(n, busy=busy(n)) for n in self.up[name]]
            d = decide(pool, memory, nodes, demand(), now)
            for _ in range(d.request):
                self.asked[name] += 1
                record = PoolNodeRecord(f"{name}-{self.asked[name]:03d}", name,
                                        pool.gpus_per_node, now)
                out.joins.append((now + pool.boot_time, len(self.records)))
                self.records.append(record)
                self.by_id[record.node_id] = record
            for node_id in d.release:  # (a released node goes at once: nothing to drain)
                self.by_id[node_id].released = now
                self.up[name].remove(node_id)
                forget(memory, node_id)
                out.released.append(node_id)
            out.wake_at += self._new(_at_least(since, pool.scale_down_after)
                                     for since in memory.idle_since.values()
                                     if since + pool.scale_down_after > now)
        return out


def _at_least(start: float, delay: float) -> float:
    """The first time ``t`` with ``t - start >= delay`` (in floating point, as the rule
    subtracts)."""
    t = start + delay
    while t - start < delay:
        t = math.nextafter(t, math.inf)
    return t
