"""The master's scheduling pass alone, in one process: ``ClusterState.schedule`` (snapshot,
priority queue, policy, placements) at N pending jobs x M nodes x G GPUs, every GPU busy.

Each timed event ends one running job (its GPUs freed, as a node's report would) and runs
one pass, as the master does; the figures are the pass times, median and p99. No
processes, no network, no SQLite: what is measured is the scheduling code itself.

    .venv/bin/python bench/policy_pass.py [--pending 100000] [--nodes 1000] [--gpus 8]
        [--users 100] [--events 300] [--policy multifactor]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from mgpu.core.models import GpuInfo, JobSpec, JobState, NodeState, advance
from mgpu.core.scheduler import load_policy
from mgpu.server.node_events import Node
from mgpu.server.state import ClusterState


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pending", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--policy", default="multifactor")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    state = ClusterState(load_policy(args.policy), max_pending_per_user=10**9,
                         default_time_limit=3600)
    now = 1_800_000_000.0
    for i in range(args.nodes):
        node_id = f"n{i:04d}"
        state.nodes[node_id] = Node(node_id, [
            GpuInfo(index=g, name="Fake", memory_total_mib=81920) for g in range(args.gpus)],
            state=NodeState.UP, last_seen=now)
    # Jobs mostly of 1 GPU, some of 2, 4 and 8 (Philly/Helios-like sizes), many users.
    sizes = [1] * 80 + [2] * 10 + [4] * 6 + [8] * 4
    total = args.pending + args.nodes * args.gpus  # enough to fill every GPU, then pending
    made = 0
    while made < total:
        batch = min(10_000, total - made)
        specs = [JobSpec(command="true", gpus=rng.choice(sizes),
                         user=f"u{rng.randrange(args.users)}",
                         time_limit=rng.choice([600, 3600, 4 * 3600, 86400]),
                         nice=rng.choice([0, 0, 0, 10]))
                 for _ in range(batch)]
        state.on_submit(specs, now - (total - made) * 0.01)
        made += batch
    started = time.perf_counter()
    state.schedule(now)  # fills every GPU
    fill = time.perf_counter() - started
    running = [j for j in state.jobs.values() if j.state is JobState.RUNNING]
    print(f"{len(state.pending):,} pending, {len(running):,} running on {args.nodes:,} nodes x "
          f"{args.gpus} GPUs ({args.policy}); first pass (fills the cluster) {fill * 1e3:.0f} ms")

    times = []
    for _ in range(args.events):
        now += rng.uniform(1, 30)
        job = running.pop(rng.randrange(len(running)))
        assert job.node is not None
        state.nodes[job.node].release(job.id)
        advance(job, JobState.COMPLETED, now, exit_code=0)
        started = time.perf_counter()
        effects = state.schedule(now)
        times.append(time.perf_counter() - started)
        running.extend(state.jobs[m.job_id] for _, m in effects.sends
                       if hasattr(m, "job_id"))
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"pass after one job ends: median {statistics.median(times) * 1e3:.1f} ms, "
          f"p99 {p99 * 1e3:.1f} ms, max {times[-1] * 1e3:.1f} ms over {len(times)} events; "
          f"{len(state.pending):,} still pending")


if __name__ == "__main__":
    main()
