"""``mgpu simulate``: replay a job trace through a scheduling policy, offline.

Reads the trace file (:mod:`mgpu.core.trace`), replays it with :mod:`mgpu.core.simulator`
through what the master would run with its settings (:func:`replay`) and prints the
figures of :mod:`mgpu.core.simmetrics`, as a table or (``--json``) one JSON object. Needs
no master: no client is imported, and of the server only its pure priority queue and
fair-share usage (``server/queue.py``, ``server/fairshare.py``: no aiohttp, no SQLite).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from mgpu.core.config import MasterConfig
    from mgpu.core.scheduler import Policy
    from mgpu.core.simmetrics import Figures
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

    try:
        with open(ns.trace, encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the trace {ns.trace}: {e}") from None
    cfg: MasterConfig = load_config(ns, MasterConfig, {})[0]
    policy_name = ns.policy or cfg.scheduler
    policy = load_policy(policy_name)
    nodes_text = ns.nodes or "8x8"
    nodes = parse_nodes(nodes_text)
    fig = figures(replay(parse_trace(text), nodes, policy, cfg))
    if ns.json:
        import json
        from dataclasses import asdict

        body = {"policy": policy_name, "nodes": nodes_text, "trace": ns.trace, **asdict(fig)}
        write(json.dumps(body, indent=2) + "\n")
    else:
        write(render(fig, policy_name, nodes_text))
    return 0


def replay(trace: Sequence[TraceJob], nodes: list[tuple[str, int]], policy: Policy,
           cfg: MasterConfig | None = None) -> SimResult:
    """``trace`` replayed on ``nodes`` with ``policy`` and what a master with ``cfg``
    (default: the defaults) runs around it: its priority queue and fair-share usage
    (weights, maximum age, half-life), its backfill depth and planning limit."""
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
        backfill_depth=options["backfill_depth"])


def render(fig: Figures, policy: str, nodes: str) -> str:
    """The figures as ``mgpu simulate`` prints them for a person."""
    from mgpu.core.timefmt import format_elapsed

    def duration(s: float | None) -> str:
        return "-" if s is None else f"{format_elapsed(s):>11}  ({s:,.1f} s)"

    lines = [
        f"{fig.jobs:,} jobs on {nodes} ({fig.total_gpus:,} GPUs), policy {policy}: "
        f"{fig.completed:,} completed, {fig.timeout:,} timeout, {fig.cancelled:,} cancelled, "
        f"{fig.rejected:,} rejected, {fig.unstarted:,} never started",
        f"average JCT      {duration(fig.avg_jct_s)}",
        f"average wait     {duration(fig.avg_wait_s)}",
        f"p95 wait         {duration(fig.p95_wait_s)}",
        f"makespan         {duration(fig.makespan_s)}",
        f"GPU utilisation  {100 * fig.utilisation:10.1f} %",
        "",
    ]
    width = max((len(u) for u in fig.gpu_hours), default=4)
    lines.append(f"{'USER':<{width}}  {'GPU-HOURS':>10}  {'SHARE':>7}")
    for user, hours in fig.gpu_hours.items():
        lines.append(f"{user:<{width}}  {hours:10,.2f}  {100 * fig.shares[user]:6.1f} %")
    return "\n".join(lines) + "\n"
