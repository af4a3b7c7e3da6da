"""``mgpu simulate``: replay a job trace through a scheduling policy, offline.

Reads the trace file (:mod:`mgpu.core.trace`), replays it with :mod:`mgpu.core.simulator`
through what the master would run with its settings (:func:`replay`) and prints the
figures of :mod:`mgpu.core.simmetrics`, as a table or (``--json``) one JSON object. Needs
no master: no client is imported, and of the server only its pure priority queue and
fair-share usage (``server/queue.py``, ``server/fairshare.py``: no aiohttp, no SQLite).
With ``--pool``, the cluster gains node pools run by the master's own rule
(:mod:`mgpu.core.simpools`), and the figures their nodes' GPU-hours, busy and idle.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from mgpu.core.config import MasterConfig
    from mgpu.core.scheduler import Policy
    from mgpu.core.simmetrics import Figures
    from mgpu.core.simpools import SimPool
    from mgpu.core.simulator import SimResult
    from mgpu.core.trace import TraceJob


def simulate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", metavar="FILE.csv", required=True,
                   help="the jobs: CSV with the columns submit,user,gpus,duration,time_limit "
                   "(seconds) and optionally id, dependency, array (see README)")
    p.add_argument("--policy", metavar="NAME",
                   help="the scheduling policy (default: the master's setting, `scheduler` "
                   "/ $MGPU_SCHEDULER)")
    p.add_argument("--nodes", metavar="COUNTxGPUS",
                   help="the cluster: 8x8 (default) is eight nodes of 8 GPUs; 4x8,2x4 mixes")
    p.add_argument("--pool", metavar="NAME:GPUS_PER_NODE:MIN:MAX", action="append",
                   default=[], help="a node pool that grows and shrinks with the queue, as "
                   "the master's pools do (cloud:8:0:4: 0 to 4 nodes of 8 GPUs); repeat for "
                   "more pools. With pools, --nodes none leaves no fixed node")
    p.add_argument("--scale-up-after", metavar="S", type=float, default=None,
                   help="seconds a job that fits a pool node waits before nodes are asked "
                   "for (default 60, as a pools file's scale_up_after)")
    p.add_argument("--scale-down-after", metavar="S", type=float, default=None,
                   help="seconds a pool node sits idle before it is released (default 600)")
    p.add_argument("--boot-time", metavar="S", type=float, default=0.0,
                   help="seconds from a node's request until it takes jobs (default 0)")
    p.add_argument("--json", action="store_true", help="the figures as one JSON object")


def cmd_simulate(ns: argparse.Namespace) -> int:
    """Replay ``--trace`` and print its figures; a bad trace or flag exits 2, naming it."""
    from mgpu.cli.shared import load_config, write
    from mgpu.core.config import MasterConfig
    from mgpu.core.errors import UsageError
    from mgpu.core.scheduler import load_policy
    from mgpu.core.simmetrics import figures
    from mgpu.core.simulator import parse_nodes
    from mgpu.core.trace import parse_trace

    pools = parse_pools(ns)
    nodes_text = ns.nodes or "8x8"
    nodes = parse_nodes(nodes_text)
    if not nodes and not pools:
        raise UsageError("--nodes none leaves no node to run jobs: give --pool NAME:GPUS_PER_"
                         "NODE:MIN:MAX too, or nodes (--nodes 8x8)")
    try:
        with open(ns.trace, encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the trace {ns.trace}: {e}") from None
    cfg: MasterConfig = load_config(ns, MasterConfig, {})[0]
    policy_name = ns.policy or cfg.scheduler
    policy = load_policy(policy_name)
    fig = figures(replay(parse_trace(text), nodes, policy, cfg, pools))
    if ns.json:
        import json
        from dataclasses import asdict

        body = {"policy": policy_name, "nodes": nodes_text, "trace": ns.trace, **asdict(fig)}
        write(json.dumps(body, indent=2) + "\n")
    else:
        write(render(fig, policy_name, nodes_text))
    return 0


def parse_pools(ns: argparse.Namespace) -> list[SimPool]:
    """The pools of ``--pool`` with the timing flags; a ``UsageError`` (exit 2) naming the
    format, or a timing flag given without a pool."""
    from mgpu.core.errors import UsageError
    from mgpu.core.poolrule import SCALE_DOWN_AFTER, SCALE_UP_AFTER
    from mgpu.core.simpools import check_pools, parse_pool

    if not ns.pool:
        given = [f for f, v in (("--scale-up-after", ns.scale_up_after),
                                ("--scale-down-after", ns.scale_down_after),
                                ("--boot-time", ns.boot_time or None)) if v is not None]
        if given:
            raise UsageError(f"{given[0]} is a node pool's setting: give --pool "
                             "NAME:GPUS_PER_NODE:MIN:MAX too")
        return []
    up = SCALE_UP_AFTER if ns.scale_up_after is None else ns.scale_up_after
    down = SCALE_DOWN_AFTER if ns.scale_down_after is None else ns.scale_down_after
    pools = [parse_pool(text, scale_up_after=up, scale_down_after=down,
                        boot_time=ns.boot_time) for text in ns.pool]
    check_pools(pools)
    return pools


def replay(trace: Sequence[TraceJob], nodes: list[tuple[str, int]], policy: Policy,
           cfg: MasterConfig | None = None, pools: Sequence[SimPool] = ()) -> SimResult:
    """``trace`` replayed on ``nodes`` (and ``pools``) with ``policy`` and what a master
    with ``cfg`` (default: the defaults) runs around it: its priority queue and fair-share
    usage (weights, maximum age, half-life), its backfill depth and planning limit."""
    from mgpu.core.config import MasterConfig
    from mgpu.core.simulator import PLAN_LIMIT, simulate
    from mgpu.core.timefmt import parse_duration
    from mgpu.server.fairshare import FairShare, scheduling_options
    from mgpu.server.queue import PendingQueue

    if cfg is None:  # the defaults (a replay writes nothing: the data dir is not used)
        from pathlib import Path

        cfg = MasterConfig(data_dir=Path("."))
    options = scheduling_options(cfg)
    return simulate(
        trace, nodes, policy, queue=PendingQueue(options["weights"]),
        usage=FairShare(options["half_life"]),
        default_time_limit=parse_duration(cfg.default_time_limit, "default_time_limit")
        or PLAN_LIMIT,
        backfill_depth=options["backfill_depth"], pools=pools)


def render(fig: Figures, policy: str, nodes: str) -> str:
    """The figures as ``mgpu simulate`` prints them for a person."""
    from mgpu.core.timefmt import format_elapsed

    def duration(s: float | None) -> str:
        return "-" if s is None else f"{format_elapsed(s):>11}  ({s:,.1f} s)"

    grown = "".join(f" + pool {p.name} ({p.min_nodes}-{p.max_nodes} nodes of "
                    f"{p.gpus_per_node} GPUs)" for p in fig.pools)
    lines = [
        f"{fig.jobs:,} jobs on {nodes} ({fig.total_gpus:,} GPUs){grown}, policy {policy}: "
        f"{fig.completed:,} completed, {fig.timeout:,} timeout, {fig.cancelled:,} cancelled, "
        f"{fig.rejected:,} rejected, {fig.unstarted:,} never started",
        f"average JCT      {duration(fig.avg_jct_s)}",
        f"average wait     {duration(fig.avg_wait_s)}",
        f"p95 wait         {duration(fig.p95_wait_s)}",
        f"makespan         {duration(fig.makespan_s)}",
        f"GPU utilisation  {100 * fig.utilisation:10.1f} %",
        "",
    ]
    if fig.pools:
        lines += [f"{'POOL':<8} {'NODES':>9} {'UP AFTER':>9} {'DOWN AFTER':>10} {'BOOT':>6} "
                  f"{'REQUESTS':>8} {'RELEASES':>8} {'PEAK':>4} {'JOBS':>6} "
                  f"{'GPU-HOURS':>10} {'BUSY':>10} {'IDLE':>10}"]
        lines += [f"{p.name:<8} {f'{p.min_nodes}-{p.max_nodes}x{p.gpus_per_node}':>9} "
                  f"{p.scale_up_after_s:8g}s {p.scale_down_after_s:9g}s {p.boot_time_s:5g}s "
                  f"{p.requests:8,} {p.releases:8,} {p.peak_nodes:4} {p.jobs:6,} "
                  f"{p.gpu_hours:10,.2f} {p.busy_gpu_hours:10,.2f} {p.idle_gpu_hours:10,.2f}"
                  for p in fig.pools]
        lines.append("")
    width = max((len(u) for u in fig.gpu_hours), default=4)
    lines.append(f"{'USER':<{width}}  {'GPU-HOURS':>10}  {'SHARE':>7}")
    for user, hours in fig.gpu_hours.items():
        lines.append(f"{user:<{width}}  {hours:10,.2f}  {100 * fig.shares[user]:6.1f} %")
    return "\n".join(lines) + "\n"
