"""The figures of a replay (:mod:`mgpu.core.simulator`): what ``mgpu simulate`` prints.

Definitions (times in seconds of the trace's clock):

* **JCT** (job completion time) of a job that ran: its end minus its submission.
* **wait** of a job that ran: its start minus its submission; **p95** is the nearest-rank
  95th percentile (the smallest wait that at least 95 % of the waits do not exceed).
* **makespan**: the last end minus the first submission, over every job of the trace.
* **utilisation**: GPU-seconds that jobs held, over (the cluster's GPUs x the makespan);
  with pools, the pool nodes' GPU-seconds (below) are added to the cluster's.
* **GPU-hours per user**: GPUs x hours run, summed over the user's jobs; **share**: a user's
  GPU-hours over everyone's.

Jobs that did not run (rejected, cancelled, never started) count in none of these but are
counted by state. Array tasks count as jobs.

Per node pool (:class:`PoolFigures`), GPU-hours are GPUs x hours:

* **GPU-hours** of its nodes: from each node's request (a booting node is paid for, as a
  cloud bills it) to its release, or to the end of the replay (the last job's end or
  release, whichever is later) for a node never released.
* **busy GPU-hours**: what the jobs that ran on its nodes held; **idle GPU-hours**: the
  rest, the capacity paid for that ran no job (booting, waiting for work, waiting out
  ``scale_down_after``).
* **requests** and **releases**: nodes asked for and released; **peak**: the most nodes
  asked for and not yet released at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mgpu.core.simulator import SimJob, SimResult

Interval = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Figures:
    """The figures of one replay; the ``*_s`` fields are seconds (None: no job ran)."""

    total_gpus: int
    jobs: int
    completed: int
    timeout: int
    cancelled: int
    rejected: int
    unstarted: int
    passes: int
    avg_jct_s: float | None
    avg_wait_s: float | None
    p95_wait_s: float | None
    makespan_s: float
    utilisation: float
    gpu_hours: dict[str, float]  # per user, sorted by user
    shares: dict[str, float]  # per user: fraction of all GPU-hours, 0..1
    pools: list[PoolFigures] = field(default_factory=list)  # per node pool, in flag order


@dataclass(frozen=True, slots=True)
class PoolFigures:
    """One node pool's settings and figures (module docstring)."""

    name: str
    gpus_per_node: int
    min_nodes: int
    max_nodes: int
    scale_up_after_s: float
    scale_down_after_s: float
    boot_time_s: float
    requests: int
    releases: int
    peak_nodes: int
    jobs: int  # jobs that ran on its nodes
    gpu_hours: float
    busy_gpu_hours: float
    idle_gpu_hours: float


def figures(result: SimResult) -> Figures:
    """Everything ``mgpu simulate`` prints about ``result`` (definitions above)."""
    ran = [j for j in result.jobs if j.ran]
    count = {s: sum(1 for j in result.jobs if j.state == s)
             for s in ("completed", "timeout", "cancelled", "rejected", "pending")}
    first = min((j.submit for j in result.jobs), default=0.0)
    last = max((j.end for j in result.jobs if j.end is not None), default=first)
    makespan = last - first
    gpu_seconds = _per_user(ran, -math.inf, math.inf)
    busy = sum(gpu_seconds.values())
    waits = [_start(j) - j.submit for j in ran]
    pools = pool_figures(result, last)
    capacity = result.total_gpus * makespan + 3600 * sum(p.gpu_hours for p in pools)
    return Figures(
        total_gpus=result.total_gpus,
        jobs=len(result.jobs),
        completed=count["completed"],
        timeout=count["timeout"],
        cancelled=count["cancelled"],
        rejected=count["rejected"],
        unstarted=count["pending"],
        passes=result.passes,
        avg_jct_s=_mean([_end(j) - j.submit for j in ran]),
        avg_wait_s=_mean(waits),
        p95_wait_s=percentile(waits, 95),
        makespan_s=makespan,
        utilisation=busy / capacity if capacity > 0 and ran else 0.0,
        gpu_hours={u: s / 3600 for u, s in gpu_seconds.items()},
        shares=_shares(gpu_seconds),
        pools=pools,
    )


def pool_figures(result: SimResult, last_end: float) -> list[PoolFigures]:
    """Each pool's figures (module docstring); ``last_end``: the last job's end."""
    horizon = max([last_end] + [r.released for r in result.pool_nodes
                                if r.released is not None])
    out = []
    for pool in result.pools:
        mine = [r for r in result.pool_nodes if r.pool == pool.name]
        ids = {r.node_id for r in mine}
        on = [j for j in result.jobs if j.ran and j.node in ids]
        powered = sum(r.gpus * ((horizon if r.released is None else r.released) - r.requested)
                      for r in mine)
        busy = sum(j.gpus * (_end(j) - _start(j)) for j in on)
        # The most nodes held at once: +1 at a request, -1 at a release (releases first).
        steps = sorted([(r.requested, 1) for r in mine]
                       + [(r.released, -1) for r in mine if r.released is not None])
        held = peak = 0
        for _, step in steps:
            held += step
            peak = max(peak, held)
        out.append(PoolFigures(
            name=pool.name, gpus_per_node=pool.gpus_per_node, min_nodes=pool.min_nodes,
            max_nodes=pool.max_nodes, scale_up_after_s=pool.scale_up_after,
            scale_down_after_s=pool.scale_down_after, boot_time_s=pool.boot_time,
            requests=len(mine), releases=sum(1 for r in mine if r.released is not None),
            peak_nodes=peak, jobs=len(on), gpu_hours=powered / 3600,
            busy_gpu_hours=busy / 3600, idle_gpu_hours=(powered - busy) / 3600))
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def shares_within(jobs: Iterable[SimJob], windows: Sequence[Interval]) -> dict[str, float]:
    """Each user's fraction of the GPU-seconds used inside ``windows`` (the parts of jobs
    that ran inside them)."""
    ran = [j for j in jobs if j.ran]
    total: dict[str, float] = {}
    for t0, t1 in windows:
        for user, s in _per_user(ran, t0, t1).items():
            total[user] = total.get(user, 0.0) + s
    return _shares(dict(sorted(total.items())))


def backlogged(jobs: Iterable[SimJob], users: Sequence[str]) -> list[Interval]:
    """The intervals when every one of ``users`` had a job waiting (submitted, not yet
    started; a job that never started waits until the end of the replay)."""
    jobs = list(jobs)
    horizon = max((j.end for j in jobs if j.end is not None), default=0.0)
    common: list[Interval] | None = None
    for user in users:
        mine = _union([(j.submit, j.start if j.start is not None else horizon)
                       for j in jobs if j.user == user and j.state != "rejected"])
        common = mine if common is None else _intersect(common, mine)
    return common or []


def _per_user(ran: Iterable[SimJob], t0: float, t1: float) -> dict[str, float]:
    """GPU-seconds per user of the parts of ``ran`` inside [t0, t1], sorted by user."""
    out: dict[str, float] = {}
    for j in ran:
        held = min(_end(j), t1) - max(_start(j), t0)
        if held > 0:
            out[j.user] = out.get(j.user, 0.0) + j.gpus * held
    return dict(sorted(out.items()))


def _shares(amounts: dict[str, float]) -> dict[str, float]:
    total = sum(amounts.values())
    return {u: (a / total if total else 0.0) for u, a in amounts.items()}


def _union(spans: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _intersect(xs: list[Interval], ys: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    i = k = 0
    while i < len(xs) and k < len(ys):
        a, b = max(xs[i][0], ys[k][0]), min(xs[i][1], ys[k][1])
        if a < b:
            out.append((a, b))
        if xs[i][1] < ys[k][1]:
            i += 1
        else:
            k += 1
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _start(j: SimJob) -> float:
    assert j.start is not None
    return j.start


def _end(j: SimJob) -> float:
    assert j.end is not None
    return j.end
